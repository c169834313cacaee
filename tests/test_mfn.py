"""MFN: the generator and its oracle, the leakage mask, blocks by hand, the ablation switches, the classification
metrics, and both tasks through RecBole's run_recbole on the tiny synthetic set."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.quick_start import run_recbole
from recbole.utils import init_seed
from sklearn.metrics import roc_auc_score

from recbole_ext.data import mfn as mfn_data
from recbole_ext.evaluation import F1, Accuracy, ClassAUC
from recbole_ext.model.kernels import FastDropout
from recbole_ext.model.sequential.mfn import category_means, info_nce
from recbole_ext.quick_start import _build, build_config, load
from recbole_ext.trainer.base import resolve_trainer

TINY = "mfn-synthetic-tiny"
SMALL = {"hidden_size": 16, "inner_size": 32, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 20, "show_progress": False,
         "state": "ERROR", "epochs": 1, "train_batch_size": 128, "eval_batch_size": 256, "seed": 3}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    mfn_data.generate(root, TINY, seed=5)
    return {**SMALL, "data_path": str(root)}


def build(synthetic, tmp_path, **extra):
    config = build_config("MFN", TINY, config_dict={**synthetic, "checkpoint_dir": str(tmp_path / "saved"), **extra})
    init_seed(config["seed"], True)
    return config, *_build(config)


def test_generator_is_seeded_stamped_and_its_views_predict_together(tmp_path, synthetic):
    for seed in (5, 5, 6):
        mfn_data.generate(tmp_path / str(seed), TINY, seed=seed)
    files = [(tmp_path / s / TINY / f"{TINY}.user").read_text() for s in ("5", "6")]
    assert files[0] == (tmp_path / synthetic["data_path"] / TINY / f"{TINY}.user").read_text() and files[0] != files[1]
    stamp = json.loads((tmp_path / "5" / TINY / f"{TINY}.json").read_text())
    assert stamp["seed"] == 5 and stamp["version"] == mfn_data.VERSION and stamp["users"] == 200
    user = pd.read_csv(tmp_path / "5" / TINY / f"{TINY}.user", sep="\t")
    times = user["macro_time_seq:float_seq"].str.split().map(lambda t: np.diff(np.array(t, float)))
    assert times.map(lambda d: (d > 0).all()).all()  # macro events in time order, an app once
    assert user["macro_app_seq:token_seq"].str.split().map(lambda a: len(a) == len(set(a))).all()
    auc = mfn_data.oracle(tmp_path / "5", TINY, "gender")
    assert auc["both"] > max(auc["macro"], auc["micro"]) and min(auc.values()) > 0.5  # 20 test users: coarse


@pytest.mark.slow
def test_calibration_size_oracle(tmp_path):
    mfn_data.generate(tmp_path, "mfn-synthetic")
    for label in ("gender", "active"):
        auc = mfn_data.oracle(tmp_path, "mfn-synthetic", label)
        assert auc["both"] > max(auc["macro"], auc["micro"]) + 0.02, (label, auc)


def test_macro_events_at_or_after_the_row_time_never_reach_the_encoder(synthetic, tmp_path):
    _, net, *_ = build(synthetic, tmp_path)
    net.eval()
    row = {"macro_app_seq": torch.tensor([[3, 4, 5, 6, 0]]), "macro_cate_seq": torch.tensor([[1, 2, 1, 2, 0]]),
           "macro_time_seq": torch.tensor([[1.0, 5.0, 9.0, 12.0, 0.0]]), "timestamp": torch.tensor([9.0])}
    apps, cates, length = net.macro_view(row)
    assert apps.tolist() == [[3, 4]] and cates.tolist() == [[1, 2]] and length.tolist() == [2]  # cut after it
    u, _ = net.macro(apps, length, cates)
    padded = net.macro(torch.tensor([[3, 4, 0, 0, 0]]), length, torch.tensor([[1, 2, 0, 0, 0]]))[0]
    assert torch.allclose(u, padded, atol=1e-6)  # the cut is exact
    changed = {**row, "macro_app_seq": torch.tensor([[3, 4, 9, 8, 0]]),  # the future apps differ
               "macro_cate_seq": torch.tensor([[1, 2, 2, 1, 0]])}
    apps, cates, length = net.macro_view(changed)
    assert torch.equal(u, net.macro(apps, length, cates)[0])
    empty = {**row, "timestamp": torch.tensor([0.5])}
    apps, cates, length = net.macro_view(empty)
    assert length.tolist() == [0] and (net.macro(apps, length, cates)[0] == 0).all()  # no NaN from an empty view


def test_blocks_by_hand():
    emb = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [9.0, 9.0]]])
    means, present = category_means(emb, torch.tensor([[1, 2, 1, 0]]), 3)
    assert means.tolist() == [[[0.0, 0.0], [3.0, 2.0], [3.0, 2.0]]] and present.tolist() == [[False, True, True]]
    x, y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # S = x I yᵀ = [[2, 0], [0, 1]] is symmetric: both directions give the same cross-entropy
    expected = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.e / (1 + math.e))) / 2
    assert info_nce(x, y, torch.eye(2), 1.0).item() == pytest.approx(expected)
    assert info_nce(x[:1], y[:1], torch.eye(2), 1.0).item() == 0.0  # no negatives, no term
    drop = FastDropout(0.2)
    ones = torch.ones(200_000)
    out = drop(ones)
    assert abs((out == 0).float().mean().item() - 51 / 256) < 0.005 and abs(out.mean().item() - 1) < 0.01
    assert torch.equal(drop.eval()(ones), ones)


def grads(net, batch) -> dict[str, bool]:
    net.zero_grad()
    loss = net.calculate_loss(batch)
    (sum(loss) if isinstance(loss, tuple) else loss).backward()
    return {name: p.grad is not None and p.grad.abs().sum().item() > 0 for name, p in net.named_parameters()}


@pytest.mark.parametrize("switch, off", [({"views": "micro"}, ("macro.", "affinity", "gate.", "conv.", "mim_critic")),
                                         ({"views": "macro"}, ("micro.", "affinity", "gate.", "mim_critic")),
                                         ({"mim_weight": 0.0}, ("mim_critic",)), ({"gate": "off"}, ("gate.",))])
def test_each_ablation_really_removes_its_part(synthetic, tmp_path, switch, off):
    _, net, train, _, _ = build(synthetic, tmp_path, **switch)
    net.train()
    used = grads(net, next(iter(train)))
    assert not any(flag for name, flag in used.items() if name.startswith(off))
    _, full, train, _, _ = build(synthetic, tmp_path)
    full.train()
    assert any(flag for name, flag in grads(full, next(iter(train))).items() if name.startswith(off))
    if "mim_weight" in switch:
        assert isinstance(net.calculate_loss(next(iter(train))), torch.Tensor)


def test_alignment_starts_alive(synthetic, tmp_path):
    """align_norm: at step 0 the affinity M spreads over O(1) values and W_b gets a gradient; the raw product of
    N(0, 0.02) embeddings through an N(0, 0.02) W_b (align_norm: False) starts below 1e-3 with a gradient ~200x
    smaller: an alignment that barely trains, whose near-constant m the gate then drops."""
    spread, grad = {}, {}
    for norm in (True, False):
        _, net, train, _, _ = build(synthetic, tmp_path, align_norm=norm)
        batch = next(iter(train))
        items, cates = batch[net.ITEM_SEQ], net.item_cate[batch[net.ITEM_SEQ]]
        apps, app_cates, g_len = net.macro_view(batch)
        net.eval()
        with torch.no_grad():
            e_g, e_l = net.macro(apps, g_len, app_cates)[1], net.micro(items, batch[net.ITEM_SEQ_LEN], cates)[1]
            spread[norm] = net.alignment(e_g, app_cates, e_l, cates)[0].abs().amax().item()
        net.train()
        grads(net, batch)
        grad[norm] = net.affinity.grad.norm().item()
    assert spread[True] > 0.3 and spread[False] < 1e-3, spread
    assert grad[True] > 100 * grad[False], grad


def test_user_vector_pools_the_whole_view(synthetic, tmp_path):
    """user_pooling: mean: u is the mean of the Transformer's outputs over the valid positions (by causality, output t
    is the last-position vector of the prefix up to t), padding columns change nothing, an empty view gives 0;
    next_item keeps the last position."""
    _, net, *_ = build(synthetic, tmp_path, task="user_classification", label="gender")
    net.eval()
    assert net.pooling == "mean"
    seq, lengths = torch.tensor([[5, 7, 9, 3, 0], [4, 0, 0, 0, 0], [0, 0, 0, 0, 0]]), torch.tensor([4, 1, 0])
    with torch.no_grad():
        u = net.micro(seq, lengths, net.item_cate[seq], "mean")[0]
        for row in range(2):
            prefixes = [net.micro(prefix, torch.tensor([t + 1]), net.item_cate[prefix], "last")[0]
                        for t in range(int(lengths[row])) for prefix in [seq[row:row + 1, :t + 1]]]
            assert torch.allclose(u[row], torch.cat(prefixes).mean(0), atol=1e-5)
        assert (u[2] == 0).all()
        wider = torch.cat([seq, torch.zeros(3, 4, dtype=seq.dtype)], 1)
        assert torch.allclose(net.micro(wider, lengths, net.item_cate[wider], "mean")[0], u, atol=1e-5)
    assert build(synthetic, tmp_path)[1].pooling == "last"


def test_category_embeddings_reach_both_encoders(synthetic, tmp_path):
    _, net, train, _, _ = build(synthetic, tmp_path)
    net.train()
    used = grads(net, next(iter(train)))
    assert used["micro.category.weight"] and used["macro.category.weight"]
    _, plain, *_ = build(synthetic, tmp_path, category_embedding=False)
    assert plain.micro.category is None and plain.macro.category is None
    item = torch.tensor([[5]])
    assert torch.allclose(net.micro.table(item) + net.micro.category(net.item_cate[item]),
                          net.micro(item, torch.tensor([1]), net.item_cate[item])[1])


def test_the_seen_oracle_reads_what_a_user_row_shows_the_model(synthetic, tmp_path):
    """oracle(seen=MAX_ITEM_LIST_LENGTH) counts, per user, the micro items and the macro events the model's user row
    holds (the plain oracle counts every macro event, the later ones too)."""
    config, net, *parts = build(synthetic, tmp_path, task="user_classification", label="gender")
    index, macro, micro, _ = mfn_data.view_features(synthetic["data_path"], TINY, seen=config["MAX_ITEM_LIST_LENGTH"])

    def counts(features: np.ndarray) -> np.ndarray:  # histogram + log length -> the number of events (0: none)
        return np.where(features[:, :-1].sum(1) > 0, np.rint(np.exp(features[:, -1])), 0).astype(int)

    want = dict(zip(index, zip(counts(macro), counts(micro))))
    got = {}
    for part in parts:
        rows = part.dataset.join(part.dataset.inter_feat)
        tokens = part.dataset.field2id_token[part.dataset.uid_field][rows[part.dataset.uid_field].numpy()]
        got.update(zip(tokens, zip(net.macro_view(rows)[2].tolist(), rows[net.ITEM_SEQ_LEN].tolist())))
    assert got == want and any(g for g, _ in got.values())
    everything = counts(mfn_data.view_features(synthetic["data_path"], TINY)[1])
    assert (everything >= counts(macro)).all() and (everything > counts(macro)).any()


def test_classification_metrics_by_hand():
    preds, trues = np.array([0.9, 0.2, 0.6, 0.4]), np.array([1.0, 0.0, 0.0, 1.0])
    assert ClassAUC.metric_info(None, preds, trues) == 0.75
    assert Accuracy.metric_info(None, preds, trues) == 0.5 and F1.metric_info(F1, preds, trues) == 0.5
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([0.0, 1.0, 2.0, 1.0])
    assert Accuracy.metric_info(None, probs, labels) == 0.75  # arg-max 0, 1, 2, 0
    # one-vs-rest AUCs 1, 0.875 (class 1: scores .8, .3 against .2, .3, one tie), 1
    assert ClassAUC.metric_info(None, probs, labels) == pytest.approx((1 + 0.875 + 1) / 3)


def _saved(folder) -> str:
    """The one checkpoint a run wrote into ``folder`` (not its resume file)."""
    found = [p for p in folder.glob("MFN-*.pth") if not p.name.endswith("-resume.pth")]
    assert len(found) == 1, found
    return str(found[0])


def test_both_tasks_run_through_run_recbole(synthetic, tmp_path):
    """run_recbole trains MFN on each task, and its test metrics are those of the model it saved, by hand: Hit@k and
    NDCG@k of the next item from the full-sort scores, Accuracy (and AUC) of the user label from the head's
    probabilities (one logit for gender, five classes for age)."""
    rec = run_recbole(model="MFN", dataset=TINY, config_dict={**synthetic, "checkpoint_dir": str(tmp_path / "rec")})
    _, net, _, _, _, test = load(_saved(tmp_path / "rec"))
    net.eval()
    with torch.no_grad():
        ranks = []
        for batch, *_ in test:
            scores = net.full_sort_predict(batch)
            scores[:, 0] = -torch.inf  # RecBole never ranks the padding item
            target = scores.gather(1, batch["item_id"].unsqueeze(1))
            ranks.append(1 + (scores > target).sum(1))
    rank = torch.cat(ranks).double()
    assert len(rank) == 200  # one test row per user (leave-one-out)
    for k in (5, 10):
        hit = (rank <= k).double()
        assert rec["test_result"][f"hit@{k}"] == pytest.approx(hit.mean().item(), abs=1e-4)
        assert rec["test_result"][f"ndcg@{k}"] == pytest.approx((hit / torch.log2(rank + 1)).mean().item(), abs=1e-4)
    for label, classes in (("gender", 1), ("age", 5)):
        folder = tmp_path / label
        user = run_recbole(model="MFN", dataset=TINY, config_dict={**synthetic, "checkpoint_dir": str(folder),
                                                                    "task": "user_classification", "label": label})
        _, net, _, _, _, test = load(_saved(folder))
        assert net.user_head.out_features == classes
        net.eval()
        with torch.no_grad():
            batches = [(net.predict(batch), batch[label]) for batch, *_ in test]
        probabilities, labels = torch.cat([p for p, _ in batches]).numpy(), torch.cat([y for _, y in batches]).numpy()
        assert len(labels) == 20  # the test users
        predicted = probabilities >= 0.5 if classes == 1 else probabilities.argmax(1)
        assert user["test_result"]["accuracy"] == pytest.approx((predicted == labels).mean(), abs=1e-4)
        if classes == 1:
            assert user["test_result"]["classauc"] == pytest.approx(roc_auc_score(labels, probabilities), abs=1e-4)
    config, net, train, valid, test = build(synthetic, tmp_path, task="user_classification", label="age", epochs=4)
    assert net.user_head.out_features == 5 and [len(d.dataset) for d in (train, valid, test)] == [160, 20, 20]
    users = [set(d.dataset.inter_feat["user_id"].tolist()) for d in (train, valid, test)]
    assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])  # one row per user, disjoint
    trainer = resolve_trainer(config)(config, net)
    trainer.fit(train, valid, saved=False, show_progress=False)
    losses = [sum(v) if isinstance(v, tuple) else v for v in trainer.train_loss_dict.values()]
    assert losses[-1] < losses[0]


def test_the_module_cites_the_mfn_paper():
    from recbole_ext.model.sequential import mfn

    doc = " ".join(mfn.__doc__.split())
    assert '"A Novel Macro-Micro Fusion Network for User Representation Learning on Mobile Apps", WWW\'21' in doc
    assert "Bian, Zhao, Zhou, Chen, Cai, He, Luo and Wen" in doc and "DOI 10.1145/3442381.3450109" in doc
