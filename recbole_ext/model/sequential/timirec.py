"""TiMiRec: target-interest distillation for multi-interest recommendation.

Wang et al., "Target Interest Distillation for Multi-Interest Recommendation", CIKM 2022
(reference code: THUwangcy/ReChorus, branch CIKM22, src/models/sequential/TiMiRec.py).

Two stages in one run (``stage: both``, :class:`recbole_ext.trainer.timirec.TiMiRecTrainer`):

1. **pretrain** the multi-interest extractor (item + reversed position embedding -> one Transformer layer
   (``add_trm``) -> K self-attentive interests over the *encoded* history), ComiRec style: the interest closest
   to the target is the user vector, BPR with one sampled negative; evaluation scores items by their best interest.
2. **finetune** everything (nothing frozen) after loading the best extractor: a GRU over the history (own item
   table) and an MLP predict the interest distribution ``p``; the user vector is ``Σ_k softmax(p)_k V_k``
   (train and test alike); loss = BPR + τ²·KL(softmax(cos(V, e⁺)/τ) ‖ softmax(p/τ)), the target side detached.

``stage: pretrain`` or ``stage: finetune`` (with ``pretrain_path``) run one stage alone.

Reproduce the ml-1m reference run (TiMiRec+, K=2, τ=0.5, 2-layer MLP, 1000 fixed negatives)::

    python run_recbole_ext.py --convert=ml-1m --src=PATH/ml-1m
    python run_recbole_ext.py --model=TiMiRec --dataset=ml-1m --protocol=rechorus
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from recbole_ext.model import kernels
from recbole_ext.model.layers import (
    MultiInterestExtractor, bpr_loss, closest_interest, init_normal, max_interest_scores,
)


def distillation_loss(target_logits: torch.Tensor, predicted_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """τ²·KL(softmax(q/τ) ‖ softmax(p/τ)), batch mean; no gradient through the target q. [B, K], [B, K] -> scalar"""
    target = torch.softmax(target_logits.detach() / temp, dim=-1)
    kl = F.kl_div(torch.log_softmax(predicted_logits / temp, dim=-1), target, reduction="batchmean")
    return temp ** 2 * kl


class InterestPredictor(nn.Module):
    """GRU over the raw history (its own item table) -> MLP -> interest logits.

    The table has n_items + 1 rows, as in the reference (an off-by-one kept so parameter counts match).
    The GRU runs on the packed history (no step on padding), like the reference. ``speed_kernels``: the table is a
    ``kernels.Table``.
    item_seq: [B, L] right-padded, lengths: [B] -> [B, K]
    """

    def __init__(self, n_items: int, d: int, n_interests: int, n_layers: int, speed_kernels: bool = True):
        super().__init__()
        self.item_embedding = kernels.embedding(n_items + 1, d, speed_kernels=speed_kernels)
        self.gru = nn.GRU(d, d, batch_first=True)
        hidden = [m for _ in range(n_layers - 1) for m in (nn.Linear(d, d), nn.Dropout(0.5), nn.ReLU())]
        self.proj = nn.Sequential(*hidden, nn.Linear(d, n_interests))

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.item_embedding(item_seq), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, last = self.gru(packed)  # [1, B, d]: the state after each row's last real item
        return self.proj(last[0])


class TiMiRec(SequentialRecommender):
    r"""Config keys: ``embedding_size``, ``attn_size``, ``n_interests``, ``add_pos``, ``add_trm``, ``temp``,
    ``n_layers``, ``stage`` (both | pretrain | finetune), ``pretrain_path``."""

    config_choices = {"stage": ("both", "pretrain", "finetune"), "loss_type": ("BPR",)}
    config_ranges = {"n_interests": "[1, inf)", "attn_size": "[1, inf)", "temp": "(0, inf)", "n_layers": "[1, inf)"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["n_layers"] < 1 or config["temp"] <= 0:
            raise ValueError("n_layers must be >= 1 and temp > 0 for TiMiRec")
        d, k = config["embedding_size"], config["n_interests"]
        self.temp, fast = config["temp"], kernels.use_speed_kernels(config)
        self.extractor = MultiInterestExtractor(
            self.n_items, d, config["attn_size"], k, self.max_seq_length,
            add_pos=bool(config["add_pos"]), add_trm=bool(config["add_trm"]), aggregate="encoded", speed_kernels=fast)
        self.predictor = InterestPredictor(self.n_items, d, k, config["n_layers"], speed_kernels=fast)
        self.apply(init_normal)
        # which stage the weights belong to; saved in checkpoints (other_parameter) so reloads score alike
        self.mode = "pretrain" if config["stage"] == "pretrain" else "finetune"
        self.other_parameter_name = ["mode"]

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> interests V [B, K, d], predicted interest logits p [B, K] (None in pretrain)"""
        interests = self.extractor(item_seq, item_seq_len)
        if self.mode == "pretrain":
            return interests, None
        return interests, self.predictor(item_seq, item_seq_len)

    def interest_vectors(self, interaction) -> torch.Tensor:
        """[B, K, d]: the extractor's interests (after pretraining the score mixes them by the predicted logits)."""
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])[0]

    def user_vectors(self, interaction) -> torch.Tensor | None:
        """[B, d]: after pretraining, the one vector items are scored against (the interests' mixture); None before."""
        interests, logits = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return None if logits is None else self.mixture(interests, logits)

    @staticmethod
    def mixture(interests: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """User vector Σ_k softmax(p)_k V_k (no temperature at inference). [B, K, d], [B, K] -> [B, d]"""
        return (torch.softmax(logits, dim=-1).unsqueeze(-1) * interests).sum(dim=1)

    def calculate_loss(self, interaction):
        seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        rows = self.extractor.item_embedding(torch.cat(
            [seq, interaction[self.POS_ITEM_ID][:, None], interaction[self.NEG_ITEM_ID][:, None]], 1))  # [B, L + 2, d]
        interests = self.extractor(seq, lengths, items=rows[:, :-2])  # one lookup, one dense gradient of the table
        pos, neg = rows[:, -2], rows[:, -1]  # [B, d]
        logits = None if self.mode == "pretrain" else self.predictor(seq, lengths)
        if logits is None:  # pretrain: ComiRec's hard readout
            user = closest_interest(interests, pos)
            return bpr_loss((user * pos).sum(-1), (user * neg).sum(-1))
        user = self.mixture(interests, logits)
        rec = bpr_loss((user * pos).sum(-1), (user * neg).sum(-1))
        target_logits = F.cosine_similarity(interests, pos.unsqueeze(1), dim=-1)  # [B, K]
        return rec, distillation_loss(target_logits, logits, self.temp)

    def _scores(self, interaction, items: torch.Tensor) -> torch.Tensor:
        """items: [N, d] or [B, C, d] -> [B, N] or [B, C]"""
        interests, logits = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        if logits is None:
            return max_interest_scores(interests, items)
        user = self.mixture(interests, logits)
        return user @ items.T if items.dim() == 2 else (user.unsqueeze(1) * items).sum(-1)

    def predict_candidates(self, interaction, candidates: torch.Tensor) -> torch.Tensor:
        """candidates: [B, C] item ids -> [B, C] scores (fixed-negatives evaluation)."""
        return self._scores(interaction, self.extractor.item_embedding(candidates))

    def predict(self, interaction) -> torch.Tensor:
        return self.predict_candidates(interaction, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self._scores(interaction, self.extractor.item_embedding.weight)
