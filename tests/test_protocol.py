"""The fixed-negatives protocol: pessimistic ranks, negatives, and RecBole's metrics on top."""

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.evaluator.metrics import NDCG, Hit

from recbole_ext import run
from recbole_ext.data.protocol import sample_negatives
from recbole_ext.evaluation.ranking import pessimistic_rank, rank_scores


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



def test_protocol_run_is_deterministic_and_uses_candidates(tiny):
    cfg = {**tiny, "protocol": "rechorus", "topk": [5, 10], "epochs": 1}
    first = run("ComiRec", "tiny", config_dict=cfg)
    second = run("ComiRec", "tiny", config_dict=cfg)
    assert first["test_result"] == second["test_result"]
    assert set(first["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}
    assert 0.0 <= first["test_result"]["ndcg@5"] <= first["test_result"]["hit@5"] <= 1.0


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
    """SASRec has no predict_candidates: the trainer mixin falls back to full_sort_predict + gather."""
    cfg = {**tiny, "protocol": "rechorus", "n_layers": 1, "n_heads": 1, "hidden_size": 8, "inner_size": 8,
           "loss_type": "CE", "train_neg_sample_args": None}
    result = run("SASRec", "tiny", config_dict=cfg)
    assert set(result["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}
    assert len(result["valid_scores"]) == 1


def test_time_budget_stops_even_while_the_score_improves(tiny):
    result = run("ComiRec", "tiny", config_dict={**tiny, "epochs": 5, "time_budget": 1e-6})
    assert result["epochs"] == 1 and result["test_result"] is not None  # the best (only) checkpoint is tested


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
