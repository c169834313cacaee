"""Shared blocks on hand-checkable tensors."""

import torch

from recbole_ext.model.layers import (
    MultiInterestExtractor, SelfAttentionLayer, bpr_loss, closest_interest, max_interest_scores, reversed_positions,
)


def test_reversed_positions_count_back_from_newest():
    seq = torch.tensor([[5, 6, 7, 0], [9, 0, 0, 0]])
    assert reversed_positions(seq, torch.tensor([3, 1])).tolist() == [[3, 2, 1, 0], [1, 0, 0, 0]]


def test_extractor_takes_the_history_looked_up_by_the_caller():
    """ComiRec/TiMiRec look the history up with its target and negative (one dense gradient of the table)."""
    torch.manual_seed(0)
    extractor = MultiInterestExtractor(10, 4, 3, 2, 5, add_pos=True, add_trm=True)
    seq, lengths = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]]), torch.tensor([3, 2])
    rows = extractor.item_embedding(torch.cat([seq, torch.tensor([[6], [7]])], 1))
    assert torch.allclose(extractor(seq, lengths), extractor(seq, lengths, items=rows[:, :-1]))


def test_closest_interest_picks_largest_dot_product():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, 1.0]]])  # [B=2, K=2, d=2]
    target = torch.tensor([[1.0, 1.0], [0.0, 5.0]])
    # row 0: dots 1 vs 2 -> interest 1; row 1: dots 0 vs 5 -> interest 1
    assert closest_interest(interests, target).tolist() == [[0.0, 2.0], [0.0, 1.0]]


def test_max_interest_scores_all_items_and_candidates():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [1, 2, 2]
    items = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [-1.0, -1.0]])  # [3, 2]
    assert max_interest_scores(interests, items).tolist() == [[2.0, 0.5, -1.0]]
    assert max_interest_scores(interests, items.unsqueeze(0)).tolist() == [[2.0, 0.5, -1.0]]


def test_bpr_loss_value():
    loss = bpr_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    expected = -(torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(torch.tensor(0.5))) / 2
    assert torch.isclose(loss, expected)


def test_extractor_shapes_and_padding_is_ignored():
    torch.manual_seed(0)
    for aggregate, add_trm in (("raw", False), ("encoded", True)):
        net = MultiInterestExtractor(n_items=10, d=6, attn_size=4, n_interests=3, max_len=5,
                                     add_pos=True, add_trm=add_trm, aggregate=aggregate)
        seq, lengths = torch.tensor([[1, 2, 3, 0, 0], [4, 0, 0, 0, 0]]), torch.tensor([3, 1])
        out = net(seq, lengths)
        assert out.shape == (2, 3, 6)
        with torch.no_grad():
            net.item_embedding.weight[0] += 100.0  # padding row must not leak into the interests
        assert torch.allclose(net(seq, lengths), out, atol=1e-5)
        # one valid item: every interest is that item's vector (attention has a single position)
        if aggregate == "raw":
            assert torch.allclose(out[1], net.item_embedding.weight[4].expand(3, 6), atol=1e-6)


def test_self_attention_layer_masks_padding_keys():
    torch.manual_seed(0)
    layer = SelfAttentionLayer(4)
    x = torch.randn(1, 3, 4)
    mask = torch.tensor([[True, True, False]])
    out = layer(x, mask)
    x2 = x.clone()
    x2[0, 2] = 50.0
    assert torch.allclose(layer(x2, mask)[0, :2], out[0, :2], atol=1e-5)
