"""MARIF: CTR from multi-aspect rating-feedback histories of the user and of the item, plus profiles.

Wang et al., "MARF: User-Item Mutual Aware Representation with Feedback", ICWE 2022 (preprint and official code:
qinqinwang95113/MARIF, ``deepTrans/SeqMixModel_All_ContantNoGRU_Sample.py``, "MARIF ... with Instant Feedback").
Pointwise CTR on explicit ratings (``protocol: ctr``): no attention, no GRU, no embedding of the
target user's or item's own id.

* **User side**: N sampled (item, rating) pairs of the user's training history (:mod:`recbole_ext.model.context_aware.history`,
  the "flexible up-down" sampler), each ``ReLU(P_u[E_fb(r); E_item(i)])``, mean-pooled -> h_u [B, hidden].
* **Item side**: the same over N sampled (user, rating) pairs of the item's history, its own tables -> h_i.
* **Profiles**: one table per user/item profile field (``user_profile_fields``, ``item_profile_fields``: token
  fields, or token_seq fields sum-pooled like the reference's genre multi-hot × table), width
  ``profile_embedding_size``; looked up by the row's user/item id.
* ``Dropout(dropout_prob)`` on the concatenation -> Linear(hidden) -> ReLU -> Linear(1) -> logit; BCE.

Faithful: Adam lr 1e-4, batch 1024, d 200, hidden 256, profile width 56, N 20, xavier-normal embedding tables and
PyTorch's default Linear init. Deviations, each a config key: ``exclude_own_interaction`` (default True: a training
row's own interaction is never in its user or item history; False is the reference's mode, which samples the
target's own rating into its features while training), evaluation histories drawn from a generator reseeded at
every evaluation (repeatable; ``eval_num_samples`` > 1 averages logits over that many draws), model selection on
valid AUC (the reference picks its best epoch on test).

    python run_recbole_ext.py --model=MARIF --dataset=ml-1m --protocol=ctr      # after --convert=ml-1m
"""

from __future__ import annotations

from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import FeatureType, InputType, ModelType
from torch import nn

from recbole_ext.model.context_aware.history import REMAINDER, UpDownSampler, feedback_levels
from recbole_ext.model import kernels


class HistoryTower(nn.Module):
    """Mean of ``ReLU(W [E_fb(r); E_id(p)] + b)`` over the unmasked (partner, level) pairs.

    A batch's B·N slots hold far fewer distinct (partner, level) pairs (ml-1m users 1-2,999: ~6k of 20k), so the
    hidden vector is computed once per distinct pair, and the partner projection ``E_id(p) W_id^T`` once per
    distinct partner, then one ``embedding_bag`` pools the rows each history picks: the same numbers as per slot,
    without the [B, N, hidden] tensor.

    partners, feedback, mask: [B, N] -> [B, hidden]
    """

    def __init__(self, n_partners: int, n_levels: int, embedding_size: int, hidden_size: int):
        super().__init__()
        self.partner_embedding = nn.Embedding(n_partners, embedding_size)
        self.feedback_embedding = nn.Embedding(n_levels + 1, embedding_size)  # row 0: padding of a cold entity
        self.project = nn.Linear(2 * embedding_size, hidden_size)

    def forward(self, partners: torch.Tensor, feedback: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        d, levels = self.partner_embedding.embedding_dim, self.feedback_embedding.num_embeddings
        w_fb, w_id = self.project.weight[:, :d], self.project.weight[:, d:]
        pairs, slot_pair = torch.unique(partners * levels + feedback, return_inverse=True)  # [U], [B, N]
        ids, pair_id = torch.unique(pairs // levels, return_inverse=True)  # [P'], [U]
        fb = self.feedback_embedding.weight @ w_fb.T + self.project.bias  # [levels, hidden]
        rows = torch.relu((self.partner_embedding(ids) @ w_id.T)[pair_id] + fb[pairs % levels])  # [U, hidden]
        weights = mask.to(rows.dtype)
        total = F.embedding_bag(slot_pair, rows, per_sample_weights=weights, mode="sum")
        return total / weights.sum(1, keepdim=True).clamp(min=1)


class ProfileEmbedding(nn.Module):
    """One table per profile field of one side (user or item), looked up by entity id: token fields directly,
    token_seq fields summed over their tokens. Tensors of every entity are kept as buffers.

    ids: [B] -> [B, n_fields * profile_size]
    """

    def __init__(self, features, fields: list[str], dataset, size: int):
        super().__init__()
        self.fields = fields
        self.tables = nn.ModuleList(nn.Embedding(dataset.num(name), size) for name in fields)
        for name in fields:
            kind = dataset.field2type[name]
            if kind not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
                raise ValueError(f"MARIF profile field {name!r} is {kind.value}; list token or token_seq fields only")
            values = features[name]
            self.register_buffer(f"values_{name}", values.unsqueeze(1) if values.dim() == 1 else values,
                                 persistent=False)

    @property
    def width(self) -> int:
        return sum(table.embedding_dim for table in self.tables)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        parts = []
        for name, table in zip(self.fields, self.tables):
            tokens = getattr(self, f"values_{name}")[ids]  # [B, S]; 0 = padding of a token_seq
            parts.append((table(tokens) * (tokens > 0).unsqueeze(-1)).sum(1))
        return torch.cat(parts, -1) if parts else ids.new_zeros(len(ids), 0, dtype=torch.float)


class MARIF(AbstractRecommender):
    r"""MARIF (CTR from rating-feedback histories). Config keys: ``embedding_size`` (history id and feedback
    width), ``hidden_size``, ``profile_embedding_size``, ``history_len`` (N), ``dropout_prob``, ``feedback_field``
    (the rating; ``label`` for 0/1 feedback), ``user_profile_fields``, ``item_profile_fields``,
    ``remainder_policy`` (last | largest), ``exclude_own_interaction``, ``eval_num_samples``."""

    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE
    config_choices = {"remainder_policy": REMAINDER}
    config_ranges = {"hidden_size": "[1, inf)", "profile_embedding_size": "[1, inf)", "history_len": "[1, inf)",
                     "eval_num_samples": "[1, inf)"}

    def __init__(self, config, dataset):
        super().__init__()
        self.device = config["device"]
        self.USER_ID, self.ITEM_ID, self.LABEL = dataset.uid_field, dataset.iid_field, config["LABEL_FIELD"]
        rows, feedback = dataset.inter_feat, config["feedback_field"]
        if feedback not in rows:
            raise ValueError(f"feedback_field {feedback!r} is not an interaction field of {config['dataset']}; "
                             "set feedback_field to the rating field, or to the label field for 0/1 feedback")
        levels, values = feedback_levels(rows[feedback].float())
        n_levels, n_users, n_items = len(values), dataset.user_num, dataset.item_num
        size, remainder = config["history_len"], config["remainder_policy"]
        users, items = rows[self.USER_ID], rows[self.ITEM_ID]
        self.user_history = UpDownSampler(users, items, levels, n_users, n_items, n_levels, size, remainder)
        self.item_history = UpDownSampler(items, users, levels, n_items, n_users, n_levels, size, remainder)
        d, hidden = config["embedding_size"], config["hidden_size"]
        self.user_tower = HistoryTower(n_items, n_levels, d, hidden)
        self.item_tower = HistoryTower(n_users, n_levels, d, hidden)
        profile = config["profile_embedding_size"]
        self.user_profile = ProfileEmbedding(dataset.get_user_feature(), self._fields(config, dataset, "user"),
                                             dataset, profile)
        self.item_profile = ProfileEmbedding(dataset.get_item_feature(), self._fields(config, dataset, "item"),
                                             dataset, profile)
        self.user_width = hidden + self.user_profile.width
        # the kernel rounds 0.3 to 77/256: CPU bernoulli_ was a fifth of the step
        self.dropout = kernels.dropout(config["dropout_prob"], kernels.use_speed_kernels(config))
        self.hidden = nn.Linear(self.user_width + hidden + self.item_profile.width, hidden)
        self.out = nn.Linear(hidden, 1)
        self.exclude_own = bool(config["exclude_own_interaction"])
        self.eval_num_samples = int(config["eval_num_samples"])
        self.seed = int(config["seed"])
        self.generators: dict[bool, torch.Generator] = {}
        self._generator(torch.device(config["device"]))  # the training stream exists from the start: resume restores it
        self.loss = nn.BCEWithLogitsLoss()
        for module in self.modules():  # the reference: xavier-normal tables, PyTorch's default Linear init
            if isinstance(module, nn.Embedding):
                nn.init.xavier_normal_(module.weight)

    @staticmethod
    def _fields(config, dataset, side: str) -> list[str]:
        wanted = config[f"{side}_profile_fields"] or []
        present = [name for name in wanted if name in dataset.field2type]
        if len(present) < len(wanted):
            getLogger().info(f"MARIF: {side} profile fields {sorted(set(wanted) - set(present))} are not in "
                             f"{config['dataset']}; using {present}")
        return present

    def train(self, mode: bool = True):
        """Evaluation draws its histories from a generator reseeded here, so every evaluation of the same rows
        sees the same histories; training draws continue one stream (fresh histories every epoch)."""
        if not mode:
            self.generators.pop(False, None)
        return super().train(mode)

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = self.generators.get(self.training)
        if generator is None or generator.device != device:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed * 2 + int(not self.training))
            self.generators[self.training] = generator
        return generator

    def _sides(self, users: torch.Tensor, items: torch.Tensor, own: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each side's input to the MLP. users: [B], items: [I] -> ([B, user_width], [I, item width])"""
        generator = self._generator(users.device)
        user_part = self.user_tower(*self.user_history(users, items if own else None, generator))
        item_part = self.item_tower(*self.item_history(items, users if own else None, generator))
        return (torch.cat([user_part, self.user_profile(users)], -1),
                torch.cat([item_part, self.item_profile(items)], -1))

    def forward(self, interaction) -> torch.Tensor:
        """Logits [B]; in evaluation the mean over ``eval_num_samples`` history draws."""
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        draws = 1 if self.training else self.eval_num_samples
        logits = 0
        for _ in range(draws):
            x = self.dropout(torch.cat(self._sides(users, items, self.training and self.exclude_own), -1))
            logits = logits + self.out(torch.relu(self.hidden(x))).squeeze(-1)
        return logits / draws

    def calculate_loss(self, interaction) -> torch.Tensor:
        return self.loss(self.forward(interaction), interaction[self.LABEL].float())

    def predict(self, interaction) -> torch.Tensor:
        return torch.sigmoid(self.forward(interaction))

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """P(click) of every item for each user. -> [B * n_items] (RecBole's flat layout). The first MLP layer is
        split into its user and item columns, so it runs on [B] + [n_items] rows, not on every pair."""
        users = interaction[self.USER_ID]
        items = torch.arange(self.item_history.counts.shape[0], device=users.device)
        scores = 0
        for _ in range(self.eval_num_samples):
            user_x, item_x = self._sides(users, items, False)
            w_user, w_item = self.hidden.weight[:, :self.user_width], self.hidden.weight[:, self.user_width:]
            hidden = torch.relu((user_x @ w_user.T).unsqueeze(1) + (item_x @ w_item.T + self.hidden.bias))
            scores = scores + self.out(hidden).squeeze(-1)
        return torch.sigmoid(scores / self.eval_num_samples).flatten()
