"""Two process-wide CPU settings a training run applies (``malloc_reuse``, ``flush_denormal``; both on by default).

* **malloc_reuse** — PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold
  (at most 32 MiB under its dynamic rule) with a fresh ``mmap`` and returns it with ``munmap`` on free, so each large
  activation of a training step is page-faulted in again, every page zeroed by the kernel first: on a 42 MB tensor
  about as long as the arithmetic (measured: ``tanh`` of [8192, 1280] 38 ms into fresh memory, 15 ms into reused
  memory). Raising the mmap and trim thresholds keeps those blocks in the heap for the next step: what PyTorch's CPU
  performance guide gets by preloading jemalloc or tcmalloc, without a preload. Cost: memory freed after the peak
  stays with the process (the peak RSS itself does not change).
* **flush_denormal** — float32 values below 1.2e-38 ("denormals") take a slow path in x86 arithmetic, tens of times
  slower per element. Small loss weights meet them: Re4's ReAttend gradient (weight 0.001 times softmax
  probabilities) made one [1024, 64, 8] x [1024, 8, 20] product take 34 ms instead of 2. Flushing them to zero
  changes no result above that scale.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
_LIMIT = 1 << 30  # blocks up to 1 GiB come from the heap; anything larger is still mapped and unmapped


def keep_freed_memory() -> bool:
    """Set glibc's thresholds. -> whether they were set (False off glibc, e.g. macOS or musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))


def apply(config) -> None:
    """Apply the settings a run's config asks for (idempotent)."""
    if config["malloc_reuse"]:
        keep_freed_memory()
    if config["flush_denormal"]:
        torch.set_flush_denormal(True)  # False (and nothing set) on CPUs without the flag
