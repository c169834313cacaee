"""``ClippedRMSE``: the RMSE of IFM's evaluation, predictions clipped to the range of the true labels of the
evaluated rows ([-1, 1] for the libFM ±1 data) before the error is taken, as the official IFM code evaluates."""

from __future__ import annotations

import numpy as np
from recbole.evaluator.base_metric import LossMetric


class ClippedRMSE(LossMetric):
    """sqrt(mean((clip(ŷ, min y, max y) - y)²)); smaller is better."""

    smaller = True

    def calculate_metric(self, dataobject) -> dict:
        return self.output_metric("clippedrmse", dataobject)

    def metric_info(self, preds: np.ndarray, trues: np.ndarray) -> float:
        return float(np.sqrt(np.mean((np.clip(preds, trues.min(), trues.max()) - trues) ** 2)))
