"""Ray Tune sweeps over any RecBole or plugin model, on Ray's current ``Tuner`` API.

Each trial is one ``recbole_ext.run`` (RecBole's trainer, unchanged) that reports the **validation** metric named by
``valid_metric`` after every epoch through ``Trainer.fit(callback_fn=...)``, so ASHA or the median rule can stop
bad trials early. Only the best trial is tested, at the end, from its best checkpoint. Workers get the compat
shims and the registry through ``worker_process_setup_hook``; each trial works in its own directory (RecBole's
log/, log_tensorboard/ and checkpoints land there); a failing trial is recorded and the sweep goes on.

Search-space files: RecBole's ``hyper.test`` lines (``learning_rate loguniform -9,-5`` with natural-log bounds as
in RecBole, ``n_interests choice [2,4,6]``, ``dropout uniform 0,0.5``, ``x quniform 1,10,1``, ``n randint 1,5``;
spaces instead of commas work too) or a YAML mapping (``learning_rate: {loguniform: [1e-4, 1e-2]}``, plain values).
"""

from __future__ import annotations

import ast
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from recbole_ext import compat, quick_start
from recbole_ext.checkpoints import BEST_FILE, run_checkpoints
from recbole_ext.distributed import check_resources, keep_ray_gpus, run_distributed
from recbole_ext.quick_start import build_config, check_dataset, evaluate_checkpoint
from recbole_ext.trainer.base import resolve_trainer
from recbole_ext.validation import check_value, read_mapping

DISTRIBUTIONS = ("choice", "uniform", "quniform", "loguniform", "randint")
SCHEDULERS = ("asha", "fifo", "median", "pbt")
SEARCHES = ("random", "grid", "optuna", "hyperopt")
DRIVER_CPU = 0.01  # what a distributed trial's own process holds (Ray refuses an empty request)


class SearchSpaceError(ValueError):
    """A line of a search-space file cannot be used."""


def _domain(kind: str, args: list, grid: bool, where: str):
    from ray import tune

    try:
        if kind == "choice":
            values = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
            if not values:
                raise SearchSpaceError(f"{where}: choice needs at least one value")
            return tune.grid_search(values) if grid else tune.choice(values)
        if grid:
            raise SearchSpaceError(f"{where}: search=grid needs 'choice' lines, not {kind!r}")
        low, high, *rest = (float(a) for a in args)
        if not low < high:
            raise SearchSpaceError(f"{where}: {kind} needs low < high, got {low:g}, {high:g}")
        if kind == "loguniform" and low <= 0:
            raise SearchSpaceError(f"{where}: loguniform bounds must be positive, got {low:g} (a .test file gives "
                                   "natural logs instead, e.g. 'learning_rate loguniform -9,-5')")
        if kind == "uniform":
            return tune.uniform(low, high)
        if kind == "quniform":
            return tune.quniform(low, high, rest[0])
        if kind == "loguniform":
            return tune.loguniform(low, high)
        return tune.randint(int(low), int(high))
    except (ValueError, TypeError, IndexError) as exc:
        if isinstance(exc, SearchSpaceError):
            raise
        raise SearchSpaceError(f"{where}: bad arguments {args!r} for {kind} ({exc})") from None


def parse_space(path: str | Path, grid: bool = False) -> dict:
    """Read a ``hyper.test``-style or YAML search space into Ray Tune domains; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"search space {path} does not exist")
    text = path.read_text()
    space = {}
    if path.suffix in (".yaml", ".yml"):
        try:
            entries = read_mapping(path, "tune")
        except ValueError as exc:
            raise SearchSpaceError(str(exc)) from None
        lines = {key: i + 1 for i, line in enumerate(text.splitlines()) for key in entries if line.startswith(f"{key}:")}
        for key, spec in entries.items():
            where = f"{path} line {lines.get(key, '?')} ({key})"
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise SearchSpaceError(f"{where}: expected {{distribution: [args]}} with one of {DISTRIBUTIONS}")
            kind, args = next(iter(spec.items()))
            space[key] = _domain(kind, args if isinstance(args, list) else [args], grid, where)
        return space
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        raise SearchSpaceError(f"tune: {path} is empty; write one 'name distribution args' per line")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path} line {number}"
        parts = line.split(maxsplit=2)
        if len(parts) < 3 or parts[1] not in DISTRIBUTIONS:
            raise SearchSpaceError(f"{where}: expected 'name distribution args' with one of {DISTRIBUTIONS}: {line!r}")
        name, kind, rest = parts
        if kind == "choice":
            try:
                args = [ast.literal_eval(rest)]
            except (ValueError, SyntaxError):
                args = None
            if not args or not isinstance(args[0], list):
                raise SearchSpaceError(f"{where}: choice needs a Python list, e.g. [1e-3, 1e-2]: {line!r}")
        else:
            args = rest.replace(",", " ").split()  # RecBole writes "-8,0"; spaces are accepted too
            if kind == "loguniform":  # RecBole's hyper.test gives natural-log bounds
                try:
                    args = [math.exp(float(a)) for a in args]
                except ValueError:
                    raise SearchSpaceError(f"{where}: bad arguments {args!r} for loguniform") from None
        space[name] = _domain(kind, args, grid, where)
    return space


def candidates(domain) -> list:
    """The values a search-space entry can give that bound it: every choice, a range's two ends (the upper end
    just below an open bound: uniform never draws it; randint's upper bound is exclusive)."""
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(domain, dict) and "grid_search" in domain:
        return list(domain["grid_search"])
    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Float):
        return [float(domain.lower), math.nextafter(float(domain.upper), -math.inf)]
    if isinstance(domain, Integer):
        return [int(domain.lower), int(domain.upper) - 1]
    return [domain]  # a plain value in a dict space


def check_space(model: str, base, space: dict, source: str = "the search space") -> None:
    """Type, choices and range of every value the space can give, as :mod:`recbole_ext.validation` checks a
    configuration; one line naming ``source`` (the file), the key and the value."""
    from recbole.utils import get_model


    model_class = get_model(model)
    for key, domain in space.items():
        for value in candidates(domain):
            try:
                check_value(model, model_class, base.internal_config_dict, key, value)
            except ValueError as exc:
                raise SearchSpaceError(f"tune: {source}: {exc}") from None


def sweep_name(storage: Path, model: str, dataset: str, name: str | None = None) -> str:
    """The sweep's own folder under ``storage``: ``<model>-<dataset>-<time>-<id>`` (a second sweep into the same
    storage used to overwrite the first one's best.yaml, trials and curves); a given ``name`` must be new."""
    if name is None:
        return f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    if (storage / name).exists():
        raise ValueError(f"name: {storage / name} already exists; give a new name, or none for a fresh folder")
    return name


def trial_config(params: dict, fixed: dict, trial_dir: Path, environ=os.environ) -> dict:
    """One trial's config dict: the fixed settings, the sampled values, its own checkpoint folder, and the GPUs Ray
    gave it (:func:`recbole_ext.distributed.keep_ray_gpus`)."""
    return keep_ray_gpus({**fixed["config_dict"], **params, "checkpoint_dir": str(trial_dir / "saved")}, environ)


def _trial(params: dict, fixed: dict) -> None:
    """One trial, in a Ray worker: train with per-epoch valid reports; no test evaluation here.

    Each report that follows an improved validation carries the trial's best checkpoint (``best.pth``, plus a first
    stage's file) as a Tune checkpoint, so it reaches ``storage_path`` on any cluster; the report's ``stage`` (0, or 1
    in a second training stage) lets the sweep rank each trial on the stage whose checkpoint it tests. Under PBT
    every report also carries the trainer state, and a trial that Tune restarts from another trial's checkpoint
    (exploit) resumes it with its own, perturbed hyper-parameters (explore)."""
    from ray import tune

    trial_dir = Path(tune.get_context().get_trial_dir())
    quick_start.enter_worker(fixed["cpus_per_trial"], trial_dir)
    config = trial_config(params, fixed, trial_dir)
    if fixed["workers_per_trial"] > 1:  # the trial drives a Ray Train worker group; its reports come back to Tune
        _distributed_trial(config, fixed, trial_dir)
        return
    hooks = _TrialHooks(str(trial_dir / "saved" / BEST_FILE), fixed["checkpoint_every_epoch"])
    result = quick_start.run(fixed["model"], fixed["dataset"], config_file_list=fixed["config_files"],
                             config_dict=config, test=False, callback_fn=hooks.report, on_trainer=hooks.attach)
    # marks a trial that ended on its own (a scheduler-stopped one never gets here); not an epoch
    tune.report({"epoch": -1, "valid_score": float(result["best_valid_score"]), "finished": 1,
                 "stage": hooks.trainer.stage})


def _distributed_trial(config: dict, fixed: dict, trial_dir: Path) -> None:
    """A trial trained by ``workers_per_trial`` Ray Train workers, which report to Tune themselves."""
    from ray.tune.integration.ray_train import TuneReportCallback

    workers = fixed["workers_per_trial"]
    cpus = (fixed["cpus_per_trial"] - DRIVER_CPU) / workers  # the trial itself holds DRIVER_CPU
    run_distributed(fixed["model"], fixed["dataset"], fixed["config_files"], config, workers=workers,
                    use_gpu=fixed["gpus_per_trial"] > 0, cpus_per_worker=cpus,
                    storage_path=Path(fixed["storage"]) / fixed["name"] / trial_dir.name, name="train",
                    callbacks=[TuneReportCallback()])  # the workers' checkpoints go to the sweep's storage


class _TrialHooks:
    """A single-process trial's two hooks into :func:`recbole_ext.quick_start.run`: ``attach`` (the trainer, before
    training: one best-file name, and a PBT restart resumed from its donor) and ``report`` (every validation)."""
    def __init__(self, best_file: str, every_epoch: bool):
        self.best_file, self.every_epoch, self.trainer = best_file, every_epoch, None

    def attach(self, trainer) -> None:
        from ray import tune

        self.trainer = trainer
        trainer.saved_model_file = self.best_file  # one name, also across PBT restarts
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            trainer.resume_checkpoint(os.path.join(folder, "trainer.pth"))
        trainer.saved_model_file = self.best_file  # resume_checkpoint points it at the donor's file
        for group in trainer.optimizer.param_groups:  # the restored optimizer state carries the donor's values
            group["lr"] = trainer.config["learning_rate"]
            if group["weight_decay"]:
                group["weight_decay"] = trainer.config["weight_decay"]
        trainer._save_checkpoint(trainer.start_epoch - 1, verbose=False)  # the inherited best, in this folder

    def report(self, epoch: int, score: float) -> None:
        import shutil
        import tempfile

        from ray import tune

        trainer = self.trainer
        metrics = {"epoch": epoch, "valid_score": float(score), "stage": trainer.stage}
        improved = trainer.cur_step == 0  # RecBole just saved this epoch's model as the best
        if not improved and not self.every_epoch:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            for path in run_checkpoints(self.best_file):  # the best model's, and a first stage's
                if os.path.isfile(path):
                    shutil.copy2(path, folder)
            if self.every_epoch:
                trainer._save_checkpoint(epoch, verbose=False, saved_model_file=os.path.join(folder, "trainer.pth"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


@dataclass
class SweepResult:
    table: pd.DataFrame
    best_params: dict
    best_config_file: Path
    test_result: dict | None
    plot: Path
    directory: Path


def _scheduler(name: str, max_epochs: int, grace_period: int, space: dict):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, PopulationBasedTraining
    from ray.tune.search.sample import Float

    if name == "asha":
        return ASHAScheduler(max_t=max_epochs, grace_period=grace_period, reduction_factor=2)
    if name == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=grace_period, min_samples_required=2)
    if name == "pbt":  # mutate only continuous values (lr, decay, τ): sizes and counts would change tensor shapes
        mutations = {k: v for k, v in space.items() if isinstance(v, Float)}
        if not mutations:
            raise ValueError("scheduler: 'pbt' needs at least one uniform/loguniform entry in the search space")
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=max(grace_period, 1),
                                       hyperparam_mutations=mutations)
    return FIFOScheduler()


def _searcher(name: str, max_concurrent: int | None):
    if name in ("random", "grid"):
        return None
    from ray.tune.search import ConcurrencyLimiter

    try:
        if name == "optuna":
            from ray.tune.search.optuna import OptunaSearch as Searcher
        else:
            from ray.tune.search.hyperopt import HyperOptSearch as Searcher
        searcher = Searcher()
    except (ImportError, AssertionError) as exc:
        raise ValueError(f"search: {name!r} needs its library: pip install {name} ({exc})") from None
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent) if max_concurrent else searcher


def _plot(curves: dict[str, pd.DataFrame], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, frame in curves.items():
        ax.plot(frame["training_iteration"], frame["valid_score"], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch (training_iteration)")
    ax.set_ylabel(f"valid {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_sweep(model: str, dataset: str, space: str | Path | dict, *, config_file_list: list[str] | None = None,
              config_dict: dict | None = None, num_samples: int = 1, scheduler: str = "asha",
              search: str = "random", max_concurrent: int | None = None, cpus_per_trial: float = 1,
              gpus_per_trial: float = 0, grace_period: int = 1, ray_address: str | None = None,
              storage_path: str | Path = "ray_results", name: str | None = None, test: bool = True,
              workers_per_trial: int = 1) -> SweepResult:
    """Run a sweep; write ``trials.csv``/``trials.md``, ``best.yaml`` and ``valid_curves.png`` to the sweep's own
    folder, ``storage_path/name`` (default name ``<model>-<dataset>-<time>-<id>``: sweeps never share one). Every
    value of the space is checked (:func:`check_space`) before Ray starts.
    ``workers_per_trial`` > 1: each trial trains on that many Ray Train workers (:mod:`recbole_ext.distributed`),
    which share the trial's ``cpus_per_trial`` / ``gpus_per_trial``."""
    from ray import tune

    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler: {scheduler!r} is not one of {SCHEDULERS}")
    if search not in SEARCHES:
        raise ValueError(f"search: {search!r} is not one of {SEARCHES}")
    compat.sanitize_argv()
    param_space = space if isinstance(space, dict) else parse_space(space, grid=search == "grid")
    base = build_config(model, dataset, config_file_list, dict(config_dict or {}))  # validates model, files, values
    check_dataset(base)
    config_file_list, config_dict = quick_start.absolute_paths(base, config_file_list, dict(config_dict or {}))
    max_epochs = resolve_trainer(base).max_epochs(base)
    # before Ray starts: a bad value used to fail its trials one by one
    check_space(model, base, param_space, str(space) if not isinstance(space, dict) else "the search space")
    _check_combination(model, scheduler, max_epochs != base["epochs"], workers_per_trial)
    storage = Path(storage_path).resolve()
    name = sweep_name(storage, model, dataset, name)
    _start_ray(ray_address, cpus_per_trial, gpus_per_trial)
    fixed = {"model": model, "dataset": dataset, "config_files": config_file_list, "config_dict": config_dict,
             "checkpoint_every_epoch": scheduler == "pbt", "cpus_per_trial": cpus_per_trial,
             "gpus_per_trial": gpus_per_trial, "workers_per_trial": workers_per_trial, "storage": str(storage),
             "name": name}
    # a distributed trial only drives its workers, which hold the rest of its resources
    resources = {"cpu": DRIVER_CPU} if workers_per_trial > 1 else {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(_trial, fixed=fixed), resources)
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric="valid_score", mode="max" if base["valid_metric_bigger"] else "min",
                                    scheduler=_scheduler(scheduler, max_epochs, grace_period, param_space),
                                    search_alg=_searcher(search, max_concurrent), num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent if search in ("random", "grid") else None),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))  # the latest = the best
    return _summarise(tuner.fit(), base, param_space, config_dict, max_epochs, storage / name, test)


def _check_combination(model: str, scheduler: str, several_stages: bool, workers_per_trial: int) -> None:
    """Refuse what PBT cannot do: restart a trial mid-run in a multi-stage model or a distributed trial."""
    if scheduler == "pbt" and several_stages:
        raise ValueError(f"scheduler: 'pbt' resumes trials mid-run, which {model}'s multi-stage training does not "
                         "support; run one stage (e.g. stage=pretrain or stage=finetune) or use asha")
    if workers_per_trial > 1 and scheduler == "pbt":
        raise ValueError("scheduler: 'pbt' restarts trials from checkpoints, which distributed trials do not take")


def _start_ray(ray_address: str | None, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Ray started (or joined), and one trial known to fit in it: a trial larger than the cluster would wait forever
    (Ray only warns, now and then)."""
    import ray

    if not ray.is_initialized():
        runtime_env = {"worker_process_setup_hook": "recbole_ext.compat.setup_worker"}
        if ray_address:  # an existing cluster: its nodes need recbole_ext installed and the data at data_path
            ray.init(address=ray_address, log_to_driver=False, runtime_env=runtime_env)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    check_resources(cpus_per_trial, gpus_per_trial, f"--cpus_per_trial={cpus_per_trial:g} --gpus_per_trial="
                    f"{gpus_per_trial:g}", "lower them", ray_address)


def _trial_row(i: int, result, metric: str, bigger: bool, max_epochs: int) -> tuple[dict, pd.DataFrame]:
    """One finished trial -> (its row of trials.csv, with ``path`` and ``checkpoint``; its valid curve)."""
    history = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    finished = "finished" in history and bool((history["finished"] == 1).any())
    checkpoint = result.checkpoint or _reported(history)
    if "epoch" in history:
        history = history[history["epoch"] >= 0]
    params = {k: quick_start.plain(v) for k, v in (result.config or {}).items()}
    # a trial ends on its own (early stopping: the "finished" report) or at the horizon, where ASHA stops it
    status = "error" if result.error else ("completed" if finished or len(history) >= max_epochs else "stopped early")
    row = {"trial": Path(result.path).name if result.path else f"trial_{i}", **params,
           f"best_valid_{metric}": best_of_tested_stage(history, bigger), "epochs": len(history),
           "time_s": round(float(history["time_total_s"].iloc[-1]), 1) if "time_total_s" in history else None,
           "status": status, "error": str(result.error).strip().splitlines()[-1] if result.error else "",
           "path": result.path, "checkpoint": checkpoint}
    return row, history


def _summarise(grid, base, param_space: dict, config_dict: dict, max_epochs: int, folder: Path,
               test: bool) -> SweepResult:
    """trials.csv / trials.md, valid_curves.png and best.yaml in ``folder``; the best trial's checkpoint tested."""
    metric, bigger = base["valid_metric"], base["valid_metric_bigger"]
    rows, curves = [], {}
    for i, result in enumerate(grid):
        row, history = _trial_row(i, result, metric, bigger, max_epochs)
        rows.append(row)
        if "valid_score" in history and len(history):
            label = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in quick_start.plain(dict(result.config or {})).items())
            curves[f"#{i} {label}"] = history
    table = pd.DataFrame(rows)
    shown = table.drop(columns=["path", "checkpoint"])
    shown.to_csv(folder / "trials.csv", index=False)
    (folder / "trials.md").write_text(shown.to_markdown(index=False))
    _plot(curves, metric, folder / "valid_curves.png")
    ok = table[table.status != "error"].dropna(subset=[f"best_valid_{metric}"])
    if ok.empty:
        raise RuntimeError(f"every trial failed; see {folder / 'trials.csv'}")
    best_row = ok.sort_values(f"best_valid_{metric}", ascending=not bigger).iloc[0]
    best_params = {k: quick_start.plain(best_row[k]) for k in param_space}
    best_file = folder / "best.yaml"
    best_file.write_text(f"# python run_recbole_ext.py --model={base['model']} --dataset={base['dataset']} "
                         f"--config_files={best_file}\n" + yaml.safe_dump({**config_dict, **best_params}, sort_keys=True))
    test_result = None
    if test:
        if best_row["checkpoint"] is None:
            raise RuntimeError(f"the best trial {best_row['trial']} reported no checkpoint")
        with best_row["checkpoint"].as_directory() as reported:  # from storage_path, wherever the trial ran
            test_result = {k: float(v) for k, v in evaluate_checkpoint(str(_best_checkpoint(Path(reported)))).items()}
    return SweepResult(shown, best_params, best_file, test_result, folder / "valid_curves.png", folder)


def best_of_tested_stage(history: pd.DataFrame, bigger: bool) -> float | None:
    """A trial's best valid score on the model that gets tested: a multi-stage trial (``stage`` 0, 1) is ranked on
    the last stage it reached, whose checkpoint is the one tested, not on a better score of an earlier stage."""
    if "valid_score" not in history or not len(history):
        return None
    if "stage" in history:
        history = history[history["stage"] == history["stage"].max()]
    return float(history["valid_score"].max() if bigger else history["valid_score"].min())


def _reported(history: pd.DataFrame):
    """The last checkpoint a distributed trial's workers reported (Tune's callback gives its path), or None."""
    from ray import tune

    paths = history["checkpoint_path"].dropna() if "checkpoint_path" in history else []
    return tune.Checkpoint(paths.iloc[-1]) if len(paths) else None


def _best_checkpoint(folder: Path) -> Path:
    """The trial's best checkpoint, or its first stage's (TiMiRec's pretrain, the IFM family's FM) if the trial was
    stopped in that stage."""
    for path in map(Path, run_checkpoints(str(folder / BEST_FILE))):
        if path.is_file():
            return path
    raise FileNotFoundError(f"no checkpoint in {folder}")


def print_summary(result: SweepResult, out=None) -> None:
    out = out or sys.stdout  # looked up now: a default bound at import would keep a replaced stream
    print(result.table.to_string(index=False), file=out)
    print(f"\nbest params: {result.best_params}\nbest config: {result.best_config_file}"
          f"\nvalid curves: {result.plot}\nsweep folder: {result.directory}", file=out)
    if result.test_result:
        print("best trial test:", "  ".join(f"{k} {v:.4f}" for k, v in result.test_result.items()), file=out)
