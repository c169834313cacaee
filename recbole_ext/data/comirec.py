"""The ComiRec multi-interest protocol (``eval_protocol: comirec``, preset ``protocol: comirec``).

* Filtering, one pass as ComiRec's preprocessing (:func:`comirec_filter`, not RecBole's iterated filter): items
  with ≥ ``comirec_min_item_inter`` interactions, then users with ≥ ``comirec_min_user_inter`` interactions on the
  kept items; items are not re-checked. It runs where RecBole's own filter runs, before ids are remapped.
* A **user-disjoint** split, as ComiRec's preprocessing: the list of users in order of first appearance in the
  interaction file (filtered rows included: ComiRec fills its dict of users before filtering) is shuffled by Python's
  ``random.seed(comirec_split_seed); random.shuffle(...)`` and cut 80/10/10 (``comirec_split``), so the same file
  and seed (ComiRec's 1230) give ComiRec's split; each user's whole sequence belongs to one part. Data converted
  from ComiRec's own files (``--convert=comirec``) carry each user's part in the ``comirec_part`` field: that split
  is kept and the filter is skipped (ComiRec's preprocessing has already run).
* Training: every prefix of every train user's sequence predicts its next item (RecBole's own sequential
  augmentation, history truncated to the last ``MAX_ITEM_LIST_LENGTH`` items).
* Valid/test: one row per user; the history is the first ``int(0.8·n)`` items (``comirec_history_ratio``; the
  last ≤ L of them are fed) and **all** the remaining items are its targets, in order (``comirec_targets``
  [rows, T], 0-padded). :class:`ComiRecEvalDataLoader` hands them to RecBole's Collector as the row's positives,
  so RecBole's Recall/Hit/NDCG score each user against all its targets; ``ComiRecNDCG``
  (:mod:`recbole_ext.evaluation.comirec`) adds ComiRec's paper-branch NDCG from the ordered targets.
* Retrieval is a full ranking over all items (multi-interest models: max over interests); history items are not
  masked, as in ComiRec and Re4. Model selection is on the **valid** users (the Re4 code selects on test).

It plugs in through ``SequentialDataset.build`` and ``get_dataloader`` (see :func:`recbole_ext.data.hooks.install_hooks`).
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.interaction import Interaction

TARGETS = "comirec_targets"
PART = "comirec_part"  # train | valid | test per interaction, written by the comirec converter
USER_ORDER = "comirec_user_order"  # dataset attribute: user tokens by first appearance, recorded before the filter


def comirec_filter(dataset) -> None:
    """ComiRec's one-pass filter on the loaded interactions (a DataFrame; before RecBole remaps ids)."""
    feat, config = dataset.inter_feat, dataset.config
    if PART in feat:
        return
    items, users = feat[dataset.iid_field], feat[dataset.uid_field]
    setattr(dataset, USER_ORDER, users.unique())  # in order of appearance; the filter drops some rows next
    keep = items.map(items.value_counts()) >= (config["comirec_min_item_inter"] or 0)
    keep &= users.map(users[keep].value_counts()).fillna(0) >= (config["comirec_min_user_inter"] or 0)
    dataset.inter_feat = feat[keep]


def ordered_users(dataset, ids: np.ndarray) -> np.ndarray:
    """The users ``ids`` in ComiRec's list order, first appearance in the interaction file as loaded (the order
    :func:`comirec_filter` recorded); without that record (the filter did not run), RecBole's id order, which is
    first appearance among the kept rows. [U] -> [U]"""
    tokens = getattr(dataset, USER_ORDER, None)
    if tokens is None:
        return ids
    order = pd.Series(tokens).map(dataset.field2token_id[dataset.uid_field]).dropna().to_numpy(np.int64)
    return order[np.isin(order, ids)]


def split_users(users: np.ndarray, seed: int, ratios: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ComiRec's split of its ordered user list: ``random.seed(seed); random.shuffle(users)`` (Python's generator,
    so the same seed gives ComiRec's order), then train / valid / test cut at ``int(r0·n)`` and ``int((r0 + r1)·n)``.
    [U] -> three arrays of users"""
    positions = list(range(len(users)))
    random.Random(seed).shuffle(positions)  # the permutation depends on the length only; the global random is untouched
    shuffled = users[positions]
    first, second = int(ratios[0] * len(users)), int((ratios[0] + ratios[1]) * len(users))
    return shuffled[:first], shuffled[first:second], shuffled[second:]


def eval_rows(start: np.ndarray, counts: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """For users whose augmented rows are ``start .. start + counts - 1`` (targets at sequence positions
    1 .. n-1, n = counts + 1): the row whose target is position ``k = int(ratio·n)`` (its history is the first
    k items) and the row index of every target at positions k .. n-1, [U, T] padded with -1."""
    k = np.maximum((ratio * (counts + 1)).astype(np.int64), 1)
    first = start + k - 1
    n_targets = counts + 1 - k
    steps = np.arange(n_targets.max(initial=0))
    targets = first[:, None] + steps[None, :]
    return first, np.where(steps[None, :] < n_targets[:, None], targets, -1)


def comirec_build(dataset) -> list:
    """[train, valid, test] datasets of the protocol from a loaded (augmented) ``SequentialDataset``."""
    dataset._change_feat_format()  # as RecBole's build: DataFrame -> Interaction, then the prefix augmentation
    config, feat = dataset.config, dataset.inter_feat
    users = feat[dataset.uid_field].numpy()
    if len(users) > 1 and (np.diff(users) < 0).any():
        raise ValueError("comirec protocol: the interactions must be sorted by user (RecBole's augmentation does)")
    ids, start, counts = np.unique(users, return_index=True, return_counts=True)
    if PART in feat:
        part = np.asarray(dataset.field2id_token[PART])[feat[PART].numpy()[start]]
        train_users, valid_users, test_users = (ids[part == name] for name in ("train", "valid", "test"))
    else:
        train_users, valid_users, test_users = split_users(
            ordered_users(dataset, ids), int(config["comirec_split_seed"]), list(config["comirec_split"]))
    parts = [dataset.copy(feat[torch.as_tensor(np.nonzero(np.isin(users, train_users))[0])])]
    items = feat[dataset.iid_field]
    for part in (valid_users, test_users):
        chosen = np.isin(ids, part)
        rows, target_rows = eval_rows(start[chosen], counts[chosen], float(config["comirec_history_ratio"]))
        split = dataset.copy(feat[torch.as_tensor(rows)])
        split.comirec_targets = torch.where(torch.as_tensor(target_rows) >= 0,
                                            items[torch.as_tensor(target_rows).clamp(min=0)], 0)
        parts.append(split)
    return parts


class ComiRecEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's sequential full-sort loader whose rows carry all their targets: ``positive_u``/``positive_i``
    list every (row, target) pair, and the batch has the ordered targets as ``comirec_targets`` [B, T]."""

    def collate_fn(self, index):
        interaction, history_index, _, _ = super().collate_fn(index)
        targets = self._dataset.comirec_targets[torch.as_tensor(np.asarray(index))]
        rows, cols = targets.nonzero(as_tuple=True)
        interaction.update(Interaction({TARGETS: targets}))
        return interaction, history_index, rows, targets[rows, cols]
