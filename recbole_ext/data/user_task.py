"""The user-level task (``task: user_classification``): one row per user, users split into train, valid and test.

Each user is represented by its last augmented row of the ``SequentialDataset`` (its micro history up to its last
event, whose time is the row's observation cutoff); the label is a user field. The model side is
:mod:`recbole_ext.model.user_task`.
"""

from __future__ import annotations

import numpy as np
import torch

USER_TASK_REFUSAL = ("task user_classification: RecBole's own Trainer would train {model}'s own objective on the user "
                     "rows; run it with run_recbole_ext.py or recbole_ext.run(), which put a head on its user vector")


def split_by_token(tokens: np.ndarray, seed: int, ratios: list[float]) -> tuple[np.ndarray, ...]:
    """Positions in ``tokens`` of each part of a seeded user split made over the sorted raw ids, so that RecBole's
    remapped ids and a plain file read (the oracle) put the same users in the same part: a numpy permutation cut at
    ``int(r0·n)`` and ``int((r0 + r1)·n)``. [U] -> three position arrays"""
    shuffled = np.argsort(tokens, kind="stable")[np.random.default_rng(seed).permutation(len(tokens))]
    return tuple(np.split(shuffled, [int(ratios[0] * len(tokens)), int((ratios[0] + ratios[1]) * len(tokens))]))


def user_task_build(dataset) -> list:
    """[train, valid, test] of the user-level task from a loaded ``SequentialDataset``: each user's last
    augmented row (its micro history up to its last event, whose time is the row's observation cutoff), users
    shuffled with ``user_split_seed`` and cut by ``user_split``."""
    dataset._change_feat_format()  # DataFrame -> Interaction, then RecBole's prefix augmentation (sorted by user)
    config, feat = dataset.config, dataset.inter_feat
    users = feat[dataset.uid_field].numpy()
    ids, start, counts = np.unique(users, return_index=True, return_counts=True)
    last = start + counts - 1
    tokens = np.asarray(dataset.field2id_token[dataset.uid_field])[ids]
    parts = split_by_token(tokens, int(config["user_split_seed"]), list(config["user_split"]))
    return [dataset.copy(feat[torch.as_tensor(np.sort(last[part]))]) for part in parts]
