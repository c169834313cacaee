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

    x: [B, L, d], mask: [B, L] bool (True = real item) -> [B, L, d]
    """

    def __init__(self, d: int):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.query(x) @ self.key(x).transpose(1, 2) / x.size(-1) ** 0.5  # [B, L, L]
        logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
        z = self.norm1(torch.softmax(logits, dim=-1) @ self.value(x) + x)
        return self.norm2(self.ffn(z) + z)


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
            h = self.transformer(h, mask) * mask.unsqueeze(-1)
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
