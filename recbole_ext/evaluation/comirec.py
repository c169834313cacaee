"""ComiRec's NDCG (paper branch, the one Re4 reports), registered as a RecBole metric: ``ComiRecNDCG``.

For a user with ordered future items ``T`` (duplicates kept) and top-K list ``Lst``: DCG = Σ over target
positions i with ``T[i] ∈ Lst`` of 1/log2(i + 2) (i is the index in the *target* list, not a retrieval rank);
IDCG = Σ_{i < h} 1/log2(i + 2) with h the number of such hits; NDCG = DCG / IDCG, 0 without a hit.
Recall (set-based) and HitRate are RecBole's own ``Recall`` and ``Hit``.

The score needs the target order, which RecBole's Collector does not keep: the plugin trainer computes it per
batch from the batch's ordered targets and its top-K items (:func:`comirec_ndcg`) and adds it to the
Collector's data as ``rec.comirec_ndcg``; the metric class averages it over users.
"""

from __future__ import annotations

import torch
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType

KEY = "rec.comirec_ndcg"


def comirec_ndcg(top_items: torch.Tensor, targets: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """top_items: [B, max(ks)] item ids by rank; targets: [B, T] ordered future items, 0 = padding
    -> [B, len(ks)] paper-branch NDCG@k."""
    rank = torch.full(targets.shape, top_items.size(1), device=targets.device)  # [B, T], max = not retrieved
    match = (targets.unsqueeze(-1) == top_items.unsqueeze(1)) & (targets > 0).unsqueeze(-1)  # [B, T, Kmax]
    found = match.any(-1)
    rank[found] = match.float().argmax(-1)[found]
    discount = 1.0 / torch.log2(torch.arange(targets.size(1), device=targets.device, dtype=torch.float) + 2)
    ideal = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # ideal[h] = Σ_{i<h} discount[i]
    columns = []
    for k in ks:
        hit = rank < k  # [B, T]
        dcg = (hit * discount).sum(1)
        idcg = ideal[hit.sum(1)]
        columns.append(torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12), 0.0))
    return torch.stack(columns, dim=1)


class ComiRecNDCG(AbstractMetric):
    """Mean paper-branch NDCG@k over users (see the module docstring)."""

    metric_type = EvaluatorType.RANKING
    metric_need = [KEY]

    def __init__(self, config):
        super().__init__(config)
        self.topk = config["topk"]

    def calculate_metric(self, dataobject) -> dict:
        values = dataobject.get(KEY)  # [U, len(topk)]
        return {f"comirecndcg@{k}": round(values[:, i].mean().item(), self.decimal_place)
                for i, k in enumerate(self.topk)}
