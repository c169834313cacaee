"""The process-wide CPU settings of recbole_ext.cpu take effect (glibc keeps freed memory, denormals flush)."""

import sys

import pytest
import torch

from recbole_ext import cpu


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux's")
def test_freed_blocks_stay_mapped_for_reuse():
    assert cpu.keep_freed_memory()
    block = torch.ones(32 * 2**20)  # 128 MB: above glibc's largest default mmap threshold (32 MiB)
    held = _rss_mb()
    del block
    assert _rss_mb() > held - 64  # not unmapped on free (without the setting RSS falls by 128 MB here)
    again = torch.ones(32 * 2**20)
    assert _rss_mb() < held + 64  # the next block of that size reuses those pages
    del again


def test_denormals_flush_to_zero_when_asked():
    cpu.apply({"malloc_reuse": False, "flush_denormal": True})
    try:
        assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
        assert (torch.tensor([1e-37]) * 1.0).item() == pytest.approx(1e-37)  # normal numbers are untouched
    finally:
        torch.set_flush_denormal(False)
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0
