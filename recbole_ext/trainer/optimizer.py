"""The plugin's changes to RecBole's optimizer.

* ``no_bias_decay: True``: weight decay on every parameter except those named ``*bias*`` (ReChorus);
* ``fused_optimizer`` (default on): the optimizer in torch's fused single-kernel form where torch has one (Adam,
  AdamW, SGD, Adagrad on CPU and GPU): the same update, several times faster than the per-tensor loop on the large
  embedding tables.
"""

from __future__ import annotations

import torch
from torch import nn


def without_bias_decay(model: nn.Module) -> list[dict]:
    """Parameter groups of the trainable parameters: the ``*bias*`` ones with ``weight_decay`` 0, the others with
    the optimizer's."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if "bias" not in n]},
        {"params": [p for n, p in named if "bias" in n], "weight_decay": 0.0},
    ]


def fused(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer (type, groups, settings) in its fused form; ``optimizer`` itself when torch has none."""
    if "fused" not in optimizer.defaults:
        return optimizer
    groups = [{**group, "fused": True, "foreach": None} for group in optimizer.param_groups]
    return type(optimizer)(groups, **{**optimizer.defaults, "fused": True, "foreach": None})
