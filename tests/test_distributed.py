"""Data-parallel training with 2 gloo CPU processes: global in-batch negatives, exact gradients, the trainer, the CLI."""

from __future__ import annotations

import pytest
import torch

from distributed_helpers import RETRIEVAL_CASES, SEQUENTIAL_CASES, SPLITS, reference, run_workers

TOLERANCE = 1e-5


def _assert_matches(result, kind: str, case: str) -> None:
    loss, grads = result
    expected_loss, expected = reference(kind, case)
    assert loss == pytest.approx(expected_loss, abs=TOLERANCE), (kind, case)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected.get(name, torch.zeros_like(grad)), atol=TOLERANCE, rtol=0,
                                   msg=f"{kind}/{case}: gradient of {name}")


def test_two_processes_equal_one_process_over_the_global_batch(tmp_path):
    """Loss (mean of the shares) and every parameter's DDP-averaged gradient over 2 x B equal one process
    over the 2B batch: logQ, accidental hits (one item in both halves), temperature, sample weights, hard
    negatives, no ids, "sum" reduction, uneven and empty slices; sequential GRU / SASRec models with the
    in-batch (last step and all positions), full-softmax and sampled objectives."""
    jobs = [("retrieval", case, "even") for case in RETRIEVAL_CASES if case != "per-worker"]
    jobs += [("retrieval", "forward-ids", "uneven"), ("retrieval", "forward-ids", "empty"),
             ("retrieval", "hard-negatives", "uneven")]
    jobs += [("sequential", case, "even") for case in SEQUENTIAL_CASES]
    jobs += [("sequential", "in-batch", "uneven"), ("sequential", "sampled", "empty")]
    results = run_workers(tmp_path, jobs + [("retrieval", "per-worker", "even")])
    for kind, case, split in jobs:
        _assert_matches(results[f"{kind}/{case}/{split}"], kind, case)

    # Per-worker negatives (TFRS's multi-worker behaviour) give another loss on this batch, so the checks
    # above would fail if negatives stopped being global; it is the mean of the halves' own losses.
    per_worker, _ = results["retrieval/per-worker/even"]
    global_loss, _ = reference("retrieval", "per-worker")
    assert abs(per_worker - global_loss) > 1e-3
    halves = [float(_half_loss(torch.arange(8 * r, 8 * r + 8))) for r in range(2)]
    assert per_worker == pytest.approx(sum(halves) / 2, abs=TOLERANCE)


def _half_loss(rows):
    from distributed_helpers import retrieval_loss

    return retrieval_loss("per-worker", rows)[0]


def test_split_sizes_cover_the_global_batch():
    from towerrec.train.distributed import local_slice

    index = torch.arange(11)
    parts = [local_slice(index, r, 2) for r in range(2)]
    assert [len(p) for p in parts] == [6, 5] and torch.equal(torch.cat(parts), index)
    assert [len(local_slice(torch.arange(1), r, 2)) for r in range(2)] == [1, 0]
    assert all(sum(sizes) == 16 for sizes in SPLITS.values())


def test_trainer_on_two_processes_resumes_on_one(tmp_path):
    """The Trainer on 2 processes (rank 0 writes the checkpoint and history; the last global batch leaves
    rank 1 an empty slice) trains epoch 1 as one process does; one process resumes its checkpoint for epoch 2
    and ends where an uninterrupted one-process run ends."""
    from distributed_helpers import fit, fit_processes

    fit_processes(tmp_path, tmp_path / "parallel", epochs=1)
    resumed, resumed_model = fit(tmp_path / "parallel", epochs=2)
    alone, alone_model = fit(tmp_path / "alone", epochs=2)
    assert resumed.resumed_from_epoch == 1
    losses = [r["loss"] for r in resumed.history]
    assert losses == pytest.approx([r["loss"] for r in alone.history], abs=TOLERANCE)
    for name, value in alone_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], value, atol=TOLERANCE, rtol=0)
    rank1 = torch.load(tmp_path / "parallel" / "rank1.pt", weights_only=True)
    assert rank1["history"] == pytest.approx(losses[:1], abs=TOLERANCE)
    lines = (tmp_path / "parallel" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2  # epoch 1 written once (by rank 0), then epoch 2 by the resumed run


def test_train_nproc_2_writes_one_run_with_the_one_process_loss_curve(capsys, tmp_path):
    """``towerrec train CONFIG --nproc 2`` (torchrun, 2 gloo processes) writes ONE finished run folder (rank 0)
    whose loss curve equals the one-process run's for the same global batch (Adam, 2 epochs: the curves agree
    to 1e-4; float sums in another order are the only difference), with the same metrics (to 1e-3)."""
    import json
    import re

    from cli_helpers import run_cli_text
    from config_helpers import small_toml
    from towerrec.data.store import save_dataset
    from towerrec.data.synthetic import make_synthetic

    save_dataset(make_synthetic(150, 60, 2500, seed=5), tmp_path / "ds")
    config = tmp_path / "c.toml"
    config.write_text(small_toml(
        f'name = "ddp"\n[data]\ndataset = "{tmp_path / "ds"}"\n[model]\nembedding_dim = 8\n'
        '[train]\nepochs = 2\nbatch_size = 300\noptimizer = "adam"\nlearning_rate = 0.02\n[eval]\nks = [1, 10]\n'))
    runs = {}
    for nproc in (2, 1):
        code, out = run_cli_text(capsys, "train", config, "--runs", tmp_path / f"runs{nproc}", "--nproc", nproc)
        assert code == 0, out
        folders = [p for p in (tmp_path / f"runs{nproc}").iterdir() if not p.name.startswith(".")]
        assert len(folders) == 1 and json.loads((folders[0] / "meta.json").read_text())["finished"]
        assert not (folders[0] / "checkpoints").exists()
        if nproc == 1:
            assert re.search(r"run directory: (\S+)", out).group(1) == str(folders[0])
        runs[nproc] = folders[0]
    curves = {n: [json.loads(line)["loss"] for line in (d / "history.jsonl").read_text().splitlines()]
              for n, d in runs.items()}
    assert len(curves[2]) == 2 and curves[2] == pytest.approx(curves[1], abs=1e-4)
    metrics = {n: json.loads((d / "metrics.json").read_text()) for n, d in runs.items()}
    assert metrics[2]["processes"] == 2 and "processes" not in metrics[1]
    for name, value in metrics[1]["test"]["seen_excluded"].items():
        assert metrics[2]["test"]["seen_excluded"][name] == pytest.approx(value, abs=1e-3), name
    assert runs[2].name == runs[1].name  # the same configuration, so the same run (the global batch is the config's)
