"""Entry points: RecBole's run_recbole / load_data_and_model, recbole_ext.run, the CLI and its errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recbole.quick_start import load_data_and_model, run_recbole

from conftest import keep_saved_model
from recbole_ext import run
from recbole_ext.cli import main
from recbole_ext.quick_start import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_recbole_run_recbole_trains_plugin_model(tiny):
    """RecBole's run_recbole builds, trains and tests a plugin model as recbole_ext.run does (the same seed, data
    hooks and plugin trainer): the same test metrics and the same trained weights."""
    result = run_recbole(model="ComiRec", dataset="tiny", config_dict={**tiny, "epochs": 2})
    ours = run("ComiRec", "tiny", config_dict={**tiny, "epochs": 2})
    assert set(result["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}
    assert dict(result["test_result"]) == pytest.approx(dict(ours["test_result"]), abs=1e-4)
    saved = [p for p in Path(tiny["checkpoint_dir"]).glob("ComiRec-*.pth")
             if not p.name.endswith("-resume.pth") and p != Path(ours["checkpoint"])]
    assert len(saved) == 1, saved  # run_recbole's checkpoint
    recbole_state = torch.load(saved[0], weights_only=False)["state_dict"]
    ours_state = torch.load(ours["checkpoint"], weights_only=False)["state_dict"]
    assert recbole_state.keys() == ours_state.keys()
    assert all(torch.allclose(recbole_state[k], ours_state[k], atol=1e-5) for k in ours_state)


def test_checkpoint_round_trip_gives_equal_predictions_and_metrics(tiny):
    """RecBole's load_data_and_model gives back the model as trained: the same scores for the same test users as a
    copy of the in-memory model taken when the trainer saved it; re-evaluating the checkpoint gives the run's metrics."""
    trained = {}
    result = run("ComiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", "epochs": 2},
                 on_trainer=keep_saved_model(trained))
    config, model, _, _, _, test = load_data_and_model(result["checkpoint"])
    model.eval()
    test.trainer_ready = True  # the fixed-negatives loader; the plugin trainer marks it so
    batch = next(iter(test))[0]
    with torch.no_grad():
        reloaded = model.full_sort_predict(batch)
        assert reloaded.shape == (30, 41)  # every test user, every item (and the padding id)
        assert torch.allclose(reloaded, trained["model"].full_sort_predict(batch), rtol=1e-5, atol=1e-12)
        fresh = type(model)(config, test._dataset).eval().full_sort_predict(batch)  # scores of ~1e-4 on tiny
        assert (fresh - reloaded).abs().max() > 0.1 * reloaded.abs().max()  # the weights were loaded
    assert evaluate_checkpoint(result["checkpoint"]) == result["test_result"]


def test_checkpoint_re_evaluated_under_full_ranking(tiny):
    """Same weights, same leave-one-out split: the fixed-negative candidates are a subset of the items full
    ranking scores, so every user's full rank is >= its sampled rank and each Hit@k can only drop."""
    result = run("TiMiRec", "tiny", config_dict={**tiny, "protocol": "rechorus", "stage": "pretrain"})
    assert evaluate_checkpoint(result["checkpoint"], {**tiny, "protocol": "rechorus"}) == result["test_result"]
    full = evaluate_checkpoint(result["checkpoint"], {**tiny, "protocol": "recbole"})
    assert set(full) == set(result["test_result"])
    assert all(full[f"hit@{k}"] <= result["test_result"][f"hit@{k}"] for k in (5, 10))
    assert full != result["test_result"]


def test_full_sort_predict_agrees_with_predict(tiny):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model

    config = Config(model="ComiRec", dataset="tiny", config_dict=tiny)
    train, _, test = data_preparation(config, create_dataset(config))
    model = get_model("ComiRec")(config, train._dataset).eval()
    interaction = next(iter(test))[0]
    full = model.full_sort_predict(interaction)
    assert full.shape == (len(interaction), train._dataset.item_num)
    picked = full.gather(1, interaction["item_id"].unsqueeze(1)).squeeze(1)
    assert torch.allclose(model.predict(interaction), picked, atol=1e-6)


def test_cli_unknown_model_is_one_line_listing_models(capsys):
    assert main(["--model=NoSuchModel", "--dataset=ml-100k"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ComiRec" in err and "SASRec" in err


def test_cli_missing_dataset_says_how_to_convert(capsys, tmp_path):
    assert main(["--model=ComiRec", "--dataset=nowhere-data", f"--data_path={tmp_path}/none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--convert=" in err and "nowhere-data" in err


def test_cli_bad_config_value_names_the_key(capsys, tiny):
    assert main(["--model=ComiRec", "--dataset=tiny", f"--data_path={tiny['data_path']}", "--loss_type=XYZ",
                 "--epochs=1", "--state=ERROR"]) == 2
    assert "loss_type" in capsys.readouterr().err


def test_cli_list_and_convert_usage(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "ComiRec" in out and "rechorus" in out and "ml-100k" in out
    assert main(["--convert=ml-1m"]) == 2
    assert "--src" in capsys.readouterr().err


def test_script_runs_as_a_user_would(tiny):
    """The script's printed test line is the result recbole_ext.run gives for the same settings (its arguments reach
    the run: the embedding size, epochs and columns), and its checkpoint holds that configuration."""
    args = {"data_path": tiny["data_path"], "epochs": 1, "embedding_size": 8, "show_progress": False,
            "state": "ERROR", "checkpoint_dir": tiny["checkpoint_dir"],
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
    proc = subprocess.run([sys.executable, str(ROOT / "run_recbole_ext.py"), "--model=ComiRec", "--dataset=tiny",
                           *(f"--{key}={value}" for key, value in args.items())],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = next(line for line in proc.stdout.splitlines() if line.startswith("test:")).split()[1:]
    printed = dict(zip(printed[::2], map(float, printed[1::2])))
    assert set(printed) == {"hit@10", "ndcg@10", "mrr@10", "precision@10", "recall@10"}  # RecBole's defaults
    checkpoint = next(line for line in proc.stdout.splitlines() if line.startswith("checkpoint:")).split()[1]
    saved = torch.load(checkpoint, weights_only=False)["config"]
    assert (saved["model"], saved["embedding_size"], saved["epochs"]) == ("ComiRec", 8, 1)
    ours = run("ComiRec", "tiny", config_dict=args)["test_result"]
    assert printed == pytest.approx({key: float(value) for key, value in ours.items()}, abs=1e-4)


def test_candidate_scoring_equals_full_sort_gather(tiny):
    """predict_candidates ([B, C] directly) must agree with the generic full-sort + gather path."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model

    for name in ("ComiRec", "TiMiRec"):
        config = Config(model=name, dataset="tiny", config_dict=tiny)
        train, _, test = data_preparation(config, create_dataset(config))
        model = get_model(name)(config, train._dataset).eval()
        interaction = next(iter(test))[0]
        candidates = torch.randint(1, train._dataset.item_num, (len(interaction), 7))
        expected = model.full_sort_predict(interaction).gather(1, candidates)
        assert torch.allclose(model.predict_candidates(interaction, candidates), expected, atol=1e-5), name
