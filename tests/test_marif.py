"""MARIF: the up-down sampler on hand-made pools, the history tower against its formula, no leakage, repeatable
evaluation, the CTR data rules, and runs through RecBole's run_recbole."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from recbole.quick_start import run_recbole
from recbole.utils import init_seed

from recbole_ext.model.context_aware.history import UpDownSampler
from recbole_ext.model.context_aware.marif import HistoryTower
from recbole_ext.quick_start import _build, build_config
from recbole_ext.trainer.base import resolve_trainer

SMALL = {"embedding_size": 8, "hidden_size": 16, "profile_embedding_size": 4, "history_len": 6,
         "train_batch_size": 128}

# entity 0: level 0 -> partners 1, 2; level 1 -> 3; level 2 -> 4..10 (rows in this order: level 1 appears last);
# entity 1: level 0 -> 1; level 1 -> 2, 3; entity 2: one interaction; entity 3: none (cold)
ROWS = [(0, 1, 0), (0, 2, 0), *[(0, p, 2) for p in range(4, 11)], (0, 3, 1), (1, 1, 0), (1, 2, 1), (1, 3, 1),
        (2, 5, 2)]


def sampler(size: int = 5, remainder: str = "last") -> UpDownSampler:
    e, p, lv = (torch.tensor(c) for c in zip(*ROWS))
    return UpDownSampler(e, p, lv, n_entities=4, n_partners=11, n_levels=3, size=size, remainder=remainder)


def pool_of(entity: int) -> set:
    return {(p, lv + 1) for e, p, lv in ROWS if e == entity}


def test_quotas_follow_the_levels_and_the_remainder_rule():
    # entity 0, N 5, counts 2/1/7 of 10: floors 1, 0, 3; the remainder (1) goes to the level seen last (1) or the
    # largest (2); N 4: floors 0, 0, 2, remainder 2
    for size, remainder, expected in ((5, "last", [1, 1, 3]), (5, "largest", [1, 0, 4]), (4, "last", [0, 2, 2])):
        s = sampler(size, remainder)
        partners, feedback, mask = s(torch.zeros(50, dtype=torch.long), None, torch.Generator().manual_seed(0))
        assert mask.all() and partners.shape == (50, size)
        for level, quota in enumerate(expected):
            assert ((feedback == level + 1).sum(1) == quota).all()
        assert {(int(p), int(f)) for p, f in zip(partners.flatten(), feedback.flatten())} <= pool_of(0)
    # over many rows every partner of a level is drawn (with replacement, uniformly)
    partners, feedback, _ = sampler(5)(torch.zeros(2000, dtype=torch.long), None, torch.Generator().manual_seed(1))
    drawn = torch.bincount(partners[feedback == 3], minlength=11)[4:11].float()
    assert drawn.min() > 0.7 * drawn.mean()


def test_own_interaction_is_left_out_and_cold_entities_are_masked():
    s, g = sampler(4), torch.Generator().manual_seed(0)
    entities, own = torch.tensor([1] * 200), torch.tensor([2] * 200)
    kept_in, _, _ = s(entities, None, g)
    left_out, feedback, _ = s(entities, own, g)
    assert (kept_in == 2).any() and not (left_out == 2).any()
    assert set(left_out[feedback == 2].tolist()) == {3}  # level 1 without partner 2
    # entity 2's only interaction is the row's own: cold, like entity 3
    partners, feedback, mask = s(torch.tensor([2, 3, 0]), torch.tensor([5, 1, 99]), g)
    assert not mask[:2].any() and (partners[:2] == 0).all() and (feedback[:2] == 0).all() and mask[2].all()


@pytest.mark.parametrize("n_partners", [5, 5000])  # the all-combinations table path, the per-slot path
def test_history_tower_is_the_masked_mean_of_its_formula(n_partners):
    torch.manual_seed(0)
    tower = HistoryTower(n_partners, 3, 4, 6)
    partners, feedback = torch.randint(0, 5, (3, 7)), torch.randint(1, 4, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:], mask[2] = False, False
    got = tower(partners, feedback, mask)
    x = torch.relu(tower.project(torch.cat([tower.feedback_embedding(feedback), tower.partner_embedding(partners)], -1)))
    assert torch.allclose(got[0], x[0].mean(0), atol=1e-6) and torch.allclose(got[1], x[1, :4].mean(0), atol=1e-6)
    assert (got[2] == 0).all()
    got.sum().backward()
    assert tower.partner_embedding.weight.grad[partners[0]].abs().sum() > 0


def marif(ratings, **extra):
    config = build_config("MARIF", "rated", config_dict={**ratings, **SMALL, **extra})
    init_seed(config["seed"], True)
    return config, *_build(config)


def test_pools_hold_training_rows_only_and_the_rating_is_no_input(ratings):
    config, net, train, valid, test = marif(ratings)
    split = {name: d._dataset.inter_feat for name, d in (("train", train), ("valid", valid), ("test", test))}
    n_items = net.user_history.n_partners
    keys = {name: set((f["user_id"] * n_items + f["item_id"]).tolist()) for name, f in split.items()}
    assert set(net.user_history.pair_sorted.tolist()) == keys["train"]
    assert not keys["train"] & (keys["valid"] | keys["test"])
    assert "rating" in split["train"] and "rating" not in _build(build_config("FM", "rated", config_dict=ratings))[1] \
        ._dataset.inter_feat  # kept for MARIF's pools only; RecBole's models keep RecBole's behaviour
    batch = next(iter(test))[0]
    net.eval()
    before = net.predict(batch)
    batch.interaction["rating"] = 6 - batch["rating"]
    batch.interaction["label"] = 1 - batch["label"]
    net.eval()  # same histories again
    assert torch.equal(before, net.predict(batch))


def test_row_own_interaction_is_in_its_histories_only_in_the_reference_mode(ratings):
    """Through the model's own training pass (the samplers' outputs caught by hooks): by default no training row
    ever finds its own (user, item) interaction in its user or item history; ``exclude_own_interaction: False``
    (the reference's mode) samples it in."""
    for extra, exclude in (({}, True), ({"exclude_own_interaction": False}, False)):
        config, net, train, _, _ = marif(ratings, **extra)
        assert config["exclude_own_interaction"] is exclude
        drawn = {}
        for name in ("user_history", "item_history"):
            getattr(net, name).register_forward_hook(lambda module, args, out, name=name: drawn.update({name: out}))
        net.train()
        own = 0
        for _ in range(3):  # epochs: fresh histories every pass
            for batch in train:
                with torch.no_grad():
                    net.calculate_loss(batch)
                users, items = batch["user_id"], batch["item_id"]
                for name, partner in (("user_history", items), ("item_history", users)):
                    partners, _, mask = drawn[name]
                    own += int(((partners == partner[:, None]) & mask).sum())
        assert (own > 0) is not exclude, (extra, own)


def test_evaluation_histories_repeat_for_a_seed_and_change_with_it(ratings):
    _, net, _, valid, _ = marif(ratings)
    batch = next(iter(valid))[0]
    net.eval()
    first = net.predict(batch)
    net.train()
    net.forward(batch)  # training draws in between do not move the evaluation stream
    net.eval()
    assert torch.equal(first, net.predict(batch))
    net.seed += 1
    net.eval()
    assert not torch.equal(first, net.predict(batch))


def test_gradients_reach_every_table_and_full_sort_matches_predict(ratings):
    _, net, train, _, _ = marif(ratings)
    net.train()
    net.calculate_loss(next(iter(train))).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert [len(t.weight) for t in net.user_profile.tables] == [3, 4, 2, 2]  # gender, age, occupation, zip (+pad)
    # with the histories fixed, scoring all items at once equals scoring each (user, item) row
    item_width = net.hidden.in_features - net.user_width
    net._sides = lambda users, items, own: (users.float()[:, None] * torch.linspace(-1, 1, net.user_width),
                                            items.float()[:, None] * torch.linspace(1, -1, item_width))
    net.eval()
    users = torch.tensor([1, 5])
    full = net.full_sort_predict({"user_id": users}).view(2, -1)
    n_items = full.shape[1]
    rows = {"user_id": users.repeat_interleave(n_items), "item_id": torch.arange(n_items).repeat(2)}
    assert torch.allclose(full.flatten(), net.predict(rows), atol=1e-6)


def test_eval_rows_of_unseen_items_are_dropped(ratings, tmp_path):
    folder = tmp_path / "data" / "rated"
    inter = pd.read_csv(folder / "rated.inter", sep="\t")
    extra = pd.DataFrame({"user_id:token": [f"u{u}" for u in range(40)], "item_id:token": [f"new{u}" for u in range(40)],
                          "rating:float": 5.0, "timestamp:float": 0.0})
    pd.concat([inter, extra]).to_csv(folder / "rated.inter", sep="\t", index=False)
    items = pd.read_csv(folder / "rated.item", sep="\t")  # RecBole drops rows of items its .item file lacks
    pd.concat([items, pd.DataFrame({"item_id:token": extra["item_id:token"], "genre:token_seq": "g0",
                                    "release_year:token": 1990})]).to_csv(folder / "rated.item", sep="\t", index=False)
    for seen_only, expect_unseen in (([], True), (["item_id"], False)):
        _, _, train, valid, test = marif(ratings, eval_seen_only=seen_only)
        train_items = set(train._dataset.inter_feat["item_id"].tolist())
        unseen = [set(d._dataset.inter_feat["item_id"].tolist()) - train_items for d in (valid, test)]
        assert bool(unseen[0] | unseen[1]) is expect_unseen


def test_marif_learns_through_run_recbole_and_reloads_to_the_same_scores(ratings):
    result = run_recbole(model="MARIF", dataset="rated",
                         config_dict={**ratings, **SMALL, "epochs": 6, "learning_rate": 0.01, "dropout_prob": 0.0})
    assert result["test_result"]["auc"] > 0.75  # parity of user + item: only the histories can tell it
    config, net, _, _, test = marif(ratings)
    trainer = resolve_trainer(config)(config, net)
    saved = sorted(Path(ratings["checkpoint_dir"]).glob("MARIF-*.pth"))
    again = trainer.evaluate(test, load_best_model=True, model_file=str(saved[-1]))
    assert again["auc"] == pytest.approx(result["test_result"]["auc"], abs=1e-4)
