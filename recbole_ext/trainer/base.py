"""What the plugin adds to RecBole's ``Trainer``, as a mixin so any RecBole trainer can take it.

:class:`PluginTrainerMixin` coordinates; each job is a collaborator that can be used and tested alone:

* evaluation under ``eval_protocol: comirec`` (ComiRec's order-aware NDCG) and ``fixed_negatives`` (candidate
  scoring and the pessimistic rank): :mod:`recbole_ext.trainer.evaluate`;
* ``stopping_rule: rechorus`` (besides RecBole's ``stopping_step``, stop once more than 20 evaluations have run and
  the last 10 valid scores never increased; ReChorus BaseRunner rule a) and ``time_budget: SECONDS`` (stop at the
  first validation after that much time in one ``fit`` call, one stage of a multi-stage trainer):
  :mod:`recbole_ext.trainer.stopping`;
* ``no_bias_decay`` and ``fused_optimizer`` (default on; torch's fused single-kernel update where it has one):
  :mod:`recbole_ext.trainer.optimizer`;
* ``malloc_reuse`` and ``flush_denormal`` (default on, :mod:`recbole_ext.cpu`): glibc keeps freed memory for the
  next step instead of unmapping it, and float32 denormals are flushed to zero (each was a slow path on x86);
* ``reproducibility`` (RecBole's flag, default on) also switches torch to its deterministic kernels, so one seed
  gives one result on a multi-threaded CPU too;
* after every validation, one log line says where the run stands and how long it can still take:
  :mod:`recbole_ext.trainer.progress`;
* **resume**: after every epoch the trainer writes ``<checkpoint>-resume.pth`` (:mod:`recbole_ext.trainer.resume`:
  model, optimizer, epoch, best score and result, early-stopping counter, curves, and every random state the next
  epoch draws from), marked ``finished`` when ``fit`` ends. A trainer with ``resuming = True`` continues from that
  file (a finished stage is skipped), so an interrupted run reaches the uninterrupted run's metrics. Each stage of a
  multi-stage trainer has its own file beside its own checkpoint (``-pretrain-resume.pth``, ``-fm-resume.pth``;
  every name is :mod:`recbole_ext.checkpoints`');
* **atomic checkpoints**: every file is written to a temporary name and renamed, so a kill mid-write leaves the
  previous file intact; a run never replaces a file it did not write (:mod:`recbole_ext.trainer.run_files`);
* **data-parallel training** (``distributed_workers`` > 0, inside a process group that a launcher such as
  :mod:`recbole_ext.distributed` starts; :mod:`recbole_ext.trainer.ddp`): each worker trains on its rows of every
  global batch through ``DistributedDataParallel``; rank 0 evaluates and broadcasts the result and alone writes
  files; stop decisions are rank 0's.
"""

from __future__ import annotations

import os
from time import perf_counter

import torch
from recbole.trainer import Trainer
from recbole.utils import get_trainer

from recbole_ext import checkpoints, cpu
from recbole_ext.checkpoints import FINGERPRINT_KEY, fingerprint, unique_checkpoint
from recbole_ext.data.guard import NeedsPluginTrainer
from recbole_ext.files import remove_leftovers
from recbole_ext.trainer import resume
from recbole_ext.trainer.ddp import Shard, agreed, from_rank0, mean_loss, world, wrap
from recbole_ext.trainer.evaluate import (candidate_ranks, collect_comirec_ndcg, forget_comirec, is_comirec,
                                          is_fixed_negatives)
from recbole_ext.trainer.optimizer import fused, without_bias_decay
from recbole_ext.trainer.progress import progress_line
from recbole_ext.trainer.run_files import RunFiles
from recbole_ext.trainer.stopping import Stop, TimeBudget, stopping_rule


class PluginTrainerMixin:
    """Coordinates the collaborators listed in the module docstring around RecBole's own ``fit``."""

    def __init__(self, config, model):
        # RecBole's ``reproducibility`` makes cuDNN deterministic only. On CPU with several threads, torch's
        # accumulating scatters (the backward of embedding lookups and of advanced indexing) add in thread order, so
        # two processes with one seed drift apart (measured: the 7th digit of the loss after 10 steps, test Recall@20
        # 0.028 against 0.037 after one Re4 epoch). Ask torch for its deterministic kernels as well.
        torch.use_deterministic_algorithms(bool(config["reproducibility"]), warn_only=True)
        cpu.apply(config)
        super().__init__(config, model)
        # RecBole names the file after the second the run started, so two runs started in one second shared it
        self.saved_model_file = unique_checkpoint(self.saved_model_file)
        self.files = RunFiles(self.saved_model_file)  # this run's files: their first write is exclusive
        self.fingerprint: dict | None = None  # the dataset's (recbole_ext.checkpoints), stored in every file
        config["data_path"] = os.path.abspath(config["data_path"])  # stored absolute: usable from any folder
        self.rank, self.world_size = world() if config["distributed_workers"] else (0, 1)
        self.ddp = wrap(model, config)  # None: this process trains alone
        self.trained_rows = 0  # rows this process trained on, all epochs (throughput of a worker)
        self.train_losses: list[float] = []  # per epoch, all stages (summed over a tuple of losses)
        self.valid_scores: list[float] = []
        self.train_seconds: list[float] = []  # per epoch, for benchmarks and sweeps
        self.valid_seconds: list[float] = []
        self.stage_epochs: dict[str, int] = {}  # epochs per stage, for multi-stage trainers
        self.stage_label = ""  # e.g. "stage 1/2 (pretrain) ", for the progress line
        self.stage = 0  # index of the running stage of a multi-stage trainer (sweeps rank on the last one)
        self.resuming = False  # continue each stage from its resume file when one exists
        self._fit_data = (None, None)  # (train_data, valid_data) of the running fit, for the resume file
        self._saving = False  # set by fit: no resume file outside fit, nor for fit(saved=False) (no checkpoint either)

    @property
    def valid_curve(self) -> list[float]:
        """Valid score of every evaluation in order (all stages)."""
        return self.valid_scores

    @staticmethod
    def max_epochs(config) -> int:
        """Most epochs ``fit`` can run (a sweep scheduler's horizon)."""
        return config["epochs"]

    def _build_optimizer(self, **kwargs):
        if self.config["no_bias_decay"] and "params" not in kwargs:
            kwargs["params"] = without_bias_decay(self.model)
        optimizer = super()._build_optimizer(**kwargs)
        return optimizer if self.config["fused_optimizer"] is False else fused(optimizer)

    def evaluate(self, eval_data, *args, **kwargs):
        if isinstance(eval_data, NeedsPluginTrainer):
            eval_data.trainer_ready = True
        forget_comirec(self.eval_collector)
        return super().evaluate(eval_data, *args, **kwargs)

    def _full_sort_batch_eval(self, batched_data):
        interaction, _, positive_u, positive_i = batched_data
        full_sort = super()._full_sort_batch_eval
        if is_comirec(interaction):  # RecBole scores it; the order-aware NDCG is added if asked for
            result = full_sort(batched_data)
            collect_comirec_ndcg(self.eval_collector, result[1], interaction, self.config["topk"])
            return result
        if not is_fixed_negatives(interaction):
            return full_sort(batched_data)
        ranks = candidate_ranks(self.model, interaction, self.device, lambda: full_sort(batched_data)[1])
        return interaction, ranks, positive_u, positive_i

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """RecBole's fit; the plugin's stop rules end it from the per-validation callback, which RecBole calls
        after saving an improved checkpoint, so the best model is kept whatever rule stops the run."""
        budget = TimeBudget(self.config["time_budget"])
        self._fit_data, self._saving = (train_data, valid_data), saved
        self._check_fit_data(train_data)
        if self.resuming and self._resume_stage(train_data):
            return self.best_valid_score, self.best_valid_result  # this stage had finished
        rule = stopping_rule(self.config, self.valid_scores)

        def callback(epoch: int, score: float) -> None:
            self._save_resume(epoch)  # after RecBole saved an improved model: the file always has the best so far
            self.logger.info(progress_line(self, epoch, budget))
            if callback_fn:
                callback_fn(epoch, score)
            if rule.update(score):
                raise Stop(rule.message, "stopping_rule")
            if budget and self._agreed(budget.spent()):
                raise Stop(budget.message, "time_budget")

        first = len(self.train_seconds)
        try:
            super().fit(train_data, valid_data, verbose, saved, show_progress, callback)
            ran = len(self.train_seconds) - first  # RecBole's own rule ends fit early without telling why
            self.stop_reason = "epochs" if self.start_epoch + ran >= self.epochs else "stopping_step"
        except Stop as stop:
            self.logger.info(f"Finished training: {stop}")
            self.stop_reason = stop.reason
        self._save_resume(self.epochs - 1, finished=True)
        return self.best_valid_score, self.best_valid_result

    def _check_fit_data(self, train_data) -> None:
        """Refuse a user task without its head; mark plugin data as driven by the plugin trainer; fingerprint it."""
        if self.config["task"] == "user_classification" and not hasattr(self.model, "user_head"):
            raise ValueError(f"task user_classification: {self.config['model']} was built without a user head; "
                             "run it with run_recbole_ext.py or recbole_ext.run(), which add one")
        if isinstance(train_data, NeedsPluginTrainer):  # data RecBole's plain Trainer would consume wrongly
            train_data.trainer_ready = True
        self._ensure_fingerprint(train_data)

    def _resume_stage(self, train_data) -> bool:
        """Continue this stage from its resume file when there is one. -> whether the stage had finished."""
        if self._writer:  # a killed process of this run may have left temporary files
            for path in (self.saved_model_file, self.resume_file):
                remove_leftovers(path)
        return os.path.isfile(self.resume_file) and self._load_resume(train_data)

    @property
    def _alone(self) -> bool:
        """Whether this process trains without other workers (nothing to share with them)."""
        return self.ddp is None or self.world_size == 1

    def _agreed(self, flag: bool) -> bool:
        """Rank 0's answer on every worker (a clock-based decision must not differ between workers)."""
        return flag if self._alone else agreed(flag)

    @property
    def _writer(self) -> bool:
        """Whether this process writes files: one writer per run (rank 0 of ours or of RecBole's own DDP)."""
        return self.rank == 0 and (self.config["single_spec"] or self.config["local_rank"] == 0)

    @property
    def resume_file(self) -> str:
        return checkpoints.resume_file(self.saved_model_file)

    def _ensure_fingerprint(self, train_data) -> None:
        """The dataset's fingerprint, once per run (hashing the files is one read of them)."""
        if self.fingerprint is None:
            self.fingerprint = fingerprint(self.config, getattr(train_data, "_dataset", None))

    def join_run(self, parent: "PluginTrainerMixin") -> None:
        """Write as part of ``parent``'s run (a stage trainer): its file names, written files and fingerprint."""
        self.files, self.fingerprint = parent.files, parent.fingerprint

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole 1.2.1's checkpoint (``Trainer._save_checkpoint``'s keys) plus the dataset fingerprint, written
        atomically."""
        target = kwargs.pop("saved_model_file", self.saved_model_file)
        if not self._writer:
            return
        state = {"config": self.config, "epoch": epoch, "cur_step": self.cur_step,
                 "best_valid_score": self.best_valid_score, "state_dict": self.model.state_dict(),
                 "other_parameter": self.model.other_parameter(), "optimizer": self.optimizer.state_dict(),
                 FINGERPRINT_KEY: self.fingerprint}
        self.files.save(state, target)
        if verbose:
            self.logger.info(f"Saving current: {target}")

    def _save_resume(self, epoch: int, finished: bool = False) -> None:
        """Everything the next epoch needs (:func:`recbole_ext.trainer.resume.capture`), in ``resume_file``."""
        if not self._saving or not self._writer:
            return
        self.files.save(resume.capture(self, epoch, finished, self._fit_data[0]), self.resume_file)

    def _load_resume(self, train_data) -> bool:
        """Restore the state of ``resume_file``. -> whether that stage had finished."""
        state = torch.load(self.resume_file, map_location=self.device, weights_only=False)
        resume.check_same_run(state, self, self.resume_file)  # before any write
        resume.restore(self, state, train_data)
        done = "finished; skipped" if state["finished"] else f"continues at epoch {self.start_epoch + 1}"
        self.logger.info(f"{self.stage_label}resumed from {self.resume_file}: {done}")
        return state["finished"]

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        start = perf_counter()
        if self.ddp is None:
            loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
            self.trained_rows += train_data.sample_size if hasattr(train_data, "sample_size") else 0
        else:  # this worker's rows of every global batch; DDP averages the gradients in backward
            shard = Shard(train_data, self.rank, self.world_size)
            loss = super()._train_epoch(shard, epoch_idx, loss_func=self.ddp, **kwargs)
            self.trained_rows += shard.rows
            loss = mean_loss(loss, self.world_size)  # the epoch loss of all workers, as one process would log it
        self.train_seconds.append(perf_counter() - start)
        self.train_losses.append(float(sum(loss) if isinstance(loss, tuple) else loss))
        if self.eval_step <= 0 or not self._fit_data[1] or (epoch_idx + 1) % self.eval_step:
            self._save_resume(epoch_idx)  # no validation follows: the epoch ends here
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        start = perf_counter()
        valid = super()._valid_epoch
        if self._alone:
            score, result = valid(valid_data, show_progress=show_progress)
        else:  # rank 0 evaluates everything; all workers then take the same early-stopping decision
            score, result = from_rank0(lambda: valid(valid_data, show_progress=show_progress), self.rank)
        self.valid_seconds.append(perf_counter() - start)
        self.valid_scores.append(score)
        return score, result


def default_trainer(model_class: type) -> type:
    """``<Model>Trainer`` for a plugin model that declares none: RecBole's Trainer with the mixin."""
    return type(f"{model_class.__name__}Trainer", (PluginTrainerMixin, Trainer), {"__module__": __name__})


class UserTaskTrainer(PluginTrainerMixin, Trainer):
    """``task: user_classification``, any model: one stage, the user head and the model trained together."""


def resolve_trainer(config) -> type:
    """The trainer RecBole would pick for the config's model, with the mixin added if it lacks it."""
    if config["task"] == "user_classification":
        return UserTaskTrainer
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])
    if issubclass(trainer, PluginTrainerMixin):
        return trainer
    return type(trainer.__name__, (PluginTrainerMixin, trainer), {"__module__": __name__})
