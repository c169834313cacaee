"""TiMiRec's two stages (the flow of :class:`~recbole_ext.trainer.two_stage.TwoStageTrainer`).

``stage: both`` runs ``fit`` twice on one trainer and model: first in pretrain mode (extractor only, best-valid
checkpoint saved beside the final one as ``*-pretrain.pth``), then reloads the best extractor, resets optimizer and
early stopping, switches the model to finetune mode and fits again. ``stage: finetune`` loads the extractor from
``pretrain_path`` (a checkpoint of a ``stage: pretrain`` run) and fails if it is missing or does not match.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from recbole_ext.trainer.two_stage import TwoStageTrainer

# settings an extractor checkpoint must share with the run that loads it
MATCHING_KEYS = ("model", "dataset", "n_interests", "embedding_size", "attn_size", "add_pos", "add_trm",
                 "MAX_ITEM_LIST_LENGTH")


class TiMiRecTrainer(TwoStageTrainer):
    FIRST_STAGE = "pretrain"

    @staticmethod
    def two_stages(config) -> bool:
        return config["stage"] == "both"

    @property
    def pretrain_file(self) -> str | None:
        """The pretrain stage's checkpoint of a ``stage: both`` run (``recbole_ext.run`` tests its model too)."""
        return self.first_file

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

    def _restart(self) -> None:
        """Fresh optimizer and early stopping for the next stage."""
        self.optimizer = self._build_optimizer()
        self.start_epoch, self.cur_step = 0, 0
        self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
        self.best_valid_result = None
        self.first_valid_scores, self.valid_scores = self.valid_scores, []

    def _fit_one(self, train_data, valid_data, verbose, saved, show_progress, callback_fn):
        stage = self.config["stage"]
        if stage == "finetune":
            self.load_extractor(self.config["pretrain_path"])
        result = self._fit_stage(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self.stage_epochs[stage] = len(self.train_seconds)
        return result

    def _fit_first(self, train_data, valid_data, verbose, show_progress, callback_fn) -> int:
        """Pretrain on this trainer and model (extractor only), saving to ``first_file``."""
        final_file, self.saved_model_file = self.saved_model_file, self.first_file
        self.model.mode = "pretrain"
        self.stage_label = "TiMiRec stage 1/2 (pretrain; the finetune stage follows) "
        self.logger.info("TiMiRec stage 1/2: pretrain the multi-interest extractor")
        self._fit_stage(train_data, valid_data, verbose, True, show_progress, callback_fn)
        self.stage_epochs["pretrain"] = done = len(self.train_seconds)
        self.saved_model_file = final_file
        return done

    def _hand_over(self) -> None:
        self.load_extractor(self.first_file)

    def _start_second(self) -> None:
        self.model.mode = "finetune"
        self._restart()
        self.stage_label = "TiMiRec stage 2/2 (finetune) "
        self.logger.info("TiMiRec stage 2/2: finetune with target-interest distillation")

    def _end_second(self, done: int) -> None:
        self.stage_epochs["finetune"] = len(self.train_seconds) - done
