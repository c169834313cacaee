"""±1 regression (``protocol: libfm``) for RecBole's own context-aware models.

RecBole's CTR models score a logit, train ``BCEWithLogitsLoss`` on 0/1 labels and predict its sigmoid. The IFM
paper's baselines (FM, AFM, …) regress ±1 labels instead: squared error on the raw score, and the raw score as the
prediction (clipped to [-1, 1] only by the ``ClippedRMSE`` metric), as libFM and the reference ``FM.py`` do.
For the models below, checked against RecBole 1.2.1's source, ``calculate_loss`` is
``self.loss(self.forward(x), label)`` plus an optional regulariser and ``predict`` is ``sigmoid(forward(x))``, so
swapping the loss and the prediction on the instance is the whole change; the regularisers stay as they are.

recbole_ext builds every model through :func:`recbole_ext.registry.build_model` and reloads through
:func:`recbole_ext.quick_start.load`, which apply it when :func:`recbole_ext.data.ctr.needs_regression` says so.
RecBole's own ``run_recbole`` would build the model unchanged and train BCE on ±1 labels without a word, so under
regression the train loader is :class:`recbole_ext.data.ctr.RegressionTrainLoader`, which only a recbole_ext trainer
may iterate.
"""

from __future__ import annotations

from torch import nn


def regress_raw_score(model: nn.Module) -> nn.Module:
    """In place: squared error on the raw score, and the raw score as the prediction. -> the model"""
    model.loss = nn.MSELoss()
    model.predict = model.forward
    return model
