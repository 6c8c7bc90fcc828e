"""Tasks own the loss: how a batch of tower outputs becomes one number to minimise."""

from towerrec.tasks.retrieval import (
    Retrieval,
    candidate_sampling_probability,
    hard_negative_mining,
    in_batch_logits,
    logq_correction,
    remove_accidental_hits,
    sample_negatives,
    sampling_log_q,
)
from towerrec.tasks.unique_softmax import (
    unique_candidates,
    unique_in_batch_softmax_loss,
)

__all__ = [
    "Retrieval",
    "candidate_sampling_probability",
    "hard_negative_mining",
    "in_batch_logits",
    "logq_correction",
    "remove_accidental_hits",
    "sample_negatives",
    "sampling_log_q",
    "unique_candidates",
    "unique_in_batch_softmax_loss",
]
