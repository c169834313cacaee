"""The state a resume file holds (:func:`capture`) and puts back (:func:`restore`): model, optimizer, epoch, best
score and result, early-stopping counter, curves, and every random state the next epoch draws from (torch, numpy,
Python, CUDA, and each ``torch.Generator`` held by the train loader or a model module), so a resumed run draws what
the uninterrupted run drew.

``trainer``: a RecBole trainer with the plugin's curves (:data:`CURVES`) and ``fingerprint``.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from recbole_ext.checkpoints import FINGERPRINT_KEY, check_unchanged

# the per-epoch lists (and the stage table) a trainer keeps across stages and a resume
CURVES = ("valid_scores", "train_seconds", "valid_seconds", "stage_epochs", "train_losses")


def generators(**holders) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` held as an attribute (or a dict value) of the holders or of their modules, by a
    name that is stable across processes (``prefix.module.attr[key]``)."""
    found = {}
    for prefix, holder in holders.items():
        parts = holder.named_modules() if isinstance(holder, torch.nn.Module) else [("", holder)]
        for name, obj in parts:
            for attr, value in vars(obj).items():
                values = value.items() if isinstance(value, dict) else [(None, value)]
                for key, item in values:
                    if isinstance(item, torch.Generator):
                        path = ".".join(filter(None, (prefix, name, attr)))
                        found[path + (f"[{key}]" if key is not None else "")] = item
    return found


def rng_state(**holders) -> dict:
    """The global random states and those of the holders' generators (:func:`generators`)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {name: g.get_state() for name, g in generators(**holders).items()}}


def set_rng_state(state: dict, **holders) -> None:
    """Put back :func:`rng_state`'s states (a generator the holders no longer have is skipped)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    found = generators(**holders)
    for name, value in state["generators"].items():
        if name in found:
            found[name].set_state(value)


def capture(trainer, epoch: int, finished: bool, train_data) -> dict:
    """Everything the next epoch needs; RecBole's checkpoint keys included, so ``resume_checkpoint`` reads it."""
    return {
        "config": trainer.config, "epoch": epoch, "cur_step": trainer.cur_step, "finished": finished,
        "best_valid_score": trainer.best_valid_score, "best_valid_result": trainer.best_valid_result,
        "state_dict": trainer.model.state_dict(), "other_parameter": trainer.model.other_parameter(),
        "optimizer": trainer.optimizer.state_dict(),
        "curves": {key: getattr(trainer, key) for key in CURVES},
        "rng": rng_state(train_data=train_data, model=trainer.model), FINGERPRINT_KEY: trainer.fingerprint,
    }


def check_same_run(state: dict, trainer, path: str) -> None:
    """Refuse a resume file of another model or dataset, or of data that changed since (before anything is loaded)."""
    for key in ("model", "dataset"):
        if state["config"][key] != trainer.config[key]:
            raise ValueError(f"resume: {path} is a {key} {state['config'][key]!r} run, not {trainer.config[key]!r}")
    check_unchanged(state.get(FINGERPRINT_KEY), trainer.fingerprint, path)


def restore(trainer, state: dict, train_data) -> None:
    """Put :func:`capture`'s state back into ``trainer`` (its next epoch is ``state['epoch'] + 1``)."""
    trainer.model.load_state_dict(state["state_dict"])
    trainer.model.load_other_parameter(state["other_parameter"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.start_epoch, trainer.cur_step = state["epoch"] + 1, state["cur_step"]
    trainer.best_valid_score, trainer.best_valid_result = state["best_valid_score"], state["best_valid_result"]
    for key, value in state["curves"].items():
        setattr(trainer, key, value)
    set_rng_state(state["rng"], train_data=train_data, model=trainer.model)
