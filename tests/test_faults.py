"""Faults a user meets: runs started together, data changed under a checkpoint, another working folder, kills.

Child processes come from a fork server that has imported recbole_ext once, so each starts in about a second (a
fresh interpreter would import torch and RecBole again) and none inherits the test process's threads."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from recbole_ext import cli, recommend, run
from recbole_ext.checkpoints import FINGERPRINT_KEY, DatasetChanged, changes, unique_checkpoint
from recbole_ext.files import remove_leftovers, replace_file
from recbole_ext.quick_start import evaluate_checkpoint
from recbole_ext.checkpoints import RESUME_SUFFIX, main_checkpoint, resume_file

SAME_SECOND = "Dec-07-2026_23-22-25"


def _server() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    # torch._inductor: torch.use_deterministic_algorithms imports it, 4 s of a fresh child's start
    ctx.set_forkserver_preload(["recbole_ext.quick_start", "torch._inductor"])
    return ctx


def _child_run(config: dict, out: str | None, resume: str | None = None, clock: str | None = None) -> None:
    """A training run in a child process; ``out``: where to write its checkpoint path and final weights."""
    import recbole.trainer.trainer

    torch.set_num_threads(1)
    sys.argv = sys.argv[:1]  # RecBole's Config parses sys.argv
    if clock:  # the second RecBole names checkpoints after
        recbole.trainer.trainer.get_local_time = lambda: clock
    trainers = []
    result = run("ComiRec", "tiny", config_dict=config, resume=resume, test=False, on_trainer=trainers.append)
    if out:  # epochs=1: the final model is the saved best one
        torch.save(trainers[0].model.state_dict(), f"{out}.weights")
        Path(f"{out}.json").write_text(json.dumps({"checkpoint": result["checkpoint"]}))


def _config(tiny: dict, **extra) -> dict:
    return {**tiny, "protocol": "rechorus", **extra}


def _bytes(paths) -> dict[str, bytes]:
    return {str(p): Path(p).read_bytes() for p in paths}


def _edit_inter(tiny: dict, edit) -> None:
    """Rewrite tiny.inter through ``edit(frame) -> frame`` in the format it was written in."""
    path = Path(tiny["data_path"]) / "tiny" / "tiny.inter"
    frame = edit(pd.read_csv(path, sep="\t", dtype=str))
    frame.to_csv(path, sep="\t", index=False)


def _reverse_timestamps(frame: pd.DataFrame) -> pd.DataFrame:
    """Same users, items and timestamp values; each user's history in the opposite order."""
    frame["timestamp:float"] = frame.groupby("user_id:token")["timestamp:float"].transform(lambda s: s.values[::-1])
    return frame


def _interrupted(config: dict, kill_at: int = 0) -> str:
    """A run stopped after (global) epoch ``kill_at``; -> its checkpoint."""
    files = []

    def kill(epoch: int, score: float) -> None:
        if epoch == kill_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("ComiRec", "tiny", config_dict=config, callback_fn=kill, on_trainer=lambda t: files.append(t.saved_model_file))
    return files[0]


def _error_line(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    return errors[0]


# --- checkpoints that belong to one run --------------------------------------------------------------------------
def test_two_runs_started_in_one_second_keep_their_own_checkpoints(tiny, tmp_path):
    ctx = _server()
    children = [ctx.Process(target=_child_run, args=(_config(tiny, seed=seed), str(tmp_path / f"run{seed}")),
                            kwargs={"clock": SAME_SECOND}) for seed in (1, 2)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    paths = [json.loads((tmp_path / f"run{seed}.json").read_text())["checkpoint"] for seed in (1, 2)]
    assert paths[0] != paths[1] and all(SAME_SECOND in p for p in paths)
    for seed, path in zip((1, 2), paths):
        own = torch.load(tmp_path / f"run{seed}.weights")
        saved = torch.load(path, weights_only=False)
        assert saved["config"]["seed"] == seed
        assert all(torch.equal(own[k], saved["state_dict"][k]) for k in own)


def test_a_taken_run_id_is_drawn_again(tmp_path):
    (tmp_path / f"ComiRec-{SAME_SECOND}-aaaaaa-resume.pth").write_bytes(b"another run's")
    ids = iter(["aaaaaa", "bbbbbb"])
    path = unique_checkpoint(str(tmp_path / f"ComiRec-{SAME_SECOND}.pth"), new_id=lambda: next(ids))
    assert path == str(tmp_path / f"ComiRec-{SAME_SECOND}-bbbbbb.pth")


def test_a_run_never_replaces_a_file_it_did_not_write(tiny, tmp_path):
    foreign = b"written by another run"

    def squat(trainer) -> None:  # another run takes the name after this one chose it
        Path(trainer.saved_model_file).write_bytes(foreign)
        squat.path = trainer.saved_model_file

    with pytest.raises(FileExistsError, match="written by another run"):
        run("ComiRec", "tiny", config_dict=_config(tiny), on_trainer=squat)
    assert Path(squat.path).read_bytes() == foreign
    with pytest.raises(FileExistsError):
        replace_file(lambda tmp: tmp.write_bytes(b"new"), squat.path, exclusive=True)
    assert Path(squat.path).read_bytes() == foreign and not list(tmp_path.glob("saved/.*tmp-*"))


# --- checkpoints that describe their data ------------------------------------------------------------------------
def test_resume_refuses_reversed_timestamps_and_touches_nothing(tiny, capsys):
    checkpoint = _interrupted(_config(tiny, epochs=3))
    files = [checkpoint, resume_file(checkpoint)]
    before = _bytes(files)
    _edit_inter(tiny, _reverse_timestamps)
    assert cli.main([f"--resume={checkpoint}"]) == 2
    line = _error_line(capsys)
    assert "dataset 'tiny' changed since" in line and "tiny.inter: the content differs (same 301 lines" in line
    assert _bytes(files) == before
    assert torch.load(checkpoint, weights_only=False)[FINGERPRINT_KEY]["id_maps"]["item"][1:4]  # the id maps too


def test_resume_after_an_item_is_added_says_how_many(tiny):
    checkpoint = _interrupted(_config(tiny, epochs=3))
    before = _bytes([checkpoint, resume_file(checkpoint)])
    _edit_inter(tiny, lambda f: pd.concat([f, pd.DataFrame([["u1", "i999", "999999"]], columns=f.columns)]))
    with pytest.raises(DatasetChanged, match=r"changed since .* 40 -> 41 items; tiny.inter: 301 -> 302 lines"):
        run(None, None, resume=checkpoint)
    assert _bytes(before) == before


def test_recommend_export_and_evaluate_refuse_a_changed_dataset(tiny, tmp_path, capsys):
    checkpoint = run("ComiRec", "tiny", config_dict=_config(tiny))["checkpoint"]
    _edit_inter(tiny, _reverse_timestamps)
    assert cli.main(["recommend", f"--checkpoint={checkpoint}", "--users=u1"]) == 2
    assert "changed since" in _error_line(capsys)
    out = tmp_path / "items.npy"
    assert cli.main(["export", f"--checkpoint={checkpoint}", "--what=items", f"--output={out}"]) == 2
    assert "changed since" in _error_line(capsys) and not out.exists()
    for config_dict in (None, {"protocol": "rechorus", "embedding_size": 8, "MAX_ITEM_LIST_LENGTH": 10}):
        with pytest.raises(DatasetChanged, match="tiny.inter: the content differs"):
            evaluate_checkpoint(checkpoint, config_dict)


def test_a_checkpoint_with_a_relative_data_path_works_from_another_folder(tiny, tmp_path, monkeypatch):
    config = _config(tiny, data_path="data", checkpoint_dir="saved")  # relative to tmp_path, the working folder
    checkpoint = tmp_path / run("ComiRec", "tiny", config_dict=config)["checkpoint"]
    old = torch.load(checkpoint, weights_only=False)  # as written before: the path as given, no fingerprint
    old["config"]["data_path"] = "data/tiny"
    old.pop(FINGERPRINT_KEY, None)
    torch.save(old, tmp_path / "saved" / "old.pth")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert len(recommend(checkpoint, ["u1"], k=3)) == 3
    assert evaluate_checkpoint(str(checkpoint))
    with pytest.warns(UserWarning, match="no dataset fingerprint"):
        assert len(recommend(tmp_path / "saved" / "old.pth", ["u1"], k=3)) == 3


# --- kills -------------------------------------------------------------------------------------------------------
def _loadable(checkpoint: str) -> int:
    """Both files of the run load; -> the epoch the resume file continues after."""
    assert "state_dict" in torch.load(checkpoint, weights_only=False)
    return torch.load(resume_file(checkpoint), weights_only=False)["epoch"]


def _kill(child, after: float) -> None:
    child.start()
    time.sleep(after)
    assert child.exitcode is None, f"the run ended on its own (exit code {child.exitcode})"  # e.g. a bad resume file
    child.kill()  # SIGKILL: no cleanup runs
    child.join()


def test_kills_at_random_moments_leave_a_loadable_checkpoint_and_resume_file(tiny, tmp_path):
    ctx, rng, started = _server(), random.Random(0), time.perf_counter()
    config = _config(tiny, epochs=10_000, stopping_step=10_000, stopping_rule="recbole")  # never stops early
    first = ctx.Process(target=_child_run, args=(config, None))
    first.start()
    while not list(tmp_path.glob(f"saved/*{RESUME_SUFFIX}")) and first.exitcode is None:
        time.sleep(0.05)
    first.kill()
    first.join()
    checkpoint = main_checkpoint(str(next(tmp_path.glob(f"saved/*{RESUME_SUFFIX}"))))
    epochs = [_loadable(checkpoint)]
    for _ in range(20):  # startup takes about a second: kills fall into loading, training and writing
        _kill(ctx.Process(target=_child_run, args=({}, None), kwargs={"resume": checkpoint}), rng.uniform(0.2, 2.5))
        epochs.append(_loadable(checkpoint))
    assert epochs == sorted(epochs) and epochs[-1] > epochs[0]  # each resume went on from the last epoch
    result = run(None, None, resume=checkpoint, config_dict={"epochs": epochs[-1] + 2}, test=False)
    assert result["checkpoint"] == checkpoint and result["epochs"] == epochs[-1] + 2
    assert not list(tmp_path.glob("saved/.*.tmp-*"))  # what kills mid-write left, the resumed run removed
    assert time.perf_counter() - started < 90


def test_a_resumed_run_removes_only_dead_writers_temporaries(tmp_path):
    path = tmp_path / "run.pth"
    dead, live = tmp_path / ".run.pth.tmp-4194305-a1b2c3", tmp_path / f".run.pth.tmp-{os.getpid()}-d4e5f6"
    for tmp in (dead, live):
        tmp.write_bytes(b"half")
    remove_leftovers(path)
    assert not dead.exists() and live.exists()


def test_the_refusal_says_what_changed():
    inter = {"sha256": "a" * 64, "bytes": 10, "lines": 3}
    saved = {"dataset": "d", "files": {"d.inter": inter}, "id_maps": {"item": ["[PAD]", "i1", "i2"], "user": ["[PAD]", "u1"]}}
    renamed = {**saved, "id_maps": {**saved["id_maps"], "item": ["[PAD]", "i1", "i3"]}}
    assert changes(saved, saved) is None
    assert changes(saved, renamed).startswith("its files are unchanged, but this configuration loads the item ids "
                                              "differ (1 new, e.g. 'i3')")
    assert changes(saved, {**saved, "files": {**saved["files"], "d.item": inter}}) == "d.item is new"
