"""field-01: tied scores never count for the target, on every evaluation path.

The tiny log of the case: 20 items, 5 early users who each rate 4 different
items (every item has one train interaction), then 4 new users whose 8 ratings
come last in time. A temporal cut puts exactly those 8 in test: EASE (empty
history) and popularity (equal counts) score all 20 items the same for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
import torch

from config_helpers import small_config

from towerrec.config import RunConfig
from towerrec.data.tables import Dataset
from towerrec.runs import train_run
from towerrec.train.evaluate import evaluate_protocols, popularity_metrics
from towerrec.train.sequence_data import prepare_sequences

FAIR = {"top_1_accuracy": 0.05, "top_5_accuracy": 0.25, "top_10_accuracy": 0.50, "ndcg@10": 0.2272, "mrr": 0.1799}
KS = (1, 5, 10, 50, 100)


def tiny_log() -> Dataset:
    users = [f"u{u}" for u in range(1, 6) for _ in range(4)] + ["u6", "u6", "u7", "u7", "u8", "u8", "u9", "u9"]
    items = list(range(1, 21)) + [3, 7, 12, 19, 1, 20, 5, 14]
    stamps = list(range(1, 21)) + list(range(1000, 1008))
    interactions = pl.DataFrame(
        {"user_id": users, "item_id": items, "rating": [None] * len(users), "timestamp": stamps},
        schema={"user_id": pl.String, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64},
    )
    return Dataset("tiny-cold", interactions, fingerprint="tiny-cold-log")


def _config(kind: str) -> RunConfig:
    return small_config(
        name=f"{kind}-cold",
        data={"dataset": "tiny-cold", "split": "temporal", "test_fraction": 0.2857},
        model={"kind": kind, "ease_l2": 1.0},
    )


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(metrics[key], 4) for key in FAIR}


@pytest.mark.parametrize("kind", ["ease", "popularity"])
def test_baselines_with_all_items_tied_get_the_fair_value(kind: str, tmp_path: Path) -> None:
    result = train_run(_config(kind), runs_root=tmp_path, progress=False, dataset=tiny_log(), log=lambda *_: None)
    assert len(result.data.test) == 8
    for protocol in ("seen_excluded", "tfrs"):
        metrics = result.metrics["test"][protocol]
        assert _rounded(metrics) == FAIR, protocol
        # K beyond the 20-item catalogue: every target is inside, so 1.0 (not nan, not missing)
        assert metrics["top_50_accuracy"] == metrics["top_100_accuracy"] == 1.0
    pessimistic = evaluate_protocols(result.model, result.data, result.data.test, ks=KS, ties="pessimistic")
    for protocol in ("seen_excluded", "tfrs"):  # counted against the target: last of 20
        assert all(pessimistic[protocol][key] == 0.0 for key in FAIR if key != "mrr"), protocol
        assert pessimistic[protocol]["mrr"] == pytest.approx(1 / 20)


def test_sequential_popularity_with_all_items_tied_gets_the_fair_value() -> None:
    # one test example per user, 20 items each trained once: every item ties
    users = [f"u{u}" for u in range(1, 21) for _ in range(3)]
    items = [i for u in range(20) for i in (u + 1, (u + 7) % 20 + 1, (u + 13) % 20 + 1)]
    interactions = pl.DataFrame(
        {"user_id": users, "item_id": items, "rating": [5.0] * 60, "timestamp": list(range(60))},
        schema={"user_id": pl.String, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64},
    )
    config = small_config(model={"kind": "sequential"}, sequence={"protocol": "leave-last-out"})
    data = prepare_sequences(config, Dataset("seq", interactions, fingerprint="seq"), progress=False)
    assert torch.unique(data.item_counts).numel() == 1  # every item has the same training count
    metrics = popularity_metrics(data, data.test, ks=KS, exclude_seen=False)
    assert _rounded(metrics) == FAIR
    assert metrics["top_50_accuracy"] == 1.0


def test_sequential_model_that_scores_everything_equally_gets_the_fair_value() -> None:
    users = [f"u{u}" for u in range(1, 21) for _ in range(3)]
    items = [i for u in range(20) for i in (u + 1, (u + 7) % 20 + 1, (u + 13) % 20 + 1)]
    interactions = pl.DataFrame(
        {"user_id": users, "item_id": items, "rating": [5.0] * 60, "timestamp": list(range(60))},
        schema={"user_id": pl.String, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64},
    )
    config = small_config(model={"kind": "sequential"}, sequence={"protocol": "leave-last-out"})
    data = prepare_sequences(config, Dataset("seq", interactions, fingerprint="seq"), progress=False)
    from towerrec.train.models import build_model

    model = build_model(config, data)
    with torch.no_grad():  # a collapsed model: every item embedding the same
        model.candidate_weight().copy_(torch.ones_like(model.candidate_weight()))
    metrics = evaluate_protocols(model, data, data.test, ks=KS)["tfrs"]
    assert _rounded(metrics) == FAIR


ML100K = Path(os.environ.get("ML100K", Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ml-100k"))


@pytest.mark.realdata
@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="MovieLens-100K is absent (set ML100K)")
def test_ml100k_ease_temporal_split_gets_the_fair_values(tmp_path: Path) -> None:
    """field-01's reference config: EASE λ = 300, global time cut, last 20% test (85% cold users)."""
    config = small_config(
        name="ease-temporal",
        data={"dataset": "movielens-100k", "data_dir": str(ML100K), "split": "temporal", "test_fraction": 0.2,
              "duplicate_titles": "keep"},  # field-01 measured the 1,682-id catalogue
        model={"kind": "ease", "ease_l2": 300.0},
    )
    result = train_run(config, runs_root=tmp_path, progress=False, log=lambda *_: None)
    got = result.metrics["test"]["seen_excluded"]
    assert [round(got[f"top_{k}_accuracy"], 4) for k in KS] == [0.0016, 0.0071, 0.0135, 0.0534, 0.0963]
    pessimistic = evaluate_protocols(result.model, result.data, result.data.test, ks=KS, ties="pessimistic")
    got = pessimistic["seen_excluded"]
    assert [round(got[f"top_{k}_accuracy"], 4) for k in KS] == [0.0011, 0.0046, 0.0084, 0.0280, 0.0456]
