"""The fixed-negatives protocol: pessimistic ranks, negatives, and RecBole's metrics on top."""

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.evaluator.metrics import NDCG, Hit

from recbole_ext import run
from recbole_ext.data.protocol import sample_negatives
from recbole_ext.evaluation.ranking import pessimistic_rank, rank_scores
from recbole_ext.quick_start import _build, build_config, load
from recbole_ext.trainer.base import resolve_trainer


def test_pessimistic_rank_counts_ties_against_target():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.5], [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, -1.0]])
    assert pessimistic_rank(scores).tolist() == [3, 4, 1]


def test_rank_scores_put_target_at_its_pessimistic_rank_under_topk():
    torch.manual_seed(0)
    scores = torch.randint(0, 4, (200, 9)).float()  # many ties
    top = torch.topk(rank_scores(scores), 9, dim=1).indices
    assert torch.equal((top == 0).nonzero()[:, 1] + 1, pessimistic_rank(scores))


def test_recbole_metrics_on_ranks_match_hand_values():
    """HR@2 and NDCG@2 for target ranks 3, 4, 1: HR = 1/3, NDCG = (1/log2(2)) / 3."""
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.5], [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, -1.0]])
    top = torch.topk(rank_scores(scores), 2, dim=1).indices
    pos_index = (top == 0).numpy()
    pos_len = np.ones(3, dtype=np.int64)
    config = {"topk": [2], "metric_decimal_place": 4}
    assert Hit(config).metric_info(pos_index).mean(axis=0)[-1] == pytest.approx(1 / 3)
    assert NDCG(config).metric_info(pos_index, pos_len).mean(axis=0)[-1] == pytest.approx(1 / 3)


def test_sampled_negatives_avoid_seen_items_and_repeat_with_seed():
    n_items = 12
    users = np.array([0, 1, 2, 1])
    seen_pairs = [(0, i) for i in range(1, 10)] + [(1, 3), (2, 5)]
    seen = np.unique(np.array([u * n_items + i for u, i in seen_pairs]))
    a = sample_negatives(users, seen, n_items, 50, np.random.default_rng([3, 1]))
    b = sample_negatives(users, seen, n_items, 50, np.random.default_rng([3, 1]))
    assert np.array_equal(a, b)
    assert set(a[0]) <= {10, 11} and 3 not in a[1] and 5 not in a[2] and 3 not in a[3]
    assert a.min() >= 1 and a.max() < n_items



def test_protocol_run_is_deterministic(tiny):
    cfg = {**tiny, "protocol": "rechorus", "topk": [5, 10], "epochs": 1}
    first = run("ComiRec", "tiny", config_dict=cfg)
    second = run("ComiRec", "tiny", config_dict=cfg)
    assert first["test_result"] == second["test_result"]
    assert set(first["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}


def _ship_negatives(folder, n_neg: int) -> dict:
    """``tiny.valid.neg`` / ``tiny.test.neg`` for RecBole's leave-one-out split of ``folder/tiny.inter`` (valid: each
    user's second-last item, test: its last), rows in another order than the users', n_neg items the user never had.
    -> {phase: {user token: [negative item tokens]}}"""
    inter = pd.read_csv(folder / "tiny.inter", sep="\t").sort_values(["user_id:token", "timestamp:float"])
    items = sorted(set(inter["item_id:token"]))
    rng = np.random.default_rng(11)
    shipped = {}
    for phase, position in (("valid", -2), ("test", -1)):
        rows = []
        for user, group in inter.groupby("user_id:token"):
            unseen = sorted(set(items) - set(group["item_id:token"]))
            rows.append((user, group["item_id:token"].iloc[position], list(rng.choice(unseen, n_neg, replace=False))))
        rows = [rows[i] for i in rng.permutation(len(rows))]
        pd.DataFrame({"user_id:token": [u for u, _, _ in rows], "item_id:token": [t for _, t, _ in rows],
                      "neg_items:token_seq": [" ".join(n) for _, _, n in rows]}).to_csv(
            folder / f"tiny.{phase}.neg", sep="\t", index=False)
        shipped[phase] = {u: n for u, _, n in rows}
    return shipped


def test_the_shipped_negatives_are_the_candidates_that_are_ranked(tiny, tmp_path):
    """The candidate matrix is the .neg file's rows, aligned by user; a model that scores the target above every
    candidate but below an item outside them gets Hit@1 = 1 (full ranking would put the target second), and one that
    scores a shipped negative above the target puts it second."""
    shipped = _ship_negatives(tmp_path / "data" / "tiny", n_neg=4)
    config = build_config("ComiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", "topk": [1, 5],
                                                          "valid_metric": "NDCG@5"})
    net, _, valid, test = _build(config)
    dataset = test._dataset
    for phase, loader in (("valid", valid), ("test", test)):
        users = dataset.id2token("user_id", loader._dataset.inter_feat["user_id"].numpy())
        expected = torch.as_tensor(np.stack([dataset.token2id("item_id", shipped[phase][u]) for u in users]))
        assert torch.equal(loader._sampler.negatives, expected), phase
        loader.trainer_ready = True  # as the plugin trainer marks it
        batch = next(iter(loader))[0]
        assert torch.equal(batch["candidates"][:, 0], batch["item_id"])  # column 0: the target
        assert torch.equal(batch["candidates"][:, 1:], expected[:len(batch)])
    n_items = dataset.item_num

    def score(above_the_target):
        """The model's scores: the target 2, the item above_the_target(batch) picks per row 3, every other item 0
        (full_sort_predict, and predict_candidates its candidate columns: whichever the trainer calls)."""
        def full_sort_predict(interaction):
            scores, rows = torch.zeros(len(interaction), n_items), torch.arange(len(interaction))
            scores[rows, interaction["item_id"]] = 2.0
            scores[rows, above_the_target(interaction)] = 3.0
            return scores
        net.full_sort_predict = full_sort_predict
        net.predict_candidates = lambda interaction, candidates: full_sort_predict(interaction).gather(1, candidates)

    def outside_the_candidates(interaction):
        free = torch.ones(len(interaction), n_items, dtype=torch.bool)
        free[:, 0] = False
        free.scatter_(1, interaction["candidates"], False)
        return free.float().argmax(1)

    trainer = resolve_trainer(config)(config, net)
    score(outside_the_candidates)
    assert trainer.evaluate(test, load_best_model=False) == {"hit@1": 1.0, "hit@5": 1.0, "ndcg@1": 1.0, "ndcg@5": 1.0}
    score(lambda interaction: interaction["candidates"][:, 2])  # a shipped negative
    result = trainer.evaluate(test, load_best_model=False)
    assert result["hit@1"] == 0.0 and result["hit@5"] == 1.0
    assert result["ndcg@5"] == pytest.approx(1 / np.log2(3), abs=1e-4)


def test_plain_recbole_trainer_is_refused_not_silently_wrong(tiny):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model

    config = Config(model="ComiRec", dataset="tiny", config_dict={**tiny, "protocol": "rechorus"})
    train, valid, _ = data_preparation(config, create_dataset(config))
    trainer = Trainer(config, get_model("ComiRec")(config, train._dataset))
    with pytest.raises(RuntimeError, match="needs a recbole_ext trainer"):
        trainer.evaluate(valid, load_best_model=False)


def test_shipped_negatives_must_match_the_split(tiny, tmp_path):
    folder = tmp_path / "data" / "tiny"
    inter = pd.read_csv(folder / "tiny.inter", sep="\t")
    last = inter.groupby("user_id:token").tail(1)
    for phase in ("valid", "test"):  # deliberately the test targets for valid too: valid must be refused
        pd.DataFrame({"user_id:token": last["user_id:token"], "item_id:token": last["item_id:token"],
                      "neg_items:token_seq": "i1 i2 i3"}).to_csv(folder / f"tiny.{phase}.neg", sep="\t", index=False)
    with pytest.raises(ValueError, match="targets differ from RecBole's leave-one-out split"):
        run("ComiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", "topk": [2], "valid_metric": "NDCG@2"})


def test_recbole_builtin_model_runs_under_the_protocol(tiny):
    """SASRec has no predict_candidates: the trainer mixin falls back to full_sort_predict + gather. The run's test
    metrics are the pessimistic ranks of the reloaded model's full-sort scores at the candidate columns, by hand."""
    cfg = {**tiny, "protocol": "rechorus", "n_layers": 1, "n_heads": 1, "hidden_size": 8, "inner_size": 8,
           "loss_type": "CE", "train_neg_sample_args": None}
    result = run("SASRec", "tiny", config_dict=cfg)
    assert len(result["valid_scores"]) == 1
    _, net, _, _, _, test = load(result["checkpoint"])
    net.eval()
    ranks = []
    test.trainer_ready = True  # as the plugin trainer marks it
    with torch.no_grad():
        for batch, *_ in test:
            scores = net.full_sort_predict(batch).gather(1, batch["candidates"])  # [B, 1 + 20]
            assert scores.shape == (len(batch), 21)
            ranks.append(1 + (scores[:, 1:] >= scores[:, :1]).sum(1))
    rank = torch.cat(ranks).double()
    assert len(rank) == 30 and rank.max() > 1  # every user once; not a trivial model
    for k in (5, 10):
        hit = (rank <= k).double()
        assert result["test_result"][f"hit@{k}"] == pytest.approx(hit.mean().item(), abs=1e-4)
        assert result["test_result"][f"ndcg@{k}"] == pytest.approx((hit / torch.log2(rank + 1)).mean().item(), abs=1e-4)


def test_time_budget_stops_even_while_the_score_improves(tiny):
    result = run("ComiRec", "tiny", config_dict={**tiny, "epochs": 5, "time_budget": 1e-6})
    assert result["epochs"] == 1 and result["stop"] == "time_budget"
    assert result["test_result"] is not None  # the best (only) checkpoint is tested


def test_shipped_negatives_numeric_and_token_paths_agree(tmp_path, monkeypatch):
    """ReChorus's integer tokens are parsed without a Python string per token; the result is the token path's."""
    from types import SimpleNamespace

    from recbole_ext.data import protocol

    dataset = SimpleNamespace(uid_field="user_id", iid_field="item_id", field2token_id={
        "user_id": {"[PAD]": 0, "7": 1, "9": 2}, "item_id": {"[PAD]": 0, "10": 1, "11": 2, "12": 3}})
    split = SimpleNamespace(inter_feat={"user_id": torch.tensor([2, 1]), "item_id": torch.tensor([1, 2])})
    path = tmp_path / "x.valid.neg"
    path.write_text("user_id:token\titem_id:token\tneg_items:token_seq\n7\t11\t10 12\n9\t10\t12 11\n")
    assert protocol._numeric_file(path, dataset.field2token_id["item_id"]) is not None
    numeric = protocol.read_shipped(path, dataset, split)
    monkeypatch.setattr(protocol, "_numeric_file", lambda *args: None)
    assert numeric.tolist() == protocol.read_shipped(path, dataset, split).tolist() == [[3, 2], [1, 3]]
    monkeypatch.undo()
    path.write_text("user_id:token\titem_id:token\tneg_items:token_seq\n7\t11\t10 99\n9\t10\t12 11\n")
    with pytest.raises(ValueError, match="negative item '99' is not an item"):
        protocol.read_shipped(path, dataset, split)
