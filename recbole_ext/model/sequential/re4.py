"""Re4: re-contrast, re-attend, re-construct for multi-interest recommendation.

Zhang et al., "Re4: Learning to Re-contrast, Re-attend, Re-construct for Multi-interest Recommendation", WWW 2022
(official code: DeerSheep0314/Re4-Learning-to-Re-contrast-Re-attend-Re-construct-for-Multi-interest-Recommendation,
``src/model.py``).

Forward flow, as the official code (not vanilla ComiRec-SA): item embeddings E of the history, newest first;
attention ``A = softmax_L(W_k · tanh(W1 e_j))`` (H = 256, no biases, no position embedding); interests
``Z = A · (E W2)``; matching vectors ``U = tanh(fc1(Z))``. Training reads out the interest of U closest to the
target and scores it by a sampled softmax (``loss_type: SSM``: 5000 negatives shared by the batch, drawn uniformly
from the items that are no target of the batch, as the reference) or a full softmax (``CE``); retrieval scores
every item by its best interest of U. Three backward flows act on Z:

* **ReAttend** (``att_lambda``): the attention should agree with the matching score: cross-entropy from
  ``softmax_j <z_k, e_j>`` to A (no stop-gradient, as the reference);
* **ReContrast** (``ct_lambda``): InfoNCE at temperature ``t_cont`` pulling each interest towards the items it
  attends to (``A > 1/len`` with ``thre: -1``, or ``A > 1/thre``) against all of the user's items, the user's
  other interests and the items of the previous user in the batch;
* **ReConstruct** (``cs_lambda``): each interest decodes the history, slot by slot, and is scored by the squared
  error on the items it attends to.

A weight of 0 removes its term and its computation (and the decoder's parameters); all three at 0 is the
ComiRec-SA baseline of the Re4 comparison. The losses average over every (user, interest, slot), zero slots
included, as the reference does (a mean over the positives only would change what the weights mean).
Initialisation as the reference: N(0, 1) for the item table and the bias-free matrices, PyTorch's default for fc1
and the decoder's input layer.

    python run_recbole_ext.py --model=Re4 --dataset=ml-100k
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_ext.model import kernels
from recbole_ext.model.layers import (
    MultiInterestExtractor, closest_interest, max_interest_scores, sampled_softmax_loss,
)


def newest_first(item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the real items of each right-padded row (the reference feeds histories newest first).
    [B, L], [B] -> [B, L]"""
    steps = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
    index = (lengths.unsqueeze(1) - 1 - steps).clamp(min=0)
    return item_seq.gather(1, index) * (steps < lengths.unsqueeze(1))


def attended_items(attention: torch.Tensor, valid: torch.Tensor, thre: float) -> torch.Tensor:
    """P[b, k, j]: item j is one interest k attends to, ``A > 1/len`` (thre -1) or ``A > 1/thre``.
    attention [B, K, L], valid [B, L] bool -> [B, K, L] bool (no gradient)"""
    gate = 1.0 / valid.sum(1, keepdim=True).unsqueeze(1).float() if thre == -1 else 1.0 / thre
    return (attention.detach() > gate) & valid.unsqueeze(1)


def re_attend_loss(interests: torch.Tensor, items: torch.Tensor, logits: torch.Tensor,
                   valid: torch.Tensor) -> torch.Tensor:
    """Mean over (b, k) of H(softmax_j <z_k, e_j>, softmax_j S): [B, K, d], [B, L, d], [B, K, L], [B, L] -> scalar"""
    mask = valid.unsqueeze(1)
    target = torch.softmax((interests @ items.transpose(1, 2)).masked_fill(~mask, float("-inf")), dim=-1)
    # padding: log A = -inf and R = 0; zero the log first, or the product's gradient is 0 * inf = NaN
    log_attention = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1).masked_fill(~mask, 0.0)
    return -(target * log_attention).sum() / target.sum()


def re_contrast_loss(interests: torch.Tensor, items: torch.Tensor, valid: torch.Tensor, positives: torch.Tensor,
                     temp: float) -> torch.Tensor:
    """InfoNCE over cosine similarities / temp, summed over the positive (b, k, j) and divided by B·K·L.

    Per (b, k) the denominator holds the user's valid items, the user's other interests and the valid items
    of user b - 1 (the batch rolled by one). [B, K, d], [B, L, d], [B, L], [B, K, L] -> scalar
    """
    z = F.normalize(interests, dim=-1)
    e = F.normalize(items, dim=-1)
    K, L = z.size(1), e.size(1)
    # one batched product for the three similarity blocks: own items, the previous user's items, own interests
    sims = (z @ torch.cat([e, e.roll(1, dims=0), z], 1).transpose(1, 2)) / temp  # [B, K, 2L + K]
    seen = torch.cat([valid, valid.roll(1, dims=0)], 1).unsqueeze(1).expand(-1, K, -1)
    others = ~torch.eye(K, dtype=torch.bool, device=z.device).expand(z.size(0), -1, -1)
    denominator = torch.logsumexp(sims.masked_fill(~torch.cat([seen, others], -1), float("-inf")), dim=-1)  # [B, K]
    own = sims[..., :L]
    terms = (denominator.unsqueeze(-1) - own) * positives
    return terms.sum() / positives.numel()


def re_construct_loss(reconstruction: torch.Tensor, items: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Squared error of each interest's decoded slots on its attended items, divided by B·K·L·d.
    [B, K, L, d], [B, L, d], [B, K, L] -> scalar"""
    error = (reconstruction - items.unsqueeze(1)).pow(2) * positives.unsqueeze(-1)
    return error.sum() / error.numel()


class Decoder(nn.Module):
    """ReConstruct's decoder: interest z -> L proposals R0 = fc_cons(z) -> slot attention
    ``softmax_j(W3_2 tanh(W3 R0ᵀ))`` over the real positions j -> slots ``x̂ = attention · (R0 W5)``.

    W3 and W5 act on fc_cons's output, so they are folded into it (``W3·fc_cons`` and ``W5·fc_cons``, two
    [L·d, d] maps built per step) and R0 itself is never formed: the reference's parameters and function, two
    thirds of its largest matmuls. ``forward`` is the reconstruction in autograd ops; training calls ``error``:
    with ``speed_kernels`` the same numbers with the backward written out. [B, K, d], [B, L] -> [B, K, L, d]"""

    def __init__(self, d: int, max_len: int, speed_kernels: bool = True):
        super().__init__()
        self.max_len, self.speed_kernels = max_len, speed_kernels
        self.fc_cons = nn.Linear(d, max_len * d)
        self.W3, self.W3_2, self.W5 = (nn.Linear(d, d, bias=False), nn.Linear(d, max_len, bias=False),
                                       nn.Linear(d, d, bias=False))

    def _folded(self, outer: nn.Linear) -> torch.Tensor:
        """outer(fc_cons(z)) per proposal as one linear map: [L·d, d + 1], the bias as the last column"""
        d = outer.weight.size(0)
        blocks = self.fc_cons.weight.view(self.max_len, d, d)  # proposal l = blocks[l] z + bias[l]
        bias = self.fc_cons.bias.view(self.max_len, d) @ outer.weight.T
        return torch.cat([(outer.weight @ blocks).reshape(-1, d), bias.reshape(-1, 1)], 1)

    def forward(self, interests: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w_t, w_v = self._folded(self.W3), self._folded(self.W5)
        proposals = (self.max_len, interests.size(-1))
        pre = F.linear(interests, w_t[:, :-1], w_t[:, -1]).unflatten(-1, proposals)
        slot_logits = self.W3_2(torch.tanh(pre)).transpose(-1, -2)
        slot_logits = slot_logits.masked_fill(~valid[:, None, None, :], float("-inf"))  # [B, K, L(s), L(j)]
        return torch.softmax(slot_logits, dim=-1) @ F.linear(interests, w_v[:, :-1], w_v[:, -1]).unflatten(-1, proposals)

    def error(self, interests: torch.Tensor, items: torch.Tensor, valid: torch.Tensor,
              positives: torch.Tensor) -> torch.Tensor:
        """``re_construct_loss(self(interests, valid), items, positives)``; with ``speed_kernels`` computed by
        ``kernels.DecodedSquaredError``. [B, K, d], [B, L, d], [B, L], [B, K, L] -> scalar"""
        if not self.speed_kernels:
            return re_construct_loss(self(interests, valid), items, positives)
        dtype = self.W3.weight.dtype
        with torch.autocast(interests.device.type, enabled=False):  # its backward is written for one dtype
            total = kernels.DecodedSquaredError.apply(interests.to(dtype), items.to(dtype), self._folded(self.W3),
                                                      self._folded(self.W5), self.W3_2.weight, positives, ~valid)
        return total / (positives.numel() * items.size(-1))


class Re4(SequentialRecommender):
    r"""Re4 for RecBole. Config keys: ``embedding_size``, ``n_interests``, ``attn_size``, ``loss_type`` (SSM | CE),
    ``n_negatives``, ``neg_distribution`` (uniform | log_uniform), ``att_lambda``, ``ct_lambda``, ``cs_lambda``,
    ``t_cont``, ``thre`` (-1 or a positive integer)."""

    config_choices = {"loss_type": ("SSM", "CE"), "neg_distribution": ("uniform", "log_uniform")}
    config_ranges = {"n_interests": "[1, inf)", "attn_size": "[1, inf)", "n_negatives": "[1, inf)", "t_cont": "(0, inf)",
                     "att_lambda": "[0, inf)", "ct_lambda": "[0, inf)", "cs_lambda": "[0, inf)"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["thre"] != -1 and config["thre"] <= 0:
            raise ValueError(f"thre: {config['thre']!r} is not valid for Re4; use -1 (gate 1/len) or an integer > 0")
        d = config["embedding_size"]
        self.loss_type, self.n_negatives = config["loss_type"], config["n_negatives"]
        self.distribution, self.temp, self.thre = config["neg_distribution"], config["t_cont"], config["thre"]
        self.weights = {name: float(config[f"{name}_lambda"]) for name in ("att", "ct", "cs")}
        fast = kernels.use_speed_kernels(config)
        self.extractor = MultiInterestExtractor(self.n_items, d, config["attn_size"], config["n_interests"],
                                                self.max_seq_length, add_pos=False, aggregate="raw", bias=False,
                                                value_proj=True, speed_kernels=fast)
        self.fc1 = nn.Linear(d, d)
        self.decoder = Decoder(d, self.max_seq_length, speed_kernels=fast) if self.weights["cs"] else None
        unscaled = [self.extractor.item_embedding, self.extractor.W1, self.extractor.W2, self.extractor.value]
        if self.decoder is not None:
            unscaled += [self.decoder.W3, self.decoder.W3_2, self.decoder.W5]
        for module in unscaled:
            nn.init.normal_(module.weight)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor):
        """-> U [B, K, d], Z [B, K, d], A [B, K, L], S [B, K, L], the newest-first history [B, L]"""
        history = newest_first(item_seq, item_seq_len)
        interests, attention, logits = self.extractor(history, item_seq_len, details=True)
        return torch.tanh(self.fc1(interests)), interests, attention, logits, history

    def interest_vectors(self, interaction) -> torch.Tensor:
        """[B, K, d]: the matching vectors items are scored against."""
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])[0]

    def calculate_loss(self, interaction):
        matching, interests, attention, logits, history = self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        table = self.extractor.item_embedding
        target = interaction[self.POS_ITEM_ID]
        user = closest_interest(matching, table(target))
        if self.loss_type == "CE":
            base = F.cross_entropy(user @ table.weight.T, target)
        else:
            base = sampled_softmax_loss(user, table.weight, target, self.n_negatives, self.distribution)
        if not any(self.weights.values()):
            return base
        valid, items = history > 0, table(history)  # [B, L], [B, L, d]
        positives = attended_items(attention, valid, self.thre)
        losses = [base]
        if self.weights["att"]:
            losses.append(self.weights["att"] * re_attend_loss(interests, items, logits, valid))
        if self.weights["ct"]:
            losses.append(self.weights["ct"] * re_contrast_loss(interests, items, valid, positives, self.temp))
        if self.weights["cs"]:
            losses.append(self.weights["cs"] * self.decoder.error(interests, items, valid, positives))
        return tuple(losses)

    def predict_candidates(self, interaction, candidates: torch.Tensor) -> torch.Tensor:
        """candidates: [B, C] item ids -> [B, C] scores (fixed-negatives evaluation)."""
        matching = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])[0]
        return max_interest_scores(matching, self.extractor.item_embedding(candidates))

    def predict(self, interaction) -> torch.Tensor:
        return self.predict_candidates(interaction, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        matching = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])[0]
        return max_interest_scores(matching, self.extractor.item_embedding.weight)
