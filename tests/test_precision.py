"""Mixed precision: ``autocast="bf16"``/``"fp16"`` forward passes, maps accumulated in float32."""
from __future__ import annotations

import pytest
import torch

import gradattr
from gradattr import GradattrError
from conftest import EGYPTIAN_CAT, photo


def corr(a, b) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.fixture(scope="module")
def cat():
    return photo("chelsea")[None]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_on_the_pretrained_effnet_agrees_with_float32(effnet, cat, precision):
    ref = gradattr.grad_cam(effnet, cat, EGYPTIAN_CAT)
    got = gradattr.grad_cam(effnet, cat, EGYPTIAN_CAT, autocast=precision)
    assert got.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in effnet.parameters())  # the model is not converted
    # measured on CPU: bf16 r = 0.99987, max error 2.0 % of the peak; fp16 r = 0.999998, 0.34 %
    assert corr(got, ref) > 0.999
    assert float((got - ref).abs().max() / ref.abs().max()) < (0.05 if precision == "bf16" else 0.01)
    assert not torch.equal(got, ref)  # the forward really ran in low precision


def test_autocast_reaches_perturbation_passes_too():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    x = torch.randn(2, 3, 12, 12)
    for method in ("score_cam", "ablation_cam", "eigen_cam"):
        kw = {} if method == "eigen_cam" else {"target": 1}
        ref = gradattr.attribute(net, x, method=method, **kw)
        got = gradattr.attribute(net, x, method=method, autocast="bf16", **kw)
        assert got.dtype == torch.float32 and corr(got, ref) > 0.99, method


def test_autocast_errors():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten())
    with pytest.raises(GradattrError, match=r"autocast: expected None, 'bf16' or 'fp16', got 'int8'"):
        gradattr.grad_cam(net, torch.randn(1, 3, 8, 8), 0, autocast="int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_autocast_on_gpu_matches_float32(effnet, cat):
    net = effnet.cuda()
    try:
        ref = gradattr.grad_cam(net, cat.cuda(), EGYPTIAN_CAT)
        got = gradattr.grad_cam(net, cat.cuda(), EGYPTIAN_CAT, autocast="fp16")
    finally:
        net.cpu()
    assert got.device.type == "cuda" and corr(got, ref) > 0.999
