"""The numeric tests pass on the other CPU kernels torch can pick, not only this machine's.

torch chooses its vectorised kernels by CPU (AVX-512 on recent Intel, AVX2 on most AMD EPYC, plain C elsewhere), so
a tolerance tuned on one vendor can fail on another. ``ATEN_CPU_CAPABILITY`` forces a narrower set; the tests that
compare two computations of one quantity (fast kernel vs plain definition, packed vs dense, fused vs plain optimizer)
run again under each in a fresh process (the variable is read once, at torch's import)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENCE_TESTS = ["tests/test_speed_kernels.py", "tests/test_layers.py", "tests/test_sequential_path.py",
                     "tests/test_re4.py", "tests/test_timirec.py"]


def _cpu_flags() -> set[str]:
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_equivalence_tests_pass_on_other_kernels(capability):
    if capability == "avx2" and "avx2" not in _cpu_flags():
        pytest.skip("this CPU has no AVX2")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:warnings", *EQUIVALENCE_TESTS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
