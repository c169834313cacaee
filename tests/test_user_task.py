"""The user-level task for models without a head of their own (SASRec, ComiRec): the head on their user vector,
trained end to end through recbole_ext's path, and refused where RecBole would train the wrong objective."""

import pytest
import torch
from recbole.quick_start import run_recbole
from recbole.utils import get_model, init_seed

from recbole_ext.data import mfn as mfn_data
from recbole_ext.model.user_task import UserClassifier, user_vector
from recbole_ext.quick_start import _build, build_config, load, run
from recbole_ext.trainer.base import resolve_trainer

TINY = "mfn-synthetic-tiny"
SMALL = {"show_progress": False, "state": "ERROR", "train_batch_size": 64, "eval_batch_size": 256, "seed": 3,
         "task": "user_classification", "label": "gender", "MAX_ITEM_LIST_LENGTH": 20,
         "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}  # the label's user column is added by the task


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    mfn_data.generate(root, TINY, seed=5)
    return {**SMALL, "data_path": str(root)}


@pytest.mark.parametrize("model, width", [("SASRec", "hidden_size"), ("ComiRec", "embedding_size")])
def test_a_head_on_the_user_vector_learns_the_label(synthetic, tmp_path, model, width):
    config = build_config(model, TINY, config_dict={**synthetic, "checkpoint_dir": str(tmp_path), "epochs": 6})
    net, train, valid, _ = _build(config)
    assert isinstance(net, UserClassifier) and net.user_head.in_features == config[width]
    assert net.user_head.out_features == 1  # gender: two values, one logit
    trainer = resolve_trainer(config)(config, net)
    trainer.fit(train, valid, saved=False, show_progress=False)
    losses = list(trainer.train_loss_dict.values())
    assert losses[-1] < losses[0]
    batch = next(iter(valid))[0]
    probabilities = net.predict(batch)
    assert probabilities.shape == (len(batch),) and probabilities.std() > 1e-3  # the users differ
    if model == "ComiRec":  # a multi-interest model: the head reads the mean of its interests
        assert torch.equal(user_vector(net.encoder, batch), net.encoder.interest_vectors(batch).mean(1))


def test_run_reports_classification_and_the_checkpoint_reloads_to_the_same_probabilities(synthetic, tmp_path):
    result = run("SASRec", TINY, config_dict={**synthetic, "checkpoint_dir": str(tmp_path), "epochs": 2})
    assert {"classauc", "accuracy", "f1"} <= set(result["test_result"])
    config, net, _, _, _, test = load(result["checkpoint"])
    batch = next(iter(test))[0]
    net.eval()
    reloaded = net.predict(batch)
    config2 = build_config("SASRec", TINY, config_dict={**synthetic, "checkpoint_dir": str(tmp_path)})
    fresh, *_ = _build(config2)
    assert isinstance(net, UserClassifier) and not torch.allclose(fresh.eval().predict(batch), reloaded)
    state = torch.load(result["checkpoint"], weights_only=False)["state_dict"]
    assert any(key.startswith("user_head.") for key in state) and torch.equal(state["user_head.weight"],
                                                                              net.user_head.weight)


def test_recbole_trainer_and_a_bare_model_are_refused(synthetic, tmp_path):
    with pytest.raises(RuntimeError, match="user rows"):
        run_recbole(model="SASRec", dataset=TINY, config_dict={**synthetic, "checkpoint_dir": str(tmp_path)})
    config = build_config("SASRec", TINY, config_dict={**synthetic, "checkpoint_dir": str(tmp_path)})
    _, train, valid, _ = _build(config)
    init_seed(3, True)
    bare = get_model("SASRec")(config, train._dataset)
    with pytest.raises(ValueError, match="without a user head"):
        resolve_trainer(config)(config, bare).fit(train, valid, saved=False)


def test_a_label_that_is_not_a_user_field_is_one_line(synthetic, tmp_path):
    config = build_config("SASRec", TINY, config_dict={**synthetic, "label": "genre"})
    with pytest.raises(ValueError, match=r"label: 'genre' is not a user field .* pass --label=FIELD"):
        _build(config)
