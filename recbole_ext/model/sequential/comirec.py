"""ComiRec-SA: self-attentive multi-interest extraction.

Cen et al., "Controllable Multi-Interest Framework for Recommendation", KDD 2020 (ComiRec-SA, with the
diversity-controllable aggregation off, λ = 0, as in ReChorus's ComiRec, the TiMiRec paper's baseline).

* K interests from a self-attention over the history (attention logits see item + reversed position
  embeddings; the interests aggregate the raw item embeddings, as the official code does).
* Training: the interest closest (dot product) to the target is the user vector; BPR with one sampled
  negative (``loss_type: BPR``, the ReChorus baseline), softmax over all items (``loss_type: CE``) or a sampled
  softmax over ``n_negatives`` negatives shared by the batch (``loss_type: SSM``, the ComiRec/Re4 protocol; with
  ``neg_distribution: uniform`` none of them is a target of the batch, as in the official Re4 code).
* Inference: each item is scored by its best interest (``max_k <v_k, e_i>``), one batched matmul.

Reproduce the ReChorus Grocery baseline (99 fixed negatives, HR/NDCG@5)::

    python run_recbole_ext.py --convert=rechorus --src=PATH/Grocery_and_Gourmet_Food --dataset=grocery
    python run_recbole_ext.py --model=ComiRec --dataset=grocery --n_interests=4 --learning_rate=1e-3
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_ext.model import kernels
from recbole_ext.model.layers import (
    MultiInterestExtractor, bpr_loss, closest_interest, init_normal, max_interest_scores, sampled_softmax_loss,
)


class ComiRec(SequentialRecommender):
    r"""ComiRec-SA for RecBole. Config keys: ``embedding_size``, ``attn_size``, ``n_interests``, ``add_pos``,
    ``loss_type`` (BPR | CE | SSM), ``n_negatives`` and ``neg_distribution`` (SSM)."""

    config_choices = {"loss_type": ("BPR", "CE", "SSM")}
    config_ranges = {"n_interests": "[1, inf)", "attn_size": "[1, inf)", "n_negatives": "[1, inf)"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.loss_type = config["loss_type"]
        self.n_negatives, self.neg_distribution = config["n_negatives"], config["neg_distribution"]
        self.extractor = MultiInterestExtractor(
            self.n_items, config["embedding_size"], config["attn_size"], config["n_interests"],
            self.max_seq_length, add_pos=bool(config["add_pos"]), add_trm=False, aggregate="raw",
            speed_kernels=kernels.use_speed_kernels(config),
        )
        self.apply(init_normal)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """[B, L], [B] -> interests [B, K, d]"""
        return self.extractor(item_seq, item_seq_len)

    def interest_vectors(self, interaction) -> torch.Tensor:
        """[B, K, d]: the interests items are scored against (recommend/export attribute items to them)."""
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])

    def calculate_loss(self, interaction) -> torch.Tensor:
        seq, table = interaction[self.ITEM_SEQ], self.extractor.item_embedding
        ids = [seq, interaction[self.POS_ITEM_ID][:, None]]
        if self.loss_type == "BPR":
            ids.append(interaction[self.NEG_ITEM_ID][:, None])
        rows = table(torch.cat(ids, 1))  # [B, L + 1 (+1), d]: one lookup, one dense gradient of the table
        interests = self.extractor(seq, interaction[self.ITEM_SEQ_LEN], items=rows[:, :seq.size(1)])
        pos = rows[:, seq.size(1)]  # [B, d]
        user = closest_interest(interests, pos)  # [B, d]
        if self.loss_type == "CE":
            return torch.nn.functional.cross_entropy(user @ table.weight.T, interaction[self.POS_ITEM_ID])
        if self.loss_type == "SSM":
            return sampled_softmax_loss(user, table.weight, interaction[self.POS_ITEM_ID], self.n_negatives,
                                        self.neg_distribution)
        return bpr_loss((user * pos).sum(-1), (user * rows[:, -1]).sum(-1))

    def predict_candidates(self, interaction, candidates: torch.Tensor) -> torch.Tensor:
        """candidates: [B, C] item ids -> [B, C] scores (fixed-negatives evaluation)."""
        interests = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return max_interest_scores(interests, self.extractor.item_embedding(candidates))

    def predict(self, interaction) -> torch.Tensor:
        """[B] scores of the interaction's items."""
        return self.predict_candidates(interaction, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """[B, N] scores of all items."""
        interests = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return max_interest_scores(interests, self.extractor.item_embedding.weight)
