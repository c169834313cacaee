"""Writing files so that a failure or a kill never leaves a half-written file nor replaces a good one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def replace_file(write: Callable[[Path], object], path: str | Path) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it over ``path`` (atomic on one filesystem);
    on any error the temporary file is removed and an earlier ``path`` stays as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
