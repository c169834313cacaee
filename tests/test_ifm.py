"""IFM / INN / DeepIFM: the pair layer by hand, parameter counts, FM warm start, ClippedRMSE, the CTR and libFM
protocols on hand-made data, and runs through RecBole's run_recbole."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.quick_start import run_recbole
from recbole.utils import get_model, init_seed

from conftest import FAST
from recbole_ext.data.convert import convert_libfm
from recbole_ext.evaluation import ClippedRMSE
from recbole_ext.model.context_aware.ifm import FM_PARTS, fm_stage_model, reference_fm, warm_start
from recbole_ext.model.layers import InteractionAwarePairs
from recbole_ext.inference import TrainedModel
from recbole_ext.quick_start import _build, build_config, evaluate_checkpoint, load, run
from recbole_ext.trainer import ifm as ifm_trainer
from recbole_ext.trainer.base import resolve_trainer

def test_pair_layer_hand_values():
    layer = InteractionAwarePairs(3, 2, attention_size=1, field_factor_size=1, temperature=2.0)
    with torch.no_grad():
        layer.W.weight.copy_(torch.tensor([[1.0, 1.0]]))
        layer.b.fill_(0.5), layer.h.fill_(1.0)
        layer.phi.copy_(torch.tensor([[1.0], [2.0], [3.0]]))
        layer.psi.copy_(torch.tensor([[1.0, -1.0]]))
    e = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]]])
    attention, q, prototypes = layer(e)
    # pairs (0,1) (0,2) (1,2): q = [3,0], [0,2], [0,0]; logits relu(sum(q)/2 + .5) = 2, 1.5, .5
    assert q.tolist() == [[[3.0, 0.0], [0.0, 2.0], [0.0, 0.0]]]
    assert torch.allclose(attention, torch.softmax(torch.tensor([[2.0, 1.5, 0.5]]), 1))
    # φ_i φ_j = 2, 3, 6 times Ψ = [1, -1]
    assert prototypes.tolist() == [[2.0, -2.0], [3.0, -3.0], [6.0, -6.0]]
    # field groups: fields 0 and 1 are one group, so pair (0, 1) is skipped
    assert InteractionAwarePairs(3, 2, 1, 1, 1.0, field_groups=[0, 0, 1]).n_pairs == 2


def test_pair_sampling_uses_only_the_sampled_pairs():
    """A sample of pairs is a subset of the full layer's pairs, drawn without replacement: each sampled pair's q and
    prototype are the full layer's, its attention the full attention renormalised over the sample; a pair whose
    prototype is zero (weight ‖u_p‖² = 0) is never drawn."""
    torch.manual_seed(0)
    layer = InteractionAwarePairs(5, 3, 4, 2, 10.0)
    e = torch.randn(2, 5, 3)
    full_attention, full_q, full_prototypes = layer(e)
    for _ in range(20):
        attention, q, prototypes = layer(e, sample_size=4)
        assert attention.shape == (2, 4) and q.shape == (2, 4, 3) and prototypes.shape == (4, 3)
        chosen = torch.cdist(prototypes, full_prototypes).argmin(1)  # which of the 10 pairs each one is
        assert len(set(chosen.tolist())) == 4  # without replacement
        assert torch.allclose(prototypes, full_prototypes[chosen]) and torch.allclose(q, full_q[:, chosen])
        kept = full_attention[:, chosen]
        assert torch.allclose(attention, kept / kept.sum(1, keepdim=True), atol=1e-6)
    with torch.no_grad():
        layer.phi[0] = 0.0  # pairs (0, j): u_p = 0
    field_zero = {int(p) for p in torch.nonzero(layer.row == 0).flatten()}
    assert len(field_zero) == 4
    for _ in range(20):
        prototypes = layer(e, sample_size=6)[2]  # 6 of the 6 pairs with a non-zero prototype
        chosen = torch.cdist(prototypes, layer.prototypes(layer.row, layer.col)).argmin(1)
        assert not field_zero & set(chosen.tolist()) and (prototypes.abs().sum(1) > 0).all()


def test_parameter_counts_match_the_spec_formulas(ratings):
    counts = {}
    for model in ("FM", "IFM", "INN", "DeepIFM"):
        net = _build(build_config(model, "rated", config_dict=ratings))[0]
        counts[model] = sum(p.numel() for p in net.parameters())
    m, k, p = net.num_feature_field, 4, net.num_feature_field * (net.num_feature_field - 1) // 2
    t, kf = 8, 16  # IFM.yaml: attention_size, field_factor_size
    assert counts["IFM"] - counts["FM"] == t * k + t + t + m * kf + kf * k
    assert counts["INN"] - counts["IFM"] == p * k * 5 + 5 + 5 + 1
    t, kf = 16, 6  # DeepIFM.yaml
    deep = (m * k * 100 + 100) + (100 * 75 + 75) + (75 * 50 + 50) + (50 + 1)
    assert counts["DeepIFM"] - counts["FM"] == t * k + t + t + m * kf + kf * k + deep


def test_clipped_rmse_hand_value():
    metric = ClippedRMSE.__new__(ClippedRMSE)
    preds, trues = np.array([2.0, -0.5, -3.0]), np.array([1.0, -1.0, -1.0])
    # clipped to [-1, 1]: [1, -.5, -1] -> errors 0, .5, 0
    assert metric.metric_info(preds, trues) == pytest.approx(math.sqrt(0.25 / 3))


def test_ctr_labels_and_split(ratings):
    config = build_config("IFM", "rated", config_dict=ratings)
    init_seed(config["seed"], True)  # as run() and run_recbole do before the data
    _, train, valid, test = _build(config)
    frames = [d._dataset.inter_feat for d in (train, valid, test)]
    n = sum(len(f) for f in frames)
    raw = pd.read_csv(f"{ratings['data_path']}/rated/rated.inter", sep="\t")
    assert n == (raw["rating:float"] != 3).sum()  # ratings of 3 dropped
    assert all(abs(len(f) - r * n) <= 2 for f, r in zip(frames, (0.8, 0.1, 0.1)))  # RecBole rounds its own way
    expected = (raw[raw["rating:float"] != 3]["rating:float"] >= 4).mean()
    assert torch.cat([f["label"] for f in frames]).mean().item() == pytest.approx(expected)
    # the same seed gives RecBole's FM the same rows
    init_seed(config["seed"], True)
    fm_train = _build(build_config("FM", "rated", config_dict=ratings))[1]
    assert torch.equal(fm_train._dataset.inter_feat["user_id"], frames[0]["user_id"])


def test_fm_warm_start_copies_exactly_and_refuses_a_mismatch(ratings, tmp_path):
    fm = run_recbole(model="FM", dataset="rated", config_dict={**ratings, "epochs": 3, "learning_rate": 0.05})
    assert fm["test_result"]["auc"] > 0.9  # the label is a function of user and item parity: weights worth copying
    checkpoint = next((tmp_path / "saved").glob("FM-*.pth"))
    config = build_config("IFM", "rated", config_dict={**ratings, "pretrain_path": str(checkpoint)})
    ifm = _build(config)[0]
    cold = _build(build_config("IFM", "rated", config_dict=ratings))[0]  # the same seed, no pretrain_path
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    for key in ("token_embedding_table.embedding.weight", "first_order_linear.bias"):
        assert torch.equal(ifm.state_dict()[key], saved[key])
        assert not torch.allclose(cold.state_dict()[key], saved[key])  # the equality is the copy's, not the seed's
    with pytest.raises(ValueError, match="embedding_size"):
        _build(build_config("IFM", "rated", config_dict={**ratings, "pretrain_path": str(checkpoint),
                                                         "embedding_size": 8}))


@pytest.mark.parametrize("model", ["IFM", "INN", "DeepIFM"])
def test_ctr_run_through_run_recbole_learns(model, ratings):
    result = run_recbole(model=model, dataset="rated", config_dict={**ratings, "epochs": 8, "learning_rate": 0.05})
    assert result["test_result"]["auc"] > 0.75  # the label is a function of user and item parity


def test_eval_is_deterministic_and_training_loss_falls(ratings):
    config = build_config("IFM", "rated", config_dict={**ratings, "interaction_dropout": 0.5})
    net, train, valid, _ = _build(config)
    trainer = resolve_trainer(config)(config, net)
    losses = [trainer._train_epoch(train, epoch) for epoch in range(4)]
    assert losses[-1] < losses[0]
    net.eval()
    batch = next(iter(valid))[0]
    assert torch.equal(net.predict(batch), net.predict(batch))  # dropout off at evaluation


def _libfm(folder, rows_per_part=200, bad: str | None = None):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part in ("train", "validation", "test"):
        lines = []
        for _ in range(rows_per_part):
            u, i, t = rng.integers(10), rng.integers(12), rng.integers(5)
            lines.append(f"{1 if (u + t) % 2 else -1} {u}:1 {10 + i}:1 {22 + t}:1")
        if bad and part == "validation":
            lines.insert(4, bad)
        (folder / f"toy.{part}.libfm").write_text("\n".join(lines) + "\n")


def test_libfm_protocol_runs_with_clipped_rmse(tmp_path):
    _libfm(tmp_path / "raw")
    convert_libfm(tmp_path / "raw", tmp_path / "data", "toy", fields=["user_id", "item_id", "tag"])
    fast = {key: value for key, value in FAST.items() if key not in ("metrics", "valid_metric", "topk")}
    config = {**fast, "data_path": str(tmp_path / "data"), "protocol": "libfm", "epochs": 6, "embedding_size": 4,
              "train_batch_size": 64, "checkpoint_dir": str(tmp_path / "saved")}
    for model in ("IFM", "INN"):
        result = run_recbole(model=model, dataset="toy", config_dict=config)
        assert result["test_result"]["clippedrmse"] <= result["test_result"]["rmse"]
        assert result["test_result"]["clippedrmse"] < 0.9  # label = parity of user + tag: learnable
    frame = pd.read_csv(tmp_path / "data" / "toy" / "toy.valid.inter", sep="\t")
    assert list(frame.columns) == ["label:float", "user_id:token", "item_id:token", "tag:token"] and len(frame) == 200
    with pytest.raises(ValueError, match="DCNV2 cannot regress"):  # its loss is not BCE on a raw score
        build_config("DCNV2", "toy", config_dict=config)


def test_recbole_ctr_models_regress_the_raw_score_under_libfm(tmp_path):
    """RecBole's FM/AFM as the paper's ±1 baselines: squared error on the raw score, which is the prediction."""
    _libfm(tmp_path / "raw")
    convert_libfm(tmp_path / "raw", tmp_path / "data", "toy", fields=["user_id", "item_id", "tag"])
    fast = {key: value for key, value in FAST.items() if key not in ("metrics", "valid_metric", "topk")}
    config = {**fast, "data_path": str(tmp_path / "data"), "protocol": "libfm", "epochs": 6, "embedding_size": 4,
              "train_batch_size": 64, "learning_rate": 0.05, "checkpoint_dir": str(tmp_path / "saved")}
    for model in ("FM", "AFM"):
        net, train, _, test = _build(build_config(model, "toy", config_dict=config))
        assert isinstance(net.loss, torch.nn.MSELoss)
        result = run(model, "toy", config_dict=config)
        # a sigmoid in [0, 1] against ±1 labels cannot get under RMSE √0.5 ≈ 0.707 here (half the labels are -1)
        assert result["test_result"]["clippedrmse"] < 0.69, result["test_result"]
        scores = TrainedModel(result["checkpoint"]).model.predict(next(iter(test))[0])
        assert (scores < 0).any() and (scores > 0).any()  # the raw score, reloaded as trained
    with pytest.raises(RuntimeError, match="RecBole's own Trainer would train FM with BCE"):  # not silently wrong
        run_recbole(model="FM", dataset="toy", config_dict=config)


@pytest.mark.parametrize("bad, message", [("1 3:1 15:1", "line 5 has 2 features"),
                                          ("yes 3:1 15:1 23:1", "line 5: need 'label")])
def test_bad_libfm_line_is_named_and_nothing_is_written(tmp_path, bad, message):
    _libfm(tmp_path / "raw", bad=bad)
    with pytest.raises(ValueError, match=message):
        convert_libfm(tmp_path / "raw", tmp_path / "data", "toy")
    assert not (tmp_path / "data" / "toy").exists()


def test_libfm_field_map_assigns_by_range_and_names_an_outside_index(tmp_path):
    _libfm(tmp_path / "raw")
    field_map = [("tag", 22, 26), ("user_id", 0, 9), ("item_id", 10, 21)]
    convert_libfm(tmp_path / "raw", tmp_path / "data", "toy", field_map=field_map)
    frame = pd.read_csv(tmp_path / "data" / "toy" / "toy.train.inter", sep="\t")
    assert list(frame.columns) == ["label:float", "tag:token", "user_id:token", "item_id:token"]
    assert frame["tag:token"].between(22, 26).all() and frame["user_id:token"].between(0, 9).all()
    with pytest.raises(ValueError, match="outside every field"):
        convert_libfm(tmp_path / "raw", tmp_path / "data", "toy2", field_map=[("u", 0, 9), ("i", 10, 21), ("t", 22, 24)])


def _toy_config(tmp_path, model: str, **extra):
    """A config of ``model`` on the libFM toy data (±1 labels, 3 fields), its defaults unless ``extra`` says."""
    if not (tmp_path / "data" / "toy").exists():
        _libfm(tmp_path / "raw")
        convert_libfm(tmp_path / "raw", tmp_path / "data", "toy", fields=["user_id", "item_id", "tag"])
    fast = {key: value for key, value in FAST.items() if key not in ("metrics", "valid_metric", "topk")}
    return build_config(model, "toy", config_dict={
        **fast, "data_path": str(tmp_path / "data"), "protocol": "libfm", "embedding_size": 4, "train_batch_size": 64,
        "checkpoint_dir": str(tmp_path / "saved"), **extra})


def _fit(config):
    init_seed(config["seed"], True)
    net, train, valid, _ = _build(config)
    trainer = resolve_trainer(config)(config, net)
    trainer.fit(train, valid, saved=True)
    return trainer


def test_default_trains_the_reference_fm_then_ifm_from_its_weights(tmp_path, monkeypatch):
    """The paper's recipe by default: FM.py (batch norm + dropout) first, then IFM from the best FM's V, w, w0."""
    config = _toy_config(tmp_path, "IFM", epochs=2, fm_epochs=3, fm_learning_rate=0.1)
    assert (config["stage"], config["fm_batch_norm"], config["fm_dropout"]) == ("both", True, 0.7)
    stage_models, started_from = [], {}

    def keep_fm(fm, cfg):
        stage_models.append(fm_stage_model(fm, cfg))
        return stage_models[-1]

    def spy_warm_start(model, path, dataset_name):
        copied = warm_start(model, path, dataset_name)
        started_from.update({key: value.clone() for key, value in model.state_dict().items()})
        return copied

    monkeypatch.setattr(ifm_trainer, "fm_stage_model", keep_fm)
    monkeypatch.setattr(ifm_trainer, "warm_start", spy_warm_start)
    trainer = _fit(config)
    assert trainer.stage_epochs == {"fm": 3, "IFM": 2} and len(trainer.valid_curve) == 5
    fm = torch.load(trainer.fm_file, weights_only=False)
    assert fm["config"]["model"] == "FM" and config["model"] == "IFM"  # the shared config is restored
    fm_parts = [key for key in fm["state_dict"] if key.startswith(FM_PARTS)]
    assert "token_embedding_table.embedding.weight" in fm_parts and "first_order_linear.bias" in fm_parts
    for key in fm_parts:  # stage 2 starts from the best FM's embeddings and first-order part, exactly
        assert torch.equal(started_from[key], fm["state_dict"][key]), key
    # the FM stage was the reference FM: its norm ran (moving statistics left their init) and it dropped out
    norm, dropout = stage_models[0].fm.norm, stage_models[0].fm.dropout
    assert isinstance(norm, torch.nn.BatchNorm1d) and dropout.p == 0.7
    assert not torch.equal(fm["state_dict"]["fm.norm.running_var"], torch.ones(4))
    assert isinstance(stage_models[0].loss, torch.nn.MSELoss)  # it regressed the ±1 labels on its raw score
    # the -fm.pth reloads as that reference FM (norm included) and evaluates: a sweep may test it
    _, reloaded, *_ = load(trainer.fm_file)
    assert isinstance(reloaded.fm.norm, torch.nn.BatchNorm1d) and isinstance(reloaded.loss, torch.nn.MSELoss)
    assert all(torch.equal(value, fm["state_dict"][key]) for key, value in reloaded.state_dict().items())
    assert all(math.isfinite(value) for value in evaluate_checkpoint(trainer.fm_file).values())


def test_warm_start_switches_off_and_a_pretrain_path_replaces_the_fm_stage(tmp_path):
    trainer = _fit(_toy_config(tmp_path, "IFM", stage="ifm", epochs=2))
    assert trainer.stage_epochs == {} and trainer.fm_file is None and len(trainer.valid_curve) == 2
    assert not list((tmp_path / "saved").glob("*-fm.pth"))
    for model, extra, fm_stage in (("IFM", {}, True), ("INN", {}, True), ("DeepIFM", {}, False),
                                   ("IFM", {"stage": "ifm"}, False), ("IFM", {"pretrain_path": "fm.pth"}, False)):
        config = _toy_config(tmp_path, model, epochs=2, fm_epochs=3, **extra)
        assert ifm_trainer.trains_fm(config) is fm_stage, (model, extra)
        assert ifm_trainer.IFMTrainer.max_epochs(config) == (5 if fm_stage else 2), (model, extra)


def test_reference_fm_is_fm_py_batch_norm_and_dropout_on_the_bi_interaction(ratings):
    config = build_config("IFM", "rated", config_dict=ratings)
    init_seed(config["seed"], True)
    _, train, valid, _ = _build(config)
    batch = next(iter(valid))[0]
    fm = get_model("FM")(config, train._dataset).eval()  # as the FM stage builds it
    plain = fm(batch)
    assert torch.equal(reference_fm(fm, {"fm_batch_norm": False, "fm_dropout": 0.0})(batch), plain)  # RecBole's FM
    reference_fm(fm, config).eval()
    norm = fm.fm.norm
    assert (norm.num_features, norm.eps, norm.momentum, norm.affine) == (4, 1e-3, 0.1, True)  # TF decay 0.9
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 2), norm.bias.uniform_(-1, 1)
    e = fm.concat_embed_input_fields(batch)
    bi = 0.5 * (e.sum(1) ** 2 - (e ** 2).sum(1))  # [B, K]
    normed = (bi - norm.running_mean) / (norm.running_var + 1e-3).sqrt() * norm.weight + norm.bias
    expected = fm.first_order_linear(batch).squeeze(-1) + normed.sum(-1)
    assert torch.allclose(fm(batch), expected, atol=1e-5)  # evaluation: moving statistics, no dropout
    fm.train()  # training: batch statistics (deterministic) and FM.py's dropout (keep 0.3), so two passes differ
    assert fm.fm.dropout.p == 0.7 and not torch.equal(fm(batch), fm(batch))
