"""Speed kernels: faster computations of plain PyTorch definitions, each beside the definition it must equal.

Model files state the paper's math in plain PyTorch and call these by name where a step is slow on CPU. One config
key, ``speed_kernels`` (default True, :func:`use_speed_kernels`), switches every model between the kernels and the
plain path; False builds only stock modules (``nn.Embedding``, ``nn.Dropout`` with the exact p, the autograd-derived
ReConstruct error, a stock ``nn.TransformerEncoderLayer``). Either way the parameters and state_dict keys are the
same, so a checkpoint loads under both. ``tests/test_speed_kernels.py`` checks each kernel against its definition in
float64, forward and gradients.

Shapes: B batch, L history length, d width, N table rows, T real (non-padding) positions, K interests.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

KEY = "speed_kernels"


def use_speed_kernels(config) -> bool:
    """``config["speed_kernels"]``; missing or None counts as True (configs saved before the key existed)."""
    value = config[KEY] if KEY in config else None
    return True if value is None else bool(value)


# --- embedding lookup: plain ``nn.Embedding`` ------------------------------------------------------------------------

class _GatherRows(torch.autograd.Function):
    """``weight[ids]`` whose backward is one ``index_add_`` into a zero table: on CPU ~2.5x faster than
    ``embedding_dense_backward`` (measured 0.45 vs 1.17 ms for 5,120 rows of a [8714, 64] table, 2 threads), and
    deterministic (rows are added in index order). Equal to ``F.embedding``: the forward is the same row copy, the
    backward the same sum of each row's gradients (padding row zeroed), only summed in index order."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.shape, ctx.padding_idx = weight.shape, padding_idx
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.size(1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        grad_weight = grad.new_zeros(ctx.shape).index_add_(0, ids.reshape(-1), grad.reshape(-1, ctx.shape[1]))
        if ctx.padding_idx is not None:
            grad_weight[ctx.padding_idx] = 0
        return None, grad_weight, None


class Table(nn.Embedding):
    """``nn.Embedding`` (same parameters, checkpoints and ``padding_idx`` rule) with the faster backward of
    :class:`_GatherRows`; ``max_norm``/``sparse`` are not supported. ids: [...] -> [..., d]"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.max_norm is not None or self.sparse:
            raise ValueError("Table supports neither max_norm nor sparse gradients; use nn.Embedding")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _GatherRows.apply(ids, self.weight, self.padding_idx)


def embedding(n: int, d: int, padding_idx: int | None = None, speed_kernels: bool = True) -> nn.Embedding:
    """An [n, d] embedding table: :class:`Table`, or the plain ``nn.Embedding`` (the same state_dict)."""
    return (Table if speed_kernels else nn.Embedding)(n, d, padding_idx=padding_idx)


# --- dropout: plain ``nn.Dropout`` -----------------------------------------------------------------------------------

class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from random bytes, eight per 64-bit draw, instead of ``bernoulli_``, which
    draws one number per element (~4x slower here, and the larger part of a Transformer step on CPU). An element is
    kept when its byte is >= round(256 p): the drop rate is p rounded to a multiple of 1/256 (0.2 -> 0.1992) and the
    kept values are scaled by 256 / (256 - round(256 p)). Equal to ``F.dropout`` with that rounded p given the same
    mask (another random stream, so never the same mask); on other devices, in eval and at p = 0 it is
    ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        cut = round(256 * self.p)
        draws = torch.randint(-2 ** 63, 2 ** 63 - 1, ((x.numel() + 7) // 8,), dtype=torch.int64)
        keep = draws.view(torch.uint8)[:x.numel()].view_as(x) >= cut
        return x * keep.to(x.dtype).mul_(256 / (256 - cut))


def dropout(p: float, speed_kernels: bool = True) -> nn.Dropout:
    """Dropout of rate p: :class:`FastDropout` (p rounded to 1/256), or the plain ``nn.Dropout`` (exact p)."""
    return FastDropout(p) if speed_kernels else nn.Dropout(p)


def with_fast_dropout(layer: nn.TransformerEncoderLayer) -> nn.TransformerEncoderLayer:
    """A stock ``nn.TransformerEncoderLayer`` with :class:`FastDropout` (same p) in place of its three
    ``nn.Dropout`` (inside the FFN, after the attention, after the FFN); it has no parameters, so the state_dict is
    the stock layer's. The attention weights' own dropout stays inside ``scaled_dot_product_attention``."""
    stock = (layer.dropout, layer.dropout1, layer.dropout2)
    layer.dropout, layer.dropout1, layer.dropout2 = (FastDropout(m.p) for m in stock)
    return layer


# --- position-wise maps of a padded batch: plain, the map on every position -----------------------------------------

def packed_block(x: torch.Tensor, mask: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor],
                 attend: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 finish: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``finish(attend(project(x), mask), x) * mask[..., None]`` (a Transformer block: ``project`` and ``finish``
    position-wise, ``attend`` the only mixing across positions, masking padding keys) with the position-wise parts
    run on the T real rows only, packed as [T, ·]: on CPU, where FLOPs dominate, their cost falls by the padding
    share, B·L/T times (3x when the histories fill a third of L). Equal because a position-wise map of a row is
    the same wherever the row sits; ``attend`` sees padding rows as zeros, which the masked keys never read. Padding
    rows of the output are zero. The index copies need the host to know T: on a GPU the plain form is faster.

    x: [B, L, d], mask: [B, L] bool (True = real); project: [..., d] -> [..., e]; attend: [B, L, e], [B, L] ->
    [B, L, f]; finish: [..., f], [..., d] -> [..., d] -> [B, L, d]
    """
    b, length, d = x.shape
    real = mask.reshape(-1).nonzero().squeeze(1)  # [T] flat positions of real items
    x_real = x.reshape(-1, d).index_select(0, real)  # [T, d]
    projected = project(x_real)  # [T, e]
    padded = x.new_zeros(b * length, projected.size(-1)).index_copy(0, real, projected).view(b, length, -1)
    attended = attend(padded, mask)  # [B, L, f]
    out = finish(attended.reshape(b * length, -1).index_select(0, real), x_real)  # [T, d]
    return x.new_zeros(b * length, d).index_copy(0, real, out).view(b, length, d)


def per_row(fn: Callable[[torch.Tensor], torch.Tensor], table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``fn(F.embedding(ids, table))`` for a row-wise ``fn``, as ``F.embedding(ids, fn(table))``: ``fn`` runs once
    per table row instead of once per position, N against B·L rows (worth it when the table is the smaller; the
    caller decides). Equal because a row-wise map of a gathered row is the gathered row of the mapped table.
    table: [N, d], ids: [...] -> [..., e]"""
    return F.embedding(ids, fn(table))


# --- ReConstruct's squared error (Re4): plain, ``re_construct_loss(Decoder.forward(...))`` in autograd ops ----------

class DecodedSquaredError(torch.autograd.Function):
    """ReConstruct's decoder and its kept squared errors with forward and backward written out; call it with
    autocast off and every input in one dtype (its backward is written for one).

    Equal to ``re_construct_loss(Decoder.forward(z, ~pad), items, keep)`` of
    :mod:`recbole_ext.model.sequential.re4` times B·K·L·d (the division is the caller's), and its gradients to
    autograd's: the same ops, in fewer passes over the [B, K, L, d] activations, which dominate a Re4 step. The squared
    error is formed once in place and summed as one dot product, and the backward reuses it as the gradient of the
    reconstruction (part of the 2.1x faster Re4 step of 2026-12-03, together with the folded decoder).
    z [B, K, d], items [B, L, d], the folded maps w_t, w_v [L·d, d + 1] (bias as the last column, so one matmul
    gives a weight's gradient and its bias's), slot_weight (W3_2) [L, d], keep [B, K, L] bool, pad [B, L] bool (True
    at padding) -> scalar
    """

    @staticmethod
    def forward(ctx, z, items, w_t, w_v, slot_weight, keep, pad):
        B, K, d = z.shape
        L, N = items.size(1), B * K
        flat = torch.cat([z.reshape(N, d), z.new_ones(N, 1)], 1)  # [N, d + 1]
        t = torch.tanh(flat @ w_t.T).view(N, L, d)  # tanh(W3 r_j) of every proposal j
        v = (flat @ w_v.T).view(N, L, d)  # W5 r_j
        logits = (t.view(N * L, d) @ slot_weight.T).view(B, K, L, L)  # [B, K, j, s]
        logits.masked_fill_(pad[:, None, :, None], float("-inf"))
        p = torch.softmax(logits.view(N, L, L), dim=1)  # slot s attends over the real proposals j
        diff = torch.bmm(p.transpose(1, 2), v).view(B, K, L, d)  # the reconstruction x̂ [B, K, s, d] ...
        diff.sub_(items.unsqueeze(1)).mul_(keep.unsqueeze(-1))  # ... minus its target, kept slots only
        ctx.save_for_backward(flat, w_t, w_v, slot_weight, t, v, p, diff)
        return torch.dot(diff.view(-1), diff.view(-1))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        flat, w_t, w_v, slot_weight, t, v, p, diff = ctx.saved_tensors
        N, L, d = t.shape
        d_x = diff.mul_(2 * grad)  # d/dx̂; diff is not read again
        d_items = -d_x.sum(1)
        d_x = d_x.view(N, L, d)
        d_v = torch.bmm(p, d_x).view(N, L * d)
        d_p = torch.bmm(v, d_x.transpose(1, 2))  # [N, j, s]
        d_logits = d_p.sub_((d_p * p).sum(1, keepdim=True)).mul_(p).view(N * L, L)  # softmax over j, backward
        d_slot = d_logits.T @ t.view(N * L, d)
        d_pre = torch.ops.aten.tanh_backward(d_logits @ slot_weight, t.view(N * L, d)).view(N, L * d)
        d_z = torch.addmm(d_pre @ w_t[:, :d], d_v, w_v[:, :d]).view(-1, diff.size(1), d)
        return d_z, d_items, (flat.T @ d_pre).T, (flat.T @ d_v).T, d_slot, None, None

