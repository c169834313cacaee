"""The fast sequential training path: vectorised negatives, the tensor loader, the fused optimizer, the
padding-free attention layer and the packed GRU (each against the plain computation it replaces)."""

import logging

import pytest
import torch
from torch import nn

from recbole_ext import run
from recbole_ext.data.sequential import SequentialTrainLoader, draw_negatives, history_keys
from recbole_ext.model.layers import SelfAttentionLayer
from recbole_ext.model.sequential.timirec import InterestPredictor
from recbole_ext.quick_start import _build, build_config


def test_negatives_avoid_the_seen_set_and_repeat_with_the_seed():
    n_items = 7  # ids 1..6
    users = torch.tensor([0, 0, 1, 2])
    positives = torch.tensor([1, 2, 6, 3])
    seen = torch.tensor(sorted(u * n_items + i for u, items in {0: [1, 2, 3], 1: [6, 5, 4, 3, 2], 2: [3]}.items()
                               for i in items))

    def draw(seed, seen_keys):
        return draw_negatives(users, positives, n_items, 200, torch.Generator().manual_seed(seed), seen_keys)

    history = draw(0, seen)
    assert set(history[0].tolist()) | set(history[1].tolist()) == {4, 5, 6}
    assert set(history[2].tolist()) == {1}  # the only item user 1 has not seen
    assert 3 not in history[3].tolist() and set(history[3].tolist()) == {1, 2, 4, 5, 6}
    positive_only = draw(0, None)
    assert all(positives[r].item() not in positive_only[r].tolist() for r in range(4))
    assert set(positive_only[0].tolist()) == {2, 3, 4, 5, 6}  # history items are allowed here
    assert torch.equal(draw(3, seen), draw(3, seen)) and not torch.equal(draw(3, seen), draw(4, seen))


def _loader(tiny, **extra):
    config = build_config("ComiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", **extra})
    return _build(config)[1]


def test_rechorus_training_negatives_exclude_the_whole_history_and_change_every_epoch(tiny):
    loader = _loader(tiny)
    assert isinstance(loader, SequentialTrainLoader) and loader.exclude == "history"
    fields = loader._dataset.inter_feat
    users, history = fields["user_id"], fields["item_id_list"]
    owned = {}
    for u, target, row in zip(users.tolist(), fields["item_id"].tolist(), history.tolist()):
        owned.setdefault(u, set()).update([target, *row])
    for epoch in range(2):
        rows = 0
        for batch in loader:
            rows += len(batch)
            for u, neg in zip(batch["user_id"].tolist(), batch["neg_item_id"].tolist()):
                assert neg not in owned[u] and neg > 0
        assert rows == len(fields)
        if epoch == 0:
            first = loader.epoch_negatives.clone()
    assert not torch.equal(first, loader.epoch_negatives)  # redrawn each epoch
    assert torch.equal(history_keys(loader._dataset).unique(), history_keys(loader._dataset))  # sorted, unique


def test_same_seed_same_batches_and_recbole_loader_on_request(tiny):
    a, b = (list(_loader(tiny)) for _ in range(2))
    assert all(torch.equal(x["neg_item_id"], y["neg_item_id"]) and torch.equal(x["item_id"], y["item_id"])
               for x, y in zip(a, b))
    plain = _loader(tiny, sequential_loader="recbole", train_neg_exclude="positive")
    assert type(plain).__name__ == "TrainDataLoader"
    with pytest.raises(ValueError, match="train_neg_exclude: history needs the fast sequential loader"):
        _loader(tiny, sequential_loader="recbole")


def test_fused_optimizer_is_the_same_update(tiny):
    """Fused and plain Adam take the same step from the same gradients.

    Two kernels, so no bit equality: each computes lr·m̂/(√v̂ + eps) in float32 in its own operation order (and
    vector width: AVX-512 on Intel, AVX2 on AMD), a few ulps apart, i.e. ~1e-7·lr. Adam's step is at most ~lr in
    size, whatever the gradient's scale, so the bound is relative to lr: 1e-3·lr leaves four orders of margin for
    rounding, while a wrong formula (no bias correction: 3x at step 1 with β2 = 0.999; eps inside the root; a
    missing weight decay term) moves the step by a sizeable fraction of lr. Comparing after a whole epoch instead
    would compound rounding through data-dependent steps (that test failed on AMD EPYC with atol=1e-5)."""
    steps = {}
    for fused in (True, False):
        config = build_config("ComiRec", "tiny", config_dict={**tiny, "fused_optimizer": fused, "weight_decay": 1e-4})
        torch.manual_seed(0)  # the same initial weights for both
        net, train, _, _ = _build(config)
        from recbole_ext.trainer.base import resolve_trainer

        trainer = resolve_trainer(config)(config, net)
        assert trainer.optimizer.param_groups[0]["fused"] is (True if fused else None)
        before = torch.cat([p.detach().flatten() for p in net.parameters()])
        torch.manual_seed(1)
        batch = next(iter(train))
        for _ in range(3):  # three steps: the bias correction changes between them
            trainer.optimizer.zero_grad()
            net.calculate_loss(batch).backward()
            trainer.optimizer.step()
        steps[fused] = torch.cat([p.detach().flatten() for p in net.parameters()]) - before
    lr = config["learning_rate"]
    assert steps[False].abs().max() > 0.5 * lr  # the comparison is about real steps, not zeros
    assert (steps[True] - steps[False]).abs().max() <= 1e-3 * lr


def test_attention_layer_packed_equals_dense_and_loads_separate_projections():
    torch.manual_seed(0)
    layer = SelfAttentionLayer(8)
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    layer.pack = True
    packed = layer(x, mask)
    layer.pack = False
    dense = layer(x, mask)
    assert torch.allclose(packed, dense, atol=1e-5) and packed[~mask].abs().max() == 0
    # the plain computation with separate Q/K/V, as checkpoints before the fused layer stored them
    q, k, v = (nn.Linear(8, 8) for _ in range(3))
    old = {f"{name}.{kind}": getattr(mod, kind) for name, mod in zip(("query", "key", "value"), (q, k, v))
           for kind in ("weight", "bias")}
    old.update({k_: v_ for k_, v_ in layer.state_dict().items() if not k_.startswith("qkv")})
    layer.load_state_dict(old)
    logits = (q(x) @ k(x).transpose(1, 2) / 8 ** 0.5).masked_fill(~mask.unsqueeze(1), float("-inf"))
    z = layer.norm1(torch.softmax(logits, -1) @ v(x) + x)
    expected = layer.norm2(layer.ffn(z) + z) * mask.unsqueeze(-1)
    layer.pack = None
    assert torch.allclose(layer(x, mask), expected, atol=1e-5)


def test_packed_gru_reads_the_state_after_each_last_item():
    torch.manual_seed(0)
    predictor = InterestPredictor(n_items=20, d=6, n_interests=3, n_layers=1)
    seq = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0], [1, 2, 3, 4]])
    lengths = torch.tensor([3, 1, 4])
    outputs, _ = predictor.gru(predictor.item_embedding(seq))  # unpacked: causal, so read at len - 1
    expected = predictor.proj(outputs[torch.arange(3), lengths - 1])
    assert torch.allclose(predictor(seq, lengths), expected, atol=1e-6)


def test_two_stage_run_tests_both_stages_and_says_where_it_stands(tiny, caplog):
    caplog.set_level(logging.INFO)
    result = run("TiMiRec", "tiny", config_dict={**tiny, "epochs": 2, "state": "INFO"})
    assert set(result["pretrain_test_result"]) == set(result["test_result"])
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "TiMiRec stage 1/2 (pretrain; the finetune stage follows) epoch 2/2" in log
    assert "TiMiRec stage 2/2 (finetune) epoch 1/2" in log and "at most 1 more" in log
