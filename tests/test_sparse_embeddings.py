"""Sparse embedding gradients and the optimizers that update only the looked-up rows."""

import io
import json

import pytest
import torch
from torch import nn

from config_helpers import small_config
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError
from towerrec.runs import train_run
from towerrec.train.models import build_model
from towerrec.train.optimizers import LazyAdam, RowWiseAdagrad, make_optimizer, set_sparse_gradients
from towerrec.train.prepared import prepare
from towerrec.train.trainer import Trainer


class _Toy(nn.Module):
    """A table and a dense layer: the loss reads rows ``ids`` through the layer."""

    def __init__(self, rows: int = 10, dim: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(rows, dim)
        self.linear = nn.Linear(dim, 1)

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.linear(self.table(ids)) ** 2).sum()


IDS = torch.tensor([1, 3, 3, 7])  # row 3 twice: its gradient is the sum of two lookups
TOUCHED = torch.tensor([1, 3, 7])


def _untouched(rows: int) -> torch.Tensor:
    mask = torch.ones(rows, dtype=torch.bool)
    mask[TOUCHED] = False
    return mask


@pytest.mark.parametrize("name", ["rowwise-adagrad", "sparse-adam", "adagrad"])
def test_only_looked_up_rows_change(name):
    model = _Toy()
    set_sparse_gradients(model, True)
    optimizer = make_optimizer(name, model, sparse=True)
    before = model.table.weight.detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(IDS).backward()
        assert model.table.weight.grad.is_sparse
        optimizer.step()
    after = model.table.weight.detach()
    untouched = _untouched(10)
    assert torch.equal(after[untouched], before[untouched])
    assert (after[TOUCHED] != before[TOUCHED]).all(dim=1).all()


def test_rowwise_adagrad_equals_a_hand_computed_update():
    model = _Toy()
    set_sparse_gradients(model, True)
    optimizer = RowWiseAdagrad([{"params": [model.table.weight], "rowwise": True},
                                {"params": list(model.linear.parameters()), "rowwise": False}],
                               lr=0.5, initial_accumulator_value=0.1, eps=1e-7)
    w0 = model.table.weight.detach().clone()
    lin0 = model.linear.weight.detach().clone()
    model.loss(IDS).backward()
    grad = model.table.weight.grad.to_dense()  # row 3: both lookups summed
    lin_grad = model.linear.weight.grad.clone()
    optimizer.step()
    expected = w0.clone()
    for row in TOUCHED.tolist():
        accumulator = 0.1 + (grad[row] ** 2).mean()  # ONE value per row
        expected[row] = w0[row] - 0.5 * grad[row] / (accumulator.sqrt() + 1e-7)
    torch.testing.assert_close(model.table.weight.detach(), expected)
    torch.testing.assert_close(optimizer.state[model.table.weight]["sum"][TOUCHED],
                               0.1 + (grad[TOUCHED] ** 2).mean(dim=1))
    assert optimizer.state[model.table.weight]["sum"].shape == (10,)  # [rows], not [rows, dim]
    # the dense layer: element-wise Adagrad
    torch.testing.assert_close(model.linear.weight.detach(),
                               lin0 - 0.5 * lin_grad / ((0.1 + lin_grad**2).sqrt() + 1e-7))


def test_rowwise_adagrad_dense_gradient_gives_the_same_update():
    sparse, dense = _Toy(), _Toy()
    set_sparse_gradients(sparse, True)
    opt_sparse = make_optimizer("rowwise-adagrad", sparse, sparse=True)
    opt_dense = make_optimizer("rowwise-adagrad", dense, sparse=False)
    for _ in range(3):
        for model, opt in ((sparse, opt_sparse), (dense, opt_dense)):
            opt.zero_grad()
            model.loss(IDS).backward()
            opt.step()
    torch.testing.assert_close(sparse.table.weight, dense.table.weight)


def test_sparse_adagrad_is_dense_adagrad():
    sparse, dense = _Toy(), _Toy()
    set_sparse_gradients(sparse, True)
    opt_sparse, opt_dense = make_optimizer("adagrad", sparse, sparse=True), make_optimizer("adagrad", dense)
    for ids in (IDS, torch.tensor([0, 3, 9]), IDS):
        for model, opt in ((sparse, opt_sparse), (dense, opt_dense)):
            opt.zero_grad()
            model.loss(ids).backward()
            opt.step()
    torch.testing.assert_close(sparse.table.weight, dense.table.weight)


def test_lazy_adam_one_step_equals_dense_adam_on_the_touched_rows():
    lazy, dense = _Toy(), _Toy()
    set_sparse_gradients(lazy, True)
    opt_lazy = make_optimizer("sparse-adam", lazy, learning_rate=0.01, sparse=True)
    opt_dense = torch.optim.Adam(dense.parameters(), lr=0.01)
    for model, opt in ((lazy, opt_lazy), (dense, opt_dense)):
        model.loss(IDS).backward()
        opt.step()
    torch.testing.assert_close(lazy.table.weight[TOUCHED], dense.table.weight[TOUCHED])
    torch.testing.assert_close(lazy.linear.weight, dense.linear.weight)


def test_lazy_adam_equals_torch_sparse_adam_and_adam_over_several_steps():
    ours, ref = _Toy(), _Toy()
    set_sparse_gradients(ours, True)
    set_sparse_gradients(ref, True)
    opt = make_optimizer("sparse-adam", ours, learning_rate=0.01, sparse=True)
    ref_sparse = torch.optim.SparseAdam([ref.table.weight], lr=0.01)
    ref_dense = torch.optim.Adam(ref.linear.parameters(), lr=0.01)
    batches = [IDS, torch.tensor([0, 1, 9]), torch.tensor([3, 3, 5, 9])]
    for ids in batches * 2:
        opt.zero_grad()
        ours.loss(ids).backward()
        opt.step()
        ref_sparse.zero_grad()
        ref_dense.zero_grad()
        ref.loss(ids).backward()
        ref_sparse.step()
        ref_dense.step()
    torch.testing.assert_close(ours.table.weight, ref.table.weight)
    torch.testing.assert_close(ours.linear.weight, ref.linear.weight)
    torch.testing.assert_close(ours.linear.bias, ref.linear.bias)


@pytest.mark.parametrize("name", ["rowwise-adagrad", "sparse-adam"])
def test_optimizer_state_round_trips_without_pickle(name):
    a, b = _Toy(), _Toy()
    for model in (a, b):
        set_sparse_gradients(model, True)
    opt_a, opt_b = make_optimizer(name, a, sparse=True), make_optimizer(name, b, sparse=True)
    for model, opt in ((a, opt_a), (b, opt_b)):
        model.loss(IDS).backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_optimizer(name, a, sparse=True)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for model, opt in ((a, fresh), (b, opt_b)):
        opt.zero_grad()
        model.loss(torch.tensor([2, 3])).backward()
        opt.step()
    torch.testing.assert_close(a.table.weight, b.table.weight)


def test_optimizer_arguments_are_checked():
    with pytest.raises(ValueError, match="lr"):
        RowWiseAdagrad(_Toy().parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        LazyAdam(_Toy().parameters(), betas=(0.9, 1.0))
    with pytest.raises(ConfigError, match="cannot update sparse"):
        make_optimizer("adam", _Toy(), sparse=True)
    with pytest.raises(ConfigError, match="weight_decay"):
        make_optimizer("rowwise-adagrad", _Toy(), weight_decay=1e-4)
    with pytest.raises(ConfigError, match="weight_decay"):
        make_optimizer("adagrad", _Toy(), weight_decay=1e-4, sparse=True)


# -- through the trainer and the config -------------------------------------

@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(300, 120, 9000, seed=3)


def _config(**train):
    return small_config({
        "name": "t",
        "data": {"dataset": "synthetic", "split": "tfrs-random", "seed": 1},
        "model": {"embedding_dim": 16, "layer_sizes": [16]},
        "task": {"temperature": 0.2},
        "train": {"epochs": 4, "batch_size": 512, "optimizer": "adam", "learning_rate": 0.02, "eval_every": 4,
                  **train},
        "eval": {"ks": [10]},
    })


def _top10(run):
    return run.metrics["test"]["seen_excluded"]["top_10_accuracy"]


def test_sparse_runs_train_and_match_their_dense_counterparts(dataset, tmp_path):
    def run(name, **train):
        return train_run(_config(**train).replace(name=name), runs_root=tmp_path, dataset=dataset,
                         progress=False, log=lambda *_: None)

    popular = _top10(train_run(_config().replace(model={"kind": "popularity"}, name="pop"), runs_root=tmp_path,
                               dataset=dataset, progress=False, log=lambda *_: None))
    adam = _top10(run("adam"))
    lazy = run("lazy", optimizer="sparse-adam")
    assert _top10(lazy) > popular * 1.05 and abs(_top10(lazy) - adam) < 0.03, (_top10(lazy), adam, popular)
    rowwise = run("rowwise", optimizer="rowwise-adagrad", learning_rate=0.2)
    losses = [json.loads(line)["loss"] for line in (rowwise.run_dir / "history.jsonl").read_text().splitlines()]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.05, losses
    assert _top10(rowwise) > popular - 0.02, (_top10(rowwise), popular)
    explicit = _config(optimizer="sparse-adam", sparse_embeddings=True)
    assert explicit.hash() != _config(optimizer="sparse-adam").hash()  # an explicit choice is in the hash

def test_trainer_turns_sparse_gradients_on_for_sparse_optimizers(dataset):
    config = _config(optimizer="rowwise-adagrad")
    data = prepare(config, dataset, progress=False)
    model = build_model(config, data)
    trainer = Trainer.from_config(config, data, model, progress=False)
    assert trainer.sparse_embeddings
    assert all(m.sparse for m in model.modules() if isinstance(m, nn.Embedding))
    dense = Trainer.from_config(config.replace(train={"sparse_embeddings": False}), data,
                                build_model(config, data), progress=False)
    assert not dense.sparse_embeddings


def test_a_model_trained_densely_can_switch_to_a_sparse_optimizer(dataset):
    config = _config(epochs=1)
    data = prepare(config, dataset, progress=False)
    model = build_model(config, data)
    Trainer.from_config(config, data, model, progress=False).fit()  # leaves dense .grad on the tables
    assert any(m.weight.grad is not None for m in model.modules() if isinstance(m, nn.Embedding))
    sparse = config.replace(train={"optimizer": "rowwise-adagrad", "learning_rate": 0.2})
    trainer = Trainer.from_config(sparse, data, model, progress=False)  # the old dense gradient is not refused
    assert trainer.sparse_embeddings and trainer.fit().history


def test_invalid_sparse_combinations_fail_at_construction(dataset):
    config = _config(optimizer="adam", sparse_embeddings=True)
    data = prepare(config, dataset, progress=False)
    with pytest.raises(ConfigError, match="cannot update sparse"):
        Trainer.from_config(config, data, build_model(config, data), progress=False)
    config = _config(optimizer="sparse-adam", weight_decay=0.01)
    with pytest.raises(ConfigError, match="weight_decay"):
        Trainer.from_config(config, data, build_model(config, data), progress=False)


def test_a_table_read_whole_is_refused_with_sparse_gradients(dataset):
    """A model whose loss reads a table by ``weight[index]`` gives it a dense gradient: refused at construction."""
    from towerrec.model import Model

    class WholeTable(Model):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(50, 4)

        def compute_loss(self, batch):
            return (self.table.weight[batch["x"]] ** 2).sum()

    data = {"x": torch.randint(0, 50, (64,))}
    with pytest.raises(ConfigError, match="'table' a dense gradient"):
        Trainer(WholeTable(), data, optimizer="sparse-adam", progress=False)
    Trainer(WholeTable(), data, optimizer="adam", progress=False)  # dense: fine
