"""The hand-written masked GRU must equal nn.GRU run on packed sequences, values and gradients."""

import importlib

import pytest
import torch
from torch import nn

from towerrec.layers.masked_gru import masked_gru


def _batch(lengths, width, dim, gen):
    steps = torch.randn(len(lengths), width, dim, generator=gen, dtype=torch.float64)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, width - n :] = True
    return steps.masked_fill(~mask.unsqueeze(-1), 7.0), mask  # garbage in the pads


def _reference(gru, steps, mask):
    """nn.GRU on the real steps only (right-aligned, packed): per-step states and the last state."""
    lengths = mask.sum(1)
    rows = []
    for row, n in enumerate(lengths.tolist()):
        if n == 0:
            rows.append((torch.zeros(steps.shape[1], gru.hidden_size, dtype=steps.dtype),
                         torch.zeros(gru.hidden_size, dtype=steps.dtype)))
            continue
        out, h = gru(steps[row, steps.shape[1] - n :].unsqueeze(0))
        pad = torch.zeros(steps.shape[1] - n, gru.hidden_size, dtype=steps.dtype)
        rows.append((torch.cat([pad, out[0]]), h[-1, 0]))
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


@pytest.mark.parametrize("num_layers", [1, 2])
def test_masked_gru_equals_packed_nn_gru(num_layers):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    gru = nn.GRU(5, 4, num_layers=num_layers, batch_first=True).double()
    steps, mask = _batch([6, 3, 1, 0, 6, 2], 6, 5, gen)
    weights = torch.randn(6, 6, 4, generator=gen, dtype=torch.float64)
    last_weights = torch.randn(6, 4, generator=gen, dtype=torch.float64)

    def loss(states, last):
        return (states * mask.unsqueeze(-1) * weights).sum() + (last * last_weights).sum()

    x_ref = steps.clone().requires_grad_()
    expected = _reference(gru, x_ref, mask)
    loss(*expected).backward()
    grads_ref = [x_ref.grad] + [p.grad.clone() for p in gru.parameters()]
    gru.zero_grad()

    x = steps.clone().requires_grad_()
    got = masked_gru(gru, x, mask)
    torch.testing.assert_close(got[0] * mask.unsqueeze(-1), expected[0])
    torch.testing.assert_close(got[1], expected[1])
    loss(*got).backward()
    for mine, ref in zip([x.grad] + [p.grad for p in gru.parameters()], grads_ref):
        torch.testing.assert_close(mine, ref)
    assert (x.grad[~mask] == 0).all()  # pads get no gradient


def test_masked_gru_passes_gradcheck():
    gen = torch.Generator().manual_seed(1)
    gru = nn.GRU(3, 2, batch_first=True).double()
    steps, mask = _batch([4, 2, 3], 4, 3, gen)
    x = steps.requires_grad_()
    assert torch.autograd.gradcheck(lambda s, *p: sum(o.sum() for o in masked_gru(gru, s, mask)), (x,))


@pytest.mark.parametrize("num_layers", [1, 2])
def test_last_only_gives_the_last_state_and_its_gradients(num_layers, monkeypatch):
    monkeypatch.setattr(importlib.import_module("towerrec.layers.masked_gru"), "ROW_BLOCK", 4)  # several row blocks, a short last one
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    gru = nn.GRU(3, 5, num_layers=num_layers, batch_first=True).double()
    steps, mask = _batch([5, 1, 3, 0, 5, 2, 4, 4, 1, 5], 5, 3, gen)
    weights = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    grads = []
    for last_only in (False, True):
        gru.zero_grad()
        x = steps.clone().requires_grad_()
        states, last = masked_gru(gru, x, mask, last_only=last_only)
        assert (states is None) == last_only
        (last * weights).sum().backward()
        grads.append((last.detach(), x.grad, [p.grad.clone() for p in gru.parameters()]))
    (last_a, x_a, p_a), (last_b, x_b, p_b) = grads
    torch.testing.assert_close(last_b, last_a)
    torch.testing.assert_close(x_b, x_a)
    for a, b in zip(p_a, p_b):
        torch.testing.assert_close(b, a)
    expected = _reference(gru, steps, mask)[1]
    torch.testing.assert_close(last_b, expected)
