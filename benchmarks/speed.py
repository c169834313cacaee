"""Training speed of the sequential models, ours beside the ReChorus CIKM22 reference, in one run on one machine.

Rows: TiMiRec pretrain and finetune (add_trm 1, K 6), ComiRec (K 4), SASRec (RecBole's, BPR, 1 layer, 1 head,
no dropout; ReChorus's SASRec beside it), all on Grocery_and_Gourmet_Food (ReChorus files, 99 fixed negatives),
batch 256, the reference flags, ``--epochs`` epochs each, once per ``--seeds`` value (default 0), one job at a time.
Every measurement is a fresh subprocess (its own peak RSS). Per row:

* ours: train s/epoch (median over epochs, RecBole's ``Trainer.fit``), eval s, peak RSS, dev NDCG@5 per epoch;
  then the breakdown of one more epoch on a fresh model: ``data`` (one pass of the fast loader, negatives
  included), ``forward`` / ``backward`` / ``optimizer`` on the same batches pre-built (their sum is the
  **compute floor**), and ``recbole_data`` (one pass of RecBole's own TrainDataLoader, for comparison);
* reference: train s/epoch and eval s from its log (median), its dev NDCG@5 per epoch, its peak RSS; it runs
  from a temporary copy of the ``--reference`` folder (a checkout of THUwangcy/ReChorus, branch CIKM22; it writes
  models and logs beside its code) when that folder is present, and the table says so when it is not.

Writes ``docs/results/speed.csv``, ``speed.md`` and ``speed.png``.

    python benchmarks/speed.py                       # all rows, 3 epochs, seed 0
    python benchmarks/speed.py --rows ComiRec --seeds 0 1 2 3 4   # both sides once per seed: medians, mean ± std
    python benchmarks/speed.py --rows ComiRec --epochs 2 --no_reference
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import pandas as pd

from common import add_src, launch, raw_data, save_png  # benchmarks/common.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ENV = "RECBOLE_EXT_RECHORUS"  # default of --reference
TIMIREC = {"n_interests": 6, "add_pos": 1, "add_trm": 1, "temp": 1.0, "n_layers": 1, "learning_rate": 1e-4}
REF_TIMIREC = "--model_name TiMiRec --emb_size 64 --lr 1e-4 --l2 1e-6 --history_max 20 --K 6 --add_pos 1 --add_trm 1"
# row -> (our model, our config, the reference's flags)
ROWS = {
    "TiMiRec pretrain": ("TiMiRec", {**TIMIREC, "stage": "pretrain"}, f"{REF_TIMIREC} --stage pretrain"),
    "TiMiRec finetune": ("TiMiRec", {**TIMIREC, "stage": "finetune"},
                         f"{REF_TIMIREC} --stage finetune --temp 1 --n_layers 1"),
    "ComiRec": ("ComiRec", {"n_interests": 4, "attn_size": 8, "add_pos": 1, "learning_rate": 1e-3},
                "--model_name ComiRec --emb_size 64 --lr 1e-3 --l2 1e-6 --attn_size 8 --K 4 --add_pos 1 --history_max 20"),
    "SASRec": ("SASRec", {"n_layers": 1, "n_heads": 1, "hidden_size": 64, "inner_size": 64, "hidden_dropout_prob": 0.0,
                          "attn_dropout_prob": 0.0, "loss_type": "BPR", "learning_rate": 1e-4, "weight_decay": 1e-6,
                          "train_batch_size": 256,
                          "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0,
                                                    "dynamic": False, "candidate_num": 0}},
               "--model_name SASRec --emb_size 64 --num_layers 1 --num_heads 1 --lr 1e-4 --l2 1e-6 --history_max 20"),
}
REF_EPOCH = re.compile(r"Epoch (\d+)\s+loss=[\d.]+ \[([\d.]+) s\]\s+dev=\(HR@5:[\d.]+,NDCG@5:([\d.]+)\) \[([\d.]+) s\]")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def breakdown(model: str, config: dict) -> dict:
    """One epoch's parts on a fresh model: data pass, then forward / backward / optimizer on pre-built batches."""
    import torch

    from recbole_ext.quick_start import _build, build_config
    from recbole_ext.trainer.base import resolve_trainer

    cfg = build_config(model, "grocery", config_dict={**config, "stage": "pretrain"} if model == "TiMiRec" else config)
    net, train_data, _, _ = _build(cfg)
    if model == "TiMiRec":
        net.mode = config["stage"]
    sync = torch.cuda.synchronize if cfg["device"].type == "cuda" else (lambda: None)
    start = time.perf_counter()
    batches = [batch.to(cfg["device"]) for batch in train_data]
    sync()
    parts = {"data": time.perf_counter() - start, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    optimizer = resolve_trainer(cfg)(cfg, net).optimizer
    net.train()
    for batch in batches:
        t0 = time.perf_counter()
        optimizer.zero_grad()
        losses = net.calculate_loss(batch)
        loss = sum(losses) if isinstance(losses, tuple) else losses
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        optimizer.step()
        sync()
        parts["forward"] += t1 - t0
        parts["backward"] += t2 - t1
        parts["optimizer"] += time.perf_counter() - t2
    del batches
    # RecBole's own loader on the same split (its sampler excludes the positive only)
    cfg_rb = build_config(model, "grocery", config_dict={**config, "sequential_loader": "recbole",
                                                         "train_neg_exclude": "positive", "stage": "pretrain"})
    _, recbole_loader, _, _ = _build(cfg_rb)
    start = time.perf_counter()
    for _ in recbole_loader:
        pass
    parts["recbole_data"] = time.perf_counter() - start
    parts["floor"] = parts["forward"] + parts["backward"] + parts["optimizer"]
    return parts


def ours(spec: dict) -> dict:
    """Child process: train ``epochs`` epochs through ``recbole_ext.run``, then (first seed) the breakdown."""
    import recbole_ext

    result = recbole_ext.run(spec["model"], "grocery", config_dict=spec["config"])
    out = {"train_s": median(result["train_seconds"]), "eval_s": median(result["valid_seconds"]),
           "peak_rss_mb": peak_rss_mb(), "dev_ndcg@5": result["valid_scores"], "checkpoint": result["checkpoint"]}
    return {**out, **(breakdown(spec["model"], spec["config"]) if spec["breakdown"] else {})}


def reference(spec: dict) -> dict:
    """Child process: the reference ``main.py`` with the row's flags, from the temporary copy."""
    import runpy

    src, log = Path(spec["src"]), Path(spec["log"])
    import numpy as np

    np.int = int  # ReChorus's SASRec builds its mask with np.int (gone since numpy 1.24); its code stays untouched
    os.chdir(src)
    sys.path.insert(0, str(src))
    sys.argv = ["main.py", *spec["flags"].split(), "--dataset", "Grocery_and_Gourmet_Food", "--path", spec["data"],
                "--epoch", str(spec["epochs"]), "--num_workers", "0", "--random_seed", str(spec["seed"]), "--gpu", spec["gpu"],
                "--log_file", str(log)]
    runpy.run_path("main.py", run_name="__main__")
    epochs = REF_EPOCH.findall(log.read_text())
    if not epochs:
        raise RuntimeError(f"no epoch lines in {log}")
    return {"train_s": median(float(e[1]) for e in epochs), "eval_s": median(float(e[3]) for e in epochs),
            "dev_ndcg@5": [float(e[2]) for e in epochs], "peak_rss_mb": peak_rss_mb()}


def combine(runs: list[dict], seeds: list[int]) -> dict:
    """One table row from a row's runs (one per seed): medians of the times, the largest RSS, the first seed's
    breakdown, dev NDCG@5 per epoch averaged over the seeds and after the last epoch as mean ± std."""
    import numpy as np

    row = dict(runs[0])
    for key in ("train_s", "eval_s", "ref_train_s", "ref_eval_s"):
        if key in row:
            row[key] = median(run[key] for run in runs)
    for key in ("peak_rss_mb", "ref_peak_rss_mb"):
        if key in row:
            row[key] = max(run[key] for run in runs)
    for side in ("", "ref_"):
        curves = np.array([run.get(f"{side}dev_ndcg@5", []) for run in runs], dtype=float)
        row.pop(f"{side}dev_ndcg@5", None)
        if curves.size == 0:
            row[f"{side}dev"] = row[f"{side}dev_last"] = "–"
            continue
        row[f"{side}dev"] = " ".join(f"{v:.4f}" for v in curves.mean(0))
        last = curves[:, -1]
        row[f"{side}dev_last"] = f"{last.mean():.4f} ± {last.std():.4f}" if len(last) > 1 else f"{last[0]:.4f}"
    row["seeds"] = " ".join(map(str, seeds))
    row.pop("checkpoint", None)
    return row


def machine() -> str:
    try:
        name = next(ln.split(":", 1)[1].strip() for ln in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    import torch

    return f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def write(frame: pd.DataFrame, out: Path, device: str, epochs: int) -> str:
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "speed.csv", index=False)
    header = ["row", "ours train s/epoch", "reference", "ours / ref", "floor s (fwd + bwd + opt)", "ours / floor",
              "data s", "RecBole's loader s", "eval s ours / ref", "peak RSS MB ours / ref", "ours / ref RSS",
              "dev NDCG@5 per epoch, ref vs ours", "dev NDCG@5 last epoch, ref vs ours (seeds)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in frame.itertuples():
        def num(x, fmt="{:.1f}"):
            return "–" if pd.isna(x) else fmt.format(x)
        lines.append("| " + " | ".join([
            r.row, num(r.train_s), num(r.ref_train_s), num(r.train_s / r.ref_train_s, "{:.2f}"),
            f"{num(r.floor)} ({num(r.forward)} + {num(r.backward)} + {num(r.optimizer)})",
            num(r.train_s / r.floor, "{:.2f}"), num(r.data, "{:.2f}"), num(r.recbole_data, "{:.2f}"),
            f"{num(r.eval_s, '{:.2f}')} / {num(r.ref_eval_s, '{:.2f}')}",
            f"{num(r.peak_rss_mb, '{:.0f}')} / {num(r.ref_peak_rss_mb, '{:.0f}')}",
            num(r.peak_rss_mb / r.ref_peak_rss_mb, "{:.2f}"),
            f"{r.ref_dev} vs {r.dev}", f"{r.ref_dev_last} vs {r.dev_last} ({r.seeds})"]) + " |")
    table = "\n".join(lines)
    text = (f"# Training speed: ours beside the ReChorus reference\n\nGenerated by `benchmarks/speed.py` on "
            f"{machine()}, device {device}: Grocery_and_Gourmet_Food (ReChorus files, 99 fixed negatives), batch 256, "
            f"reference flags, {epochs} epochs per row, one job at a time. Train s/epoch is the median over the "
            "epochs and seeds (negative sampling, batching, forward, backward, optimizer); peak RSS the largest over "
            "the seeds; dev NDCG@5 per epoch the mean over the seeds, and after the last epoch mean ± std (seeds "
            "listed: ours and the reference run each with the same seed values); the floor (first seed) is the same model's "
            "forward + backward + optimizer on pre-built batches for one epoch; data s is one pass of our loader "
            "(negatives included), RecBole's loader s one pass of RecBole's own TrainDataLoader on the same split. "
            "TiMiRec finetune starts from the pretrain row's checkpoint on both sides.\n\n"
            f"{table}\n\n![speed](speed.png)\n")
    (out / "speed.md").write_text(text)
    plot(frame, out)
    return table


def plot(frame: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(frame))
    bottom = [0.0] * len(frame)
    for part in ("data", "forward", "backward", "optimizer"):
        ax.bar([i - 0.2 for i in x], frame[part], 0.4, bottom=bottom, label=f"ours: {part}")
        bottom = [b + v for b, v in zip(bottom, frame[part])]
    ax.scatter([i - 0.2 for i in x], frame["train_s"], color="black", marker="_", s=400, label="ours: train s/epoch")
    ax.bar([i + 0.2 for i in x], frame["ref_train_s"], 0.4, color="grey", label="ReChorus reference")
    ax.set_xticks(list(x), frame["row"])
    ax.set_ylabel("seconds per training epoch")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, out / "speed.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="each row once per seed, ours and the reference")
    ap.add_argument("--no_reference", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="train on CUDA (ours and the reference)")
    ap.add_argument("--data_path", default=str(ROOT / "dataset"))
    add_src(ap)
    ap.add_argument("--reference", default=os.environ.get(REFERENCE_ENV),
                    help="a checkout of THUwangcy/ReChorus, branch CIKM22, run from a temporary copy; "
                         f"default: ${REFERENCE_ENV}; absent: the ours rows only")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = ap.parse_args()
    if args.child:
        kind, spec = args.child
        print("RESULT " + json.dumps((ours if kind == "ours" else reference)(json.loads(spec))), flush=True)
        return
    from recbole_ext.data.convert import convert_rechorus

    data_path = Path(args.data_path).resolve()
    if not (data_path / "grocery").is_dir():
        convert_rechorus(raw_data(args.src, "Grocery_and_Gourmet_Food"), data_path, "grocery")
    work = Path(tempfile.mkdtemp(prefix="recbole_ext_speed_"))
    run_reference = bool(args.reference) and Path(args.reference).is_dir() and not args.no_reference
    if run_reference:  # the reference writes ../model, ../log and a corpus cache: give it copies to write into
        grocery = raw_data(args.src, "Grocery_and_Gourmet_Food")
        shutil.copytree(args.reference, work / "reference")
        (work / "data" / "Grocery_and_Gourmet_Food").mkdir(parents=True)
        for csv in grocery.glob("*.csv"):
            (work / "data" / "Grocery_and_Gourmet_Food" / csv.name).symlink_to(csv)
    device = "cuda" if args.gpu else "cpu"
    base = {"data_path": str(data_path), "protocol": "rechorus", "epochs": args.epochs, "stopping_step": args.epochs,
            "show_progress": False, "state": "WARNING", "use_gpu": args.gpu, "checkpoint_dir": str(work / "saved")}
    rows, pretrain_checkpoints = [], {}
    for name in args.rows:
        model, settings, flags = ROWS[name]
        runs = []
        for seed in args.seeds:
            config = {**base, **settings, "seed": seed}
            if name == "TiMiRec finetune":
                config["pretrain_path"] = pretrain_checkpoints.get(seed)
            run = launch(__file__, "--child", "ours", json.dumps(
                {"model": model, "config": config, "breakdown": seed == args.seeds[0]}))
            if name == "TiMiRec pretrain":
                pretrain_checkpoints[seed] = run.get("checkpoint")
            if run_reference:
                log = work / f"{name.replace(' ', '_')}_seed{seed}.log"
                ref = launch(__file__, "--child", "reference", json.dumps({
                    "src": str(work / "reference" / "src"), "data": str(work / "data"), "flags": flags, "seed": seed,
                    "epochs": args.epochs, "gpu": "0" if args.gpu else "", "log": str(log)}))
                run.update({f"ref_{k}": v for k, v in ref.items()})
            print(json.dumps({"row": name, "seed": seed, **run}), flush=True)
            runs.append(run)
        rows.append({"row": name, "device": device, "epochs": args.epochs, **combine(runs, args.seeds)})
    frame = pd.DataFrame(rows)
    csv = Path(args.out) / "speed.csv"
    if csv.is_file():  # keep the rows not re-run (each row's ours and reference still come from one run)
        earlier = pd.read_csv(csv)
        frame = pd.concat([earlier[~earlier.row.isin(frame.row)], frame]).set_index("row").loc[
            [r for r in ROWS if r in set(earlier.row) | set(frame.row)]].reset_index()
    for column in ("train_s", "ref_train_s", "floor", "forward", "backward", "optimizer", "data", "recbole_data",
                   "eval_s", "ref_eval_s", "peak_rss_mb", "ref_peak_rss_mb"):
        if column not in frame:
            frame[column] = float("nan")
    for column in ("dev", "ref_dev", "dev_last", "ref_dev_last", "seeds"):  # rows of an earlier run may lack some
        frame[column] = frame[column].fillna("–") if column in frame else "–"
    print(write(frame, Path(args.out), device, args.epochs))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
