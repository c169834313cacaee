"""Raw-file converters: formats, counts, atomic publication, ReChorus split kept exactly."""

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_ext.data import convert
from recbole_ext.data.convert import convert_mfn_ml1m, convert_ml1m, convert_rechorus
from recbole_ext.quick_start import _build, build_config


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
    """RecBole's leave-one-out split of the converted file gives back ReChorus's dev/test targets (the data
    preparation every run does checks them), and the candidates ranked are ReChorus's own negatives of each user, in
    its order (the test list is the dev list reversed here)."""
    write_rechorus(tmp_path / "raw" / "Toy")
    out = convert_rechorus(tmp_path / "raw" / "Toy", tmp_path / "data", "toy")
    assert sorted(p.name for p in out.iterdir()) == ["toy.inter", "toy.test.neg", "toy.valid.neg"]
    assert len(pd.read_csv(out / "toy.inter", sep="\t")) == 25 * 7  # train, dev and test rows, one file
    config = build_config("ComiRec", "toy", config_dict={
        "data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"), "protocol": "rechorus",
        "epochs": 1, "topk": [1, 5], "embedding_size": 8, "show_progress": False, "state": "ERROR"})
    _, train, valid, test = _build(config)
    dataset = train._dataset
    for loader, part in ((valid, "dev"), (test, "test")):
        raw = pd.read_csv(tmp_path / "raw" / "Toy" / f"{part}.csv", sep="\t").set_index("user_id")
        users = dataset.id2token("user_id", loader._dataset.inter_feat["user_id"].numpy()).astype(int)
        assert sorted(users) == list(range(1, 26))  # one row per user
        targets = dataset.id2token("item_id", loader._dataset.inter_feat["item_id"].numpy()).astype(int)
        assert targets.tolist() == raw.loc[users, "item_id"].tolist()
        negatives = dataset.id2token("item_id", loader._sampler.negatives.numpy()).astype(int)
        assert negatives.tolist() == [ast.literal_eval(raw.loc[u, "neg_items"]) for u in users]


@pytest.mark.realdata
def test_grocery_conversion_matches_reference_counts(tmp_path, real_data):
    src = real_data / "Grocery_and_Gourmet_Food"
    if not src.is_dir():
        pytest.skip(f"{src} is not present")
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


def test_mfn_ml1m_views_stop_at_the_cutoff(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "movies.dat").write_text("1::A (1995)::Drama|Comedy\n2::B (1987)::Drama\n3::C (1996)::Comedy\n",
                                    encoding="latin-1")
    (src / "users.dat").write_text("1::F::25::1::111\n2::M::1::2::222\n", encoding="latin-1")
    # user 1: times 0..100, cutoff 90: the ratings at 95 and 100 leave the views and make it active (2 >= 2)
    rows = [(1, 1, 0), (1, 2, 10), (1, 3, 20), (1, 1, 30), (1, 2, 95), (1, 3, 100), (2, 3, 0), (2, 1, 100)]
    (src / "ratings.dat").write_text("".join(f"{u}::{i}::4::{t}\n" for u, i, t in rows), encoding="latin-1")
    out = convert_mfn_ml1m(src, tmp_path / "data", "mfn", active_min=2)
    inter = pd.read_csv(out / "mfn.inter", sep="\t")
    user = pd.read_csv(out / "mfn.user", sep="\t").set_index("user_id:token")
    assert inter.groupby("user_id:token").size().to_dict() == {1: 4, 2: 1}  # nothing after 90 % of the span
    # first touches of (first genre x decade): Drama|d1990 at 0, Drama|d1980 at 10, Comedy|d1990 at 20
    assert user.loc[1, "macro_app_seq:token_seq"] == "Drama|d1990 Drama|d1980 Comedy|d1990"
    assert user.loc[1, "macro_time_seq:float_seq"] == "0 10 20" and user.loc[1, "macro_cate_seq:token_seq"] == "d1990 d1980 d1990"
    assert user["active:float"].tolist() == [1.0, 0.0] and user["gender:float"].tolist() == [0.0, 1.0]
    assert user["age:float"].tolist() == [2.0, 0.0]
