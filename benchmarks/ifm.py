"""IFM family benchmark: RecBole's FM, AFM, NFM and DeepFM against IFM, INN and DeepIFM on identical rows.

CTR protocol (``protocol: ctr``): ml-1m ratings >= 4 -> 1, <= 2 -> 0, 3 dropped; user profile and item fields;
RecBole's random 80/10/10 split with the run's seed, so every model of one seed trains and is tested on the same
rows; AUC and LogLoss; the epoch is selected on valid AUC. Every model gets the same embedding size, batch size and
epoch budget; optimisers are each family's own (RecBole's models: Adam, at lr 1e-2 because their 1e-3 default barely
moves in this budget at batch 4096; IFM / INN / DeepIFM: the reference's Adagrad, lr 0.1 for IFM and INN; DeepIFM's
README lr of 1e-3 belongs to an industrial dataset of far more steps, so it gets 0.1 too, as recorded in the table).

Each run is a fresh subprocess (own RNG and peak RSS). Writes ``docs/results/ifm.csv`` (rows added to earlier ones),
``docs/results/ifm.md`` (mean ± std over seeds) and ``docs/results/ifm_curves.png`` (valid AUC per epoch).

    python benchmarks/ifm.py --seeds 0 1 2 --max_epochs 10
    python benchmarks/ifm.py --dataset ml-100k --models FM IFM --seeds 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from common import ensure_ml1m_half, grid, mean_std_table, measured_run, parse, write_page

RECBOLE = {"learner": "adam", "learning_rate": 0.01}
MODELS = {
    "FM": RECBOLE, "AFM": RECBOLE, "NFM": RECBOLE, "DeepFM": RECBOLE,
    "IFM": {}, "INN": {}, "DeepIFM": {"learning_rate": 0.1},
}
COMMON = {"embedding_size": 16, "train_batch_size": 4096}
REFERENCE = """## Reference figures

The IFM paper's tables could not be obtained (specs/ifm.md §6) and its datasets (frappe, ml-tag) are ±1 regression,
not this CTR task, so no published figure sits beside these rows; the paper's claim is the ordering IFM > AFM > FM."""


def one_run(spec: dict) -> dict:
    """Runs in the child process: train + test one configuration, return metrics and costs."""
    result, costs = measured_run(spec, "valid_auc")
    return {"valid_auc": float(result["best_valid_result"]["auc"]),
            **{f"test_{k}": float(v) for k, v in result["test_result"].items()}, **costs}


def summarise(frame: pd.DataFrame, out: Path) -> str:
    cols = ["epochs", "parameters", "valid_auc", "test_auc", "test_logloss", "s/epoch_train", "s/epoch_1thread",
            "s/epoch_eval", "peak_rss_mb"]
    table = mean_std_table(frame, ["dataset", "model", "settings", "max_epochs"], cols, ("test", "valid"))
    intro = ("Test AUC / LogLoss "
             "of the best valid-AUC epoch, mean ± std over seeds (the same rows for every model of a seed). "
            f"`settings` lists what differs from each model's YAML besides embedding_size "
            f"{COMMON['embedding_size']} and batch {COMMON['train_batch_size']}. `s/epoch_train`: over the run on all "
            f"cores; `s/epoch_1thread`: 20 batches timed on one thread, scaled to the epoch (Adam for every model).")
    return write_page(out, "ifm", "IFM benchmark (CTR protocol)", intro, table, REFERENCE, "valid_auc")


def ctr_main(script: str, name: str, doc: str, models: dict[str, dict], base: dict, summarise) -> None:
    """The CTR benchmarks' command line: ``models`` (row label -> overrides; the model is the label's first word),
    each run on ``base`` + its overrides, its overrides shown as ``settings``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m-half", choices=["ml-1m-half", "ml-100k"])
    ap.add_argument("--models", nargs="+", default=list(models), choices=list(models))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--max_epochs", type=int, default=10, help="the epoch budget of every model")
    parsed = parse(ap, name, one_run, summarise)
    if parsed is None:
        return
    args, data_path, out, csv = parsed
    ensure_ml1m_half(data_path)
    runs = {tag: (tag.split()[0], {**base, **models[tag]},
                  {"settings": " ".join(f"{k}={v}" for k, v in models[tag].items()) or "yaml"}) for tag in args.models}
    grid(script, name, args, data_path, out, csv, "ctr", runs, "model", summarise, [args.dataset])


def main() -> None:
    ctr_main(__file__, "ifm", __doc__, MODELS, COMMON, summarise)


if __name__ == "__main__":
    main()
