"""SS-CAM, IS-CAM, Group-CAM, RISE and random maps: naive per-paper loops, seeds, torch-cam.

The naive references below run one sample, one target and one mask at a time with
their own hooks and autograd calls; the toy networks are float64 so the comparisons
are tight. The torch-cam and real-photo checks are marked slow (hundreds of
forward passes of a 224 px network).
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradattr
from gradattr import GradattrError

from references import CLASSES, SIZE, toy, toy_input  # noqa: F401  (the shared toy networks)
from references import NAIVE_PERTURBATION as NAIVE
from expected_warnings import ZERO_MAPS


def linear_target(y):
    return y[:, 0] - 2 * y[:, 3]


TARGETS = {"scalar": 2, "vector": [1, 3], "per_sample": np.array([[0, 2], [3, 1]]), "callable": linear_target,
           "top": None}
SCALAR = {"scalar": True, "vector": False, "per_sample": False, "callable": True, "top": True}


def score_fns(target, n, outputs):
    """Per sample, one score function ``y -> (1,)`` per map."""
    if callable(target):
        return [[target] for _ in range(n)]
    if target is None:
        return [[lambda y, c=int(outputs[i].argmax()): y[:, c]] for i in range(n)]
    arr = np.asarray(target)
    if arr.ndim == 0:
        return [[lambda y, c=int(arr): y[:, c]] for _ in range(n)]
    if arr.ndim == 1:
        return [[lambda y, c=int(c): y[:, c] for c in arr] for _ in range(n)]
    return [[lambda y, c=int(c): y[:, c] for c in arr[i]] for i in range(n)]


LAYERED = ("ss_cam", "is_cam", "group_cam")


def run(method, net, x, target, **kw):
    opts = dict(NAIVE[method][1], **kw)
    if method in LAYERED:
        opts.update(feature_layer="3", upsampling="none")
    return getattr(gradattr, method)(net, x, target, **opts)


# ---------------------------------------------------------------- the sweep: method x rank x batch x target
@ZERO_MAPS
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("method", list(NAIVE))
def test_matches_naive_reference_for_every_target_kind(method, rank):
    net, xb = toy(rank), toy_input(rank)
    naive = NAIVE[method][0]
    nonzero = 0
    for kind, target in TARGETS.items():
        ref_b = naive(net, xb, target).float()
        for batched in (True, False):
            if not batched and kind == "per_sample":
                continue
            x = xb if batched else xb[0]
            got = run(method, net, x, target)
            ref = ref_b[:, 0] if SCALAR[kind] else ref_b
            if not batched:
                ref = ref[0]
            if method == "ss_cam" and not batched:  # one sample: its noise is drawn first
                ref = naive(net, xb[:1], target).float()[0]
                ref = ref[0] if SCALAR[kind] else ref
            assert got.shape == ref.shape, (kind, batched)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()) + 1e-9,
                                       msg=f"{method} rank {rank} {kind} batched={batched}")
            nonzero += int(ref.abs().sum() > 0)
    assert nonzero >= 4


@ZERO_MAPS
@pytest.mark.parametrize("method", list(NAIVE))
def test_numpy_in_numpy_out(method):
    net, x = toy(2), toy_input(2)
    out = run(method, net, x.numpy(), [1, 2])
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, run(method, net, x, [1, 2]).numpy(), rtol=1e-6)


# ---------------------------------------------------------------- randomness
@pytest.mark.parametrize("method", ["ss_cam", "rise", "random_cam"])
def test_same_seed_same_map_other_seed_other_map_generator_and_global_state(method):
    net, x = toy(2), toy_input(2)
    kw = {"ss_cam": dict(samples=2, feature_layer="3"), "rise": dict(masks=10, cells=3), "random_cam": {}}[method]
    fn = getattr(gradattr, method)
    a, b = fn(net, x, 1, seed=3, **kw), fn(net, x, 1, seed=3, **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, fn(net, x, 1, seed=4, **kw))
    assert torch.equal(a, fn(net, x, 1, generator=torch.Generator().manual_seed(3), **kw))
    torch.manual_seed(3)
    c = fn(net, x, 1, seed=None, **kw)
    assert torch.equal(a, c)  # seed=None: torch's global state, here seeded with 3


@ZERO_MAPS
@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_results_do_not_depend_on_the_chunk_size(batch_size):
    net, x = toy(2), toy_input(2)
    for method in NAIVE:
        ref = run(method, net, x, [1, 2], batch_size=5)
        torch.testing.assert_close(run(method, net, x, [1, 2], batch_size=batch_size), ref, rtol=1e-6, atol=1e-9)


def test_score_masked_streams_chunks_of_the_budget_and_shows_progress(capsys):
    net, x = toy(1), toy_input(1)
    sizes = []
    h = net[0].register_forward_pre_hook(lambda m, i: sizes.append(i[0].shape[0]))
    try:
        gradattr.rise(net, x, 1, masks=10, cells=3, batch_size=8, progress=True)
    finally:
        h.remove()
    assert sizes == [2, 8, 8, 4]  # the top class on the input, then 20 masked inputs in chunks of 8
    assert "20/20" in capsys.readouterr().err


def test_options_are_checked():
    net, x = toy(2), toy_input(2)
    with pytest.raises(GradattrError, match=r"seed: expected None .* or an int >= 0 .*, got -1"):
        gradattr.rise(net, x, 1, seed=-1)
    with pytest.raises(GradattrError, match=r"generator: expected None or a torch.Generator, got 3"):
        gradattr.ss_cam(net, x, 1, generator=3)
    with pytest.raises(GradattrError, match=r"p: expected a number in \(0, 1\], got 0"):
        gradattr.rise(net, x, 1, p=0)
    with pytest.raises(GradattrError, match=r"threshold: expected a percentile in \[0, 100\), got 100"):
        gradattr.group_cam(net, x, 1, threshold=100)
    with pytest.raises(GradattrError, match=r"feature_layer: expected an option of rise"):
        gradattr.attribute(net, x, 1, method="rise", feature_layer="3")
    with pytest.raises(GradattrError, match=r"counterfactual: expected an option of group_cam"):
        gradattr.attribute(net, x, 1, method="group_cam", counterfactual=True)


def test_random_cam_is_uniform_noise_and_compare_random_uses_it():
    net, x = toy(2), toy_input(2, n=4)
    m = gradattr.random_cam(net, x, [0, 1, 2], seed=0)
    assert m.shape == (4, 3, 8, 7) and 0 <= float(m.min()) and float(m.max()) < 1
    assert abs(float(m.mean()) - 0.5) < 0.05
    t = gradattr.compare(net, x, ["random"], ["deletion"])  # compare's generator is seeded 0
    ref = gradattr.compare(net, x, [("r", lambda n_, x_, t_: gradattr.random_cam(n_, x_, t_, seed=0))],
                           ["deletion"])
    assert t.rows[0]["deletion"] == ref.rows[0]["deletion"]


def test_group_cam_blur_matches_torchvision_in_2d():
    tv = pytest.importorskip("torchvision.transforms.functional")
    from gradattr.ops import gaussian_blur
    x = torch.randn(2, 3, 60, 64)
    torch.testing.assert_close(gaussian_blur(x, 51, 50.0), tv.gaussian_blur(x, [51, 51], [50.0, 50.0]),
                               rtol=1e-5, atol=1e-5)


@ZERO_MAPS
def test_model_and_input_left_as_found():
    net = toy(2)
    net.train()
    x = toy_input(2)
    x0, state = x.clone(), {k: v.clone() for k, v in net.state_dict().items()}
    for method in NAIVE:
        run(method, net, x, 1)
    assert net.training and torch.equal(x, x0)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == 0


# ---------------------------------------------------------------- torch-cam and real photos (slow)
def _torchcam_map(cls, net, layer, x, classes, seed, size, **kw):
    with cls(net, layer, batch_size=32, input_shape=tuple(x.shape[1:]), **kw) as extractor:
        with torch.no_grad():
            out = net(x)
        torch.manual_seed(seed)  # SS-CAM draws its noise from the global state
        return extractor(classes, out)[0]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["resnet18", "effnet"])
@pytest.mark.parametrize("method", ["ss_cam", "is_cam"])
def test_agrees_with_torchcam(method, which, request):
    """Max abs <= 1e-5 after torch-cam's post-processing (ReLU, min-max): same masks, same weights.

    SS-CAM is stochastic, but gradattr draws its noise fields in torch-cam's order (draw,
    sample, channel) from a generator seeded like torch-cam's global state, and a 112 x 112
    field is a multiple of 16 values (the CPU normal sampler's block), so the noise is the
    same number for number: exact agreement, not only correlation.
    """
    tc = pytest.importorskip("torchcam.methods")
    if which == "resnet18":
        import torchvision
        torch.manual_seed(0)
        net = torchvision.models.resnet18(num_classes=10).eval()
        x, layer, classes = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1)), "layer4", [3, 7]
    else:
        import copy
        net = copy.deepcopy(request.getfixturevalue("effnet"))
        net._bn1 = nn.Sequential(net._bn1, nn.ReLU6())  # the head activation as a module
        net.eval()
        x = F.interpolate(request.getfixturevalue("cat_coffee")[:, :, :, :224], size=(112, 112),
                          mode="bilinear", antialias=True)  # the cat, at a quarter of the passes' cost
        layer, classes = "_bn1", [285]
    if method == "ss_cam":
        ref = _torchcam_map(tc.SSCAM, net, layer, x, classes, 5, None, num_samples=2, std=2.0)
        kw = dict(samples=2, std=2.0, seed=5)
    else:
        ref = _torchcam_map(tc.ISCAM, net, layer, x, classes, 5, None, num_samples=3)
        kw = dict(samples=3)
    tgt = np.asarray(classes)[:, None] if len(classes) == len(x) else classes[0]
    got = getattr(gradattr, method)(net, x, tgt, feature_layer=layer, upsampling="none", normalize=True, **kw)
    got = got[:, 0] if got.ndim == 4 else got
    assert got.shape == ref.shape and float(ref.max()) > 0
    err = float((got - ref).abs().max())
    assert err <= 1e-5, err


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ss_cam", "is_cam", "group_cam", "rise"])
def test_class_discriminative_cat_left_espresso_right(method, effnet, cat_coffee, imagenet_classes):
    x = F.interpolate(cat_coffee, size=(112, 224), mode="bilinear", antialias=True)
    kw = {"ss_cam": dict(samples=1, std=0.5, feature_layer="_blocks.15"),
          "is_cam": dict(samples=2, feature_layer="_blocks.15"), "group_cam": {},
          "rise": dict(masks=1000, cells=6, seed=0)}[method]
    maps = getattr(gradattr, method)(effnet, x, ["Egyptian cat", "espresso"], classes=imagenet_classes, **kw)[0]
    w = x.shape[-1] // 2
    cat, cup = maps
    assert cat[:, :w].sum() > cat[:, w:].sum() and cup[:, w:].sum() > cup[:, :w].sum()
    assert int(cat.flatten().argmax()) % x.shape[-1] < w <= int(cup.flatten().argmax()) % x.shape[-1]
