"""A GRU over left-padded batches with a hand-written backward: the W3 speed lever on CPU.

PyTorch's CPU GRU runs each step as generic autograd ops (per-step input
projections, gate chunks and their ``cat`` in the backward) and needs packed
sequences to skip padding. Here the input projection of every step is one
matmul, each step is one small matmul plus a few in-place element-wise ops, and
the backward replays the steps by hand, batching the weight gradients into two
matmuls at the end; rows run in cache-sized blocks. About 2x faster on CPU than
``nn.GRU`` with packing.

Padding is a mask, not packing: at a masked step the state is carried over
exactly (``h + 0 * (n - h)``), so leading pads leave the zero initial state
untouched, pads never contribute gradients, and results do not depend on the
amount of padding. The gates follow ``nn.GRU`` (reset, update, new; the reset
gate multiplies the hidden projection including its bias), so the weights are
an ``nn.GRU``'s and load into either.
"""

from __future__ import annotations

import torch
from torch import Tensor


# Rows per block: a block's per-step tensors stay in cache through all its steps
# (measured on the 2-core dev box: 1.4x faster than one 12,800-row block).
ROW_BLOCK = 2048


class _MaskedGRULayer(torch.autograd.Function):
    """One layer, time-major inside (every per-step slice is contiguous)."""

    @staticmethod
    def forward(ctx, x, mask, w_ih, w_hh, b_ih, b_hh):  # type: ignore[override]
        batch, length, _ = x.shape
        hidden = w_hh.shape[1]
        xt = x.transpose(0, 1).reshape(length * batch, -1)  # [L * B, I]
        gi = torch.addmm(b_ih, xt, w_ih.t()).view(length, batch, 3 * hidden)
        m = mask.t().to(x.dtype).unsqueeze(-1).contiguous()  # [L, B, 1]
        states = x.new_zeros(length + 1, batch, hidden)  # states[t + 1]: after step t; states[0] = 0
        resets, updates, news, hidden_new = (x.new_empty(length, batch, hidden) for _ in range(4))
        for t in range(length):
            h = states[t]
            gh = torch.addmm(b_hh, h, w_hh.t())
            g = gi[t]
            r = torch.add(g[:, :hidden], gh[:, :hidden], out=resets[t]).sigmoid_()
            z = torch.add(g[:, hidden : 2 * hidden], gh[:, hidden : 2 * hidden], out=updates[t]).sigmoid_()
            hn = hidden_new[t]
            hn.copy_(gh[:, 2 * hidden :])
            n = torch.addcmul(g[:, 2 * hidden :], r, hn, out=news[t]).tanh_()
            u = (1.0 - z).mul_(m[t])  # how much of the new state enters: 0 at a pad
            torch.addcmul(h, u, n - h, out=states[t + 1])
        ctx.save_for_backward(xt, m, w_ih, w_hh, states, resets, updates, news, hidden_new)
        ctx.set_materialize_grads(False)
        # copies: the outputs must not alias `states`, which the backward reads
        return states[1:].transpose(0, 1).contiguous(), states[length].clone()

    @staticmethod
    def backward(ctx, grad_all, grad_last):  # type: ignore[override]
        xt, m, w_ih, w_hh, states, resets, updates, news, hidden_new = ctx.saved_tensors
        length, batch, hidden = resets.shape
        grad_gi = xt.new_empty(length, batch, 3 * hidden)
        grad_gh = xt.new_empty(length, batch, 3 * hidden)
        grad_steps = None if grad_all is None else grad_all.transpose(0, 1)
        dh = grad_last.clone() if grad_last is not None else xt.new_zeros(batch, hidden)
        for t in reversed(range(length)):
            if grad_steps is not None:
                dh += grad_steps[t]
            r, z, n, h_prev, mt = resets[t], updates[t], news[t], states[t], m[t]
            u = (1.0 - z).mul_(mt)
            gi_t, gh_t = grad_gi[t], grad_gh[t]
            d_pre_n = torch.mul(dh, u, out=gi_t[:, 2 * hidden :]).mul_(1.0 - n * n)
            d_pre_z = torch.mul(dh, n - h_prev, out=gi_t[:, hidden : 2 * hidden])
            d_pre_z.mul_(mt).mul_(z * (z - 1.0))  # dz = -du * m; sigmoid' = z (1 - z)
            torch.mul(d_pre_n, hidden_new[t], out=gi_t[:, :hidden]).mul_(r * (1.0 - r))
            gh_t[:, : 2 * hidden] = gi_t[:, : 2 * hidden]
            torch.mul(d_pre_n, r, out=gh_t[:, 2 * hidden :])
            dh = torch.addmm(dh * (1.0 - u), gh_t, w_hh)
        flat_gi = grad_gi.view(length * batch, 3 * hidden)
        flat_gh = grad_gh.view(length * batch, 3 * hidden)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (flat_gi @ w_ih).view(length, batch, -1).transpose(0, 1)
        grad_w_ih = flat_gi.t() @ xt
        grad_w_hh = flat_gh.t() @ states[:-1].reshape(length * batch, hidden)
        return grad_x, None, grad_w_ih, grad_w_hh, flat_gi.sum(0), flat_gh.sum(0)


def masked_gru(gru: torch.nn.GRU, steps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``gru``'s weights over ``steps [B, L, d]`` where ``mask [B, L]`` is True.

    Returns ``(states [B, L, H], last [B, H])`` of the top layer; a state at a pad
    equals the state before it (0 before the first real step). Needs a
    unidirectional, batch-first GRU with biases.
    """
    if gru.bidirectional or not gru.batch_first or not gru.bias:
        raise ValueError("masked_gru needs a unidirectional, batch-first GRU with biases")
    x, last = steps, steps.new_zeros(0)
    for layer in range(gru.num_layers):
        if layer and gru.dropout and gru.training:
            x = torch.nn.functional.dropout(x, gru.dropout, training=True)
        weights = [getattr(gru, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        # split (not slicing): its backward is one cat, a slice's zero-fills the whole input per block
        blocks = [_MaskedGRULayer.apply(xb, mb, *weights)
                  for xb, mb in zip(x.split(ROW_BLOCK), mask.split(ROW_BLOCK))]
        x, last = (blocks[0] if len(blocks) == 1 else (torch.cat([b[0] for b in blocks]), torch.cat([b[1] for b in blocks])))
    return x, last
