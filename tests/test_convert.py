"""Raw-file converters: formats, counts, atomic publication, ReChorus split kept exactly."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_ext import run
from recbole_ext.data import convert
from recbole_ext.data.convert import convert_ml1m, convert_rechorus

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_ml1m(folder: Path, n_ratings: int, n_users: int, n_movies: int) -> None:
    """Synthetic files in the exact MovieLens-1M format ('::', latin-1, titles with ':' and accents)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    users = np.arange(n_ratings) % n_users + 1
    lines = np.char.add(np.char.add(users.astype(str), "::"), rng.integers(1, n_movies + 1, n_ratings).astype(str))
    lines = np.char.add(lines, "::" + "4::978300760")
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (folder / "users.dat").write_text("".join(f"{u}::M::25::7::5500{u % 10}\n" for u in range(1, n_users + 1)),
                                      encoding="latin-1")
    titles = ["Star Wars: Episode IV - A New Hope (1977)", "Misérables, Les (1995)", "Toy Story (1995)"]
    (folder / "movies.dat").write_text("".join(f"{m}::{titles[m % 3]}::Action|Sci-Fi\n" for m in range(1, n_movies + 1)),
                                       encoding="latin-1")


def test_ml1m_full_size_synthetic(tmp_path):
    write_ml1m(tmp_path / "raw", 1_000_209, 6_040, 3_706)
    out = convert_ml1m(tmp_path / "raw", tmp_path / "data")
    inter = pd.read_csv(out / "ml-1m.inter", sep="\t")
    assert list(inter.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert len(inter) == 1_000_209 and inter["user_id:token"].nunique() == 6_040
    item = pd.read_csv(out / "ml-1m.item", sep="\t")
    assert list(item.columns) == ["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"]
    assert item.iloc[0].tolist() == [1, "Misérables, Les", 1995, "Action Sci-Fi"]
    assert item.iloc[2, 1] == "Star Wars: Episode IV - A New Hope"
    user = pd.read_csv(out / "ml-1m.user", sep="\t")
    assert list(user.columns) == ["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"]
    assert len(user) == 6_040


def test_interrupted_conversion_leaves_no_dataset(tmp_path, monkeypatch):
    write_ml1m(tmp_path / "raw", 50, 5, 5)
    calls = []

    def failing_write(frame, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        frame.to_csv(path, sep="\t", index=False)

    monkeypatch.setattr(convert, "_write_atomic", failing_write)
    with pytest.raises(KeyboardInterrupt):
        convert_ml1m(tmp_path / "raw", tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def write_rechorus(folder: Path, n_users: int = 25, n_items: int = 30, n_neg: int = 9) -> None:
    """A ReChorus-format folder: per user >= 5 interactions, the last two are dev and test, times with ties."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    train, dev, test = [], [], []
    for u in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=7, replace=False)
        times = np.sort(rng.integers(0, 3, size=7)) + 100 * u  # many equal timestamps per user
        rows = list(zip([u] * 7, items, times))
        train += rows[:5]
        negs = [int(i) for i in rng.choice(np.setdiff1d(np.arange(1, n_items + 1), items), size=n_neg)]
        dev.append((*rows[5], str(negs)))
        test.append((*rows[6], str(list(reversed(negs)))))
    pd.DataFrame(train, columns=["user_id", "item_id", "time"]).to_csv(folder / "train.csv", sep="\t", index=False)
    for name, rows in (("dev", dev), ("test", test)):
        pd.DataFrame(rows, columns=["user_id", "item_id", "time", "neg_items"]).to_csv(
            folder / f"{name}.csv", sep="\t", index=False)


def test_rechorus_split_and_negatives_are_kept(tmp_path):
    from recbole_ext.data.protocol import FixedNegatives  # noqa: F401  (used through the run below)

    write_rechorus(tmp_path / "raw" / "Toy")
    out = convert_rechorus(tmp_path / "raw" / "Toy", tmp_path / "data", "toy")
    assert sorted(p.name for p in out.iterdir()) == ["toy.inter", "toy.test.neg", "toy.valid.neg"]
    neg = pd.read_csv(out / "toy.valid.neg", sep="\t", dtype=str)
    assert len(neg.iloc[0]["neg_items:token_seq"].split()) == 9
    # the run checks every valid/test target against RecBole's leave-one-out split and reads the 9 negatives
    result = run("ComiRec", "toy", config_dict={
        "data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"), "protocol": "rechorus",
        "epochs": 1, "topk": [1, 5], "embedding_size": 8, "show_progress": False, "state": "ERROR"})
    assert 0.0 <= result["test_result"]["hit@1"] <= result["test_result"]["hit@5"] <= 1.0


@pytest.mark.realdata
def test_grocery_conversion_matches_reference_counts(tmp_path):
    src = SHARED / "Grocery_and_Gourmet_Food"
    if not src.is_dir():
        pytest.skip("../shared/data is not present")
    out = convert_rechorus(src, tmp_path, "grocery")
    inter = pd.read_csv(out / "grocery.inter", sep="\t")
    assert len(inter) == 121_892 + 2 * 14_681 and inter["user_id:token"].nunique() == 14_681
    # RecBole's leave-one-out split must give back ReChorus's dev/test targets, row for row (checked inside)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    config = Config(model="ComiRec", dataset="grocery", config_dict={
        "data_path": str(tmp_path), "protocol": "rechorus", "state": "ERROR", "checkpoint_dir": str(tmp_path / "s")})
    train, valid, test = data_preparation(config, create_dataset(config))
    assert len(train.dataset) == 107_211  # ReChorus's training instances (rows with a non-empty history)
    assert tuple(valid._sampler.negatives.shape) == tuple(test._sampler.negatives.shape) == (14_681, 99)
