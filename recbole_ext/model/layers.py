"""Blocks shared by several plugin models. Shapes: B batch, L history length, d embedding size,
K interests, N items (row 0 of every item table is padding), C candidates."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ext.model import kernels


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
    with d_ff = d, dropout 0 (the TiMiRec reference layer): ``z = LN1(attend(x W_qkv) + x)``,
    ``out = LN2(FFN(z) + z)``, padding keys masked and padding rows of the output zero.

    ``pack`` runs the position-wise parts (the fused Q/K/V projection, both LayerNorms, the FFN) on the real items
    only (:func:`recbole_ext.model.kernels.packed_block`): None on CPU only, where FLOPs dominate (on a GPU the
    packing's host sync costs more than the padding), True/False always/never. Checkpoints with separate
    ``query``/``key``/``value`` weights load unchanged.

    x: [B, L, d], mask: [B, L] bool (True = real item) -> [B, L, d]
    """

    def __init__(self, d: int, pack: bool | None = None):
        super().__init__()
        self.pack = pack
        self.qkv = nn.Linear(d, 3 * d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" if self.pack is None else self.pack:
            return kernels.packed_block(x, mask, self.qkv, self.attend, self.finish)
        return self.finish(self.attend(self.qkv(x), mask), x) * mask.unsqueeze(-1)

    @staticmethod
    def attend(qkv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention over the real keys: [B, L, 3d], [B, L] -> [B, L, d]"""
        q, k, v = qkv.chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))

    def finish(self, attended: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Residual + LayerNorm, FFN, residual + LayerNorm, position-wise: [..., d], [..., d] -> [..., d]"""
        z = self.norm1(attended + x)
        return self.norm2(self.ffn(z) + z)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Fuse the separate projections of checkpoints written before the fused layer."""
        for kind in ("weight", "bias"):
            parts = [f"{prefix}{name}.{kind}" for name in ("query", "key", "value")]
            if all(key in state_dict for key in parts):
                state_dict[f"{prefix}qkv.{kind}"] = torch.cat([state_dict.pop(key) for key in parts])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MultiInterestExtractor(nn.Module):
    """Self-attentive multi-interest extractor (ComiRec-SA, λ = 0, and Re4's variant of it).

    ``A = softmax_L(W2 tanh(W1 H))`` over the valid positions, one row per interest, and ``V = A · X``,
    where H is the item embedding plus the reversed position embedding (``add_pos``) passed through one
    Transformer layer (``add_trm``), and X is H itself (``aggregate='encoded'``, TiMiRec) or the raw item
    embeddings (``aggregate='raw'``, ComiRec as in its official code), optionally through a bias-free linear
    map (``value_proj``, Re4's ``E W2``). ``bias=False`` drops the attention biases (Re4).

    item_seq: [B, L], lengths: [B] -> interests V: [B, K, d]; with ``details=True`` also the attention
    A [B, K, L] and its masked logits S [B, K, L] (padding = -inf). ``items``: the history's embeddings [B, L, d]
    when the caller looked them up together with its targets (one lookup, one dense gradient of the table).
    ``speed_kernels`` (:mod:`recbole_ext.model.kernels`): the tables are ``Table``, the Transformer layer packs on
    CPU, and without position embedding and Transformer the logits and values are computed once per item of the
    table when it has fewer rows than the batch has positions; False: plain PyTorch, per position.
    """

    def __init__(self, n_items: int, d: int, attn_size: int, n_interests: int, max_len: int,
                 add_pos: bool = True, add_trm: bool = False, aggregate: str = "encoded", bias: bool = True,
                 value_proj: bool = False, speed_kernels: bool = True):
        super().__init__()
        if aggregate not in ("encoded", "raw"):
            raise ValueError(f"aggregate must be 'encoded' or 'raw', got {aggregate!r}")
        self.aggregate, self.speed_kernels = aggregate, speed_kernels
        self.item_embedding = kernels.embedding(n_items, d, speed_kernels=speed_kernels)
        self.position_embedding = kernels.embedding(max_len + 1, d, speed_kernels=speed_kernels) if add_pos else None
        self.transformer = SelfAttentionLayer(d, pack=None if speed_kernels else False) if add_trm else None
        self.W1 = nn.Linear(d, attn_size, bias=bias)
        self.W2 = nn.Linear(attn_size, n_interests, bias=bias)
        self.value = nn.Linear(d, d, bias=False) if value_proj else None

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor, details: bool = False,
                items: torch.Tensor | None = None):
        mask = item_seq > 0  # [B, L]
        if self.speed_kernels and self.position_embedding is None and self.transformer is None \
                and self.item_embedding.num_embeddings < item_seq.numel():
            # each position's logits and value depend on its item alone: once per item of the (smaller) table
            table = self.item_embedding.weight
            logits = kernels.per_row(self.attention_logits, table, item_seq)  # [B, L, K]
            values = kernels.per_row(self.project_values, table, item_seq)
        else:
            raw = self.item_embedding(item_seq) if items is None else items  # [B, L, d]
            h = raw
            if self.position_embedding is not None:
                h = h + self.position_embedding(reversed_positions(item_seq, lengths))
            if self.transformer is not None:
                h = self.transformer(h, mask)  # padding rows come back zero
            logits = self.attention_logits(h)
            values = self.project_values(h if self.aggregate == "encoded" else raw)
        logits = logits.transpose(1, 2).masked_fill(~mask.unsqueeze(1), float("-inf"))
        attention = torch.softmax(logits, dim=-1)  # [B, K, L]
        interests = attention @ values  # [B, K, d]
        return (interests, attention, logits) if details else interests

    def attention_logits(self, h: torch.Tensor) -> torch.Tensor:
        """W2 tanh(W1 h), one row per position: [..., d] -> [..., K]"""
        return self.W2(torch.tanh(self.W1(h)))

    def project_values(self, x: torch.Tensor) -> torch.Tensor:
        """The aggregated values, through Re4's ``E W2`` when ``value_proj``: [..., d] -> [..., d]"""
        return x if self.value is None else self.value(x)


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


def batch_negatives(targets: torch.Tensor, n_items: int, n_negatives: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official Re4 code's negatives of one batch: ``n_negatives`` ids drawn uniformly without replacement
    (torch's global generator) from the items ``1 .. N-1`` that are no target of the batch, or all of them when
    fewer remain. No host sync: the ``min(n_negatives, N - 1)`` candidates come with a mask of the batch targets
    among them (only there when fewer than ``n_negatives`` items remain), which the caller drops.

    targets: [B] -> candidates [C] long, is_target [C] bool
    """
    is_target = torch.zeros(n_items, dtype=torch.bool, device=targets.device)
    is_target[targets] = True
    if n_negatives >= n_items - 1:
        candidates = torch.arange(1, n_items, device=targets.device)
    else:  # in a random order, the first non-targets are a uniform subset; the first n + B ids hold >= n of them
        prefix = torch.randperm(n_items - 1, device=targets.device)[:n_negatives + len(targets)] + 1
        candidates = prefix[is_target[prefix].to(torch.uint8).argsort(stable=True)][:n_negatives]  # targets last
    return candidates, is_target[candidates]


def log_uniform_negatives(n_items: int, n_negatives: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ComiRec's negatives (TensorFlow's log-uniform candidate sampler, meant for ids numbered by descending
    popularity): ``n_negatives`` distinct ids of ``1 .. N-1`` drawn with P(id) ∝ log((id + 1) / id), and the log-Q
    correction of each id's logit; every item, uncorrected (each is certain to be drawn), when fewer remain.

    -> candidates [C] long, log_q [N] (indexed by item id)
    """
    if n_negatives >= n_items - 1:
        return torch.arange(1, n_items, device=device), torch.zeros(n_items, device=device)
    ids = torch.arange(1, n_items, device=device, dtype=torch.float)
    probs = torch.log1p(1 / ids) / math.log(n_items)  # [N-1], sums to 1
    candidates = torch.multinomial(probs, n_negatives, replacement=False) + 1
    return candidates, torch.cat([probs.new_zeros(1), probs.log()])


def sampled_softmax_loss(user: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, n_negatives: int,
                         distribution: str = "uniform") -> torch.Tensor:
    """Softmax of each row's own target (column 0) against negatives shared by the whole batch; plain dot
    products, no bias, temperature 1.

    * ``uniform``, the official Re4 code: :func:`batch_negatives`, so no target of the batch is a negative of any
      row (the reference samples from all items minus the batch's targets; a catalogue of fewer than
      ``n_negatives`` other items gives every one of them, not the full softmax);
    * ``log_uniform``, ComiRec's TensorFlow ``sampled_softmax_loss``: :func:`log_uniform_negatives` with the log-Q
      correction, and only a row's own target masked among them (TensorFlow's accidental hits), so the batch's
      other targets stay negatives, as there; a small catalogue gives the full softmax.

    user: [B, d], items: [N, d] (row 0 = padding), targets: [B] -> scalar (batch mean)
    """
    n_items = items.size(0)
    if distribution == "uniform":  # a uniform log-Q is one constant and cancels
        candidates, dropped = batch_negatives(targets, n_items, n_negatives)
        dropped, log_q = dropped.unsqueeze(0), None  # [1, C]
    elif distribution == "log_uniform":
        candidates, log_q = log_uniform_negatives(n_items, n_negatives, items.device)
        dropped = candidates.unsqueeze(0) == targets.unsqueeze(1)  # [B, C]
    else:
        raise ValueError(f"negative distribution must be 'uniform' or 'log_uniform', got {distribution!r}")
    positive = (user * items[targets]).sum(-1, keepdim=True)  # [B, 1]
    negative = user @ items.index_select(0, candidates).T  # [B, C]
    if log_q is not None:
        positive, negative = positive - log_q[targets].unsqueeze(1), negative - log_q[candidates]
    logits = torch.cat([positive, negative.masked_fill(dropped, float("-inf"))], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


class InteractionAwarePairs(nn.Module):
    """The interaction-aware pair layer of IFM / INN / DeepIFM (Hong et al., AAAI'19).

    For every field pair p = (i, j), i < j (pairs inside one ``field_groups`` group are skipped, DeepIFM's
    ``dim_to_field``): the feature-interaction vector ``q_p = e_i ⊙ e_j``; the **feature aspect**, an attention
    ``a = softmax_p(hᵀ act(W q_p / T + b))`` (T divides W q only, as the reference); the **field aspect**, a
    prototype per field pair ``u_p = Ψᵀ(φ_i ⊙ φ_j)`` from k_F-dimensional field embeddings Φ [M, k_F] and a shared
    projection Ψ [k_F, K]. With ``sample_size`` only that many pairs are used, drawn without replacement with
    probability ∝ ‖u_p‖² by the Gumbel-top-k trick, before any product is formed, the attention renormalised over
    them (DeepIFM's sampling; the reference's switch never fires). All pairs are one gather, no loop.

    Initialisation as IFM.py: W and b ~ N(0, 2/(t + K)), h, Φ, Ψ ~ N(0, 1).
    e: [B, M, K] -> attention a [B, P], interactions q [B, P, K], prototypes U [P, K]
    """

    def __init__(self, n_fields: int, d: int, attention_size: int, field_factor_size: int, temperature: float,
                 activation: str = "relu", field_groups: list[int] | None = None):
        super().__init__()
        groups = torch.as_tensor(field_groups if field_groups is not None else range(n_fields))
        if len(groups) != n_fields:
            raise ValueError(f"field_groups: {len(groups)} entries for {n_fields} fields; give one group per field")
        row, col = torch.triu_indices(n_fields, n_fields, 1)
        keep = groups[row] != groups[col]
        self.register_buffer("row", row[keep], persistent=False)
        self.register_buffer("col", col[keep], persistent=False)
        self.temperature = temperature
        self.activation = {"relu": torch.relu, "tanh": torch.tanh}[activation]
        self.W = nn.Linear(d, attention_size, bias=False)
        self.b = nn.Parameter(torch.empty(attention_size))
        self.h = nn.Parameter(torch.empty(attention_size))
        self.phi = nn.Parameter(torch.empty(n_fields, field_factor_size))
        self.psi = nn.Parameter(torch.empty(field_factor_size, d))
        std = math.sqrt(2.0 / (attention_size + d))
        nn.init.normal_(self.W.weight, 0.0, std)
        nn.init.normal_(self.b, 0.0, std)
        for weight in (self.h, self.phi, self.psi):
            nn.init.normal_(weight)

    @property
    def n_pairs(self) -> int:
        return len(self.row)

    def prototypes(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """u_p for the given pairs: [P] x2 -> [P, K]"""
        return (self.phi[row] * self.phi[col]) @ self.psi

    def forward(self, e: torch.Tensor, sample_size: int | None = None):
        row, col = self.row, self.col
        if sample_size is not None and sample_size < len(row):
            with torch.no_grad():  # Gumbel-top-k over log ‖u_p‖²: sampling without replacement ∝ ‖u_p‖²
                importance = self.prototypes(row, col).pow(2).sum(-1).log()
                gumbel = -torch.empty_like(importance).exponential_().log()
                chosen = (importance + gumbel).topk(sample_size).indices
            row, col = row[chosen], col[chosen]
        q = e[:, row] * e[:, col]  # [B, P, K]
        logits = self.activation(self.W(q) / self.temperature + self.b) @ self.h  # [B, P]
        return torch.softmax(logits, dim=1), q, self.prototypes(row, col)


def relu_mlp(width: int, hidden_sizes: list[int]) -> nn.Sequential:
    """Linear + ReLU per hidden size, then one linear output unit: [..., width] -> [..., 1]"""
    layers: list[nn.Module] = []
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 1))


class UserHead(nn.Linear):
    """The head of the user-level task (``task: user_classification``): a user vector -> the
    user field ``label`` of the row. Two label values: one logit, sigmoid and BCE; more: a softmax over the classes
    (values 0 .. C-1) and CE. The class count is read from the dataset's user table. [B, d] -> logits [B, 1 | C]"""

    def __init__(self, dataset, label: str | None, d: int):
        fields = [f for f in dataset.user_feat.columns if f != dataset.uid_field] if dataset.user_feat is not None else []
        if label not in fields:
            raise ValueError(f"label: {label!r} is not a user field of {dataset.dataset_name} (its user fields: "
                             f"{', '.join(fields) or 'none'}); pass --label=FIELD")
        n_classes = int(dataset.user_feat[label][1:].max().item()) + 1  # row 0: the padding user
        super().__init__(d, 1 if n_classes <= 2 else n_classes)
        self.label = label

    def loss(self, user: torch.Tensor, interaction) -> torch.Tensor:
        labels = interaction[self.label]
        if self.out_features == 1:
            return F.binary_cross_entropy_with_logits(self(user).squeeze(-1), labels.float())
        return F.cross_entropy(self(user), labels.long())

    def probabilities(self, user: torch.Tensor) -> torch.Tensor:
        """P(label = 1) [B], or class probabilities [B, C]."""
        logits = self(user)
        return torch.sigmoid(logits.squeeze(-1)) if self.out_features == 1 else torch.softmax(logits, -1)
