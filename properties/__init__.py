"""Where recbole_ext's YAMLs live (this folder ships in the wheel as ``recbole_ext.properties``).

``overall.yaml``: the plugin-wide keys; ``model/<Model>.yaml``: each model's keys; ``protocol/<name>.yaml``: the
protocol presets (``protocol: <name>``); ``tune/``: example search spaces.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def protocols() -> list[str]:
    """The names ``protocol:`` accepts: every preset, and ``recbole`` (RecBole's own evaluation)."""
    return sorted(p.stem for p in (FOLDER / "protocol").glob("*.yaml")) + ["recbole"]
