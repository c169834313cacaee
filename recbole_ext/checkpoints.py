"""What a checkpoint knows about its run and its data, so that it is never confused with another run's and never
used on data it was not trained on.

* **Names**: RecBole names a checkpoint after the second its run started (``ComiRec-Dec-07-2026_23-22-25.pth``),
  so two runs started in one second wrote one file. A run adds a random id (``...-a1b2c3.pth``) that no file in the
  checkpoint folder starts with; every derived name follows it, and the first write of each of the run's files is
  exclusive (:func:`recbole_ext.files.replace_file`). The derived names are spelled here alone: a first stage's
  checkpoint (:func:`stage_file`: ``-pretrain.pth``, ``-fm.pth``), each checkpoint's resume file
  (:func:`resume_file`: ``-resume.pth``), and the list of them all (:func:`companions`).
* **Dataset fingerprint** (``FINGERPRINT_KEY`` in every checkpoint and resume file): the SHA-256, size and line
  count of every data file of the dataset's folder (``<dataset>.*``: the atomic files, benchmark splits and shipped
  negatives that RecBole and the protocols read, ``DATA_SUFFIXES``) plus the user and item id maps of the loaded
  dataset. The files' bytes are cheap to hash (one sequential read, no parsing, ~1 s per GB), do not depend on the
  configuration (so a checkpoint evaluated under another protocol is still checked), and catch any edit, reordered
  timestamps included; the id maps say in words what changed ("40 -> 41 items") and are what the saved weights are
  indexed by.
* **Data path**: stored absolute, so a checkpoint works from any working folder; a checkpoint written before, with
  a relative ``data_path``, is looked up from the folder its run started in (inferred from where it lies).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import warnings
from pathlib import Path
from typing import Callable

FINGERPRINT_KEY = "dataset_fingerprint"
# what RecBole reads (atomic files, benchmark splits such as <dataset>.train.inter) and the shipped negatives
# (<dataset>.test.neg); a backup beside them (<dataset>.inter.bak) is no part of the data
DATA_SUFFIXES = (".inter", ".user", ".item", ".kg", ".link", ".net", ".neg")
_CHUNK = 1 << 20


class DatasetChanged(ValueError):
    """The dataset differs from the one a checkpoint was trained on."""


# --- names -------------------------------------------------------------------------------------------------------
EXTENSION = ".pth"
RESUME_SUFFIX = "-resume.pth"
# the first stages of the two-stage trainers: TiMiRec's extractor pretraining and the IFM family's FM warm start
FIRST_STAGES = ("pretrain", "fm")
BEST_FILE = "best.pth"  # the fixed checkpoint name of a sweep trial and of a Ray Train worker


def stage_file(main_path: str, stage: str) -> str:
    """``.../Model-<time>-<id>.pth`` -> ``.../Model-<time>-<id>-<stage>.pth``: the checkpoint of a first stage
    (one of ``FIRST_STAGES``: an unknown stage fails, so every stage file is one :func:`companions` lists)."""
    if stage not in FIRST_STAGES:
        raise ValueError(f"stage {stage!r} is not one of {FIRST_STAGES}")
    return f"{str(main_path)[:-len(EXTENSION)]}-{stage}{EXTENSION}"


def resume_file(checkpoint: str) -> str:
    """The resume file beside a checkpoint (the run's own or a first stage's): ``X.pth`` -> ``X-resume.pth``."""
    return str(checkpoint)[:-len(EXTENSION)] + RESUME_SUFFIX


def run_checkpoints(main_path: str) -> list[str]:
    """Every checkpoint a run may write: its own first (the final model, tested when present), then its first
    stages'."""
    return [str(main_path), *(stage_file(main_path, stage) for stage in FIRST_STAGES)]


def companions(main_path: str) -> list[str]:
    """Every file a run may write beside its checkpoint ``main_path``: the first stages' checkpoints, and the
    resume file of each checkpoint (its own first)."""
    checkpoints = run_checkpoints(main_path)
    return checkpoints[1:] + [resume_file(path) for path in checkpoints]


def main_checkpoint(path: str) -> str:
    """The run's own checkpoint for any file of the run (:func:`companions`), or ``path`` itself."""
    path = str(path)
    for suffix in (RESUME_SUFFIX, *(f"-{stage}{EXTENSION}" for stage in FIRST_STAGES)):
        if path.endswith(suffix):
            path = path[:-len(suffix)] + EXTENSION
    return path


def run_id() -> str:
    """Six hex digits: 16.7 million names per second and model, so a clash is a one-in-millions event."""
    return secrets.token_hex(3)


def unique_checkpoint(path: str, new_id: Callable[[], str] | None = None) -> str:
    """``.../Model-<time>.pth`` -> ``.../Model-<time>-<id>.pth`` where no file of the folder (a temporary one
    included) starts with ``Model-<time>-<id>``; a taken id is drawn again. ``new_id``: default :func:`run_id`."""
    new_id = new_id or run_id
    folder, name = os.path.split(path)
    taken = [n.lstrip(".") for n in os.listdir(folder or ".")] if os.path.isdir(folder or ".") else []
    while True:
        stem = f"{name[:-len(EXTENSION)]}-{new_id()}"
        if not any(n.startswith((f"{stem}.", f"{stem}-")) for n in taken):
            return os.path.join(folder, f"{stem}{EXTENSION}")


# --- fingerprint -------------------------------------------------------------------------------------------------
def _digest(path: Path) -> dict:
    sha, lines, size = hashlib.sha256(), 0, 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            lines += chunk.count(b"\n")
            size += len(chunk)
    return {"sha256": sha.hexdigest(), "bytes": size, "lines": lines}


def data_files(config) -> dict[str, dict]:
    """Digest of every data file of the dataset's folder (``config['data_path']``): ``<dataset>.*`` ending in one
    of ``DATA_SUFFIXES``."""
    folder, prefix = Path(config["data_path"]), f"{config['dataset']}."
    if not folder.is_dir():
        return {}
    return {p.name: _digest(p) for p in sorted(folder.iterdir())
            if p.name.startswith(prefix) and p.name.endswith(DATA_SUFFIXES) and p.is_file()}


def fingerprint(config, dataset=None) -> dict:
    """The dataset's fingerprint: its files' digests, and the user and item id maps of ``dataset`` (a loaded RecBole
    dataset, or a split of it) when given."""
    id_maps = {}
    for kind, field in (("user", getattr(dataset, "uid_field", None)), ("item", getattr(dataset, "iid_field", None))):
        if field is not None and field in dataset.field2id_token:  # plain lists: readable with weights_only=True
            id_maps[kind] = [str(token) for token in dataset.field2id_token[field]]
    return {"version": 1, "dataset": config["dataset"], "data_path": str(config["data_path"]),
            "files": data_files(config), "id_maps": id_maps}


def _id_change(kind: str, old: list[str], new: list[str]) -> str | None:
    if len(old) != len(new):  # index 0 is RecBole's [PAD]
        return f"{len(old) - 1:,} -> {len(new) - 1:,} {kind}s"
    if old != new:
        added = sorted(set(new) - set(old))
        return f"the {kind} ids differ ({len(added):,} new, e.g. {added[0]!r})" if added else \
            f"the {kind} ids are numbered differently"
    return None


def _file_changes(old: dict, new: dict) -> list[str]:
    changes = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if after is None:
            changes.append(f"{name} is gone")
        elif before is None:
            changes.append(f"{name} is new")
        elif before["sha256"] != after["sha256"]:
            changes.append(f"{name}: {before['lines']:,} -> {after['lines']:,} lines" if before["lines"] != after["lines"]
                           else f"{name}: the content differs (same {after['lines']:,} lines; sha256 "
                                f"{before['sha256'][:8]} -> {after['sha256'][:8]})")
    return changes


def changes(saved: dict, current: dict) -> str | None:
    """What differs between two fingerprints, in words (None when nothing does)."""
    ids = [c for kind in ("item", "user") if kind in saved["id_maps"] and kind in current["id_maps"]
           if (c := _id_change(kind, saved["id_maps"][kind], current["id_maps"][kind]))]
    files = _file_changes(saved["files"], current["files"])
    if ids and not files:  # same bytes, other ids: the loading configuration (filters, load_col) differs
        return (f"its files are unchanged, but this configuration loads {', '.join(ids)} (a filter or load_col "
                "differs from the training run's)")
    return "; ".join(ids + files) or None


def check_unchanged(saved: dict | None, current: dict, source: str | Path) -> None:
    """Refuse (one line) a dataset that differs from the checkpoint's; warn for a checkpoint without fingerprint."""
    if saved is None:
        warnings.warn(f"{source} has no dataset fingerprint (written by an older recbole_ext): whether dataset "
                      f"{current['dataset']!r} changed since cannot be checked; under protocol comirec its user "
                      "split is now ComiRec's own (Python's shuffle), so such a checkpoint's test users may include "
                      "users it trained on", stacklevel=2)
        return
    what = changes(saved, current)
    if what:
        raise DatasetChanged(f"dataset {current['dataset']!r} changed since {source} was written: {what}; train a new "
                             "model on it, or restore the data the checkpoint was trained on")


# --- data path ---------------------------------------------------------------------------------------------------
def locate_data(config, checkpoint: str | Path) -> None:
    """Point a checkpoint's ``config['data_path']`` at its dataset when the stored path does not exist from here:
    a relative path (checkpoints written before paths were stored absolute) is tried from the folder the run started
    in, inferred from the checkpoint's location and its ``checkpoint_dir`` (``saved/`` -> the folder above it)."""
    stored = Path(config["data_path"])
    if stored.is_dir():
        return
    relative = stored if not stored.is_absolute() else None
    if relative is None:
        return  # an absolute path that is gone: the dataset error names it
    folder, saved_dir = Path(checkpoint).resolve().parent, Path(config["checkpoint_dir"])
    roots = [folder.parent]
    if not saved_dir.is_absolute() and folder.parts[-len(saved_dir.parts):] == saved_dir.parts:
        roots.insert(0, Path(*folder.parts[:-len(saved_dir.parts)]))
    for root in roots:
        if (root / relative).is_dir():
            config["data_path"] = str(root / relative)
            return
