"""Tasks own the loss: how a batch of tower outputs (or ranking scores) becomes one number to minimise."""

from towerrec.tasks.blocked_softmax import blocked_softmax_loss
from towerrec.tasks.ranking import (
    LIST_LOSSES,
    LOSSES,
    Ranking,
    binary_cross_entropy_loss,
    listmle_loss,
    mse_loss,
    pairwise_hinge_loss,
    pairwise_logistic_loss,
    softmax_loss,
)
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
    "blocked_softmax_loss",
    "LIST_LOSSES",
    "LOSSES",
    "Ranking",
    "Retrieval",
    "binary_cross_entropy_loss",
    "candidate_sampling_probability",
    "hard_negative_mining",
    "in_batch_logits",
    "listmle_loss",
    "logq_correction",
    "mse_loss",
    "pairwise_hinge_loss",
    "pairwise_logistic_loss",
    "remove_accidental_hits",
    "sample_negatives",
    "sampling_log_q",
    "softmax_loss",
    "unique_candidates",
    "unique_in_batch_softmax_loss",
]
