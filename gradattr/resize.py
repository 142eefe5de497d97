"""The one place that resizes: MATLAB-exact ``imresize`` for maps, ``F.interpolate`` for masks.

* :func:`imresize` resizes the maps a user sees (``upsampling=``), as MATLAB's
  ``imresize`` / ``imresize3`` for any rank (below);
* :func:`linear` and :func:`nearest` are the methods' internal resizes (Score-CAM's and
  RISE's masks, FullGrad's bias maps, SESS's windows, provenance's token grids): thin
  wrappers of ``torch.nn.functional.interpolate`` with the rank-to-mode table
  (:data:`LINEAR_MODES`) in one place.

MATLAB resizes separably, one dimension at a time, with a weight matrix per
dimension built by its ``contributions`` routine:

* output index ``i`` (1-based) maps to input coordinate
  ``u = i / scale + 0.5 * (1 - 1 / scale)`` (pixel-centre alignment);
* the kernel is Keys' cubic with ``a = -0.5`` ("bicubic"/"cubic") or a box of
  width 1 ("nearest");
* when shrinking (``scale < 1``) with a cubic kernel the kernel is stretched by
  ``1 / scale`` (antialiasing, MATLAB's default);
* each row of weights is normalised to sum to 1, and indices outside the input
  are mirrored (``[1..n, n..1]`` repeated).

``torch.nn.functional.interpolate(mode="bicubic")`` uses ``a = -0.75``, clamps
at the borders and exists for 2-D only, so :func:`imresize` does not use it.
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

#: ``F.interpolate``'s multi-linear mode for 1, 2 and 3 resized dimensions.
LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def linear(t: torch.Tensor, size, align_corners: bool = False, antialias: bool = False) -> torch.Tensor:
    """``t (B, C, *s)`` resized (multi-)linearly to ``size`` (1 to 3 dims) by ``F.interpolate``.

    ``align_corners=False``: half-pixel centres (OpenCV's ``INTER_LINEAR``); ``True``: the
    corner samples kept (pytorch-grad-cam's Score-CAM masks). ``antialias`` as ``F.interpolate``'s
    (2-D only). The caller checks the rank (``len(size) in LINEAR_MODES``) with its own message.

    >>> linear(torch.tensor([[[0.0, 1.0]]]), (4,)).tolist()
    [[[0.0, 0.25, 0.75, 1.0]]]
    """
    return F.interpolate(t, size=size, mode=LINEAR_MODES[len(size)], align_corners=align_corners,
                         antialias=antialias)


def nearest(t: torch.Tensor, size) -> torch.Tensor:
    """``t (B, C, *s)`` resized to ``size`` by ``F.interpolate``'s ``"nearest"`` (the cell whose
    index is ``floor(i * in / out)``: not MATLAB's rounding, see :func:`imresize` for that).

    >>> nearest(torch.tensor([[[0.0, 1.0]]]), (4,)).tolist()
    [[[0.0, 0.0, 1.0, 1.0]]]
    """
    return F.interpolate(t, size=size, mode="nearest")


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


def box(x: np.ndarray) -> np.ndarray:
    """MATLAB's ``box`` kernel used for nearest-neighbour resizing."""
    return ((x >= -0.5) & (x < 0.5)).astype(np.float64)


@lru_cache(maxsize=256)
def contributions(in_len: int, out_len: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions``: 0-based input indices and weights, both ``(out_len, taps)``.

    Output sample ``i`` is ``sum_j weights[i, j] * input[indices[i, j]]`` (a mirrored
    index may repeat within a row; the terms simply add up).
    """
    if method == "bicubic":
        kernel, width = cubic, 4.0
    elif method == "nearest":
        kernel, width = box, 1.0
    else:  # pragma: no cover - callers validate first
        raise ValueError(f"unknown resize method {method!r}")
    scale = out_len / in_len
    antialias = method == "bicubic" and scale < 1
    if antialias:
        h = lambda v: scale * kernel(scale * v)  # noqa: E731 - MATLAB's stretched kernel
        width = width / scale
    else:
        h = kernel
    i = np.arange(1, out_len + 1, dtype=np.float64)
    u = i / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based input indices
    w = h(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(1, in_len + 1), np.arange(in_len, 0, -1)])
    idx = mirror[np.mod(idx - 1, mirror.size).astype(np.int64)] - 1  # 0-based, mirrored
    return idx.astype(np.int64), w


def resize_matrix(in_len: int, out_len: int, method: str) -> np.ndarray:
    """The ``(out_len, in_len)`` matrix that resizes one dimension as MATLAB does.

    >>> resize_matrix(2, 4, "nearest").argmax(axis=1).tolist()
    [0, 0, 1, 1]
    """
    idx, w = contributions(in_len, out_len, method)
    mat = np.zeros((out_len, in_len))
    np.add.at(mat, (np.repeat(np.arange(out_len), idx.shape[1]), idx.ravel()), w.ravel())
    return mat


def imresize(maps: torch.Tensor, size: tuple[int, ...], method: str = "bicubic") -> torch.Tensor:
    """Resize the trailing ``len(size)`` dimensions of ``maps`` as MATLAB's ``imresize``.

    Works for any number of resized dimensions (1-D sequences, 2-D images, 3-D
    volumes: ``imresize3(..., "cubic")``), any leading batch dimensions, on the
    tensor's own device and dtype. Each dimension is a matrix product with
    :func:`resize_matrix`; a long one (a sequence of thousands of steps) uses it
    as a sparse matrix (a few taps per output sample) rather than a mostly-zero dense one.

    >>> x = torch.tensor([[0.0, 1.0]])
    >>> imresize(x, (4,), "nearest").tolist()
    [[0.0, 0.0, 1.0, 1.0]]
    """
    if method == "none":
        return maps
    nd = len(size)
    out = maps
    for k, new in enumerate(size):
        dim = maps.ndim - nd + k
        old = out.shape[dim]
        if old == new:
            continue
        moved = torch.movedim(out, dim, -1)
        if old * new > _DENSE_LIMIT:
            try:  # (new, old) sparse @ (old, rows): the few taps per output sample only
                sparse = _torch_sparse(old, new, method, out.dtype, out.device)
                flat = moved.reshape(-1, old)
                moved = (sparse @ flat.T).T.reshape(*moved.shape[:-1], new)
                out = torch.movedim(moved, -1, dim)
                continue
            except RuntimeError:  # a dtype or device without sparse support: the dense product
                pass
        moved = moved @ _torch_matrix(old, new, method, out.dtype, out.device)
        out = torch.movedim(moved, -1, dim)
    return out


#: Up to this many matrix entries a dimension is resized by a dense product (BLAS is
#: fastest on small matrices); beyond it, by a sparse one.
_DENSE_LIMIT = 2**16


@lru_cache(maxsize=64)
def _torch_matrix(in_len: int, out_len: int, method: str, dtype: torch.dtype, device: torch.device):
    """:func:`resize_matrix`, transposed, as a tensor on ``device``: converted once, not per call."""
    return torch.as_tensor(resize_matrix(in_len, out_len, method).T.copy(), dtype=dtype, device=device)


@lru_cache(maxsize=64)
def _torch_sparse(in_len: int, out_len: int, method: str, dtype: torch.dtype, device: torch.device):
    """:func:`resize_matrix` as a sparse CSR tensor on ``device`` (at most 6 entries per row)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.as_tensor(resize_matrix(in_len, out_len, method), dtype=dtype).to_sparse_csr().to(device)
