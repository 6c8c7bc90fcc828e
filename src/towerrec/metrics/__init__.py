"""Evaluation metrics, computed exactly over the full catalogue (never against sampled negatives).

Retrieval: :func:`evaluate_retrieval`, :func:`topk_metrics`. Ranking: :func:`rmse`, :func:`mae`,
:func:`auc`, :func:`list_metrics` (NDCG@K and MRR, exact under tied scores).

Items are named by id: targets and exclusions are item ids (``candidate_ids=``
says which; by default a candidate's row number is its id). Inputs may be
tensors, numpy arrays or lists. The position-based engine behind them
(``towerrec.metrics.topk.rank_targets`` with its ``CSR`` exclusions) is internal.
"""

from towerrec.metrics.ranking import auc, list_metrics, mae, rmse
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
    "auc",
    "evaluate_retrieval",
    "list_metrics",
    "mae",
    "rmse",
    "summarize",
    "target_ranks",
    "topk_metrics",
    "user_recall_at_k",
]
