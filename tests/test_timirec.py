"""TiMiRec: reference parameter count, distillation loss, stage handover, smoke runs."""

import math
from types import SimpleNamespace

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import run_recbole

from recbole_ext import run
from recbole_ext.model.sequential.timirec import TiMiRec, distillation_loss
from recbole_ext.trainer.timirec import TiMiRecTrainer


def reference_config(**overrides) -> dict:
    base = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
            "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_", "MAX_ITEM_LIST_LENGTH": 20,
            "device": "cpu", "embedding_size": 64, "attn_size": 8, "n_interests": 2, "add_pos": 1, "add_trm": 1,
            "temp": 0.5, "n_layers": 2, "stage": "both"}
    return {**base, **overrides}


def test_parameter_count_matches_reference_ml1m_log():
    """ml-1m: 3,706 items (+1 padding row), K=2, n_layers=2, add_pos=add_trm=1 -> #params 526,748."""
    model = TiMiRec(reference_config(), SimpleNamespace(num=lambda field: 3707))
    assert sum(p.numel() for p in model.parameters()) == 526_748


def test_distillation_loss_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # τ=1: row 0 KL([.7311,.2689] || [.5,.5]) = .1110, row 1 KL([.5,.5] || [.2689,.7311]) = .1201; mean .11553
    assert distillation_loss(q, p, 1.0).item() == pytest.approx(0.115529289, abs=1e-6)
    assert distillation_loss(q, p, 0.5).item() == pytest.approx(0.095199269, abs=1e-6)  # includes τ² = 0.25
    assert distillation_loss(p, p, 0.7).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_gives_no_gradient_to_the_target_side():
    q = torch.randn(3, 2, requires_grad=True)
    p = torch.randn(3, 2, requires_grad=True)
    distillation_loss(q, p, 0.5).backward()
    assert q.grad is None and p.grad is not None


def test_finetune_loss_and_scores_follow_the_predicted_mixture():
    torch.manual_seed(0)
    model = TiMiRec(reference_config(n_interests=3), SimpleNamespace(num=lambda field: 30))
    batch = {"item_id_list": torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0]]), "item_length": torch.tensor([3, 1]),
             "item_id": torch.tensor([9, 2]), "neg_item_id": torch.tensor([11, 12])}
    rec, kd = model.calculate_loss(batch)
    assert rec.item() > 0 and kd.item() >= 0
    interests, logits = model(batch["item_id_list"], batch["item_length"])
    user = (torch.softmax(logits, -1).unsqueeze(-1) * interests).sum(1)
    expected = user @ model.extractor.item_embedding.weight.T
    assert torch.allclose(model.full_sort_predict(batch), expected, atol=1e-6)
    model.mode = "pretrain"
    assert torch.allclose(model.full_sort_predict(batch),
                          (interests @ model.extractor.item_embedding.weight.T).amax(1), atol=1e-6)


def test_both_stages_through_recbole_run_recbole(tiny):
    result = run_recbole(model="TiMiRec", dataset="tiny", config_dict={**tiny, "protocol": "rechorus"})
    assert set(result["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}


def _trainer(tiny, **overrides):
    config = Config(model="TiMiRec", dataset="tiny", config_dict={**tiny, "protocol": "rechorus", **overrides})
    train, valid, test = data_preparation(config, create_dataset(config))
    model = TiMiRec(config, train._dataset)
    return TiMiRecTrainer(config, model), train, valid


def test_stage_handover_copies_the_best_extractor(tiny):
    pre = run("TiMiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", "stage": "pretrain"})
    saved = torch.load(pre["checkpoint"], map_location="cpu", weights_only=False)
    trainer, _, _ = _trainer(tiny, stage="finetune", pretrain_path=pre["checkpoint"])
    trainer.load_extractor(pre["checkpoint"])
    for key, value in trainer.model.extractor.state_dict().items():
        assert torch.equal(value, saved["state_dict"][f"extractor.{key}"]), key
    fine = run("TiMiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", "stage": "finetune",
                                               "pretrain_path": pre["checkpoint"]})
    assert math.isfinite(fine["best_valid_score"])


def test_finetune_refuses_missing_or_mismatched_extractor(tiny):
    with pytest.raises(FileNotFoundError, match="pretrain_path"):
        run("TiMiRec", "tiny", config_dict={**tiny, "stage": "finetune", "pretrain_path": "nope.pth"})
    pre = run("TiMiRec", "tiny", config_dict={**tiny, "stage": "pretrain"})
    trainer, _, _ = _trainer(tiny, stage="finetune", n_interests=3)
    with pytest.raises(ValueError, match="n_interests=2 but this run has n_interests=3"):
        trainer.load_extractor(pre["checkpoint"])


def test_bad_stage_value_names_the_key(tiny):
    with pytest.raises(ValueError, match="stage: 'warmup' is not valid for TiMiRec"):
        run("TiMiRec", "tiny", config_dict={**tiny, "stage": "warmup"})


def test_both_stages_report_one_curve_and_epochs_per_stage(tiny):
    result = run("TiMiRec", "tiny", config_dict={**tiny, "epochs": 2})
    assert result["stage_epochs"] == {"pretrain": 2, "finetune": 2}
    assert len(result["valid_scores"]) == 4 == result["epochs"]
    assert result["checkpoint"].endswith(".pth") and not result["checkpoint"].endswith("-pretrain.pth")
