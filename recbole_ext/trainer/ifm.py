"""The IFM family's FM warm start in one command (``stage: both``): the flow of
:class:`~recbole_ext.trainer.two_stage.TwoStageTrainer`, its first stage on a trainer of its own.

Stage 1 trains the reference FM on the same data (``fm_epochs``, ``fm_learner``, ``fm_learning_rate``): RecBole's
``FM`` with the reference FM.py's batch norm and dropout on its Bi-Interaction vector (``fm_batch_norm``,
``fm_dropout``; :func:`~recbole_ext.model.context_aware.ifm.reference_fm`); with ``loss_type: MSE`` its loss is the
squared error on the raw score, as FM.py regresses ±1 labels. Its best-valid checkpoint is kept beside the final one
as ``*-fm.pth``: a RecBole FM checkpoint (plus the norm's tensors under ``fm.norm.`` when ``fm_batch_norm`` is on)
that ``pretrain_path`` of a later run can reuse. Stage 2 copies its embeddings and first-order part into the IFM /
INN / DeepIFM model (:func:`~recbole_ext.model.context_aware.ifm.warm_start`) and fits it. With ``pretrain_path`` set
the model already starts from that FM and no FM stage runs; ``stage: ifm`` fits the model alone.
"""

from __future__ import annotations

from contextlib import contextmanager

from recbole.trainer import Trainer
from recbole.utils import get_model

from recbole_ext.model.context_aware.ifm import fm_stage_model, warm_start
from recbole_ext.trainer.base import PluginTrainerMixin
from recbole_ext.trainer.two_stage import TwoStageTrainer


@contextmanager
def overridden(config, **values):
    """Config keys set for the duration of a block (RecBole's trainer reads them at construction and save time)."""
    saved = {key: config[key] for key in values}
    for key, value in values.items():
        config[key] = value
    try:
        yield config
    finally:
        for key, value in saved.items():
            config[key] = value


def trains_fm(config) -> bool:
    """Whether the run trains an FM first: ``stage: both`` without a ``pretrain_path`` (which is the warm start)."""
    return config["stage"] == "both" and not config["pretrain_path"]


class FMStageTrainer(PluginTrainerMixin, Trainer):
    """RecBole's trainer for the FM stage (the plugin's progress line and timings included)."""


class IFMTrainer(TwoStageTrainer):
    FIRST_STAGE = "fm"

    def __init__(self, config, model):
        super().__init__(config, model)
        self._fm_seconds: tuple[list[float], list[float]] = ([], [])  # the FM stage's (train, valid) seconds

    @staticmethod
    def two_stages(config) -> bool:
        return trains_fm(config)

    @staticmethod
    def first_stage_epochs(config) -> int:
        return config["fm_epochs"] or config["epochs"]

    @property
    def fm_file(self) -> str | None:
        """The FM stage's checkpoint (a RecBole FM checkpoint a later run's ``pretrain_path`` can reuse)."""
        return self.first_file

    def _fit_first(self, train_data, valid_data, verbose, show_progress, callback_fn) -> int:
        """Train the reference FM with its own trainer, under the FM settings, saving to ``first_file``."""
        config, name = self.config, self.config["model"]
        fm = fm_stage_model(get_model("FM")(config, train_data._dataset), config).to(config["device"])
        with overridden(config, model="FM", learner=config["fm_learner"], learning_rate=config["fm_learning_rate"],
                        epochs=self.first_stage_epochs(config)):
            stage = FMStageTrainer(config, fm)
            self._ensure_fingerprint(train_data)
            stage.join_run(self)  # its -fm.pth is this run's file: same exclusivity, same fingerprint
            stage.resuming = self.resuming
            stage.saved_model_file = self.first_file
            stage.stage_label = f"{name} stage 1/2 (FM warm start; {name} follows) "
            self.logger.info(f"{name} stage 1/2: train FM for the warm start")
            stage.fit(train_data, valid_data, verbose, True, show_progress, callback_fn)
        self.first_valid_scores, self._fm_seconds = stage.valid_scores, (stage.train_seconds, stage.valid_seconds)
        return len(stage.train_seconds)

    def _hand_over(self) -> None:
        copied = warm_start(self.model, self.first_file, self.config["dataset"])
        self.logger.info(f"{self.config['model']} stage 2/2: start from the best FM ({copied} tensors copied)")

    def _start_second(self) -> None:
        self.stage_label = f"{self.config['model']} stage 2/2 "

    def _end_second(self, done: int) -> None:
        # after the model's fit: its progress line counts its own epochs only
        self.stage_epochs.update({"fm": done, self.config["model"]: len(self.train_seconds)})
        train_seconds, valid_seconds = self._fm_seconds
        self.train_seconds, self.valid_seconds = train_seconds + self.train_seconds, valid_seconds + self.valid_seconds
