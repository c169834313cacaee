"""The user-level task for models without a head of their own (SASRec, ComiRec): the head on their user vector,
trained end to end through recbole_ext's path, and refused where RecBole would train the wrong objective."""


import pytest
import torch
from recbole.quick_start import run_recbole
from recbole.utils import get_model, init_seed
from sklearn.metrics import roc_auc_score

from conftest import keep_saved_model
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
    """The checkpoint reloads to the model as trained (a copy of the in-memory model taken whenever the trainer
    saved, so the copy is the best epoch's), and the run's test metrics are those of its probabilities."""
    trained = {}
    result = run("SASRec", TINY, config_dict={**synthetic, "checkpoint_dir": str(tmp_path), "epochs": 2},
                 on_trainer=keep_saved_model(trained))
    config, net, _, _, _, test = load(result["checkpoint"])
    assert isinstance(net, UserClassifier) and "model" in trained
    net.eval()
    probabilities, labels = [], []
    with torch.no_grad():
        for batch, *_ in test:
            reloaded = net.predict(batch)
            assert torch.allclose(reloaded, trained["model"].predict(batch), rtol=0, atol=1e-6)  # same users
            probabilities.append(reloaded)
            labels.append(batch["gender"])
        config2 = build_config("SASRec", TINY, config_dict={**synthetic, "checkpoint_dir": str(tmp_path)})
        fresh, *_ = _build(config2)
        assert not torch.allclose(fresh.eval().predict(batch), reloaded, atol=1e-3)  # the weights were loaded
    p, y = torch.cat(probabilities).numpy(), torch.cat(labels).numpy()
    assert len(p) == 20  # one row per test user (200 users, split 8:1:1)
    test_result = result["test_result"]
    assert test_result["accuracy"] == pytest.approx(((p >= 0.5) == (y == 1)).mean(), abs=1e-4)
    assert test_result["classauc"] == pytest.approx(roc_auc_score(y == 1, p), abs=1e-4)


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
