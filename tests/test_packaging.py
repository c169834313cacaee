"""The wheel a user installs carries every file the package reads at run time."""

import subprocess
import sys
import zipfile
from pathlib import Path

import recbole_ext

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_every_properties_file_and_every_subpackage(tmp_path):
    # no build isolation: the test venv's setuptools builds it, offline, in a few seconds
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    wheel, = tmp_path.glob("recbole_ext-*.whl")
    assert wheel.name.startswith(f"recbole_ext-{recbole_ext.__version__}-")  # one version source
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("recbole_ext/properties/") for n in names if n.startswith("recbole_ext/properties/")}
    on_disk = {p.relative_to(ROOT / "properties").as_posix() for p in (ROOT / "properties").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert "overall.yaml" in on_disk and on_disk <= shipped, sorted(on_disk - shipped)
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "recbole_ext").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert any(n.endswith("/licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
