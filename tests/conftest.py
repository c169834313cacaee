"""Shared fixtures: tiny synthetic atomic datasets, a clean working directory, fast configs."""

from __future__ import annotations

import copy
import os
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


# ``realdata`` tests read the raw data sets (e.g. Grocery_and_Gourmet_Food/ in ReChorus's format) from this folder
REAL_DATA_ENV = "RECBOLE_EXT_REAL_DATA"
_REAL_DATA = Path(os.environ[REAL_DATA_ENV]).resolve() if os.environ.get(REAL_DATA_ENV) else None  # before any chdir


@pytest.fixture
def real_data() -> Path:
    """The folder of the raw data sets, ``$RECBOLE_EXT_REAL_DATA``; the test skips when it is not set."""
    if _REAL_DATA is None:
        pytest.skip(f"set {REAL_DATA_ENV} to the folder of the raw data sets")
    return _REAL_DATA


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


MODELS = [  # every plugin model on tiny data, with what it needs
    ("ComiRec", "tiny", {"protocol": "rechorus"}),
    ("TiMiRec", "tiny", {"protocol": "rechorus", "stage": "both"}),
    ("Re4", "tiny", {"n_negatives": 10}),
    ("IFM", "rated", {"loss_type": "BCE"}),
    ("INN", "rated", {"loss_type": "BCE"}),
    ("DeepIFM", "rated", {"loss_type": "BCE"}),
    ("MARIF", "rated", {"hidden_size": 16, "history_len": 4}),
    ("MFN", "mfn-synthetic-tiny", {"hidden_size": 16, "inner_size": 32, "metrics": ["Hit", "NDCG"], "topk": [5],
                                   "valid_metric": "NDCG@5", "MAX_ITEM_LIST_LENGTH": 20}),
]



def base_config(model: str, dataset: str, tiny: dict, ratings: dict) -> dict:
    """The fixture config a MODELS row runs on (MFN loads its own columns, so no load_col)."""
    if dataset == "rated":
        return ratings
    return {k: v for k, v in tiny.items() if k != "load_col" or model != "MFN"}


CTR = {**FAST, "metrics": ["AUC", "LogLoss"], "valid_metric": "AUC", "train_batch_size": 256,
       "eval_batch_size": 4096, "embedding_size": 4}


@pytest.fixture
def ratings(tmp_path) -> dict:
    """'rated': 60 users (gender, age), 30 items (genres), ratings 1..5 that depend on user and item parity."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "rated"
    folder.mkdir(parents=True)
    rows = []
    for u in range(60):
        for i in rng.choice(30, size=15, replace=False):
            rows.append((f"u{u}", f"i{i}", 5 if (u + i) % 2 else int(rng.choice([1, 2, 3])), 1000 + len(rows)))
    pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "rating:float", "timestamp:float"]).to_csv(
        folder / "rated.inter", sep="\t", index=False)
    pd.DataFrame({"user_id:token": [f"u{u}" for u in range(60)], "gender:token": ["MF"[u % 2] for u in range(60)],
                  "age:token": [str(u % 3) for u in range(60)], "occupation:token": "x", "zip_code:token": "z"}
                 ).to_csv(folder / "rated.user", sep="\t", index=False)
    pd.DataFrame({"item_id:token": [f"i{i}" for i in range(30)], "genre:token_seq": [f"g{i % 4} g{i % 5}" for i in range(30)],
                  "release_year:token": "1990"}).to_csv(folder / "rated.item", sep="\t", index=False)
    return {**CTR, "data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"), "protocol": "ctr"}


def keep_saved_model(store: dict):
    """An ``on_trainer`` hook for ``run``: ``store["model"]`` is a copy of the in-memory model taken whenever the
    trainer saves its checkpoint, so it is the best epoch's model as trained (what a reload must give back)."""
    def attach(trainer) -> None:
        save = trainer._save_checkpoint

        def save_and_copy(*args, **kwargs):
            save(*args, **kwargs)
            store["model"] = copy.deepcopy(trainer.model).eval()

        trainer._save_checkpoint = save_and_copy

    return attach
