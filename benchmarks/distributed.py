"""Ray Train data parallelism against one process: same metrics, and what the workers cost.

    python benchmarks/distributed.py [--data_path=/tmp/bench/dataset] [--src=RAW_DATA] [--epochs=2]

On ml-1m (users 1–2,999): TiMiRec (both stages, ReChorus protocol) and IFM (CTR protocol), each as one plain process
(``recbole_ext.run``, 2 torch threads), one Ray Train worker (2 threads) and two workers (1 thread each), the same
global batch and seed. Writes ``docs/results/distributed.{csv,md,png}``. On a 2-core machine two workers cannot be
faster: the page says what the overhead is and where it goes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_src, ensure_ml1m_half, save_png, table_page  # noqa: E402

MODELS = {  # label -> (model, protocol, overrides, the test metric shown)
    "TiMiRec (both stages)": ("TiMiRec", "rechorus", {"stage": "both"}, "ndcg@5"),
    "IFM (CTR)": ("IFM", "ctr", {"loss_type": "BCE", "embedding_size": 16}, "auc"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--data_path", default=str(root / "dataset"))
    add_src(ap)
    ap.add_argument("--out", default=str(root / "docs" / "results"))
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    import torch

    import recbole_ext
    from recbole_ext.distributed import run_distributed

    ensure_ml1m_half(args.data_path, args.src)
    out = Path(args.out)
    storage = Path(tempfile.mkdtemp(prefix="recbole_ext_dist_"))
    rows = []
    for label, (model, protocol, extra, metric) in MODELS.items():
        config = {"data_path": args.data_path, "protocol": protocol, "epochs": args.epochs, "show_progress": False,
                  "state": "WARNING", "seed": 0, **extra}
        for setting, workers in (("one process", 0), ("Ray Train, 1 worker x 2 threads", 1),
                                 ("Ray Train, 2 workers x 1 thread", 2)):
            print(f"[distributed] {label}: {setting} ...", flush=True)
            start = time.perf_counter()
            if workers == 0:
                torch.set_num_threads(2)
                result = recbole_ext.run(model, "ml-1m-half", config_dict={
                    **config, "checkpoint_dir": str(storage / "plain")})
                rate = None
            else:
                result = run_distributed(model, "ml-1m-half", config_dict=config, workers=workers,
                                         cpus_per_worker=2 / workers, storage_path=storage,
                                         name=f"{model}-{workers}")
                rate = result["samples_per_s_per_worker"]
            wall = time.perf_counter() - start
            train = sum(result["train_seconds"])
            rows.append({"model": label, "setting": setting, "workers": workers or 1, "epochs": result["epochs"],
                         f"test_{metric}": round(float(result["test_result"][metric]), 4),
                         "best_valid": round(float(result["best_valid_score"]), 4),
                         "last_train_loss": round(result["train_losses"][-1], 4),
                         "train_s": round(train, 1), "valid_s": round(sum(result["valid_seconds"]), 1),
                         "wall_s": round(wall, 1), "rows/s/worker": round(rate) if rate else None})
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    plt = table_page(out, "distributed", "Ray Train data parallelism vs one process",
                     f"2 cores. ml-1m (users 1–2,999), {args.epochs} epochs (per stage), seed 0, the same global batch "
                     "in every setting. `train_s`/`valid_s` are summed over epochs inside the workers; `wall_s` "
                     "includes starting Ray and the workers, loading the data in every worker, and testing.", frame)
    fig, axes = plt.subplots(1, len(MODELS), figsize=(9, 3))
    for ax, (label, part) in zip(axes, frame.groupby("model", sort=False)):
        ax.barh(part.setting, part.train_s, label="train")
        ax.barh(part.setting, part.wall_s - part.train_s, left=part.train_s, label="everything else", alpha=0.6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("seconds")
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, out / "distributed.png")
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
