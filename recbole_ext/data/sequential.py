"""The fast training path of sequential models: :class:`SequentialTrainLoader`, RecBole's ``TrainDataLoader``
contract without its per-batch Python work.

RecBole's loader hands a Python list of row indices to every batch, gathers each field, and asks its sampler for
negatives through a per-row Python loop. This loader keeps the split's fields (history ``[N, L]``, lengths,
targets, users, ...) as ready tensors on the training device, draws one permutation and all of the epoch's
negatives at the start of the epoch with a seeded generator (tensor ops: sorted keys + ``searchsorted``, redraw
only the collisions), and yields batches by slicing: no per-step host work, no host-to-device copy on a GPU.

Training negatives (``train_neg_exclude``), uniform over items ``1 .. item_num - 1`` and redrawn every epoch:

* ``positive`` (default, RecBole's ``RepeatableSampler``): a negative is any item but the row's target;
* ``history`` (``protocol: rechorus``, the reference): a negative is no item of the user's whole training
  history (every training target and every history item of the user), as ReChorus's ``train_clicked_set``.

Row order: reshuffled every epoch (RecBole), or with ``shuffle_once`` (``protocol: comirec``) shuffled once and
kept for every epoch, as the official Re4 code, which shuffles its training list once and caches it; that order
comes from the seed alone, so a resumed run keeps it.

``sequential_loader: recbole`` keeps RecBole's own loader (RecBole's sampler, ``positive`` only, reshuffled every
epoch). The fast loader also steps aside, with a log line, where it does not apply: distributed training, popularity
or dynamic negatives, or an interaction transform.
"""

from __future__ import annotations

from logging import getLogger

import numpy as np
import torch
from recbole.data.dataloader import TrainDataLoader
from recbole.data.interaction import Interaction

from recbole_ext.data.protocol import user_item_keys

EXCLUDE = ("positive", "history")


def draw_negatives(users: torch.Tensor, positives: torch.Tensor, n_items: int, num: int,
                   generator: torch.Generator, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform item ids in ``[1, n_items)``, ``num`` per row, none equal to the row's positive or, given
    ``seen`` (sorted ``user * n_items + item`` keys), none the user has seen. Only collisions are redrawn.

    users, positives: [R] long (CPU) -> [R, num] long
    """
    def colliding(rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if seen is None:
            return items == positives[rows].unsqueeze(-1)
        keys = users[rows].unsqueeze(-1) * n_items + items
        at = torch.searchsorted(seen, keys).clamp_(max=len(seen) - 1)
        return seen[at] == keys

    negatives = torch.randint(1, n_items, (len(users), num), generator=generator)
    bad = colliding(torch.arange(len(users)), negatives)
    while bad.any():
        rows, cols = bad.nonzero(as_tuple=True)
        redrawn = torch.randint(1, n_items, (len(rows),), generator=generator)
        negatives[rows, cols] = redrawn
        bad = torch.zeros_like(bad)
        bad[rows, cols] = colliding(rows, redrawn.unsqueeze(-1)).squeeze(-1)
    return negatives


def seeded_generator(seed: int, stream: int) -> torch.Generator:
    """A torch generator for one of the loader's streams of random numbers, independent of the others and of the
    global stream that ``seed`` itself seeds."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))


def history_keys(dataset) -> torch.Tensor:
    """Sorted ``user * item_num + item`` keys of every item in the users' training histories. -> [M] long"""
    keys = user_item_keys([dataset], dataset.uid_field, dataset.iid_field, dataset.item_id_list_field,
                          dataset.item_num)
    return torch.as_tensor(keys, dtype=torch.long)


def fast_path_blocker(config) -> str | None:
    """Why the fast loader cannot serve this configuration, or None when it can."""
    args = config["train_neg_sample_args"] or {}
    if not config["single_spec"]:
        return "distributed training"
    if args.get("distribution", "none") not in ("uniform", "none"):
        return f"{args['distribution']} negatives"
    if args.get("dynamic"):
        return "dynamic negatives"
    if config["transform"]:
        return "an interaction transform"
    return None


def train_neg_exclude(config) -> str:
    value = config["train_neg_exclude"] or "positive"
    if value not in EXCLUDE:
        raise ValueError(f"train_neg_exclude: unknown value {value!r}; choose one of {list(EXCLUDE)}")
    return value


class SequentialTrainLoader(TrainDataLoader):
    """RecBole's sequential ``TrainDataLoader``, served from ready tensors (see the module docstring)."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        # negatives are drawn here; RecBole's sampler is unused and holds the whole pre-split dataset (~40 MB of
        # augmented histories on Grocery): let it go
        self._sampler = None
        device = torch.device(config["device"] or "cpu")
        feat = dataset.inter_feat
        self.fields = {name: feat[name].to(device) for name in feat.columns}
        self.exclude = train_neg_exclude(config)
        self.seen = history_keys(dataset) if self.exclude == "history" and self.n_negatives else None
        self.epoch_negatives: torch.Tensor | None = None  # [N, num] of the epoch in progress, row order
        # RecBole seeds its loader generator with `seed`, as init_seed seeds the global stream the model's
        # initial weights come from: the same MT19937 numbers would pick the epoch's order and negatives.
        self.generator = seeded_generator(int(config["seed"]), 1)
        self.fixed_order = torch.randperm(self.sample_size, generator=seeded_generator(int(config["seed"]), 2)) \
            if shuffle and config["shuffle_once"] else None  # [N]: the row order of every epoch

    @property
    def n_negatives(self) -> int:
        """Uniform negatives per row (0: none, e.g. a CE loss)."""
        args = self.neg_sample_args
        return args["sample_num"] if args["distribution"] == "uniform" and args["sample_num"] != "none" else 0

    def __len__(self) -> int:
        return -(-self.sample_size // self.step)

    def __iter__(self):
        n, device = self.sample_size, next(iter(self.fields.values())).device
        if self.fixed_order is not None:
            order = self.fixed_order
        else:
            order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(device)
        negatives = None
        if self.n_negatives:
            users = self.fields[self.uid_field].cpu()
            self.epoch_negatives = draw_negatives(users, self.fields[self.iid_field].cpu(), self._dataset.item_num,
                                                  self.n_negatives, self.generator, self.seen)
            negatives = self.epoch_negatives.to(device)
        for start in range(0, n, self.step):
            index = order[start:start + self.step]
            batch = self._dataset.join(Interaction({k: v[index] for k, v in self.fields.items()}))  # user/item fields
            batch = self.transform(self._dataset, batch)
            if negatives is not None:  # RecBole's layout: negative j of row i at j * B + i
                batch = self.sampling_func(batch, negatives[index].T.reshape(-1))
            yield batch


def train_loader_class(config) -> type | None:
    """:class:`SequentialTrainLoader` when it serves this configuration, else None (RecBole's loader)."""
    exclude = train_neg_exclude(config)
    choice = config["sequential_loader"] or "fast"
    if choice not in ("fast", "recbole"):
        raise ValueError(f"sequential_loader: unknown value {choice!r}; choose 'fast' or 'recbole'")
    blocker = "sequential_loader: recbole" if choice == "recbole" else fast_path_blocker(config)
    if blocker is None:
        return SequentialTrainLoader
    if config["shuffle_once"]:
        raise ValueError(f"shuffle_once needs the fast sequential loader, which {blocker} rules out; "
                         "set shuffle_once: False")
    if exclude == "history":
        raise ValueError(f"train_neg_exclude: history needs the fast sequential loader, which {blocker} rules out; "
                         "set train_neg_exclude: positive")
    getLogger().info(f"RecBole's TrainDataLoader serves training ({blocker})")
    return None

