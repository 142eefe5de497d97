"""Public entry points: one function per registered method, plus :func:`attribute`.

Each public function (``gradattr.grad_cam``, ``gradattr.score_cam``, ...) is made
from its :class:`~gradattr.registry.Method` entry: its signature (every argument,
shown by ``help()``), annotations and docstring are rendered here from the entry's
fields and the shared options of :data:`gradattr.options.SHARED`, and its body is
:func:`gradattr.engine.explain`. An entry's ``positional`` options are also taken by
position (``grad_cam`` keeps MATLAB's order ``(net, x, target, reduction_fn,
feature_layer, reduction_layer, upsampling, device)``); every other option is
keyword-only.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from . import methods  # noqa: F401  (registers the methods)
from . import engine, registry
from .errors import GradattrError
from .registry import REGISTRY

#: The type of a returned map: the kind of the explained input (a tensor, or an array for numpy).
MAP_TYPE = "torch.Tensor | np.ndarray"


def signature(entry: registry.Method) -> inspect.Signature:
    """The public function's signature: ``(net, x, target=None, *, options...) -> what it
    returns``, the entry's ``positional`` options before the ``*``."""
    P = inspect.Parameter
    params = [P("net", P.POSITIONAL_OR_KEYWORD, annotation="nn.Module"),
              P("x", P.POSITIONAL_OR_KEYWORD)]
    if entry.needs_target:
        params.append(P("target", P.POSITIONAL_OR_KEYWORD, default=None))
    for o in entry.all_options():
        kind = P.POSITIONAL_OR_KEYWORD if o.name in entry.positional else P.KEYWORD_ONLY
        params.append(P(o.name, kind, default=o.default, annotation=o.annotation))
    return inspect.Signature(params, return_annotation=return_type(entry))


def return_type(entry: registry.Method, map_type: str = MAP_TYPE) -> str:
    """What the public function returns: the map, or the tuple of an option's ``result_type``
    (``return_layers=True``: ``(map, feature layer name(s), reduction layer name)``)."""
    return " | ".join([map_type] + [o.result_type.format(map=map_type) for o in entry.all_options()
                                    if o.result_type])


@lru_cache(maxsize=None)
def _evaluated(annotation: str):
    """An annotation string of an :class:`~gradattr.options.Option` (``"str | nn.Module | None"``)
    as the type it names, for ``__annotations__`` (``typing.get_type_hints`` needs no globals)."""
    names = {"torch": torch, "nn": nn, "np": np, "Callable": Callable, "Sequence": Sequence}
    return eval(annotation, {"__builtins__": {"str": str, "int": int, "float": float, "bool": bool,
                                              "dict": dict, "list": list, "tuple": tuple}}, names)


def type_hints(sig: inspect.Signature) -> dict[str, object]:
    """A public function's ``__annotations__``: its signature's annotations as types."""
    out = {name: _evaluated(p.annotation) for name, p in sig.parameters.items() if p.annotation is not p.empty}
    out["return"] = _evaluated(sig.return_annotation)
    return out


def docstring(entry: registry.Method) -> str:
    """Summary, formula, every argument, what is returned, and the example."""
    args = ["net: any ``torch.nn.Module``; run in eval mode and left exactly as found "
            "(training flags, device, ``requires_grad``, ``.grad``, hooks).",
            "x: ``(N, C, T)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``, or the same without "
            "``N``; a tensor or a numpy array (the map comes back as the same kind); or a tuple "
            "of inputs, each with its batch dimension, run as ``net(*x)`` (see ``explain``)."]
    if entry.needs_target:
        args.append("target: class index (0-based), a sequence of indices (one map each), an "
                    "``(N, K)`` integer array of per-sample classes, a label or labels looked "
                    "up in ``classes``, a callable (used as ``reduction_fn``), or ``None`` for "
                    "each sample's top class. On a spatial output a class scores the sum over "
                    "space (segmentation).")
    args += [f"{o.name}: {o.doc}" for o in entry.all_options()]
    if entry.returns == "pixels" and any(o.name == "feature_layer" for o in entry.options):
        ret = ("``(N, K, C, *spatial)``, one signed value per element of the explained input "
               "(with ``feature_layer``: per element of that layer's output, ``(N, K, *layer)``), "
               "``N`` dropped for unbatched input and ``K`` for a scalar target.")
    elif entry.returns == "pixels":
        ret = ("``(N, K, C, *spatial)`` at the input's resolution, ``N`` dropped for unbatched "
               "input and ``K`` for a scalar target.")
    else:
        ret = ("The map ``(N, K, *spatial)``, ``N`` dropped for unbatched input and ``K`` for a "
               "scalar target (or a method without target); with ``return_layers=True`` the "
               "tuple ``(map, feature_layer_name, reduction_layer_name)``.")
    indent = "\n" + " " * 12
    text = [entry.summary, "", entry.doc.strip(), "", "Args:"]
    text += ["    " + _wrap(a, indent) for a in args]
    text += ["", "Returns:", "    " + ret]
    if entry.example:
        text += ["", "Example:", _indent(entry.example.strip("\n"), 4)]
    return "\n".join(text)


def _wrap(text: str, indent: str, width: int = 88) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    return indent.join(lines)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line if line else line for line in text.splitlines())


# pytorch-grad-cam's and captum's spellings, answered with gradattr's (never taken silently: the
# meanings differ, e.g. a list of class indices is every class for every sample here)
_HABITS = {
    "target_layers": "feature_layer= (a name from net.named_modules() or the module, e.g. "
                     "feature_layer=\"layer4\"; a list fuses layers), or nothing: gradattr picks the layer",
    "targets": "target= (a class index, indices for every sample, y[:, None] for one class per sample, "
               "or pytorch-grad-cam's list of ClassifierOutputTarget as is: target=[ClassifierOutputTarget(281)])",
    "reshape_transform": "feature_layout= (the same function, unchanged), or nothing: gradattr reads "
                         "token grids itself",
    "model": "net (the first argument)",
    "input_tensor": "x (the second argument)",
    "inputs": "x (the second argument)",
    "layer": "feature_layer=",
}


def _check_habits(name: str, options) -> None:
    """A pytorch-grad-cam or captum keyword gets a GradattrError with gradattr's spelling."""
    for key in options:
        if key in _HABITS:
            raise GradattrError(f"{key}: {name} does not take pytorch-grad-cam's/captum's {key}=; "
                                f"use {_HABITS[key]}")


def _public(entry: registry.Method):
    """The public function of ``entry``: explicit signature, full docstring, no hidden options.

    Arguments are bound by name and position from the signature's parameter lists, made
    once; anything unusual (a missing, repeated or unknown argument) is bound by
    ``inspect`` for a ``TypeError`` exactly like a plain ``def``'s.
    """
    sig = signature(entry)
    positional = tuple(n for n, p in sig.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD)
    names = frozenset(sig.parameters)

    def method(*args, **kwargs):
        if len(args) < 2 or len(args) > len(positional) or not names.issuperset(kwargs) \
                or any(k in kwargs for k in positional[:len(args)]):
            _check_habits(entry.name, kwargs)
            kwargs = dict(sig.bind(*args, **kwargs).arguments)  # raises the TypeError
            args = ()
        net, x, *rest = args or (kwargs.pop("net"), kwargs.pop("x"))
        kwargs.update(zip(positional[2:], rest))
        return engine.explain(entry, net, x, **kwargs)

    method.__name__ = method.__qualname__ = entry.name
    method.__module__ = __name__
    method.__signature__ = sig  # type: ignore[attr-defined]
    method.__annotations__ = type_hints(sig)
    method.__doc__ = docstring(entry)
    return method


for _name, _entry in REGISTRY.items():
    globals()[_name] = _public(_entry)


def list_methods() -> list[str]:
    """The names :func:`attribute` accepts, in the order of the methods table.

    Examples:
        >>> import gradattr
        >>> gradattr.list_methods()[:3]
        ['grad_cam', 'grad_cam_plus_plus', 'xgrad_cam']
    """
    return list(REGISTRY)


def method_info(name: str) -> registry.Info:
    """What a method is: its family, what it captures, whether it needs a target, what it
    returns, its options.

    >>> import gradattr
    >>> info = gradattr.method_info("score_cam")
    >>> info.family, info.captures, info.needs_target, "batch_size" in info.options
    ('perturbation CAM', 'activations', True, True)
    """
    e = registry.get(name)
    return registry.Info(e.name, e.title, e.captures, e.family, e.needs_target, e.returns, tuple(e.option_names()),
                         e.summary, e.use_when)


def attribute(net, x, target=None, method: str = "grad_cam", **options):
    """Any method by name: ``attribute(net, x, target, method="score_cam", batch_size=64)``.

    ``options`` are the keyword options of the method (:func:`method_info` lists
    them); an option the method does not take is an error, as is a ``target`` for a
    method that explains no class (:func:`eigen_cam`).

    Example:
        >>> import torch, gradattr
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 2))
        >>> gradattr.attribute(net, torch.randn(3, 8, 8), 1, method="layer_cam").shape
        torch.Size([8, 8])
    """
    _check_habits("attribute", options)
    return engine.explain(registry.get(method), net, x, target, **options)


class Explainer:
    """A method bound to one network with its options: ``ex(x, target)`` gives what
    ``gradattr.<method>(net, x, target, **options)`` gives.

    Made by :func:`explainer`. The options are validated and the layers resolved once,
    when it is made; each call prepares its input and target, borrows the network (eval
    mode, restored after) and computes, exactly as the function does.
    """

    def __init__(self, net, method: str, **options):
        entry = registry.get(method)
        _check_habits(method, options)
        if "target" in options:
            raise GradattrError("target: give it to each call, ex(x, target), not to explainer()")
        self.net, self.method = net, entry.name
        self._bound = engine.bind(entry, net, options)

    def __call__(self, x, target=None):
        if not self._bound.method.needs_target and target is not None:
            return engine.explain(self._bound.method, self.net, x, target)  # its error
        return engine.run(self._bound, self.net, x, target)

    def __repr__(self) -> str:
        given = {k: v for k, v in self._bound.opts.items() if v is not self._bound.method.defaults().get(k)}
        opts = "".join(f", {k}={v!r}" for k, v in given.items())
        return f"explainer({type(self.net).__name__}, {self.method!r}{opts})"


def explainer(net, method: str = "grad_cam", **options) -> Explainer:
    """``method`` bound to ``net`` with ``options``, for many calls: ``ex = explainer(net,
    "grad_cam", feature_layer="layer4"); ex(x, 281)``.

    The options are checked and the layers resolved once, here; a call costs what
    computing the map costs (``benchmarks/bench_overhead.py``). Maps equal those of the
    function (``gradattr.grad_cam(net, x, 281, feature_layer="layer4")``). A model compiled
    with ``torch.compile`` is explained as it is (its hooks run eagerly).

    Example:
        >>> import torch, gradattr
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 2))
        >>> ex = gradattr.explainer(net, "grad_cam", feature_layer="0")
        >>> ex(torch.randn(3, 8, 8), 1).shape
        torch.Size([8, 8])
    """
    return Explainer(net, method, **options)


__all__ = [*REGISTRY, "list_methods", "method_info", "attribute", "explainer", "Explainer"]
