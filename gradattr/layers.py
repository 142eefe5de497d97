"""Finding layers: by name, by module, or automatically (MATLAB's rule, checked by observation).

The automatic feature layer is, among the module outputs produced before the
reduction layer's output that read as a feature map on a grid observed in the
same forward pass (:mod:`gradattr.geometry`, :func:`gradattr.layout_inference.infer_reading`) and
lie outside attention modules, the last one on which the target score depends
spatially: its gradient, from the graph that pass recorded, is non-zero at more
than one grid position. For CNNs that is MATLAB's rule, the last tensor with the
input's layout ``(N, C, *spatial)`` and a non-singleton spatial/time dimension.
It is named by the outermost module that returned exactly that tensor (ResNet-50
gives ``layer4``, not its inner ReLU); a module called several times counts its
last call. Detectors are explained at their backbone's last map, spatial outputs
before their prediction layer, images turned into sequences of steps at their
encoder (see :func:`gradattr.capture.layer_choice.capture_auto`). Discovery happens inside
the same forward pass that computes the map (see :mod:`gradattr.engine`), so it
costs no extra pass.
"""
from __future__ import annotations

import difflib
from typing import cast

import torch
from torch import nn

from .errors import GradattrError, expected


def resolve_layer(net: nn.Module, spec, argument: str) -> tuple[nn.Module, str] | None:
    """``None`` | name | module -> ``(module, name)``; errors name ``argument``."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec:
        try:
            return net.get_submodule(spec), spec  # walks the name's path only
        except AttributeError:
            pass
    named = dict(net.named_modules())
    if isinstance(spec, str):
        if spec in named and spec != "":
            return named[spec], spec
        close = difflib.get_close_matches(spec, [k for k in named if k], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise GradattrError(
            f"{argument}: expected the name of a submodule of the network (see "
            f"[name for name, _ in net.named_modules()]), got {spec!r}{hint}")
    if isinstance(spec, nn.Module):
        for name, module in named.items():
            if module is spec and name:
                return module, name
        raise GradattrError(f"{argument}: expected a submodule of the network, got a "
                            f"{type(spec).__name__} that is not inside it")
    raise GradattrError(f"{argument}: expected None, a layer name (str) or an nn.Module, "
                        f"got {type(spec).__name__}")


def resolve_layers(net: nn.Module, spec, argument: str) -> list[tuple[nn.Module, str]] | None:
    """Like :func:`resolve_layer`, also accepting a list of layers (multi-layer methods)."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise GradattrError(f"{argument}: expected at least one layer, got an empty list")
        if any(s is None for s in spec):
            raise expected(argument, "a list of layers (names from net.named_modules() or modules), "
                           "each given", f"{list(spec)!r} (None picks the layer automatically, alone)")
        return [cast(tuple, resolve_layer(net, s, argument)) for s in spec]
    one = resolve_layer(net, spec, argument)
    return None if one is None else [one]


def has_layout(t, n: int, rank: int) -> bool:
    """True for a float tensor ``(n, C, *spatial)`` with ``rank`` spatial dims, one of them > 1."""
    return (isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim == rank + 2
            and t.shape[0] == n and any(s > 1 for s in t.shape[2:]))


def check_feature(t, name: str, n: int, rank: int) -> torch.Tensor:
    """The captured output of an explicit feature layer must have the input's layout."""
    if not isinstance(t, torch.Tensor):
        raise GradattrError(f"feature_layer: expected a layer whose output is a tensor "
                            f"(N, C, *spatial), but {name!r} returned a {type(t).__name__}")
    if t.ndim != rank + 2 or t.shape[0] != n:
        raise GradattrError(f"feature_layer: expected a layer whose output has the input's layout "
                            f"({n}, C, {rank} spatial dims), but {name!r} outputs shape {tuple(t.shape)}")
    return t
