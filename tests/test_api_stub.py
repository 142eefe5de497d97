"""``gradattr/api.pyi``: the statically visible API, generated from the registry.

The public functions are made at import time from :data:`gradattr.registry.REGISTRY`
(``gradattr/api.py``), which type checkers and IDEs cannot see. The stub spells each
one out. This test fails when the stub drifts from the registry; regenerate it with
``python tests/test_api_stub.py --write``. A second test runs ``mypy`` on a short user
script that calls every public function.
"""
from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gradattr
from gradattr import registry

STUB = Path(gradattr.__file__).parent / "api.pyi"

HEADER = '''\
# Generated from gradattr.registry by `python tests/test_api_stub.py --write`; do not edit.
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .registry import Info

'''


def _param(p: inspect.Parameter) -> str:
    text = p.name
    if p.annotation is not inspect.Parameter.empty:
        text += f": {p.annotation}"
    elif p.name == "x":
        text += ": Any"
    elif p.name == "target":
        text += ": Any"
    if p.default is not inspect.Parameter.empty:
        text += f" = {p.default!r}" if not callable(p.default) else " = ..."
    return text


def render() -> str:
    out = [HEADER]
    for name, entry in registry.REGISTRY.items():
        sig = entry.signature()
        parts, star = [], False
        for p in sig.parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            parts.append(_param(p))
        out.append(f"def {name}({', '.join(parts)}) -> Any: ...\n")
    out.append("def list_methods() -> list[str]: ...\n")
    out.append("def method_info(name: str) -> Info: ...\n")
    out.append("def attribute(net: nn.Module, x: Any, target: Any = None, method: str = 'grad_cam', "
               "**options: Any) -> Any: ...\n")
    out.append("\nclass Explainer:\n"
               "    net: nn.Module\n"
               "    method: str\n"
               "    def __init__(self, net: nn.Module, method: str, **options: Any) -> None: ...\n"
               "    def __call__(self, x: Any, target: Any = None) -> Any: ...\n\n")
    out.append("def explainer(net: nn.Module, method: str = 'grad_cam', **options: Any) -> Explainer: ...\n")
    names = [*registry.REGISTRY, "list_methods", "method_info", "attribute", "explainer", "Explainer"]
    out.append("\n__all__ = [\n" + "".join(f"    {n!r},\n" for n in names) + "]\n")
    return "".join(out)


def test_stub_is_the_registry():
    assert STUB.read_text() == render(), (
        "gradattr/api.pyi differs from the registry: run `python tests/test_api_stub.py --write`")


@pytest.mark.slow  # mypy takes about a minute on 2 cores
def test_mypy_sees_every_public_function(tmp_path):
    calls = "\n".join(f"gradattr.{n}" for n in registry.REGISTRY)
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(f"""\
        import torch
        import gradattr

        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        cam = gradattr.grad_cam(net, torch.randn(3, 8, 8), 0, None, "0", upsampling="none")
        names: list[str] = gradattr.list_methods()
        ex: gradattr.Explainer = gradattr.explainer(net, "grad_cam", feature_layer="0")
        ex(torch.randn(3, 8, 8), 0)
        {calls.replace(chr(10), chr(10) + '        ')}
        gradattr.grad_cam(net, torch.randn(3, 8, 8), no_such_option=1)  # E: unexpected keyword
        """))
    # mypy cannot follow an editable install's import hook: point it at this checkout's package
    import os

    env = {**os.environ, "MYPYPATH": str(Path(gradattr.__file__).resolve().parent.parent)}
    run = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent",
                          "--ignore-missing-imports", "--no-error-summary", str(script)],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    lines = [ln for ln in run.stdout.splitlines() if ": error:" in ln]
    # exactly one error: the misspelt option on the last line; every method is seen
    assert len(lines) == 1 and "no_such_option" in lines[0], run.stdout + run.stderr


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        STUB.write_text(render())
        print(f"wrote {STUB}")
    else:
        print(render())
