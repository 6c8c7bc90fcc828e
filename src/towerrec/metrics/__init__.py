"""Evaluation metrics, computed over the full catalogue."""

from towerrec.metrics.topk import (
    CSR,
    DEFAULT_KS,
    TargetRanks,
    evaluate_retrieval,
    rank_targets,
    summarize,
    target_ranks,
    topk_metrics,
    user_recall_at_k,
)

__all__ = [
    "CSR",
    "DEFAULT_KS",
    "TargetRanks",
    "evaluate_retrieval",
    "rank_targets",
    "summarize",
    "target_ranks",
    "topk_metrics",
    "user_recall_at_k",
]
