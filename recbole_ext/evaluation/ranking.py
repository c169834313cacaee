"""Ranking of a target among fixed candidates, with ties counted against the target.

RecBole's Collector ranks with ``torch.topk``, whose order among equal scores is arbitrary; a model that
scores everything equal could then rank its target first. Under the fixed-negatives protocol every row's
candidates are ``[target, neg_1, ..., neg_N]`` (negatives may repeat, and each copy counts, as in ReChorus).
"""

from __future__ import annotations

import torch


def pessimistic_rank(scores: torch.Tensor) -> torch.Tensor:
    """1-based rank of column 0 among the row: 1 + #(other columns scoring >= it). [B, C] -> [B] long."""
    return 1 + (scores[:, 1:] >= scores[:, :1]).sum(dim=1)


def rank_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scores whose ``topk`` order puts the target at exactly its pessimistic rank: every candidate tied with
    or above the target gets 1, the target 0.5, the rest 0. RecBole's Hit/NDCG/MRR/Recall/Precision read only
    the target's position, so they then compute exactly the pessimistic metrics. [B, C] -> [B, C] float."""
    ranked = (scores >= scores[:, :1]).float()
    ranked[:, 0] = 0.5
    return ranked
