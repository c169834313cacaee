"""IFM family benchmark: RecBole's FM, AFM, NFM and DeepFM against IFM, INN and DeepIFM on identical rows.

CTR protocol (``protocol: ctr``): ml-1m ratings >= 4 -> 1, <= 2 -> 0, 3 dropped; user profile and item fields;
RecBole's random 80/10/10 split with the run's seed, so every model of one seed trains and is tested on the same
rows; AUC and LogLoss; the epoch is selected on valid AUC. Every model gets the same embedding size, batch size and
epoch budget; optimisers are each family's own (RecBole's models: Adam, at lr 1e-2 because their 1e-3 default barely
moves in this budget at batch 4096; IFM / INN / DeepIFM: the reference's Adagrad, lr 0.1 for IFM and INN; DeepIFM's
README lr of 1e-3 belongs to an industrial dataset of far more steps, so it gets 0.1 too, as recorded in the table).

±1 regression (``--protocol libfm``, the IFM paper's task): the same ml-1m rows with labels ±1, written once as
libFM files (the CTR split of seed 0; fields user, item, gender, age, occupation, zip code, release year and the
first genre: libFM has one index per field) and converted with ``--convert=libfm``, so the converter runs on real
data too; the split is fixed across seeds, as the paper's given files are. FM, AFM (RecBole's, squared error on the
raw score), IFM and INN; clipped RMSE, selected on valid.

Each run is a fresh subprocess (own RNG and peak RSS). Writes ``docs/results/ifm.csv`` (rows added to earlier ones),
``docs/results/ifm.md`` (mean ± std over seeds) and ``docs/results/ifm_curves.png`` (valid AUC / clipped RMSE per
epoch).

    python benchmarks/ifm.py --seeds 0 1 2 --max_epochs 10
    python benchmarks/ifm.py --protocol libfm --models FM AFM IFM INN --seeds 0 1 2 --max_epochs 300 --time_budget 1800

IFM and INN run the paper's recipe (their YAML default ``stage: both``): the reference FM (batch norm, dropout)
trained first, then the model warm-started from its embeddings; each stage ends by early stopping.
    python benchmarks/ifm.py --dataset ml-100k --models FM IFM --seeds 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from common import ensure_ml1m_half, grid, mean_std_table, measured_run, paired_table, parse, stops_line, \
    write_page

RECBOLE = {"learner": "adam", "learning_rate": 0.01}
MODELS = {
    "FM": RECBOLE, "AFM": RECBOLE, "NFM": RECBOLE, "DeepFM": RECBOLE,
    "IFM": {}, "INN": {}, "DeepIFM": {"learning_rate": 0.1},
}
COMMON = {"embedding_size": 64, "train_batch_size": 4096}  # K: IFM.yaml's default (the reference's 256: 6x slower)
REFERENCE = """## Reference figures

The IFM paper's tables could not be obtained and its datasets (frappe, ml-tag) are ±1 regression,
not this CTR task, so no published figure sits beside these rows; the paper's claim is the ordering IFM > AFM > FM."""


LIBFM = "ml-1m-half-libfm"
LIBFM_FIELDS = ["user_id", "item_id", "gender", "age", "occupation", "zip_code", "release_year", "genre"]


def one_run(spec: dict) -> dict:
    """Runs in the child process: train + test one configuration, return metrics and costs."""
    metric = "clippedrmse" if spec["config"]["protocol"] == "libfm" else "auc"
    result, costs = measured_run(spec, f"valid_{metric}")
    return {f"valid_{metric}": float(result["best_valid_result"][metric]),
            **{f"test_{k}": float(v) for k, v in result["test_result"].items()}, **costs}


def write_libfm(data_path: Path, source: str = "ml-1m-half", seed: int = 0) -> None:
    """``data_path/<LIBFM>``: the CTR split of ``source`` (seed ``seed``) as ±1 libFM files, converted."""
    import tempfile

    from recbole.utils import init_seed

    from recbole_ext.data.convert import convert_libfm
    from recbole_ext.quick_start import build_config, load_dataset

    if (data_path / LIBFM).is_dir():
        return
    config = build_config("FM", source, config_dict={"data_path": str(data_path), "protocol": "ctr", "seed": seed,
                                                     "state": "WARNING"})
    init_seed(seed, True)  # RecBole shuffles the RS split with the global stream, as run() seeds it
    dataset = load_dataset(config)
    splits = dataset.build()  # also turns the feature tables into tensors
    users, items = dataset.user_feat, dataset.item_feat
    offsets, start = {}, 0
    for field in LIBFM_FIELDS:  # one index range per field, in order, so convert_libfm infers the fields
        offsets[field], start = start, start + dataset.num(field)
    with tempfile.TemporaryDirectory() as raw:
        for part, split in zip(("train", "validation", "test"), splits):
            feat = split.inter_feat
            uid, iid = feat["user_id"], feat["item_id"]
            columns = {"user_id": uid, "item_id": iid, **{f: users[f][uid] for f in ("gender", "age", "occupation",
                       "zip_code")}, "release_year": items["release_year"][iid], "genre": items["genre"][iid, 0]}
            index = pd.DataFrame({f: (columns[f] + offsets[f]).numpy() for f in LIBFM_FIELDS})
            lines = (feat["label"].numpy() * 2 - 1).astype(int).astype(str)
            for field in LIBFM_FIELDS:
                lines = lines + " " + index[field].astype(str) + ":1"
            (Path(raw) / f"{LIBFM}.{part}.libfm").write_text("\n".join(lines) + "\n")
        convert_libfm(raw, data_path, LIBFM, fields=LIBFM_FIELDS)


def summarise(frame: pd.DataFrame, out: Path) -> str:
    keys = ["dataset", "model", "settings", "max_epochs"]
    cols = ["epochs", "parameters", "valid_auc", "test_auc", "test_logloss", "s/epoch_train", "s/epoch_1thread",
            "s/epoch_eval", "wall_s", "peak_rss_mb"]
    cols = [c for c in cols if c in frame]
    ctr = frame[frame.dataset != LIBFM]
    table = mean_std_table(ctr, keys, cols, ("test", "valid")) + "\n\n" + stops_line(ctr, keys) if len(ctr) else ""
    regression = frame[frame.dataset == LIBFM]
    if len(regression):
        cols = ["epochs", "parameters", "valid_clippedrmse", "test_clippedrmse", "test_rmse", "test_mae",
                "s/epoch_train", "s/epoch_eval", "wall_s", "peak_rss_mb"]
        cols = [c for c in cols if c in frame]
        table += ("\n\n## ±1 regression (`--protocol libfm`): the same rows, labels ±1\n\nTest clipped RMSE (lower is "
                  "better) of the best valid clipped-RMSE epoch, mean ± std over seeds; the rows are the CTR split of "
                  "seed 0 written as libFM files and read back with `--convert=libfm` (8 fields: ids, profile, release "
                  "year, first genre).\n\n" + mean_std_table(regression, keys, cols, ("test", "valid")) + "\n\n"
                  + stops_line(regression, keys) + "\n\n### Paired per-seed differences (same seed, same rows)\n\n"
                  + paired_table(regression, ["dataset", "max_epochs"], "model",
                                 [("IFM", "FM"), ("IFM", "AFM"), ("AFM", "FM"), ("INN", "FM"), ("INN", "IFM")],
                                 ["test_clippedrmse", "test_rmse"]))
    intro = ("Test AUC / LogLoss "
             "of the best valid-AUC epoch, mean ± std over seeds (the same rows for every model of a seed). "
            f"`settings` lists what differs from each model's YAML besides embedding_size "
            f"{COMMON['embedding_size']} and batch {COMMON['train_batch_size']}. `s/epoch_train`: over the run on all "
            f"cores; `s/epoch_1thread`: 20 batches timed on one thread, scaled to the epoch (Adam for every model).")
    return write_page(out, "ifm", "IFM benchmark (CTR and ±1 regression protocols)", intro, table, REFERENCE, "valid_auc")


def ctr_main(script: str, name: str, doc: str, models: dict[str, dict], base: dict, summarise,
             regression: bool = False) -> None:
    """The CTR benchmarks' command line: ``models`` (row label -> overrides; the model is the label's first word),
    each run on ``base`` + its overrides, its overrides shown as ``settings``; ``regression`` adds ``--protocol``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m-half", choices=["ml-1m-half", "ml-100k"])
    ap.add_argument("--protocol", default="ctr", choices=["ctr", "libfm"] if regression else ["ctr"],
                    help=f"libfm: ±1 regression on {LIBFM} (the CTR rows of ml-1m-half, seed 0)")
    ap.add_argument("--models", nargs="+", default=list(models), choices=list(models))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--max_epochs", type=int, default=10, help="the epoch budget of every model")
    parsed = parse(ap, name, one_run, summarise)
    if parsed is None:
        return
    args, data_path, out, csv = parsed
    if args.dataset == "ml-1m-half" or args.protocol == "libfm":
        ensure_ml1m_half(data_path, args.src)
    if args.protocol == "libfm":
        write_libfm(data_path)
    runs = {tag: (tag.split()[0], {**base, **models[tag]},
                  {"settings": " ".join(f"{k}={v}" for k, v in models[tag].items()) or "yaml"}) for tag in args.models}
    grid(script, name, args, data_path, out, csv, args.protocol, runs, "model", summarise,
         [LIBFM if args.protocol == "libfm" else args.dataset])


def main() -> None:
    ctr_main(__file__, "ifm", __doc__, MODELS, COMMON, summarise, regression=True)


if __name__ == "__main__":
    main()
