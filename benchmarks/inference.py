"""Using trained models on an ml-1m-sized catalogue: how long a checkpoint takes to load, to answer 1,000 users'
top-10 (history excluded) and to export its embeddings, on CPU.

    python benchmarks/inference.py [--data_path=/tmp/bench/dataset] [--src=RAW_DATA] [--users=1000] [--threads=2]

Each model is trained for one epoch on ml-1m (users 1–2,999: 3,706 items of which 3,670 appear) first; the
numbers are about serving, not quality. Writes ``docs/results/inference.{csv,md,png}``.
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

RUNS = {  # label -> (model, protocol, config overrides, what to export)
    "ComiRec (K 4)": ("ComiRec", "rechorus", {}, "interests"),
    "TiMiRec pretrain (K 2)": ("TiMiRec", "rechorus", {"stage": "pretrain"}, "interests"),
    "SASRec (RecBole)": ("SASRec", "rechorus", {"loss_type": "CE", "train_neg_sample_args": None}, "users"),
    "IFM (no full sort: every user x item row)": ("IFM", "ctr", {"loss_type": "BCE", "embedding_size": 16}, "items"),
    "MARIF (no embedding table: history towers)": ("MARIF", "ctr", {}, None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--data_path", default=str(root / "dataset"))
    add_src(ap)
    ap.add_argument("--out", default=str(root / "docs" / "results"))
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    import recbole_ext
    from recbole_ext.inference import TrainedModel, write_embeddings

    torch.set_num_threads(args.threads)
    ensure_ml1m_half(args.data_path, args.src)
    out = Path(args.out)
    rows = []
    for label, (model, protocol, extra, what) in RUNS.items():
        config = {"data_path": args.data_path, "protocol": protocol, "epochs": 1, "show_progress": False,
                  "state": "WARNING", "checkpoint_dir": str(Path(tempfile.gettempdir()) / "recbole_ext_bench"), **extra}
        print(f"[inference] training {label} for one epoch ...", flush=True)
        checkpoint = recbole_ext.run(model, "ml-1m-half", config_dict=config)["checkpoint"]
        start = time.perf_counter()
        trained = TrainedModel(checkpoint)
        load = time.perf_counter() - start
        users = trained.dataset.field2id_token[trained.uid][1:args.users + 1].tolist()
        start = time.perf_counter()
        table = trained.recommend(users, k=10, exclude_history=True)
        answer = time.perf_counter() - start
        start, shape = time.perf_counter(), None
        if what:
            ids, vectors = trained.embeddings(what)
            with tempfile.TemporaryDirectory() as folder:
                write_embeddings(ids, vectors, "npy", Path(folder) / "e.npy")
            shape = f"{what} {'x'.join(map(str, vectors.shape))}"
        export = time.perf_counter() - start
        rows.append({"model": label, "items": trained.dataset.item_num - 1, "users": len(users),
                     "load_s": round(load, 2), "recommend_s": round(answer, 2),
                     "users_per_s": round(len(users) / answer), "export": shape or "-",
                     "export_s": round(export, 2) if what else None, "rows": len(table), "threads": args.threads})
        print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    plt = table_page(out, "inference", f"Using trained models: load, top-10 for {args.users} users, export",
                     f"{args.threads} torch threads. Each model trained one epoch on ml-1m (users 1–2,999); `load_s` "
                     "rebuilds the dataset, its split and the model from the checkpoint (no data loaders), "
                     "`recommend_s` answers every user's top-10 with the history excluded and, for multi-interest "
                     "models, the interest of each item; `export_s` writes the embeddings as .npy plus the raw-id "
                     "sidecar.", frame)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(frame.model, frame.recommend_s, label="recommend (top-10, history excluded)")
    ax.barh(frame.model, frame.load_s, left=frame.recommend_s, label="load checkpoint + dataset", alpha=0.6)
    ax.set_xlabel(f"seconds for {args.users} users, {args.threads} threads")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, out / "inference.png")
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
