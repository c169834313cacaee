"""Using trained models: top-k by raw ids, interest attribution, embedding export and its numpy top-k round trip."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import MODELS, base_config
from recbole_ext import run
from recbole_ext.cli import main
from recbole_ext.inference import TrainedModel, recommend, write_embeddings


@pytest.fixture
def comirec(tiny, tmp_path):
    """A trained ComiRec (K 4) on the tiny dataset, its checkpoint and the raw interactions."""
    result = run("ComiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", "epochs": 2})
    raw = pd.read_csv(tmp_path / "data" / "tiny" / "tiny.inter", sep="\t")
    raw.columns = [c.split(":")[0] for c in raw.columns]
    return result["checkpoint"], raw


def test_recommend_takes_and_returns_raw_ids_and_leaves_history_out(comirec):
    checkpoint, raw = comirec
    users = ["u3", "u17", "u30"]
    table = recommend(checkpoint, users, k=5, exclude_history=True)
    assert list(table.columns) == ["user", "rank", "item", "score", "interest"]
    assert table.user.tolist() == [u for u in users for _ in range(5)]
    for user, rows in table.groupby("user"):
        assert rows["rank"].tolist() == [1, 2, 3, 4, 5]
        assert rows.score.is_monotonic_decreasing
        assert set(rows.item).isdisjoint(raw[raw.user_id == user].item_id)  # none of the user's items
        assert rows.item.str.startswith("i").all()
    with_history = recommend(checkpoint, ["u3"], k=39)
    assert set(raw[raw.user_id == "u3"].item_id) <= set(with_history.item)  # all 39 real items, history included


def test_sequential_input_is_the_users_latest_history_and_interests_explain_the_scores(comirec):
    checkpoint, raw = comirec
    trained = TrainedModel(checkpoint)
    ids = trained.user_ids(["u5", "u9"])
    interaction = trained._input(ids)
    for row, user in enumerate(["u5", "u9"]):
        expected = raw[raw.user_id == user].sort_values("timestamp").item_id.tolist()[-10:]  # MAX_ITEM_LIST_LENGTH 10
        got = interaction[trained.model.ITEM_SEQ][row, :interaction[trained.model.ITEM_SEQ_LEN][row]]
        assert trained._tokens(trained.iid, got.numpy()).tolist() == expected
    table = trained.recommend(["u5"], k=3)
    interests = trained.model.interest_vectors(trained._input(ids[:1]))[0]  # [K, d]
    items = trained._item_table()[torch.as_tensor(trained.dataset.token2id(trained.iid, table.item.tolist()))]
    by_interest = (interests @ items.T).detach()  # [K, 3]: ComiRec scores an item by its best interest
    assert torch.allclose(torch.as_tensor(table.score.values), by_interest.amax(0), atol=1e-5)
    assert table.interest.tolist() == by_interest.argmax(0).tolist()
    with pytest.raises(ValueError, match="nobody is not a user of tiny"):
        trained.recommend(["nobody"])


def test_exported_embeddings_reproduce_the_top_k_with_numpy(comirec, tmp_path):
    checkpoint, _ = comirec
    trained = TrainedModel(checkpoint)
    item_ids, items = trained.embeddings("items")
    user_ids, interests = trained.embeddings("interests")
    assert items.shape == (40, 8) and interests.shape == (30, 4, 8)
    assert item_ids[0].startswith("i") and sorted(user_ids) == sorted(f"u{u}" for u in range(1, 31))
    files = write_embeddings(item_ids, items, "npy", tmp_path / "items.npy")
    assert np.array_equal(np.load(files[0]), items)
    assert files[1].read_text().split() == item_ids.tolist()
    write_embeddings(user_ids, interests, "parquet", tmp_path / "interests.parquet")
    frame = pd.read_parquet(tmp_path / "interests.parquet")
    assert list(frame.columns[:2]) == ["id", "interest"] and len(frame) == 30 * 4
    # an ANN index's exact answer: max over interests of the dot products, top 5
    user = user_ids.tolist().index("u7")
    scores = (interests[user] @ items.T).max(0)
    top = item_ids[np.argsort(-scores, kind="stable")[:5]]
    assert top.tolist() == trained.recommend(["u7"], k=5).item.tolist()
    with pytest.raises(ValueError, match="use --what=interests"):
        trained.embeddings("users")


def test_general_and_context_models_recommend_by_their_own_scores(tiny, ratings):
    bpr = run("BPR", "tiny", config_dict={**tiny, "epochs": 2})
    trained = TrainedModel(bpr["checkpoint"])
    user_ids, users = trained.embeddings("users")
    item_ids, items = trained.embeddings("items")
    top = item_ids[np.argsort(-(users[user_ids.tolist().index("u2")] @ items.T), kind="stable")[:4]]
    assert trained.recommend(["u2"], k=4).item.tolist() == top.tolist()
    ifm = TrainedModel(run("IFM", "rated", config_dict={**ratings, "loss_type": "BCE"})["checkpoint"])
    table = ifm.recommend(["u1", "u2"], k=3)  # no full_sort_predict: every (user, item) row through predict
    pair = ifm.dataset.join(__import__("recbole").data.interaction.Interaction({
        "user_id": torch.as_tensor(ifm.user_ids(["u1"])), "item_id": torch.as_tensor(
            ifm.dataset.token2id("item_id", [table.item[0]])).view(1)}))
    assert float(ifm.model.predict(pair)) == pytest.approx(table.score[0], abs=1e-6)
    ids, items = ifm.embeddings("items")  # IFM's rows of the item field in the shared feature table
    first = ifm.model.token_embedding_table.embedding.weight[ifm.model.token_field_offsets[1] + 1]
    assert items.shape == (30, 4) and ifm.model.token_field_names[1] == "item_id"
    assert np.allclose(items[0], first.detach().numpy())
    assert ids[0] == ifm.dataset.field2id_token["item_id"][1]


def test_cli_recommend_and_export_write_their_files(comirec, tmp_path, capsys):
    """The CLI's files hold what the Python API gives: the same top-k rows, the same item vectors."""
    checkpoint, _ = comirec
    (tmp_path / "who.txt").write_text("u1\nu2\n")
    assert main(["recommend", f"--checkpoint={checkpoint}", f"--users_file={tmp_path / 'who.txt'}", "--k=2",
                 f"--output={tmp_path / 'top.json'}"]) == 0
    rows = pd.DataFrame(json.loads((tmp_path / "top.json").read_text()))
    expected = recommend(checkpoint, ["u1", "u2"], k=2)
    assert rows[["user", "rank", "item", "interest"]].values.tolist() == \
        expected[["user", "rank", "item", "interest"]].values.tolist()
    assert np.allclose(rows.score, expected.score, rtol=1e-6, atol=1e-9)
    assert main(["export", f"--checkpoint={checkpoint}", "--what=items", "--format=csv",
                 f"--output={tmp_path / 'items.csv'}"]) == 0
    table = pd.read_csv(tmp_path / "items.csv")
    ids, items = TrainedModel(checkpoint).embeddings("items")
    assert table.shape == (40, 9) and table.iloc[:, 0].astype(str).tolist() == ids.tolist()
    assert np.allclose(table.iloc[:, 1:].to_numpy(), items, rtol=1e-6, atol=1e-9)
    assert "items: 40 x 8" in capsys.readouterr().out


@pytest.mark.parametrize("model, dataset, extra", MODELS, ids=[m for m, _, _ in MODELS])
def test_every_plugin_model_recommends_unseen_items_by_raw_id(tiny, ratings, model, dataset, extra):
    """exclude_history leaves out every item of the user's rows in the raw .inter file (read here, not through the
    package; rows a protocol dropped included), and each user's rows come best first."""
    base = base_config(model, dataset, tiny, ratings)
    trained = TrainedModel(run(model, dataset, config_dict={**base, **extra})["checkpoint"])
    users = trained.dataset.field2id_token[trained.uid][1:3].tolist()
    table = trained.recommend(users, k=3, exclude_history=True)
    assert table.user.tolist() == [u for u in users for _ in range(3)] and np.isfinite(table.score).all()
    raw = pd.read_csv(Path(trained.dataset.dataset_path) / f"{trained.dataset.dataset_name}.inter", sep="\t", dtype=str)
    raw.columns = [c.split(":")[0] for c in raw.columns]
    for user in users:
        rows = table[table.user == user]
        history = set(raw[raw[trained.uid] == user][trained.iid])
        assert history and set(rows.item).isdisjoint(history), (user, sorted(history & set(rows.item)))
        assert rows.score.is_monotonic_decreasing
    assert ("interest" in table) == hasattr(trained.model, "interest_vectors")
