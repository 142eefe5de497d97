"""``gradattr/api.pyi``: the statically visible API, generated from the registry.

The public functions are made at import time from :data:`gradattr.registry.REGISTRY`
(``gradattr/api.py``), which type checkers and IDEs cannot see. The stub spells each
one out, with an ``@overload`` per option that makes a tuple of the result. This test
fails when the stub drifts from the registry; regenerate it with ``python
tests/test_api_stub.py --write``. Another runs ``mypy`` on a short user script that calls
every public function and asserts the types of what they return.
"""
from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

if __name__ == "__main__":  # run as a script: this checkout's gradattr, not an installed one
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradattr  # noqa: E402
from gradattr import api, registry  # noqa: E402

STUB = Path(gradattr.__file__).parent / "api.pyi"

HEADER = """\
# Generated from gradattr.registry by `python tests/test_api_stub.py --write`; do not edit.
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, overload

import numpy as np
import torch
from torch import nn

from .registry import Info

#: A map comes back as the kind of the explained input: a tensor for a tensor, an array for numpy.
_X = TypeVar("_X", torch.Tensor, np.ndarray)

"""

#: The return type when ``x`` is a tuple of inputs or anything numpy reads (not tied to ``x``).
MAP = "torch.Tensor | np.ndarray"


def _param(p: inspect.Parameter, annotation: str | None = None, default: bool = True) -> str:
    text = p.name
    if annotation is None:
        annotation = "Any" if p.annotation is inspect.Parameter.empty else p.annotation
    text += f": {annotation}"
    if default and p.default is not inspect.Parameter.empty:
        text += f" = {p.default!r}" if not callable(p.default) else " = ..."
    return text


def _def(name: str, sig: inspect.Signature, returns: str, x: str, flags: dict[str, str]) -> str:
    """One ``def`` of the stub: ``x`` annotated as given, each flag in ``flags`` as the given
    ``Literal`` (``Literal[True]`` is required: no default)."""
    parts, star = [], False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.name == "x":
            parts.append(_param(p, x))
        elif p.name in flags:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name  # a required one follows defaults
            parts.append(_param(p, flags[p.name], default=flags[p.name] != "Literal[True]"))
        else:
            parts.append(_param(p))
    return f"def {name}({', '.join(parts)}) -> {returns}: ...\n"


def _overloads(name: str, entry) -> list[str]:
    """The map typed as ``x`` is (a tensor or an array) while every tuple-making flag is False;
    each such flag set to True typed as its tuple; anything else (a tuple of inputs, a flag not
    known statically) typed as :func:`gradattr.api.return_type` says."""
    sig = api.signature(entry)
    flags = [o for o in entry.all_options() if o.result_type]
    off = {o.name: "Literal[False]" for o in flags}
    out = [_def(name, sig, "_X", "_X", off)]
    for o in flags:
        out.append(_def(name, sig, o.result_type.format(map="_X"), "_X", {**off, o.name: "Literal[True]"}))
    out.append(_def(name, sig, api.return_type(entry, MAP), "Any", {}))
    return ["@overload\n" + d for d in out]


def render() -> str:
    out = [HEADER]
    for name, entry in registry.REGISTRY.items():
        out += _overloads(name, entry)
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


def test_generated_functions_carry_their_types():
    """The public functions' ``__annotations__`` (what ``typing.get_type_hints`` and runtime type
    checkers read): every option's type, and the return: the map, or the tuple an option makes."""
    from collections.abc import Sequence

    import numpy as np
    import torch

    hints = typing.get_type_hints(gradattr.grad_cam)
    assert hints["return_layers"] is bool and hints["explain"] is int
    assert hints["feature_layer"] == str | torch.nn.Module | Sequence | None
    ret = torch.Tensor | np.ndarray
    assert hints["return"] == ret | tuple[ret, str | list[str], str]
    assert typing.get_type_hints(gradattr.integrated_gradients)["return"] == ret | tuple[ret, ret]
    assert typing.get_type_hints(gradattr.saliency)["return"] == ret
    # ... and what the functions return is of those types
    net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    cam, layer, out = gradattr.grad_cam(net, np.ones((2, 8), np.float32), 0, return_layers=True,
                                       relu=False)
    assert isinstance(cam, np.ndarray) and (layer, out) == ("1", "4")


def test_stub_types_what_each_call_returns():
    """``return_layers=True`` / ``return_delta=True`` are typed as the tuples they return, and the
    map as the kind of ``x`` (``_X``: a tensor for a tensor, an array for an array)."""
    text = STUB.read_text()
    head = "@overload\ndef grad_cam(net: nn.Module, x: _X, "
    grad_cam = [d for d in text.split("@overload\n") if d.startswith("def grad_cam(")]
    assert len(grad_cam) == 3 and text.count(head) == 2
    assert "return_layers: Literal[False] = False" in grad_cam[0] and grad_cam[0].endswith(") -> _X: ...\n")
    assert "return_layers: Literal[True]," in grad_cam[1]
    assert grad_cam[1].endswith(" -> tuple[_X, str | list[str], str]: ...\n")
    ig = [d for d in text.split("@overload\n") if d.startswith("def integrated_gradients(")]
    assert "return_delta: Literal[True]," in ig[1] and ig[1].endswith(" -> tuple[_X, _X]: ...\n")
    assert " -> Any: ..." not in text.split("def list_methods")[0]  # no method returns Any


@pytest.mark.slow  # mypy takes about a minute on 2 cores
def test_mypy_sees_every_public_function(tmp_path):
    calls = "\n".join(f"gradattr.{n}" for n in registry.REGISTRY)
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(f"""\
        from typing import assert_type

        import numpy as np
        import torch
        import gradattr

        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        x, a = torch.randn(3, 8, 8), np.zeros((3, 8, 8), np.float32)
        names: list[str] = gradattr.list_methods()
        ex: gradattr.Explainer = gradattr.explainer(net, "grad_cam", feature_layer="0")
        ex(x, 0)
        assert_type(gradattr.grad_cam(net, x, 0, None, "0", upsampling="none"), torch.Tensor)
        assert_type(gradattr.grad_cam(net, a, 0), np.ndarray)
        assert_type(gradattr.grad_cam(net, x, 0, return_layers=True), tuple[torch.Tensor, str | list[str], str])
        assert_type(gradattr.score_cam(net, a, 0, return_layers=False), np.ndarray)
        assert_type(gradattr.integrated_gradients(net, x, 0, return_delta=True), tuple[torch.Tensor, torch.Tensor])
        assert_type(gradattr.saliency(net, (x, x), 0), torch.Tensor | np.ndarray)
        flag: bool = bool(len(x))
        assert_type(gradattr.eigen_cam(net, x, return_layers=flag),
                    torch.Tensor | np.ndarray | tuple[torch.Tensor | np.ndarray, str | list[str], str])
        {calls.replace(chr(10), chr(10) + '        ')}
        gradattr.grad_cam(net, x, no_such_option=1)  # E: unexpected keyword
        """))
    # mypy cannot follow an editable install's import hook: point it at this checkout's package
    import os

    env = {**os.environ, "MYPYPATH": str(Path(gradattr.__file__).resolve().parent.parent)}
    run = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent",
                          "--ignore-missing-imports", "--no-error-summary", str(script)],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    lines = [ln for ln in run.stdout.splitlines() if ": error:" in ln]
    last = len(script.read_text().splitlines())
    # errors only for the misspelt option on the last line: every method is seen, every type holds
    assert lines and all(ln.startswith(f"{script.name}:{last}:") for ln in lines), run.stdout + run.stderr
    assert any("no_such_option" in ln for ln in lines), run.stdout


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        STUB.write_text(render())
        print(f"wrote {STUB}")
    else:
        print(render())
