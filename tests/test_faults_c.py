"""Faults beyond one bad flag: exact exclusion in recommend, sweeps that keep their history, resources and
dependent values checked before anything runs, stale conversion folders."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from recbole_ext import run
from recbole_ext.cli import main
from recbole_ext.inference import FewerRows, TrainedModel


def _raw(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", dtype=str)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def test_exclude_history_never_returns_a_seen_item_and_says_who_got_fewer(tiny, tmp_path, capsys):
    checkpoint = run("ComiRec", "tiny", config_dict={**tiny, "protocol": "rechorus"})["checkpoint"]
    raw = _raw(tmp_path / "data" / "tiny" / "tiny.inter")
    trained = TrainedModel(checkpoint)
    with pytest.warns(FewerRows, match="2 of 2 users have fewer than k=39"):
        table = trained.recommend(["u3", "u4", "u3"], k=39, exclude_history=True)  # 40 items, 10 seen each
    assert table.user.tolist() == ["u3"] * 30 + ["u4"] * 30  # u3 once, first-occurrence order
    for user, rows in table.groupby("user"):
        assert set(rows.item).isdisjoint(raw[raw.user_id == user].item_id) and "[PAD]" not in set(rows.item)
        assert rows["rank"].tolist() == list(range(1, 31)) and rows.score.is_monotonic_decreasing
    assert main(["recommend", f"--checkpoint={checkpoint}", "--users=u3,u3", "--k=35", "--exclude_history",
                 f"--output={tmp_path / 'top.csv'}"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: recommend: 1 of 1 users have fewer than k=35 items left after excluding their history; "
                   "they get fewer rows"]
    assert pd.read_csv(tmp_path / "top.csv").shape[0] == 30


def test_ctr_exclusion_covers_rows_the_protocol_dropped_and_never_pad(ratings, tmp_path):
    """IFM scores pairs (no full ranking); protocol ctr drops ratings of 3, which the user still saw."""
    trained = TrainedModel(run("IFM", "rated", config_dict={**ratings, "loss_type": "BCE"})["checkpoint"])
    raw = _raw(tmp_path / "data" / "rated" / "rated.inter")
    threes = raw[raw.rating == "3"]
    user = threes.user_id.value_counts().index[0]  # a user with ratings of 3
    table = trained.recommend([user], k=30, exclude_history=True, warn=False)
    assert "[PAD]" not in set(table.item) and set(table.item).isdisjoint(raw[raw.user_id == user].item_id)
    assert len(table) == 30 - raw[raw.user_id == user].item_id.nunique() and table.attrs["fewer_than_k"] == 1


def test_output_folder_that_cannot_be_written_is_refused_before_scoring(tiny, tmp_path, monkeypatch, capsys):
    """Root may write anywhere, so the folder's permission is what os.access answers for a user who may not."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode, **kw))

    def scored(*args, **kwargs):
        raise AssertionError("scored before the output folder was checked")

    monkeypatch.setattr("recbole_ext.inference.TrainedModel", scored)
    assert main(["recommend", f"--checkpoint={tmp_path / 'any.pth'}", "--users=u1",
                 f"--output={locked / 'top.csv'}"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: --output: folder {locked} is not writable; choose a folder you can write to"


def test_checkpoint_dir_that_cannot_be_written_is_refused_before_data_loading(tiny, tmp_path, monkeypatch):
    from recbole_ext.quick_start import build_config

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode, **kw))
    with pytest.raises(ValueError, match=f"checkpoint_dir: folder {locked} is not writable"):
        build_config("ComiRec", "tiny", config_dict={**tiny, "checkpoint_dir": str(locked / "saved")})


def test_distributed_beyond_the_cpus_ray_sees_fails_at_once(tiny, monkeypatch, capsys):
    """A 2-CPU machine and 3 workers of 1 CPU: Ray would wait for the third worker forever."""
    import ray

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **kw: pytest.fail("ray.init ran before the resources were checked"))
    argv = ["--model=ComiRec", "--dataset=tiny", f"--data_path={tiny['data_path']}", "--distributed=3"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == ("error: --distributed=3 with --cpus_per_worker=1 needs 3 CPUs, but this "
                                               "machine has 2; use fewer workers or fewer CPUs per worker (Ray would "
                                               "wait for them forever)")
    assert main([*argv[:-1], "--distributed=2", "--cpus_per_worker=1.5"]) == 2
    assert "needs 3 CPUs, but this machine has 2" in capsys.readouterr().err


def test_distributed_run_keeps_its_files_in_checkpoint_dir(tiny, tmp_path, monkeypatch, capsys):
    """Where Ray keeps the run (and the model) is decided before training: a stand-in trainer records it."""
    import ray
    import ray.train.torch

    seen = {}

    class Recorder:
        def __init__(self, *args, run_config, **kwargs):
            seen["storage"] = run_config.storage_path

        def fit(self):
            raise RuntimeError("recorded")

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Recorder)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **kw: None)
    models = tmp_path / "models"
    assert main(["--model=ComiRec", "--dataset=tiny", f"--data_path={tiny['data_path']}", "--distributed=1",
                 f"--checkpoint_dir={models}"]) == 2
    assert "distributed training failed: recorded" in capsys.readouterr().err
    assert seen["storage"] == str(models.resolve()) and not (tmp_path / "ray_results").exists()


def test_a_second_sweep_into_the_same_storage_keeps_the_first(tiny, tmp_path, capsys):
    from recbole_ext.tune import print_summary, run_sweep, sweep_name

    space = tmp_path / "space.test"
    space.write_text("learning_rate choice [0.01]\n")
    config = {**tiny, "protocol": "rechorus"}
    first = run_sweep("ComiRec", "tiny", space, config_dict=config, scheduler="fifo", storage_path=tmp_path / "ray",
                      test=False)
    kept = {name: (first.directory / name).read_bytes() for name in ("best.yaml", "trials.csv", "trials.md",
                                                                      "valid_curves.png")}
    second = run_sweep("ComiRec", "tiny", space, config_dict={**config, "embedding_size": 16}, scheduler="fifo",
                       storage_path=tmp_path / "ray", test=False)
    assert first.directory != second.directory and first.directory.parent == second.directory.parent
    assert first.directory.name.startswith("ComiRec-tiny-")
    assert {name: (first.directory / name).read_bytes() for name in kept} == kept  # the first sweep's files, intact
    assert "embedding_size: 16" in (second.directory / "best.yaml").read_text()
    print_summary(second)
    assert f"sweep folder: {second.directory}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already exists; give a new name"):
        sweep_name(tmp_path / "ray", "ComiRec", "tiny", first.directory.name)


def test_next_conversion_removes_what_a_killed_one_left_but_not_a_live_ones(tmp_path):
    import signal
    import subprocess

    from recbole_ext.data.convert import _publish

    code = ("import sys, time; from recbole_ext.data.convert import _publish; "
            "_publish(lambda tmp: time.sleep(600), sys.argv[1], 'ds')")
    killed = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".ds.partial-*")) and time.time() < deadline:
            time.sleep(0.2)
        stale = list(tmp_path.glob(".ds.partial-*"))
        assert len(stale) == 1 and f"-{killed.pid}-" in stale[0].name
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        busy = tmp_path / f".ds.partial-{live.pid}-x"  # a conversion still running beside this one
        other = tmp_path / f".other.partial-{killed.pid}-x"  # another dataset's
        legacy = tmp_path / ".ds.partial-abc123"  # an older version's, without a pid
        for folder in (busy, other, legacy):
            folder.mkdir()
        out = _publish(lambda tmp: (tmp / "__NAME__.inter").write_text("user_id:token\n"), tmp_path, "ds")
        assert (out / "ds.inter").is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", busy.name, other.name, legacy.name])
    finally:
        for process in (killed, live):
            process.kill()
            process.wait()


def test_a_sweep_trial_larger_than_the_cluster_fails_at_once(tiny, tmp_path, monkeypatch):
    import ray
    from ray import tune

    from recbole_ext.tune import run_sweep

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a running Ray of 2 CPUs, no GPU
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(tune, "Tuner", lambda *a, **kw: pytest.fail("the sweep started"))
    with pytest.raises(ValueError, match="--cpus_per_trial=4 --gpus_per_trial=0 needs 4 CPUs, but the Ray cluster "
                                         "has 2; lower them"):
        run_sweep("ComiRec", "tiny", {"learning_rate": tune.choice([0.01])}, config_dict=tiny, cpus_per_trial=4,
                  storage_path=tmp_path / "ray")


def test_eval_neg_num_is_checked_when_only_one_split_ships_its_negatives(tmp_path):
    from recbole_ext.validation import _check_eval_negatives

    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "half.valid.neg").write_text("user_id:token\titem_id:token\tneg_items:token_seq\n")
    merged = {"eval_protocol": "fixed_negatives", "eval_neg_num": 3, "topk": [5, 50], "data_path": str(tmp_path)}
    with pytest.raises(ValueError, match="eval_neg_num: 3 negatives"):  # the test split still samples 3 per row
        _check_eval_negatives(merged, "half")
    (folder / "half.test.neg").write_text("user_id:token\titem_id:token\tneg_items:token_seq\n")
    _check_eval_negatives(merged, "half")  # both shipped: nothing is sampled, nothing to check
