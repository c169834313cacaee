"""Resume: a run killed after an epoch and resumed ends where the uninterrupted run ends; checkpoints are atomic."""

import os

import pytest
import torch

from recbole_ext import run
from recbole_ext.quick_start import resume_state
from conftest import MODELS, base_config
from recbole_ext.checkpoints import RESUME_SUFFIX
from recbole_ext.trainer.run_files import atomic_save


class Killed(Exception):
    pass


def interrupted(model: str, dataset: str, config: dict, kill_at: int) -> str:
    """Run until the callback of (global) epoch ``kill_at`` raises; -> the run's checkpoint path."""
    files = []

    def kill(epoch: int, score: float) -> None:
        if epoch == kill_at:
            raise Killed

    with pytest.raises(Killed):
        run(model, dataset, config_dict=config, callback_fn=kill, on_trainer=lambda t: files.append(t.saved_model_file))
    return files[0]


@pytest.mark.parametrize("model, extra, kill_at", [
    ("ComiRec", {"epochs": 4}, 1),
    ("TiMiRec", {"epochs": 3, "stage": "both"}, 4),  # killed in the finetune stage's 2nd epoch
])
def test_sequential_run_killed_and_resumed_equals_the_uninterrupted_run(tiny, model, extra, kill_at):
    config = {**tiny, "protocol": "rechorus", **extra}
    whole = run(model, "tiny", config_dict=config)
    checkpoint = interrupted(model, "tiny", config, kill_at)
    resumed = run(model, "tiny", resume=checkpoint)
    assert resumed["valid_scores"] == whole["valid_scores"]
    assert len(set(whole["valid_scores"])) > 1  # the epochs after the kill really trained
    assert resumed["test_result"] == whole["test_result"]
    assert resumed["checkpoint"] == checkpoint


def test_marif_resume_restores_its_history_generator(ratings):
    config = {**ratings, "epochs": 3, "embedding_size": 8, "hidden_size": 16, "history_len": 4}
    whole = run("MARIF", "rated", config_dict=config)
    resumed = run("MARIF", "rated", resume=interrupted("MARIF", "rated", config, 0))
    assert resumed["valid_scores"] == whole["valid_scores"]
    assert resumed["test_result"] == whole["test_result"]


def test_resume_refuses_another_model_and_a_missing_state(tiny, tmp_path):
    checkpoint = run("ComiRec", "tiny", config_dict={**tiny, "protocol": "rechorus"})["checkpoint"]
    assert os.path.isfile(checkpoint[:-4] + RESUME_SUFFIX)
    assert resume_state(checkpoint[:-4] + RESUME_SUFFIX)[0] == checkpoint
    with pytest.raises(ValueError, match="is a run of model 'ComiRec', not 'Re4'"):
        run("Re4", "tiny", resume=checkpoint)
    with pytest.raises(FileNotFoundError, match="no resume state"):
        run("ComiRec", "tiny", resume=str(tmp_path / "nothing.pth"))


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "model.pth")
    atomic_save({"weights": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_save({"weights": torch.zeros(2), "bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=False)["weights"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model.pth"]  # no temporary file left behind



@pytest.mark.parametrize("model, dataset, extra", MODELS, ids=[m for m, _, _ in MODELS])
def test_two_cpu_runs_with_one_seed_give_identical_metrics(tiny, ratings, model, dataset, extra):
    base = base_config(model, dataset, tiny, ratings)
    config = {**base, **extra, "epochs": 2}
    first, second = (run(model, dataset, config_dict=config) for _ in range(2))
    assert first["valid_scores"] == second["valid_scores"] and first["test_result"] == second["test_result"]
