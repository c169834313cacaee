"""Blocks shared by several plugin models. Shapes: B batch, L history length, d embedding size,
K interests, N items (row 0 of every item table is padding), C candidates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_normal(module: nn.Module, std: float = 0.01) -> None:
    """ReChorus initialisation: N(0, std²) for Embedding weights and for Linear weights *and* biases;
    GRU and LayerNorm keep PyTorch defaults. Use as ``self.apply(init_normal)``."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.normal_(module.bias, 0.0, std)


def reversed_positions(item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Position ids counted back from the newest item: newest 1, oldest ``len``, padding 0.

    item_seq: [B, L] right-padded ids; lengths: [B] -> [B, L] long.
    """
    steps = torch.arange(item_seq.size(1), device=item_seq.device)
    return (lengths.unsqueeze(1) - steps.unsqueeze(0)) * (item_seq > 0).long()


class SelfAttentionLayer(nn.Module):
    """One single-head, bidirectional, post-LayerNorm Transformer block without output projection and
    with d_ff = d, dropout 0 (the TiMiRec reference layer). Padding keys are masked.

    On CPU, where FLOPs dominate, the position-wise parts (the fused Q/K/V projection, both LayerNorms, the FFN)
    run on the real items only, packed as ``[T, d]``; on a GPU, where the packing's host sync would cost more
    than the padding, they run on the padded batch (``pack`` forces either). Attention is one
    ``scaled_dot_product_attention`` on the padded batch. Padding rows of the output are zero either way.
    Checkpoints with separate ``query``/``key``/``value`` weights load unchanged.

    x: [B, L, d], mask: [B, L] bool (True = real item) -> [B, L, d]
    """

    def __init__(self, d: int, pack: bool | None = None):
        super().__init__()
        self.pack = pack  # None: on CPU only
        self.qkv = nn.Linear(d, 3 * d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not (x.device.type == "cpu" if self.pack is None else self.pack):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            z = self.norm1(F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1)) + x)
            return self.norm2(self.ffn(z) + z) * mask.unsqueeze(-1)
        b, length, d = x.shape
        real = mask.reshape(-1).nonzero().squeeze(1)  # [T] flat positions of real items
        x_real = x.reshape(-1, d).index_select(0, real)  # [T, d]
        qkv = x.new_zeros(b * length, 3 * d).index_copy(0, real, self.qkv(x_real)).view(b, length, 3 * d)
        q, k, v = qkv.chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))  # [B, L, d]
        z = self.norm1(attended.reshape(-1, d).index_select(0, real) + x_real)  # [T, d]
        out = self.norm2(self.ffn(z) + z)
        return x.new_zeros(b * length, d).index_copy(0, real, out).view(b, length, d)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Fuse the separate projections of checkpoints written before the fused layer."""
        for kind in ("weight", "bias"):
            parts = [f"{prefix}{name}.{kind}" for name in ("query", "key", "value")]
            if all(key in state_dict for key in parts):
                state_dict[f"{prefix}qkv.{kind}"] = torch.cat([state_dict.pop(key) for key in parts])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MultiInterestExtractor(nn.Module):
    """Self-attentive multi-interest extractor (ComiRec-SA, λ = 0).

    ``A = softmax_L(W2 tanh(W1 H))`` over the valid positions, one row per interest, and ``V = A · X``,
    where H is the item embedding plus the reversed position embedding (``add_pos``) passed through one
    Transformer layer (``add_trm``), and X is H itself (``aggregate='encoded'``, TiMiRec) or the raw item
    embeddings (``aggregate='raw'``, ComiRec as in its official code).

    item_seq: [B, L], lengths: [B] -> interests V: [B, K, d]
    """

    def __init__(self, n_items: int, d: int, attn_size: int, n_interests: int, max_len: int,
                 add_pos: bool = True, add_trm: bool = False, aggregate: str = "encoded"):
        super().__init__()
        if aggregate not in ("encoded", "raw"):
            raise ValueError(f"aggregate must be 'encoded' or 'raw', got {aggregate!r}")
        self.aggregate = aggregate
        self.item_embedding = nn.Embedding(n_items, d)
        self.position_embedding = nn.Embedding(max_len + 1, d) if add_pos else None
        self.transformer = SelfAttentionLayer(d) if add_trm else None
        self.W1 = nn.Linear(d, attn_size)
        self.W2 = nn.Linear(attn_size, n_interests)

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = item_seq > 0  # [B, L]
        raw = self.item_embedding(item_seq)  # [B, L, d]
        h = raw
        if self.position_embedding is not None:
            h = h + self.position_embedding(reversed_positions(item_seq, lengths))
        if self.transformer is not None:
            h = self.transformer(h, mask)  # padding rows come back zero
        logits = self.W2(torch.tanh(self.W1(h))).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        attention = torch.softmax(logits.transpose(1, 2), dim=-1)  # [B, K, L]
        return attention @ (h if self.aggregate == "encoded" else raw)  # [B, K, d]


def closest_interest(interests: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ComiRec's hard readout: the interest with the largest dot product with the target item.

    interests: [B, K, d], target: [B, d] -> [B, d]
    """
    best = (interests @ target.unsqueeze(-1)).squeeze(-1).argmax(dim=1)  # [B]
    return interests[torch.arange(interests.size(0), device=interests.device), best]


def max_interest_scores(interests: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Score every item by its best interest, as one batched matmul.

    interests: [B, K, d], items: [N, d] (all items) or [B, C, d] (per-row candidates) -> [B, N] or [B, C]
    """
    if items.dim() == 2:
        return torch.einsum("bkd,nd->bkn", interests, items).amax(dim=1)
    return torch.einsum("bkd,bcd->bkc", interests, items).amax(dim=1)


def bpr_loss(pos_score: torch.Tensor, neg_score: torch.Tensor) -> torch.Tensor:
    """-mean log σ(s⁺ - s⁻), computed stably. [B], [B] -> scalar."""
    return -F.logsigmoid(pos_score - neg_score).mean()
