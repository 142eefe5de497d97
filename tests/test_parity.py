"""Parity with pytorch-grad-cam and captum on real networks, and class-discriminativeness on real photos.

pytorch-grad-cam returns post-processed maps: ReLU, min-max scaling, OpenCV
bilinear resize to the input, min-max scaling again (``scale_cam_image`` in
``compute_cam_per_layer`` and ``aggregate_multi_layers``). :func:`pgc_post`
reproduces that on gradattr's raw ``upsampling="none"`` maps, and the two are
compared at float32 precision. captum returns raw attributions, compared as they are.

Networks: a torchvision ResNet-18 with seeded random weights (96 x 96 inputs,
enough for 3 x 3 and 6 x 6 maps), and the pretrained EfficientNet-Lite0 on the
scikit-image photos. EfficientNet-Lite0 calls one ReLU6 module for every
activation, so its last activation is not a module of its own that both
libraries can hook; the copies below wrap ``_bn1`` as ``Sequential(_bn1,
ReLU6)``, which computes the same function (ReLU6 is idempotent) and gives both
libraries the head's activation as a module called once. For captum, whose
guided backprop overrides ``nn.ReLU`` modules only, the ReLU6 modules of the
copy are replaced by an ``nn.ReLU`` subclass computing ReLU6; gradattr runs on
the original network, which also checks that its guided rule covers ReLU6.
"""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradattr

pgc = pytest.importorskip("pytorch_grad_cam")
captum_attr = pytest.importorskip("captum.attr")
torchvision = pytest.importorskip("torchvision")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

CAT, ESPRESSO = 285, 967
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")  # its notes on hooks and requires_grad


# ---------------------------------------------------------------- networks and inputs
@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()  # random weights, nothing downloaded


@pytest.fixture(scope="module")
def rx():
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))


class ReLU6AsReLU(nn.ReLU):
    """An ``nn.ReLU`` (so captum hooks it) that computes ReLU6."""

    def forward(self, x):
        return F.relu6(x, inplace=self.inplace)


@pytest.fixture(scope="module")
def captum_net(head_net):
    net = copy.deepcopy(head_net)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.ReLU6:
                setattr(module, name, ReLU6AsReLU())
    return net.eval()


@pytest.fixture(scope="module")
def photos(cat_coffee):
    """The cat and the espresso photos as a batch of two 224 x 224 images."""
    return torch.cat([cat_coffee[..., :224], cat_coffee[..., 224:]])


# ---------------------------------------------------------------- pytorch-grad-cam's post-processing
def scale(a):
    a = a - np.min(a)
    return a / (1e-7 + np.max(a))


def pgc_post(maps, size):
    """``maps (N, h, w)`` -> what pytorch-grad-cam returns for one target layer."""
    maps = np.asarray(maps, dtype=np.float32)
    return np.float32([scale(cv2.resize(np.float32(scale(np.maximum(m, 0))), size[::-1])) for m in maps])


def pgc_run(cls, net, layers, x, classes, **kw):
    with cls(net, layers) as explainer:
        return explainer(x, None if classes is None else [ClassifierOutputTarget(c) for c in classes], **kw)


def ours(method, net, x, classes, layer, **kw):
    """gradattr's raw maps at the feature layer's resolution, one target class per sample."""
    target = None if classes is None else np.asarray(classes)[:, None]
    out = getattr(gradattr, method)(net, x, target, feature_layer=layer, upsampling="none", **kw)
    return out[:, 0].numpy()


GRADIENT_PAIRS = [("grad_cam", "GradCAM"), ("grad_cam_plus_plus", "GradCAMPlusPlus"),
                  ("xgrad_cam", "XGradCAM"), ("hires_cam", "HiResCAM"), ("layer_cam", "LayerCAM"),
                  ("eigengrad_cam", "EigenGradCAM")]


# ---------------------------------------------------------------- gradient methods vs pytorch-grad-cam
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
@pytest.mark.parametrize("method,cls", GRADIENT_PAIRS)
def test_pytorch_grad_cam_gradient_methods_resnet18(resnet, rx, method, cls, layer):
    module = dict(resnet.named_modules())[layer]
    ref = pgc_run(getattr(pgc, cls), resnet, [module], rx, [3, 7])
    got = ours(method, resnet, rx, [3, 7], layer)
    assert got.shape == ((2, 6, 6) if layer == "layer3" else (2, 3, 3))
    if method == "eigengrad_cam":
        got = align_eigen_sign(got, eigen_reference(resnet, module, rx, [3, 7], grad=True))
    np.testing.assert_allclose(pgc_post(got, (96, 96)), ref, atol=2e-5)


@pytest.mark.parametrize("method,cls", GRADIENT_PAIRS)
def test_pytorch_grad_cam_gradient_methods_effnet(head_net, photos, method, cls):
    ref = pgc_run(getattr(pgc, cls), head_net, [head_net._bn1], photos, [CAT, ESPRESSO])
    got = ours(method, head_net, photos, [CAT, ESPRESSO], "_bn1")
    assert got.shape == (2, 7, 7)
    if method == "eigengrad_cam":
        proj = eigen_reference(head_net, head_net._bn1, photos, [CAT, ESPRESSO], grad=True)
        got = align_eigen_sign(got, proj)
    np.testing.assert_allclose(pgc_post(got, (224, 224)), ref, atol=2e-5)


# ---------------------------------------------------------------- Eigen-CAM: the same map up to LAPACK's sign
def eigen_reference(net, module, x, classes, grad=False):
    """pytorch-grad-cam's own projection (its ``get_2d_projection``), sign as LAPACK returns it."""
    store = {}
    h = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            xx = x.clone()
            y = net(xx)
            a = store["a"]
            if grad:
                s = y[torch.arange(len(classes)), torch.as_tensor(classes)].sum()
                (g,) = torch.autograd.grad(s, a)
                a = g * a
    finally:
        h.remove()
    return get_2d_projection(a.detach().numpy())


def align_eigen_sign(got, projection):
    """Where pytorch-grad-cam's SVD sign is opposite to gradattr's, its map is ReLU(-ours_raw): check that
    gradattr's map is ReLU(+projection) there, and give back what pytorch-grad-cam computes."""
    out = []
    for g, p in zip(got, projection):
        agrees = np.allclose(g, np.maximum(p, 0), atol=1e-4 * np.abs(p).max())
        flipped = np.allclose(g, np.maximum(-p, 0), atol=1e-4 * np.abs(p).max())
        assert agrees or flipped  # gradattr's map is the projection with one of the two signs
        out.append(g if agrees else np.maximum(p, 0))
    return np.float32(out)


@pytest.mark.parametrize("which", ["resnet18", "effnet"])
def test_pytorch_grad_cam_eigen_cam_and_the_sign(which, resnet, rx, head_net, photos):
    net, x, module, layer, size = ((resnet, rx, resnet.layer4, "layer4", (96, 96)) if which == "resnet18"
                                   else (head_net, photos, head_net._bn1, "_bn1", (224, 224)))
    ref = pgc_run(pgc.EigenCAM, net, [module], x, None)
    got = gradattr.eigen_cam(net, x, feature_layer=layer, upsampling="none").numpy()
    proj = eigen_reference(net, module, x, None)
    np.testing.assert_allclose(pgc_post(align_eigen_sign(got, proj), size), ref, atol=2e-5)
    # gradattr's sign: positive correlation with the activations' channel sum
    store = {}
    h = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach()))
    with torch.no_grad():
        net(x)
    h.remove()
    plain = store["a"].sum(1).flatten(1).numpy()
    raw = np.float32([p if np.dot(p.flatten() - p.mean(), s - s.mean()) >= 0 else -p
                      for p, s in zip(proj, plain)])
    np.testing.assert_allclose(got, np.maximum(raw, 0), atol=1e-4 * np.abs(raw).max())


# ---------------------------------------------------------------- Score-CAM and Ablation-CAM
def prefix_batches(module):
    sizes = []
    return sizes, module.register_forward_pre_hook(lambda m, i: sizes.append(i[0].shape[0]))


@pytest.mark.slow  # minutes of CPU in total with its neighbours; CI's second step runs it
def test_pytorch_grad_cam_score_cam(resnet, rx, head_net, photos):
    x = rx[:1]
    ref = pgc_run(pgc.ScoreCAM, resnet, [resnet.layer3], x, [7])
    got = ours("score_cam", resnet, x, [7], "layer3")
    assert got.shape == (1, 6, 6) and got.max() > 0
    np.testing.assert_allclose(pgc_post(got, (96, 96)), ref, atol=2e-5)
    xe = F.interpolate(photos[:1], size=(96, 96), mode="bilinear", antialias=True)
    ref = pgc_run(pgc.ScoreCAM, head_net, [head_net._blocks[10]], xe, [CAT])
    got = ours("score_cam", head_net, xe, [CAT], "_blocks.10")
    assert got.shape == (1, 6, 6) and got.max() > 0
    np.testing.assert_allclose(pgc_post(got, (96, 96)), ref, atol=2e-5)


@pytest.mark.slow  # minutes of CPU in total with its neighbours; CI's second step runs it
def test_pytorch_grad_cam_ablation_cam_fast_path_resnet18(resnet, rx):
    """ResNet-18's tail runs on the ablated copies: the layers before layer4 see batch 1 only."""
    x = rx[:1]
    ref = pgc_run(pgc.AblationCAM, resnet, [resnet.layer4], x, [7])  # layer4 ends in a ReLU: zeros ablate
    sizes, h = prefix_batches(resnet.conv1)
    try:
        got = ours("ablation_cam", resnet, x, [7], "layer4")
    finally:
        h.remove()
    assert set(sizes) == {1} and got.max() > 0
    # (y - y_k) / y subtracts nearly equal scores: float32 rounding of y_k depends on the batch
    np.testing.assert_allclose(pgc_post(got, (96, 96)), ref, atol=5e-4)


@pytest.mark.slow  # minutes of CPU in total with its neighbours; CI's second step runs it
def test_pytorch_grad_cam_ablation_cam_fallback_effnet(head_net, photos):
    """EfficientNet-Lite0 reads its batch size from its input: the full network runs on the copies."""
    x = F.interpolate(photos[:1], size=(64, 64), mode="bilinear", antialias=True)
    ref = pgc_run(pgc.AblationCAM, head_net, [head_net._bn1], x, [CAT])  # post-ReLU6: zeros ablate
    sizes, h = prefix_batches(head_net._conv_stem)
    try:
        got = ours("ablation_cam", head_net, x, [CAT], "_bn1")
    finally:
        h.remove()
    assert max(sizes) > 1 and got.max() > 0
    np.testing.assert_allclose(pgc_post(got, (64, 64)), ref, atol=5e-4)


# ---------------------------------------------------------------- several layers, and aug_smooth
def test_pytorch_grad_cam_multi_layer_layer_cam(resnet, rx):
    """pytorch-grad-cam fuses layers after its own resize; gradattr's per-layer maps, post-processed
    and averaged its way, give its result; gradattr's own fusion (MATLAB bicubic) is close to it."""
    ref = pgc_run(pgc.LayerCAM, resnet, [resnet.layer3, resnet.layer4], rx, [3, 7])
    # per layer: ReLU, scale, resize (no second scaling); then mean over layers, ReLU, scale
    per = [[cv2.resize(np.float32(scale(np.maximum(m, 0))), (96, 96))
            for m in ours("layer_cam", resnet, rx, [3, 7], lay)] for lay in ("layer3", "layer4")]
    recipe = np.float32([scale(np.maximum(m, 0)) for m in np.mean(per, 0)])
    np.testing.assert_allclose(recipe, ref, atol=2e-5)
    fused = gradattr.layer_cam(resnet, rx, np.array([[3], [7]]), feature_layer=["layer3", "layer4"])[:, 0]
    for f, r in zip(fused.numpy(), ref):
        assert np.corrcoef(f.ravel(), r.ravel())[0, 1] > 0.95


@pytest.mark.slow  # a few seconds: CI's second step
def test_pytorch_grad_cam_aug_smooth(resnet, rx):
    """The same six augmentations: gradattr's maps of the augmented inputs, post-processed, give
    pytorch-grad-cam's aug_smooth result."""
    x = rx[:1]
    ref = pgc_run(pgc.GradCAM, resnet, [resnet.layer4], x, [7], aug_smooth=True)
    acc = 0
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            xa = (x.flip(-1) if flip else x) * factor
            m = pgc_post(ours("grad_cam", resnet, xa, [7], "layer4"), (96, 96))
            acc = acc + (m[..., ::-1] if flip else m)
    np.testing.assert_allclose(acc / 6, ref, atol=2e-5)
    got = gradattr.grad_cam(resnet, x, 7, feature_layer="layer4", upsampling="none", aug_smooth=True)
    resized = cv2.resize(got[0].numpy(), (96, 96))  # mean of normalised maps, then one resize
    assert np.abs(resized - ref[0]).max() < 0.05


# ---------------------------------------------------------------- captum
def test_captum_layer_grad_cam_guided_backprop_guided_grad_cam_resnet18(resnet, rx):
    target = 7
    lgc = captum_attr.LayerGradCam(resnet, resnet.layer4).attribute(rx, target=target).detach()
    got = gradattr.grad_cam(resnet, rx, target, feature_layer="layer4", upsampling="none")
    torch.testing.assert_close(got, torch.relu(lgc[:, 0]), rtol=1e-5, atol=1e-6)
    gbp = captum_attr.GuidedBackprop(resnet).attribute(rx.clone(), target=target).detach()
    got = gradattr.guided_backprop(resnet, rx, target)
    assert got.shape == (2, 3, 96, 96)
    torch.testing.assert_close(got, gbp, rtol=1e-5, atol=1e-6 * float(gbp.abs().max()))
    ggc = captum_attr.GuidedGradCam(resnet, resnet.layer4).attribute(rx.clone(), target=target).detach()
    got = gradattr.guided_grad_cam(resnet, rx, target, feature_layer="layer4", upsampling="nearest")
    torch.testing.assert_close(got, ggc, rtol=1e-5, atol=1e-6 * float(ggc.abs().max()))


def test_captum_on_effnet_and_guided_relu6(effnet, captum_net, photos):
    x, target = photos[:1], CAT
    gbp = captum_attr.GuidedBackprop(captum_net).attribute(x.clone(), target=target).detach()
    got = gradattr.guided_backprop(effnet, x, target)  # the original network: nn.ReLU6 via hardtanh
    torch.testing.assert_close(got, gbp, rtol=1e-5, atol=1e-6 * float(gbp.abs().max()))
    lgc = captum_attr.LayerGradCam(captum_net, captum_net._bn1).attribute(x, target=target).detach()
    got = gradattr.grad_cam(captum_net, x, target, feature_layer="_bn1", upsampling="none")
    torch.testing.assert_close(got, torch.relu(lgc[:, 0]), rtol=1e-5, atol=1e-6)
    ggc = captum_attr.GuidedGradCam(captum_net, captum_net._bn1).attribute(x.clone(), target=target).detach()
    got = gradattr.guided_grad_cam(captum_net, x, target, feature_layer="_bn1", upsampling="nearest")
    torch.testing.assert_close(got, ggc, rtol=1e-5, atol=1e-6 * float(ggc.abs().max()))


# ---------------------------------------------------------------- class-discriminativeness on cat | espresso
class PooledHead(nn.Module):
    """EfficientNet-Lite0 with a head that keeps the batch of its features (the same function).

    Lets Ablation-CAM run only the head on the ablated copies at full resolution.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        f = self.net.extract_features(x)
        return self.net._fc(self.net._dropout(self.net._avg_pooling(f).flatten(1)))


def halves(m):
    """Mass of a ``(H, W)`` (or ``(C, H, W)``, by absolute value) map on the left and right halves, and the
    peak's column."""
    m = m.abs().sum(0) if m.ndim == 3 else m
    w = m.shape[-1] // 2
    return float(m[:, :w].sum()), float(m[:, w:].sum()), int(m.flatten().argmax()) % m.shape[-1]


DISCRIMINATIVE = ["cam", "grad_cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam",
                  "eigengrad_cam", "score_cam", "ablation_cam", "guided_grad_cam"]


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in ("score_cam", "ablation_cam")
                                    else m for m in DISCRIMINATIVE])  # the two slow ones in CI's second step
def test_class_discriminative_cat_left_espresso_right(method, effnet, cat_coffee, imagenet_classes):
    x, kw = cat_coffee, {}
    net = effnet
    if method == "score_cam":  # one forward pass per channel: a smaller input and a 320-channel layer
        x = F.interpolate(cat_coffee, size=(64, 128), mode="bilinear", antialias=True)
        kw["feature_layer"] = "_blocks.15"
    if method == "ablation_cam":
        net = PooledHead(effnet)
    maps = getattr(gradattr, method)(net, x, ["Egyptian cat", "espresso"], classes=imagenet_classes, **kw)[0]
    (cl, cr, cpeak), (el, er, epeak) = halves(maps[0]), halves(maps[1])
    w = x.shape[-1] // 2
    assert cl > cr and er > el, (cl, cr, el, er)
    assert cpeak < w <= epeak, (cpeak, epeak)


def test_guided_backprop_is_not_class_discriminative_but_guided_grad_cam_is(effnet, cat_coffee):
    """The Grad-CAM paper's motivation for Guided Grad-CAM: guided backprop's maps hardly depend on the
    class; multiplied by Grad-CAM they do."""
    gbp = gradattr.guided_backprop(effnet, cat_coffee, [CAT, ESPRESSO])[0].abs().sum(1)
    ggc = gradattr.guided_grad_cam(effnet, cat_coffee, [CAT, ESPRESSO])[0].abs().sum(1)

    def corr(m):
        return float(np.corrcoef(m[0].flatten().numpy(), m[1].flatten().numpy())[0, 1])

    assert corr(gbp) > 0.8 and corr(ggc) < 0.3
