"""The user-level task for any sequential model: ``task: user_classification`` with ``label: FIELD``.

RecBole has no user-level task. The data side is shared by every model (``properties/protocol/user_classification.yaml``,
:func:`recbole_ext.data.user_task.user_task_build`: one row per user, users split 8:1:1, the label a user field; metrics
ClassAUC / Accuracy / ClassPrecision / ClassRecall / F1 registered the RecBole way). The model side is this module: a
model that has no head of its own (MFN has one) is wrapped by :class:`UserClassifier`, a :class:`UserHead` on the
model's user vector, trained end to end with the head's loss (BCE for two label values, CE for more):

* a model with ``user_vectors`` (TiMiRec after pretraining) gives that vector;
* a multi-interest model (``interest_vectors``: ComiRec, Re4, TiMiRec's extractor) the **mean of its interests** (one
  vector that does not depend on the interests' order);
* any other sequential model (SASRec, GRU4Rec, ...) ``forward(item_seq, item_seq_len)`` [B, d].

``registry.build_model`` wraps, so ``run_recbole_ext.py --model=SASRec --task=user_classification --label=gender``,
``recbole_ext.run``, sweeps and ``quick_start.load`` all see the same model; the run trains one stage with the
plugin's trainer (a multi-stage trainer such as TiMiRec's would train the wrapped model's own objective). RecBole's own
``run_recbole`` builds the bare model, so the user-task train loader refuses RecBole's plain Trainer
(:class:`recbole_ext.data.guard.NeedsPluginTrainer`) and the plugin trainer refuses a model without a head.
"""

from __future__ import annotations

import torch
from recbole.data.interaction import Interaction
from torch import nn

from recbole_ext.model.layers import UserHead


def single_vector(model: nn.Module, interaction) -> torch.Tensor | None:
    """The model's own one vector per row: ``user_vectors`` when it has that method (None while it scores by its
    interests, e.g. TiMiRec before its finetune stage), else ``forward(item_seq, item_seq_len)``. -> [B, d] | None"""
    one = getattr(model, "user_vectors", None)
    if one is not None:
        return one(interaction)
    return model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])


def user_vector(model: nn.Module, interaction) -> torch.Tensor:
    """One vector per row from a sequential model (see the module docstring). -> [B, d]"""
    multi = hasattr(model, "interest_vectors")
    out = single_vector(model, interaction) if not multi or hasattr(model, "user_vectors") else None
    if out is None and multi:
        out = model.interest_vectors(interaction).mean(1)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(f"task user_classification: {type(model).__name__} gives no user vector [B, d] "
                         "(no user_vectors or interest_vectors, and forward(item_seq, item_seq_len) is not [B, d])")
    return out


class UserClassifier(nn.Module):
    """A :class:`UserHead` on a sequential model's user vector; RecBole's model contract for the labeled rows."""

    def __init__(self, config, dataset, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.type, self.ITEM_SEQ, self.ITEM_SEQ_LEN = encoder.type, encoder.ITEM_SEQ, encoder.ITEM_SEQ_LEN
        history = torch.zeros(1, encoder.max_seq_length, dtype=torch.long)
        history[0, 0] = 1  # one user who saw item 1: the vector's width is all the probe asks
        probe = Interaction({self.ITEM_SEQ: history, self.ITEM_SEQ_LEN: torch.ones(1, dtype=torch.long)}).to(encoder.device)
        training = encoder.training
        with torch.no_grad():  # in eval mode: no dropout draw moves the random stream
            width = user_vector(encoder.eval(), probe).size(-1)
        encoder.train(training)
        self.user_head = UserHead(dataset, config["label"], width).to(encoder.device)

    def calculate_loss(self, interaction) -> torch.Tensor:
        return self.user_head.loss(user_vector(self.encoder, interaction), interaction)

    def predict(self, interaction) -> torch.Tensor:
        """P(label = 1) [B], or class probabilities [B, C]."""
        return self.user_head.probabilities(user_vector(self.encoder, interaction))

    def other_parameter(self):
        return self.encoder.other_parameter()

    def load_other_parameter(self, para) -> None:
        self.encoder.load_other_parameter(para)


def for_user_task(config, dataset, model: nn.Module) -> nn.Module:
    """``model`` itself when it has a user head or the task is not user-level, else wrapped. -> the model to train"""
    if config["task"] != "user_classification" or hasattr(model, "user_head"):
        return model
    return UserClassifier(config, dataset, model)
