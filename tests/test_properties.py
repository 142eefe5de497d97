"""Property-based test of grad_cam's shapes and values against a naive autograd reference.

Hypothesis draws the rank (1-D, 2-D, 3-D), the sizes, batched or not, numpy or
tensor, the target form (top class, index, indices, per-sample classes, label,
reduction function) and the upsampling mode. The reference below is written
straight from the paper with plain autograd on the network cut in two at the
feature layer: ``alpha_k = mean(d score / d A_k)``, ``map = ReLU(sum_k alpha_k A_k)``.
Upsampling "nearest" is checked against MATLAB's rule written out here
(input index ``floor((i + 0.5) / scale)``); "bicubic" against
:func:`gradattr.imresize` of the reference map (tested on its own in test_resize.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradattr

N_CLASSES = 4
LABELS = ["ant", "bee", "cat", "dog"]
LAYERS = {1: (nn.Conv1d, nn.AdaptiveAvgPool1d), 2: (nn.Conv2d, nn.AdaptiveAvgPool2d),
          3: (nn.Conv3d, nn.AdaptiveAvgPool3d)}


def make_net(rank: int, channels: int, seed: int) -> nn.Module:
    conv, pool = LAYERS[rank]
    torch.manual_seed(seed)
    net = nn.Sequential(conv(channels, 4, 3, padding=1), nn.ReLU(), conv(4, 5, 3, stride=2, padding=1),
                        nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(5, N_CLASSES))
    return net.eval()


def reference(net: nn.Module, x: torch.Tensor, kind: str, target) -> torch.Tensor:
    """Grad-CAM ``(N, K, *s_feature)`` with autograd on ``net[:4]`` (features) and ``net[4:]`` (head)."""
    acts = net[:4](x).detach().requires_grad_(True)
    y = net[4:](acts)
    n = x.shape[0]
    if kind == "none":
        cols = y.argmax(1, keepdim=True)
    elif kind in ("int", "label"):
        cols = torch.full((n, 1), target if kind == "int" else LABELS.index(target))
    elif kind == "list":
        cols = torch.tensor(target).expand(n, -1)
    elif kind == "per_sample":
        cols = torch.as_tensor(target)
    scores = target(y)[:, None] if kind == "fn" else y.gather(1, cols)
    maps = []
    for k in range(scores.shape[1]):
        (g,) = torch.autograd.grad(scores[:, k].sum(), acts, retain_graph=True)
        alpha = g.flatten(2).mean(-1)  # (N, C)
        cam = torch.zeros_like(acts[:, 0])
        for c in range(acts.shape[1]):  # one channel at a time, as in the paper
            cam = cam + alpha[:, c].view(-1, *[1] * (acts.ndim - 2)) * acts[:, c]
        maps.append(torch.relu(cam))
    return torch.stack(maps, 1).detach()


def nearest(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """MATLAB imresize 'nearest' on the trailing dims: output i reads input floor((i + 0.5) / scale)."""
    rank = len(size)
    for d, out_len in enumerate(size):
        dim = maps.ndim - rank + d
        in_len = maps.shape[dim]
        idx = np.floor((np.arange(out_len) + 0.5) * in_len / out_len).astype(int).clip(0, in_len - 1)
        maps = maps.index_select(dim, torch.as_tensor(idx))
    return maps


@st.composite
def cases(draw):
    rank = draw(st.sampled_from([1, 2, 3]))
    spatial = tuple(draw(st.integers(2, (12, 7, 5)[rank - 1])) for _ in range(rank))
    batched = draw(st.booleans())
    n = draw(st.integers(1, 3)) if batched else 1
    kind = draw(st.sampled_from(["none", "int", "list", "per_sample", "fn", "label"]))
    if kind == "int":
        target = draw(st.integers(0, N_CLASSES - 1))
    elif kind == "list":
        target = draw(st.lists(st.integers(0, N_CLASSES - 1), min_size=1, max_size=3))
    elif kind == "per_sample":
        k = draw(st.integers(1, 3))
        target = np.array(draw(st.lists(st.lists(st.integers(0, N_CLASSES - 1), min_size=k, max_size=k),
                                        min_size=n, max_size=n)))
    elif kind == "label":
        target = draw(st.sampled_from(LABELS))
    elif kind == "fn":
        a, b = draw(st.sampled_from([(0, 1), (2, 3), (3, 0)]))
        target = lambda y, a=a, b=b: y[:, a] - 0.5 * y[:, b]  # noqa: E731
    else:
        target = None
    return dict(rank=rank, spatial=spatial, batched=batched, n=n, channels=draw(st.integers(1, 3)),
                kind=kind, target=target, upsampling=draw(st.sampled_from(["none", "nearest", "bicubic"])),
                as_numpy=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@pytest.mark.slow  # a few seconds: CI's second step
@settings(max_examples=40, deadline=None, derandomize=True)
@given(cases())
def test_grad_cam_matches_naive_reference(case):
    rank, spatial, n, kind, target = case["rank"], case["spatial"], case["n"], case["kind"], case["target"]
    net = make_net(rank, case["channels"], case["seed"])
    gen = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(n, case["channels"], *spatial, generator=gen)
    given_x = x if case["batched"] else x[0]
    given_x = given_x.numpy().copy() if case["as_numpy"] else given_x.clone()
    kw = dict(classes=LABELS) if kind == "label" else {}
    if kind == "fn":
        kw["reduction_fn"], tgt = target, None
    else:
        tgt = target

    out = gradattr.grad_cam(net, given_x, tgt, feature_layer="3", upsampling=case["upsampling"], **kw)

    want = reference(net, x, kind, target)  # (N, K, *s_feature)
    if case["upsampling"] == "nearest":
        want = nearest(want, spatial)
    elif case["upsampling"] == "bicubic":
        want = gradattr.imresize(want, spatial, "bicubic")
    if kind not in ("list", "per_sample"):
        want = want[:, 0]
    if not case["batched"]:
        want = want[0]
    # Shape and kind: the user's form (numpy in, numpy out), one map per target, at the input's size
    # unless upsampling is "none" (the feature map's size, halved by the stride-2 conv).
    assert isinstance(out, np.ndarray) == case["as_numpy"]
    assert tuple(out.shape) == tuple(want.shape)
    feature = tuple((s - 1) // 2 + 1 for s in spatial)
    assert tuple(out.shape[out.ndim - rank:]) == (feature if case["upsampling"] == "none" else spatial)
    got = torch.as_tensor(out)
    assert got.dtype == torch.float32
    scale = float(want.abs().max()) + 1e-6
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)
    # The input was left as given.
    np.testing.assert_array_equal(np.asarray(given_x), (x if case["batched"] else x[0]).numpy())


@pytest.mark.parametrize("upsampling", ["nearest", "bicubic"])
def test_nearest_reference_is_matlab_nearest(upsampling):
    """The test's own nearest rule reproduces MATLAB's known result, and differs from bicubic."""
    m = torch.tensor([[1.0, 2.0, 3.0]])
    assert nearest(m, (6,)).tolist() == [[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]]  # imresize([1 2 3], [1 6], 'nearest')
    assert nearest(m, (4,)).tolist() == [[1.0, 2.0, 2.0, 3.0]]
    got = gradattr.imresize(m, (4,), upsampling)
    assert (got.tolist() == [[1.0, 2.0, 2.0, 3.0]]) == (upsampling == "nearest")
