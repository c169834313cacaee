"""Each speed kernel of ``recbole_ext.model.kernels`` against the plain PyTorch definition it must equal, in float64,
forward and gradients, with a bound on the real error (two different kernels sum in different orders, so never bit
equality); each model with ``speed_kernels`` on and off as one function with one state_dict; and a model built with
``speed_kernels: False`` using no kernel and still training."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import BackwardCFunction

from recbole_ext.model import kernels
from recbole_ext.model.layers import MultiInterestExtractor, SelfAttentionLayer
from recbole_ext.model.sequential.comirec import ComiRec
from recbole_ext.model.sequential.mfn import MFN
from recbole_ext.model.sequential.re4 import Decoder, Re4, re_construct_loss
from recbole_ext.model.sequential.timirec import TiMiRec
from recbole_ext.quick_start import build_config

TOL = {"rtol": 1e-10, "atol": 1e-12}  # float64: rounding is ~1e-16 relative; a wrong formula is off by far more
N_ITEMS, B, L, MACRO_LEN = 20, 8, 6, 7  # B·L = 48 > N_ITEMS: Re4's extractor takes the per-item kernel
MODELS = {"ComiRec": ComiRec, "TiMiRec": TiMiRec, "Re4": Re4, "MFN": MFN}
SMALL = {"embedding_size": 8, "attn_size": 8, "n_interests": 3, "n_negatives": 50, "MAX_ITEM_LIST_LENGTH": L,
         "hidden_size": 8, "inner_size": 16, "n_heads": 2, "state": "ERROR"}


def grads(output: torch.Tensor, inputs: list[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    """Gradients of a random projection of ``output`` (every element gets its own weight)."""
    weight = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(seed))
    return list(torch.autograd.grad((output * weight).sum(), inputs))


def assert_same(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_table_is_nn_embedding():
    torch.manual_seed(0)
    ids = torch.tensor([[0, 2, 2, 6], [5, 0, 2, 1]])  # repeated ids and padding
    for padding_idx in (None, 0):
        plain = nn.Embedding(7, 3, padding_idx=padding_idx).double()
        table = kernels.Table(7, 3, padding_idx=padding_idx).double()
        table.load_state_dict(plain.state_dict())  # same parameter names: checkpoints load either way
        assert_same([table(ids)], [plain(ids)])
        ours, theirs = grads(table(ids), [table.weight]), grads(plain(ids), [plain.weight])
        assert_same(ours, theirs)
        assert ours[0][3].abs().sum() == 0 and ours[0][2].abs().sum() > 0
        assert (ours[0][0].abs().sum() == 0) == (padding_idx == 0)
    assert type(kernels.embedding(7, 3, speed_kernels=False)) is nn.Embedding
    with pytest.raises(ValueError, match="max_norm"):
        kernels.Table(7, 3, max_norm=1.0)


def test_fast_dropout_is_dropout_of_p_rounded_to_a_256th():
    """Given its mask, FastDropout is dropout's definition x·m/(1 - p̃), p̃ = round(256 p)/256; the mask drops p̃."""
    torch.manual_seed(0)
    x = torch.randn(200_000, dtype=torch.float64, requires_grad=True)  # no zero: a zero output is a dropped element
    drop = kernels.FastDropout(0.2)
    out = drop(x)
    keep = (out != 0).double()
    p = round(256 * 0.2) / 256  # 51/256 = 0.19921875
    assert_same([out], [x * keep / (1 - p)])
    assert_same(grads(out, [x]), grads(x * keep / (1 - p), [x]))
    assert abs(1 - keep.mean().item() - p) < 0.004  # 200,000 draws: the standard error is 0.0009
    assert torch.equal(drop.eval()(x), x) and torch.equal(kernels.FastDropout(0.0)(x), x)
    plain = kernels.dropout(0.2, speed_kernels=False)
    assert type(plain) is nn.Dropout and plain.p == 0.2


def test_transformer_layer_with_fast_dropout_is_the_stock_layer():
    """Only the three dropouts change (FastDropout of the same p, above); parameters, keys and, without the
    randomness of training, the outputs and gradients are the stock layer's."""
    torch.manual_seed(0)
    stock = nn.TransformerEncoderLayer(8, 2, 16, 0.2, "gelu", batch_first=True).double()
    fast = kernels.with_fast_dropout(nn.TransformerEncoderLayer(8, 2, 16, 0.2, "gelu", batch_first=True).double())
    fast.load_state_dict(stock.state_dict())
    assert [type(m) for m in (fast.dropout, fast.dropout1, fast.dropout2)] == [kernels.FastDropout] * 3
    assert [m.p for m in (fast.dropout, fast.dropout1, fast.dropout2)] == [0.2] * 3
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    stock.eval(), fast.eval()
    assert_same([fast(x)], [stock(x)])
    assert_same(grads(fast(x), [x, *fast.parameters()]), grads(stock(x), [x, *stock.parameters()]))


def test_packed_block_is_the_dense_block():
    torch.manual_seed(0)
    layer = SelfAttentionLayer(8).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    packed = kernels.packed_block(x, mask, layer.qkv, layer.attend, layer.finish)
    dense = layer.finish(layer.attend(layer.qkv(x), mask), x) * mask.unsqueeze(-1)
    assert_same([packed], [dense])
    assert packed[~mask].abs().max() == 0
    inputs = [x, *layer.parameters()]
    assert_same(grads(packed, inputs), grads(dense, inputs))


def test_per_row_is_the_map_of_the_gathered_rows():
    torch.manual_seed(0)
    fn = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    table = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[1, 2, 2, 0], [4, 4, 4, 3]])
    fast, plain = kernels.per_row(fn, table, ids), fn(F.embedding(ids, table))
    assert_same([fast], [plain])
    assert_same(grads(fast, [table, *fn.parameters()]), grads(plain, [table, *fn.parameters()]))


@pytest.mark.parametrize("options", [dict(add_pos=False, aggregate="raw", bias=False, value_proj=True),  # per row
                                     dict(add_pos=True, add_trm=True, aggregate="encoded")])  # packed attention
def test_extractor_with_and_without_kernels(options):
    torch.manual_seed(0)
    fast = MultiInterestExtractor(6, 4, 8, 3, 5, **options).double()
    plain = MultiInterestExtractor(6, 4, 8, 3, 5, **options, speed_kernels=False).double()
    plain.load_state_dict(fast.state_dict())
    seq, lengths = torch.tensor([[1, 2, 3, 0, 0], [5, 5, 4, 2, 1]]), torch.tensor([3, 5])
    ours, theirs = fast(seq, lengths, details=True), plain(seq, lengths, details=True)
    assert_same(list(ours), list(theirs))
    assert_same(grads(ours[0], list(fast.parameters())), grads(theirs[0], list(plain.parameters())))


def test_decoded_squared_error_is_the_autograd_definition():
    torch.manual_seed(0)
    b, k, length, d = 3, 2, 4, 5
    decoder = Decoder(d, length).double()
    z = torch.randn(b, k, d, dtype=torch.float64, requires_grad=True)
    items = torch.randn(b, length, d, dtype=torch.float64, requires_grad=True)
    valid = torch.arange(length).unsqueeze(0) < torch.tensor([[4], [2], [1]])
    positives = (torch.rand(b, k, length) < 0.5) & valid.unsqueeze(1)
    inputs = [z, items, *decoder.parameters()]
    fast = decoder.error(z, items, valid, positives)
    plain = re_construct_loss(decoder(z, valid), items, positives)
    assert fast.item() > 0
    assert_same([fast], [plain])
    assert_same(torch.autograd.grad(3 * fast, inputs), torch.autograd.grad(3 * plain, inputs))
    decoder.speed_kernels = False  # the plain path is the definition itself
    assert torch.equal(decoder.error(z, items, valid, positives), plain)


# --- whole models on a tiny synthetic batch --------------------------------------------------------------------------

def dataset() -> SimpleNamespace:
    """What the four models read from a dataset: counts, MFN's macro width and item categories (row 0: padding)."""
    counts = {"macro_app_seq": 15, "macro_cate_seq": 5, "item_cate": 4}
    return SimpleNamespace(num=lambda field: counts.get(field, N_ITEMS), field2seqlen={"macro_app_seq": MACRO_LEN},
                           item_feat={"item_cate": torch.arange(N_ITEMS) % 4})


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([6, 5, 4, 3, 2, 1, 6, 3])
    apps = torch.randint(1, 15, (B, MACRO_LEN), generator=g)
    return {"item_id_list": torch.randint(1, N_ITEMS, (B, L), generator=g) * (torch.arange(L) < lengths[:, None]),
            "item_length": lengths, "item_id": torch.randint(1, N_ITEMS, (B,), generator=g),
            "neg_item_id": torch.randint(1, N_ITEMS, (B,), generator=g), "macro_app_seq": apps,
            "macro_cate_seq": apps % 4 + 1, "macro_time_seq": torch.arange(1.0, MACRO_LEN + 1).expand(B, -1),
            "timestamp": torch.randint(2, MACRO_LEN + 2, (B,), generator=g).double()}


def build(name: str, **extra) -> nn.Module:
    config = build_config(name, "synthetic", config_dict={**SMALL, **extra})
    torch.manual_seed(0)
    return MODELS[name](config, dataset())


def total_loss(net: nn.Module, data: dict) -> torch.Tensor:
    loss = net.calculate_loss(data)
    return sum(loss) if isinstance(loss, tuple) else loss


def custom_functions(loss: torch.Tensor) -> set[str]:
    """The hand-written autograd Functions (Python ``torch.autograd.Function``) in the graph behind ``loss``."""
    seen, stack, found = set(), [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, BackwardCFunction):
            found.add(type(node).__name__)
        stack += [parent for parent, _ in node.next_functions]
    return found


@pytest.mark.parametrize("name", MODELS)
def test_kernels_on_and_off_are_one_model(name):
    """The same state_dict either way (a checkpoint loads under both), and in float64 the same loss, gradients and
    scores (dropout 0: the one kernel whose randomness differs is checked above)."""
    fast, plain = (build(name, speed_kernels=flag, hidden_dropout_prob=0.0, attn_dropout_prob=0.0).double()
                   for flag in (True, False))
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(fast.state_dict())
    data = batch()
    losses = []
    for net in (fast, plain):
        torch.manual_seed(1)  # TiMiRec's MLP dropout draws the same masks for both
        losses.append(total_loss(net, data))
    assert_same(losses[:1], losses[1:])
    assert_same(torch.autograd.grad(losses[0], list(fast.parameters())),
                torch.autograd.grad(losses[1], list(plain.parameters())))
    fast.eval(), plain.eval()
    assert_same([fast.full_sort_predict(data)], [plain.full_sort_predict(data)])


@pytest.mark.parametrize("name", MODELS)
def test_without_speed_kernels_a_model_uses_none_and_trains(name, monkeypatch):
    default = build(name)  # the key's default (overall.yaml) is on: the same walk finds the kernels there
    assert any(isinstance(m, kernels.Table) for m in default.modules())
    assert "_GatherRowsBackward" in custom_functions(total_loss(default, batch()))

    def forbidden(*args, **kwargs):
        raise AssertionError("a speed kernel ran with speed_kernels: False")

    for kernel in ("packed_block", "per_row"):
        monkeypatch.setattr(kernels, kernel, forbidden)
    net = build(name, speed_kernels=False)
    assert not [m for m in net.modules() if isinstance(m, (kernels.Table, kernels.FastDropout))]
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = total_loss(net, batch())
        assert not custom_functions(loss)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_a_config_without_the_key_uses_the_kernels():
    """Configs saved before ``speed_kernels`` existed (or a plain dict, as some tests pass) load with the kernels."""
    assert kernels.use_speed_kernels({}) and kernels.use_speed_kernels({"speed_kernels": None})
    assert not kernels.use_speed_kernels({"speed_kernels": False})
