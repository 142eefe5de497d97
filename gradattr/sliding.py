"""Maps of inputs larger than the model's: explain overlapping windows and blend them.

:func:`sliding_window` follows MONAI's ``sliding_window_inference`` (the
convention of people who run patch-trained models on whole CT/MR volumes): the
same window start positions (step ``int(roi * (1 - overlap))``, the last window
shifted back to end at the border) and the same importance map (``"gaussian"``:
a separable Gaussian with sigma ``0.125 * roi`` centred on the window, clamped
below at ``max(min, 1e-3)``; ``"constant"``: ones). Each window is explained by
any gradattr method; the window maps are summed with that weight and divided by
the summed weight. Only ``sw_batch_size`` windows are in flight at a time, so the
memory is that of one window batch plus the output map.
"""
from __future__ import annotations

import itertools
import math
from typing import cast
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import GradattrError, expected
from .method_arg import resolve_method


def window_starts(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Start corner of every window, in MONAI's order (last spatial dim fastest).

    >>> window_starts((10,), (4,), 0.25)
    [(0,), (3,), (6,)]
    """
    per_dim = []
    for size, roi in zip(image_size, roi_size):
        step = size if roi == size else max(int(roi * (1 - overlap)), 1)
        count = next(d for d in range(math.ceil(size / step)) if d * step + roi >= size) + 1
        per_dim.append([i * step - max(i * step + roi - size, 0) for i in range(count)])
    return list(itertools.product(*per_dim))


def importance_map(roi_size: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125) -> torch.Tensor:
    """Blending weight of one window (MONAI's ``compute_importance_map``), float32.

    >>> importance_map((3,), "gaussian").tolist()  # sigma = 0.375: exp(-1 / (2 * 0.375**2))
    [0.028565..., 1.0, 0.028565...]
    """
    w = torch.ones((), dtype=torch.float32)
    if mode == "gaussian":
        for i, roi in enumerate(roi_size):
            r = torch.arange(-(roi - 1) / 2.0, (roi - 1) / 2.0 + 1, dtype=torch.float32)
            g = torch.exp(r ** 2 / (-2 * (roi * sigma_scale) ** 2))
            w = w.unsqueeze(-1) * g if i else g
        w = w.clamp(min=max(w.min().item(), 1e-3))
    else:
        w = torch.ones(tuple(roi_size), dtype=torch.float32)
    return w


def sliding_window(method: str | Callable, net: torch.nn.Module, volume, roi_size: int | Sequence[int],
                   overlap: float = 0.25, target=None, *, mode: str = "gaussian", sw_batch_size: int = 4,
                   **method_options) -> torch.Tensor:
    """Explain an input larger than the model's input, window by window, as MONAI infers.

    Args:
        method: a method name (see :func:`gradattr.list_methods`) or a callable
            ``f(net, x, target, **options)`` returning ``(B, *roi)`` maps (``target`` by position).
        net: the network (patch-trained), left as found.
        volume: tensor or array ``(C, *spatial)`` or ``(N, C, *spatial)``, 1-D, 2-D or 3-D.
        roi_size: the window size, one int per spatial dim, each at most the input's
            size (or one int for all: a 2-D to 4-D input is then read as ``(C, *spatial)``).
        overlap: fraction of a window shared with the next, in ``[0, 1)``.
        target: the class(es) of every window: ``None`` (each window's own top class),
            an int or a list (the same classes for every window, a list adding a map
            axis as in every gradattr method), an ``(N, K)`` array of classes per sample
            (each window gets its sample's row), or a callable the method accepts.
        mode: ``"gaussian"`` (window centres weigh more) or ``"constant"``.
        sw_batch_size: windows explained per call (bounds the memory).
        **method_options: passed to the method (``feature_layer``, ``upsampling``, ...);
            the map of a window must have the window's size (the default upsampling).

    Returns:
        A float32 CPU tensor ``(*spatial)`` (or ``(N, *spatial)`` for a batch; a method
        giving several maps per window adds their axis after ``N``). One window covering
        the whole input returns the method's own map, unweighted.

    Example:
        >>> import torch, gradattr
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 2))
        >>> gradattr.sliding_window("grad_cam", net, torch.randn(1, 40, 30), 16, target=1).shape
        torch.Size([40, 30])
    """
    x, roi, unbatched = _volume_and_roi(volume, roi_size)
    _check_window_options(overlap, mode, sw_batch_size)
    explain, _ = resolve_method(method)
    targets = _per_sample(target, x.shape[0])
    out = _explained_windows(net, x, roi, window_starts(tuple(x.shape[2:]), roi, overlap),
                             importance_map(roi, mode), explain, target, targets, sw_batch_size, method_options)
    return out[0] if unbatched else out


def _volume_and_roi(volume, roi_size) -> tuple[torch.Tensor, tuple[int, ...], bool]:
    """``sliding_window``'s input as ``(N, C, *spatial)``, its window size per spatial dim, and
    whether it came unbatched; both checked."""
    x = torch.as_tensor(np.asarray(volume)) if not isinstance(volume, torch.Tensor) else volume
    if x.ndim < 2 or x.ndim > 5 or not x.dtype.is_floating_point:
        raise expected("volume", "a float tensor or array (C, *spatial) or (N, C, *spatial) with 1 to 3 "
                       "spatial dims", f"shape {tuple(x.shape)} and dtype {x.dtype}")
    if isinstance(roi_size, int) and not isinstance(roi_size, bool):
        # one size for every spatial dim: x is (C, *spatial), or (N, C, D, H, W) when 5-D
        roi = (roi_size,) * (x.ndim - (2 if x.ndim == 5 else 1))
    elif isinstance(roi_size, Sequence) and all(isinstance(r, int) for r in roi_size):
        roi = tuple(roi_size)
    else:
        roi = ()
    given = tuple(x.shape)
    unbatched = len(roi) == x.ndim - 1
    if unbatched:
        x = x[None]
    spatial = tuple(x.shape[2:])
    if len(roi) != len(spatial) or not 1 <= len(spatial) <= 3 \
            or any(r < 1 or r > s for r, s in zip(roi, spatial)):
        raise expected("roi_size", f"one window size per spatial dim of the input {tuple(spatial)} "
                       "(or one int for all), each between 1 and that dim",
                       f"{roi_size!r} for input shape {given}")
    return x, roi, unbatched


def _check_window_options(overlap, mode, sw_batch_size) -> None:
    if not isinstance(overlap, (int, float)) or isinstance(overlap, bool) or not 0 <= overlap < 1:
        raise expected("overlap", "a number in [0, 1)", repr(overlap))
    if mode not in ("gaussian", "constant"):
        raise expected("mode", "'gaussian' or 'constant'", repr(mode))
    if not isinstance(sw_batch_size, int) or isinstance(sw_batch_size, bool) or sw_batch_size < 1:
        raise expected("sw_batch_size", "a number of windows >= 1", repr(sw_batch_size))


def _explained_windows(net, x, roi, starts, weight, explain, target, targets, sw_batch_size,
                       method_options) -> torch.Tensor:
    """Every window of every sample explained, ``sw_batch_size`` at a time, and blended with
    ``weight`` into ``(N, *extra, *spatial)`` (one window: the method's own map)."""
    n, spatial = x.shape[0], tuple(x.shape[2:])
    jobs = [(i, s) for i in range(n) for s in starts]
    single = len(starts) == 1
    out: torch.Tensor | None = None
    norm: torch.Tensor | None = None  # made with out (several windows: their summed weights)
    for lo in range(0, len(jobs), sw_batch_size):
        chunk = jobs[lo:lo + sw_batch_size]
        win = torch.stack([x[i][(slice(None), *(slice(a, a + r) for a, r in zip(s, roi)))]
                           for i, s in chunk])
        tgt = targets[[i for i, _ in chunk]] if targets is not None else target  # each window its row
        maps = explain(net, win, tgt, method_options)
        maps = maps.detach().to("cpu", torch.float32) if isinstance(maps, torch.Tensor) \
            else torch.as_tensor(np.asarray(maps, dtype=np.float32))
        if maps.shape[0] != len(chunk) or tuple(maps.shape[-len(roi):]) != roi:
            raise GradattrError(f"method: expected maps of shape ({len(chunk)}, ..., "
                                f"{', '.join(map(str, roi))}) for {len(chunk)} windows of size {roi}, got "
                                f"{tuple(maps.shape)}; use an upsampling that gives the input's size")
        if out is None:
            extra = tuple(maps.shape[1:-len(roi)])
            out = torch.zeros((n, *extra, *spatial), dtype=torch.float32)
            norm = torch.zeros(spatial, dtype=torch.float32)
        for (i, s), m in zip(chunk, maps):
            where = tuple(slice(a, a + r) for a, r in zip(s, roi))
            if single:
                out[i] = m
            else:
                out[i][(Ellipsis,) + where] += m * weight
                if i == 0:
                    cast(torch.Tensor, norm)[where] += weight
    result = cast(torch.Tensor, out)  # made by the first chunk
    if not single:
        result /= cast(torch.Tensor, norm)
    return result


def _per_sample(target, n: int):
    """Per-sample classes ``(N, K)`` (gradattr's convention) -> that tensor; anything else goes as is."""
    if isinstance(target, (np.ndarray, torch.Tensor)) and target.ndim == 2 and target.shape[0] == n:
        return torch.as_tensor(np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target))
    return None


__all__ = ["importance_map", "sliding_window", "window_starts"]
