"""The built wheel holds the whole package: every module, the stub and the py.typed marker
(an editable install hides a package left out of the wheel)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # builds a wheel (about 10 s)
def test_the_wheel_holds_every_module(tmp_path):
    src = tmp_path / "src"  # a copy without the checkout's build/ (setuptools would reuse it)
    shutil.copytree(ROOT / "gradattr", src / "gradattr", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    wheel = next(tmp_path.glob("gradattr-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gradattr").rglob("*.py")}
    assert len(wanted) > 90
    assert wanted - names == set()
    assert {"gradattr/api.pyi", "gradattr/py.typed"} <= names
