"""What the plugin adds to RecBole's ``Trainer``, as a mixin so any RecBole trainer can take it.

* evaluation under ``eval_protocol: comirec``: RecBole's full-sort evaluation plus ComiRec's order-aware NDCG of
  each batch (``rec.comirec_ndcg``, read by the ``ComiRecNDCG`` metric);
* evaluation under ``eval_protocol: fixed_negatives``: ``model.predict_candidates(interaction, candidates)``
  ([B, 1+N]) when the model has it, else one ``full_sort_predict`` with the candidate columns gathered; then the
  pessimistic rank (see :mod:`recbole_ext.data.protocol`);
* ``stopping_rule: rechorus``: besides RecBole's ``stopping_step``, stop once more than 20 evaluations have run
  and the last 10 valid scores never increased (ReChorus BaseRunner rule a);
* ``no_bias_decay: True``: weight decay on every parameter except those named ``*bias*`` (ReChorus);
* ``malloc_reuse`` and ``flush_denormal`` (default on, :mod:`recbole_ext.cpu`): glibc keeps freed memory for the
  next step instead of unmapping it, and float32 denormals are flushed to zero (each was a slow path on x86);
* ``fused_optimizer`` (default on): RecBole's optimizer in torch's fused single-kernel form where torch has one
  (Adam, AdamW, SGD, Adagrad on CPU and GPU): the same update, several times faster than the per-tensor loop on
  the large embedding tables;
* ``time_budget: SECONDS``: stop at the first validation after that much time in one ``fit`` call (one stage of a
  multi-stage trainer), for benchmarks and sweeps;
* ``reproducibility`` (RecBole's flag, default on) also switches torch to its deterministic kernels, so one seed
  gives one result on a multi-threaded CPU too;
* after every validation, one log line says where the run stands and how long it can still take (epochs and time
  left until early stopping at the latest, and until the epoch limit or time budget);
* **resume**: after every epoch the trainer writes ``<checkpoint>-resume.pth`` (model, optimizer, epoch, best score
  and result, early-stopping counter, curves, and every random state the next epoch draws from: torch, numpy,
  Python, and each ``torch.Generator`` held by the train loader or a model module), marked ``finished`` when ``fit``
  ends. A trainer with ``resuming = True`` continues from that file (a finished stage is skipped), so an
  interrupted run reaches the uninterrupted run's metrics. Each stage of a multi-stage trainer has its own file
  beside its own checkpoint (``-pretrain-resume.pth``, ``-fm-resume.pth``);
* **atomic checkpoints**: every file is written to a temporary name and renamed, so a kill mid-write leaves the
  previous file intact;
* **data-parallel training** (``distributed_workers`` > 0, inside a process group; :mod:`recbole_ext.distributed`
  sets it up): each worker trains on its rows of every global batch through ``DistributedDataParallel``; rank 0
  evaluates and broadcasts the result and alone writes files; stop decisions are rank 0's.
"""

from __future__ import annotations

import os
import random
from time import perf_counter

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import get_trainer

from recbole_ext import cpu, distributed
from recbole_ext.checkpoints import FINGERPRINT_KEY, check_unchanged, fingerprint, unique_checkpoint
from recbole_ext.data.comirec import TARGETS
from recbole_ext.data.guard import NeedsPluginTrainer
from recbole_ext.data.protocol import CANDIDATES
from recbole_ext.evaluation.comirec import KEY as COMIREC_KEY
from recbole_ext.evaluation.comirec import comirec_ndcg
from recbole_ext.evaluation.ranking import rank_scores
from recbole_ext.files import remove_leftovers, replace_file


RESUME_SUFFIX = "-resume.pth"


class _Stop(Exception):
    """Ends ``Trainer.fit`` early on a plugin stop rule."""


def atomic_save(obj, path: str) -> None:
    """``torch.save`` through a temporary file: readers never see a half-written checkpoint."""
    replace_file(lambda tmp: torch.save(obj, tmp, pickle_protocol=4), path)


def generators(**holders) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` held as an attribute (or a dict value) of the holders or of their modules."""
    found = {}
    for prefix, holder in holders.items():
        parts = holder.named_modules() if isinstance(holder, torch.nn.Module) else [("", holder)]
        for name, obj in parts:
            for attr, value in vars(obj).items():
                values = value.items() if isinstance(value, dict) else [(None, value)]
                for key, item in values:
                    if isinstance(item, torch.Generator):
                        found[".".join(filter(None, (prefix, name, attr))) + (f"[{key}]" if key is not None else "")] = item
    return found


def rng_state(**holders) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {name: g.get_state() for name, g in generators(**holders).items()}}


def set_rng_state(state: dict, **holders) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    found = generators(**holders)
    for name, value in state["generators"].items():
        if name in found:
            found[name].set_state(value)


class PluginTrainerMixin:
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
        self.run_stem = self.saved_model_file[:-len(".pth")]  # this run's files: their first write is exclusive
        self.written: set[str] = set()  # files this run wrote (it may replace those)
        self.fingerprint: dict | None = None  # the dataset's (recbole_ext.checkpoints), stored in every file
        config["data_path"] = os.path.abspath(config["data_path"])  # stored absolute: usable from any folder
        self.rank, self.world_size = distributed.world() if config["distributed_workers"] else (0, 1)
        self.ddp = None
        if config["distributed_workers"] and torch.distributed.is_initialized():
            device = torch.device(config["device"])
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                distributed.LossOf(model), device_ids=[device.index or 0] if device.type == "cuda" else None,
                find_unused_parameters=True)  # e.g. TiMiRec's predictor sits out its pretrain stage
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
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            kwargs["params"] = [
                {"params": [p for n, p in named if "bias" not in n]},
                {"params": [p for n, p in named if "bias" in n], "weight_decay": 0.0},
            ]
        optimizer = super()._build_optimizer(**kwargs)
        if self.config["fused_optimizer"] is False or "fused" not in optimizer.defaults:
            return optimizer
        groups = [{**group, "fused": True, "foreach": None} for group in optimizer.param_groups]
        return type(optimizer)(groups, **{**optimizer.defaults, "fused": True, "foreach": None})

    def evaluate(self, eval_data, *args, **kwargs):
        if isinstance(eval_data, NeedsPluginTrainer):
            eval_data.trainer_ready = True
        if COMIREC_KEY in self.eval_collector.data_struct:  # RecBole's Collector keeps unknown keys across calls
            del self.eval_collector.data_struct[COMIREC_KEY]
        return super().evaluate(eval_data, *args, **kwargs)

    def _full_sort_batch_eval(self, batched_data):
        interaction, _, positive_u, positive_i = batched_data
        if TARGETS in interaction:  # ComiRec protocol: RecBole scores it; add the order-aware NDCG if asked for
            result = super()._full_sort_batch_eval(batched_data)
            if not self.eval_collector.register.need(COMIREC_KEY):
                return result
            top_items = result[1].topk(max(self.config["topk"]), dim=1).indices
            ndcg = comirec_ndcg(top_items, interaction[TARGETS].to(top_items.device), self.config["topk"])
            self.eval_collector.data_struct.update_tensor(COMIREC_KEY, ndcg)
            return result
        if CANDIDATES not in interaction:
            return super()._full_sort_batch_eval(batched_data)
        candidates = interaction[CANDIDATES].to(self.device)  # [B, 1+N], column 0 = target
        scorer = getattr(self.model, "predict_candidates", None)
        if scorer is not None:  # the model scores [B, 1+N] directly
            scores = scorer(interaction.to(self.device), candidates)
        else:  # any RecBole model: one full-sort pass, then the candidate columns
            scores = super()._full_sort_batch_eval(batched_data)[1].gather(1, candidates)
        return interaction, rank_scores(scores), positive_u, positive_i

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """RecBole's fit; the plugin's stop rules end it from the per-validation callback, which RecBole calls
        after saving an improved checkpoint, so the best model is kept whatever rule stops the run."""
        started, budget = perf_counter(), self.config["time_budget"]
        self._fit_data, self._saving = (train_data, valid_data), saved
        if self.config["task"] == "user_classification" and not hasattr(self.model, "user_head"):
            raise ValueError(f"task user_classification: {self.config['model']} was built without a user head; "
                             "run it with run_recbole_ext.py or recbole_ext.run(), which add one")
        if isinstance(train_data, NeedsPluginTrainer):  # data RecBole's plain Trainer would consume wrongly
            train_data.trainer_ready = True
        self._ensure_fingerprint(train_data)
        if self.resuming and self._writer:  # a killed process of this run may have left temporary files
            for path in (self.saved_model_file, self.resume_file):
                remove_leftovers(path)
        if self.resuming and os.path.isfile(self.resume_file) and self._load_resume(train_data):
            return self.best_valid_score, self.best_valid_result  # this stage had finished

        def callback(epoch: int, score: float) -> None:
            self._save_resume(epoch)  # after RecBole saved an improved model: the file always has the best so far
            self.logger.info(self._progress(epoch, started))
            if callback_fn:
                callback_fn(epoch, score)
            last = self.valid_scores[-10:]
            if (self.config["stopping_rule"] == "rechorus" and len(self.valid_scores) > 20
                    and all(a >= b for a, b in zip(last, last[1:]))):
                raise _Stop("the last 10 valid scores never increased (ReChorus rule)")
            if budget and self._agreed(perf_counter() - started > budget):
                raise _Stop(f"time_budget of {budget}s reached")

        first = len(self.train_seconds)
        try:
            super().fit(train_data, valid_data, verbose, saved, show_progress, callback)
            ran = len(self.train_seconds) - first  # RecBole's own rule ends fit early without telling why
            self.stop_reason = "epochs" if self.start_epoch + ran >= self.epochs else "stopping_step"
        except _Stop as stop:
            self.logger.info(f"Finished training: {stop}")
            self.stop_reason = "time_budget" if str(stop).startswith("time_budget") else "stopping_rule"
        self._save_resume(self.epochs - 1, finished=True)
        return self.best_valid_score, self.best_valid_result

    def _agreed(self, flag: bool) -> bool:
        """Rank 0's answer on every worker (a clock-based decision must not differ between workers)."""
        if self.ddp is None or self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)])
        torch.distributed.broadcast(value, src=0)
        return bool(value.item())

    @property
    def _writer(self) -> bool:
        """Whether this process writes files: one writer per run (rank 0 of ours or of RecBole's own DDP)."""
        return self.rank == 0 and (self.config["single_spec"] or self.config["local_rank"] == 0)

    @property
    def resume_file(self) -> str:
        return self.saved_model_file[:-len(".pth")] + RESUME_SUFFIX

    def _ensure_fingerprint(self, train_data) -> None:
        """The dataset's fingerprint, once per run (hashing the files is one read of them)."""
        if self.fingerprint is None:
            self.fingerprint = fingerprint(self.config, getattr(train_data, "_dataset", None))

    def join_run(self, parent: "PluginTrainerMixin") -> None:
        """Write as part of ``parent``'s run (a stage trainer): its file names, written files and fingerprint."""
        self.run_stem, self.written, self.fingerprint = parent.run_stem, parent.written, parent.fingerprint

    def _write(self, save, path: str) -> None:
        """``save(tmp)`` then an atomic rename to ``path``; the first write of one of this run's own files is
        exclusive, so a file another run wrote is never replaced."""
        path = str(path)
        replace_file(save, path, exclusive=path.startswith(self.run_stem) and path not in self.written)
        self.written.add(path)

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
        self._write(lambda tmp: torch.save(state, tmp, pickle_protocol=4), target)
        if verbose:
            self.logger.info(f"Saving current: {target}")

    def _save_resume(self, epoch: int, finished: bool = False) -> None:
        """Everything the next epoch needs; RecBole's checkpoint keys included, so ``resume_checkpoint`` reads it."""
        if not self._saving or not self._writer:
            return
        state = {
            "config": self.config, "epoch": epoch, "cur_step": self.cur_step, "finished": finished,
            "best_valid_score": self.best_valid_score, "best_valid_result": self.best_valid_result,
            "state_dict": self.model.state_dict(), "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "curves": {"valid_scores": self.valid_scores, "train_seconds": self.train_seconds,
                       "valid_seconds": self.valid_seconds, "stage_epochs": self.stage_epochs,
                       "train_losses": self.train_losses},
            "rng": rng_state(train_data=self._fit_data[0], model=self.model), FINGERPRINT_KEY: self.fingerprint,
        }
        self._write(lambda tmp: torch.save(state, tmp, pickle_protocol=4), self.resume_file)

    def _load_resume(self, train_data) -> bool:
        """Restore the state of ``resume_file``. -> whether that stage had finished."""
        state = torch.load(self.resume_file, map_location=self.device, weights_only=False)
        for key in ("model", "dataset"):
            if state["config"][key] != self.config[key]:
                raise ValueError(f"resume: {self.resume_file} is a {key} {state['config'][key]!r} run, not "
                                 f"{self.config[key]!r}")
        check_unchanged(state.get(FINGERPRINT_KEY), self.fingerprint, self.resume_file)  # before any write
        self.model.load_state_dict(state["state_dict"])
        self.model.load_other_parameter(state["other_parameter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch, self.cur_step = state["epoch"] + 1, state["cur_step"]
        self.best_valid_score, self.best_valid_result = state["best_valid_score"], state["best_valid_result"]
        for key, value in state["curves"].items():
            setattr(self, key, value)
        set_rng_state(state["rng"], train_data=train_data, model=self.model)
        done = "finished; skipped" if state["finished"] else f"continues at epoch {self.start_epoch + 1}"
        self.logger.info(f"{self.stage_label}resumed from {self.resume_file}: {done}")
        return state["finished"]

    def _progress(self, epoch: int, started: float) -> str:
        """'epoch 3/200: 8.9 s train + 0.5 s valid; ...' with the epochs and time left at most."""
        stage_epochs = len(self.train_seconds) - sum(self.stage_epochs.values())
        pace = (sum(self.train_seconds[-stage_epochs:]) + sum(self.valid_seconds[-stage_epochs:])) / stage_epochs
        most = self.epochs - (epoch + 1)
        flat = min(most, (self.stopping_step + 1 - self.cur_step) * self.eval_step)
        budget = self.config["time_budget"]
        cap = f" (time budget: {max(budget - (perf_counter() - started), 0) / 60:.1f} min)" if budget else ""
        left = (f"at most {most} more epochs (~{most * pace / 60:.1f} min){cap}" if most else "the stage's last epoch")
        if 0 < flat < most:
            left = f"ends after {flat} more epochs without improvement (~{flat * pace / 60:.1f} min), {left}"
        return (f"{self.stage_label}epoch {epoch + 1}/{self.epochs}: {self.train_seconds[-1]:.1f} s train + "
                f"{self.valid_seconds[-1]:.1f} s valid; best valid {self.best_valid_score:.4f}; {left}")

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        start = perf_counter()
        if self.ddp is None:
            loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
            self.trained_rows += train_data.sample_size if hasattr(train_data, "sample_size") else 0
        else:  # this worker's rows of every global batch; DDP averages the gradients in backward
            shard = distributed.Shard(train_data, self.rank, self.world_size)
            loss = super()._train_epoch(shard, epoch_idx, loss_func=self.ddp, **kwargs)
            self.trained_rows += shard.rows
            values = torch.tensor(loss if isinstance(loss, tuple) else [loss], dtype=torch.float64)
            torch.distributed.all_reduce(values)  # the epoch loss of all workers, as one process would log it
            values = (values / self.world_size).tolist()
            loss = tuple(values) if isinstance(loss, tuple) else values[0]
        self.train_seconds.append(perf_counter() - start)
        self.train_losses.append(float(sum(loss) if isinstance(loss, tuple) else loss))
        if self.eval_step <= 0 or not self._fit_data[1] or (epoch_idx + 1) % self.eval_step:
            self._save_resume(epoch_idx)  # no validation follows: the epoch ends here
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        start = perf_counter()
        if self.ddp is None or self.world_size == 1:
            score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        else:  # rank 0 evaluates everything; all workers then take the same early-stopping decision
            payload = [super()._valid_epoch(valid_data, show_progress=show_progress) if self.rank == 0 else None]
            torch.distributed.broadcast_object_list(payload, src=0)
            score, result = payload[0]
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
