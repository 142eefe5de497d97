"""Public entry points: one function per registered method, plus :func:`attribute`.

Each public function (``gradattr.grad_cam``, ``gradattr.score_cam``, ...) is made
from its :class:`~gradattr.registry.Method` entry: its signature (every argument,
shown by ``help()``) and docstring come from the entry and the shared options of
:data:`gradattr.registry.SHARED`, and its body is :func:`gradattr.engine.explain`.
``grad_cam`` keeps MATLAB's positional order ``(net, x, target, reduction_fn,
feature_layer, reduction_layer, upsampling, device)``; every other option is
keyword-only.
"""
from __future__ import annotations

from . import methods  # noqa: F401  (registers the methods)
from . import engine, registry
from .errors import GradattrError
from .registry import REGISTRY


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
    """The public function of ``entry``: explicit signature, full docstring, no hidden options."""
    sig = entry.signature()

    def method(*args, **kwargs):
        _check_habits(entry.name, kwargs)
        bound = sig.bind(*args, **kwargs)  # a TypeError exactly like a plain def's
        arguments = dict(bound.arguments)
        net, x = arguments.pop("net"), arguments.pop("x")
        return engine.explain(entry, net, x, **arguments)

    method.__name__ = method.__qualname__ = entry.name
    method.__module__ = __name__
    method.__signature__ = sig
    method.__doc__ = entry.docstring()
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


__all__ = [*REGISTRY, "list_methods", "method_info", "attribute"]
