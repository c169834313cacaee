"""What the benchmark scripts share: each measurement runs in a fresh child process (its own RNG state and peak
RSS) that prints one ``RESULT <json>`` line."""

from __future__ import annotations

import json
import subprocess
import sys


def launch(script: str, *args: str) -> dict:
    """Run ``python script args...``; its last ``RESULT`` line as a dict with ``status: ok``, or the failure's
    last stderr line as ``status``."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        return {"status": f"failed: {tail}"}
    return {"status": "ok", **json.loads(lines[-1][len("RESULT "):])}
