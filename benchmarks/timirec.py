"""TiMiRec reproduction benchmark: ComiRec-SA, TiMiRec, TiMiRec+ and RecBole's SASRec under one protocol.

Parts (``--part``):
  grocery  Grocery_and_Gourmet_Food (ReChorus files, split and 99 fixed negatives kept), reference settings
  ml1m     ml-1m (users 1-2,999 copy) under the 1000-fixed-negatives protocol and under RecBole full ranking

Each run is a fresh subprocess (isolated RNG and peak-RSS reading) through ``recbole_ext.run``. Writes
``docs/results/timirec.csv`` (one row per run, added to earlier ones), ``docs/results/timirec.md`` (mean ± std over
seeds) and ``docs/results/valid_curves.png``; every fixed-negative run is also scored by full ranking.

    python benchmarks/timirec.py --part grocery --preset fast --seeds 0 1 2 --time_budget 900
    python benchmarks/timirec.py --part ml1m --preset fast --max_epochs 5 --models ComiRec TiMiRec+
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from common import add_src, launch, raw_data, save_png  # benchmarks/common.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["hit@5", "ndcg@5", "hit@10", "ndcg@10", "hit@20", "ndcg@20"]

# Reference hyper-parameters (THUwangcy/ReChorus): TiMiRec on Grocery from master's Topk_Amazon.sh,
# ComiRec and SASRec from the CIKM22 README baselines (SASRec as RecBole's own model, CE loss).
MODELS = {
    "ComiRec": ("ComiRec", {"n_interests": 4, "attn_size": 8, "add_pos": 1, "learning_rate": 1e-3}),
    "TiMiRec": ("TiMiRec", {"add_trm": 0, "learning_rate": 1e-4}),
    "TiMiRec+": ("TiMiRec", {"add_trm": 1, "learning_rate": 1e-4}),
    "SASRec": ("SASRec", {"n_layers": 1, "n_heads": 1, "hidden_size": 64, "inner_size": 64, "learning_rate": 1e-4,
                          "weight_decay": 1e-6, "train_batch_size": 256, "loss_type": "CE",
                          "train_neg_sample_args": None}),
}
DATASET_SETTINGS = {  # per-dataset TiMiRec settings of the reference runs
    "grocery": {"TiMiRec": {"n_interests": 6, "temp": 1.0, "n_layers": 1}},
    "ml-1m-half": {"TiMiRec": {"n_interests": 2, "temp": 0.5, "n_layers": 2}},
}
REFERENCE = """## Reference figures (not the paper's tables, which could not be obtained)

| dataset, protocol | model | test HR@5 | test NDCG@5 | source |
|---|---|---|---|---|
| Grocery, 99 fixed negatives | TiMiRec+ | 0.4063 | 0.3087 | ReChorus CIKM22 README |
| Grocery, 99 fixed negatives | TiMiRec | 0.4020 | 0.2922 | ReChorus CIKM22 README |
| Grocery, 99 fixed negatives | ComiRec | 0.3763 | 0.2694 | ReChorus CIKM22 README |
| Grocery, 99 fixed negatives | SASRec | 0.3888 | 0.2923 | ReChorus CIKM22 README (ReChorus's SASRec, BPR) |
| full ml-1m (6,040 users), 1000 fixed negatives | TiMiRec+ | 0.3361 | 0.2353 | CIKM22 log, seed 1 (HR@10 0.4555, NDCG@10 0.2738) |

Our ml-1m rows use the first 2,999 users only ("ml-1m (users 1-2,999)"), so they are context, not a like-for-like
comparison."""
PRESETS = {"reference": {}, "fast": {"learning_rate": 1e-3}}  # fast: 10x lr (Adam), same everything else
# RecBole full ranking on the same leave-one-out split (RecBole's sequential default), same metrics
FULL_RANKING = {"protocol": "recbole", "metrics": ["Hit", "NDCG"], "topk": [5, 10, 20], "valid_metric": "NDCG@5",
                "MAX_ITEM_LIST_LENGTH": 20, "eval_batch_size": 65536,
                "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
PARTS = {
    "grocery": [("grocery", "rechorus", {"topk": [5, 10, 20, 50]})],
    "ml1m": [("ml-1m-half", "rechorus", {"eval_neg_num": 1000}), ("ml-1m-half", "recbole", FULL_RANKING)],
}


def ensure_data(data_path: Path, src) -> None:
    from recbole_ext.data.convert import convert_ml1m, convert_rechorus

    if not (data_path / "grocery").is_dir():
        convert_rechorus(raw_data(src, "Grocery_and_Gourmet_Food"), data_path, "grocery")
    if not (data_path / "ml-1m-half").is_dir():
        convert_ml1m(raw_data(src, "ml-1m-first-half"), data_path, "ml-1m-half")


def one_run(spec: dict) -> dict:
    """Runs in the child process: train + test one configuration, return metrics and costs."""
    import recbole_ext
    from recbole_ext.quick_start import evaluate_checkpoint

    start = time.perf_counter()
    result = recbole_ext.run(spec["model"], spec["dataset"], config_dict=spec["config"])
    wall = time.perf_counter() - start
    full = {}
    if spec.get("full_ranking") and spec["config"]["protocol"] != "recbole":  # same checkpoint, all items ranked
        full = evaluate_checkpoint(result["checkpoint"], {**spec["config"], **FULL_RANKING})
    curve = Path(spec["curve"])
    curve.parent.mkdir(parents=True, exist_ok=True)
    curve.write_text(json.dumps({"valid_ndcg@5": result["valid_scores"], "stage_epochs": result.get("stage_epochs")}))
    return {
        "epochs": result["epochs"],
        "valid_ndcg@5": float(result["best_valid_result"]["ndcg@5"]),
        "valid_hit@5": float(result["best_valid_result"]["hit@5"]),
        **{f"test_{k}": float(v) for k, v in result["test_result"].items() if k in METRICS},
        **{f"full_test_{k}": float(v) for k, v in full.items() if k in METRICS},
        "s/epoch_train": sum(result["train_seconds"]) / max(len(result["train_seconds"]), 1),
        "s/epoch_eval": sum(result["valid_seconds"]) / max(len(result["valid_seconds"]), 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall,
    }


def summarise(frame: pd.DataFrame, out: Path) -> str:
    ok = frame[frame.status == "ok"]
    cols = ["epochs", "valid_hit@5", "valid_ndcg@5"] + [f"test_{m}" for m in METRICS if f"test_{m}" in ok] + [
        f"full_test_{m}" for m in ("hit@10", "ndcg@10") if f"full_test_{m}" in ok] + [
        "s/epoch_train", "s/epoch_eval", "peak_rss_mb"]
    # rows from before the history-excluding sampler trained on RecBole's negatives (positive excluded only)
    ok = ok.assign(overrides=ok.overrides.fillna(""), train_neg=ok.get("train_neg", pd.Series(index=ok.index, dtype=str))
                   .fillna("positive"))
    groups = ok.groupby(["dataset", "protocol", "preset", "model", "overrides", "train_neg", "budget_s"], sort=False)
    rows = []
    for key, g in groups:
        cells = ["–" if g[c].isna().all() else f"{g[c].mean():.4f} ± {g[c].std(ddof=0):.4f}"
                 if c.startswith(("test", "valid", "full")) else f"{g[c].mean():.1f}" for c in cols]
        rows.append([*key[:6], f"{key[6]:g}" if key[6] else "none", str(len(g)), *cells])
    header = ["dataset", "protocol", "preset", "model", "overrides", "training negatives exclude", "budget s/stage",
              "seeds", *cols]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(r) + " |" for r in rows])
    machine = f"{platform.processor() or platform.machine()}, {platform.python_version()}, CPU only"
    text = (f"# TiMiRec benchmark\n\nGenerated by `benchmarks/timirec.py` on {machine}. Test metrics at the best "
            f"valid NDCG@5 epoch (mean ± std over seeds); `full_test_*`: the same checkpoint ranked against all items "
            f"(RecBole full ranking, same split); `epochs` counts both TiMiRec stages; s/epoch averages both stages.\n\n{table}\n\n"
            f"{REFERENCE}\n")
    (out / "timirec.md").write_text(text)
    plot_curves(out)
    return table


def plot_curves(out: Path) -> None:
    """``valid_curves.png``: valid NDCG@5 per epoch of every run with a saved curve, one panel per dataset;
    a dot marks where a TiMiRec run switched from pretrain to finetune."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = sorted((out / "curves").glob("*.json"))
    datasets = sorted({path.name.split("_")[0] for path in curves})
    if not datasets:
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for path in (c for c in curves if c.name.split("_")[0] == dataset):
            data = json.loads(path.read_text())
            line, = ax.plot(range(1, len(data["valid_ndcg@5"]) + 1), data["valid_ndcg@5"], lw=1,
                            label=path.stem.removeprefix(f"{dataset}_"))
            switch = (data.get("stage_epochs") or {}).get("pretrain")
            if switch and switch < len(data["valid_ndcg@5"]):
                ax.plot(switch, data["valid_ndcg@5"][switch - 1], "o", color=line.get_color())
        ax.set(title=dataset, xlabel="epoch (both stages)", ylabel="valid NDCG@5")
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_png(fig, out / "valid_curves.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--part", choices=[*PARTS, "all"], default="grocery")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--preset", choices=list(PRESETS), default="fast")
    ap.add_argument("--protocols", nargs="+", choices=["rechorus", "recbole"], default=["rechorus", "recbole"],
                    help="training protocols to run (rechorus runs are also tested by full ranking)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--max_epochs", type=int, default=200, help="epochs per stage")
    ap.add_argument("--time_budget", type=float, default=0, help="seconds per training stage (0: none)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides for every run, recorded in the table (e.g. n_interests=4)")
    ap.add_argument("--data_path", default=str(ROOT / "dataset"))
    add_src(ap)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--summarise_only", action="store_true", help="rebuild timirec.md from timirec.csv")
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(json.loads(args.one))), flush=True)
        return
    data_path, out = Path(args.data_path).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "timirec.csv"
    if args.summarise_only:
        print(summarise(pd.read_csv(csv), out))
        return
    ensure_data(data_path, args.src)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    for dataset, protocol, extra in PARTS["grocery"] + PARTS["ml1m"] if args.part == "all" else PARTS[args.part]:
        if protocol not in args.protocols:
            continue
        for name in args.models:
            model, settings = MODELS[name]
            for seed in args.seeds:
                config = {"data_path": str(data_path), "protocol": protocol, "seed": seed, "epochs": args.max_epochs,
                          "show_progress": False, "state": "WARNING", "checkpoint_dir": str(Path(tempfile.gettempdir()) / "recbole_ext_bench"),
                          **settings, **DATASET_SETTINGS[dataset].get(model, {}), **PRESETS[args.preset], **extra, **overrides}
                if args.time_budget:
                    config["time_budget"] = args.time_budget
                train_neg = config.get("train_neg_exclude", "history" if protocol == "rechorus" else "positive")
                tag = "".join(f"_{item}" for item in args.set) + (f"_budget{args.time_budget:g}" if args.time_budget else "") \
                    + ("_histneg" if train_neg == "history" else "")
                curve = out / "curves" / (f"{dataset}_{protocol}_{name}_{args.preset}{tag}_seed{seed}.json")
                row = {"dataset": dataset, "protocol": protocol, "preset": args.preset, "model": name, "seed": seed,
                       "budget_s": args.time_budget, "overrides": " ".join(args.set),
                       "train_neg": train_neg,
                       **launch(__file__, "--one", json.dumps({"model": model, "dataset": dataset, "config": config,
                                                               "curve": str(curve.resolve()), "full_ranking": True}))}
                print(json.dumps(row), flush=True)
                rows = pd.concat([pd.read_csv(csv), pd.DataFrame([row])]) if csv.exists() else pd.DataFrame([row])
                rows.to_csv(csv, index=False)  # rewritten whole: rows with new columns stay aligned
    print(summarise(pd.read_csv(csv), out))


if __name__ == "__main__":
    main()
