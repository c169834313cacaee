"""Raw dataset files -> RecBole atomic files under ``<data_path>/<name>/``.

Each converter builds the whole dataset in a hidden sibling folder and renames it into place, so an
interrupted run never leaves a half-written dataset (an older copy is replaced only once the new one is
complete).

* ``ml-1m``: MovieLens-1M ``ratings.dat``/``users.dat``/``movies.dat`` (``::``-separated, latin-1), with
  RecBole's own ml-1m field names and types.
* ``rechorus``: a ReChorus dataset folder (``train.csv``/``dev.csv``/``test.csv``, tab-separated
  ``user_id item_id time``; dev/test add ``neg_items``) keeping its split and its negatives exactly: the
  interactions are written train, dev, test in file order (RecBole's stable time sort then rebuilds ReChorus's
  sequences, ties included), and the fixed negatives go to ``<name>.valid.neg`` / ``<name>.test.neg``, which
  the fixed-negatives protocol reads and checks against RecBole's leave-one-out split.
* ``comirec``: ComiRec's preprocessed files (``<x>_train.txt``/``_valid.txt``/``_test.txt``, ``user,item,rank`` per
  line, as ComiRec's ``preprocess/data.py`` writes them) -> one ``name.inter`` whose ``comirec_part`` field keeps
  each user's part; ``protocol: comirec`` then uses that split and skips its filter (already applied).
* ``libfm``: libFM files (``*train*.libfm``, ``*valid*.libfm``, ``*test*.libfm``; ``label idx:1 idx:1 ...`` with one
  index per field) -> ``name.train.inter`` / ``.valid.inter`` / ``.test.inter`` (``label:float`` and one token field
  per libFM field, the split kept as RecBole benchmark files, ``protocol: libfm``). Fields come from a field map
  (name and index range per field) or, without one, from the positions, each position's index range inferred.
"""

from __future__ import annotations

import ast
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recbole_ext.files import alive


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, sep="\t", index=False)


_STARTED = time.time()  # no later than this process's start of any conversion


def _clean_stale_partials(root: Path, name: str) -> None:
    """Remove the ``.<name>.partial-<pid>-*`` folders killed conversions left: only those whose process is gone, or,
    carrying this process's pid (a reused one), made before this process; never a live conversion's."""
    prefix = f".{name}.partial-"
    for folder in root.iterdir():
        pid = folder.name[len(prefix):].split("-")[0]
        if not folder.name.startswith(prefix) or not pid.isdigit() or not folder.is_dir():
            continue  # a folder of an older version has no pid: it may be live, so it stays
        own = int(pid) == os.getpid()
        if (own and folder.stat().st_mtime < _STARTED) or (not own and not alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)


def _publish(build: Callable[[Path], None], data_path: str | Path, name: str) -> Path:
    """Run ``build(tmp_dir)`` then move the finished folder to ``data_path/name``. The temporary folder's name
    carries this process's pid, so the next conversion of ``name`` can remove it if this one is killed."""
    root = Path(data_path)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    _clean_stale_partials(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-{os.getpid()}-", dir=root))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        for file in tmp.iterdir():
            file.rename(tmp / file.name.replace("__NAME__", name))
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
            target.rename(old / name)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def _read_dat(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: point --src at the folder holding the MovieLens-1M .dat files")
    # Fast path: split on ':' with the C parser and keep every other column. A field holding ':' itself (movie
    # titles such as "Star Wars: Episode IV") breaks the column pattern; then use the slow '::' parser.
    try:
        frame = pd.read_csv(path, sep=":", header=None, dtype=str, encoding="latin-1", keep_default_na=False)
        if frame.shape[1] == 2 * len(columns) - 1 and (frame.iloc[:, 1::2] == "").all(axis=None):
            frame = frame.iloc[:, ::2]
            frame.columns = columns
            return frame
    except pd.errors.ParserError:
        pass
    return pd.read_csv(path, sep="::", engine="python", names=columns, dtype=str, encoding="latin-1",
                       keep_default_na=False)


def convert_ml1m(src: str | Path, data_path: str | Path = "dataset", name: str = "ml-1m") -> Path:
    """MovieLens-1M raw files -> ``name.inter`` (user_id, item_id, rating, timestamp), ``name.user`` (user_id,
    age, gender, occupation, zip_code), ``name.item`` (item_id, movie_title, release_year, genre)."""
    src = Path(src)
    ratings = _read_dat(src / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"])
    users = _read_dat(src / "users.dat", ["user_id", "gender", "age", "occupation", "zip_code"])
    movies = _read_dat(src / "movies.dat", ["item_id", "title", "genres"])

    inter = ratings.rename(columns={"user_id": "user_id:token", "item_id": "item_id:token",
                                    "rating": "rating:float", "timestamp": "timestamp:float"})
    user = pd.DataFrame({"user_id:token": users.user_id, "age:token": users.age, "gender:token": users.gender,
                         "occupation:token": users.occupation, "zip_code:token": users.zip_code})
    parts = movies.title.str.extract(r"^(.*?)\s*\((\d{4})\)\s*$")
    item = pd.DataFrame({
        "item_id:token": movies.item_id,
        "movie_title:token_seq": parts[0].fillna(movies.title).str.replace(r"\s+", " ", regex=True),
        "release_year:token": parts[1].fillna(""),
        "genre:token_seq": movies.genres.str.replace("|", " ", regex=False),
    })

    def build(tmp: Path) -> None:
        _write_atomic(inter, tmp / "__NAME__.inter")
        _write_atomic(user, tmp / "__NAME__.user")
        _write_atomic(item, tmp / "__NAME__.item")

    return _publish(build, data_path, name)


AGES = ["1", "18", "25", "35", "45", "50", "56"]  # MovieLens-1M's age codes -> class 0..6


def convert_mfn_ml1m(src: str | Path, data_path: str | Path = "dataset", name: str = "ml-1m-mfn",
                     active_min: int = 5, macro_len: int = 50) -> Path:
    """MovieLens-1M as MFN's two views: micro = the time-ordered ratings, ``item_cate`` the
    movie's first genre; macro = the first time the user touches each (first genre x release decade) bucket, the
    app category its decade. Each user's inputs stop at 90 % of its own time span; ``active`` = at least
    ``active_min`` ratings after that cutoff (those ratings are removed from both views); ``gender`` F/M -> 0/1,
    ``age`` code -> class 0..6. The macro view is a function of the micro one here: expect MFN ~ a single view."""
    src = Path(src)
    ratings = _read_dat(src / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"])
    users = _read_dat(src / "users.dat", ["user_id", "gender", "age", "occupation", "zip_code"])
    movies = _read_dat(src / "movies.dat", ["item_id", "title", "genres"]).set_index("item_id")
    year = movies.title.str.extract(r"\((\d{4})\)\s*$")[0].astype(float)
    first_genre = movies.genres.str.split("|").str[0]
    decade = "d" + (year // 10 * 10).fillna(0).astype(int).astype(str)
    ratings["timestamp"] = ratings.timestamp.astype(np.int64)
    ratings = ratings.sort_values(["user_id", "timestamp"], kind="stable")
    span = ratings.groupby("user_id").timestamp.agg(["min", "max"])
    cutoff = ratings.user_id.map(span["min"] + 0.9 * (span["max"] - span["min"]))
    after = ratings.timestamp > cutoff
    active = after.groupby(ratings.user_id).sum() >= active_min
    micro = ratings[~after]
    bucket = micro.item_id.map(first_genre) + "|" + micro.item_id.map(decade)
    touches = micro.assign(app=bucket.to_numpy(), cate=micro.item_id.map(decade).to_numpy()).drop_duplicates(
        ["user_id", "app"])
    macro = touches.groupby("user_id").tail(macro_len).groupby("user_id").agg(
        app=("app", " ".join), cate=("cate", " ".join), time=("timestamp", lambda t: " ".join(map(str, t))))
    users = users.set_index("user_id").loc[span.index]
    user = pd.DataFrame({"user_id:token": span.index,
                         "macro_app_seq:token_seq": macro.app.reindex(span.index).fillna("").to_numpy(),
                         "macro_cate_seq:token_seq": macro.cate.reindex(span.index).fillna("").to_numpy(),
                         "macro_time_seq:float_seq": macro.time.reindex(span.index).fillna("").to_numpy(),
                         "gender:float": (users.gender == "M").astype(float).to_numpy(),
                         "age:float": users.age.map(AGES.index).astype(float).to_numpy(),
                         "active:float": active.reindex(span.index).astype(float).to_numpy()})
    inter = pd.DataFrame({"user_id:token": micro.user_id, "item_id:token": micro.item_id,
                          "timestamp:float": micro.timestamp})
    item = pd.DataFrame({"item_id:token": movies.index, "item_cate:token": first_genre.to_numpy()})

    def build(tmp: Path) -> None:
        _write_atomic(inter, tmp / "__NAME__.inter")
        _write_atomic(user, tmp / "__NAME__.user")
        _write_atomic(item, tmp / "__NAME__.item")

    return _publish(build, data_path, name)


def _negative_cell(path: Path, line: int, text) -> str:
    """One ``neg_items`` cell (a Python list literal such as ``[12, 7]``) -> space-separated ids; a malformed cell is
    named by file, line and content (literal_eval would raise a bare SyntaxError or ValueError)."""
    try:
        items = ast.literal_eval(text) if isinstance(text, str) else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        items = None
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, (int, str)) for i in items):
        raise ValueError(f"{path}: line {line}: neg_items {text!r} is not a list of item ids such as [12, 7]; "
                         "fix the cell (ReChorus writes a Python list)")
    return " ".join(str(i) for i in items)


def _negatives(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The fixed negatives of a dev/test frame (read with its header: row r is line r + 2 of ``path``)."""
    negs = [_negative_cell(path, line, text) for line, text in enumerate(frame.neg_items, 2)]
    return pd.DataFrame({"user_id:token": frame.user_id, "item_id:token": frame.item_id, "neg_items:token_seq": negs})


def convert_rechorus(src: str | Path, data_path: str | Path = "dataset", name: str | None = None) -> Path:
    """ReChorus dataset folder -> ``name.inter`` (+ ``name.item`` from item_meta.csv) and the fixed negatives."""
    src = Path(src)
    name = name or src.name
    frames = {}
    for part in ("train", "dev", "test"):
        path = src / f"{part}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: --src must be a ReChorus dataset folder (train/dev/test.csv)")
        frames[part] = pd.read_csv(path, sep="\t", dtype=str)
        need = ["user_id", "item_id", "time"] + (["neg_items"] if part != "train" else [])
        missing = [c for c in need if c not in frames[part].columns]
        if missing:
            raise ValueError(f"{path} has no column {', '.join(missing)} (ReChorus {part}.csv: tab-separated "
                             f"{', '.join(need)})")
    inter = pd.concat([frames[p][["user_id", "item_id", "time"]] for p in ("train", "dev", "test")], ignore_index=True)
    inter.columns = ["user_id:token", "item_id:token", "timestamp:float"]
    negatives = {part: _negatives(frames[part], src / f"{part}.csv") for part in ("dev", "test")}  # before writing

    def build(tmp: Path) -> None:
        _write_atomic(inter, tmp / "__NAME__.inter")
        _write_atomic(negatives["dev"], tmp / "__NAME__.valid.neg")
        _write_atomic(negatives["test"], tmp / "__NAME__.test.neg")
        meta = src / "item_meta.csv"
        if meta.is_file():
            items = pd.read_csv(meta, sep="\t", dtype=str)
            items = items[["item_id"] + [c for c in items.columns if c.startswith("i_")]]  # r_* are relations
            _write_atomic(items.rename(columns=lambda c: f"{c}:token"), tmp / "__NAME__.item")

    return _publish(build, data_path, name)


def _read_comirec(path: Path) -> pd.DataFrame:
    """One ComiRec split file -> user, item, rank (strings); a malformed line is named by file and line."""
    try:
        frame = pd.read_csv(path, sep=",", header=None, names=["user", "item", "rank"], dtype=str,
                            keep_default_na=False)
    except pd.errors.ParserError as exc:  # pandas names the line ("Expected 3 fields in line 7, saw 4")
        raise ValueError(f"{path}: {str(exc).split('. ', 1)[-1].strip()} (need user,item,rank)") from None
    bad = (frame == "").any(axis=1) | ~frame["rank"].str.fullmatch(r"\d+")
    if bad.any():
        line = int(bad.to_numpy().argmax()) + 1
        raise ValueError(f"{path}: line {line} is not user,item,rank with an integer rank: "
                         f"{','.join(frame.iloc[line - 1])!r}")
    return frame


def convert_comirec(src: str | Path, data_path: str | Path = "dataset", name: str | None = None) -> Path:
    """ComiRec's preprocessed split -> ``name.inter`` (user_id, item_id, timestamp = the rank, comirec_part)."""
    src = Path(src)
    name = name or src.name
    parts = []
    for part in ("train", "valid", "test"):
        found = sorted(src.glob(f"*_{part}.txt"))
        if len(found) != 1:
            raise FileNotFoundError(f"{src}: need exactly one *_{part}.txt (ComiRec's preprocessed split), "
                                    f"found {len(found)}")
        parts.append(_read_comirec(found[0]).assign(part=part))
    inter = pd.concat(parts, ignore_index=True)
    if inter.groupby("user")["part"].nunique().max() > 1:
        raise ValueError(f"{src}: a user appears in two parts; ComiRec's split is user-disjoint")
    inter.columns = ["user_id:token", "item_id:token", "timestamp:float", "comirec_part:token"]
    return _publish(lambda tmp: _write_atomic(inter, tmp / "__NAME__.inter"), data_path, name)


def _read_libfm(path: Path) -> tuple[list[str], list[list[int]]]:
    """Labels and per-line feature indices of one libFM file; a bad line is named by file and line."""
    labels, rows, width = [], [], None
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                label = float(tokens[0])
                indices = [int(token.split(":", 1)[0]) for token in tokens[1:]]
            except ValueError:
                raise ValueError(f"{path}: line {number}: need 'label idx:value ...' with a numeric label and "
                                 f"integer indices, got {line.strip()[:80]!r}") from None
            if not math.isfinite(label):  # RecBole would fill a nan label with the split's mean label
                raise ValueError(f"{path}: line {number}: the label {tokens[0]!r} is not a finite number; "
                                 "give the line its label (e.g. -1 or 1) or remove it")
            width = len(indices) if width is None else width
            if len(indices) != width or not indices:
                raise ValueError(f"{path}: line {number} has {len(indices)} features, the file's first line {width}")
            labels.append(tokens[0])
            rows.append(indices)
    return labels, rows


def read_field_map(path: str | Path) -> list[tuple[str, int, int]]:
    """A libFM field map file: one ``name first_index last_index`` line per field."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if any(len(row) != 3 or not (row[1].isdigit() and row[2].isdigit()) for row in rows):
        raise ValueError(f"{path}: each line must be 'name first_index last_index'")
    field_map = [(row[0], int(row[1]), int(row[2])) for row in rows]
    check_field_map(field_map, str(path))
    return field_map


def check_field_map(field_map: list[tuple[str, int, int]], where: str = "field_map") -> None:
    """Each index must belong to one field: names unique, first <= last, no two ranges sharing an index (the
    assignment by range would otherwise put the shared indices in whichever field starts last)."""
    names = [entry[0] for entry in field_map]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: field {next(n for n in names if names.count(n) > 1)!r} is given twice")
    for name, first, last in field_map:
        if first > last:
            raise ValueError(f"{where}: field {name!r} has first index {first} above its last {last}")
    ordered = sorted(field_map, key=lambda entry: entry[1])
    for (name, first, last), (after, low, high) in zip(ordered, ordered[1:]):
        if low <= last:
            raise ValueError(f"{where}: fields {name!r} ({first}-{last}) and {after!r} ({low}-{high}) overlap; "
                             "give each index to one field")


def convert_libfm(src: str | Path, data_path: str | Path = "dataset", name: str | None = None,
                  field_map: list[tuple[str, int, int]] | None = None, fields: list[str] | None = None) -> Path:
    """libFM split -> atomic benchmark files. ``field_map``: (name, first index, last index) per field, indices
    assigned by range; without it, position m is field m and ``fields`` names them (default user_id, item_id,
    field_3, ...)."""
    src = Path(src)
    name = name or src.name
    files = {}
    for part, pattern in (("train", "*train*.libfm"), ("valid", "*valid*.libfm"), ("test", "*test*.libfm")):
        found = sorted(src.glob(pattern))
        if len(found) != 1:
            raise FileNotFoundError(f"{src}: need exactly one {pattern}, found {len(found)}")
        files[part] = found[0]
    parsed = {part: _read_libfm(path) for part, path in files.items()}
    widths = {len(rows[0]) for _, rows in parsed.values() if rows}
    if len(widths) != 1:
        raise ValueError(f"{src}: the files have different numbers of fields per line: {sorted(widths)}")
    width = widths.pop()
    frames = {part: pd.DataFrame(rows) for part, (_, rows) in parsed.items()}
    if field_map is None:
        names = fields or ["user_id", "item_id", *(f"field_{m + 1}" for m in range(2, width))]
        if len(names) != width:
            raise ValueError(f"{src}: {len(names)} field names for {width} fields per line")
        every = pd.concat(frames.values())
        lows, highs = every.min().to_numpy(), every.max().to_numpy()
        order = lows.argsort()
        if (lows[order][1:] <= highs[order][:-1]).any():
            raise ValueError(f"{src}: the positions' index ranges overlap, so fields cannot be inferred; "
                             "give a field map (name first last per field)")
    else:
        check_field_map(field_map)
        names = [entry[0] for entry in field_map]
        lows, highs = (np.array([entry[i] for entry in field_map]) for i in (1, 2))
        order = lows.argsort()
        for part, frame in frames.items():
            values = frame.to_numpy()
            slot = np.searchsorted(lows[order], values, side="right") - 1
            field = order[slot.clip(0)]
            outside = (slot < 0) | (values > highs[field])
            if outside.any() or len(field_map) != width:
                line = int(outside.any(axis=1).argmax()) + 1 if outside.any() else 1
                raise ValueError(f"{files[part]}: line {line} has an index outside every field of the map "
                                 f"({len(field_map)} fields for {width} per line)")
            arranged = np.full_like(values, -1)
            np.put_along_axis(arranged, field, values, axis=1)
            if (arranged < 0).any():
                line = int((arranged < 0).any(axis=1).argmax()) + 1
                raise ValueError(f"{files[part]}: line {line} has two indices in one field")
            frames[part] = pd.DataFrame(arranged)

    def build(tmp: Path) -> None:
        for part, frame in frames.items():
            out = frame.astype(str).set_axis([f"{n}:token" for n in names], axis=1)
            out.insert(0, "label:float", parsed[part][0])
            _write_atomic(out, tmp / f"__NAME__.{part}.inter")

    return _publish(build, data_path, name)


CONVERTERS = {"ml-1m": convert_ml1m, "rechorus": convert_rechorus, "comirec": convert_comirec, "libfm": convert_libfm,
              "mfn-ml1m": convert_mfn_ml1m}
