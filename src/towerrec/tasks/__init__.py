"""Tasks own the loss: how a batch of tower outputs becomes one number to minimise."""

from towerrec.tasks.retrieval import (
    RetrievalTask,
    candidate_sampling_probability,
    hard_negative_mining,
    in_batch_logits,
    logq_correction,
    remove_accidental_hits,
    sample_negatives,
    sampling_log_q,
)

__all__ = [
    "RetrievalTask",
    "candidate_sampling_probability",
    "hard_negative_mining",
    "in_batch_logits",
    "logq_correction",
    "remove_accidental_hits",
    "sample_negatives",
    "sampling_log_q",
]
