"""The ``baseline`` option of integrated gradients, feature ablation and DeepLIFT: its check and
the tensor it names.

A baseline is a number, or a tensor/array broadcastable to the explained input ``x``; for
integrated gradients also ``"blur"`` or ``"mean"`` (the *named* baselines). The option's
validator (:func:`baseline_option`, :func:`named_baseline_option`) refuses what is never a
baseline before any pass; :func:`baseline_like` checks the rest against ``x`` and builds it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import expected
from ..ops import gaussian_blur

#: The baselines integrated gradients also accepts by name.
NAMED = ("blur", "mean")


def accepted(named: bool) -> str:
    """What a ``baseline`` may be, for the error messages."""
    return ("a number, a tensor broadcastable to x, 'blur' or 'mean'" if named
            else "a number, or a tensor/array broadcastable to x")


def check_baseline(name: str, value, named: bool = False):
    """``value`` when it may be a baseline (see :func:`baseline_like`), else a :class:`GradattrError`."""
    if value is None or isinstance(value, (bytes, bool, np.bool_)) \
            or (isinstance(value, str) and not (named and value in NAMED)):
        raise expected(name, accepted(named), repr(value))
    return value


def baseline_option(name: str, value):
    """Validator of a ``baseline`` option: a number, or a tensor/array broadcastable to ``x``."""
    return check_baseline(name, value)


def named_baseline_option(name: str, value):
    """Validator of integrated gradients' ``baseline``: also ``"blur"`` or ``"mean"``."""
    return check_baseline(name, value, named=True)


def named_baseline(value: str, x: torch.Tensor) -> torch.Tensor:
    """``"mean"``: each sample's channel means; ``"blur"``: ``x`` blurred (11 taps, sigma 5)."""
    if not x.is_floating_point():
        raise expected("baseline", "a number (an id, e.g. the padding token) for an integer input",
                       repr(value))
    if value == "mean":  # each sample's channel means (MATLAB's MaskValue "auto")
        return x.flatten(2).mean(-1)[(...,) + (None,) * (x.ndim - 2)].expand_as(x).clone()
    if value == "blur":  # an 11-tap Gaussian, sigma 5, reflect-101 borders, along every axis
        return gaussian_blur(x, 11, 5.0, short_axes="skip")
    raise expected("baseline", accepted(True), repr(value))


def baseline_like(value, x: torch.Tensor, named: bool = False) -> torch.Tensor:
    """``baseline`` as a new tensor of the explained input's shape, dtype and device ``x (N, ...)``.

    ``value``: a number (for an integer input, an integer: an id), a tensor or array
    broadcastable to ``x`` (real, finite), or with ``named`` one of :data:`NAMED`.

    >>> baseline_like(np.array([1.0, 2.0]), torch.zeros(2, 2)).tolist()
    [[1.0, 2.0], [1.0, 2.0]]
    """
    if isinstance(value, str):
        if not named:
            raise expected("baseline", accepted(named), repr(value))
        return named_baseline(value, x)
    if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        if not x.is_floating_point() and float(value) != int(value):
            raise expected("baseline", "an integer (an id) for an integer input", repr(value))
        if not np.isfinite(float(value)):
            raise expected("baseline", "a finite number", repr(value))
        return torch.full_like(x, value.item() if isinstance(value, np.number) else value)
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise expected("baseline", accepted(named), type(value).__name__)
    if value.dtype == torch.bool or value.is_complex():
        raise expected("baseline", "real numbers", f"dtype {value.dtype}")
    try:
        shape = torch.broadcast_shapes(value.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise expected("baseline", f"a number, or values broadcastable to x's shape {tuple(x.shape)} (e.g. "
                       f"one per element of a sample, shape {tuple(x.shape[1:])}; N = 1 for one "
                       "unbatched sample)", f"shape {tuple(value.shape)}")
    b = value.detach().to(device=x.device, dtype=x.dtype).expand_as(x).clone()
    if b.is_floating_point() and not torch.isfinite(b).all():
        raise expected("baseline", "finite values", "NaN or Inf")
    return b
