"""Sequence encoders for sequential retrieval: GRU (GRU4Rec-style) and causal self-attention (SASRec-style).

Input convention, shared by both: ``[B, L]`` step embeddings of LEFT-padded
sequences (most recent step in the last column) plus a ``[B, L]`` boolean mask
(True = a real step). Outputs are ``[B, L, d]`` per-step states (the state at
step t has seen steps <= t only) or, with ``last_only``, ``[B, d]`` states at the
last column, i.e. after the most recent item.

Padding never changes a result: the GRU carries its state over pads unchanged
(:mod:`towerrec.layers.masked_gru`), and the attention masks pad keys, so adding or removing left
padding gives the same outputs at every real step (tested). Positions of the
self-attention encoder count back from the most recent step for the same reason.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from towerrec.layers.masked_gru import masked_gru


class GRUEncoder(nn.Module):
    """Embedded steps -> GRU (its state is carried over pads) -> states.

    Args:
        input_dim: width of each step's embedding.
        hidden_dim: GRU state width (the query embedding width).
        num_layers: stacked GRU layers.
        dropout: between stacked layers (PyTorch GRU semantics).
        init: ``"keras"`` (glorot-uniform input kernel, orthogonal recurrent kernel,
            zero biases: the Keras GRU of the TFRS tutorial) or ``"torch"``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, *, num_layers: int = 1, dropout: float = 0.0,
                 init: str = "keras") -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.gru = nn.GRU(input_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        if init == "keras":
            for name, param in self.gru.named_parameters():
                if name.startswith("weight_ih"):
                    for chunk in param.data.chunk(3, 0):
                        nn.init.xavier_uniform_(chunk)
                elif name.startswith("weight_hh"):
                    for chunk in param.data.chunk(3, 0):
                        nn.init.orthogonal_(chunk)
                else:
                    nn.init.zeros_(param)

    def forward(self, steps: Tensor, mask: Tensor, *, last_only: bool = False) -> Tensor:
        """Encodes left-padded steps.

        Args:
            steps: [batch, length, input_dim] embedded steps.
            mask: [batch, length] bool, True at real steps (padding first, most recent step last).
            last_only: return only the state after the most recent step.
        Returns:
            [batch, hidden_dim] when ``last_only``, else [batch, length, hidden_dim] states (zeros at padding).
        """
        states, last = masked_gru(self.gru, steps, mask, last_only=last_only)
        return last if last_only else states * mask.unsqueeze(-1).to(states.dtype)


class _Block(nn.Module):
    """Pre-norm transformer block: causal multi-head attention + position-wise feed-forward."""

    def __init__(self, dim: int, num_heads: int, dropout: float, ffn_mult: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_mult * dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.dropout(self.proj(att.transpose(1, 2).reshape(b, length, dim)))
        return x + self.dropout(self.ffn(self.norm2(x)))


class SelfAttentionEncoder(nn.Module):
    """SASRec-style causal self-attention: learned positions, N pre-norm blocks, final layer norm.

    A step attends to itself and to earlier real steps, never to later steps or
    to padding. Position embeddings are indexed by distance from the most recent
    step, so a sequence's outputs do not depend on how much padding precedes it.

    Args:
        dim: step embedding width (= output width).
        max_length: longest sequence (number of position embeddings).
        num_blocks, num_heads, dropout: as in SASRec.
        ffn_mult: feed-forward inner width is ``ffn_mult * dim``.
    """

    def __init__(self, dim: int, max_length: int, *, num_blocks: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, ffn_mult: int = 1) -> None:
        super().__init__()
        self.max_length = max_length
        self.positions = nn.Embedding(max_length, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, num_heads, dropout, ffn_mult) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(dim)

    def forward(self, steps: Tensor, mask: Tensor, *, last_only: bool = False) -> Tensor:
        """Encodes left-padded steps; only the last ``max_length`` are kept.

        Args:
            steps: [batch, length, dim] embedded steps.
            mask: [batch, length] bool, True at real steps (padding first, most recent step last).
            last_only: return only the output at the most recent step.
        Returns:
            [batch, dim] when ``last_only``, else [batch, min(length, max_length), dim] outputs.
        """
        batch, width, dim = steps.shape
        if width > self.max_length:
            steps, mask = steps[:, -self.max_length:], mask[:, -self.max_length:]
            width = self.max_length
        distance = torch.arange(width - 1, -1, -1, device=steps.device)
        x = steps * dim**0.5 + self.positions(distance).unsqueeze(0)
        keep = mask.unsqueeze(-1).to(x.dtype)
        x = self.input_dropout(x) * keep
        causal = torch.ones(width, width, dtype=torch.bool, device=steps.device).tril()
        eye = torch.eye(width, dtype=torch.bool, device=steps.device)
        # query t sees key s iff s <= t and s is real; every step also sees itself (no empty row -> no NaN)
        attn_mask = ((causal & mask.unsqueeze(1)) | eye).unsqueeze(1)  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, attn_mask) * keep
        x = self.norm(x) * keep
        return x[:, -1] if last_only else x
