"""The ``method`` argument of the runners (``sliding_window``, ``explain_dataset``, ...): a
registered method's name or a callable, resolved to one function that explains a batch.

It sits just above :mod:`gradattr.api` (it calls :func:`gradattr.api.attribute`), so every
runner above it can resolve ``method`` the same way.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from . import api, registry
from .errors import expected


def resolve_method(method, options: dict | None = None) -> tuple[Callable, str]:
    """``(explain, name)`` for ``method``: ``explain(net, x, target, opts)`` returns its maps.

    ``method`` is a callable ``method(net, x, target, **opts)`` (``target`` passed by
    position, so ``lambda net, x, t: ...`` and ``def f(net, x, target=None, **options)`` both
    fit; named by its ``__name__``) or a registered method's name; a name that is not registered is a
    :class:`~gradattr.errors.GradattrError` suggesting close names, and with ``options``
    the options are checked against the method's entry too, before any work.

    >>> explain, name = resolve_method("grad_cam")
    >>> name
    'grad_cam'
    """
    if callable(method) and not isinstance(method, (str, nn.Module)):
        fn = method

        def call(net, x, target, opts):
            return fn(net, x, target, **opts)

        return call, getattr(method, "__name__", type(method).__name__)
    if not isinstance(method, str):
        raise expected("method", "a method name (gradattr.list_methods()) or a callable "
                       "(net, x, target, **options) -> maps", type(method).__name__)
    entry = registry.get(method)  # an unknown name: the registry's error, with close names
    if options is not None:
        entry.validate(options)

    def explain(net, x, target, opts):
        return api.attribute(net, x, target=target, method=method, **opts)

    return explain, method


__all__ = ["resolve_method"]
