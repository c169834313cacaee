"""The command line explains itself: help, a model's keys, one-line errors, --debug."""

import pytest

from recbole_ext import cli


def test_no_arguments_prints_help_and_trains_nothing(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for word in ("recommend", "export", "--convert", "--tune", "--distributed", "--model=ComiRec --help"):
        assert word in out


def test_model_help_lists_the_models_keys_with_defaults(capsys):
    assert cli.main(["--model=ComiRec", "--help"]) == 0
    out = capsys.readouterr().out
    assert "n_interests = 4" in out and "loss_type" in out
    assert cli.main(["--model", "Re4", "-h"]) == 0
    assert "n_negatives" in capsys.readouterr().out


def test_unknown_model_help_is_one_line(capsys):
    assert cli.main(["--model=Nope", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "ComiRec" in err


def test_unexpected_errors_are_one_line_and_debug_keeps_the_traceback(monkeypatch, capsys):
    def broken(args, fixed):
        raise KeyError("item_id")

    monkeypatch.setattr(cli, "_train", broken)
    assert cli.main(["--model=ComiRec", "--dataset=ml-100k"]) == 2
    err = capsys.readouterr().err
    assert err == "error: KeyError: 'item_id' (run again with --debug for the traceback)\n"
    with pytest.raises(KeyError):
        cli.main(["--model=ComiRec", "--dataset=ml-100k", "--debug"])


def test_a_broken_pipe_inside_a_run_is_an_error_not_a_success(monkeypatch, capsys):
    def broken(args, fixed):
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a worker's connection, while our stdout is fine

    monkeypatch.setattr(cli, "_train", broken)
    assert cli.main(["--model=ComiRec", "--dataset=ml-100k"]) == 2
    assert "BrokenPipeError" in capsys.readouterr().err
