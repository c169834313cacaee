"""The fixed-negatives evaluation protocol (``eval_protocol: fixed_negatives``, preset ``protocol: rechorus``).

It plugs into RecBole's ``data_preparation`` (:mod:`recbole_ext.data.hooks`) through the two module globals it looks up at call
time, ``recbole.data.utils.create_samplers`` and ``get_dataloader``; both wrappers delegate to RecBole unless
the protocol is on:

* ``create_samplers`` gives the valid and test splits a :class:`FixedNegatives` "sampler": one fixed
  ``[rows, N]`` matrix of negative item ids per split, row-aligned with the split. It comes from the dataset's
  own ``<dataset>.valid.neg`` / ``.test.neg`` files when present (e.g. ReChorus's lists, kept exactly), or is
  drawn once with a seeded generator, uniformly with replacement from the items the user never interacted with.
* ``get_dataloader`` returns :class:`FixedNegEvalDataLoader` for valid/test: RecBole's full-sort loader whose
  batches also carry ``candidates = [target, negatives...]``. The plugin trainer mixin
  (:mod:`recbole_ext.trainer.base`) scores a batch once with ``full_sort_predict``, gathers the candidate
  columns and ranks the target pessimistically; RecBole's Collector and metrics do the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.interaction import Interaction
from recbole.utils import ModelType

from recbole_ext.data.guard import NeedsPluginTrainer

CANDIDATES = "candidates"
PHASES = {"valid": 1, "test": 2}


def user_item_keys(splits, uid_field: str, iid_field: str, list_field: str, n_items: int) -> np.ndarray:
    """Sorted unique ``user * n_items + item`` keys of every interaction in sequential splits: every target,
    plus every history item (which covers each user's first interaction, never a target)."""
    keys = []
    for split in splits:
        feat = split.inter_feat
        users = feat[uid_field].numpy().astype(np.int64)
        keys.append(np.unique(users * n_items + feat[iid_field].numpy()))
        for column in feat[list_field].numpy().T:  # a column at a time: [rows, L] keys at once is ~20 MB of peak
            rows = np.nonzero(column)[0]
            keys.append(np.unique(users[rows] * n_items + column[rows]))
    return np.unique(np.concatenate(keys))


def sample_negatives(users: np.ndarray, seen: np.ndarray, n_items: int, n_neg: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Uniform ids in [1, n_items) with replacement, redrawn until none is an item the user has (``seen``:
    sorted user*n_items+item keys). users: [R] -> [R, n_neg] int64. Vectorised rejection sampling."""
    negatives = rng.integers(1, n_items, size=(len(users), n_neg))
    bad = np.isin(users[:, None] * n_items + negatives, seen)
    while bad.any():
        negatives[bad] = rng.integers(1, n_items, size=int(bad.sum()))
        bad[bad] = np.isin(users[np.nonzero(bad)[0]] * n_items + negatives[bad], seen)
    return negatives


def _numeric_file(path: Path, item_ids: dict) -> tuple[pd.DataFrame, np.ndarray] | None:
    """(user and target tokens [rows, 2], negatives [rows, N] internal ids), the negatives parsed as integers by
    pandas' C reader (no Python string per token: ~40 MB less peak RSS on Grocery's two files), when every item token
    is a plain decimal integer, as in ReChorus's files; None when not, or when a line does not parse so (the token
    path then names it)."""
    numeric = {int(token): index for token, index in item_ids.items() if token.isdecimal() and token == str(int(token))}
    if not numeric or len(numeric) < len(item_ids) - 1:  # [PAD]: the one non-numeric token
        return None
    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, skiprows=1, dtype={0: str, 1: str})
    except (ValueError, pd.errors.ParserError):
        return None
    values = frame.iloc[:, 2:].to_numpy()
    if values.dtype.kind != "i":  # a ragged line (NaN) or a non-integer token
        return None
    lookup = np.full(max(numeric) + 2, -1, dtype=np.int64)  # the last entry (-1) serves ids out of range
    lookup[list(numeric)] = list(numeric.values())
    mapped = lookup[values.clip(-1, len(lookup) - 1)]
    return None if (mapped < 0).any() else (frame.iloc[:, :2], mapped)


def _token_negatives(path: Path, tokens: pd.Series, item_ids: dict) -> np.ndarray:
    """[rows, N] internal ids of space-separated item tokens; an unknown token or a ragged row names the file."""
    width = tokens.str.count(" ") + 1
    if width.nunique() != 1:
        raise ValueError(f"{path}: every row needs the same number of negatives")
    negatives = np.empty((len(tokens), int(width.iloc[0])), dtype=np.int64)
    for start in range(0, len(tokens), 1024):  # in chunks: a Python string per token costs ~60 bytes
        chunk = tokens.iloc[start:start + 1024].str.split(" ").explode()
        mapped = chunk.map(item_ids)
        if mapped.isna().any():
            raise ValueError(f"{path}: negative item {chunk[mapped.isna()].iloc[0]!r} is not an item of the dataset")
        negatives[start:start + 1024] = mapped.to_numpy(np.int64).reshape(-1, negatives.shape[1])
    return negatives


def read_shipped(path: Path, dataset, split) -> np.ndarray:
    """Negatives from an atomic ``user_id:token item_id:token neg_items:token_seq`` file, aligned to the split's
    rows; fails if the split RecBole made is not the one the file was written for."""
    uid, iid = dataset.uid_field, dataset.iid_field
    columns = [c.split(":")[0] for c in pd.read_csv(path, sep="\t", nrows=0).columns]
    missing = [c for c in (uid, iid, "neg_items") if c not in columns]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(missing)}; a .neg file is tab-separated "
                         f"{uid}:token {iid}:token neg_items:token_seq")
    item_ids = dataset.field2token_id[iid]
    parsed = _numeric_file(path, item_ids) if columns == [uid, iid, "neg_items"] else None
    if parsed is not None:
        ids, negatives = parsed
        ids.columns = [uid, iid]
    else:
        frame = pd.read_csv(path, sep="\t", dtype=str)
        frame.columns = columns
        ids, negatives = frame[[uid, iid]], _token_negatives(path, frame["neg_items"], item_ids)
    users = ids[uid].map(dataset.field2token_id[uid])
    targets = ids[iid].map(item_ids)
    row_of_user = pd.Series(np.arange(len(ids)), index=users.to_numpy())
    split_users = split.inter_feat[uid].numpy()
    if not row_of_user.index.is_unique or not np.isin(split_users, row_of_user.index).all():
        raise ValueError(f"{path}: needs exactly one row per user of the split (leave-one-out)")
    rows = row_of_user.loc[split_users].to_numpy()
    mismatch = (targets.to_numpy()[rows] != split.inter_feat[iid].numpy()).sum()
    if mismatch:
        raise ValueError(f"{path}: {mismatch} of {len(rows)} targets differ from RecBole's leave-one-out split; "
                         "the file belongs to another split (re-run the converter)")
    return negatives[rows]


class FixedNegatives:
    """The fixed negatives of one evaluation split (``negatives``: [rows, N] internal item ids)."""

    def __init__(self, config, dataset, built_datasets, phase: str, seen: np.ndarray | None):
        split = built_datasets[PHASES[phase]]
        shipped = Path(config["data_path"]) / f"{config['dataset']}.{phase}.neg"
        if shipped.is_file():
            self.source = str(shipped)
            negatives = read_shipped(shipped, dataset, split)
        else:
            self.source = f"sampled (seed {config['seed']}, {config['eval_neg_num']} per row)"
            rng = np.random.default_rng([int(config["seed"]), PHASES[phase]])
            users = split.inter_feat[dataset.uid_field].numpy().astype(np.int64)
            negatives = sample_negatives(users, seen, dataset.item_num, int(config["eval_neg_num"]), rng)
        self.negatives = torch.as_tensor(negatives, dtype=torch.long)


class FixedNegEvalDataLoader(NeedsPluginTrainer, FullSortEvalDataLoader):
    """RecBole's sequential full-sort loader plus a ``candidates`` field [B, 1+N] (column 0 = target).

    ``positive_i`` is 0: after the trainer gathers the candidate columns, the target sits in column 0.
    """

    refusal = ("eval_protocol=fixed_negatives needs a recbole_ext trainer (RecBole's plain Trainer would rank all items): "
               "use recbole_ext.run() or run_recbole_ext.py (RecBole's run_recbole supports it for recbole_ext models only)")

    def __init__(self, config, dataset, sampler, shuffle=False):
        if not isinstance(sampler, FixedNegatives):
            raise TypeError("FixedNegEvalDataLoader needs the FixedNegatives sampler made by data_preparation")
        super().__init__(config, dataset, sampler, shuffle=shuffle)

    def collate_fn(self, index):
        interaction, _, positive_u, _ = super().collate_fn(index)
        negatives = self._sampler.negatives[torch.as_tensor(index)]
        candidates = torch.cat([interaction[self.iid_field].unsqueeze(1), negatives], dim=1)
        interaction.update(Interaction({CANDIDATES: candidates}))
        return interaction, None, positive_u, torch.zeros_like(positive_u)


def eval_protocol(config) -> str:
    """The run's evaluation protocol: recbole | fixed_negatives | comirec (the last two: sequential models)."""
    mode = config["eval_protocol"] or "recbole"
    if mode not in ("recbole", "fixed_negatives", "comirec"):
        raise ValueError(f"eval_protocol: unknown value {mode!r}; choose 'recbole', 'fixed_negatives' or 'comirec'")
    if mode != "recbole" and config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        raise ValueError(f"eval_protocol: {mode!r} is for sequential models; use 'recbole' for {config['model']}")
    return mode
