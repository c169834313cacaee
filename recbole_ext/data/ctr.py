"""Data rules of the CTR protocol that RecBole's ``Dataset`` lacks, as two wraps installed with the other data
hooks (:func:`recbole_ext.data.hooks.install_hooks`); both do nothing unless their key is set.

* ``feedback_field`` (set by models that read per-interaction feedback, e.g. MARIF's ``rating``): RecBole's
  ``threshold`` derives the label from that field and then **drops** it (``Dataset._set_label_by_threshold``);
  here it is kept beside the label. Models that do not ask keep RecBole's behaviour, so RecBole's context-aware
  models never see the rating as a feature of its own row.
* ``loss_type: MSE`` on one of RecBole's raw-score CTR models (``protocol: libfm``): the train loader is
  :class:`RegressionTrainLoader`, which RecBole's plain ``Trainer`` may not iterate (it would fit BCE on ±1 labels).
* ``eval_seen_only`` (``protocol: ctr`` sets ``[item_id]``): valid/test rows whose value of one of these fields
  never occurs in the training split are dropped, as MARIF's reference keeps only test rows of items seen in
  training; every model of one protocol then scores the same rows.
"""

from __future__ import annotations

from logging import getLogger

import numpy as np
from recbole.data.dataloader import TrainDataLoader
from recbole.data.dataset import Dataset

from recbole_ext.data.guard import NeedsPluginTrainer

RAW_SCORE_MODELS = frozenset({"AFM", "AutoInt", "DCN", "DeepFM", "DSSM", "EulerNet", "FFM", "FiGNN", "FM", "FNN",
                              "FwFM", "LR", "NFM", "PNN", "WideDeep", "xDeepFM"})  # raw score, then sigmoid


def needs_regression(config) -> bool:
    """A RecBole CTR model asked for squared error (``loss_type: MSE``, set by ``protocol: libfm``)."""
    return config["model"] in RAW_SCORE_MODELS and config["loss_type"] == "MSE"


class RegressionTrainLoader(NeedsPluginTrainer, TrainDataLoader):
    """RecBole's TrainDataLoader, refusing RecBole's plain Trainer."""

    refusal = ("protocol libfm: RecBole's own Trainer would train {model} with BCE on ±1 labels; run it with "
               "recbole_ext.run() or run_recbole_ext.py")


def _keep_feedback(set_label):
    def set_label_keeping_feedback(self):
        field = self.config["feedback_field"]
        if not field or field not in (self.config["threshold"] or {}) or field not in self.inter_feat:
            return set_label(self)
        column = self.inter_feat[field].copy()
        properties = (self.field2type[field], self.field2source[field], self.field2seqlen[field])
        set_label(self)
        self.inter_feat[field] = column
        self.set_field_property(field, *properties)

    return set_label_keeping_feedback


def _seen_only(build):
    def build_seen_only(self):
        splits = build(self)
        fields = self.config["eval_seen_only"] or []
        if not fields or len(splits) < 2:
            return splits
        train, kept = splits[0], [splits[0]]
        for split in splits[1:]:
            keep = np.ones(len(split.inter_feat), dtype=bool)
            for field in fields:
                keep &= np.isin(split.inter_feat[field].numpy(), train.inter_feat[field].numpy())
            if not keep.all():
                getLogger().info(f"eval_seen_only: {int((~keep).sum())} of {len(keep)} rows dropped (a {fields} "
                                 "value absent from the training split)")
            kept.append(split.copy(split.inter_feat[keep]) if not keep.all() else split)
        return kept

    return build_seen_only


def install() -> None:
    """Wrap ``Dataset._set_label_by_threshold`` and ``Dataset.build`` once."""
    if getattr(Dataset.build, "_recbole_ext", False):
        return
    Dataset._set_label_by_threshold = _keep_feedback(Dataset._set_label_by_threshold)
    Dataset.build = _seen_only(Dataset.build)
    Dataset.build._recbole_ext = True
