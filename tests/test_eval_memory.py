"""Evaluation memory is bounded by chunking (issue 13, kind 7): no [Q, N] matrix, no all-query exclusion lists.

Memory-independent checks: every score matrix, query batch and exclusion list the evaluation
builds covers at most one chunk of queries, and the chunk respects the score budget.
"""

from __future__ import annotations

import torch

from config_helpers import small_config

from towerrec.data.synthetic import make_synthetic
from towerrec.metrics import topk
from towerrec.train import evaluate as evaluate_module
from towerrec.train import prepared as prepared_module
from towerrec.train.evaluate import evaluate_protocols
from towerrec.train.models import build_model, fit_baseline
from towerrec.train.prepared import prepare


def _record_chunks(monkeypatch):
    """Records the shape of every score chunk rank_targets sees and every exclusion CSR gathered."""
    shapes, gathered = [], []
    real_rank, real_gather = topk.rank_targets, prepared_module.gather_rows

    def rank(scores, *args, **kwargs):
        def recorded(start, stop):
            out = scores(start, stop)
            shapes.append(tuple(out.shape))
            return out
        return real_rank(recorded, *args, **kwargs)

    def gather(csr, rows):
        gathered.append(int(rows.shape[0]))
        return real_gather(csr, rows)

    monkeypatch.setattr(evaluate_module, "rank_targets", rank)
    monkeypatch.setattr(prepared_module, "gather_rows", gather)
    return shapes, gathered


def test_two_tower_and_baseline_evaluation_work_in_bounded_chunks(monkeypatch):
    data_set = make_synthetic(300, 120, 9000, seed=3)
    for kind in ("two-tower", "ease", "popularity"):
        config = small_config(data={"dataset": "synthetic"}, model={"kind": kind, "embedding_dim": 8})
        data = prepare(config, data_set, progress=False)
        model = build_model(config, data)
        if kind != "two-tower":
            fit_baseline(model, data)
        whole = evaluate_protocols(model, data, data.test, ks=(1, 10))
        shapes, gathered = _record_chunks(monkeypatch)
        budget = data.num_items * 50  # at most 50 queries per chunk
        chunked = evaluate_protocols(model, data, data.test, ks=(1, 10), score_budget=budget)
        monkeypatch.undo()
        assert len(data.test) > 500
        assert shapes and all(rows <= 50 and cols == data.num_items for rows, cols in shapes), kind
        assert sum(rows for rows, _ in shapes) == len(data.test)  # each query scored once for both protocols
        assert gathered and max(gathered) <= 50, kind  # seen items gathered per chunk, never for all queries
        for protocol in whole:
            assert chunked[protocol] == whole[protocol]


def test_sequential_evaluation_works_in_bounded_chunks():
    from towerrec.data.tables import Dataset
    from towerrec.train.evaluate import evaluate_protocols
    from towerrec.train.models import build_model
    from towerrec.train.sequence_data import prepare_sequences

    synthetic = make_synthetic(200, 60, 4000, seed=4)
    config = small_config(model={"kind": "sequential", "embedding_dim": 8},
                         sequence={"protocol": "leave-last-out", "min_rating": 0.0})
    data = prepare_sequences(config, Dataset("s", synthetic.interactions, synthetic.items, fingerprint="s"),
                             progress=False)
    model = build_model(config, data)
    encoded = []
    real_encode = model.encode

    def encode(inputs, *args, **kwargs):
        encoded.append(int(inputs.shape[0]))
        return real_encode(inputs, *args, **kwargs)

    model.encode = encode
    whole = evaluate_protocols(model, data, data.test, ks=(1, 10))
    encoded.clear()
    chunked = evaluate_protocols(model, data, data.test, ks=(1, 10), score_budget=data.num_items * 16)
    assert encoded and max(encoded) <= 16 and sum(encoded) == len(data.test)
    assert chunked == whole
    assert torch.is_tensor(data.test.targets)
