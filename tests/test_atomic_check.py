"""Atomic files are checked before RecBole parses them (recbole_ext/data/atomic_check.py), and the converters refuse
malformed cells: one line naming file, line (and column) with the fix, exit code 2, nothing written. Each case below
either ran silently on wrong data before (a shifted column, a filled-in timestamp or label) or ended in a message
naming neither file nor line."""

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FAST, write_seq_dataset
from recbole_ext.cli import main


def _edit_line(path: Path, number: int, text: bytes) -> None:
    """Replace line ``number`` (1-based, the header is line 1) of ``path``."""
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = text
    path.write_bytes(b"\n".join(lines))


def _benchmark(folder: Path, name: str, empty_label_in_test: bool) -> None:
    """libFM-style benchmark files ``name.{train,valid,test}.inter`` (label:float, user_id, item_id)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part in ("train", "valid", "test"):
        labels = [str(int(v)) for v in rng.choice([-1, 1], size=40)]
        if empty_label_in_test and part == "test":
            labels[1] = ""  # line 3
        pd.DataFrame({"label:float": labels, "user_id:token": rng.integers(8, size=40).astype(str),
                      "item_id:token": rng.integers(9, size=40).astype(str)}).to_csv(
            folder / f"{name}.{part}.inter", sep="\t", index=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("atomic")
    data = root / "data"
    for name in ("tabid", "rephead", "badutf", "headonly", "emptyts", "textts"):
        write_seq_dataset(data, name)
    _edit_line(data / "tabid" / "tabid.inter", 6, b"u1\tit\t4\t1004")  # id 'it<TAB>4': RecBole read item 'it', time 4
    inter = data / "rephead" / "rephead.inter"
    inter.write_bytes(inter.read_bytes() + inter.read_bytes().split(b"\n")[0] + b"\nu1\ti1\t1011\n")
    _edit_line(data / "badutf" / "badutf.inter", 4, b"u1\ti\xff21\t1002")
    inter = data / "headonly" / "headonly.inter"
    inter.write_bytes(inter.read_bytes().split(b"\n")[0] + b"\n")
    _edit_line(data / "emptyts" / "emptyts.inter", 5, b"u1\ti17\t")
    _edit_line(data / "textts" / "textts.inter", 5, b"u1\ti17\tyesterday")
    _benchmark(data / "fmgap", "fmgap", empty_label_in_test=True)
    (data / "norate").mkdir()
    pd.DataFrame({"user_id:token": [f"u{i % 7}" for i in range(60)], "item_id:token": [f"i{i % 9}" for i in range(60)],
                  "rating:float": ["" if i == 10 else str(1 + i % 5) for i in range(60)]}).to_csv(
        data / "norate" / "norate.inter", sep="\t", index=False)
    rechorus = root / "rechorus"
    rechorus.mkdir()
    pd.DataFrame({"user_id": ["1", "1"], "item_id": ["2", "3"], "time": ["1", "2"]}).to_csv(
        rechorus / "train.csv", sep="\t", index=False)
    for part, cell in (("dev", "[4, 5"), ("test", "[4, 5]")):
        pd.DataFrame({"user_id": ["1"], "item_id": ["2"], "time": ["3"], "neg_items": [cell]}).to_csv(
            rechorus / f"{part}.csv", sep="\t", index=False)
    for folder, bad in (("libfm_nan", "nan 3:1 15:1"), ("libfm", None)):
        (root / folder).mkdir()
        for part in ("train", "validation", "test"):
            lines = [f"{1 if k % 2 else -1} {k % 10}:1 {10 + k % 12}:1" for k in range(20)]
            if bad and part == "validation":
                lines[4] = bad
            (root / folder / f"toy.{part}.libfm").write_text("\n".join(lines) + "\n")
    (root / "overlap.map").write_text("user_id 0 12\nitem_id 10 21\n")
    return root


def snapshot(root: Path) -> dict:
    """path -> content hash of every file, RecBole's logs left out (a failed run may log why)."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*")
            if p.is_file() and not {"log", "log_tensorboard"} & set(p.relative_to(root).parts)}


D, SEQ = "--data_path=data", ["--model=ComiRec", "--epochs=1", "--eval_neg_num=20"]
CASES = [  # (argv, a piece of the one-line message)
    ([*SEQ, "--dataset=tabid", D], "tabid.inter: line 6 has 4 fields, the header has 3"),
    ([*SEQ, "--dataset=rephead", D], "rephead.inter: line 302 repeats the header line"),
    ([*SEQ, "--dataset=badutf", D], "badutf.inter: line 4, column 2: byte 0xff is not valid utf-8"),
    ([*SEQ, "--dataset=badutf", D], "set the encoding config key"),
    ([*SEQ, "--dataset=headonly", D], "headonly.inter has a header but no rows"),
    ([*SEQ, "--dataset=emptyts", D], "emptyts.inter: line 5, column 3 (timestamp) is empty"),
    ([*SEQ, "--dataset=emptyts", D], "set drop_incomplete_rows: True"),
    ([*SEQ, "--dataset=textts", D], "line 5, column 3 (timestamp) is not a number ('yesterday')"),
    (["--model=IFM", "--protocol=libfm", "--epochs=1", "--dataset=fmgap", D],
     "fmgap.test.inter: line 3, column 1 (label) is empty"),
    (["--model=FM", "--protocol=ctr", "--epochs=1", "--dataset=norate", D],
     "norate.inter: line 12, column 3 (rating) is empty"),
    (["--convert=rechorus", "--src={root}/rechorus", D],
     "dev.csv: line 2: neg_items '[4, 5' is not a list of item ids"),
    (["--convert=libfm", "--src={root}/libfm_nan", D], "line 5: the label 'nan' is not a finite number"),
    (["--convert=libfm", "--src={root}/libfm", "--field_map={root}/overlap.map", D],
     "fields 'user_id' (0-12) and 'item_id' (10-21) overlap"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_file_is_one_line_exit_2_and_nothing_written(workspace, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    assert main([a.replace("{root}", str(workspace)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message.replace("{root}", str(workspace)) in err[0]
    assert snapshot(workspace) == before  # nothing written, nothing removed


def _dataset(data: Path, name: str, **config):
    from recbole_ext.quick_start import build_config, load_dataset

    return load_dataset(build_config("ComiRec", name, config_dict={
        **FAST, "data_path": str(data), "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, **config}))


def test_drop_incomplete_rows_drops_exactly_those_rows(tmp_path, caplog):
    folder = write_seq_dataset(tmp_path / "data", "gaps", n_users=5, per_user=8)
    _edit_line(folder / "gaps.inter", 3, b"u1\ti99\t")  # empty
    _edit_line(folder / "gaps.inter", 12, b"u2\ti98\tNaN")  # not a finite number
    with caplog.at_level(logging.WARNING):
        dataset = _dataset(tmp_path / "data", "gaps", drop_incomplete_rows=True)
    assert dataset.inter_num == 38
    items = set(dataset.id2token(dataset.iid_field, np.asarray(dataset.inter_feat[dataset.iid_field])))
    assert not {"i99", "i98"} & items
    assert "drop_incomplete_rows: 2 of 40 rows" in caplog.text
    assert not list(Path(__import__("tempfile").gettempdir()).glob("*-gaps.inter"))  # the filtered copy is removed


def test_unusual_but_valid_files_load_as_before(tmp_path):
    """CRLF line ends, blank lines, signed / exponent / fractional timestamps: accepted, every row kept."""
    folder = write_seq_dataset(tmp_path / "data", "odd", n_users=4, per_user=6)
    lines = (folder / "odd.inter").read_bytes().rstrip(b"\n").split(b"\n")
    lines[2], lines[3], lines[4] = b"u1\ti1\t-5", b"u1\ti2\t1.5e1", b"u1\ti3\t+16.25"
    (folder / "odd.inter").write_bytes(b"\r\n".join(lines[:10] + [b""] + lines[10:]) + b"\r\n\r\n")
    assert _dataset(tmp_path / "data", "odd").inter_num == 24


def test_encoding_key_reads_another_encoding_and_drops_in_it(tmp_path):
    folder = write_seq_dataset(tmp_path / "data", "latin", n_users=3, per_user=6)
    _edit_line(folder / "latin.inter", 2, "u1\tcafé\t999".encode("latin-1"))
    _edit_line(folder / "latin.inter", 3, "u1\tthé\t".encode("latin-1"))  # dropped: no timestamp
    dataset = _dataset(tmp_path / "data", "latin", encoding="latin-1", drop_incomplete_rows=True)
    assert dataset.inter_num == 17
    items = dataset.field2token_id[dataset.iid_field]
    assert "café" in items and "thé" not in items


def test_number_check_agrees_with_python_float():
    from recbole_ext.data.atomic_check import ByteClasses, non_numbers

    values = ["1", "-2", "+3.5", ".5", "5.", "1e9", "1E-3", "nan", "inf", "-inf", "", "1.2.3", "--1", "+", ".", "abc",
              "12a", " 7", "0x10"]
    data = "\t".join(values).encode()
    ends = np.cumsum([len(v.encode()) for v in values]) + np.arange(len(values))
    starts = ends - [len(v.encode()) for v in values]
    expected = []
    for v in values:
        try:
            expected.append(not np.isfinite(float(np.bytes_(v.encode()))) if v.isascii() else True)
        except ValueError:
            expected.append(True)
    data = np.frombuffer(data, np.uint8)
    for rows in (0, 10**6):  # a reduction over the file / binary searches among its few non-numeric bytes
        classes = ByteClasses(data, "\t", rows)
        assert (classes.odd is None) == (rows == 0)
        assert non_numbers(data, starts, ends, classes).tolist() == expected


class _Config(dict):
    def __missing__(self, key):  # as RecBole's Config: an unset key reads None
        return None


def test_quoted_values_are_left_to_pandas_and_single_column_files_are_checked(tmp_path):
    from recbole.utils import FeatureSource

    from recbole_ext.data.atomic_check import check_file

    config = _Config(field_separator="\t")
    item = tmp_path / "x.item"
    item.write_text('item_id:token\ttitle:token_seq\ni1\t"A\tB"\ni2\tC\n')  # pandas reads "A<TAB>B" as one value
    assert check_file(str(item), config, FeatureSource.ITEM, None, set()) is None
    single = tmp_path / "y.item"
    single.write_text("item_id:token\ni1\ni\t2\n")
    with pytest.raises(ValueError, match=r"y.item: line 3 has 2 fields, the header has 1"):
        check_file(str(single), config, FeatureSource.ITEM, None, set())
    empty = tmp_path / "z.item"
    empty.write_text("")
    with pytest.raises(ValueError, match="z.item is empty or its first line is blank"):
        check_file(str(empty), config, FeatureSource.ITEM, None, set())


def test_quoted_numbers_and_an_unused_rating_with_gaps_load(tmp_path):
    """Every value quoted (a common CSV export) reads as numbers through pandas; a sequential run that never reads
    the rating is not refused for an empty one (it was, after the checks landed; RecBole's fill is harmless there)."""
    folder = write_seq_dataset(tmp_path / "data", "quoted", n_users=4, per_user=6)
    lines = (folder / "quoted.inter").read_text().splitlines()
    rows = [lines[0]] + ["\t".join(f'"{v}"' for v in line.split("\t")) for line in lines[1:]]
    (folder / "quoted.inter").write_text("\n".join(rows) + "\n")
    assert _dataset(tmp_path / "data", "quoted").inter_num == 24
    folder = write_seq_dataset(tmp_path / "data", "rated", n_users=4, per_user=6)
    lines = (folder / "rated.inter").read_text().splitlines()
    lines = [lines[0] + "\trating:float"] + [line + ("\t" if i == 3 else "\t4") for i, line in enumerate(lines[1:])]
    (folder / "rated.inter").write_text("\n".join(lines) + "\n")
    dataset = _dataset(tmp_path / "data", "rated", load_col={"inter": ["user_id", "item_id", "timestamp", "rating"]})
    assert dataset.inter_num == 24
