"""Evaluation metrics, computed exactly over the full catalogue (never against sampled negatives).

Items are named by id: targets and exclusions are item ids (``candidate_ids=``
says which; by default a candidate's row number is its id). Inputs may be
tensors, numpy arrays or lists. The position-based engine behind them
(``towerrec.metrics.topk.rank_targets`` with its ``CSR`` exclusions) is internal.
"""

from towerrec.metrics.topk import (
    DEFAULT_KS,
    TargetRanks,
    evaluate_retrieval,
    summarize,
    target_ranks,
    topk_metrics,
    user_recall_at_k,
)

__all__ = [
    "DEFAULT_KS",
    "TargetRanks",
    "evaluate_retrieval",
    "summarize",
    "target_ranks",
    "topk_metrics",
    "user_recall_at_k",
]
