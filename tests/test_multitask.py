"""The multi-task model: retrieval + rating head on shared towers, weighted losses, save/load, training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import towerrec as tr
from config_helpers import small_config
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError
from towerrec.features import InputSpec
from towerrec.model import RankingModel, RetrievalModel
from towerrec.models import MultiTaskModel, Tower, build_multitask
from towerrec.tasks import Ranking, Retrieval
from towerrec.train.prepared import prepare

NUM_USERS, NUM_ITEMS = 24, 16
USER, ITEM = InputSpec("user", "id", NUM_USERS, 1), InputSpec("item", "id", NUM_ITEMS, 1)


def _model(**kwargs) -> MultiTaskModel:
    torch.manual_seed(0)
    kwargs.setdefault("retrieval_task", Retrieval(logq_correction=False))
    kwargs.setdefault("rating_layers", (16, 8))
    model = MultiTaskModel(Tower([USER], embedding_dim=8), Tower([ITEM], embedding_dim=8), **kwargs)
    model.set_catalogue({"item": torch.arange(NUM_ITEMS)})
    return model


def _ratings(n: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    """Ratings 1..5 that depend on the user and the item (learnable), items drawn with repeats."""
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(NUM_USERS, (n,), generator=g)
    items = torch.randint(NUM_ITEMS, (n,), generator=g)
    label = 1.0 + ((users % 3 + items % 5) % 5).float()
    return {"user": users, "candidate_index": items, "label": label}


def _grads(model: MultiTaskModel, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.zero_grad()
    loss.backward()
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


def test_the_loss_is_the_weighted_sum_of_the_two_tasks_computed_separately():
    model = _model(retrieval_weight=0.3, ranking_weight=2.0)
    batch = _ratings(64)
    index = batch["candidate_index"]
    query = model.query_embeddings(batch)
    candidates = model.candidate_embeddings({"item": index})  # one row per example, duplicates included
    retrieval = Retrieval(logq_correction=False)(query, candidates, candidate_ids=index)
    ratings = model.rating_head(torch.cat([query, candidates], dim=1)).squeeze(1)  # dot similarity: raw = embedding
    ranking = Ranking(loss="mse")(batch["label"], ratings)
    torch.testing.assert_close(model.compute_loss(batch), 0.3 * retrieval + 2.0 * ranking, rtol=1e-5, atol=1e-6)
    parts = model.compute_losses(batch)
    torch.testing.assert_close(parts["retrieval"], retrieval, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["ranking"], ranking, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.score(batch), ratings)


def test_weights_decide_which_loss_the_shared_towers_learn_from():
    batch = _ratings(64)
    rating_only = _model(retrieval_weight=0.0, ranking_weight=1.0)
    assert set(rating_only.compute_losses(batch)) == {"ranking"}
    got = _grads(rating_only, rating_only.compute_loss(batch))
    expected = _grads(rating_only, Ranking(loss="mse")(batch["label"], rating_only.score(batch)))
    for name in got:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    assert got["query_tower.embeddings.user.table.weight"].abs().sum() > 0  # the towers learn from ratings

    retrieval_only = _model(retrieval_weight=1.0, ranking_weight=0.0)
    assert set(retrieval_only.compute_losses(batch)) == {"retrieval"}
    got = _grads(retrieval_only, retrieval_only.compute_loss(batch))
    assert all(got[name] is None for name in got if name.startswith("rating_head."))
    query = retrieval_only.query_embeddings(batch)
    candidates = retrieval_only.candidate_embeddings({"item": batch["candidate_index"]})
    expected = _grads(retrieval_only, Retrieval(logq_correction=False)(query, candidates,
                                                                     candidate_ids=batch["candidate_index"]))
    for name in got:
        if not name.startswith("rating_head."):
            torch.testing.assert_close(got[name], expected[name], msg=name)


def test_sample_weights_weigh_both_tasks():
    model = _model(retrieval_weight=1.0, ranking_weight=1.0)
    batch = _ratings(32)
    ones = model.compute_losses({**batch, "sample_weight": torch.ones(32)})
    zero_half = torch.cat([torch.ones(16), torch.zeros(16)])
    first = model.compute_losses({**batch, "sample_weight": zero_half})
    assert not torch.allclose(first["ranking"], ones["ranking"])
    assert not torch.allclose(first["retrieval"], ones["retrieval"])


def test_it_is_a_retrieval_model_and_a_ranking_model_with_list_scores():
    model = _model()
    assert isinstance(model, RetrievalModel) and isinstance(model, RankingModel)
    assert model.catalogue_embeddings().shape == (NUM_ITEMS, 8)
    users = torch.tensor([0, 5, 7])
    lists = torch.tensor([[1, 2, 3, 4], [0, 0, 9, 15], [3, 2, 1, 0]])
    scores = model.score({"user": users, "candidate_index": lists})
    assert scores.shape == (3, 4)
    pointwise = model.score({"user": users.repeat_interleave(4), "candidate_index": lists.reshape(-1)})
    torch.testing.assert_close(scores, pointwise.reshape(3, 4))
    ranking_only = _model(retrieval_weight=0.0)  # lists train the ranking task
    loss = ranking_only.compute_loss({"user": users, "candidate_index": lists, "label": torch.ones(3, 4)})
    assert loss.dim() == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="retrieval task needs one candidate per row"):
        model.compute_loss({"user": users, "candidate_index": lists, "label": torch.ones(3, 4)})


def test_cosine_similarity_normalises_retrieval_but_the_head_reads_raw_tower_outputs():
    model = _model(similarity="cosine")
    batch = _ratings(8)
    assert torch.allclose(model.query_embeddings(batch).norm(dim=1), torch.ones(8))
    raw = torch.cat([model.query_tower(batch), model.candidate_tower({"item": batch["candidate_index"]})], dim=1)
    torch.testing.assert_close(model.score(batch), model.rating_head(raw).squeeze(1))


def test_bad_arguments_are_refused_at_construction_and_a_missing_label_is_named():
    for kwargs, match in (({"retrieval_weight": 0.0, "ranking_weight": 0.0}, "both 0"),
                          ({"ranking_weight": -1.0}, "ranking_weight must be a finite number >= 0"),
                          ({"retrieval_weight": float("nan")}, "retrieval_weight"),
                          ({"rating_layers": (16, 0)}, "rating_layers"),
                          ({"similarity": "l2"}, "similarity")):
        with pytest.raises(ConfigError, match=match):
            _model(**kwargs)
    batch = _ratings(8)
    del batch["label"]
    with pytest.raises(KeyError, match="'label'"):
        _model().compute_loss(batch)
    _model(ranking_weight=0.0).compute_loss(batch)  # retrieval alone needs no label


def test_save_and_load_round_trip(tmp_path):
    model = _model(retrieval_weight=0.5, ranking_weight=2.0, similarity="cosine",
                   ranking_task=Ranking(loss="mse"), dropout=0.1)
    model.eval()
    tr.save(model, tmp_path / "mt")
    loaded = tr.load(tmp_path / "mt")
    assert type(loaded) is MultiTaskModel and loaded.get_config() == model.get_config()
    assert model.has_catalogue and not loaded.has_catalogue  # the catalogue is given again after loading
    assert (loaded.retrieval_weight, loaded.ranking_weight, loaded.rating_layers) == (0.5, 2.0, [16, 8])
    loaded.set_catalogue({"item": torch.arange(NUM_ITEMS)})
    batch = _ratings(16)
    torch.testing.assert_close(loaded.score(batch), model.score(batch))
    torch.testing.assert_close(loaded.query_embeddings(batch), model.query_embeddings(batch))
    torch.testing.assert_close(loaded.catalogue_embeddings(), model.catalogue_embeddings())


def test_training_on_tiny_data_lowers_both_losses():
    model = _model(retrieval_weight=1.0, ranking_weight=1.0)
    data = _ratings(1024)
    with torch.no_grad():
        before = model.compute_losses(data)
    tr.Trainer(model, data, epochs=8, batch_size=128, optimizer="adam", learning_rate=0.02, progress=False).fit()
    with torch.no_grad():
        after = model.compute_losses(data)
    assert after["ranking"] < 0.5 * before["ranking"]
    assert after["retrieval"] < before["retrieval"]


def test_build_multitask_reads_the_fitted_features():
    config = small_config({"data": {"dataset": "synthetic"},
                           "model": {"query_features": ["user_id"], "candidate_features": ["item_id"],
                                     "embedding_dim": 8}})
    data = prepare(config, make_synthetic(60, 30, 800, seed=2), progress=False)
    model = build_multitask(data.features, embedding_dim=8, rating_layers=(4,), retrieval_weight=1.0,
                            ranking_weight=0.5)
    assert model.query_tower.names == ["user_id"] and model.candidate_tower.names == ["item_id"]
    assert [m.out_features for m in model.rating_head.modules() if isinstance(m, torch.nn.Linear)] == [4, 1]
    model.set_catalogue(data.catalogue, data.item_counts)
    batch = {**data.train.select(torch.arange(32)), "candidate_index": data.train.targets[:32],
             "label": torch.full((32,), 4.0)}
    assert torch.isfinite(model.compute_loss(batch))
    assert model.score(batch).shape == (32,)


# -- [model] kind = "multi-task": config, run, CLI ------------------------------------------------------------------

MULTI_TASK_TOML = (
    '[model]\nkind = "multi-task"\nquery_features = ["user_id"]\ncandidate_features = ["item_id"]\n'
    'embedding_dim = 8\n[ranking]\nrating_min = 1\nrating_max = 5\n[tasks]\nrating_layers = [16]\n'
    '[train]\nepochs = 2\nbatch_size = 256\noptimizer = "adam"\nlearning_rate = 0.02\n[eval]\nks = [10, 50]\n'
)


def _multi_task_config(**sections):
    values = {"data": {"dataset": "synthetic"},
              "model": {"kind": "multi-task", "query_features": ["user_id"], "candidate_features": ["item_id"],
                        "embedding_dim": 8},
              "ranking": {"rating_min": 1, "rating_max": 5}, "tasks": {"rating_layers": [16]},
              "train": {"epochs": 2, "batch_size": 256, "optimizer": "adam", "learning_rate": 0.02},
              "eval": {"ks": [10, 50]}}
    for section, changes in sections.items():
        values[section] = {**values.get(section, {}), **changes}
    return small_config(values)


def test_the_multi_task_kind_hashes_its_heads_and_refuses_what_it_cannot_train():
    config = _multi_task_config()
    assert config.replace(tasks={"ranking": 0.5}).hash() != config.hash()
    assert config.replace(tasks={"rating_layers": [8]}).hash() != config.hash()
    assert config.replace(task={"temperature": 0.5}).hash() != config.hash()  # its retrieval task
    two_tower = config.replace(model={"kind": "two-tower"})
    assert two_tower.replace(tasks={"ranking": 0.5}).hash() == two_tower.hash()  # other kinds do not read [tasks]
    for sections, match in (({"tasks": {"retrieval": 0.0, "ranking": 0.0}}, "both 0"),
                            ({"ranking": {"loss": "listmle"}}, "rates each training example"),
                            ({"ranking": {"loss": "mse", "train_on_lists": True}}, "rates each training example"),
                            ({"model": {"interaction": "cross"}}, r"\[model\] interaction is read by"),
                            ({"ranking": {"mean_offset": True}}, r"\[ranking\] mean_offset is read by"),
                            ({"ranking": {"embedding_l2": 0.1}}, r"\[ranking\] embedding_l2 is read by"),
                            ({"tasks": {"rating_layers": [0]}}, r"\[tasks\] rating_layers")):
        with pytest.raises(ConfigError, match=match):
            _multi_task_config(**sections)


def test_a_multi_task_run_reports_top_k_under_both_protocols_and_rating_metrics(tmp_path):
    from towerrec.runs import load_run, train_run

    dataset = make_synthetic(150, 60, 3000, seed=5)
    config = _multi_task_config(data={"validation_fraction": 0.1})
    result = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False, log=lambda *_: None)
    test = result.metrics["test"]
    assert set(test) == {"seen_excluded", "tfrs", "ranking", "ranking_baselines"} and "validation" in result.metrics
    assert set(test["ranking_baselines"]["item_mean"]) == set(test["ranking"])  # the rating head's baselines
    assert 0 <= test["tfrs"]["top_50_accuracy"] <= 1 and test["ranking"]["rmse"] < 2.0
    history = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert {"validation/top_10_accuracy", "validation/rmse"} <= set(history[-1])
    run = load_run(result.run_dir)
    assert type(run.model) is MultiTaskModel and run.model.has_catalogue
    assert (run.model.retrieval_weight, run.model.ranking_weight, run.model.rating_layers) == (1.0, 1.0, [16])
    from towerrec.train.evaluate import evaluate_ranking

    again = evaluate_ranking(run.model, result.data, result.data.test, config.ranking)
    assert again["rmse"] == pytest.approx(test["ranking"]["rmse"], rel=1e-5)


def test_the_trainer_gives_a_multi_task_model_labelled_prepared_data_and_evaluates_both_tasks():
    config = small_config({"data": {"dataset": "synthetic"},
                           "model": {"query_features": ["user_id"], "candidate_features": ["item_id"]}})
    data = prepare(config, make_synthetic(80, 40, 1500, seed=3), progress=False)
    model = build_multitask(data.features, embedding_dim=8, rating_layers=(8,))
    trainer = tr.Trainer(model, data, epochs=1, batch_size=256, ks=(10,), progress=False)
    batch = trainer.data.batch(torch.arange(4))
    assert {"candidate_index", "label", "user_id"} <= set(batch) and batch["label"].shape == (4,)
    torch.testing.assert_close(batch["label"], data.train.ratings[:4])
    trainer.fit()
    metrics = trainer.evaluate("test")
    assert {"top_10_accuracy", "mrr", "rmse", "mae", "auc"} <= set(metrics)


def test_towerrec_train_prints_one_table_with_top_k_and_rmse(capsys, tmp_path):
    from cli_helpers import run_cli_text
    from config_helpers import small_toml
    from towerrec.data.store import save_dataset

    save_dataset(make_synthetic(150, 60, 3000, seed=5), tmp_path / "ds")
    config = tmp_path / "mt.toml"
    config.write_text(small_toml(f'name = "mt-cli"\n[data]\ndataset = "{tmp_path / "ds"}"\n' + MULTI_TASK_TOML))
    code, out = run_cli_text(capsys, "train", str(config), "--runs", str(tmp_path / "runs"))
    assert code == 0, out
    assert out.count("┏") == 1 and re.search(r"top-10 .* top-50 .* RMSE", out), out
    run_dir = re.search(r"run directory: (\S+)", out).group(1)
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())["test"]
    for row in ("seen excl.", "TFRS"):
        protocol = "seen_excluded" if row == "seen excl." else "tfrs"
        line = next(line for line in out.splitlines() if row in line)
        assert f"{metrics[protocol]['top_50_accuracy']:.4f}" in line and f"{metrics['ranking']['rmse']:.4f}" in line
    baselines = metrics["ranking_baselines"]
    assert (f"rating baselines, test RMSE: global mean {baselines['global_mean']['rmse']:.4f}, "
            f"item mean {baselines['item_mean']['rmse']:.4f}") in out
    code, out = run_cli_text(capsys, "evaluate", run_dir)
    assert code == 0 and f"{metrics['ranking']['rmse']:.4f}" in out and "top-10" in out
    code, out = run_cli_text(capsys, "recommend", run_dir, "--user", "3", "-k", "3")
    assert code == 0, out  # a multi-task run retrieves like a two-tower run
