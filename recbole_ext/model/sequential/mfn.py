"""MFN: the Macro-Micro Fusion Network (Bian, Zhao, Zhou, Chen, Cai, He, Luo and Wen, "A Novel Macro-Micro Fusion
Network for User Representation Learning on Mobile Apps", WWW'21, DOI 10.1145/3442381.3450109). The official
repository (fancybian/Macro-Micro-Fusion-Network) does not contain the model, so this is a reconstruction from the
paper's architecture figure and the repository's README; every choice they do not fix is a config key (marked [I]
in ``properties/model/MFN.yaml``).

* **Views**: a macro sequence of (app, app category, time) from the user's ``.user`` fields and the micro sequence of
  items (RecBole's ``item_id_list``, categories looked up from ``item_cate_field``), each through its own
  post-LN Transformer (2 layers, 2 heads, GELU, d 200) with position embeddings, giving u_g and u_l. Macro events
  at or after the row's time (``TIME_FIELD``: the target's time for next-item rows, the observation cutoff for user
  rows) are masked before encoding (no future leaks in). The paper embeds apps and items (d 200, README); our
  choices: each event's category embedding added to its id embedding (``category_embedding``: the paper's figure
  uses categories only to group embeddings for the alignment; without them the encoders see the categories only
  through the ids, learnt from the labels of a few thousand users), and how the Transformer's outputs become u
  (not described): ``next_item`` the last valid position (the query of the next item, as the group's sequential
  code), ``user_classification`` the mean over the valid positions (``user_pooling: mean``; ``last`` as next item).
* **Category alignment**: each view's *input* embeddings mean-pooled per category (T_g [B, Cg, d], T_l [B, Cl, d]),
  the affinity ``M = tanh(T_g W_b T_lᵀ)`` over present categories (the figure's "parallel co-attention", whose core
  is this bilinear affinity), pooled into m by ``align_pool``: ``conv`` (Conv 3x3, 16 filters, max-pool 4x4, Linear),
  or ``attn`` (Σ softmax(M) T_g ⊙ T_l, independent of category order). Its scale is ours (``align_norm``): the
  category means LayerNormed (no affine) and the product scaled by 1/√d, W_b the identity at init, so M starts as
  the scaled similarity of the two views' category means. The raw product of N(0, 0.02) embeddings through an
  N(0, 0.02) W_b (``align_norm: False``) starts at |M| ~ 1e-3 with a gradient cubic in those small scales: M, and
  so m, stays near zero and the gate learns to drop it.
* **Gate** (``gate: softmax3``): an element-wise softmax over (u_g, u_l, m) from ``Linear([u_g; u_l; m])``;
  ``gate: off`` averages the three.
* **MIM** between u_g and u_l (``mim_weight``, default 0.1): symmetric InfoNCE with a bilinear critic over the batch
  (``mim_type: infonce``, temperature ``mim_temperature``) or a JSD-style discriminator (``jsd``).
* **Tasks** (``task``): ``next_item`` (scores u·E_item, CE over all items, leave-one-out) or
  ``user_classification`` of ``label`` (binary: sigmoid; more classes: softmax), one row per user
  (:mod:`recbole_ext.data.mfn`). Ablations: ``views: macro | micro`` (one encoder, no alignment, no MIM),
  ``mim_weight: 0``, ``gate: off``.

    python run_recbole_ext.py --model=MFN --dataset=mfn-synthetic --task=user_classification --label=gender
    python run_recbole_ext.py --model=MFN --dataset=mfn-synthetic --task=next_item
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_ext.model import kernels
from recbole_ext.model.layers import UserHead


def category_means(embedded: torch.Tensor, categories: torch.Tensor, n_categories: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean input embedding of each category present in the sequence (category 0 = padding, never present).
    embedded: [B, L, d], categories: [B, L] -> (T [B, C, d], present [B, C] bool)"""
    onehot = F.one_hot(categories, n_categories).to(embedded.dtype)
    onehot[..., 0] = 0
    counts = onehot.sum(1)
    return onehot.transpose(1, 2) @ embedded / counts.clamp(min=1).unsqueeze(-1), counts > 0


def info_nce(x: torch.Tensor, y: torch.Tensor, critic: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row b of x and row b of y are the positive pair, the batch's other rows the negatives.
    x, y: [B, d], critic: [d, d] -> scalar (0 for B < 2)"""
    if len(x) < 2:
        return x.new_zeros(())
    scores = x @ critic @ y.T / temperature
    target = torch.arange(len(x), device=x.device)
    return (F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target)) / 2


def jsd_mim(x: torch.Tensor, y: torch.Tensor, critic: torch.Tensor) -> torch.Tensor:
    """Binary discriminator of matched (x_b, y_b) against shifted (x_b, y_{b+1}) pairs. -> scalar (0 for B < 2)"""
    if len(x) < 2:
        return x.new_zeros(())
    pos = (x @ critic * y).sum(-1)
    neg = (x @ critic * y.roll(1, 0)).sum(-1)
    return -(F.logsigmoid(pos) + F.logsigmoid(-neg)).mean()


class ViewEncoder(nn.Module):
    """Embedding (+ the event's category embedding when the view has a category table) + positions -> LayerNorm ->
    Dropout -> post-LN Transformer (torch's, on scaled_dot_product_attention; the computation of RecBole's
    ``TransformerEncoder`` without its per-op GELU); pooled by ``pooling``: ``last`` the last valid position, ``mean``
    the mean over the valid positions; zero for an empty sequence. ``speed_kernels``: ``kernels.Table`` tables and
    ``kernels.FastDropout`` on the hidden states. seq, categories: [B, L] right-padded, lengths: [B] ->
    (u [B, d], input embeddings [B, L, d])"""

    def __init__(self, table: nn.Embedding, max_len: int, config, causal: bool = True, n_categories: int = 0):
        super().__init__()
        d, fast = config["hidden_size"], kernels.use_speed_kernels(config)
        self.table, self.position, self.causal = table, kernels.embedding(max_len, d, speed_kernels=fast), causal
        # category 0 = padding; its row is never pooled nor attended to (padding keys are masked)
        self.category = kernels.embedding(n_categories, d, padding_idx=0, speed_kernels=fast) if n_categories else None
        p = config["hidden_dropout_prob"]
        self.norm, self.dropout = nn.LayerNorm(d, eps=config["layer_norm_eps"]), kernels.dropout(p, speed_kernels=fast)
        layer = nn.TransformerEncoderLayer(d, config["n_heads"], config["inner_size"], p, config["hidden_act"],
                                           config["layer_norm_eps"], batch_first=True)
        layer.self_attn.dropout = config["attn_dropout_prob"]  # RecBole's separate rate on the attention weights
        if fast:
            kernels.with_fast_dropout(layer)
        self.encoder = nn.TransformerEncoder(layer, config["n_layers"], enable_nested_tensor=False)

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor, categories: torch.Tensor | None = None,
                pooling: str = "last"):
        embedded = self.table(seq)
        if self.category is not None:
            embedded = embedded + self.category(categories)
        x = self.dropout(self.norm(embedded + self.position.weight[:seq.shape[1]]))
        padding = seq == 0
        padding[:, 0] = False  # an empty sequence attends to its padding (its output is zeroed), not to nothing (NaN)
        causal = nn.Transformer.generate_square_subsequent_mask(seq.shape[1], device=seq.device) if self.causal else None
        hidden = self.encoder(x, mask=causal, src_key_padding_mask=padding, is_causal=self.causal)
        if pooling == "mean":
            valid = (torch.arange(seq.shape[1], device=seq.device) < lengths.unsqueeze(-1)).unsqueeze(-1)
            return (hidden * valid).sum(1) / valid.sum(1).clamp(min=1), embedded
        last = hidden.gather(1, (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
        return last * (lengths > 0).unsqueeze(-1), embedded


class MFN(SequentialRecommender):
    """MFN (macro-micro fusion). Config keys in ``properties/model/MFN.yaml``."""

    config_choices = {"views": ("both", "macro", "micro"), "gate": ("softmax3", "off"),
                      "align_pool": ("conv", "attn"), "mim_type": ("infonce", "jsd"), "user_pooling": ("mean", "last"),
                      "task": ("next_item", "user_classification")}
    config_ranges = {"hidden_size": "[1, inf)", "n_layers": "[1, inf)", "n_heads": "[1, inf)", "inner_size": "[1, inf)",
                     "mim_weight": "[0, inf)", "mim_temperature": "(0, inf)", "conv_filters": "[1, inf)"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["hidden_size"]
        self.views, self.task, self.gate_mode = config["views"], config["task"], config["gate"]
        self.mim_weight = float(config["mim_weight"]) if self.views == "both" else 0.0
        self.mim_type, self.temperature = config["mim_type"], float(config["mim_temperature"])
        self.app_field, self.app_cate_field = config["macro_app_field"], config["macro_cate_field"]
        self.app_time_field, self.time_field = config["macro_time_field"], config["TIME_FIELD"]
        # the next item is scored from the last position (its query); a user vector pools the whole view
        self.pooling = config["user_pooling"] if self.task == "user_classification" else "last"
        fast = kernels.use_speed_kernels(config)
        self.item_embedding = kernels.embedding(self.n_items, d, padding_idx=0, speed_kernels=fast)
        self.n_app_cates = dataset.num(self.app_cate_field)
        self.n_item_cates = dataset.num(config["item_cate_field"])
        with_categories = bool(config["category_embedding"])
        self.micro = ViewEncoder(self.item_embedding, self.max_seq_length, config,
                                 n_categories=self.n_item_cates if with_categories else 0)
        self.register_buffer("item_cate", dataset.item_feat[config["item_cate_field"]].long(), persistent=False)
        macro_len = dataset.field2seqlen[self.app_field]
        self.macro = ViewEncoder(kernels.embedding(dataset.num(self.app_field), d, padding_idx=0, speed_kernels=fast),
                                 macro_len, config, causal=bool(config["macro_causal"]),
                                 n_categories=self.n_app_cates if with_categories else 0)
        self.affinity = nn.Parameter(torch.empty(d, d))
        self.align_norm = bool(config["align_norm"])
        self.align_pool = config["align_pool"]
        filters, kernel, pool = config["conv_filters"], config["conv_kernel"], config["conv_pool"]
        self.conv = nn.Sequential(nn.Conv2d(1, filters, kernel, padding=kernel // 2), nn.ReLU(),
                                  nn.AdaptiveMaxPool2d(pool), nn.Flatten(), nn.Linear(filters * pool * pool, d))
        self.gate = nn.Linear(3 * d, 3 * d)
        self.mim_critic = nn.Parameter(torch.empty(d, d))
        if self.task == "user_classification":
            self.user_head = UserHead(dataset, config["label"], d)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, 0.02) for embeddings, linears and the bilinear matrices; LayerNorm 1 / 0 (as the official repository's
        ``init_weights``); under ``align_norm`` the affinity W_b starts as the identity (M: the scaled similarity of the
        normalised category means)."""
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
            module.weight.data.normal_(0.0, 0.02)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.data.normal_(0.0, 0.02), module.in_proj_bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0), module.bias.data.zero_()
        if module is self:
            nn.init.normal_(self.affinity, 0.0, 0.02), nn.init.normal_(self.mim_critic, 0.0, 0.02)
            if self.align_norm:
                nn.init.eye_(self.affinity)

    def macro_view(self, interaction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The macro sequence with events at or after the row's time masked (they are at the tail: time order), cut
        to the batch's longest visible prefix: the columns after it are padding in every row (the field is padded to
        the longest user's whole sequence, e.g. 200 apps against ~25 visible: most of a next-item step's encoder work).
        -> (apps [B, Lg], categories [B, Lg], lengths [B])"""
        apps = interaction[self.app_field]
        visible = (apps > 0) & (interaction[self.app_time_field] < interaction[self.time_field].unsqueeze(-1))
        lengths = visible.sum(1)
        width = max(int(lengths.max()), 1) if len(lengths) else 1
        return (apps * visible)[:, :width], (interaction[self.app_cate_field] * visible)[:, :width], lengths

    def alignment(self, e_g: torch.Tensor, app_cates: torch.Tensor, e_l: torch.Tensor,
                  item_cates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Category alignment of the two views' input embeddings.
        e_g: [B, Lg, d], app_cates: [B, Lg], e_l: [B, Ll, d], item_cates: [B, Ll] -> (M [B, Cg, Cl], m [B, d])"""
        t_g, present_g = category_means(e_g, app_cates, self.n_app_cates)
        t_l, present_l = category_means(e_l, item_cates, self.n_item_cates)
        present = present_g.unsqueeze(2) & present_l.unsqueeze(1)  # [B, Cg, Cl]
        scale = 1.0
        if self.align_norm:  # absent categories' zero rows stay zero
            t_g, t_l = F.layer_norm(t_g, t_g.shape[-1:]), F.layer_norm(t_l, t_l.shape[-1:])
            scale = t_g.shape[-1] ** -0.5
        affinity = torch.tanh(t_g @ self.affinity @ t_l.transpose(1, 2) * scale) * present
        if self.align_pool == "conv":
            return affinity, self.conv(affinity.unsqueeze(1))
        weights = torch.softmax(affinity.flatten(1).masked_fill(~present.flatten(1), -1e9), -1)
        weights = (weights * present.flatten(1)).view_as(affinity)
        return affinity, torch.einsum("bgl,bgd,bld->bd", weights, t_g, t_l)

    def forward(self, interaction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (u, u_g, u_l), each [B, d]"""
        items, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        item_cates = self.item_cate[items]
        u_l = e_l = u_g = e_g = None
        if self.views != "macro":
            u_l, e_l = self.micro(items, lengths, item_cates, self.pooling)
        if self.views != "micro":
            apps, app_cates, g_len = self.macro_view(interaction)
            u_g, e_g = self.macro(apps, g_len, app_cates, self.pooling)
        if self.views == "macro":
            return u_g, u_g, u_g
        if self.views == "micro":
            return u_l, u_l, u_l
        m = self.alignment(e_g, app_cates, e_l, item_cates)[1]
        parts = torch.stack([u_g, u_l, m], 1)  # [B, 3, d]
        if self.gate_mode == "off":
            return parts.mean(1), u_g, u_l
        alpha = torch.softmax(self.gate(parts.flatten(1)).view_as(parts), 1)
        return (alpha * parts).sum(1), u_g, u_l

    def mim_loss(self, u_g: torch.Tensor, u_l: torch.Tensor) -> torch.Tensor:
        if self.mim_type == "jsd":
            return jsd_mim(u_g, u_l, self.mim_critic)
        return info_nce(u_g, u_l, self.mim_critic, self.temperature)

    def calculate_loss(self, interaction):
        u, u_g, u_l = self.forward(interaction)
        if self.task == "next_item":
            task = F.cross_entropy(u @ self.item_embedding.weight.T, interaction[self.ITEM_ID])
        else:
            task = self.user_head.loss(u, interaction)
        if not self.mim_weight:
            return task
        return task, self.mim_weight * self.mim_loss(u_g, u_l)

    def predict(self, interaction) -> torch.Tensor:
        """next_item: the row's item score [B]; user_classification: P(label = 1) [B] or class probabilities [B, K]."""
        u = self.forward(interaction)[0]
        if self.task == "next_item":
            return (u * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)
        return self.user_head.probabilities(u)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.forward(interaction)[0] @ self.item_embedding.weight.T
