"""The ComiRec protocol: ComiRec's user-disjoint split (its Python shuffle of its user list), one training order
for every epoch, all-future-items targets, and both NDCG definitions."""

import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.evaluator import Collector, Evaluator
from recbole.quick_start import run_recbole

from recbole_ext.data.comirec import TARGETS, eval_rows, split_users
from recbole_ext.data.convert import convert_comirec
from recbole_ext.evaluation.comirec import comirec_ndcg
from recbole_ext.quick_start import _build, build_config, load
from conftest import FAST


def test_eval_row_is_the_first_80_percent_and_targets_the_rest():
    first, targets = eval_rows(np.array([0, 9]), np.array([9, 4]), 0.8)  # n = 10 and 5
    assert first.tolist() == [7, 12]  # k = 8 and 4: rows start + k - 1
    assert targets.tolist() == [[7, 8], [12, -1]]


METRICS = ["Recall", "NDCG", "Hit", "ComiRecNDCG"]  # the preset's (the tiny fixture sets its own)


def _three_users():
    targets = torch.tensor([[5, 7, 5], [3, 0, 0], [2, 0, 0]])  # ordered, with a repeat, 0-padded
    top = torch.tensor([[7, 9, 5, 1], [1, 2, 4, 6], [9, 8, 2, 1]])
    return targets, top


def test_comirec_ndcg_hand_values():
    targets, top = _three_users()
    got = comirec_ndcg(top, targets, [2, 4])
    # user 0 @2: only T[1] = 7 retrieved -> (1/log2 3) / 1; @4: all three target slots hit -> DCG = IDCG -> 1
    expected = torch.tensor([[1 / math.log2(3), 1.0], [0.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(got, expected, atol=1e-6)


def test_recbole_formulas_on_the_same_users(tiny):
    config = build_config("ComiRec", "tiny", config_dict={**tiny, "protocol": "comirec", "topk": [2, 4],
                                                                    "metrics": METRICS, "valid_metric": "Recall@4"})
    targets, top = _three_users()
    scores = torch.zeros(3, 12)
    for row, items in enumerate(top.tolist()):
        scores[row, items] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    rows, cols = targets.nonzero(as_tuple=True)
    collector = Collector(config)
    collector.eval_batch_collect(scores, None, rows, targets[rows, cols])
    collector.data_struct.update_tensor("rec.comirec_ndcg", comirec_ndcg(top, targets, [2, 4]))
    result = Evaluator(config).evaluate(collector.get_data_struct())
    # user 0's targets as a set {5, 7}: 7 at rank 1, 5 at rank 3; users 1 and 2 have one target each
    assert result["recall@2"] == pytest.approx(round((0.5 + 0 + 0) / 3, 4))
    assert result["recall@4"] == pytest.approx(round((1 + 0 + 1) / 3, 4))
    assert result["hit@4"] == pytest.approx(round(2 / 3, 4))
    ndcg4_user0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))  # standard: IDCG over min(|T|, k) = 2
    assert result["ndcg@4"] == pytest.approx(round((ndcg4_user0 + 0 + 1 / math.log2(4)) / 3, 4))
    assert result["comirecndcg@4"] == pytest.approx(round((1 + 0 + 1) / 3, 4))  # order-insensitive


def test_split_is_user_disjoint_and_keeps_targets_out_of_training(tiny):
    config = build_config("ComiRec", "tiny", config_dict={**tiny, "protocol": "comirec"})
    _, train, valid, test = _build(config)
    uid, iid = "user_id", "item_id"
    parts = [set(d._dataset.inter_feat[uid].tolist()) for d in (train, valid, test)]
    assert all(not (a & b) for a, b in [(parts[0], parts[1]), (parts[0], parts[2]), (parts[1], parts[2])])
    assert len(parts[1]) == len(valid._dataset) and len(parts[2]) == len(test._dataset)  # one row per user
    full = train._dataset  # train users: every prefix is an instance (n - 1 rows per user of length n)
    lengths = np.bincount(full.inter_feat[uid].numpy())
    assert all(lengths[u] >= 4 for u in parts[0])
    for loader in (valid, test):
        ds = loader._dataset
        for row in range(len(ds)):
            history = ds.inter_feat["item_id_list"][row][: ds.inter_feat["item_length"][row]].tolist()
            targets = [t for t in ds.comirec_targets[row].tolist() if t]
            assert targets[0] == ds.inter_feat[iid][row].item()
            n = len(history) + len(targets)  # histories are short enough here to be whole
            assert len(history) == int(0.8 * n)
        batch, _, positive_u, positive_i = next(iter(loader))
        assert TARGETS in batch and len(positive_i) == (batch[TARGETS] > 0).sum()


def _hand_metrics(checkpoint: str, k: int) -> dict:
    """recall@k, hit@k and ComiRec's NDCG@k of a checkpoint's test users, from its full-sort scores by hand: the
    top k over all items but the padding id (history items are not masked), against each user's ordered targets."""
    _, net, _, _, _, test = load(checkpoint)
    net.eval()
    values = {"recall": [], "hit": [], "comirecndcg": []}
    with torch.no_grad():
        for batch, *_ in test:
            scores = net.full_sort_predict(batch)
            scores[:, 0] = -torch.inf
            for top, targets in zip(scores.topk(k, dim=1).indices.tolist(), batch[TARGETS].tolist()):
                targets = [t for t in targets if t]
                found = [i for i, t in enumerate(targets) if t in top]
                values["recall"].append(len(set(targets) & set(top)) / len(set(targets)))
                values["hit"].append(float(bool(found)))
                ideal = sum(1 / math.log2(i + 2) for i in range(len(found)))
                values["comirecndcg"].append(sum(1 / math.log2(i + 2) for i in found) / ideal if found else 0.0)
    return {f"{name}@{k}": float(np.mean(v)) for name, v in values.items()}


def test_re4_comirec_and_timirec_under_the_protocol(tiny):
    """Each model's test result is what its checkpoint's full-sort scores give by hand on the test users."""
    base = {**tiny, "protocol": "comirec", "topk": [5, 10], "valid_metric": "Recall@10", "metrics": METRICS}
    saved = Path(tiny["checkpoint_dir"])
    for model, extra in (("Re4", {"n_negatives": 10}), ("ComiRec", {}), ("TiMiRec", {"epochs": 1})):
        result = run_recbole(model=model, dataset="tiny", config_dict={**base, **extra})
        test = result["test_result"]
        assert set(test) == {f"{m}@{k}" for m in ("recall", "ndcg", "hit", "comirecndcg") for k in (5, 10)}
        checkpoint = [p for p in saved.glob(f"{model}-*.pth") if not p.name.endswith(("-resume.pth", "-pretrain.pth"))]
        assert len(checkpoint) == 1, checkpoint
        for k in (5, 10):
            for key, value in _hand_metrics(str(checkpoint[0]), k).items():
                assert test[key] == pytest.approx(value, abs=1e-4), (model, key)


def _users_of(loader) -> set[str]:
    ds = loader._dataset
    return {ds.field2id_token["user_id"][u] for u in ds.inter_feat["user_id"].tolist()}


def test_split_users_is_comirecs_python_shuffle_and_cut_points():
    users = np.array([f"u{i}" for i in np.random.default_rng(0).permutation(47)])  # 47: cuts int(37.6), int(42.3)
    expected = users.tolist()
    random.seed(1230)
    random.shuffle(expected)
    train, valid, test = split_users(users, 1230, [0.8, 0.1, 0.1])
    assert (train.tolist(), valid.tolist(), test.tolist()) == (expected[:37], expected[37:42], expected[42:])


def test_split_is_comirecs_on_the_users_in_order_of_first_appearance_in_the_file(tmp_path, tiny):
    path = tmp_path / "data" / "tiny" / "tiny.inter"
    frame = pd.read_csv(path, sep="\t").sample(frac=1, random_state=3)  # users interleaved; each keeps its time order
    first = pd.DataFrame([("u30", "rare", 1)], columns=frame.columns)  # u30 first, on a row the item filter drops
    frame = pd.concat([first, frame])
    frame.to_csv(path, sep="\t", index=False)
    user, item = frame["user_id:token"], frame["item_id:token"]  # ComiRec's preprocessing, on the same file:
    kept = item.map(item.value_counts()) >= 5
    per_user = user[kept].value_counts()
    users = [u for u in dict.fromkeys(user) if per_user.get(u, 0) >= 5]  # its dict of users, in insertion order
    random.seed(1230)
    random.shuffle(users)
    cut = int(len(users) * 0.8), int(len(users) * 0.9)
    expected = users[:cut[0]], users[cut[0]:cut[1]], users[cut[1]:]
    config = build_config("ComiRec", "tiny", config_dict={**tiny, "protocol": "comirec"})
    _, train, valid, test = _build(config)
    assert [_users_of(loader) for loader in (train, valid, test)] == [set(part) for part in expected]


def test_training_rows_keep_one_seeded_order_every_epoch(tiny):
    def row_orders(**extra) -> list[list[int]]:  # two epochs; a row is (user, history length), unique per prefix
        config = build_config("ComiRec", "tiny", config_dict={**tiny, "protocol": "comirec", **extra})
        train = _build(config)[1]
        return [torch.cat([batch["user_id"] * 100 + batch["item_length"] for batch in train]).tolist()
                for _ in range(2)]

    first, second = row_orders()
    assert first == second and first != sorted(first)  # shuffled, once, like the official Re4 code's cached list
    assert row_orders()[0] == first  # from the seed alone: a rebuilt (resumed) run has the same order
    reshuffled = row_orders(shuffle_once=False)
    assert reshuffled[0] != reshuffled[1] and sorted(reshuffled[0]) == sorted(first)


def test_filter_is_one_pass_items_then_users(tmp_path, tiny):
    # 30 tiny users with 10 items each, plus: item "rare" seen by 3 users and "short" (dropped, < 5); user "short" with 5
    # items, one of them "rare" (4 left after the item filter: dropped); item "edge" seen by "short" and 4 others
    # (5 raw interactions: kept, though only 4 remain once "short" goes, since items are not re-checked)
    frame = pd.read_csv(tmp_path / "data" / "tiny" / "tiny.inter", sep="\t")
    extra = [(f"u{u}", "rare", 99_000 + u) for u in range(1, 4)] + [(f"u{u}", "edge", 99_100 + u) for u in range(5, 9)]
    extra += [("short", item, 99_200 + t) for t, item in enumerate(["rare", "edge", "i1", "i2", "i3"])]
    frame = pd.concat([frame, pd.DataFrame(extra, columns=frame.columns)])
    frame.to_csv(tmp_path / "data" / "tiny" / "tiny.inter", sep="\t", index=False)
    config = build_config("ComiRec", "tiny", config_dict={**tiny, "protocol": "comirec"})
    _, train, valid, test = _build(config)
    items = set(train._dataset.field2id_token["item_id"])
    users = _users_of(train) | _users_of(valid) | _users_of(test)
    assert "rare" not in items and "edge" in items
    assert "short" not in users and len(users) == 30


def _comirec_files(folder, parts: dict[str, list[int]]) -> None:
    folder.mkdir(parents=True)
    for part, users in parts.items():
        lines = [f"{u},{(u * 7 + t) % 40 + 1},{t}" for u in users for t in range(10)]
        if part == "test":
            lines.append(f"{users[0]},999,10")  # item 999: one interaction, kept as ComiRec wrote it
        (folder / f"toy_{part}.txt").write_text("\n".join(lines) + "\n")


def test_converted_comirec_split_is_kept_and_not_refiltered(tmp_path):
    parts = {"train": list(range(1, 25)), "valid": [25, 26, 27], "test": [28, 29, 30]}
    _comirec_files(tmp_path / "raw", parts)
    convert_comirec(tmp_path / "raw", tmp_path / "data", "toy")
    config = build_config("Re4", "toy", config_dict={**FAST, "data_path": str(tmp_path / "data"),
                                                     "protocol": "comirec", "n_negatives": 10})
    _, train, valid, test = _build(config)
    for loader, part in zip((train, valid, test), ("train", "valid", "test")):
        assert _users_of(loader) == {str(u) for u in parts[part]}
    assert "999" in train._dataset.field2id_token["item_id"]
    assert (test._dataset.comirec_targets == train._dataset.field2token_id["item_id"]["999"]).sum() == 1


def test_malformed_comirec_line_is_named_and_nothing_is_written(tmp_path):
    _comirec_files(tmp_path / "raw", {"train": [1, 2], "valid": [3], "test": [4]})
    with open(tmp_path / "raw" / "toy_valid.txt", "a") as f:
        f.write("5,17\n")
    with pytest.raises(ValueError, match=r"toy_valid.txt: line 11 "):
        convert_comirec(tmp_path / "raw", tmp_path / "data", "toy")
    assert not (tmp_path / "data" / "toy").exists()
