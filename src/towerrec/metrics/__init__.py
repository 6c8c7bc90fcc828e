"""Evaluation metrics, computed over the full catalogue."""

from towerrec.metrics.topk import (
    CSR,
    DEFAULT_KS,
    evaluate_retrieval,
    target_ranks,
    topk_metrics,
    user_recall_at_k,
)

__all__ = ["CSR", "DEFAULT_KS", "evaluate_retrieval", "target_ranks", "topk_metrics", "user_recall_at_k"]
