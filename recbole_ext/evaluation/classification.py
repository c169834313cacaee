"""User-level classification metrics (MFN's user tasks), registered as RecBole value metrics.

Scores are P(label = 1) [N] for a binary label or class probabilities [N, K]: binary metrics threshold at 0.5 and
score class 1; multi-class ones take the arg-max and macro-average over the classes (AUC one-vs-rest). RecBole's own
``Precision``/``Recall`` are top-k ranking metrics, hence the ``Class`` names.
"""

from __future__ import annotations

import numpy as np
from recbole.evaluator.base_metric import LossMetric


def _sklearn():
    """sklearn.metrics, imported on use: it costs ~140 MB per process (see compat._sklearn_on_use)."""
    from sklearn import metrics

    return metrics


def _predicted(preds: np.ndarray) -> np.ndarray:
    return (preds >= 0.5).astype(int) if preds.ndim == 1 else preds.argmax(1)


class _ClassMetric(LossMetric):
    smaller = False

    def calculate_metric(self, dataobject) -> dict:
        return self.output_metric(type(self).__name__.lower(), dataobject)

    @staticmethod
    def averaging(preds: np.ndarray) -> str:
        return "binary" if preds.ndim == 1 else "macro"


class ClassAUC(_ClassMetric):
    """ROC AUC of class 1; with more classes the mean one-vs-rest AUC over the classes that occur in the labels
    (and not in all of them: a small split may lack a class). NaN when no class qualifies."""

    def metric_info(self, preds: np.ndarray, trues: np.ndarray) -> float:
        trues = trues.astype(int)
        scores = preds[:, None] if preds.ndim == 1 else preds
        classes = [1] if preds.ndim == 1 else range(preds.shape[1])
        aucs = [_sklearn().roc_auc_score(trues == k, scores[:, -1 if preds.ndim == 1 else k]) for k in classes
                if 0 < (trues == k).sum() < len(trues)]
        return float(np.mean(aucs)) if aucs else float("nan")


class Accuracy(_ClassMetric):
    def metric_info(self, preds: np.ndarray, trues: np.ndarray) -> float:
        return float((_predicted(preds) == trues.astype(int)).mean())


class ClassPrecision(_ClassMetric):
    def metric_info(self, preds: np.ndarray, trues: np.ndarray) -> float:
        return float(_sklearn().precision_score(trues.astype(int), _predicted(preds), average=self.averaging(preds),
                                             zero_division=0))


class ClassRecall(_ClassMetric):
    def metric_info(self, preds: np.ndarray, trues: np.ndarray) -> float:
        return float(_sklearn().recall_score(trues.astype(int), _predicted(preds), average=self.averaging(preds),
                                          zero_division=0))


class F1(_ClassMetric):
    def metric_info(self, preds: np.ndarray, trues: np.ndarray) -> float:
        return float(_sklearn().f1_score(trues.astype(int), _predicted(preds), average=self.averaging(preds),
                                      zero_division=0))
