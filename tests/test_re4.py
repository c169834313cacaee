"""Re4: each backward flow against a hand-computed value, the sampled softmax against softmaxes by hand over the
reference's candidates (no target of the batch a negative), zero weights removing their terms, and runs through
RecBole's run_recbole."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from recbole.quick_start import run_recbole

from recbole_ext.model.layers import (
    MultiInterestExtractor, batch_negatives, log_uniform_negatives, sampled_softmax_loss,
)
from recbole_ext.model.sequential.re4 import (
    Decoder, Re4, attended_items, newest_first, re_attend_loss, re_construct_loss, re_contrast_loss,
)
from recbole_ext.quick_start import _build, build_config
from recbole_ext.trainer.base import resolve_trainer


def test_newest_first_and_attended_items():
    assert newest_first(torch.tensor([[1, 2, 3, 0], [5, 0, 0, 0]]), torch.tensor([3, 1])).tolist() == \
        [[3, 2, 1, 0], [5, 0, 0, 0]]
    attention = torch.tensor([[[0.5, 0.3, 0.2, 0.0]]])
    valid = torch.tensor([[True, True, True, False]])
    assert attended_items(attention, valid, -1).tolist() == [[[True, False, False, False]]]  # gate 1/3
    assert attended_items(attention, valid, 4).tolist() == [[[True, True, False, False]]]  # gate 1/4


def test_re_attend_hand_value_and_padding_gives_finite_gradients():
    z = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    items = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [9.0, 9.0]]], requires_grad=True)
    logits = torch.tensor([[[0.0, 0.0, 5.0]]], requires_grad=True)
    valid = torch.tensor([[True, True, False]])
    # R = softmax([1, 0]) = [.7311, .2689], A = [.5, .5]: H(R, A) = ln 2
    loss = re_attend_loss(z, items, logits, valid)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in (z, items, logits))
    assert items.grad[0, 2].abs().sum() == 0 and logits.grad[0, 0, 2] == 0


def test_re_contrast_hand_value_uses_own_items_other_interests_and_the_previous_user():
    # user 0: one interest z = [1, 0]; own items e1 = [1, 0] (positive), e2 = [0, 1]; user 1 (the "previous"
    # user of user 0 after the roll) has one valid item [1, 0]. temp 1, one positive over B·K·L = 2·1·2 slots.
    z = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    items = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True], [True, False]])
    positives = torch.tensor([[[True, False]], [[False, False]]])
    # denominator of user 0: own cos [1, 0], no other interest, user 1's valid item cos 1 -> log(2e + 1)
    expected = (math.log(2 * math.e + 1) - 1.0) / 4
    assert re_contrast_loss(z, items, valid, positives, 1.0).item() == pytest.approx(expected, abs=1e-6)
    # at temp 0.5 the similarities double
    expected_half = (math.log(2 * math.e ** 2 + 1) - 2.0) / 4
    assert re_contrast_loss(z, items, valid, positives, 0.5).item() == pytest.approx(expected_half, abs=1e-6)


def test_re_construct_hand_value():
    reconstruction = torch.zeros(1, 1, 2, 2)
    items = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    positives = torch.tensor([[[True, False]]])
    assert re_construct_loss(reconstruction, items, positives).item() == pytest.approx((1 + 4) / 4)


def test_folded_decoder_is_the_reference_decoder():
    torch.manual_seed(0)
    b, k, length, d = 3, 2, 4, 5
    decoder = Decoder(d, length)
    z = torch.randn(b, k, d, requires_grad=True)
    valid = torch.arange(length).unsqueeze(0) < torch.tensor([[4], [2], [1]])
    # the reference's order: R0 = fc_cons(z) as L proposals, slot logits W3_2 tanh(W3 R0ᵀ), values R0 W5
    proposals = decoder.fc_cons(z).view(b, k, length, d)
    logits = decoder.W3_2(torch.tanh(decoder.W3(proposals))).transpose(-1, -2)
    expected = torch.softmax(logits.masked_fill(~valid[:, None, None, :], float("-inf")), -1) @ decoder.W5(proposals)
    folded = decoder(z, valid)
    assert torch.allclose(folded, expected, atol=1e-5)
    weights = [z, decoder.fc_cons.weight, decoder.W3.weight, decoder.W5.weight]
    for ours, theirs in zip(torch.autograd.grad(folded.square().sum(), weights),
                            torch.autograd.grad(expected.square().sum(), weights)):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_per_item_extractor_path_equals_per_position_computation():
    torch.manual_seed(0)
    extractor = MultiInterestExtractor(6, 4, 8, 3, 5, add_pos=False, aggregate="raw", bias=False, value_proj=True)
    seq, lengths = torch.tensor([[1, 2, 3, 0, 0], [5, 5, 4, 2, 1]]), torch.tensor([3, 5])
    assert extractor.item_embedding.num_embeddings < seq.numel()  # the per-item path is taken
    interests, attention, logits = extractor(seq, lengths, details=True)
    e = extractor.item_embedding(seq)
    expected_logits = extractor.W2(torch.tanh(extractor.W1(e))).transpose(1, 2).masked_fill(
        (seq == 0).unsqueeze(1), float("-inf"))
    assert torch.allclose(logits, expected_logits, atol=1e-6)
    assert torch.allclose(interests, torch.softmax(expected_logits, -1) @ extractor.value(e), atol=1e-6)


def _softmax_by_hand(user, items, targets, negatives_of, log_q=None) -> float:
    """Mean over rows b of -log softmax of b's own target against ``negatives_of(b)`` (item ids), one row at a time."""
    shift = torch.zeros(len(items)) if log_q is None else log_q
    losses = []
    for b, t in enumerate(targets.tolist()):
        ids = [t, *negatives_of(b)]
        logits = torch.stack([user[b] @ items[i] - shift[i] for i in ids])
        losses.append(-F.log_softmax(logits, 0)[0])
    return torch.stack(losses).mean().item()


def test_sampled_softmax_small_catalogue_is_own_target_against_every_item_but_the_batch_targets():
    torch.manual_seed(0)  # 30 items, 10 rows, 8 distinct targets (two repeated)
    user, items = torch.randn(10, 4), torch.randn(31, 4)
    targets = torch.tensor([1, 3, 3, 7, 11, 12, 20, 20, 29, 30])
    rest = sorted(set(range(1, 31)) - set(targets.tolist()))  # 22 items
    expected = _softmax_by_hand(user, items, targets, lambda b: rest)
    full = F.cross_entropy(user @ items[1:].T, targets - 1).item()  # the batch's other targets as negatives too
    assert expected != pytest.approx(full, abs=1e-3)
    for n_negatives in (5000, 30, 25, 22):  # at least as many as the non-target items: every one of them
        assert sampled_softmax_loss(user, items, targets, n_negatives).item() == pytest.approx(expected, abs=1e-5)


def test_sampled_softmax_large_catalogue_draws_no_batch_target():
    # every user scores each target item 5 and every other item 0: with the batch's other targets kept out of the
    # 1,500 negatives the loss is log(1 + 1500 e^-5) whichever items are drawn
    n_items, targets = 2001, torch.tensor([3, 70, 500, 501, 999, 1400, 1999, 2000])
    items = torch.zeros(n_items, 2)
    items[targets, 0] = 5.0
    user = torch.tensor([[1.0, 0.0]]).expand(len(targets), -1)
    torch.manual_seed(0)
    loss = sampled_softmax_loss(user, items, targets, 1500)
    assert loss.item() == pytest.approx(math.log1p(1500 * math.exp(-5)), rel=1e-5)
    for seed in range(3):
        torch.manual_seed(seed)
        candidates, dropped = batch_negatives(targets, n_items, 1500)
        assert len(candidates.unique()) == 1500 and not dropped.any()
        assert candidates.min() >= 1 and candidates.max() < n_items and not torch.isin(candidates, targets).any()


def test_batch_negatives_are_uniform_over_the_non_target_items():
    torch.manual_seed(0)
    targets = torch.tensor([2, 5, 5, 9, 17, 21, 26, 28, 30])
    counts = torch.zeros(31)
    for _ in range(3000):
        candidates, dropped = batch_negatives(targets, 31, 10)
        assert not dropped.any() and len(candidates.unique()) == 10
        counts[candidates] += 1
    allowed = torch.ones(31, dtype=torch.bool)
    allowed[0], allowed[targets] = False, False
    assert counts[~allowed].sum() == 0
    assert torch.allclose(counts[allowed] / 3000, torch.full((int(allowed.sum()),), 10 / 22), atol=0.05)


def test_log_uniform_negatives_mask_only_the_rows_own_target_as_comirec():
    torch.manual_seed(0)
    user, items, targets = torch.randn(5, 4), torch.randn(12, 4), torch.tensor([1, 3, 3, 7, 11])
    full = F.cross_entropy(user @ items[1:].T, targets - 1).item()  # every item drawn: no correction, no sampling
    assert sampled_softmax_loss(user, items, targets, 11, "log_uniform").item() == pytest.approx(full, abs=1e-6)
    torch.manual_seed(1)
    sampled = sampled_softmax_loss(user, items, targets, 6, "log_uniform")
    torch.manual_seed(1)
    candidates, log_q = log_uniform_negatives(12, 6, torch.device("cpu"))
    expected = _softmax_by_hand(user, items, targets,
                                lambda b: [c for c in candidates.tolist() if c != targets[b]], log_q)
    assert sampled.item() == pytest.approx(expected, abs=1e-5)
    assert torch.isin(candidates, targets).any()  # some row's negatives hold another row's target


def _model(**weights):
    config = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
              "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_", "MAX_ITEM_LIST_LENGTH": 4,
              "device": "cpu", "embedding_size": 8, "n_interests": 3, "attn_size": 16, "loss_type": "SSM",
              "n_negatives": 5000, "neg_distribution": "uniform", "t_cont": 0.02, "thre": -1,
              **{f"{k}_lambda": weights.get(k, 0.1) for k in ("att", "ct", "cs")}}
    torch.manual_seed(0)
    return Re4(config, SimpleNamespace(num=lambda field: 20))


def test_a_zero_weight_removes_its_term_and_its_parameters():
    batch = {"item_id_list": torch.tensor([[3, 4, 5, 0], [7, 8, 0, 0]]), "item_length": torch.tensor([3, 2]),
             "item_id": torch.tensor([9, 2])}
    full = _model()
    assert len(full.calculate_loss(batch)) == 4
    no_cs = _model(cs=0)
    assert no_cs.decoder is None and len(no_cs.calculate_loss(batch)) == 3
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in no_cs.parameters()) == \
        sum(p.numel() for p in full.decoder.parameters())
    base_only = _model(att=0, ct=0, cs=0)
    base_only.load_state_dict(full.state_dict(), strict=False)  # same extractor, no decoder
    loss = base_only.calculate_loss(batch)
    assert torch.is_tensor(loss) and torch.equal(loss, full.calculate_loss(batch)[0])  # all negatives: no sampling


def test_re4_and_comirec_ssm_through_run_recbole(tiny):
    re4 = run_recbole(model="Re4", dataset="tiny", config_dict={**tiny, "n_negatives": 10})
    comirec = run_recbole(model="ComiRec", dataset="tiny",
                          config_dict={**tiny, "loss_type": "SSM", "n_negatives": 10, "train_neg_sample_args": None})
    for result in (re4, comirec):
        assert 0.0 <= result["test_result"]["ndcg@10"] <= result["test_result"]["hit@10"] <= 1.0


def test_re4_loss_falls(tiny):
    config = build_config("Re4", "tiny", config_dict={**tiny, "n_negatives": 10, "learning_rate": 0.01})
    net, train, _, _ = _build(config)
    trainer = resolve_trainer(config)(config, net)
    losses = [sum(trainer._train_epoch(train, epoch)) for epoch in range(4)]
    assert losses[-1] < losses[0]
