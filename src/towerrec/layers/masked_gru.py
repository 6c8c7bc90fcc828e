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
    """One layer, time-major inside (every per-step slice is contiguous).

    Per step the forward runs 8 ops (two ``addmm`` into the gate buffers, with the hidden biases of the
    reset and update gates folded into the input projection, then fused ``addcmul`` updates) and keeps
    what the backward needs (``u = (1 - z) * mask`` and ``h - n``); the backward runs 12, writing the
    gate gradients into one ``[B, 4H]`` buffer per step laid out ``[n, r, z, hn]`` so that its last
    ``3H`` columns are the recurrent matmul's operand in ``nn.GRU``'s gate order (no copy).
    """

    @staticmethod
    def forward(ctx, x, mask, w_ih, w_hh, b_ih, b_hh, keep_states):  # type: ignore[override]
        batch, length, _ = x.shape
        hidden = w_hh.shape[1]
        xt = x.transpose(0, 1).reshape(length * batch, -1)  # [L * B, I]
        bias = b_ih + torch.cat([b_hh[: 2 * hidden], b_hh.new_zeros(hidden)])  # b_hn stays inside r * (.)
        gi = torch.addmm(bias, xt, w_ih.t()).view(length, batch, 3 * hidden)
        m = mask.t().to(x.dtype).unsqueeze(-1).contiguous()  # [L, B, 1]
        w_rz, w_n, b_n = w_hh[: 2 * hidden].t(), w_hh[2 * hidden :].t(), b_hh[2 * hidden :]
        states = x.new_zeros(length + 1, batch, hidden)  # states[t + 1]: after step t; states[0] = 0
        gates = x.new_empty(length, batch, 2 * hidden)  # sigmoid(r), sigmoid(z)
        hidden_new, news, keeps, diffs = (x.new_empty(length, batch, hidden) for _ in range(4))
        for t in range(length):
            h, g = states[t], gi[t]
            rz = torch.addmm(g[:, : 2 * hidden], h, w_rz, out=gates[t]).sigmoid_()
            hn = torch.addmm(b_n, h, w_n, out=hidden_new[t])
            n = torch.addcmul(g[:, 2 * hidden :], rz[:, :hidden], hn, out=news[t])
            n.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)  # tanh(x) = 2 sigmoid(2x) - 1: 3x faster than tanh_ on CPU
            u = torch.addcmul(m[t], rz[:, hidden:], m[t], value=-1.0, out=keeps[t])  # (1 - z) * mask: 0 at a pad
            d = torch.sub(h, n, out=diffs[t])
            torch.addcmul(h, u, d, value=-1.0, out=states[t + 1])  # h + u (n - h)
        ctx.save_for_backward(xt, w_ih, w_hh, states, gates, hidden_new, news, keeps, diffs)
        ctx.set_materialize_grads(False)
        # copies: the outputs must not alias `states`, which the backward reads
        every = states[1:].transpose(0, 1).contiguous() if keep_states else x.new_zeros(0)
        return every, states[length].clone()

    @staticmethod
    def backward(ctx, grad_all, grad_last):  # type: ignore[override]
        xt, w_ih, w_hh, states, gates, hidden_new, news, keeps, diffs = ctx.saved_tensors
        length, batch, hidden = news.shape
        grads = xt.new_empty(length, batch, 4 * hidden)  # per step [d_pre_n, d_pre_r, d_pre_z, d_hn]
        one = xt.new_ones(())
        grad_steps = None if grad_all is None or not grad_all.numel() else grad_all.transpose(0, 1)
        dh = grad_last.clone() if grad_last is not None else xt.new_zeros(batch, hidden)
        for t in reversed(range(length)):
            if grad_steps is not None:
                dh += grad_steps[t]
            r, z = gates[t, :, :hidden], gates[t, :, hidden:]
            n, u, G = news[t], keeps[t], grads[t]
            d_pre_n = torch.mul(dh, u, out=G[:, :hidden]).mul_(torch.addcmul(one, n, n, value=-1.0))
            torch.mul(dh, diffs[t], out=G[:, 2 * hidden : 3 * hidden]).mul_(z * u)  # dz (h - n) z (1 - z) m
            torch.mul(d_pre_n, hidden_new[t], out=G[:, hidden : 2 * hidden]).mul_(torch.addcmul(r, r, r, value=-1.0))
            torch.mul(d_pre_n, r, out=G[:, 3 * hidden :])
            dh = torch.addmm(torch.addcmul(dh, dh, u, value=-1.0), G[:, hidden:], w_hh)
        flat = grads.view(length * batch, 4 * hidden)
        order = torch.cat([torch.arange(hidden, 3 * hidden), torch.arange(hidden)])  # [n, r, z] -> [r, z, n]
        grad_x = None
        if ctx.needs_input_grad[0]:
            w_nrz = torch.cat([w_ih[2 * hidden :], w_ih[: 2 * hidden]])
            grad_x = (flat[:, : 3 * hidden] @ w_nrz).view(length, batch, -1).transpose(0, 1)
        grad_w_ih = (flat[:, : 3 * hidden].t() @ xt)[order]
        grad_b_ih = flat[:, : 3 * hidden].sum(0)[order]
        grad_w_hh = flat[:, hidden:].t() @ states[:-1].reshape(length * batch, hidden)
        return grad_x, None, grad_w_ih, grad_w_hh, grad_b_ih, flat[:, hidden:].sum(0), None


def masked_gru(gru: torch.nn.GRU, steps: Tensor, mask: Tensor, *, last_only: bool = False) -> tuple[Tensor | None, Tensor]:
    """Run ``gru``'s weights over ``steps [B, L, d]`` where ``mask [B, L]`` is True.

    Returns ``(states [B, L, H], last [B, H])`` of the top layer; a state at a pad
    equals the state before it (0 before the first real step). With ``last_only``
    the top layer's per-step states are not copied out and ``states`` is None.
    Needs a unidirectional, batch-first GRU with biases.

    Raises:
        ValueError: a bidirectional or batch-second GRU, or one without biases.
    """
    if gru.bidirectional or not gru.batch_first or not gru.bias:
        raise ValueError("masked_gru needs a unidirectional, batch-first GRU with biases")
    x, last = steps, steps.new_zeros(0)
    for layer in range(gru.num_layers):
        if layer and gru.dropout and gru.training:
            x = torch.nn.functional.dropout(x, gru.dropout, training=True)
        weights = [getattr(gru, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        keep = not last_only or layer < gru.num_layers - 1
        # split (not slicing): its backward is one cat, a slice's zero-fills the whole input per block
        blocks = [_MaskedGRULayer.apply(xb, mb, *weights, keep)
                  for xb, mb in zip(x.split(ROW_BLOCK), mask.split(ROW_BLOCK))]
        if len(blocks) == 1:
            x, last = blocks[0]
        else:
            x = torch.cat([b[0] for b in blocks]) if keep else None
            last = torch.cat([b[1] for b in blocks])
    return (x if not last_only else None), last
