"""What the plugin trainer adds to RecBole's full-sort evaluation of a batch, by protocol.

* ``eval_protocol: comirec`` (the batch holds ``TARGETS``): RecBole's full-sort scores plus ComiRec's order-aware
  NDCG of each user (``rec.comirec_ndcg``, read by the ``ComiRecNDCG`` metric), when a metric asks for it;
* ``eval_protocol: fixed_negatives`` (the batch holds ``CANDIDATES``, [B, 1+N], column 0 = target):
  ``model.predict_candidates(interaction, candidates)`` when the model has it, else one full-sort pass with the
  candidate columns gathered; then the pessimistic rank (see :mod:`recbole_ext.data.protocol`).
"""

from __future__ import annotations

from typing import Callable

import torch

from recbole_ext.data.comirec import TARGETS
from recbole_ext.data.protocol import CANDIDATES
from recbole_ext.evaluation.comirec import KEY as COMIREC_KEY
from recbole_ext.evaluation.comirec import comirec_ndcg
from recbole_ext.evaluation.ranking import rank_scores


def is_comirec(interaction) -> bool:
    """Whether the batch is one of the ComiRec protocol (its users' held-out items in ``TARGETS``)."""
    return TARGETS in interaction


def is_fixed_negatives(interaction) -> bool:
    """Whether the batch carries fixed candidates (target + sampled negatives)."""
    return CANDIDATES in interaction


def forget_comirec(collector) -> None:
    """Drop the last evaluation's ComiRec NDCG: RecBole's Collector keeps unknown keys across calls."""
    if COMIREC_KEY in collector.data_struct:
        del collector.data_struct[COMIREC_KEY]


def collect_comirec_ndcg(collector, scores: torch.Tensor, interaction, topk: list[int]) -> None:
    """Add the batch's ComiRec NDCG to the collector when a metric needs it. ``scores``: [B, n_items] full-sort
    scores; ``interaction[TARGETS]``: each user's held-out items."""
    if not collector.register.need(COMIREC_KEY):
        return
    top_items = scores.topk(max(topk), dim=1).indices  # [B, max(topk)]
    ndcg = comirec_ndcg(top_items, interaction[TARGETS].to(top_items.device), topk)
    collector.data_struct.update_tensor(COMIREC_KEY, ndcg)


def candidate_ranks(model, interaction, device: torch.device,
                    full_sort_scores: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The pessimistic rank scores of a fixed-negatives batch ([B, 1+N]). ``full_sort_scores()``: RecBole's
    [B, n_items] scores of the batch, computed only for a model without ``predict_candidates``."""
    candidates = interaction[CANDIDATES].to(device)  # [B, 1+N], column 0 = target
    scorer = getattr(model, "predict_candidates", None)
    if scorer is not None:  # the model scores [B, 1+N] directly
        scores = scorer(interaction.to(device), candidates)
    else:  # any RecBole model: one full-sort pass, then the candidate columns
        scores = full_sort_scores().gather(1, candidates)
    return rank_scores(scores)
