"""Every bad input a new user tried: one line on stderr, exit code 2, no file half-written or overwritten."""

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import FAST, write_seq_dataset
from recbole_ext import run
from recbole_ext.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A data folder with good and broken datasets, a trained ComiRec checkpoint and config/space files."""
    root = tmp_path_factory.mktemp("bad")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        data = root / "data"
        write_seq_dataset(data, "tiny")
        write_seq_dataset(data, "negs")
        pd.DataFrame({"user_id:token": ["u1"], "item_id:token": ["i1"]}).to_csv(
            data / "negs" / "negs.test.neg", sep="\t", index=False)  # no neg_items column
        pd.DataFrame({"user_id:token": ["u1"], "item_id:token": ["i1"]}).to_csv(
            data / "negs" / "negs.valid.neg", sep="\t", index=False)
        frame = pd.read_csv(data / "tiny" / "tiny.inter", sep="\t")
        (data / "notime").mkdir()
        frame.drop(columns=["timestamp:float"]).to_csv(data / "notime" / "notime.inter", sep="\t", index=False)
        (root / "rechorus").mkdir()
        pd.DataFrame({"user_id": ["1"], "item_id": ["2"]}).to_csv(root / "rechorus" / "train.csv", sep="\t", index=False)
        for part in ("dev", "test"):
            pd.DataFrame({"user_id": ["1"], "item_id": ["2"], "time": ["3"], "neg_items": ["[4]"]}).to_csv(
                root / "rechorus" / f"{part}.csv", sep="\t", index=False)
        files = {"broken.yaml": "epochs: [1, 2\n", "empty.yaml": "", "list.yaml": "- epochs\n- 3\n",
                 "space.yaml": "learning_rate: {loguniform: [1e-4\n", "space_list.yaml": "- learning_rate\n",
                 "space.test": "# nothing\n", "good_space.test": "learning_rate choice [0.01]\n",
                 "not_a_checkpoint.pth": "hello\n", "negative_lr.test": "learning_rate choice [0.01, -1]\n",
                 "text_lr.test": "learning_rate choice ['abc']\n",
                 "zero_log.yaml": "learning_rate: {loguniform: [0, 0.01]}\n"}
        for name, text in files.items():
            (root / name).write_text(text)
        base = {**FAST, "data_path": str(data), "checkpoint_dir": str(root / "saved"),
                "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
        checkpoint = run("ComiRec", "tiny", config_dict={**base, "protocol": "rechorus"})["checkpoint"]
    finally:
        os.chdir(cwd)
    return root, checkpoint


def snapshot(root: Path) -> dict:
    """path -> content hash of every file, RecBole's logs left out (a failed run may log why)."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*")
            if p.is_file() and not {"log", "log_tensorboard"} & set(p.relative_to(root).parts)}


D = "--data_path=data"
CASES = [  # (argv, a piece of the one-line message); {root} and {ckpt} are filled in
    (["--config_files={root}/broken.yaml"], "broken.yaml is not valid YAML at line 2"),
    (["--config_files={root}/empty.yaml"], "empty.yaml is empty"),
    (["--config_files={root}/list.yaml"], "is a list, not key: value lines"),
    (["--config_files={root}/nope.yaml"], "config_files: {root}/nope.yaml does not exist"),
    (["--model=ComiRec", "--tune={root}/space.yaml"], "space.yaml is not valid YAML"),
    (["--model=ComiRec", "--tune={root}/space_list.yaml"], "is a list, not key: value lines"),
    (["--model=ComiRec", "--tune={root}/space.test"], "space.test is empty"),
    (["--model=ComiRec", "--dataset=nowhere", D, "--tune={root}/good_space.test"], "dataset 'nowhere' is not in"),
    (["--model=ComiRec", "--epochs=abc"], "epochs: 'abc' is not an integer"),
    (["--model=ComiRec", "--epochs=5", "--epochs=6"], "--epochs is given twice with different values (5 and 6)"),
    (["--model=ComiRec", "--epochs", "5"], "write --epochs=5"),
    (["--model=ComiRec", "train"], "unexpected argument 'train'"),
    (["--checkpoint={ckpt}", "recommend"], "subcommands (recommend, export) come first"),
    (["--model=ComiRec", "--epoch=5"], "unknown config key 'epoch': did you mean 'epochs'?"),
    (["--model=ComiRec", "--protocol=rechorus", "--eval_neg_num=abc"], "eval_neg_num: 'abc' is not an integer"),
    (["--model=ComiRec", "--n_interests=0"], "n_interests: 0 is out of range for ComiRec; it must lie in [1, inf)"),
    (["--model=SASRec", "--hidden_dropout_prob=-0.1"], "hidden_dropout_prob: -0.1 is out of range"),
    (["--model=ComiRec", "--protocol=bogus"], "protocol: unknown value 'bogus'"),
    (["--model=NoSuchModel"], "unknown model 'NoSuchModel'"),
    (["--model=ComiRec", "--dataset=nowhere", D], "dataset 'nowhere' is not in"),
    (["--model=ComiRec", "--dataset=notime", D], "has no 'timestamp' column, which ComiRec needs"),
    (["--model=ComiRec", "--dataset=negs", D, "--protocol=rechorus"], ".neg has no column neg_items"),
    (["--convert=rechorus", "--src={root}/rechorus", D], "train.csv has no column time"),
    (["--resume={ckpt}", "--model=Re4"], "is a run of model 'ComiRec', not 'Re4'"),
    (["--resume={root}/saved/nothing.pth"], "no resume state for"),
    (["recommend", "--checkpoint={root}/nope.pth", "--users=u1"], "checkpoint: {root}/nope.pth does not exist"),
    (["recommend", "--checkpoint={root}/not_a_checkpoint.pth", "--users=u1"], "is not a readable torch checkpoint"),
    (["recommend", "--checkpoint={ckpt}", "--users=u1,ghost"], "ghost is not a user of tiny"),
    (["recommend", "--checkpoint={ckpt}", "--users=u1", "--k=abc"], "argument --k: invalid int value: 'abc'"),
    (["recommend", "--checkpoint={ckpt}"], "one of the arguments --users --users_file is required"),
    (["export", "--checkpoint={ckpt}", "--what=users", "--output={root}/u.npy"], "use --what=interests"),
    (["export", "--checkpoint={ckpt}", "--what=items", "--output={root}/missing/dir/i.npy"], "does not exist"),
    (["--model=TiMiRec", "--stage=finetune", "--pretrain_path={ckpt}", "--dataset=tiny", D, "--epochs=1"],
     "has model='ComiRec' but this run has model='TiMiRec'"),
    # checked before the checkpoint is loaded and scored (the first: not even a checkpoint)
    (["recommend", "--checkpoint={root}/not_a_checkpoint.pth", "--users=u1", "--output={root}/missing/top.csv"],
     "--output: folder {root}/missing does not exist"),
    (["recommend", "--checkpoint={ckpt}", "--users=u1", "--output={root}/not_a_checkpoint.pth/top.csv"],
     "--output: {root}/not_a_checkpoint.pth is a file, not a folder"),
    # sweep values checked before Ray starts
    (["--model=ComiRec", "--dataset=tiny", D, "--tune={root}/negative_lr.test"],
     "negative_lr.test: learning_rate: -1 is out of range for ComiRec"),
    (["--model=ComiRec", "--dataset=tiny", D, "--tune={root}/text_lr.test"], "learning_rate: 'abc' is not a number"),
    (["--model=ComiRec", "--dataset=tiny", D, "--tune={root}/zero_log.yaml"], "loguniform bounds must be positive"),
    # --distributed: a count of workers
    (["--model=ComiRec", "--dataset=tiny", D, "--distributed=0"], "--distributed=0: give at least 1 worker"),
    (["--model=ComiRec", "--dataset=tiny", D, "--distributed=-2"], "--distributed=-2: give at least 1 worker"),
    # values that depend on others, before the data is loaded
    (["--model=ComiRec", "--dataset=tiny", D, "--topk=[5,10]", "--valid_metric=NDCG@7"],
     "valid_metric: 'NDCG@7' is not computed with metrics"),
    (["--model=ComiRec", "--dataset=tiny", D, "--protocol=rechorus", "--eval_neg_num=3"],
     "eval_neg_num: 3 negatives + the target rank 4 candidates, fewer than topk 50"),
    (["--model=ComiRec", "--dataset=tiny", D, "--checkpoint_dir={root}/not_a_checkpoint.pth/saved"],
     "checkpoint_dir: {root}/not_a_checkpoint.pth is a file, not a folder"),
    (["--model=ComiRec", "--dataset=tiny", D, "--protocol=ctr"],
     "protocol ctr: ComiRec is a sequential model, and protocol ctr (labelled rating rows) is for context-aware"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_lost(workspace, monkeypatch, capsys, argv, message):
    root, checkpoint = workspace
    monkeypatch.chdir(root)
    fill = lambda text: text.replace("{root}", str(root)).replace("{ckpt}", checkpoint)  # noqa: E731
    before = snapshot(root)
    assert main([fill(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert fill(message) in err[0]
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing overwritten or removed
    assert not [p for p in after if ".tmp-" in p]  # nothing half-written
