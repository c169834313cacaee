"""MARIF benchmark: MARIF against RecBole's DeepFM, AutoInt, NFM and WideDeep and this package's IFM, on identical
rows of the CTR protocol.

``protocol: ctr``: ml-1m ratings >= 4 -> 1, <= 2 -> 0, 3 dropped; RecBole's random 80/10/10 split with the run's
seed (every model of one seed trains and is tested on the same rows); valid/test rows of items unseen in training
dropped (as MARIF's reference); AUC and LogLoss of the best valid-AUC epoch. Every model has the same epoch budget;
MARIF keeps its reference dimensions (d 200, hidden 256, profile 56, N 20, Adam, batch 1024); the others keep their
YAMLs with embedding size 16 and batch 4096, Adam at lr 1e-2 (RecBole's) or Adagrad 0.1 (IFM). RecBole's DIN is
not a row: it is a sequential model (most-recent-K history over a time-ordered split), not a model of these rows.

Each run is a fresh subprocess through ``recbole_ext.run`` that also times 20 training batches on one thread
(``s/epoch_1thread``). Writes ``docs/results/marif.csv`` (rows added to earlier ones), ``marif.md`` (mean ± std over
seeds) and ``marif_curves.png`` (valid AUC per epoch).

    python benchmarks/marif.py --seeds 0 1 2 --max_epochs 10
    python benchmarks/marif.py --dataset ml-100k --models MARIF DeepFM --seeds 0
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common import mean_std_table, write_page
from ifm import ctr_main  # the same runs and measurements (AUC, LogLoss, costs) as the IFM benchmark

BASELINE = {"embedding_size": 16, "train_batch_size": 4096}
RECBOLE = {**BASELINE, "learner": "adam", "learning_rate": 0.01}
MODELS = {
    "MARIF": {"learning_rate": 1e-3},
    "MARIF lr 1e-4": {},
    "DeepFM": RECBOLE, "AutoInt": RECBOLE, "NFM": RECBOLE, "WideDeep": RECBOLE,
    "IFM": BASELINE,
}
REFERENCE = """## Reference figures

MARIF's reference README (full ML-1M, 130 epochs, the best epoch picked **on test**, separately for AUC and for
LogLoss), test AUC / LogLoss: MARIF 0.8961 / 0.3158; AutoInt 0.8878 / 0.3556; FiBiNet
0.8873 / 0.3328; DeepFM 0.8854 / 0.4544; NFM 0.8843 / 0.3348; WideDeep 0.8459 / 0.3348. The rows above use half the
users, select on valid and train far fewer epochs, so they are lower. The reference code needs about 290 s per epoch
and 8.1 GiB peak RSS on one CPU thread for ml-1m (users 1-2,999) under this split (282 batches of 1,024),
the figures `s/epoch_1thread` and `peak_rss_mb` compare with."""


def summarise(frame: pd.DataFrame, out: Path) -> str:
    cols = ["epochs", "parameters", "valid_auc", "test_auc", "test_logloss", "s/epoch_train", "s/epoch_1thread",
            "s/epoch_eval", "peak_rss_mb"]
    table = mean_std_table(frame, ["dataset", "model", "settings", "max_epochs"], cols, ("test", "valid"))
    intro = ("Test AUC / LogLoss of the best valid-AUC epoch, mean ± std over seeds (the same rows for every model "
             "of a seed). `settings` lists what differs from each model's YAML. `s/epoch_train`: over the run on all "
             "cores; `s/epoch_1thread`: 20 batches timed on one thread, scaled to the epoch.")
    return write_page(out, "marif", "MARIF benchmark (CTR protocol)", intro, table, REFERENCE, "valid_auc")


def main() -> None:
    ctr_main(__file__, "marif", __doc__, MODELS, {}, summarise)


if __name__ == "__main__":
    main()
