"""Training: data prepared from a config (two-tower or sequence data), models built from it, the training
loop, checkpoints and evaluation.

Names load lazily (PEP 562): importing ``towerrec.train.prepared`` does not pull in the trainer.
"""

from towerrec._lazy import lazy_exports

_EXPORTS = {
    "prepare": "towerrec.train.prepared",
    "PreparedData": "towerrec.train.prepared",
    "EncodedExamples": "towerrec.train.prepared",
    "prepare_sequences": "towerrec.train.sequence_data",
    "SequenceData": "towerrec.train.sequence_data",
    "build_model": "towerrec.train.models",
    "Trainer": "towerrec.train.trainer",
    "Callback": "towerrec.train.trainer",
    "TrainingData": "towerrec.train.batches",
    "TensorData": "towerrec.train.batches",
    "RankingBatches": "towerrec.train.batches",
    "Checkpointer": "towerrec.train.checkpoint",
    "evaluate_examples": "towerrec.train.evaluate",
    "popularity_metrics": "towerrec.train.evaluate",
    "evaluate_ranking": "towerrec.train.evaluate",
    "make_optimizer": "towerrec.train.optimizers",
    "RowWiseAdagrad": "towerrec.train.optimizers",
    "LazyAdam": "towerrec.train.optimizers",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
