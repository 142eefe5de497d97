"""The CAM family on toy 1-D, 2-D and 3-D networks, against naive per-paper re-implementations.

Every reference below is written from the paper, one sample, one target and one
channel at a time, with its own hooks and its own autograd calls; nothing in it
comes from gradattr except ``imresize`` (tested in test_resize.py) for the
Guided Grad-CAM upsampling. The toy networks are float64 so the comparisons can
be tight (gradattr returns float32 maps).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradattr
from gradattr import GradattrError, methods
from gradattr.scorer import Scorer
from gradattr.resize import imresize

from references import *  # noqa: F401,F403  (toy networks, naive references)
from references import (CLASSES, LINEAR_MODE, SIZE, TARGETS, SCALAR, activation, acts_and_grads, call, coef_of,  # noqa: F401
                        combine, naive_eigen_cam, naive_grad_cam, naive_guided_backprop, naive_maps,
                        numpy_pc_projection, resolve, score_fns, toy, toy_input)
from expected_warnings import ZERO_MAPS


TARGET_METHODS = ["cam", "grad_cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam",
                  "eigengrad_cam", "score_cam", "ablation_cam", "guided_backprop", "guided_grad_cam"]


@ZERO_MAPS
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_guided_grad_cam_with_bicubic_upsampling_is_clamped_at_zero(rank):
    """MATLAB's bicubic overshoots below 0 next to a zero region; the clamp keeps the guided signs."""
    net, x = toy(rank), toy_input(rank)
    got = gradattr.guided_grad_cam(net, x, [0, 3], feature_layer="3")
    ref = naive_maps("guided_grad_cam", net, x, [0, 3], upsampling_mode="bicubic").float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    if rank > 1:  # the toy 2-D and 3-D maps have zero regions, and the overshoot is there to clamp
        assert float(gradattr.grad_cam(net, x, [0, 3], feature_layer="3").min()) < 0


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_eigen_cam_matches_numpy_svd_and_needs_no_target(rank):
    net, x = toy(rank), toy_input(rank)
    got = gradattr.eigen_cam(net, x, feature_layer="3", upsampling="none")
    with torch.no_grad():
        ref = torch.stack([naive_eigen_cam(activation(net, x[i:i + 1], "3")[0][0]) for i in range(2)])
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-6 * float(ref.max()))
    feature_size = tuple((n + 1) // 2 for n in SIZE[rank])  # the strided conv halves every dim
    assert got.shape == (2, *feature_size)
    assert gradattr.eigen_cam(net, x[0], feature_layer="3", upsampling="none").shape == feature_size
    assert gradattr.eigen_cam(net, x, feature_layer="3").shape == (2, *SIZE[rank])
    # the sign: the map correlates positively with the activations' channel sum
    with torch.no_grad():
        a = activation(net, x, "3")[0]
    proj = methods.eigen_projection(a[:, None])[:, 0]
    plain = a.sum(1)
    for i in range(2):
        p, s = proj[i].flatten(), plain[i].flatten()
        assert float(((p - p.mean()) * (s - s.mean())).sum()) > 0


def test_none_target_is_the_top_class_for_every_method():
    net, x = toy(2), toy_input(2)
    top = net(x).argmax(1)
    for method in TARGET_METHODS:
        got = call(method, net, x, None)
        ref = call(method, net, x, top.numpy()[:, None])[:, 0]
        torch.testing.assert_close(got, ref, msg=method)


# ---------------------------------------------------------------- options
@pytest.mark.parametrize("method", ["grad_cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam",
                                    "layer_cam", "eigengrad_cam", "guided_backprop", "guided_grad_cam"])
@ZERO_MAPS
def test_counterfactual_negates_the_gradients(method):
    net, x = toy(2), toy_input(2)
    got = call(method, net, x, [1, 2], counterfactual=True)
    ref = naive_maps(method, net, x, [lambda y: -y[:, 1], lambda y: -y[:, 2]]).float()  # negated scores
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("method", ["cam", "grad_cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam",
                                    "layer_cam", "score_cam", "ablation_cam"])
@ZERO_MAPS
def test_eigen_smooth_matches_numpy_projection_of_the_channel_terms(method, rank):
    net, x = toy(rank), toy_input(rank)
    got = call(method, net, x, [2, 0], eigen_smooth=True)
    ref = naive_maps(method, net, x, [2, 0], smooth=True).float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.max()))
    assert not torch.allclose(got, call(method, net, x, [2, 0]))


AUGS = [(flip, f) for flip in (False, True) for f in (0.9, 1.0, 1.1)]


def normalized(m):
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("method", ["grad_cam", "score_cam", "eigen_cam"])
def test_aug_smooth_is_the_mean_of_six_normalised_augmented_maps(method, rank):
    net, x = toy(rank), toy_input(rank)
    if method == "eigen_cam":
        got = gradattr.eigen_cam(net, x, feature_layer="3", upsampling="none", aug_smooth=True)
    else:
        got = call(method, net, x, None, aug_smooth=True)
    top = net(x).argmax(1)  # fixed on the original input
    refs = []
    for i in range(2):
        acc = 0
        for flip, f in AUGS:
            xa = (x[i:i + 1].flip(-1) if flip else x[i:i + 1]) * f
            if method == "eigen_cam":
                m = naive_eigen_cam(activation(net, xa, "3")[0][0].detach())
            else:
                m = naive_maps(method, net, xa, int(top[i]))[0, 0]
            acc = acc + normalized(m.flip(-1) if flip else m)
        refs.append(acc / 6)
    ref = torch.stack(refs).float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert float(got.min()) >= 0 and float(got.max()) <= 1


@pytest.mark.parametrize("method", ["grad_cam_plus_plus", "layer_cam", "score_cam", "ablation_cam",
                                    "eigen_cam", "eigengrad_cam", "xgrad_cam", "hires_cam", "grad_cam",
                                    "guided_grad_cam"])
def test_multi_layer_fuses_normalised_per_layer_maps(method):
    """A list of feature layers: each map normalised, resized to the largest, averaged, ReLU, normalised."""
    net, x = toy(2), toy_input(2)
    kw = {} if method == "eigen_cam" else {"target": 1}
    if method == "guided_grad_cam":
        fused = gradattr.guided_grad_cam(net, x, 1, feature_layer=["1", "3"], upsampling="nearest")
        per = [gradattr.grad_cam(net, x, 1, feature_layer=lay, upsampling="none") for lay in ("1", "3")]
        per = [normalized_batch(p) for p in per]
        # fused at the input's size with the call's upsampling ("nearest"), as every fused map
        per[1] = imresize(per[1][:, None], tuple(per[0].shape[1:]), "nearest")[:, 0]
        cam_map = normalized_batch(torch.relu(torch.stack(per).mean(0)))
        ref = gradattr.guided_backprop(net, x, 1) * cam_map[:, None]
        torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-7)
        return
    fn = getattr(gradattr, method)
    fused = fn(net, x, feature_layer=["1", "3"], upsampling="none", **kw)
    per = [fn(net, x, feature_layer=lay, upsampling="none", **kw) for lay in ("1", "3")]
    # with upsampling="none" the smaller map ("3") is resized (MATLAB bicubic) to the larger ("1")
    per = [normalized_batch(p) for p in per]
    per[1] = imresize(per[1][:, None], tuple(per[0].shape[1:]), "bicubic")[:, 0]
    ref = normalized_batch(torch.relu(torch.stack(per).mean(0)))
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)


def normalized_batch(m):
    return torch.stack([normalized(mi) for mi in m])


# ---------------------------------------------------------------- CAM
@ZERO_MAPS
def test_cam_is_grad_cam_times_positions_and_finds_the_head():
    for rank in (1, 2, 3):
        net, x = toy(rank), toy_input(rank)
        got = call("cam", net, x, [0, 3])
        positions = int(np.prod(got.shape[2:]))
        torch.testing.assert_close(got, positions * call("grad_cam", net, x, [0, 3]), rtol=1e-5, atol=1e-6)
    m, feat, red = gradattr.cam(toy(2), toy_input(2), 1, return_layers=True)
    assert (feat, red) == ("3", "6")
    # the head is found by value, not position: a later Linear of the same width is not it
    net, x = WithUnusedLinear().double().eval(), toy_input(2)
    torch.testing.assert_close(gradattr.cam(net, x, 1, feature_layer="body.3", upsampling="none"),
                               naive_maps("cam", net.as_sequential(), x, 1)[:, 0].float(),
                               rtol=1e-5, atol=1e-7)


class WithUnusedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = toy(2)
        self.aux = nn.Linear(5, 5)  # registered after the head, never on the output path

    def forward(self, x):
        return self.body(x)

    def as_sequential(self):
        return self.body


class NoGapHead(nn.Module):
    """conv -> ReLU -> flatten -> linear: the classifier sees every position, not their average."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


class GapThenTwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()
        self.fc1, self.fc2 = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(self.relu(self.conv(x)).mean((2, 3)))))


def test_cam_errors_without_a_gap_linear_head():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(GradattrError, match=r"net: CAM expected .*global average pool.*no nn.Linear with "
                                            r"in_features=3"):
        gradattr.cam(NoGapHead(), x, 0, feature_layer="relu")
    with pytest.raises(GradattrError, match=r"found nn.Linear 'fc1', 'fc2' with in_features=3, but the "
                                            r"output is none of them"):
        gradattr.cam(GapThenTwoLinears(), x, 0, feature_layer="relu")
    with pytest.raises(GradattrError, match="feature_layer: expected one layer for CAM"):
        gradattr.cam(toy(2), toy_input(2), 0, feature_layer=["1", "3"])


# ---------------------------------------------------------------- Score-CAM and Ablation-CAM specifics
class BatchFromInput(nn.Module):
    """Reads its batch size from the input, as EfficientNet-Lite's ``x.view(bs, -1)`` does."""

    def __init__(self, rank=2):
        super().__init__()
        self.body = toy(rank)[:4]
        self.fc = toy(rank)[6]

    def forward(self, x):
        bs = x.size(0)
        f = self.body(x)
        return self.fc(f.flatten(2).mean(-1).view(bs, -1))


def batch_sizes_seen(net, module):
    sizes = []
    h = module.register_forward_pre_hook(lambda m, i: sizes.append(i[0].shape[0]))
    return sizes, h


def test_ablation_fast_path_runs_the_prefix_at_batch_one():
    net, x = toy(2), toy_input(2)
    sizes, h = batch_sizes_seen(net, net[0])
    try:
        got = gradattr.ablation_cam(net, x, [1, 2], feature_layer="3", upsampling="none", batch_size=2)
    finally:
        h.remove()
    # capture (batch 2, which also counts the feature module's calls), then per sample
    # 3 chunks of channels at batch 1
    assert sizes == [2] + [1] * 6
    ref = naive_maps("ablation_cam", net, x, [1, 2]).float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    with pytest.MonkeyPatch.context() as mp:  # the whole network on every copy instead
        mp.setattr(Scorer, "_tail_scores", lambda self, copies, i, check, replay=None: (None, False))
        slow = gradattr.ablation_cam(net, x, [1, 2], feature_layer="3", upsampling="none", batch_size=2)
    torch.testing.assert_close(slow, ref, rtol=1e-5, atol=1e-7)


def test_ablation_falls_back_to_full_forward_when_the_tail_reads_the_batch_from_the_input():
    net, x = BatchFromInput().double().eval(), toy_input(2)
    sizes, h = batch_sizes_seen(net, net.body[0])
    try:
        got = gradattr.ablation_cam(net, x, [1, 2], feature_layer="body.3", upsampling="none", batch_size=3)
    finally:
        h.remove()
    # capture, the failed check at batch 1, then full forwards on 3 + 2 repeated inputs
    assert sizes == [2, 1, 3, 2, 3, 2]
    ref = naive_maps("ablation_cam", net, x, [1, 2], layer="body.3").float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # the fast path forced
        force_fast(net, x)


class RowsFromInput(BatchFromInput):
    """Returns as many rows as its input has: no crash, but one row for a batch of ablated copies."""

    def forward(self, x):
        return self.fc(self.body(x).flatten(2).mean(-1))[:x.size(0)]


def test_ablation_falls_back_when_the_output_has_the_wrong_number_of_rows():
    net, x = RowsFromInput().double().eval(), toy_input(2)
    got = gradattr.ablation_cam(net, x, 3, feature_layer="body.3", upsampling="none")
    ref = naive_maps("ablation_cam", net, x, 3, layer="body.3")[:, 0].float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    with pytest.raises(GradattrError, match=r"net: expected an output with one row per copy \(5\) "
                                            r"when only the layers after the feature layer run on the copies, "
                                            r"got 1 rows"):
        force_fast(net, x)


def force_fast(net, x):
    """Ablation-CAM with the tail-only path taken without its check (so its error surfaces)."""
    real = Scorer._tail_scores
    with pytest.MonkeyPatch.context() as mp:
        # (on the first chunk row 0 is the sample's own map, the check's: dropped with the check)
        mp.setattr(Scorer, "_tail_scores",
                   lambda self, copies, i, check, replay=None: real(self, copies[1:] if check else copies, i, False))
        gradattr.ablation_cam(net, x, 1, feature_layer="body.3")


class SharedReLU(nn.Module):
    """One ReLU module called twice, the feature layer being its second call."""

    def __init__(self):
        super().__init__()
        net = toy(2)
        self.c1, self.c2, self.act, self.fc = net[0], net[2], nn.ReLU(), net[6]

    def forward(self, x):
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


def test_ablation_of_a_shared_module_ablates_its_last_call():
    net, x = SharedReLU().double().eval(), toy_input(2)
    got = gradattr.ablation_cam(net, x, 2, feature_layer="act", upsampling="none")
    ref = torch.stack([naive_ablation_cam_last_call(net, x[i:i + 1], lambda y: y[:, 2]) for i in range(2)])
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-7)


def naive_ablation_cam_last_call(net, x1, score):
    with torch.no_grad():
        a = torch.relu(net.c2(torch.relu(net.c1(x1))))[0]
        y0 = score(net.fc(a[None].mean((2, 3))))[0]
        out = 0
        for c in range(a.shape[0]):
            ab = a.clone()
            ab[c] = 0
            out = out + (y0 - score(net.fc(ab[None].mean((2, 3))))[0]) / y0 * a[c]
        return torch.relu(out)


def constant_channel_net():
    net = toy(2)
    with torch.no_grad():
        net[2].weight[1].zero_()
        net[2].bias[1] = 0.7  # channel 1: constant 0.7
        net[2].weight[3].zero_()
        net[2].bias[3] = -1.0  # channel 3: dead (constant 0)
    return net


def test_score_cam_constant_channels_share_one_zero_input_pass():
    net, x = constant_channel_net(), toy_input(2)
    sizes, h = batch_sizes_seen(net, net[0])
    try:
        got = gradattr.score_cam(net, x, [0, 2], feature_layer="3", upsampling="none", batch_size=4)
    finally:
        h.remove()
    # capture (2), 2 samples x 3 varying channels = 6 masked inputs in chunks of 4, one zero input
    assert sizes == [2, 4, 2, 1]
    ref = naive_maps("score_cam", net, x, [0, 2]).float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch_size", [1, 5, None])
def test_perturbation_results_do_not_depend_on_the_chunk_size(batch_size):
    net, x = toy(3), toy_input(3)
    ref_s = naive_maps("score_cam", net, x, 1).float()[:, 0]
    ref_a = naive_maps("ablation_cam", net, x, 1).float()[:, 0]
    for method, ref in (("score_cam", ref_s), ("ablation_cam", ref_a)):
        got = getattr(gradattr, method)(net, x, 1, feature_layer="3", upsampling="none",
                                        batch_size=batch_size)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_progress_bar_only_when_asked(capsys):
    net, x = toy(1), toy_input(1)
    gradattr.score_cam(net, x, 1, feature_layer="3")
    gradattr.ablation_cam(net, x, 1, feature_layer="3")
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == ""
    gradattr.score_cam(net, x, 1, feature_layer="3", progress=True)
    gradattr.ablation_cam(net, x, 1, feature_layer="3", progress=True)
    err = capsys.readouterr().err
    assert "Score-CAM" in err and "Ablation-CAM" in err and "10/10" in err  # 2 samples x 5 channels


# ---------------------------------------------------------------- guided backprop
class FunctionalRelus(nn.Module):
    """Every way of writing a rectifier: module, torch.relu, F.relu, Tensor.relu_, F.relu6, ReLU6.

    A convolution (a mixed-sign map) separates any two rectifiers, so each rectifier's rule shows in
    the result (two rectifiers in a row would clamp each other's gradients).
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.c1 = nn.Conv1d(2, 4, 3, padding=1)
        self.c2, self.c3, self.c4, self.c5, self.c6 = (nn.Conv1d(4, 4, 3, padding=1) for _ in range(5))
        self.relu, self.relu6 = nn.ReLU(inplace=True), nn.ReLU6()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.relu(self.c1(x))
        h = torch.relu(self.c2(h))
        h = F.relu(self.c3(h)) * 3
        h = self.c4(h).relu_()
        h = F.relu6(self.c5(h) * 4)
        h = self.relu6(self.c6(h) * 2)
        return self.fc(h.mean(-1))


def naive_guided_functional(net, x1, score):
    """The same network written out, with the guided rule applied at every rectifier by hand."""
    def guided(inp, g, hi=None):
        gate = (inp > 0) if hi is None else (inp > 0) & (inp < hi)
        return torch.clamp(g, min=0) * gate

    x1 = x1.clone().requires_grad_(True)
    with torch.enable_grad():
        z1 = net.c1(x1)
        h1 = torch.relu(z1)
        z2 = net.c2(h1)
        h2 = torch.relu(z2)
        z3 = net.c3(h2)
        h3 = torch.relu(z3) * 3
        z4 = net.c4(h3)
        h4 = torch.relu(z4)
        z5 = net.c5(h4) * 4
        h5 = F.relu6(z5)
        z6 = net.c6(h5) * 2
        h6 = F.relu6(z6)
        s = score(net.fc(h6.mean(-1)))[0]
        g = torch.autograd.grad(s, h6)[0]
        for z, h, hi, scale in ((z6, h5, 6.0, 1), (z5, h4, 6.0, 1), (z4, h3, None, 1), (z3, h2, None, 3),
                                (z2, h1, None, 1), (z1, x1, None, 1)):
            g = guided(z, scale * g, hi)  # the rectifier (times the constant after it)
            g = torch.autograd.grad(z, h, g)[0]  # the linear map before it
        return g[0]


def test_guided_backprop_covers_modules_functional_and_inplace_rectifiers():
    net = FunctionalRelus().double().eval()
    x = toy_input(1, n=2)
    got = gradattr.guided_backprop(net, x, 1)
    ref = torch.stack([naive_guided_functional(net, x[i:i + 1], lambda y: y[:, 1]) for i in range(2)])
    assert got.shape == (2, 2, 12)
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-7)
    # and it differs from the plain gradient (the rule did something)
    xg = x.clone().requires_grad_(True)
    plain = torch.autograd.grad(net(xg)[:, 1].sum(), xg)[0]
    assert not torch.allclose(got.double(), plain, atol=1e-4)


def test_guided_mode_ends_with_the_call_and_touches_no_global():
    net = FunctionalRelus().double().eval()
    relu_before, frelu_before = torch.relu, F.relu
    gradattr.guided_backprop(net, toy_input(1, n=1), 0)
    assert torch.relu is relu_before and F.relu is frelu_before
    assert isinstance(net.relu, nn.ReLU) and type(net.relu6) is nn.ReLU6
    t = torch.tensor([1.0, -1.0, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad(torch.relu(t), t, torch.tensor([-3.0, 5.0, 2.0]))
    assert g.tolist() == [-3.0, 0.0, 2.0]  # plain ReLU gradient: negative gradients pass


def test_guided_rule_by_hand():
    from gradattr.guided import GuidedRectifiers

    x = torch.tensor([-1.0, 0.5, 3.0, 7.0], requires_grad=True)
    with GuidedRectifiers():
        r = F.relu(x)
        r6 = F.hardtanh(x, 0.0, 6.0)
        t = F.hardtanh(x)  # hardtanh(-1, 1) is not a rectifier: plain gradient
    up = torch.tensor([2.0, -2.0, 2.0, 2.0])
    assert torch.autograd.grad(r, x, up)[0].tolist() == [0.0, 0.0, 2.0, 2.0]
    assert torch.autograd.grad(r6, x, up)[0].tolist() == [0.0, 0.0, 2.0, 0.0]
    assert torch.autograd.grad(t, x, up)[0].tolist() == [0.0, -2.0, 0.0, 0.0]
    assert r.tolist() == [0.0, 0.5, 3.0, 7.0] and r6.tolist() == [0.0, 0.5, 3.0, 6.0]


# ---------------------------------------------------------------- state and invariants
def snapshot(net: nn.Module):
    return ([m.training for m in net.modules()], [p.requires_grad for p in net.parameters()],
            [None if p.grad is None else p.grad.clone() for p in net.parameters()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in net.modules()),
            {k: v.clone() for k, v in net.state_dict().items()}, [type(m) for m in net.modules()])


ALL = TARGET_METHODS + ["eigen_cam"]


@pytest.mark.parametrize("method", ALL)
def test_model_and_input_left_as_found(method):
    net = toy(2)
    net.add_module("bn", nn.BatchNorm1d(CLASSES).double())
    net.train()
    net[6].weight.grad = torch.ones_like(net[6].weight)
    net[0].weight.requires_grad_(False)
    x = toy_input(2)
    x0 = x.clone()
    before = snapshot(net)
    kw = {} if method == "eigen_cam" else {"target": 1}
    if method not in ("guided_backprop",):
        kw["feature_layer"] = "3"
    if method == "cam":
        kw["reduction_layer"] = "6"
    out = getattr(gradattr, method)(net, x, **kw)
    after = snapshot(net)
    assert before[0] == after[0] and before[1] == after[1] and before[3] == after[3] == 0
    assert before[5] == after[5]
    for g0, g1 in zip(before[2], after[2]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for k in before[4]:
        assert torch.equal(before[4][k], after[4][k]), k
    assert torch.equal(x, x0) and not x.requires_grad and torch.isfinite(out).all()


class Tripwire(nn.Module):
    """Raises inside the forward pass when its condition holds."""

    def __init__(self, when):
        super().__init__()
        self.when = when

    def forward(self, x):
        if self.when(x):
            raise RuntimeError("tripwire")
        return x


@pytest.mark.parametrize("method,when", [
    ("score_cam", lambda x: x.shape[0] > 2),  # in the masked passes
    ("ablation_cam", lambda x: x.shape[0] > 2),  # in the tail, with the replace hook on
    ("guided_backprop", lambda x: torch.is_grad_enabled()),  # inside the guided mode
    ("grad_cam_plus_plus", lambda x: torch.is_grad_enabled()),
    ("eigen_cam", lambda x: True)])
def test_no_hooks_and_no_mode_left_after_an_error_inside_forward(method, when):
    net = toy(2)
    seq = nn.Sequential(OrderedDict([(k, net[int(k)]) for k in "0123"] + [("trip", Tripwire(when))]
                                    + [(k, net[int(k)]) for k in "456"]))
    kw = {} if method == "eigen_cam" else {"target": 1}
    if method != "guided_backprop":
        kw["feature_layer"] = "3"
    if method in ("score_cam", "ablation_cam"):
        kw["batch_size"] = 4
    with pytest.raises(RuntimeError, match="tripwire"):
        getattr(gradattr, method)(seq, toy_input(2), **kw)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in seq.modules()) == 0
    t = torch.tensor([1.0, -1.0], requires_grad=True)
    assert torch.autograd.grad(torch.relu(t), t, torch.tensor([-2.0, 1.0]))[0].tolist() == [-2.0, 0.0]


@pytest.mark.parametrize("method", ALL)
def test_1d_equals_2d_with_height_one(method):
    net1 = toy(1)
    net2 = toy(2)
    with torch.no_grad():  # the same weights, as (1 x k) kernels
        for i in (0, 2):
            net2[i].weight.zero_()
            net2[i].weight[:, :, 1, :] = net1[i].weight
            net2[i].bias.copy_(net1[i].bias)
        net2[6].load_state_dict(net1[6].state_dict())
    x = toy_input(1)
    kw = {} if method == "eigen_cam" else {"target": 1}  # class 2's maps are empty for 8 methods
    a = getattr(gradattr, method)(net1, x, **kw)
    assert float(a.abs().max()) > 0  # the comparison compares something
    b = getattr(gradattr, method)(net2, x[:, :, None, :], **kw)
    if method in ("guided_backprop", "guided_grad_cam"):
        b = b[:, :, 0]
    else:
        b = b[:, 0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@ZERO_MAPS
def test_numpy_in_numpy_out_and_reduction_fn_for_regression():
    net, x = toy(1), toy_input(1)
    for method in ALL:
        kw = {} if method == "eigen_cam" else {"reduction_fn": lambda y: y[:, 0] + y[:, 1]}
        out = getattr(gradattr, method)(net, x.numpy(), **kw)
        assert isinstance(out, np.ndarray), method
        ref = getattr(gradattr, method)(net, x, **kw)
        np.testing.assert_allclose(out, ref.numpy(), rtol=1e-6, err_msg=method)


# ---------------------------------------------------------------- attribute / list_methods / errors
def test_attribute_errors():
    net, x = toy(2), toy_input(2)
    with pytest.raises(GradattrError, match=r"method: expected one of 'grad_cam', .* got 'scorecam'; did you "
                                            r"mean 'score_cam'"):
        gradattr.attribute(net, x, 1, method="scorecam")
    with pytest.raises(GradattrError, match=r"batchsize: expected an option of score_cam .*did you mean "
                                            r"'batch_size'"):
        gradattr.attribute(net, x, 1, method="score_cam", batchsize=4)
    with pytest.raises(GradattrError, match=r"counterfactual: expected an option of cam"):
        gradattr.attribute(net, x, 1, method="cam", counterfactual=True)
    with pytest.raises(GradattrError, match=r"target: expected None for eigen_cam.*got 3"):
        gradattr.attribute(net, x, 3, method="eigen_cam")


def test_option_errors():
    net, x = toy(2), toy_input(2)
    with pytest.raises(GradattrError, match=r"batch_size: expected None .* or a positive int, got 0"):
        gradattr.score_cam(net, x, 1, batch_size=0)
    with pytest.raises(GradattrError, match=r"batch_size: expected .* got 2.5"):
        gradattr.ablation_cam(net, x, 1, batch_size=2.5)
    with pytest.raises(GradattrError, match=r"upsampling: expected 'bicubic' or 'nearest' .* got 'none'"):
        gradattr.guided_grad_cam(net, x, 1, upsampling="none")
    with pytest.raises(GradattrError, match=r"eigen_smooth: expected True or False, got 'yes'"):
        gradattr.grad_cam_plus_plus(net, x, 1, eigen_smooth="yes")
    with pytest.raises(GradattrError, match=r"aug_smooth: expected True or False, got 1"):
        gradattr.eigen_cam(net, x, aug_smooth=1)
    with pytest.raises(GradattrError, match=r"progress: expected True or False"):
        gradattr.score_cam(net, x, 1, progress="yes")
    with pytest.raises(GradattrError, match=r"target: expected class indices in 0..3 .* got 7"):
        gradattr.score_cam(net, x, 7)
    with pytest.raises(GradattrError, match=r"reduction_fn: expected a differentiable .* got scores that do not depend on y"):
        gradattr.guided_backprop(net, x, reduction_fn=lambda y: torch.zeros(y.shape[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ALL)
def test_gpu_result_equals_cpu_result_and_model_stays_on_cpu(method):
    net, x = toy(2).float(), toy_input(2).float()
    kw = {} if method == "eigen_cam" else {"target": [1, 2]}
    cpu = getattr(gradattr, method)(net, x, **kw)
    gpu = getattr(gradattr, method)(net, x, device="cuda", **kw)
    assert gpu.device.type == "cpu" and all(p.device.type == "cpu" for p in net.parameters())
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5 * float(cpu.abs().max()))


@pytest.mark.parametrize("c,p", [(3, 40), (40, 3), (5, 5)])
def test_eigen_projection_both_gram_sides_match_numpy_svd(c, p):
    """The Gram-matrix shortcut equals the SVD projection whichever side (channels, positions) is smaller."""
    rng = np.random.default_rng(c * 100 + p)
    terms = torch.from_numpy(rng.normal(size=(2, 1, c, p)) + np.linspace(0, 3, c)[None, None, :, None] *
                             rng.normal(size=(1, 1, 1, p)))
    got = methods.eigen_projection(terms)
    for b in range(2):
        m = terms[b, 0].numpy().T  # (P, C)
        mc = m - m.mean(0)
        _, _, vt = np.linalg.svd(mc, full_matrices=False)
        v = vt[0] if vt[0].sum() >= 0 else -vt[0]
        np.testing.assert_allclose(got[b, 0].numpy(), mc @ v, atol=1e-9)


def test_eigen_cam_stops_the_forward_at_the_feature_layer():
    net, x = toy(2), toy_input(2)
    after = []
    h = net[-1].register_forward_hook(lambda m, i, o: after.append(1))
    try:
        first = gradattr.eigen_cam(net, x, feature_layer="3")  # learns the call to capture
        n_first = len(after)
        second = gradattr.eigen_cam(net, x, feature_layer="3")
    finally:
        h.remove()
    assert n_first == 1 and len(after) == 1  # the second call never reached the head
    torch.testing.assert_close(first, second)
