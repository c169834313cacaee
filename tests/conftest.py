"""Shared fixtures: tiny synthetic atomic datasets, a clean working directory, fast configs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import recbole_ext  # noqa: F401  (shims + registry, as a user would)

FAST = {
    "epochs": 1,
    "embedding_size": 8,
    "train_batch_size": 64,
    "eval_batch_size": 64,
    "MAX_ITEM_LIST_LENGTH": 10,
    "show_progress": False,
    "state": "ERROR",
    "topk": [5, 10],
    "metrics": ["Hit", "NDCG"],
    "valid_metric": "NDCG@5",
    "eval_neg_num": 20,
    "seed": 7,
}


def write_seq_dataset(root: Path, name: str, n_users: int = 30, n_items: int = 40, per_user: int = 10,
                      seed: int = 0) -> Path:
    """``root/name/name.inter``: each user picks per_user distinct items, timestamps increasing."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=per_user, replace=False)
        rows += [(f"u{u}", f"i{i}", 1_000 * u + t) for t, i in enumerate(items)]
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "timestamp:float"]).to_csv(
        folder / f"{name}.inter", sep="\t", index=False)
    return folder


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """RecBole writes log/, log_tensorboard/ and saved/ into the CWD and parses sys.argv as config."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


@pytest.fixture
def tiny(tmp_path) -> dict:
    """Config dict pointing at a fresh tiny sequential dataset named 'tiny'."""
    write_seq_dataset(tmp_path / "data", "tiny")
    return {**FAST, "data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
