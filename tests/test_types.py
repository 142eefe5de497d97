"""``mypy`` finds no error in the package: ``python -m mypy`` run from this checkout's root,
with the settings of ``pyproject.toml``'s ``[tool.mypy]`` (the files it checks, third-party
packages without stubs read as ``Any``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # this checkout, not an installed gradattr


@pytest.mark.slow  # mypy takes about a minute on 2 cores
def test_mypy_finds_no_error_in_the_package(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")],
                         capture_output=True, text=True, cwd=ROOT)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    # the package itself was checked (not an empty file list): "no issues found in N source files"
    checked = int(output.split("Success: no issues found in ")[1].split()[0])
    assert checked >= len(list((ROOT / "gradattr").rglob("*.py"))), output
