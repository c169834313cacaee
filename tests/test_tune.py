"""Ray Tune sweeps: search-space parsing, and one real ASHA sweep on tiny data."""

import math
import os

import pandas as pd
import pytest
from ray import tune

from recbole_ext import run
from recbole_ext.quick_start import build_config
from recbole_ext.tune import SearchSpaceError, parse_space, run_sweep, best_of_tested_stage, trial_config


def test_hyper_test_lines_follow_recbole(tmp_path):
    path = tmp_path / "hyper.test"
    path.write_text("learning_rate loguniform -9.2,-4.6\n# comment\nn_interests choice [2, 4]\ntemp uniform 0.1 1\n")
    space = parse_space(path)
    assert space["learning_rate"].lower == pytest.approx(math.exp(-9.2))  # natural-log bounds, as RecBole
    assert space["n_interests"].categories == [2, 4]
    assert (space["temp"].lower, space["temp"].upper) == (0.1, 1.0)
    grid_file = tmp_path / "grid.test"
    grid_file.write_text("n_interests choice [2, 4]\n")
    assert parse_space(grid_file, grid=True)["n_interests"] == tune.grid_search([2, 4])


def test_yaml_space_uses_plain_values(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("learning_rate: {loguniform: [0.0001, 0.01]}\nn_interests: {choice: [2, 4, 6]}\n")
    space = parse_space(path)
    assert space["learning_rate"].lower == pytest.approx(1e-4)
    assert space["n_interests"].categories == [2, 4, 6]


@pytest.mark.parametrize("text, message", [
    ("learning_rate choice [0.1]\nembedding_size gaussian 1 2\n", "line 2: expected 'name distribution args'"),
    ("temp uniform a b\n", "line 1: bad arguments"),
    ("n choice 1, 2\n", "line 1: choice needs a Python list"),
])
def test_bad_line_is_named(tmp_path, text, message):
    path = tmp_path / "bad.test"
    path.write_text(text)
    with pytest.raises(SearchSpaceError, match=message):
        parse_space(path)


def test_bad_yaml_entry_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: {loguniform: [0.001, 0.01]}\ntemp: 0.5\n")
    with pytest.raises(SearchSpaceError, match=r"line 2 \(temp\)"):
        parse_space(path)


@pytest.fixture
def learnable(tmp_path) -> dict:
    """Each user walks consecutive items, so one epoch at a real learning rate beats an untrained model."""
    rows = [(f"u{u}", f"i{(u * 7 + t) % 40 + 1}", 100 * u + t) for u in range(80) for t in range(12)]
    folder = tmp_path / "data" / "walk"
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "timestamp:float"]).to_csv(
        folder / "walk.inter", sep="\t", index=False)
    return {"data_path": str(tmp_path / "data"), "protocol": "rechorus", "eval_neg_num": 20, "topk": [5],
            "epochs": 4, "embedding_size": 16, "train_batch_size": 64, "show_progress": False, "state": "ERROR",
            "seed": 3}


def test_asha_sweep_stops_a_bad_trial_survives_a_failing_one_and_reproduces(tmp_path, learnable):
    space = tmp_path / "space.test"
    # good, untrainable, failing (a valid value whose loss turns NaN: an out-of-range one is refused before Ray starts)
    space.write_text("learning_rate choice [0.05, 0.0, 1e300]\n")
    result = run_sweep("ComiRec", "walk", space, config_dict=learnable, search="grid", scheduler="asha",
                       max_concurrent=1, storage_path=tmp_path / "ray", name="walk")
    table = result.table.set_index("learning_rate")
    assert table.loc[0.05, "status"] == "completed" and table.loc[0.05, "epochs"] == 4
    assert table.loc[0.0, "status"] == "stopped early" and table.loc[0.0, "epochs"] < 4
    assert table.loc[1e300, "status"] == "error" and "Training loss is nan" in table.loc[1e300, "error"]
    assert result.best_params == {"learning_rate": 0.05}
    assert set(result.test_result) == {"hit@5", "ndcg@5"}
    assert result.plot.stat().st_size > 0 and (result.directory / "trials.csv").is_file()
    trial_dir = result.directory / table.loc[0.05, "trial"]
    assert any(trial_dir.glob("log/ComiRec/*.log")) and any(trial_dir.glob("saved/*.pth"))
    assert list(trial_dir.glob("checkpoint_*/best.pth"))  # the tested model went through Ray's storage
    rerun = run("ComiRec", "walk", config_file_list=[str(result.best_config_file)], test=False,
                config_dict={"checkpoint_dir": str(tmp_path / "rerun")})
    assert rerun["best_valid_score"] == pytest.approx(table.loc[0.05, "best_valid_NDCG@5"])


@pytest.mark.slow
def test_pbt_exploits_by_resuming_another_trials_checkpoint(tmp_path, learnable):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {loguniform: [0.0001, 0.1]}\n")
    result = run_sweep("ComiRec", "walk", space, config_dict={**learnable, "state": "INFO", "epochs": 6},
                       scheduler="pbt", num_samples=2, grace_period=2, storage_path=tmp_path / "ray", name="pbt")
    assert set(result.table.status) <= {"completed", "stopped early"}
    logs = "".join(p.read_text() for p in result.directory.glob("*/log/ComiRec/*.log"))
    assert "Resume training" in logs  # RecBole's resume_checkpoint ran inside an exploited trial


def test_pbt_refuses_multi_stage_training(tmp_path, learnable):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {loguniform: [0.0001, 0.1]}\n")
    with pytest.raises(ValueError, match="scheduler: 'pbt' resumes trials mid-run"):
        run_sweep("TiMiRec", "walk", space, config_dict=learnable, scheduler="pbt", storage_path=tmp_path / "ray")


def test_trial_keeps_the_gpus_ray_assigned(monkeypatch, tmp_path, learnable):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # what Ray sets in a trial given GPUs 2 and 3 of a node
    config = trial_config({"learning_rate": 0.01}, {"config_dict": learnable}, tmp_path)
    assert config["gpu_id"] == "2,3" and config["checkpoint_dir"] == str(tmp_path / "saved")
    build_config("ComiRec", "walk", config_dict=config)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"  # RecBole's default gpu_id would have made it "0"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "gpu_id" not in trial_config({}, {"config_dict": learnable}, tmp_path)


def test_two_stage_trial_is_ranked_on_the_stage_it_tests():
    pretrain_better = pd.DataFrame({"valid_score": [0.30, 0.35, 0.20, 0.25], "stage": [0, 0, 1, 1]})
    assert best_of_tested_stage(pretrain_better, bigger=True) == 0.25  # not 0.35: the finetuned model is the one tested
    assert best_of_tested_stage(pretrain_better.iloc[:2], bigger=True) == 0.35  # stopped in stage 0: its model is tested
    assert best_of_tested_stage(pd.DataFrame({"valid_score": [0.5, 0.4]}), bigger=False) == 0.4
