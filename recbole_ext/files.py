"""Writing files so that a failure or a kill never leaves a half-written file nor replaces a good one."""

from __future__ import annotations

import glob
import os
import secrets
from pathlib import Path
from typing import Callable


def replace_file(write: Callable[[Path], object], path: str | Path, exclusive: bool = False) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it over ``path`` (atomic on one filesystem);
    on any error the temporary file is removed and an earlier ``path`` stays as it was.

    ``exclusive``: ``path`` must not exist yet (a file another run wrote is never replaced): the finished temporary
    file is hard-linked to ``path``, which fails atomically when ``path`` exists -> ``FileExistsError``."""
    path = Path(path)
    # pid and a random part: two threads (or a pid reused after a kill) never share a temporary file
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        write(tmp)
        if exclusive:
            _create(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _create(tmp: Path, path: Path) -> None:
    """Publish ``tmp`` as ``path`` only if ``path`` does not exist."""
    try:
        os.link(tmp, path)  # atomic create-if-absent, with the whole content at once
    except FileExistsError:
        raise FileExistsError(f"{path} exists and was written by another run; it is kept as it is") from None
    except OSError:  # a filesystem without hard links: claim the name, then rename over the (empty) claim
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(tmp, path)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a leftover of a dead writer may be removed; a live one's never)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(path: str | Path) -> None:
    """Remove the temporary files of ``path`` that a killed writer left (SIGKILL skips ``replace_file``'s cleanup):
    those whose process is gone; a live writer's file is kept."""
    path = Path(path)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            tmp.unlink(missing_ok=True)


class NotWritable(ValueError):
    """A folder files are to be written into cannot take them (a one-line error of the CLI)."""


def check_writable(folder: str | Path, what: str, create: bool = False) -> None:
    """Fail now, in one line naming ``what``, when no file can be written into ``folder`` (instead of after the
    scoring or training that produced it). ``create``: the folder may be missing when its nearest existing parent
    takes new entries (the writer creates it); otherwise it must exist. Nothing is created here."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != folder and not create:
        raise FileNotFoundError(f"{what}: folder {folder} does not exist; create it or choose another folder")
    if not existing.is_dir():
        raise NotWritable(f"{what}: {existing} is a file, not a folder; choose a folder for {folder}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NotWritable(f"{what}: folder {existing} is not writable; choose a folder you can write to")
