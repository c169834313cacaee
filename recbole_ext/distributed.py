"""Data-parallel training on Ray Train: N workers, each one ordinary ``recbole_ext.run`` (RecBole's trainer).

    python run_recbole_ext.py --model=TiMiRec --dataset=ml-100k --distributed=2 [--ray_address=auto --use_gpu]
    recbole_ext.distributed.run_distributed("TiMiRec", "ml-100k", workers=2, config_dict={...})

Ray Train's ``TorchTrainer`` starts the workers and their process group (gloo on CPU, nccl on GPU); inside each,
the plugin trainer (:class:`recbole_ext.trainer.base.PluginTrainerMixin`, with the data-parallel building blocks of
:mod:`recbole_ext.trainer.ddp`) does the rest on RecBole's own ``fit``:

* **data**: every worker builds the same dataset and train loader with the same seed, so all draw the same global
  batches (and negatives); worker *r* of *N* trains on rows r, r+N, ... of each (a strided distributed sampler over
  every global batch). With ``distributed_batch: global`` (default) ``train_batch_size`` is the batch of all workers
  together, so N workers see exactly the batches one process sees and, gradients being averaged, follow its loss
  trajectory (exactly when N divides the batch, up to summation order); ``per_worker``: each worker takes
  ``train_batch_size`` rows (global batch × N). ``lr_scaling: none | linear | sqrt`` multiplies ``learning_rate``
  by 1, N or √N (default none: with a global batch the single-process learning rate is right);
* **gradients**: the model's ``calculate_loss`` runs through torch's ``DistributedDataParallel``, which averages the
  gradients over the workers during backward (unused parameters allowed: TiMiRec's pretrain stage leaves its
  predictor out);
* **evaluation**: rank 0 evaluates the full valid set and broadcasts the result, so every worker takes the same
  early-stopping decision and the metrics are exactly those of a single-process evaluation; rank 0 alone writes
  checkpoints, and a stage handover (TiMiRec's extractor, IFM's FM warm start) loads on rank 0 and broadcasts the
  weights;
* **results**: after every validation all workers report to Ray (rank 0's metrics are kept, with the best checkpoint
  when it improved); at the end rank 0 tests its best model, and the checkpoint goes to ``storage_path`` through
  Ray's checkpoint API. The returned dict is ``recbole_ext.run``'s, plus ``workers``, ``checkpoint`` (on storage)
  and ``samples_per_s_per_worker``.

A worker that dies fails the run with one line (``max_failures: 0``, default) or restarts the group from scratch
(``max_failures > 0``) through Ray's ``FailureConfig``; it never hangs. Inside a Ray Tune trial the same call starts
its own worker group, so a trial can itself be distributed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from recbole_ext import compat, quick_start
from recbole_ext.checkpoints import BEST_FILE, main_checkpoint, run_checkpoints
from recbole_ext.quick_start import absolute_paths, build_config, check_dataset, enter_worker, plain
from recbole_ext.trainer.ddp import world


def keep_ray_gpus(config: dict, environ=os.environ) -> dict:
    """Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs of a worker or trial; RecBole's Config would overwrite it with
    ``gpu_id`` (default 0), putting every worker of a multi-GPU node on GPU 0, so ``gpu_id`` repeats Ray's choice."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        config["gpu_id"] = environ["CUDA_VISIBLE_DEVICES"]
    return config


def _worker(job: dict) -> None:
    """One Ray Train worker: ``recbole_ext.run`` with the plugin trainer in distributed mode."""
    import ray.train

    rank, size = world()
    folder = Path(tempfile.mkdtemp(prefix=f"recbole_ext_rank{rank}_"))
    enter_worker(job["cpus_per_worker"], folder)
    config = {**job["config_dict"], "distributed_workers": size, "checkpoint_dir": str(folder / "saved")}
    keep_ray_gpus(config)
    trainers = []

    def report(epoch: int, score: float) -> None:
        trainer = trainers[0]
        metrics = {"epoch": epoch, "valid_score": float(score), "stage": trainer.stage}
        if job["worker_callback"]:
            job["worker_callback"](rank, epoch, score)
        if rank == 0 and trainer.cur_step == 0 and os.path.isfile(trainer.saved_model_file):  # just improved
            with tempfile.TemporaryDirectory() as staged:
                _stage(trainer, staged)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staged))
        else:
            ray.train.report(metrics)

    def attach(trainer) -> None:
        trainers.append(trainer)
        trainer.saved_model_file = str(folder / "saved" / BEST_FILE)

    result = quick_start.run(job["model"], job["dataset"], config_file_list=job["config_files"], config_dict=config,
                             callback_fn=report, on_trainer=attach, test=rank == 0)
    final = {"final": 1, "samples_per_s": trainers[0].trained_rows / max(sum(result["train_seconds"]), 1e-9)}
    if rank == 0:  # epoch -1 / finished: what a sweep reads as "ended on its own" (recbole_ext.tune)
        final.update({"epoch": -1, "valid_score": float(result["best_valid_score"]), "stage": trainers[0].stage})
        keep = ("best_valid_score", "test_result", "pretrain_test_result", "epochs", "train_seconds", "valid_seconds",
                "valid_scores", "stage_epochs", "best_valid_result", "model", "dataset", "train_losses")
        final.update({key: plain(result[key]) for key in keep})
        with tempfile.TemporaryDirectory() as staged:
            _stage(trainers[0], staged)
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(staged))
    else:
        ray.train.report(final)
    shutil.rmtree(folder / "saved", ignore_errors=True)  # the checkpoints are on storage now; the log stays


def _stage(trainer, folder: str) -> None:
    """Copy the run's checkpoints (the best model's, and a first stage's) into ``folder`` for Ray's storage."""
    for path in run_checkpoints(main_checkpoint(trainer.saved_model_file)):
        if os.path.isfile(path):
            shutil.copy2(path, folder)


def visible_resources(ray_address: str | None = None) -> tuple[float, float, str]:
    """(CPUs, GPUs, where) that Ray schedules on: the running Ray's or, given ``ray_address``, the cluster's
    (connecting to it), else this machine's, which a local ``ray.init()`` takes."""
    import ray

    if not ray.is_initialized() and ray_address:
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    if ray.is_initialized():
        total = ray.cluster_resources()
        return float(total.get("CPU", 0)), float(total.get("GPU", 0)), "the Ray cluster"
    return float(os.cpu_count() or 1), float(torch.cuda.device_count()), "this machine"


def check_resources(cpus: float, gpus: float, what: str, fix: str, ray_address: str | None = None) -> None:
    """Fail in one line when ``cpus`` / ``gpus`` exceed what Ray sees: Ray would wait for them forever, silently.
    ``what``: the request as the user wrote it; ``fix``: what to change."""
    have_cpus, have_gpus, where = visible_resources(ray_address)
    for kind, need, have in (("CPUs", cpus, have_cpus), ("GPUs", gpus, have_gpus)):
        if need > have:
            raise ValueError(f"{what} needs {need:g} {kind}, but {where} has {have:g}; {fix} (Ray would wait for "
                             "them forever)")


def run_distributed(model: str, dataset: str, config_file_list: list[str] | None = None,
                    config_dict: dict | None = None, *, workers: int = 2, use_gpu: bool = False,
                    cpus_per_worker: float = 1, ray_address: str | None = None,
                    storage_path: str | Path | None = None, name: str | None = None, max_failures: int = 0,
                    worker_callback: Callable[[int, int, float], None] | None = None,
                    callbacks: list | None = None) -> dict:
    """Train ``model`` on ``dataset`` with ``workers`` data-parallel Ray Train workers; see the module docstring.
    ``worker_callback(rank, epoch, valid_score)`` runs in every worker after every validation (tests use it);
    ``callbacks``: Ray Train callbacks (a sweep passes Tune's ``TuneReportCallback``); ``storage_path``: where Ray
    keeps the run and its checkpoints (default: the run's ``checkpoint_dir``). A worker group larger than the CPUs
    (GPUs) Ray sees fails here, in one line: Ray would wait for it forever."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ValueError(f"distributed: {workers} workers; give at least 1")
    if cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker: {cpus_per_worker:g}; give a positive number of CPUs")
    compat.sanitize_argv()
    config_dict = dict(config_dict or {})
    base = build_config(model, dataset, config_file_list, {**config_dict, "distributed_workers": workers})
    check_dataset(base)  # fail here, not once per worker
    config_file_list, config_dict = absolute_paths(base, config_file_list, config_dict)  # workers run elsewhere
    storage_path = storage_path or base["checkpoint_dir"]  # where the user keeps models, not ./ray_results
    check_resources(workers * cpus_per_worker, workers if use_gpu else 0,
                    f"--distributed={workers} with --cpus_per_worker={cpus_per_worker:g}" + " and --use_gpu" * use_gpu,
                    "use fewer workers or fewer CPUs per worker", ray_address)
    if not ray.is_initialized():  # the workers apply the compat shims themselves (a setup hook costs ~9 s a run here)
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    job = {"model": model, "dataset": dataset, "config_files": config_file_list, "config_dict": config_dict,
           "cpus_per_worker": cpus_per_worker, "worker_callback": worker_callback}
    trainer = TorchTrainer(
        _worker, train_loop_config=job,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name or f"{model}-{dataset}-x{workers}", storage_path=str(Path(storage_path).resolve()),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1), callbacks=callbacks))
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps the worker's error; keep its last line
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        raise RuntimeError(f"distributed training failed: {lines[-1] if lines else type(exc).__name__}") from exc
    if result.error:
        raise RuntimeError(f"distributed training failed: {str(result.error).strip().splitlines()[-1]}")
    out = dict(result.metrics)
    out["workers"] = workers
    out["samples_per_s_per_worker"] = out.pop("samples_per_s")
    out["checkpoint"] = str(Path(result.checkpoint.path) / BEST_FILE) if result.checkpoint else None
    return out
