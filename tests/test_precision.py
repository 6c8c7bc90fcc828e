"""bf16 mixed precision: autocast around the loss, fp32 weights and state, errors at construction."""

import pytest
import torch
from torch import nn

from config_helpers import small_config
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError
from towerrec.runs import train_run
from towerrec.tasks.unique_softmax import unique_candidates, unique_in_batch_softmax_loss
from towerrec.train import precision as precision_module
from towerrec.train.models import build_model
from towerrec.train.prepared import prepare
from towerrec.train.trainer import Trainer

needs_bf16 = pytest.mark.skipif(not precision_module.cpu_has_native_bf16(), reason="this CPU has no native bf16")


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(300, 120, 9000, seed=3)


def _config(**train):
    return small_config({
        "name": "t",
        "data": {"dataset": "synthetic", "split": "tfrs-random", "seed": 1},
        "model": {"embedding_dim": 16, "layer_sizes": [32]},
        "task": {"temperature": 0.2},
        "train": {"epochs": 4, "batch_size": 512, "optimizer": "adam", "learning_rate": 0.02, "eval_every": 4,
                  **train},
        "eval": {"ks": [10]},
    })


def test_precision_is_checked_and_kept_out_of_the_hash_at_fp32():
    assert _config(precision="fp32").hash() == _config().hash()
    assert _config(precision="bf16").hash() != _config().hash()
    with pytest.raises(ConfigError, match="precision"):
        _config(precision="fp16")


def test_bf16_without_native_support_fails_at_construction(dataset, monkeypatch):
    config = _config(precision="bf16")
    data = prepare(config, dataset, progress=False)
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="no native bf16"):
        Trainer.from_config(config, data, build_model(config, data), progress=False)
    with pytest.raises(ConfigError, match="cpu and cuda"):
        precision_module.check_precision("bf16", torch.device("meta"))


@needs_bf16
def test_bf16_matmuls_run_in_bf16_while_weights_loss_and_state_stay_fp32(dataset):
    config = _config(precision="bf16")
    data = prepare(config, dataset, progress=False)
    model = build_model(config, data)
    trainer = Trainer.from_config(config, data, model, progress=False)
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for m in model.modules() if isinstance(m, nn.Linear)]
    loss = trainer.batch_loss(torch.arange(64))
    assert seen and set(seen) == {torch.bfloat16}
    assert loss.dtype == torch.float32
    loss.backward()
    trainer.optimizer.step()
    for hook in hooks:
        hook.remove()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(t.dtype == torch.float32 for s in trainer.optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())
    seen.clear()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for m in model.modules() if isinstance(m, nn.Linear)]
    trainer.evaluate("test")  # evaluation is fp32
    assert seen and set(seen) == {torch.float32}


@needs_bf16
def test_bf16_training_matches_fp32_quality(dataset, tmp_path):
    def top10(precision):
        run = train_run(_config(precision=precision).replace(name=precision), runs_root=tmp_path, dataset=dataset,
                        progress=False, log=lambda *_: None)
        return run.metrics["test"]["seen_excluded"]["top_10_accuracy"]

    fp32, bf16 = top10("fp32"), top10("bf16")
    assert bf16 != fp32  # it did run in another precision
    assert abs(bf16 - fp32) < 0.03, (bf16, fp32)


@needs_bf16
@pytest.mark.parametrize("hits", [True, False])
def test_unique_softmax_under_autocast_is_close_to_fp32(hits):
    torch.manual_seed(0)
    query = torch.randn(64, 16, requires_grad=True)
    candidates = torch.randn(64, 16, requires_grad=True)
    index = torch.randint(0, 20, (64,))
    unique, labels, counts = unique_candidates(index)
    log_q = torch.rand(unique.shape[0]).log()

    def run(autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = unique_in_batch_softmax_loss(query, candidates[unique], labels, counts, log_q=log_q,
                                                remove_accidental_hits=hits, temperature=0.5)
        grads = torch.autograd.grad(loss, (query, candidates))
        return loss, grads

    loss32, grads32 = run(False)
    loss16, grads16 = run(True)
    assert loss16.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads16)
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=2e-2)
    for g16, g32 in zip(grads16, grads32):
        torch.testing.assert_close(g16, g32, rtol=5e-2, atol=5e-3)
