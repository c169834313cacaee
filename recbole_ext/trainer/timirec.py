"""TiMiRec's two stages on RecBole's own ``Trainer.fit`` (no second training loop).

``stage: both`` runs ``fit`` twice on one model: first in pretrain mode (extractor only, best-valid checkpoint
saved beside the final one as ``*-pretrain.pth``), then reloads the best extractor, resets optimizer and early
stopping, switches the model to finetune mode and fits again. ``stage: finetune`` loads the extractor from
``pretrain_path`` (a checkpoint of a ``stage: pretrain`` run) and fails if it is missing or does not match.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from recbole.trainer import Trainer

from recbole_ext.distributed import broadcast_model
from recbole_ext.trainer.base import PluginTrainerMixin

# settings an extractor checkpoint must share with the run that loads it
MATCHING_KEYS = ("model", "dataset", "n_interests", "embedding_size", "attn_size", "add_pos", "add_trm",
                 "MAX_ITEM_LIST_LENGTH")


class TiMiRecTrainer(PluginTrainerMixin, Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.pretrain_file: str | None = None
        self.pretrain_valid_scores: list[float] = []

    @property
    def valid_curve(self) -> list[float]:
        return self.pretrain_valid_scores + self.valid_scores

    @staticmethod
    def max_epochs(config) -> int:
        return config["epochs"] * (2 if config["stage"] == "both" else 1)

    def load_extractor(self, path: str | None) -> None:
        """Copy ``extractor.*`` from a TiMiRec checkpoint into the model (partial load, nothing frozen)."""
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"pretrain_path: {path!r} is not a file; run with stage=pretrain first and "
                                    "pass its checkpoint, or use stage=both")
        checkpoint = torch.load(path, map_location=self.device)
        saved = checkpoint["config"]
        for key in MATCHING_KEYS:
            if saved[key] != self.config[key]:
                raise ValueError(f"pretrain_path: {path} has {key}={saved[key]!r} but this run has "
                                 f"{key}={self.config[key]!r}")
        prefix = "extractor."
        state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        self.model.extractor.load_state_dict(state)
        self.logger.info(f"Loaded the pretrained extractor from {path}")

    def _restart(self, saved_model_file: str) -> None:
        """Fresh optimizer and early stopping for the next stage."""
        self.optimizer = self._build_optimizer()
        self.start_epoch, self.cur_step = 0, 0
        self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
        self.best_valid_result = None
        self.pretrain_valid_scores, self.valid_scores = self.valid_scores, []
        self.saved_model_file = saved_model_file

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        stage = self.config["stage"]
        if stage == "finetune":
            self.load_extractor(self.config["pretrain_path"])
        if stage != "both":
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            self.stage_epochs[stage] = len(self.train_seconds)
            return result

        final_file = self.saved_model_file
        self.pretrain_file = final_file.replace(".pth", "-pretrain.pth")
        self.saved_model_file = self.pretrain_file
        self.model.mode = "pretrain"
        self.stage_label = "TiMiRec stage 1/2 (pretrain; the finetune stage follows) "
        self.logger.info("TiMiRec stage 1/2: pretrain the multi-interest extractor")
        # the best extractor is needed for the handover, so this stage always saves
        super().fit(train_data, valid_data, verbose, True, show_progress, callback_fn)
        self.stage_epochs["pretrain"] = done = len(self.train_seconds)
        if self.rank == 0:  # the one writer holds the file; other workers get the weights from it
            self.load_extractor(self.pretrain_file)
        broadcast_model(self.model)

        self.model.mode, self.stage = "finetune", 1
        self._restart(final_file)
        self.stage_label = "TiMiRec stage 2/2 (finetune) "
        self.logger.info("TiMiRec stage 2/2: finetune with target-interest distillation")
        shifted = (lambda epoch, score: callback_fn(done + epoch, score)) if callback_fn else None
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, shifted)
        self.stage_epochs["finetune"] = len(self.train_seconds) - done
        return result
