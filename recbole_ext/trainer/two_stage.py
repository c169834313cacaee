"""Two stages in one run on RecBole's own ``Trainer.fit`` (no second training loop).

A first stage is trained and its best-valid checkpoint kept beside the run's own
(``<checkpoint>-<FIRST_STAGE>.pth``, :func:`recbole_ext.checkpoints.stage_file`); rank 0 hands its weights over to
the model (the other workers get them by broadcast), and the model's own stage is fitted, its epochs numbered on
after the first stage's in ``callback_fn``. A subclass says only what differs: whether a run has the first stage,
what that stage trains, how its weights pass on, and the bookkeeping of each stage — TiMiRec's extractor
pretraining (:mod:`recbole_ext.trainer.timirec`) and the IFM family's FM warm start (:mod:`recbole_ext.trainer.ifm`).
"""

from __future__ import annotations

from recbole.trainer import Trainer

from recbole_ext.checkpoints import stage_file
from recbole_ext.trainer.base import PluginTrainerMixin
from recbole_ext.trainer.ddp import broadcast_model


class TwoStageTrainer(PluginTrainerMixin, Trainer):
    FIRST_STAGE: str  # the first stage's name in its checkpoint's (one of recbole_ext.checkpoints.FIRST_STAGES)

    def __init__(self, config, model):
        super().__init__(config, model)
        self.first_file: str | None = None  # the first stage's checkpoint, once that stage runs
        self.first_valid_scores: list[float] = []

    @property
    def valid_curve(self) -> list[float]:
        return self.first_valid_scores + self.valid_scores

    @staticmethod
    def two_stages(config) -> bool:
        """Whether a run of ``config`` trains the first stage before the model's own."""
        raise NotImplementedError

    @staticmethod
    def first_stage_epochs(config) -> int:
        """Most epochs of the first stage."""
        return config["epochs"]

    @classmethod
    def max_epochs(cls, config) -> int:
        return config["epochs"] + (cls.first_stage_epochs(config) if cls.two_stages(config) else 0)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """The first stage, the handover of its best model, then the model's own stage (one stage when
        :meth:`two_stages` says so). -> the model's stage's (best valid score, best valid result)."""
        if not self.two_stages(self.config):
            return self._fit_one(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self.first_file = stage_file(self.saved_model_file, self.FIRST_STAGE)
        # the best first-stage model is needed for the handover, so that stage always saves
        done = self._fit_first(train_data, valid_data, verbose, show_progress, callback_fn)
        if self.rank == 0:  # the one writer holds the file; other workers get the weights from it
            self._hand_over()
        broadcast_model(self.model)
        self.stage = 1
        self._start_second()
        shifted = (lambda epoch, score: callback_fn(done + epoch, score)) if callback_fn else None
        result = self._fit_stage(train_data, valid_data, verbose, saved, show_progress, shifted)
        self._end_second(done)
        return result

    def _fit_stage(self, *args):
        """One stage on this trainer: the plugin trainer's ``fit``."""
        return super().fit(*args)

    def _fit_one(self, *args):
        """A run without the first stage: the model's stage alone."""
        return self._fit_stage(*args)

    def _fit_first(self, train_data, valid_data, verbose, show_progress, callback_fn) -> int:
        """Train the first stage, saving its best model as ``first_file``. -> the epochs it ran."""
        raise NotImplementedError

    def _hand_over(self) -> None:
        """Load ``first_file``'s weights into the model (rank 0 alone)."""
        raise NotImplementedError

    def _start_second(self) -> None:
        """Prepare the model's stage, after the handover (every worker)."""
        raise NotImplementedError

    def _end_second(self, done: int) -> None:
        """The run's bookkeeping after the model's stage; ``done``: the first stage's epochs."""
        raise NotImplementedError
