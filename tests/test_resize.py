"""MATLAB imresize/imresize3 parity: hand-derived values and an independent per-pixel implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradattr.resize import imresize


def keys(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def mirror(j: int, n: int) -> int:
    """1-based index j reflected into 1..n the way MATLAB's imresize does ([1..n, n..1] repeated)."""
    period = 2 * n
    k = (j - 1) % period
    return k + 1 if k < n else period - k


def naive_resize_1d(v: np.ndarray, out_len: int, method: str) -> np.ndarray:
    """Straight from MATLAB's documented algorithm, one output sample at a time."""
    n = len(v)
    scale = out_len / n
    if method == "bicubic":
        width = 4.0
        kern = keys
        if scale < 1:
            width = 4.0 / scale
            kern = lambda t: scale * keys(scale * t)  # noqa: E731
    else:
        width = 1.0
        kern = lambda t: 1.0 if -0.5 <= t < 0.5 else 0.0  # noqa: E731
    out = np.zeros(out_len)
    for i in range(1, out_len + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = [left + p for p in range(int(math.ceil(width)) + 2)]
        w = np.array([kern(u - j) for j in taps])
        w = w / w.sum()
        out[i - 1] = sum(wi * v[mirror(j, n) - 1] for wi, j in zip(w, taps))
    return out


def naive_resize(a: np.ndarray, size: tuple[int, ...], method: str) -> np.ndarray:
    for axis, new in enumerate(size):
        a = np.apply_along_axis(naive_resize_1d, axis, a, new, method)
    return a


def test_hand_derived_bicubic_1x2_to_1x4():
    # u = 0.75, 1.25, 1.75, 2.25; Keys a=-0.5 weights e.g. for u=0.75 at j=-1..2:
    # -0.0234375, 0.2265625, 0.8671875, -0.0703125, with j=-1 -> 2 and j=0 -> 1 mirrored.
    out = imresize(torch.tensor([[1.0, 2.0]], dtype=torch.float64), (4,), "bicubic")
    np.testing.assert_allclose(out.numpy(), [[0.90625, 1.203125, 1.796875, 2.09375]], atol=1e-12)


def test_hand_derived_nearest():
    out = imresize(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), (6,), "nearest")
    assert out.tolist() == [1, 1, 2, 2, 3, 3]


def test_torch_bicubic_is_not_matlab():
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]], dtype=torch.float64)
    ours = imresize(x, (4, 4), "bicubic")
    theirs = torch.nn.functional.interpolate(x, size=(4, 4), mode="bicubic", align_corners=False)
    assert (ours - theirs).abs().max() > 1e-2


@pytest.mark.parametrize("method", ["bicubic", "nearest"])
@pytest.mark.parametrize("shape,size", [((5,), (17,)), ((7,), (3,)), ((3, 4), (9, 13)), ((6, 5), (4, 11)),
                                        ((2, 3, 4), (5, 7, 9)), ((1, 3), (4, 8))])
def test_matches_naive_matlab_algorithm(method, shape, size):
    rng = np.random.default_rng(0)
    a = rng.normal(size=shape)
    expected = naive_resize(a, size, method)
    got = imresize(torch.from_numpy(a)[None, None], size, method)[0, 0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_rows_sum_to_one_preserves_constants_and_batches_independently():
    x = torch.full((2, 3, 4, 5), 7.0, dtype=torch.float64)
    x[1] = 3.0
    out = imresize(x, (9, 11), "bicubic")
    assert out.shape == (2, 3, 9, 11)
    np.testing.assert_allclose(out[0].numpy(), 7.0)
    np.testing.assert_allclose(out[1].numpy(), 3.0)


def test_none_returns_input_unchanged():
    x = torch.randn(1, 1, 3, 3)
    assert imresize(x, (9, 9), "none") is x


@pytest.mark.parametrize("method", ["bicubic", "nearest"])
@pytest.mark.parametrize("old,new", [(1024, 4096), (300, 257), (5, 20000)])
def test_long_dimensions_take_the_sparse_path_with_the_same_result(method, old, new):
    """Long dimensions multiply by a sparse matrix instead of a dense one: same numbers."""
    from gradattr.resize import _DENSE_LIMIT, resize_matrix

    assert old * new > _DENSE_LIMIT
    x = torch.from_numpy(np.random.default_rng(old).normal(size=(2, old)))
    got = imresize(x, (new,), method)
    np.testing.assert_allclose(got.numpy(), x.numpy() @ resize_matrix(old, new, method).T, atol=1e-12)
    if old < 400:
        np.testing.assert_allclose(got[0].numpy(), naive_resize_1d(x[0].numpy(), new, method), atol=1e-10)
