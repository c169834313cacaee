"""The IFM family's FM warm start in one command (``stage: both``), on RecBole's own ``Trainer.fit``.

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

from recbole_ext.model.context_aware.ifm import reference_fm, warm_start
from recbole_ext.model.context_aware.regression import regress_raw_score
from recbole_ext.distributed import broadcast_model
from recbole_ext.trainer.base import PluginTrainerMixin


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


class IFMTrainer(PluginTrainerMixin, Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.fm_file: str | None = None
        self.fm_valid_scores: list[float] = []

    @property
    def valid_curve(self) -> list[float]:
        return self.fm_valid_scores + self.valid_scores

    @staticmethod
    def max_epochs(config) -> int:
        return config["epochs"] + ((config["fm_epochs"] or config["epochs"]) if trains_fm(config) else 0)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if not trains_fm(self.config):
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        config, name = self.config, self.config["model"]
        fm = reference_fm(get_model("FM")(config, train_data._dataset), config).to(config["device"])
        if config["loss_type"] == "MSE":  # the reference's FM regresses the ±1 labels on its raw score
            regress_raw_score(fm)
        fm_epochs = config["fm_epochs"] or config["epochs"]
        with overridden(config, model="FM", learner=config["fm_learner"], learning_rate=config["fm_learning_rate"],
                        epochs=fm_epochs):
            stage = FMStageTrainer(config, fm)
            self._ensure_fingerprint(train_data)
            stage.join_run(self)  # its -fm.pth is this run's file: same exclusivity, same fingerprint
            stage.resuming = self.resuming
            stage.saved_model_file = self.fm_file = self.saved_model_file.replace(".pth", "-fm.pth")
            stage.stage_label = f"{name} stage 1/2 (FM warm start; {name} follows) "
            self.logger.info(f"{name} stage 1/2: train FM for the warm start")
            stage.fit(train_data, valid_data, verbose, True, show_progress, callback_fn)  # the best FM is needed
        self.fm_valid_scores, done = stage.valid_scores, len(stage.train_seconds)
        if self.rank == 0:  # the one writer holds the file; other workers get the weights from it
            self.logger.info(f"{name} stage 2/2: start from the best FM "
                             f"({warm_start(self.model, self.fm_file, config['dataset'])} tensors copied)")
        broadcast_model(self.model)
        self.stage_label, self.stage = f"{name} stage 2/2 ", 1
        shifted = (lambda epoch, score: callback_fn(done + epoch, score)) if callback_fn else None
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, shifted)
        self.stage_epochs.update({"fm": done, name: len(self.train_seconds)})  # after fit: its progress line reads them
        self.train_seconds, self.valid_seconds = stage.train_seconds + self.train_seconds, \
            stage.valid_seconds + self.valid_seconds
        return result
