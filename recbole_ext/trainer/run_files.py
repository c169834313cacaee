"""Atomic checkpoint writes, and the files one run owns.

Every file is written to a temporary name and renamed, so a kill mid-write leaves the previous file intact; the
first write of each of a run's own files (those named after its checkpoint, :mod:`recbole_ext.checkpoints`) is
exclusive, so a file another run wrote is never replaced.
"""

from __future__ import annotations

import torch

from recbole_ext.checkpoints import EXTENSION
from recbole_ext.files import replace_file


def atomic_save(obj, path: str, exclusive: bool = False) -> None:
    """``torch.save`` through a temporary file: readers never see a half-written checkpoint. ``exclusive``: fail
    (``FileExistsError``) rather than replace an existing ``path``."""
    replace_file(lambda tmp: torch.save(obj, tmp, pickle_protocol=4), path, exclusive=exclusive)


class RunFiles:
    """The files of the run whose checkpoint is ``checkpoint``: the stages of a multi-stage run share one."""

    def __init__(self, checkpoint: str):
        self.stem = checkpoint[:-len(EXTENSION)]  # this run's files start with it
        self.written: set[str] = set()  # files this run wrote (it may replace those)

    def save(self, obj, path: str) -> None:
        """:func:`atomic_save`, exclusive on the first write of one of this run's own files."""
        path = str(path)
        atomic_save(obj, path, exclusive=path.startswith(self.stem) and path not in self.written)
        self.written.add(path)
