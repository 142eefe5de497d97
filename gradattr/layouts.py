"""Reading a captured feature tensor as ``(N, C, *spatial)``: the layout seam.

Every method works on feature maps ``(N, C, *S)``. A captured tensor is kept
as the network produced it; a :class:`Reading` turns it (and its gradient,
which has the same layout) into ``(N, C, *S)`` with :meth:`Reading.to_ncs`, and
puts modified ``(B, C, *S)`` activations back into the network's layout with
:meth:`Reading.from_ncs` (Score-CAM and Ablation-CAM perturbations), keeping
whatever the reading dropped (class tokens) from the original.

:func:`read` is the automatic reading of a tensor given the batch size and the
input's spatial size; :func:`resolve_layout` turns the ``feature_layout``
option into a fixed reading.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import expected


@dataclass(frozen=True)
class Reading:
    """How one captured tensor maps to ``(N, C, *S)`` and back."""

    kind: str
    description: str = ""
    guessed: bool = False

    def to_ncs(self, t: torch.Tensor) -> torch.Tensor:
        """The tensor (or its gradient) as ``(N, C, *S)``."""
        return t

    def from_ncs(self, a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``a (B, C, *S)`` in the layout of ``like (B, ...)``, which supplies anything dropped."""
        return a


CHANNELS_FIRST = Reading("channels_first", "(N, C, *S)")


def read(t, n: int, spatial: tuple[int, ...]) -> Reading | None:
    """The reading of a module output ``t`` for a batch of ``n`` inputs of size ``spatial``.

    ``None`` when ``t`` is not a feature map of the input (a vector, an attention
    internal, another batch size). Channels-first ``(N, C, *S)`` with as many
    spatial dims as the input and one of them > 1.
    """
    if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim >= 3 and t.shape[0] == n):
        return None
    rank = len(spatial)
    if t.ndim == rank + 2 and any(s > 1 for s in t.shape[2:]):
        return CHANNELS_FIRST
    return None


def check_reading(t, reading: Reading | None, name: str, n: int, spatial: tuple[int, ...]) -> Reading:
    """The reading of an explicitly chosen layer's output ``t``, or an error naming the layer."""
    from .errors import GradattrError

    if not isinstance(t, torch.Tensor):
        raise GradattrError(f"feature_layer: expected a layer whose output is a tensor "
                            f"(N, C, *spatial), but {name!r} returned a {type(t).__name__}")
    if reading is not None:
        return reading
    rank = len(spatial)
    if t.ndim != rank + 2 or t.shape[0] != n:
        raise GradattrError(f"feature_layer: expected a layer whose output has the input's layout "
                            f"({n}, C, {rank} spatial dims), but {name!r} outputs shape {tuple(t.shape)}")
    return CHANNELS_FIRST


def resolve_layout(spec) -> Reading | Callable | None:
    """Validate the ``feature_layout`` option: ``None`` (automatic) or a fixed reading."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec == "channels_first":
        return CHANNELS_FIRST
    raise expected("feature_layout", "None or 'channels_first'", repr(spec))
