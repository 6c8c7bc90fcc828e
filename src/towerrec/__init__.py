"""towerrec: retrieval-and-ranking recommenders in PyTorch.

``import towerrec as tr`` reaches the public surface; names load lazily on first
use (PEP 562), so importing the package (and starting the CLI) stays fast::

    import towerrec as tr

    dataset = tr.load_dataset("movielens-100k")          # or tr.Dataset.from_frame(df, user=..., item=...)
    result = tr.train_run(tr.preset("default"), dataset=dataset)
    index = tr.BruteForceIndex(item_embeddings, item_ids)
    found = index.search(user_embeddings, k=10, exclude_ids=seen_item_ids)

Subpackages (``tr.data``, ``tr.features``, ``tr.layers``, ``tr.tasks``, ``tr.metrics``,
``tr.index``, ``tr.models``, ``tr.train``, ``tr.serve``, ...) hold the rest. ``tr.recommend`` is
the module (``tr.recommend.recommend(run, data, users, k)``): a function of the same name would be
replaced by the module as soon as anything imports ``towerrec.recommend``.
"""

from towerrec._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # data: loaders, the Dataset schema, splits
    "Dataset": "towerrec.data.tables",
    "DATASET_NAMES": "towerrec.data.registry",
    "load_dataset": "towerrec.data.registry",
    "import_interactions": "towerrec.data.importer",
    "load_movielens": "towerrec.data.movielens",
    "make_synthetic": "towerrec.data.synthetic",
    "save_dataset": "towerrec.data.store",
    "load_dataset_dir": "towerrec.data.store",
    "Split": "towerrec.data.splits",
    "make_split": "towerrec.data.splits",
    "split_random": "towerrec.data.splits",
    "split_temporal": "towerrec.data.splits",
    "split_leave_last_out": "towerrec.data.splits",
    "sample_lists": "towerrec.data.listwise",
    "ListSample": "towerrec.data.listwise",
    # features
    "FeatureSpec": "towerrec.features",
    "InputSpec": "towerrec.features",
    "FeatureSet": "towerrec.features",
    "FittedFeatures": "towerrec.features",
    "Vocabulary": "towerrec.features",
    "Bucketizer": "towerrec.features",
    "Normalizer": "towerrec.features",
    # layers
    "FeatureEmbedding": "towerrec.layers",
    "MLP": "towerrec.layers",
    "GRUEncoder": "towerrec.layers",
    "SelfAttentionEncoder": "towerrec.layers",
    "Cross": "towerrec.layers",
    "CrossNetwork": "towerrec.layers",
    "DotInteraction": "towerrec.layers",
    # tasks
    "Retrieval": "towerrec.tasks",
    "Ranking": "towerrec.tasks",
    # metrics
    "TargetRanks": "towerrec.metrics",
    "evaluate_retrieval": "towerrec.metrics",
    "target_ranks": "towerrec.metrics",
    "topk_metrics": "towerrec.metrics",
    "rmse": "towerrec.metrics",
    "mae": "towerrec.metrics",
    "auc": "towerrec.metrics",
    "list_metrics": "towerrec.metrics",
    # indexes
    "Index": "towerrec.index",
    "SearchResult": "towerrec.index",
    "BruteForceIndex": "towerrec.index",
    "FaissIndex": "towerrec.index",
    "load_index": "towerrec.index",
    "recall_against": "towerrec.index",
    # models
    "Tower": "towerrec.models",
    "TwoTowerModel": "towerrec.models",
    "SequentialModel": "towerrec.models",
    "PopularityModel": "towerrec.models",
    "EASEModel": "towerrec.models",
    "MultiTaskModel": "towerrec.models",
    "build_two_tower": "towerrec.models",
    "build_multitask": "towerrec.models",
    "DeepRankingModel": "towerrec.models",
    "build_ranking_model": "towerrec.models",
    # the one model path: a model computes its loss, the trainer owns the loop, save/load any model
    "Model": "towerrec.model",
    "RetrievalModel": "towerrec.model",
    "RankingModel": "towerrec.model",
    "Trainer": "towerrec.train",
    "Callback": "towerrec.train",
    "prepare": "towerrec.train",
    "save": "towerrec.saving",
    "load": "towerrec.saving",
    # config, runs, recommend, serve
    "RunConfig": "towerrec.config",
    "load_config": "towerrec.config",
    "config_from_dict": "towerrec.config",
    "preset": "towerrec.presets",
    "train_run": "towerrec.runs",
    "load_run": "towerrec.runs",
    "export_bundle": "towerrec.serve",
    "load_bundle": "towerrec.serve",
    "Bundle": "towerrec.serve",
    # retrieve-then-rank: business rules after ranking
    "BusinessRules": "towerrec.rules",
    "RetrieveThenRank": "towerrec.pipeline",
    # errors
    "TowerrecError": "towerrec.errors",
    "DataError": "towerrec.errors",
    "ConfigError": "towerrec.errors",
}

_SUBMODULES = ("config", "data", "errors", "experiments", "features", "index", "layers", "metrics", "model", "models",
               "pipeline", "presets", "recommend", "rules", "runs", "saving", "serve", "tasks", "track", "train", "tune")

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
