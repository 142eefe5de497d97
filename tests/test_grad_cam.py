"""The core ``grad_cam``: hand-computed values, a naive reference, shapes, targets, layers, state."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr import GradattrError
from gradattr.resize import imresize
from expected_warnings import ZERO_MAPS

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def linear_probe(rank: int, conv_w, fc_w) -> nn.Sequential:
    """1x1 conv (fixed weights, no bias) -> global average pool -> linear (fixed, no bias)."""
    conv_w = torch.tensor(conv_w, dtype=torch.float32)
    fc_w = torch.tensor(fc_w, dtype=torch.float32)
    conv = CONV[rank](1, conv_w.numel(), 1, bias=False)
    fc = nn.Linear(conv_w.numel(), fc_w.shape[0], bias=False)
    with torch.no_grad():
        conv.weight.copy_(conv_w.reshape(conv.weight.shape))
        fc.weight.copy_(fc_w)
    return nn.Sequential(OrderedDict(conv=conv, pool=POOL[rank](1), flat=nn.Flatten(), fc=fc))


# ---------------------------------------------------------------- hand-computed values
# A_0 = 2x, A_1 = -x; score_c = sum_k W[c, k] * mean(A_k), so d score_c / d A_k = W[c, k] / P
# (P = number of positions) and the map is ReLU(sum_k W[c, k] / P * A_k) = ReLU((2 W[c,0] - W[c,1]) x / P).
W = [[1.0, 0.5], [-1.0, 3.0]]


def test_hand_computed_1d():
    net = linear_probe(1, [2.0, -1.0], W)
    x = torch.tensor([[1.0, -2.0, 3.0, -4.0]])  # (C=1, T=4), unbatched
    m = gradattr.grad_cam(net, x, [0, 1], upsampling="none")
    # class 0: (2*1 - 0.5) / 4 = 0.375 * x; class 1: (-2 - 3) / 4 = -1.25 * x
    expected = [[0.375, 0.0, 1.125, 0.0], [0.0, 2.5, 0.0, 5.0]]
    np.testing.assert_allclose(m.numpy(), expected, rtol=1e-6)


def test_hand_computed_2d():
    net = linear_probe(2, [2.0, -1.0], W)
    x = torch.tensor([[[[1.0, -2.0], [4.0, 0.0]]]])  # (N=1, C=1, 2, 2)
    m = gradattr.grad_cam(net, x, 0, upsampling="none")
    # 1.5 / 4 = 0.375 per unit of x
    np.testing.assert_allclose(m.numpy(), [[[0.375, 0.0], [1.5, 0.0]]], rtol=1e-6)


def test_hand_computed_3d():
    net = linear_probe(3, [2.0, -1.0], W)
    x = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2) - 4  # unbatched (C, D, H, W)
    m = gradattr.grad_cam(net, x, 1, upsampling="none")
    # class 1: -5 / 8 = -0.625 per unit of x, kept where x < 0
    np.testing.assert_allclose(m.numpy(), (torch.relu(-0.625 * x[0])).numpy(), rtol=1e-6)


def test_regression_reduction_fn_hand_computed():
    # MATLAB's regression example: reduction_fn is the identity on a one-output network.
    net = linear_probe(2, [1.0, 1.0], [[0.5, -0.25]])
    x = torch.ones(1, 1, 3, 3)
    m = gradattr.grad_cam(net, x, reduction_fn=lambda y: y[:, 0], upsampling="none")
    # alpha = (0.5/9, -0.25/9), A_0 = A_1 = 1 -> map = 0.25/9 everywhere
    np.testing.assert_allclose(m.numpy(), np.full((1, 3, 3), 0.25 / 9), rtol=1e-6)


# ---------------------------------------------------------------- naive reference
def small_net(rank: int, channels: int = 3, classes: int = 5) -> nn.Sequential:
    conv = CONV[rank]
    return nn.Sequential(OrderedDict(
        conv1=conv(channels, 6, 3, padding=1), relu1=nn.ReLU(),
        conv2=conv(6, 8, 3, padding=1, stride=2), relu2=nn.ReLU(inplace=True),
        pool=POOL[rank](1), flat=nn.Flatten(), fc=nn.Linear(8, classes)))


def naive_grad_cam(net: nn.Sequential, x: torch.Tensor, classes: list[int], split: int) -> torch.Tensor:
    """Run the two halves of a Sequential by hand and loop over channels: (N, K, *s)."""
    with torch.no_grad():
        a = net[:split](x)
    out = []
    for c in classes:
        a_leaf = a.clone().requires_grad_(True)
        score = net[split:](a_leaf)[:, c].sum()
        (g,) = torch.autograd.grad(score, a_leaf)
        cam = torch.zeros(a.shape[0], *a.shape[2:])
        for k in range(a.shape[1]):
            alpha = g[:, k].reshape(a.shape[0], -1).mean(1)
            cam += alpha.view(-1, *([1] * (a.ndim - 2))) * a[:, k]
        out.append(torch.relu(cam))
    return torch.stack(out, 1)


@ZERO_MAPS
@pytest.mark.parametrize("rank,size", [(1, (20,)), (2, (12, 10)), (3, (6, 8, 7))])
def test_matches_naive_loop_reference(rank, size):
    net = small_net(rank)
    x = torch.randn(3, 3, *size)
    got = gradattr.grad_cam(net, x, [0, 2, 4], upsampling="none")
    want = naive_grad_cam(net, x, [0, 2, 4], split=4)  # through relu2: the automatic layer
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # an explicit earlier layer, upsampled back to the input with MATLAB's bicubic
    got1 = gradattr.grad_cam(net, x, 1, feature_layer="relu1")
    want1 = imresize(naive_grad_cam(net, x, [1], split=2)[:, 0], size, "bicubic")
    torch.testing.assert_close(got1, want1, rtol=1e-5, atol=1e-6)


def test_top_class_and_per_sample_targets():
    net = small_net(2)
    x = torch.randn(4, 3, 8, 8)
    top = net(x).argmax(1).tolist()
    got = gradattr.grad_cam(net, x, upsampling="none")
    want = torch.stack([naive_grad_cam(net, x[i:i + 1], [c], 4)[0, 0] for i, c in enumerate(top)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    per = np.array([[0, 1], [2, 3], [4, 0], [1, 1]])
    got = gradattr.grad_cam(net, x, per, upsampling="none")
    assert got.shape == (4, 2, 4, 4)
    for i in range(4):
        torch.testing.assert_close(got[i], naive_grad_cam(net, x[i:i + 1], list(per[i]), 4)[0],
                                   rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- shapes and kinds
@ZERO_MAPS
@pytest.mark.parametrize("rank,size", [(1, (16,)), (2, (9, 10)), (3, (5, 6, 7))])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("target,k", [(1, None), ([0, 3], 2), (lambda y: y[:, 2], None)])
@pytest.mark.parametrize("upsampling", ["bicubic", "nearest", "none"])
def test_shapes(rank, size, batched, target, k, upsampling):
    net = small_net(rank)
    x = torch.randn(2, 3, *size) if batched else torch.randn(3, *size)
    m = gradattr.grad_cam(net, x, target, upsampling=upsampling)
    spatial = size if upsampling != "none" else tuple((s + 1) // 2 for s in size)
    expected = ((2,) if batched else ()) + ((k,) if k else ()) + spatial
    assert tuple(m.shape) == expected
    assert m.dtype == torch.float32


@ZERO_MAPS
def test_numpy_in_numpy_out_and_same_values():
    net = small_net(2)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float64)
    m = gradattr.grad_cam(net, x, 3)
    assert isinstance(m, np.ndarray) and m.shape == (2, 8, 8)
    np.testing.assert_allclose(m, gradattr.grad_cam(net, torch.from_numpy(x).float(), 3).numpy(), rtol=1e-5)


def test_uint8_image_in_matlab_layout():
    net = small_net(2)
    img = np.random.default_rng(1).integers(0, 255, size=(10, 12, 3), dtype=np.uint8)  # H x W x C
    m = gradattr.grad_cam(net, img, 2, input_format="SSC")
    want = gradattr.grad_cam(net, torch.from_numpy(img).permute(2, 0, 1).float(), 2)
    assert m.shape == (10, 12)
    np.testing.assert_allclose(m, want.numpy(), rtol=1e-5)


@pytest.mark.parametrize("fmt,make", [("CT", lambda s: s), ("TC", lambda s: s.T), ("CBT", lambda s: s[:, None])])
def test_sequence_formats(fmt, make):
    net = small_net(1, channels=4)
    seq = torch.randn(4, 19)  # C x T, MATLAB's default for sequences
    m = gradattr.grad_cam(net, make(seq), 1, input_format=fmt)
    want = gradattr.grad_cam(net, seq, 1)
    assert want.shape == (19,)
    torch.testing.assert_close(m.reshape(19), want)


@ZERO_MAPS
def test_1d_equals_2d_with_height_one():
    net1 = small_net(1)
    net2 = small_net(2)
    with torch.no_grad():  # same weights, with a kernel that only sees the middle row in 2-D
        for a, b in [(net1.conv1, net2.conv1), (net1.conv2, net2.conv2)]:
            b.weight.zero_()
            b.weight[:, :, 1, :] = a.weight
            b.bias.copy_(a.bias)
        net2.fc.load_state_dict(net1.fc.state_dict())
    x = torch.randn(2, 3, 15)
    m1 = gradattr.grad_cam(net1, x, [0, 4])
    m2 = gradattr.grad_cam(net2, x[:, :, None, :], [0, 4], feature_layer="relu2")
    torch.testing.assert_close(m2[:, :, 0], m1, rtol=1e-5, atol=1e-6)


def test_labels_and_segmentation_sum():
    net = small_net(2, classes=3)
    x = torch.randn(1, 3, 8, 8)
    classes = ["cat", "dog", "car"]
    torch.testing.assert_close(gradattr.grad_cam(net, x, "dog", classes=classes), gradattr.grad_cam(net, x, 1))
    both = gradattr.grad_cam(net, x, ["car", "cat"], classes=classes)
    torch.testing.assert_close(both, gradattr.grad_cam(net, x, [2, 0]))
    # A class on a spatial output scores the sum over space: same as an explicit reduction_fn.
    seg = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 6, 3, padding=1), relu=nn.ReLU(),
                                    head=nn.Conv2d(6, 3, 1)))
    a = gradattr.grad_cam(seg, x, 2, feature_layer="relu")
    b = gradattr.grad_cam(seg, x, reduction_fn=lambda y: y[:, 2].sum((1, 2)), feature_layer="relu")
    torch.testing.assert_close(a, b)
    # the automatic feature layer of a segmenter is not its output
    _, feat, red = gradattr.grad_cam(seg, x, 2, return_layers=True)
    assert (feat, red) == ("relu", "head")


def test_reduction_fn_with_k_columns_and_counterfactual_and_normalize():
    net = small_net(2)
    x = torch.randn(2, 3, 8, 8)
    two = gradattr.grad_cam(net, x, reduction_fn=lambda y: y[:, [1, 3]])
    torch.testing.assert_close(two, gradattr.grad_cam(net, x, [1, 3]))
    cf = gradattr.grad_cam(net, x, 1, upsampling="none", counterfactual=True)
    # counterfactual = Grad-CAM of the negated score
    torch.testing.assert_close(cf, gradattr.grad_cam(net, x, reduction_fn=lambda y: -y[:, 1], upsampling="none"))
    nm = gradattr.grad_cam(net, x, [1, 2], normalize=True)
    flat = nm.flatten(2)
    for v in flat.reshape(-1, flat.shape[-1]):
        assert v.min() == 0 and (v.max() == 1 or v.max() == 0)


# ---------------------------------------------------------------- layers
def test_resnet50_picks_layer4_and_fc_and_survives_inplace_relu():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet50().eval()
    x = torch.randn(1, 3, 64, 64)
    target = 9  # a class whose maps are not empty (class 7's are, at both layers)
    m, feat, red = gradattr.grad_cam(net, x, target, upsampling="none", return_layers=True)
    assert (feat, red) == ("layer4", "fc")
    assert float(m.abs().max()) > 0
    # naive: features by hand, then the head
    with torch.no_grad():
        body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                             net.layer4)
        a = body(x)
    a.requires_grad_(True)
    (g,) = torch.autograd.grad(net.fc(torch.flatten(net.avgpool(a), 1))[:, target].sum(), a)
    want = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
    torch.testing.assert_close(m[0], want[0], rtol=1e-4, atol=1e-6)
    # the in-place ReLU inside the last bottleneck must not corrupt an explicit inner layer
    m2 = gradattr.grad_cam(net, x, target, feature_layer="layer4.2.conv3", upsampling="none")
    with torch.no_grad():
        b = body[:-1](x)
        blk = net.layer4
        b = blk[1](blk[0](b))
        inner = blk[2].conv3(blk[2].relu(blk[2].bn2(blk[2].conv2(blk[2].relu(blk[2].bn1(blk[2].conv1(b)))))))
    inner.requires_grad_(True)
    out = blk[2].relu(blk[2].bn3(inner) + b)
    (g2,) = torch.autograd.grad(net.fc(torch.flatten(net.avgpool(out), 1))[:, target].sum(), inner)
    want2 = torch.relu((g2.mean((2, 3), keepdim=True) * inner).sum(1))
    torch.testing.assert_close(m2[0], want2[0], rtol=1e-4, atol=1e-6)


def test_shared_module_contributes_its_last_call_and_module_objects_work():
    relu = nn.ReLU()

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1), relu
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            a = self.act(self.c2(self.act(self.c1(x))))
            return self.fc(a.mean((2, 3)))

    net = Shared()
    x = torch.randn(1, 3, 6, 6)
    m, feat, red = gradattr.grad_cam(net, x, 1, return_layers=True, upsampling="none")
    assert (feat, red) == ("act", "fc")
    by_module = gradattr.grad_cam(net, x, 1, feature_layer=net.act, upsampling="none")
    torch.testing.assert_close(m, by_module)
    with torch.no_grad():
        a = relu(net.c2(relu(net.c1(x))))
    a.requires_grad_(True)
    (g,) = torch.autograd.grad(net.fc(a.mean((2, 3)))[:, 1].sum(), a)
    torch.testing.assert_close(m, torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)))


def test_pretrained_effnet_layers(effnet, cat_coffee):
    _, feat, red = gradattr.grad_cam(effnet, cat_coffee[..., :224], 285, return_layers=True)
    assert (feat, red) == ("_swish", "_fc")


# ---------------------------------------------------------------- state and side effects
def snapshot(net: nn.Module):
    return ([m.training for m in net.modules()], [p.requires_grad for p in net.parameters()],
            [None if p.grad is None else p.grad.clone() for p in net.parameters()],
            [p.device for p in net.parameters()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules()),
            {k: v.clone() for k, v in net.state_dict().items()})


def assert_same(before, after):
    assert before[0] == after[0] and before[1] == after[1] and before[3] == after[3] and before[4] == after[4]
    for g0, g1 in zip(before[2], after[2]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for k in before[5]:
        assert torch.equal(before[5][k], after[5][k]), k


def test_model_and_input_unchanged_after_success_and_error():
    net = small_net(2)
    net.add_module("bn", nn.BatchNorm1d(5))  # a module that would update running stats in train mode
    net.train()
    net.fc.weight.grad = torch.ones_like(net.fc.weight)
    net.conv1.weight.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8)
    x0 = x.clone()
    before = snapshot(net)
    gradattr.grad_cam(net, x, 1)
    assert_same(before, snapshot(net))
    with pytest.raises(GradattrError):
        gradattr.grad_cam(net, x, 99)
    assert_same(before, snapshot(net))
    with pytest.raises(GradattrError):
        gradattr.grad_cam(net, x, 1, feature_layer="conv9")
    assert_same(before, snapshot(net))
    assert torch.equal(x, x0) and not x.requires_grad


def test_train_mode_model_is_explained_in_eval_mode():
    net = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), relu=nn.ReLU(), drop=nn.Dropout(0.9),
                                    pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 2)))
    x = torch.randn(1, 3, 8, 8)
    net.eval()
    ref = gradattr.grad_cam(net, x, 0)
    net.train()
    torch.testing.assert_close(gradattr.grad_cam(net, x, 0), ref)  # dropout off: deterministic
    assert net.training and net.drop.training


def test_input_modified_in_place_by_the_network_is_left_alone():
    net = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(1, 3, 6, 6)
    x0 = x.clone()
    gradattr.grad_cam(net, x, 0)
    assert torch.equal(x, x0)


def test_caller_no_grad_frozen_model_and_requires_grad_input():
    net = small_net(2)
    x = torch.randn(1, 3, 8, 8)
    ref = gradattr.grad_cam(net, x, 2)
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        torch.testing.assert_close(gradattr.grad_cam(net, x, 2), ref)  # automatic layer
        torch.testing.assert_close(gradattr.grad_cam(net, x, 2, feature_layer="relu2"), ref)
    assert not any(p.requires_grad for p in net.parameters())
    xr = x.clone().requires_grad_(True)
    torch.testing.assert_close(gradattr.grad_cam(net, xr, 2), ref)
    assert xr.grad is None


def test_device_options():
    net = small_net(1)
    x = torch.randn(3, 10)
    ref = gradattr.grad_cam(net, x, 0)
    torch.testing.assert_close(gradattr.grad_cam(net, x, 0, device="cpu"), ref)
    torch.testing.assert_close(gradattr.grad_cam(net, x, 0, device=torch.device("cpu")), ref)
    if not torch.cuda.is_available():
        with pytest.raises(GradattrError, match="device: expected an available CUDA GPU"):
            gradattr.grad_cam(net, x, 0, device="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu_and_model_is_moved_back():
    net = small_net(2)
    x = torch.randn(2, 3, 16, 16)
    ref = gradattr.grad_cam(net, x, [1, 2])
    got = gradattr.grad_cam(net, x, [1, 2], device="gpu")
    assert got.device == x.device and next(net.parameters()).device.type == "cpu"
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    gx = gradattr.grad_cam(net.cuda(), x.cuda(), [1, 2])
    assert gx.is_cuda
    torch.testing.assert_close(gx.cpu(), ref, rtol=1e-4, atol=1e-5)
    net.cpu()


# ---------------------------------------------------------------- errors
def test_errors_name_argument_expected_and_given():
    net = small_net(2)
    x = torch.randn(1, 3, 8, 8)
    cases = [
        (dict(feature_layer="relu3"), r"feature_layer: expected the name .* got 'relu3'; did you mean 'relu2', 'relu1'"),
        (dict(feature_layer=nn.ReLU()), "feature_layer: expected a submodule of the network"),
        (dict(feature_layer="fc"), r"feature_layer: .* 'fc' outputs shape \(1, 5\)"),
        (dict(reduction_layer="fcc"), "reduction_layer: expected the name .* did you mean 'fc'"),
        (dict(target=5), r"target: expected class indices in 0..4 .*1-based.*got 5"),
        (dict(target=-1), "target: expected class indices >= 0"),
        (dict(target="cat"), "classes: expected the list of class labels .* got classes=None"),
        (dict(target="kat", classes=["cat", "dog", "a", "b", "c"]), "target: expected a label from classes .*'kat'; did you mean 'cat'"),
        (dict(target=1.5), "target: expected an int class index"),
        (dict(target=np.zeros((2, 1), int)), r"target: expected per-sample classes of shape \(1, K\)"),
        (dict(reduction_fn=lambda y: y.sum(1, keepdim=True)[:, :, None]), r"reduction_fn: expected one score per sample.*got shape \(1, 1, 1\)"),
        (dict(reduction_fn=lambda y: 3.0), "reduction_fn: expected a tensor with one score per sample"),
        (dict(target=1, reduction_fn=lambda y: y[:, 0]), "target: expected None when reduction_fn is given"),
        (dict(upsampling="bilinear"), "upsampling: expected one of 'bicubic', 'nearest', 'none', got 'bilinear'"),
        (dict(device="tpu"), "device: expected 'auto', 'cpu', 'gpu'/'cuda' or a torch.device, got 'tpu'"),
        (dict(input_format="SSXC"), "input_format: expected a string of MATLAB dimension letters"),
        (dict(input_format="SSC"), r"input_format: expected one letter per dimension of x \(4 letters\), got 'SSC'"),
        (dict(feature_layer="relu2", reduction_layer="relu1"), "target: expected a score that depends on feature layer 'relu2'"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(GradattrError, match=pattern):
            gradattr.grad_cam(net, x, **kwargs)


def test_errors_on_input():
    net = small_net(2)
    with pytest.raises(GradattrError, match=r"x: expected \(N, C, S, S\) or \(C, S, S\) .* pass input_format .* got shape \(8, 8\)"):
        gradattr.grad_cam(net, torch.randn(8, 8))
    bad = torch.randn(1, 3, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(GradattrError, match=r"x: expected finite values, got NaN or Inf .*\(1, 3, 8, 8\)"):
        gradattr.grad_cam(net, bad)
    with torch.inference_mode():
        inf_x = torch.randn(1, 3, 8, 8)
    with pytest.raises(GradattrError, match="x: expected a normal tensor .* torch.inference_mode"):
        gradattr.grad_cam(net, inf_x)
    with torch.inference_mode(), pytest.raises(GradattrError, match="inference_mode"):
        gradattr.grad_cam(net, torch.randn(1, 3, 8, 8))
    with pytest.raises(GradattrError, match="x: expected a torch.Tensor or a numpy array, got str"):
        gradattr.grad_cam(net, "image.png")
    with pytest.raises(GradattrError, match="net: expected a torch.nn.Module"):
        gradattr.grad_cam(lambda v: v, torch.randn(1, 3, 8, 8))


def test_error_for_a_layer_that_never_runs_and_for_no_spatial_layer():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.unused = small_net(2), nn.ReLU()

        def forward(self, x):
            return self.body(x)

    net = WithUnused()
    with pytest.raises(GradattrError, match="feature_layer: expected a layer that runs .* 'unused' was never called"):
        gradattr.grad_cam(net, torch.randn(1, 3, 8, 8), 0, feature_layer="unused")
    mlp = nn.Sequential(nn.Conv2d(3, 4, 8), nn.Flatten(), nn.Linear(4, 2))  # 8x8 -> 1x1 at once
    with pytest.raises(GradattrError, match="feature_layer: no layer of this network outputs a tensor with the input's layout"):
        gradattr.grad_cam(mlp, torch.randn(1, 3, 8, 8), 0)


def test_no_hooks_left_after_errors_inside_forward():
    net = small_net(2)

    def boom(y):
        raise RuntimeError("user code failed")

    with pytest.raises(RuntimeError, match="user code failed"):
        gradattr.grad_cam(net, torch.randn(1, 3, 8, 8), reduction_fn=boom)
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0
    assert net.training


# ---------------------------------------------------------------- a real network on real photos
def test_class_discriminative_on_cat_and_espresso(effnet, cat_coffee, imagenet_classes):
    """The Grad-CAM paper's claim: the cat's map lies on the cat, the espresso's on the cup."""
    maps = gradattr.grad_cam(effnet, cat_coffee, ["Egyptian cat", "espresso"], classes=imagenet_classes)
    assert maps.shape == (1, 2, 224, 448)
    cat, cup = maps[0]
    w = 224
    assert cat[:, :w].sum() > 3 * cat[:, w:].sum()
    assert cup[:, w:].sum() > 3 * cup[:, :w].sum()
    assert int(cat.flatten().argmax()) % 448 < w
    assert int(cup.flatten().argmax()) % 448 >= w


def _remembered(net, x):
    """The plan remembered for the automatic layer of ``net`` on inputs shaped like ``x``."""
    from gradattr.capture import PLANS, Plan
    from gradattr.prep import prepare_call

    return PLANS.get(prepare_call(net, x, target=1), Plan((), None))


def test_automatic_layer_is_remembered_per_shape_and_invalidated_by_module_swap():
    net = small_net(2)
    x = torch.randn(2, 3, 8, 8)
    first = gradattr.grad_cam(net, x, 1, return_layers=True)
    plan = _remembered(net, x)
    assert plan.names == ["relu2"] and plan.layers[0].call == 0
    assert _remembered(net, torch.randn(2, 3, 9, 9)) is None  # another input shape: not known yet
    second = gradattr.grad_cam(net, x, 1, return_layers=True)  # the explicit path, same answer
    torch.testing.assert_close(first[0], second[0])
    assert first[1:] == second[1:] == ("relu2", "fc")
    net.relu2 = nn.Sequential(nn.ReLU(), nn.Identity())  # the cached module is gone
    assert _remembered(net, x) is None
    third = gradattr.grad_cam(net, x, 1, return_layers=True)
    assert third[1] == "relu2"
    torch.testing.assert_close(third[0], first[0])


def test_remembered_layer_never_keeps_a_model_alive():
    """A submodule holding a plain reference to its model must not pin the model in the cache."""
    import gc
    import weakref

    refs = []
    for _ in range(5):
        net = small_net(2)
        net.relu2.__dict__["owner"] = net  # a plain (unregistered) back-reference to the model
        gradattr.grad_cam(net, torch.randn(1, 3, 8, 8), 1)
        refs.append(weakref.ref(net))
        del net
    gc.collect()
    assert [r() for r in refs] == [None] * 5


def test_batched_matlab_formats_sscb_and_sssc():
    net2, net3 = small_net(2), small_net(3)
    imgs = torch.randn(9, 10, 3, 2)  # H x W x C x B
    m = gradattr.grad_cam(net2, imgs, [0, 1], input_format="SSCB")
    torch.testing.assert_close(m, gradattr.grad_cam(net2, imgs.permute(3, 2, 0, 1), [0, 1]))
    assert m.shape == (2, 2, 9, 10)
    vol = torch.randn(5, 6, 7, 3)  # H x W x D x C: the S dimensions keep their order
    v = gradattr.grad_cam(net3, vol, 4, input_format="SSSC")
    torch.testing.assert_close(v, gradattr.grad_cam(net3, vol.permute(3, 0, 1, 2), 4))
    assert v.shape == (5, 6, 7)


def test_shared_activation_reused_after_pooling_keeps_the_spatial_call():
    """The automatic layer is the spatial call of an activation the network also applies to a vector."""

    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.fc1, self.fc2 = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            a = self.act(self.conv(x))
            return self.fc2(self.act(self.fc1(a.mean((2, 3)))))

    net = Reused()
    x = torch.randn(2, 3, 7, 7)
    for _ in range(2):  # the first call discovers, the second uses the remembered call index
        m, feat, _ = gradattr.grad_cam(net, x, 1, upsampling="none", return_layers=True)
        assert feat == "act"
        with torch.no_grad():
            a = net.act(net.conv(x))
        a.requires_grad_(True)
        (g,) = torch.autograd.grad(net.fc2(net.act(net.fc1(a.mean((2, 3)))))[:, 1].sum(), a)
        torch.testing.assert_close(m, torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)))


def test_several_targets_without_vectorised_backward_fall_back_to_one_backward_each(monkeypatch):
    net = small_net(2)
    x = torch.randn(2, 3, 8, 8)
    batched = gradattr.grad_cam(net, x, [0, 3, 4], upsampling="none")
    real_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    looped = gradattr.grad_cam(net, x, [0, 3, 4], upsampling="none")
    torch.testing.assert_close(looped, batched)
    torch.testing.assert_close(looped, naive_grad_cam(net, x, [0, 3, 4], split=4), rtol=1e-5, atol=1e-6)
