"""One way in: ``run`` is what the CLI, Ray Tune trials and the benchmarks call; RecBole's own
``run_recbole`` also works for plugin models after ``import recbole_ext``."""

from __future__ import annotations

import os
from logging import getLogger
from pathlib import Path
from typing import Callable

import recbole
import torch
import yaml
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import ModelType, init_logger, init_seed

from recbole_ext import compat, registry
from recbole_ext.checkpoints import (FINGERPRINT_KEY, check_unchanged, fingerprint, locate_data, main_checkpoint,
                                     resume_file, run_checkpoints)
from recbole_ext.data import mfn
from recbole_ext.validation import read_mapping
from recbole_ext.trainer.base import resolve_trainer
from recbole_ext.trainer.ddp import scale


class DatasetNotFound(FileNotFoundError):
    """The dataset is neither in ``data_path`` nor downloadable."""


def _not_found(config: Config, reason: str) -> DatasetNotFound:
    return DatasetNotFound(
        f"dataset {config['dataset']!r} is not in {Path(config['data_path']).parent}/ and {reason}; convert local raw "
        f"files with: python run_recbole_ext.py --convert=ml-1m|rechorus|comirec|libfm --src=RAW_DIR "
        f"--dataset={config['dataset']}")


def downloadable() -> list[str]:
    """The datasets RecBole downloads on first use (its url.yaml)."""
    return sorted(yaml.safe_load((Path(recbole.__file__).parent / "properties" / "dataset" / "url.yaml").read_text()))


def check_dataset(config: Config) -> None:
    """Fail now, in one line, when the dataset is neither in ``data_path`` nor one RecBole downloads or this package
    generates (a sweep would otherwise fail once per trial)."""
    if (config["dataset"] in downloadable() or config["dataset"] in mfn.SIZES
            or any(Path(config["data_path"]).glob(f"{config['dataset']}*.inter"))):
        return
    raise _not_found(config, "RecBole cannot download it")


def load_dataset(config: Config):
    """RecBole's ``create_dataset`` (which downloads known datasets when missing), with a one-line error
    naming the converter when the files are absent and the download fails."""
    mfn.ensure(Path(config["data_path"]).parent, config["dataset"])  # generated when absent, as ml-100k ships
    try:
        dataset = create_dataset(config)
    except (Exception, SystemExit) as exc:
        if any(Path(config["data_path"]).glob(f"{config['dataset']}*.inter")):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _not_found(config, f"could not be downloaded ({reason})") from None
    time_field = config["TIME_FIELD"]
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL and time_field not in dataset.field2type:
        raise ValueError(f"dataset {config['dataset']!r} has no {time_field!r} column, which {config['model']} needs to "
                         f"order each user's history: add '{time_field}:float' to {config['dataset']}.inter (and to "
                         "load_col if you set it), or set TIME_FIELD to the column that orders it")
    return dataset


def build_config(model: str, dataset: str, config_file_list: list[str] | None = None,
                 config_dict: dict | None = None) -> Config:
    registry.check_model(model)
    for path in config_file_list or []:
        read_mapping(path, "config_files")
    return Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)


def _prepare(config: Config):
    """Dataset and RecBole's data preparation, then the seed a fresh model is built under (as run_recbole).
    -> (dataset, train_data, valid_data, test_data)"""
    data = load_dataset(config)
    getLogger().info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    return data, train_data, valid_data, test_data


def _build(config: Config):
    """Dataset, RecBole's data preparation and a fresh model, seeded as RecBole's run_recbole does.
    -> (model, train_data, valid_data, test_data)"""
    _, train_data, valid_data, test_data = _prepare(config)
    return registry.build_model(config, train_data._dataset), train_data, valid_data, test_data


def resume_state(path: str) -> tuple[str, dict]:
    """``path``: a run's checkpoint (``saved/<Model>-<time>.pth``) or one of its resume files.
    -> (the run's checkpoint path, the saved state holding its configuration)"""
    base = main_checkpoint(path)
    for candidate in map(resume_file, run_checkpoints(base)):  # the run's own stage first, then a first stage's
        if Path(candidate).is_file():
            return base, torch.load(candidate, map_location="cpu", weights_only=False)
    raise FileNotFoundError(f"resume: no resume state for {path} (expected {resume_file(base)}, written after every "
                            "epoch of a recbole_ext run); pass the checkpoint path the interrupted run printed")


def run(model: str | None, dataset: str | None, config_file_list: list[str] | None = None, config_dict: dict | None = None,
        saved: bool = True, callback_fn: Callable[[int, float], None] | None = None, test: bool = True,
        on_trainer: Callable[[object], None] | None = None, resume: str | None = None) -> dict:
    """Train with validation-based model selection, then (``test=True``) test the best checkpoint.

    ``resume``: the checkpoint path of an interrupted run (see :func:`resume_state`); the run continues with the
    configuration saved in it (``model``/``dataset`` must match; ``config_dict`` may override keys such as
    ``epochs``) and reaches the same metrics as an uninterrupted run.

    ``callback_fn(epoch, valid_score)`` runs after every validation (Ray Tune reports through it);
    ``on_trainer(trainer)`` runs once before training (a sweep resumes or checkpoints through it).
    Returns RecBole's result dict plus ``checkpoint``, ``epochs``, ``train_seconds``/``valid_seconds`` per
    epoch, ``valid_scores`` (the valid curve, all stages) and, for a two-stage run, ``pretrain_test_result``
    (the test result of the first stage's best model, e.g. TiMiRec's extractor before distillation).
    """
    checkpoint, config = _resumed_config(resume, model, dataset, config_dict) if resume else \
        (None, build_config(model, dataset, config_file_list, config_dict))
    if config["distributed_workers"]:
        scale(config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    net, train_data, valid_data, test_data = _build(config)
    logger.info(net)
    trainer = resolve_trainer(config)(config, net)
    if resume:
        trainer.saved_model_file, trainer.resuming = checkpoint, True
    if on_trainer is not None:
        on_trainer(trainer)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"], callback_fn=callback_fn)
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"]) \
        if test else None
    pretrain_file = getattr(trainer, "pretrain_file", None)  # a two-stage run: also test its first stage's model
    pretrain_test_result = trainer.evaluate(test_data, load_best_model=True, model_file=pretrain_file,
                                            show_progress=config["show_progress"]) if test and pretrain_file else None
    logger.info(f"best valid : {best_valid_result}")
    logger.info(f"test result: {test_result}")
    return {"model": config["model"], "dataset": config["dataset"], "best_valid_score": best_valid_score,
            "valid_score_bigger": config["valid_metric_bigger"], "best_valid_result": best_valid_result,
            "test_result": test_result, "pretrain_test_result": pretrain_test_result,
            "checkpoint": trainer.saved_model_file if saved else None, **_trainer_record(trainer)}


def _resumed_config(resume: str, model: str | None, dataset: str | None, config_dict: dict | None) -> tuple[str, Config]:
    """(the run's checkpoint, its saved configuration with ``config_dict`` laid over it) for ``run(resume=...)``."""
    checkpoint, state = resume_state(resume)
    config = state["config"]
    locate_data(config, checkpoint)  # the trainer refuses the run if the data changed since (its resume files)
    for key, wanted in (("model", model), ("dataset", dataset)):
        if wanted is not None and config[key] != wanted:
            raise ValueError(f"resume: {resume} is a run of {key} {config[key]!r}, not {wanted!r}; drop --{key} "
                             "or pass a checkpoint of that run")
    for key, value in (config_dict or {}).items():
        config[key] = value
    return checkpoint, config


def _trainer_record(trainer) -> dict:
    """What a run reports of its training: epochs, per-epoch seconds, losses, the valid curve, the stop reason."""
    return {"epochs": len(trainer.train_seconds), "train_seconds": trainer.train_seconds,
            "train_losses": trainer.train_losses, "valid_seconds": trainer.valid_seconds,
            "valid_scores": trainer.valid_curve, "stage_epochs": trainer.stage_epochs,
            "stop": getattr(trainer, "stop_reason", None)}  # epochs | stopping_step | stopping_rule | time_budget


def absolute_paths(base: Config, config_file_list: list[str] | None,
                   config_dict: dict) -> tuple[list[str] | None, dict]:
    """The run's paths made absolute, for runs that work in another folder (Ray trials and workers): ``data_path``
    (as ``base`` resolved it), the config files and ``pretrain_path``. -> (config files, a new config dict)"""
    config_dict = dict(config_dict)
    if base["data_path"]:
        config_dict["data_path"] = str(Path(base["data_path"]).parent.resolve())
    if config_dict.get("pretrain_path"):
        config_dict["pretrain_path"] = str(Path(config_dict["pretrain_path"]).resolve())
    return [str(Path(f).resolve()) for f in config_file_list or []] or None, config_dict


def plain(value):
    """A run's results as plain Python (tensors and numpy scalars -> numbers, mappings -> dicts), for YAML and
    Ray's metrics."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def enter_worker(threads: float, folder: Path) -> None:
    """Make this Ray worker process ready for :func:`run`: a clean ``sys.argv``, ``threads`` torch threads (torch
    would take every core of the node) and ``folder`` as the working directory (RecBole writes ``log/`` there)."""
    compat.setup_worker()
    torch.set_num_threads(max(1, int(threads)))
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)


def evaluate_checkpoint(checkpoint: str, config_dict: dict | None = None) -> dict:
    """Evaluate a checkpoint's test split with the configuration saved in it, or, given ``config_dict``, with
    the checkpoint's model and dataset under that configuration instead (e.g. ``{"protocol": "recbole"}``
    scores a model trained under the ReChorus protocol by full ranking on the same leave-one-out split).
    ``config_dict`` must repeat the model's non-default hyper-parameters: the model is rebuilt from it before
    the weights are loaded (a mismatch fails on the state dict's shapes).
    """
    if config_dict is None:
        config, net, _, _, _, test_data = load(checkpoint)
        return resolve_trainer(config)(config, net).evaluate(test_data, load_best_model=False)
    saved = torch.load(checkpoint, map_location="cpu")
    stored = saved["config"]
    locate_data(stored, checkpoint)
    # the checkpoint's data folder unless config_dict names another (RecBole's data_path ends in the dataset's name)
    config_dict = {"data_path": str(Path(stored["data_path"]).parent), **config_dict}
    config = build_config(stored["model"], stored["dataset"], config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    net, train_data, _, test_data = _build(config)
    check_unchanged(saved.get(FINGERPRINT_KEY), fingerprint(config, train_data._dataset), checkpoint)
    return resolve_trainer(config)(config, net).evaluate(test_data, load_best_model=True, model_file=checkpoint)


def load(model_file: str):
    """RecBole's ``load_data_and_model`` with the model built as every entry point builds it
    (``registry.build_model``: a RecBole CTR model trained for ±1 regression scores as trained, a user-task model has
    its head). -> (config, model, dataset, train_data, valid_data, test_data)"""
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    locate_data(config, model_file)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset, train_data, valid_data, test_data = _prepare(config)
    check_unchanged(checkpoint.get(FINGERPRINT_KEY), fingerprint(config, dataset), model_file)  # before the weights
    model = registry.build_model(config, train_data._dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
