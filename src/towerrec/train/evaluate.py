"""Full-catalogue evaluation of any model, under both protocols.

``exclude_seen=True`` removes each user's train items from the ranking (what a
user experiences); ``False`` is the TFRS tutorials' protocol, where a model
that memorises train items wastes its top slots on them.
"""

from __future__ import annotations

from torch import nn

from towerrec.metrics.topk import evaluate_retrieval
from towerrec.train.models import catalogue_embeddings, query_embeddings
from towerrec.train.prepared import EncodedExamples, PreparedData


def evaluate_examples(
    model: nn.Module,
    data: PreparedData,
    examples: EncodedExamples,
    *,
    ks: tuple[int, ...] = (1, 5, 10, 50, 100),
    exclude_seen: bool = True,
) -> dict[str, float]:
    candidates = catalogue_embeddings(model, data)
    queries = query_embeddings(model, examples)
    exclude = data.exclusions_for(examples.user_rows) if exclude_seen else None
    ks = tuple(k for k in ks if k <= data.num_items)
    return evaluate_retrieval(queries, candidates, examples.targets, exclude=exclude, ks=ks)


def evaluate_both_protocols(
    model: nn.Module, data: PreparedData, examples: EncodedExamples, ks: tuple[int, ...]
) -> dict[str, dict[str, float]]:
    """``{"seen_excluded": ..., "tfrs": ...}`` metrics for one split."""
    return {
        "seen_excluded": evaluate_examples(model, data, examples, ks=ks, exclude_seen=True),
        "tfrs": evaluate_examples(model, data, examples, ks=ks, exclude_seen=False),
    }
