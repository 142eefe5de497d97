"""sliding_window: a naive per-window loop, MONAI's windows and weights, one window = the method itself."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr import GradattrError
from gradattr.sliding import importance_map, window_starts
from expected_warnings import ZERO_MAPS


def fcn(rank: int = 2, classes: int = 3) -> nn.Sequential:
    """Fully convolutional: the class scores are the spatial mean of a 1x1 convolution."""
    torch.manual_seed(0)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[rank]
    return nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), conv(4, 6, 3, padding=1), nn.ReLU(),
                         conv(6, classes, 1), pool(1), nn.Flatten())


@ZERO_MAPS
def test_blend_equals_naive_window_loop_2d():
    net = fcn()
    torch.manual_seed(1)
    x = torch.randn(1, 20, 17)
    # roi 8 x 8, overlap 0.25: step int(8 * 0.75) = 6; the last window is moved back to end at the border
    rows, cols = [0, 6, 12], [0, 6, 9]
    sigma = 8 * 0.125
    g = np.exp(-((np.arange(8) - 3.5) ** 2) / (2 * sigma ** 2))
    weight = np.maximum(np.outer(g, g), np.outer(g, g).min())
    num, den = np.zeros((20, 17)), np.zeros((20, 17))
    for r in rows:
        for c in cols:
            m = gradattr.grad_cam(net, x[:, r:r + 8, c:c + 8], 2).numpy()
            num[r:r + 8, c:c + 8] += weight * m
            den[r:r + 8, c:c + 8] += weight
    got = gradattr.sliding_window("grad_cam", net, x, (8, 8), overlap=0.25, target=2, sw_batch_size=4)
    assert got.shape == (20, 17) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), num / den, rtol=1e-5, atol=1e-7)
    # constant weights: the plain mean of the windows covering each pixel
    num[:], den[:] = 0, 0
    for r in rows:
        for c in cols:
            num[r:r + 8, c:c + 8] += gradattr.grad_cam(net, x[:, r:r + 8, c:c + 8], 2).numpy()
            den[r:r + 8, c:c + 8] += 1
    got = gradattr.sliding_window(gradattr.grad_cam, net, x, (8, 8), target=2, mode="constant")
    np.testing.assert_allclose(got.numpy(), num / den, rtol=1e-5, atol=1e-7)


@ZERO_MAPS
def test_one_window_is_exactly_the_method():
    net = fcn(rank=3)
    x = torch.randn(2, 1, 6, 7, 5)
    got = gradattr.sliding_window("grad_cam", net, x, (6, 7, 5), target=[0, 2])  # 2 classes each
    assert got.shape == (2, 2, 6, 7, 5)
    np.testing.assert_array_equal(got.numpy(), gradattr.grad_cam(net, x, [0, 2]).numpy())
    got = gradattr.sliding_window("layer_cam", net, x[0], (6, 7, 5), target=1,
                                  normalize=True)
    np.testing.assert_array_equal(got.numpy(), gradattr.layer_cam(net, x[0], 1, normalize=True).numpy())


@ZERO_MAPS
def test_window_batch_size_and_batched_volumes_do_not_change_the_map():
    net = fcn(rank=1)
    x = torch.randn(3, 1, 50)
    per_sample = np.array([[0], [1], [2]])  # one class per sample, gradattr's (N, K) convention
    whole = gradattr.sliding_window("grad_cam", net, x, (16,), overlap=0.5, target=per_sample, sw_batch_size=2)
    assert whole.shape == (3, 1, 50)
    for i in range(3):
        one = gradattr.sliding_window("grad_cam", net, x[i], 16, overlap=0.5, target=i, sw_batch_size=7)
        assert one.shape == (50,)
        np.testing.assert_allclose(one.numpy(), whole[i, 0].numpy(), rtol=1e-6, atol=1e-8)


def test_window_starts_and_weights_by_hand():
    assert window_starts((10,), (4,), 0.25) == [(0,), (3,), (6,)]
    assert window_starts((10,), (4,), 0.5) == [(0,), (2,), (4,), (6,)]
    assert window_starts((5, 9), (5, 4), 0.0) == [(0, 0), (0, 4), (0, 5)]
    assert window_starts((7,), (7,), 0.9) == [(0,)]
    assert window_starts((6,), (5,), 0.9) == [(0,), (1,)]  # step int(0.5) -> 1
    w = importance_map((4,), "gaussian").numpy()  # sigma 0.5 at offsets +-0.5, +-1.5
    np.testing.assert_allclose(w, [math.exp(-4.5), math.exp(-0.5), math.exp(-0.5), math.exp(-4.5)], rtol=1e-6)
    assert importance_map((3, 2), "constant").tolist() == [[1.0, 1.0]] * 3


@pytest.mark.slow  # importing monai takes ~15 s of CPU
@pytest.mark.parametrize("image, roi, overlap", [((37,), (8,), 0.25), ((20, 17), (8, 6), 0.5),
                                                 ((9, 11, 13), (4, 5, 13), 0.3), ((64, 40), (32, 32), 0.0)])
def test_windows_and_weights_match_monai(image, roi, overlap):
    monai_utils = pytest.importorskip("monai.data.utils")
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval(image, roi, len(image), (overlap,) * len(image))
    slices = monai_utils.dense_patch_slices(image, roi, interval)
    assert window_starts(image, roi, overlap) == [tuple(s.start for s in sl) for sl in slices]
    for mode in ("gaussian", "constant"):
        np.testing.assert_allclose(importance_map(roi, mode).numpy(),
                                   monai_utils.compute_importance_map(roi, mode).numpy(), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("rank, shape, roi", [(1, (2, 1, 45), (12,)), (2, (1, 1, 30, 23), (10, 8)),
                                              (3, (1, 1, 12, 14, 10), (6, 6, 5))])
def test_blend_matches_monai_sliding_window_inference(rank, shape, roi):
    """MONAI blending window Grad-CAMs as if they were segmentation outputs gives the same map."""
    inferers = pytest.importorskip("monai.inferers")
    net = fcn(rank=rank)
    x = torch.randn(shape)
    want = inferers.sliding_window_inference(
        x, roi, 3, lambda w: gradattr.grad_cam(net, w, 1)[:, None], overlap=0.25, mode="gaussian")
    got = gradattr.sliding_window("grad_cam", net, x, roi, overlap=0.25, target=1, sw_batch_size=3)
    np.testing.assert_allclose(got.numpy(), want[:, 0].numpy(), rtol=1e-5, atol=1e-7)


def test_errors():
    net = fcn()
    x = torch.randn(1, 20, 17)
    with pytest.raises(GradattrError, match=r"roi_size: expected one window size per spatial dim of the "
                                            r"input \(20, 17\).*got \(8, 30\) for input shape \(1, 20, 17\)"):
        gradattr.sliding_window("grad_cam", net, x, (8, 30))
    with pytest.raises(GradattrError, match=r"roi_size: .*got \(8, 8, 8\)"):
        gradattr.sliding_window("grad_cam", net, x, (8, 8, 8))
    with pytest.raises(GradattrError, match=r"overlap: expected a number in \[0, 1\), got 1"):
        gradattr.sliding_window("grad_cam", net, x, 8, overlap=1)
    with pytest.raises(GradattrError, match=r"mode: expected 'gaussian' or 'constant', got 'mean'"):
        gradattr.sliding_window("grad_cam", net, x, 8, mode="mean")
    with pytest.raises(GradattrError, match=r"sw_batch_size: expected a number of windows >= 1, got 0"):
        gradattr.sliding_window("grad_cam", net, x, 8, sw_batch_size=0)
    with pytest.raises(GradattrError, match=r"volume: expected a float tensor .*got shape \(5,\)"):
        gradattr.sliding_window("grad_cam", net, torch.randn(5), 2)
    with pytest.raises(GradattrError, match=r"method: expected one of .*'grad_cam'.*got 'grad_kam'"):
        gradattr.sliding_window("grad_kam", net, x, 8)
    with pytest.raises(GradattrError, match=r"method: expected maps of shape \(2, \.\.\., 8, 8\) .*got \(2, 4, 4\)"):
        gradattr.sliding_window(lambda n, w, target: gradattr.grad_cam(n, w, target)[:, :4, :4], net, x, 8,
                                target=0, sw_batch_size=2)
    with pytest.raises(GradattrError, match=r"feature_layr: expected an option of grad_cam"):
        gradattr.sliding_window("grad_cam", net, x, 8, feature_layr="1")
