"""Every kind of run takes one path: the same run directory (model.json + model.safetensors), the same
evaluation, the same --device; sequential runs answer MovieLens's merged twin ids in --history."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

import towerrec.runs as runs_module
from cli_helpers import run_cli_text as run_cli
from towerrec.config import config_from_dict
from towerrec.data.movielens import DuplicateTitlesWarning
from towerrec.data.store import save_dataset
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import TowerrecError
from towerrec.models.baselines import PopularityModel
from towerrec.models.sequential import SequentialModel
from towerrec.models.two_tower import TwoTowerModel
from towerrec.recommend import open_run_with_data
from towerrec.runs import RUN_FILES, load_run, train_run
from towerrec.saving import load

QUIET = {"progress": False, "log": lambda *_: None}


pytestmark = pytest.mark.usefixtures("home")  # a fresh TOWERREC_HOME per test (conftest.py)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(60, 50, 1200, seed=11)


def _config(kind: str, **sections):
    base = {"name": kind, "model": {"kind": kind, "embedding_dim": 8}, "train": {"epochs": 1, "batch_size": 64},
            "eval": {"ks": [1, 10]}}
    if kind == "sequential":
        base["sequence"] = {"protocol": "leave-last-out", "max_length": 5, "min_rating": 0.0, "user_embedding": True}
    for key, values in sections.items():
        base.setdefault(key, {}).update(values)
    return config_from_dict(base)


@pytest.mark.parametrize("kind,cls", [("two-tower", TwoTowerModel), ("sequential", SequentialModel),
                                      ("popularity", PopularityModel)])
def test_every_kind_of_run_stores_a_model_that_loads_from_json(tmp_path, dataset, kind, cls):
    result = train_run(_config(kind), runs_root=tmp_path, dataset=dataset, **QUIET)
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"model.json", "model.safetensors", "catalogue.parquet", "meta.json"} <= files <= set(RUN_FILES)
    assert ("features.json" in files) == (kind != "sequential")
    assert ("users.parquet" in files) == (kind == "sequential")
    run = load_run(result.run_dir)
    assert type(run.model) is cls and not run.model.training
    assert type(load(result.run_dir)) is cls  # the run's model is a plain towerrec saved model
    for name, tensor in result.model.state_dict().items():
        torch.testing.assert_close(run.model.state_dict()[name], tensor.cpu())
    assert run.catalogue.columns == ["item_id", "title", "train_count"]
    assert "test" in result.metrics and set(result.metrics["test"]) == {"seen_excluded", "tfrs"}
    if kind == "sequential":  # leave-last-out has a validation split: evaluated on the same path
        assert set(result.metrics["validation"]) == {"seen_excluded", "tfrs"}


def test_the_device_reaches_the_trainer_and_is_not_part_of_the_run(tmp_path, dataset, monkeypatch):
    seen = []
    original = runs_module.Trainer.from_config.__func__

    def spy(cls, config, data, model, **kwargs):
        seen.append(kwargs.get("device"))
        return original(cls, config, data, model, **kwargs)

    monkeypatch.setattr(runs_module.Trainer, "from_config", classmethod(spy))
    first = train_run(_config("sequential"), runs_root=tmp_path, dataset=dataset, device="cpu", **QUIET)
    assert seen == [torch.device("cpu")]
    again = train_run(_config("sequential"), runs_root=tmp_path, dataset=dataset, **QUIET)  # no device: same run
    assert again.reused and again.run_dir == first.run_dir


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_sequential_run_trains_evaluates_and_recommends_on_a_gpu(tmp_path, dataset):
    from towerrec.recommend import recommend_from_histories
    from towerrec.train.evaluate import evaluate_protocols

    result = train_run(_config("sequential", train={"epochs": 2}), runs_root=tmp_path, dataset=dataset,
                       device="cuda", **QUIET)
    assert all(p.device.type == "cuda" for p in result.model.parameters())
    run = load_run(result.run_dir)  # loads on the CPU, whatever it trained on
    assert all(p.device.type == "cpu" for p in run.model.parameters())
    on_cpu = evaluate_protocols(run.model, result.data, result.data.test, ks=(1, 10))
    for protocol, metrics in result.metrics["test"].items():  # evaluated on the GPU during train_run
        assert metrics == pytest.approx(on_cpu[protocol], abs=0.02), protocol
    run.model.to("cuda")
    recs = recommend_from_histories(run, {"h": [0, 1, 2]}, k=3)["h"]
    assert len(recs) == 3 and {0, 1, 2}.isdisjoint(run.catalogue["item_id"].to_list().index(r.item_id) for r in recs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_clear_line_on_every_command(capsys, tmp_path):
    save_dataset(make_synthetic(40, 40, 600, seed=2), tmp_path / "ds")
    config = tmp_path / "c.toml"
    config.write_text(f'name = "dev"\n[data]\ndataset = "{tmp_path / "ds"}"\n[model]\nkind = "sequential"\n'
                      'embedding_dim = 8\n[sequence]\nprotocol = "leave-last-out"\nmax_length = 4\n'
                      '[train]\nepochs = 1\nbatch_size = 64\n[eval]\nks = [1, 10]\n')
    runs = tmp_path / "runs"
    for nproc in ("1", "2"):  # --nproc 2: refused before any worker process starts
        code, out = run_cli(capsys, "train", config, "--runs", runs, "--device", "cuda", "--nproc", nproc)
        assert code == 1 and "'cuda' is not available" in out and "Traceback" not in out, out
        assert "torchrun" not in out, out
    assert not runs.exists() or not any(p for p in runs.iterdir() if not p.name.startswith("."))  # nothing trained
    code, out = run_cli(capsys, "train", config, "--runs", runs, "--device", "cpu")
    assert code == 0, out
    (run_dir,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    for command in (("evaluate", run_dir), ("recommend", run_dir, "--history", "1,2"),
                    ("experiment", "--runs", runs, "--dataset", tmp_path / "ds", "--num-epochs", "1")):
        code, out = run_cli(capsys, *command, "--device", "cuda")
        assert code == 1 and "'cuda' is not available" in out and "Traceback" not in out, (command, out)
    code, out = run_cli(capsys, "evaluate", run_dir, "--device", "cpu", "--split", "validation")
    assert code == 0 and re.search(r"validation,\s+seen items\s+excluded", out), out
    recorded = json.loads((run_dir / "metrics.json").read_text())["validation"]["seen_excluded"]
    assert f"{recorded['top_10_accuracy']:.4f}" in out and f"mrr {recorded['mrr']:.4f}" in out  # same figures
    with pytest.raises(TowerrecError, match="not a device PyTorch knows"):
        open_run_with_data(run_dir, device="gpu0")


U_ITEM = ("1|Chasing Amy (1997)|01-Jan-1997|||0|0|1\n2|Heat (1995)|01-Jan-1995|||0|1|0\n"
          "3|Chasing Amy (1997)|01-Jan-1997|||0|0|1\n4|Solo (1996)|01-Jan-1996|||0|1|0\n"
          "5|Fargo (1996)|01-Jan-1996|||0|0|1\n6|Babe (1995)|01-Jan-1995|||0|1|0\n")
U_USER = "".join(f"{u}|30|M|other|1000{u}\n" for u in range(1, 9))
GENRES = "unknown|0\nAction|1\nComedy|2\n\n"


def test_history_maps_movielens_merged_twin_ids(capsys, tmp_path):
    """MovieLens 268 is merged into 246 (same title): --history 268 means 246, not an unknown item."""
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    ratings = [(u, i, 4, 100 * u + step) for u in range(1, 9) for step, i in enumerate((2, 4, 5, 6, 1 + u % 2))]
    for name, text in {"u.item": U_ITEM, "u.user": U_USER, "u.genre": GENRES,
                       "u.data": "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings)}.items():
        (folder / name).write_text(text)
    config = tmp_path / "c.toml"
    config.write_text(f'name = "twins"\n[data]\ndataset = "ml-100k"\ndata_dir = "{folder}"\n[model]\n'
                      'kind = "sequential"\nembedding_dim = 4\n[sequence]\nprotocol = "leave-last-out"\n'
                      'max_length = 3\nunknown_items = "error"\n[train]\nepochs = 1\nbatch_size = 8\n'
                      '[eval]\nks = [1, 2]\n')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DuplicateTitlesWarning)
        code, out = run_cli(capsys, "train", config, "--runs", tmp_path / "runs")
        assert code == 0, out
        (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
        assert load_run(run_dir).item_aliases == {"3": 1}
        code, canonical = run_cli(capsys, "recommend", run_dir, "--history", "2,1", "-k", "5")
        assert code == 0, canonical
        code, twin = run_cli(capsys, "recommend", run_dir, "--history", "2,3", "-k", "5")
    assert code == 0 and twin == canonical, twin  # unknown_items = "error" would have refused an unknown 3
    listed = re.findall(r"\(id (\d+),", twin)
    assert len(listed) == 3 and {"1", "2", "3"}.isdisjoint(listed)  # 1 (= 3) and 2 are the history: excluded


def test_callbacks_reach_the_trainer_and_see_every_trained_epoch_but_not_a_reused_run(tmp_path, dataset):
    from towerrec.train.trainer import Callback

    class Epochs(Callback):
        def __init__(self) -> None:
            self.records: list[dict] = []

        def on_epoch_end(self, trainer, epoch, record) -> None:
            self.records.append(record)

    config = _config("two-tower").replace(train={"epochs": 2, "eval_every": 1})
    seen = Epochs()
    train_run(config, runs_root=tmp_path, dataset=dataset, callbacks=[seen], **QUIET)
    assert [r["epoch"] for r in seen.records] == [1, 2]
    assert all("loss" in r and any(k.startswith("test/") for k in r) for r in seen.records)
    later = Epochs()
    assert train_run(config, runs_root=tmp_path, dataset=dataset, callbacks=[later], **QUIET).reused
    assert later.records == []
