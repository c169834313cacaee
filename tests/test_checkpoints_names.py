"""Checkpoint and resume file names are spelled once (recbole_ext.checkpoints) and every user agrees with them: the
trainers write, resume reads, and the sweep and Ray Train keep, the same files, the IFM family's ``-fm`` stage
included (the sweep used to know ``-pretrain`` only)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from recbole_ext import run
from recbole_ext.checkpoints import (BEST_FILE, FIRST_STAGES, companions, main_checkpoint, resume_file,
                                     run_checkpoints, stage_file)
from recbole_ext.distributed import _stage
from recbole_ext.quick_start import resume_state
from recbole_ext.trainer.ifm import IFMTrainer
from recbole_ext.trainer.timirec import TiMiRecTrainer
from recbole_ext.tune import _best_checkpoint

MAIN = "saved/ComiRec-Dec-07-2026_23-22-25-a1b2c3.pth"


def test_every_name_derives_from_the_run_checkpoint():
    stem = MAIN[:-len(".pth")]
    assert stage_file(MAIN, "pretrain") == f"{stem}-pretrain.pth" and stage_file(MAIN, "fm") == f"{stem}-fm.pth"
    assert resume_file(MAIN) == f"{stem}-resume.pth"
    assert resume_file(stage_file(MAIN, "fm")) == f"{stem}-fm-resume.pth"
    assert run_checkpoints(MAIN) == [MAIN, f"{stem}-pretrain.pth", f"{stem}-fm.pth"]
    assert sorted(companions(MAIN)) == sorted(f"{stem}{suffix}" for suffix in (
        "-pretrain.pth", "-fm.pth", "-resume.pth", "-pretrain-resume.pth", "-fm-resume.pth"))
    with pytest.raises(ValueError, match="not one of"):  # a new stage must be declared, so every user knows it
        stage_file(MAIN, "warmup")


@pytest.mark.parametrize("path", [MAIN, *companions(MAIN)])
def test_every_file_of_a_run_leads_back_to_its_checkpoint(path):
    assert main_checkpoint(path) == MAIN


def test_each_two_stage_trainer_writes_a_declared_stage_file():
    assert {TiMiRecTrainer.FIRST_STAGE, IFMTrainer.FIRST_STAGE} == set(FIRST_STAGES)


def test_resume_finds_the_state_of_a_run_killed_in_its_fm_stage(tmp_path):
    checkpoint = str(tmp_path / "IFM-Dec-07-2026_23-22-25-a1b2c3.pth")
    torch.save({"config": {"model": "IFM"}, "epoch": 0}, resume_file(stage_file(checkpoint, "fm")))
    for given in (checkpoint, stage_file(checkpoint, "fm"), resume_file(stage_file(checkpoint, "fm"))):
        found, state = resume_state(given)
        assert found == checkpoint and state["config"]["model"] == "IFM"


@pytest.mark.parametrize("stage", FIRST_STAGES)
def test_the_sweep_and_ray_train_keep_a_first_stage_checkpoint(tmp_path, stage):
    """A trial or worker stopped in its first stage has only that stage's checkpoint: it goes to storage and is the
    one the sweep tests."""
    saved, staged = tmp_path / "saved", tmp_path / "staged"
    saved.mkdir()
    staged.mkdir()
    first = Path(stage_file(str(saved / BEST_FILE), stage))
    first.write_bytes(b"first stage")
    _stage(SimpleNamespace(saved_model_file=str(saved / BEST_FILE)), str(staged))
    assert [p.name for p in staged.iterdir()] == [first.name]
    assert _best_checkpoint(staged) == staged / first.name
    (staged / BEST_FILE).write_bytes(b"final model")
    assert _best_checkpoint(staged) == staged / BEST_FILE  # the final model, once it exists


def _written(folder: Path) -> set[str]:
    return {str(p) for p in folder.iterdir()}


def test_a_timirec_run_writes_exactly_its_companions(tiny, tmp_path):
    result = run("TiMiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", "epochs": 1, "stage": "both"})
    main = result["checkpoint"]
    assert _written(tmp_path / "saved") == {main, stage_file(main, "pretrain"), resume_file(main),
                                            resume_file(stage_file(main, "pretrain"))}
    assert _written(tmp_path / "saved") <= {main, *companions(main)}


def test_an_ifm_run_writes_exactly_its_companions(ratings, tmp_path):
    result = run("IFM", "rated", config_dict={**ratings, "loss_type": "BCE", "epochs": 1, "fm_epochs": 1})
    main = result["checkpoint"]
    assert _written(tmp_path / "saved") == {main, stage_file(main, "fm"), resume_file(main),
                                            resume_file(stage_file(main, "fm"))}
    assert _written(tmp_path / "saved") <= {main, *companions(main)}
