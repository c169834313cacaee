"""MARIF's "flexible up-down" history sampler, vectorised.

Each entity (a user, or an item) is described by ``size`` sampled (partner, feedback) pairs of its **training**
interactions: a user by items and the ratings it gave them, an item by users and their ratings. The sample is
stratified by feedback level: level ``r`` gets ``floor(size · n_r / n)`` slots, one level (the *remainder level*)
gets what the floors leave, and each slot draws a partner uniformly **with replacement** from that level's pool, so
short histories are up-sampled and long ones down-sampled to exactly ``size``.

The pools are a CSR index over the training rows sorted by (entity, level, partner): ``counts[e, r]`` and
``starts[e, r]`` give each level's segment. A batch draws all its slots at once (one ``searchsorted`` maps slot
``s`` to its level through the quotas' cumulative sum, one uniform number picks the partner inside the segment): no
Python per row (the reference spends 180 of its 290 s per epoch in that loop).

* **Remainder level** (``remainder``): ``last``, the reference's (per its erratum): the entity's level whose first
  appearance in the (shuffled) training rows comes latest, mostly its rarest level; ``largest``: the level with
  the most interactions.
* **The row's own interaction** is never in its own history: when the row's (entity, partner) pair is a training
  interaction, that entry is left out of its level (count minus one, the draw skips its position; a pair with
  several training rows loses one of them). The reference keeps it in during training (a mild label leak: the
  target's own rating can be sampled); calling with ``partners=None`` restores that (MARIF's
  ``exclude_own_interaction: False``). Valid/test rows are not in the pools anyway.
* **Cold entities** (no training interaction left) get an all-False mask: their pooled vector is zero.

It is an ``nn.Module`` only so that its index lives on the model's device (non-persistent buffers: checkpoints
do not carry it; it is rebuilt from the training split, as RecBole rebuilds the model).
"""

from __future__ import annotations

import torch
from torch import nn

REMAINDER = ("last", "largest")


def feedback_levels(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Levels 0..R-1 of feedback values (their rank among the distinct training values: 1..5 stars, half stars,
    0/1 labels). values: [M] -> (levels [M] long, distinct values [R])"""
    distinct = torch.unique(values)
    return torch.searchsorted(distinct, values), distinct


class UpDownSampler(nn.Module):
    """Stratified fixed-size samples of each entity's training (partner, level) pairs.

    entities, partners, levels: [M] long, one per training row, in the split's row order (it defines ``last``);
    n_partners bounds the partner ids; size = N slots per sample.
    """

    def __init__(self, entities: torch.Tensor, partners: torch.Tensor, levels: torch.Tensor, n_entities: int,
                 n_partners: int, n_levels: int, size: int, remainder: str = "last"):
        super().__init__()
        if remainder not in REMAINDER:
            raise ValueError(f"remainder_policy: unknown value {remainder!r}; choose one of {list(REMAINDER)}")
        if len(entities) == 0:
            raise ValueError("the history sampler needs training interactions; the training split is empty")
        self.size, self.n_levels, self.n_partners, self.remainder = size, n_levels, n_partners, remainder
        entities, partners, levels = entities.long(), partners.long(), levels.long()
        cell = entities * n_levels + levels  # (entity, level) cell of each row
        order = torch.argsort(cell * n_partners + partners, stable=True)
        counts = torch.bincount(cell, minlength=n_entities * n_levels)
        first = torch.full((n_entities * n_levels,), -1, dtype=torch.long)
        first.scatter_reduce_(0, cell, torch.arange(len(cell)), reduce="amin", include_self=False)
        pair = (entities * n_partners + partners)[order]  # the CSR position of each (entity, partner) pair
        pair_sorted, pair_position = torch.sort(pair, stable=True)
        for name, value in (("partner", partners[order]), ("level", levels[order]),
                            ("counts", counts.view(n_entities, n_levels)),
                            ("starts", (torch.cumsum(counts, 0) - counts).view(n_entities, n_levels)),
                            ("first_row", first.view(n_entities, n_levels)),
                            ("pair_sorted", pair_sorted), ("pair_position", pair_position)):
            self.register_buffer(name, value, persistent=False)

    def own_position(self, entities: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
        """CSR position of each row's own (entity, partner) interaction, -1 where it is not a training one. [B]"""
        keys = entities * self.n_partners + partners
        at = torch.searchsorted(self.pair_sorted, keys).clamp_(max=len(self.pair_sorted) - 1)
        return torch.where(self.pair_sorted[at] == keys, self.pair_position[at], -1)

    def quotas(self, counts: torch.Tensor, first_row: torch.Tensor) -> torch.Tensor:
        """Slots per level: floor(N·n_r/n), the remainder to one level with n_r > 0; all 0 for a cold entity.
        counts, first_row: [B, R] -> [B, R] long"""
        total = counts.sum(1, keepdim=True)
        quota = self.size * counts // total.clamp(min=1)
        score = first_row if self.remainder == "last" else counts
        target = torch.where(counts > 0, score, -1).argmax(1, keepdim=True)
        quota.scatter_add_(1, target, self.size - quota.sum(1, keepdim=True))
        return quota * (total > 0)

    def forward(self, entities: torch.Tensor, partners: torch.Tensor | None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample each row's history; ``partners`` (the row's own partner) leaves its own interaction out, None
        keeps it in. entities: [B] -> (partners [B, N] long, feedback [B, N] long = level + 1, 0 where masked,
        mask [B, N] bool)"""
        counts, starts = self.counts[entities], self.starts[entities]
        own = self.own_position(entities, partners) if partners is not None else torch.full_like(entities, -1)
        has_own = own >= 0
        own_level = self.level[own.clamp(min=0)]
        counts = counts - nn.functional.one_hot(own_level, self.n_levels) * has_own.unsqueeze(1)
        quota = self.quotas(counts, self.first_row[entities])
        slots = torch.arange(self.size, device=entities.device).expand(len(entities), -1).contiguous()
        level = torch.searchsorted(quota.cumsum(1), slots, right=True).clamp_(max=self.n_levels - 1)  # [B, N]
        n, start = counts.gather(1, level), starts.gather(1, level)
        uniform = torch.rand(level.shape, generator=generator, device=entities.device, dtype=torch.float64)
        pick = torch.minimum((uniform * n).long(), (n - 1).clamp(min=0))
        position = start + pick
        position += (has_own.unsqueeze(1) & (level == own_level.unsqueeze(1)) & (position >= own.unsqueeze(1))).long()
        mask = (quota.sum(1, keepdim=True) > 0).expand_as(level)
        partner = torch.where(mask, self.partner[position.clamp_(max=len(self.partner) - 1)], 0)
        return partner, torch.where(mask, level + 1, 0), mask
