"""IFM, INN and DeepIFM: the *Interaction-aware* Factorization Machines.

Hong, Huang and Chen, "Interaction-Aware Factorization Machines for Recommender Systems", AAAI 2019 (official code:
cstur4/interaction-aware-factorization-machines, ``code/IFM.py``, ``code/INN.py``, ``code/FM.py``,
``code/deepIFM/sifm_network.py``). Not the "Input-aware FM" (Yu et al., IJCAI'19) that DeepCTR and others call IFM.

Every field pair's interaction vector ``q_p = e_i ⊙ e_j`` is weighted twice: by an instance-dependent attention over
the pairs (feature aspect) and by a field-pair prototype ``u_p`` (field aspect); see
:class:`recbole_ext.model.layers.InteractionAwarePairs`.

* **IFM**: ``ŷ = w0 + Σ_m w_{x_m} + Σ_p a_p ⟨q_p, u_p⟩`` with dropout on the attention (``attention_dropout``) and
  on the weighted interactions (``interaction_dropout``), both off at evaluation.
* **INN**: the P weighted vectors ``a_p q_p ⊙ u_p`` concatenated through an MLP (one hidden layer of 5, as INN.py).
* **DeepIFM**: IFM's logit + a DNN (100-75-50, ReLU) on the concatenated field embeddings, the first-order part
  as its wide part; BCE, Adagrad lr 1e-3, gradient norm clipped at 50 (``clip_grad_norm``). The reference drops
  out in every mode, evaluation included (so its evaluation AUC and served scores are random): here dropout is off
  at evaluation.

``loss_type``: ``MSE`` (±1 regression as the paper, raw scores; clip them for RMSE with the ``ClippedRMSE``
metric) or ``BCE`` (CTR, sigmoid scores). The reference's loss is ½·Σ over the batch; ours is the batch mean, so
its L2 terms ``λ_a·½‖W‖² + λ_f·½(‖Φ‖² + ‖Ψ‖²)`` are scaled by 2/B (``reg_attention``, ``reg_field`` keep the
reference's λ values). ``pair_sample_ratio`` > 0 turns on DeepIFM's sampling trick (off by default: the reference
never runs it) after ``sample_warmup_steps`` training steps.

**FM warm start**, the paper's recipe (the reference README trains ``FM.py`` and then runs ``IFM.py --pretrain 1``,
which starts from the FM's embeddings V, biases w and global bias w0): IFM and INN default to ``stage: both``, which
trains the reference FM first in the same run (:func:`reference_fm`, :mod:`recbole_ext.trainer.ifm`) and copies its
embeddings and first-order part into the model. ``pretrain_path`` starts from a saved FM checkpoint instead (no FM
stage then); ``stage: ifm`` trains the model alone, from scratch unless ``pretrain_path`` is set. DeepIFM defaults
to ``stage: ifm``: its reference (``SIFMNetwork``) has no FM pretraining.

    python run_recbole_ext.py --model=IFM --dataset=ml-1m --protocol=ctr                # FM, then IFM from it
    python run_recbole_ext.py --model=IFM --dataset=ml-1m --protocol=ctr --stage=ifm    # no warm start
    python run_recbole_ext.py --model=IFM --dataset=frappe --protocol=libfm   # after --convert=libfm
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import ContextRecommender
from recbole.model.layers import BaseFactorizationMachine
from torch import nn

from recbole_ext.model.context_aware.regression import regress_raw_score
from recbole_ext.model.layers import InteractionAwarePairs, relu_mlp

# the parts of a ContextRecommender that an FM checkpoint holds: embeddings and the first-order part
FM_PARTS = ("token_embedding_table.", "token_seq_embedding_table.", "float_embedding_table.",
            "float_seq_embedding_table.", "first_order_linear.")


def warm_start(model: nn.Module, path: str, dataset_name: str) -> int:
    """Copy a RecBole ``FM`` checkpoint's embeddings and first-order weights into ``model`` exactly; a checkpoint of
    another model, dataset, field set or width fails with one line before training. -> tensors copied"""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    config, state = saved.get("config"), saved.get("state_dict", {})
    if config is None or config["model"] != "FM":
        raise ValueError(f"pretrain_path {path}: not a RecBole FM checkpoint (model {config and config['model']!r})")
    if config["dataset"] != dataset_name:
        raise ValueError(f"pretrain_path {path}: FM was trained on {config['dataset']!r}, not {dataset_name!r}")
    own = {key: value for key, value in model.state_dict().items() if key.startswith(FM_PARTS)}
    theirs = {key: value for key, value in state.items() if key.startswith(FM_PARTS)}
    for key in own.keys() | theirs.keys():
        if key not in own or key not in theirs or own[key].shape != theirs[key].shape:
            shapes = [tuple(d[key].shape) if key in d else "missing" for d in (theirs, own)]
            raise ValueError(f"pretrain_path {path}: {key} is {shapes[0]} in the FM checkpoint but {shapes[1]} here; "
                             "train FM with the same fields and embedding_size")
    model.load_state_dict(theirs, strict=False)
    return len(theirs)


class ReferenceBiInteraction(nn.Module):
    """The reference FM.py's second-order part: ``Σ_k Dropout(BN(½[(Σ_m e_m)² − Σ_m e_m²]))_k``. Its batch norm is
    TF's contrib ``batch_norm`` on the K channels (decay 0.9, i.e. momentum 0.1; ε 1e-3; centred and scaled; batch
    statistics in training, moving ones at evaluation); its dropout (``--keep``) follows the norm and is off at
    evaluation. Without either it is RecBole's ``BaseFactorizationMachine``.

    e: [B, M, K] -> [B, 1]
    """

    def __init__(self, embedding_size: int, batch_norm: bool, dropout: float):
        super().__init__()
        self.bi_interaction = BaseFactorizationMachine(reduce_sum=False)
        self.norm = nn.BatchNorm1d(embedding_size, eps=1e-3, momentum=0.1) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.bi_interaction(e))).sum(-1, keepdim=True)


def reference_fm(fm: nn.Module, config) -> nn.Module:
    """In place: RecBole's ``FM`` with the reference FM.py's batch norm (``fm_batch_norm``) and dropout
    (``fm_dropout``) on its Bi-Interaction vector. The warm start copies only the embeddings and the first-order
    part, as ``IFM.py --pretrain 1`` reads only V, w and w0: the norm's tensors stay in the FM. -> the model"""
    fm.fm = ReferenceBiInteraction(fm.embedding_size, config["fm_batch_norm"], config["fm_dropout"])
    return fm


def fm_stage_model(fm: nn.Module, config) -> nn.Module:
    """In place: RecBole's ``FM`` as an IFM run's FM stage trains it (and as its ``-fm.pth`` reloads): the reference
    FM, regressing the ±1 labels on its raw score under ``loss_type: MSE`` as FM.py does. -> the model"""
    reference_fm(fm, config)
    return regress_raw_score(fm) if config["loss_type"] == "MSE" else fm


class IFM(ContextRecommender):
    r"""IFM (Interaction-aware FM, AAAI'19). Config keys: ``embedding_size`` (K), ``attention_size`` (t),
    ``field_factor_size`` (k_F), ``temperature`` (T), ``attention_activation`` (relu | tanh),
    ``attention_dropout``, ``interaction_dropout``, ``reg_attention`` (λ_a), ``reg_field`` (λ_f), ``loss_type``
    (MSE | BCE), ``field_groups``, ``pair_sample_ratio``, ``sample_warmup_steps``, ``pretrain_path``; the FM warm
    start's ``stage`` (both | ifm), ``fm_epochs``, ``fm_learner``, ``fm_learning_rate``, ``fm_batch_norm``,
    ``fm_dropout`` (:mod:`recbole_ext.trainer.ifm`)."""

    config_choices = {"loss_type": ("MSE", "BCE"), "attention_activation": ("relu", "tanh"), "stage": ("ifm", "both")}
    config_ranges = {"attention_size": "[1, inf)", "field_factor_size": "[1, inf)", "temperature": "(0, inf)",
                     "attention_dropout": "[0, 1)", "interaction_dropout": "[0, 1)", "reg_attention": "[0, inf)",
                     "reg_field": "[0, inf)", "pair_sample_ratio": "[0, 1]", "sample_warmup_steps": "[0, inf)",
                     "fm_dropout": "[0, 1)"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.loss_type = config["loss_type"]
        self.reg_attention, self.reg_field = float(config["reg_attention"]), float(config["reg_field"])
        self.pairs = InteractionAwarePairs(self.num_feature_field, self.embedding_size, config["attention_size"],
                                           config["field_factor_size"], config["temperature"],
                                           config["attention_activation"], config["field_groups"])
        self.attention_dropout = nn.Dropout(config["attention_dropout"])
        self.interaction_dropout = nn.Dropout(config["interaction_dropout"])
        ratio = float(config["pair_sample_ratio"] or 0.0)
        self.sample_size = max(1, int(self.pairs.n_pairs * ratio)) if ratio > 0 else None
        self.sample_warmup_steps, self.steps = int(config["sample_warmup_steps"] or 0), 0
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                self.init_embedding(module.weight)
        for weight in self.first_order_linear.parameters():  # w and w0 start at 0 (as FM.py and IFM.py)
            nn.init.zeros_(weight)
        self.init_pairs()
        if config["pretrain_path"]:  # last: the FM's values replace the fresh ones
            warm_start(self, config["pretrain_path"], config["dataset"])

    def init_embedding(self, weight: torch.Tensor) -> None:
        """IFM.py: feature embeddings ~ N(0, 0.01²)."""
        nn.init.normal_(weight, 0.0, 0.01)

    def init_pairs(self) -> None:
        """The pair layer's own initialisation is IFM.py's."""

    def _sampling(self) -> int | None:
        """Pairs per batch: all at evaluation and during warm-up, else ``sample_size`` (None = all)."""
        return self.sample_size if self.training and self.steps >= self.sample_warmup_steps else None

    def weighted_pairs(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dropped-out ``a_p q_p`` [B, P, K] and the prototypes U [P, K] of the pairs used."""
        attention, q, prototypes = self.pairs(e, self._sampling())
        return self.interaction_dropout(self.attention_dropout(attention).unsqueeze(-1) * q), prototypes

    def interaction(self, e: torch.Tensor) -> torch.Tensor:
        """Σ_p a_p ⟨q_p, u_p⟩: [B, M, K] -> [B]"""
        weighted, prototypes = self.weighted_pairs(e)
        return (weighted * prototypes).sum((1, 2))

    def forward(self, interaction) -> torch.Tensor:
        """-> the raw score (MSE) or logit (BCE), [B]"""
        e = self.concat_embed_input_fields(interaction)  # [B, M, K]
        return self.first_order_linear(interaction).squeeze(-1) + self.interaction(e)

    def regulariser(self, batch_size: int) -> torch.Tensor:
        """The reference's L2 terms at the scale of a batch-mean loss: (λ_a‖W‖² + λ_f(‖Φ‖² + ‖Ψ‖²)) / B."""
        pairs = self.pairs
        return (self.reg_attention * pairs.W.weight.square().sum()
                + self.reg_field * (pairs.phi.square().sum() + pairs.psi.square().sum())) / batch_size

    def calculate_loss(self, interaction) -> torch.Tensor:
        label = interaction[self.LABEL].float()
        output = self.forward(interaction)
        self.steps += 1
        data = F.mse_loss(output, label) if self.loss_type == "MSE" else \
            F.binary_cross_entropy_with_logits(output, label)
        return data + self.regulariser(len(label))

    def predict(self, interaction) -> torch.Tensor:
        output = self.forward(interaction)
        return output if self.loss_type == "MSE" else torch.sigmoid(output)


class INN(IFM):
    r"""INN (Interaction-aware Neural Network, AAAI'19): IFM whose weighted pair vectors ``a_p q_p ⊙ u_p`` are
    concatenated into an MLP (``mlp_hidden_size``, ReLU, then one linear output) instead of summed. Uses every pair
    (the MLP's input width is P·K), so ``pair_sample_ratio`` must stay 0."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if self.sample_size is not None:
            raise ValueError("pair_sample_ratio: INN feeds all P·K pair values to its MLP; leave it at 0")
        self.mlp = relu_mlp(self.pairs.n_pairs * self.embedding_size, config["mlp_hidden_size"])
        for module in self.mlp:  # TF's dense defaults: Glorot-uniform kernel, zero bias
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def interaction(self, e: torch.Tensor) -> torch.Tensor:
        """MLP(concat_p a_p q_p ⊙ u_p): [B, M, K] -> [B]"""
        weighted, prototypes = self.weighted_pairs(e)
        return self.mlp((weighted * prototypes).flatten(1)).squeeze(-1)


class DeepIFM(IFM):
    r"""DeepIFM (the reference's SIFMNetwork): IFM's interaction term + a DNN (``mlp_hidden_size``, ReLU) on the
    concatenated field embeddings + the first-order (wide) part, one logit. Initialisation as the reference:
    Glorot-normal W, b, Φ, Ψ, h = 1, embeddings as TF's embedding columns."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.deep = relu_mlp(self.num_feature_field * self.embedding_size, config["mlp_hidden_size"])

    def init_embedding(self, weight: torch.Tensor) -> None:
        """TF's embedding columns: truncated N(0, 1/K), cut at two standard deviations."""
        std = weight.size(-1) ** -0.5
        nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)

    def init_pairs(self) -> None:
        pairs = self.pairs
        nn.init.xavier_normal_(pairs.W.weight)
        for weight in (pairs.phi, pairs.psi):
            nn.init.xavier_normal_(weight)
        nn.init.normal_(pairs.b, 0.0, (2.0 / (1 + pairs.b.numel())) ** 0.5)  # Glorot-normal of a [1, t] matrix
        nn.init.ones_(pairs.h)

    def forward(self, interaction) -> torch.Tensor:
        e = self.concat_embed_input_fields(interaction)  # [B, M, K]
        return (self.first_order_linear(interaction).squeeze(-1) + self.interaction(e)
                + self.deep(e.flatten(1)).squeeze(-1))
