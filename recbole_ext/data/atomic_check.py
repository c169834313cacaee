"""Atomic files checked before RecBole parses them, in one place: a wrap of ``Dataset._load_feat``, the one method
through which RecBole reads every atomic file (``.inter``, the benchmark ``.<part>.inter`` files, ``.user``, ``.item``
and additional features), installed with the other data hooks (:func:`recbole_ext.data.hooks.install_hooks`).

RecBole reads these files with pandas' Python parser and fills what is missing, so a broken file either fails with a
message naming neither file nor line or, worse, loads as a silently different dataset: a tab inside an id shifts the
columns (the real timestamp is dropped), an empty timestamp is filled with the column mean (the user's history is
reordered and the test target changes). Each check below fails with one line naming file, line, column and the fix:

* the bytes must decode with the ``encoding`` config key (default UTF-8);
* the header must be ``name:type`` fields, and must not repeat in the body (files concatenated with their headers);
* every row must have the header's number of fields (checked for a one-character ``field_separator``; a line
  holding a '"' is left to pandas, which reads a quoted value whole);
* the file must have rows;
* the fields the run needs (``needed_fields``: the timestamp of sequential models and time-ordered splits, the label,
  the rating, a ``threshold`` field, the user label of ``task: user_classification``) must hold finite numbers
  (non-empty tokens for a token field). With ``drop_incomplete_rows: True`` such rows are dropped instead (logged).

Cost: the file is read once as bytes; lines, separators and the needed columns are found with numpy over the raw
bytes (no Python loop per row), and a message is built only for the first bad line.
"""

from __future__ import annotations

import codecs
import math
import os
import tempfile
from dataclasses import dataclass
from logging import getLogger

import numpy as np
from recbole.data.dataset import Dataset
from recbole.utils import FeatureSource, FeatureType, ModelType

TYPES = tuple(t.value for t in FeatureType)
_SAME_BYTES = ("utf-8", "ascii")  # codecs' names of the encodings whose bytes are UTF-8's
_SIGN = np.zeros(256, dtype=bool)
_SIGN[[ord("-"), ord("+")]] = True


@dataclass
class Lines:
    """The non-blank lines of a file (``pandas`` skips blank ones): byte offsets of each line's start and end
    (``\\r\\n`` excluded) and its 1-based line number; row 0 is the header."""
    data: np.ndarray  # the file's bytes, uint8 (UTF-8, whatever the file's encoding)
    starts: np.ndarray
    ends: np.ndarray
    numbers: np.ndarray

    def text(self, row: int, limit: int = 80) -> str:
        raw = self.data[self.starts[row]:self.ends[row]].tobytes().decode("utf-8", "replace")
        return raw if len(raw) <= limit else raw[:limit] + "..."


def split_lines(data: np.ndarray, crlf: bool = True) -> Lines:
    """``crlf``: the file may hold a \r (else the look for \r\n line ends is skipped)."""
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(data)]])
    if crlf:
        ends -= (ends > starts) & (data[np.maximum(ends - 1, 0)] == 13)
    numbers = np.arange(1, len(starts) + 1)
    keep = ends > starts
    keep[0] = True  # the header stays row 0 even when empty (then refused)
    if keep.all():  # no blank line: no copies
        return Lines(data, starts, ends, numbers)
    return Lines(data, starts[keep], ends[keep], numbers[keep])


def decode(path: str, raw: bytes, encoding: str, sep: str) -> np.ndarray:
    """The file's bytes as UTF-8 (uint8); bytes invalid in ``encoding`` are refused naming line and column."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        column = raw.count(sep.encode(), line_start, exc.start) + 1
        raise ValueError(f"{path}: line {line}, column {column}: byte 0x{raw[exc.start]:02x} is not valid {encoding}; "
                         f"save the file as {encoding}, or set the encoding config key to the file's encoding "
                         "(e.g. encoding: latin-1)") from None
    if encoding not in _SAME_BYTES:
        raw = text.encode("utf-8")  # offsets below are over UTF-8 bytes, whatever the file's encoding
    return np.frombuffer(raw, dtype=np.uint8)


def header_fields(path: str, lines: Lines, sep: str) -> list[str]:
    """The header's ``name:type`` fields; a file with no header or a field without a known type is refused."""
    header = lines.text(0, limit=10**6)
    if not header:
        raise ValueError(f"{path} is empty or its first line is blank; the first line must be the header "
                         f"(name:type fields, e.g. user_id:token{sep}item_id:token)")
    fields = header.split(sep)
    for column, field in enumerate(fields, 1):
        name, _, kind = field.partition(":")
        if not name or kind not in TYPES:
            raise ValueError(f"{path}: line 1, column {column}: header field {field!r} is not name:type with a type "
                             f"of {', '.join(TYPES)} (is the first line the header? is field_separator {sep!r}?)")
    return fields


def check_shape(path: str, lines: Lines, fields: list[str], sep: str) -> np.ndarray | None:
    """Refuse a header-only file, a repeated header line and rows whose field count differs from the header's.
    -> the separators' byte offsets, [rows, fields - 1] (None for a separator of several characters)."""
    if len(lines.starts) < 2:
        raise ValueError(f"{path} has a header but no rows; add the rows or remove the file")
    data, header = lines.data, lines.data[lines.starts[0]:lines.ends[0]].tobytes()
    buffer, at = data.tobytes(), 0  # bytes.find: a C search, and a repeat is rare
    while (at := buffer.find(b"\n" + header, at + 1)) >= 0:
        after = at + 1 + len(header)
        if after == len(buffer) or buffer[after] in b"\r\n":
            line = buffer.count(b"\n", 0, at) + 2
            raise ValueError(f"{path}: line {line} repeats the header line; remove it "
                             "(were files concatenated with their headers?)")
    if len(sep.encode()) != 1:
        return None  # RecBole reads a longer separator as a regular expression: no byte count can mirror it
    separators, width = np.flatnonzero(data == ord(sep)), len(fields) - 1
    if len(separators) == len(lines.starts) * width:  # then every line has `width` iff each block lies in its line
        grid = separators.reshape(len(lines.starts), width)
        if width == 0 or ((grid[:, 0] >= lines.starts) & (grid[:, -1] < lines.ends)).all():
            return grid
    counts = np.searchsorted(separators, lines.ends) - np.searchsorted(separators, lines.starts)
    bad = np.flatnonzero(counts != width)
    quotes = np.flatnonzero(data == ord('"'))  # pandas reads a "quoted" value whole, separators and newlines included
    bad = bad[np.searchsorted(quotes, lines.ends[bad]) == np.searchsorted(quotes, lines.starts[bad])]
    if not len(bad):
        return None  # only lines with quotes differ: RecBole's parser decides, and the value checks are skipped
    row = bad[0]
    raise ValueError(f"{path}: line {lines.numbers[row]} has {counts[row] + 1} fields, the header has {len(fields)} "
                     f"({len(bad)} such line(s)); a value holds the separator {sep!r} or a field is missing: "
                     f"fix the line ({lines.text(row)!r})")


def column_bounds(lines: Lines, separators: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets of one column's values in the data rows: (starts, ends)."""
    starts = lines.starts[1:] if column == 0 else separators[1:, column - 1] + 1
    ends = lines.ends[1:] if column == separators.shape[1] else separators[1:, column]
    return starts, ends


class ByteClasses:
    """What the numeric columns of one file are checked against, computed once per file:

    * ``plain``: digit or '.' per byte (+ a False sentinel: reduceat needs every index below the length);
    * ``odd``: the offsets of the bytes that are none of digit, '.', separator, line end, when there are at most one
      per row (a numeric file such as ml-1m's .inter): a column is then checked by two binary searches instead of a
      reduction over the whole file; else None;
    * ``second_dots``: the offsets of every '.' that has another '.' earlier in its value (normally none)."""

    def __init__(self, data: np.ndarray, sep: str, rows: int):
        dot = data == ord(".")
        self.plain = np.zeros(len(data) + 1, dtype=bool)
        np.less(data - np.uint8(ord("0")), 10, out=self.plain[:-1])  # a digit (the uint8 subtraction wraps the rest):
        self.plain[:-1] |= dot  # comparisons, ~4x faster than a 256-entry lookup over the whole file
        odd = ~self.plain[:-1]
        for byte in (ord(sep), 10, 13):
            odd &= data != byte
        self.odd = np.flatnonzero(odd) if np.count_nonzero(odd) <= rows else None
        del odd
        dots = np.flatnonzero(dot)
        if len(dots) < 2:
            self.second_dots = dots[:0]
            return
        # two consecutive dots share a value iff only digits lie between them (separators and line ends are not plain)
        between = np.logical_and.reduceat(self.plain, np.column_stack([dots[:-1] + 1, dots[1:]]).ravel())[::2]
        self.second_dots = dots[1:][(dots[1:] == dots[:-1] + 1) | between]

    def plain_decimals(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Values [starts, ends) made of digits and at most one '.', with a digit; no sign (bool, [rows])."""
        if self.odd is not None:
            only_plain = np.searchsorted(self.odd, starts) == np.searchsorted(self.odd, ends)
        else:
            only_plain = np.logical_and.reduceat(self.plain, np.column_stack([starts, ends]).ravel())[::2]
        if len(self.second_dots):
            only_plain &= np.searchsorted(self.second_dots, starts) == np.searchsorted(self.second_dots, ends)
        lengths = ends - starts  # a lone '.' has no digit; an empty value's only_plain is meaningless
        return only_plain & ((lengths > 1) | ((lengths == 1) & (data[np.minimum(starts, len(data) - 1)] != ord("."))))


def non_numbers(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, classes: ByteClasses) -> np.ndarray:
    """Rows whose value is empty or no finite number (bool, [rows]). Plain decimals (an optional sign, digits, at
    most one '.') are recognised on the file's bytes at once; only the rest (1e9, nan, text) is parsed as floats."""
    sign = (ends > starts) & _SIGN[data[np.minimum(starts, len(data) - 1)]]
    plain = classes.plain_decimals(data, starts + sign, ends)
    bad = ends == starts
    rest = np.flatnonzero(~plain & ~bad)
    if len(rest):
        bad[rest] = ~np.isfinite(_floats(_strings(data, starts[rest], ends[rest])))
    return bad


def _strings(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The values as a bytes array (S<width>), gathered a character position at a time (no [rows, width] index)."""
    lengths = ends - starts
    width = int(lengths.max())
    chars = np.zeros((len(starts), width), dtype=np.uint8)
    for c in range(width):
        inside = np.flatnonzero(lengths > c)
        chars[inside, c] = data[starts[inside] + c]
    return chars.view(f"S{width}").ravel()


def _floats(values: np.ndarray) -> np.ndarray:
    try:
        return values.astype(np.float64)
    except ValueError:  # some value is no number: parse one by one (only the rows the fast path left)
        return np.array([_float(v) for v in values])


def _float(value: bytes) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def needed_fields(config, source) -> dict[str, str]:
    """Fields of ``source``'s file whose values the run cannot do without -> why (RecBole would fill a missing one
    with the column mean, or a token field with a new token, and go on)."""
    needs = {}
    if source == FeatureSource.INTERACTION:
        if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            needs[config["TIME_FIELD"]] = f"it orders each user's history for {config['model']}"
        elif (config["eval_args"] or {}).get("order") == "TO":
            needs[config["TIME_FIELD"]] = "it orders the split (eval_args order: TO)"
        for field in config["threshold"] or {}:
            needs[field] = "threshold derives the label from it"
        if config["protocol"] in ("ctr", "libfm") or config["feedback_field"] == config["RATING_FIELD"]:
            needs.setdefault(config["RATING_FIELD"], "it is the rating")  # only where the run reads it
        needs[config["LABEL_FIELD"]] = "it is the label"
    elif source == FeatureSource.USER and config["task"] == "user_classification" and config["label"]:
        needs[config["label"]] = "task: user_classification predicts it"
    return {field: why for field, why in needs.items() if field}


def incomplete_rows(path: str, lines: Lines, separators: np.ndarray, fields: list[str], sep: str,
                    needs: dict[str, str], drop: bool) -> np.ndarray:
    """Data rows (0-based) missing a needed value; without ``drop`` the first one is refused naming the column."""
    missing, classes = np.zeros(len(lines.starts) - 1, dtype=bool), None
    for column, field in enumerate(fields):
        name, _, kind = field.partition(":")
        if name not in needs:
            continue
        starts, ends = column_bounds(lines, separators, column)
        quoted = (ends > starts) & (lines.data[np.minimum(starts, len(lines.data) - 1)] == ord('"'))
        if quoted.any():  # pandas unquotes "978300760" into a number: leave quoted columns to it
            continue
        if kind == "float":
            classes = classes or ByteClasses(lines.data, sep, len(lines.starts))
        bad = non_numbers(lines.data, starts, ends, classes) if kind == "float" else ends == starts
        if bad.any() and not drop:
            row = int(bad.argmax())
            value = lines.data[starts[row]:ends[row]].tobytes().decode("utf-8", "replace")
            what = f"is not a number ({value!r})" if value else "is empty"
            raise ValueError(f"{path}: line {lines.numbers[row + 1]}, column {column + 1} ({name}) {what}, and the run "
                             f"needs it ({needs[name]}; {int(bad.sum())} such row(s)): fix the value, or set "
                             "drop_incomplete_rows: True to drop such rows")
        missing |= bad
    return np.flatnonzero(missing)


def without_rows(lines: Lines, rows: np.ndarray) -> bytes:
    """The file's bytes with data rows blanked (pandas skips blank lines, so line numbers elsewhere stay)."""
    starts, ends = lines.starts[rows + 1], lines.ends[rows + 1]
    ends = ends + (lines.data[np.minimum(ends, len(lines.data) - 1)] == 13)  # the \r of a \r\n line end too
    inside = np.zeros(len(lines.data) + 1, dtype=np.int8)  # +1 / -1 at each range's ends (disjoint: a sum of 0 or 1)
    inside[starts], inside[ends] = 1, -1
    return lines.data[np.cumsum(inside[:-1], dtype=np.int8) == 0].tobytes()


def check_file(path: str, config, source, load_col: set[str] | None, unload_col: set[str]) -> bytes | None:
    """Every check of the module on one atomic file; ``load_col`` / ``unload_col``: as RecBole parses them.
    -> None, or the file's bytes without its incomplete rows (``drop_incomplete_rows``)."""
    sep, encoding = config["field_separator"] or "\t", codecs.lookup(config["encoding"] or "utf-8").name  # pandas'
    with open(path, "rb") as file:
        raw = file.read()
    lines = split_lines(decode(path, raw, encoding, sep), crlf=b"\r" in raw)  # `in`: a C scan
    fields = header_fields(path, lines, sep)
    separators = check_shape(path, lines, fields, sep)
    needs = {field: why for field, why in needed_fields(config, source).items()
             if (load_col is None or field in load_col) and field not in unload_col}
    if separators is None or not needs:
        return None
    drop = bool(config["drop_incomplete_rows"])
    rows = incomplete_rows(path, lines, separators, fields, sep, needs, drop)
    if not len(rows):
        return None
    if len(rows) == len(lines.starts) - 1:
        raise ValueError(f"{path}: every row misses a value of {', '.join(needs)}, so drop_incomplete_rows leaves none")
    getLogger().warning(f"drop_incomplete_rows: {len(rows)} of {len(lines.starts) - 1} rows of {path} dropped "
                        f"(an empty or non-numeric {' / '.join(needs)})")
    kept = without_rows(lines, rows)
    return kept if encoding in _SAME_BYTES else kept.decode("utf-8").encode(encoding)


def _checked(load_feat):
    def load_feat_checked(self, filepath, source):
        load_col, unload_col = self._get_load_and_unload_col(source)
        if load_col == set() or not os.path.isfile(filepath):
            return load_feat(self, filepath, source)  # RecBole loads nothing of it, or names the missing file
        kept = check_file(str(filepath), self.config, source, load_col, unload_col or set())
        if kept is None:
            return load_feat(self, filepath, source)
        handle, temporary = tempfile.mkstemp(suffix="-" + os.path.basename(filepath))  # RecBole reads a path
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(kept)
            return load_feat(self, temporary, source)
        finally:
            os.unlink(temporary)

    load_feat_checked._recbole_ext = True
    return load_feat_checked


def install() -> None:
    """Wrap ``Dataset._load_feat`` once."""
    if not getattr(Dataset._load_feat, "_recbole_ext", False):
        Dataset._load_feat = _checked(Dataset._load_feat)
