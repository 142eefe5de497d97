"""Issue 11's gradient and activation methods: naive per-paper references on toy 1-D, 2-D and 3-D
networks, parity with pytorch-grad-cam / torch-cam on ResNet-18 (random seeded weights) and the
pretrained EfficientNet-Lite0 at 224 px, and class-discriminativeness on the cat | espresso photo.

The naive references (one sample, one target, one channel at a time, own hooks and own autograd
calls) are under ``# naive references``, one ``naive_<method>`` per method; each returns the map
``(K, *s)`` of one sample ``x1 (1, C, *S)`` at the feature layer's resolution (FullGrad: at the
input's), for score functions ``fns`` (``y -> (1,)``).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradattr
from gradattr import GradattrError
from references import (LINEAR_MODE, activation, draws, naive_deep_feature_factorization, naive_fem,  # noqa: F401
                        naive_finer_cam, naive_full_grad, naive_grad_cam_elementwise, naive_kpca_cam,
                        naive_shapley_cam, naive_smooth_grad_cam_plus_plus, tail_of, toy, toy_input)
from expected_warnings import ZERO_MAPS

CAT, ESPRESSO = 285, 967


# ====================================================================== the toys against the references
def log_softmax_of(c):
    return lambda y: torch.log_softmax(y, 1)[:, c]


def close(got, ref, what):
    ref = ref.to(got.dtype)
    assert got.shape == ref.shape, what
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()) + 1e-12, msg=what)
    return float(ref.abs().sum()) > 0


def per_sample(method_fn, naive_fn, rank, **kw):
    """Batched gradattr vs the naive reference sample by sample; how many maps were non-zero."""
    net, x = toy(rank), toy_input(rank)
    got = method_fn(net, x)
    refs = torch.stack([naive_fn(net, x[i:i + 1], i) for i in range(x.shape[0])])
    return close(got, refs, f"rank {rank}")


@ZERO_MAPS
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_grad_cam_elementwise_matches_naive(rank):
    classes = np.array([[0, 2], [3, 1]])
    assert per_sample(
        lambda net, x: gradattr.grad_cam_elementwise(net, x, classes, feature_layer="3", upsampling="none"),
        lambda net, x1, i: naive_grad_cam_elementwise(net, x1, "3", [lambda y, c=c: y[:, c] for c in classes[i]]),
        rank)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fem_matches_naive(rank):
    assert per_sample(lambda net, x: gradattr.fem(net, x, k=0.5, feature_layer="3", upsampling="none")[:, None],
                      lambda net, x1, i: naive_fem(net, x1, "3", k=0.5), rank)


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "linear", "cosine"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_kpca_cam_matches_scikit_learn_kernel_pca(rank, kernel):
    assert per_sample(lambda net, x: gradattr.kpca_cam(net, x, kernel=kernel, feature_layer="3",
                                                       upsampling="none")[:, None],
                      lambda net, x1, i: naive_kpca_cam(net, x1, "3", kernel=kernel), rank)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_deep_feature_factorization_matches_naive_and_is_joint_over_the_batch(rank):
    net, x = toy(rank), toy_input(rank, n=3)
    got = gradattr.deep_feature_factorization(net, x, n_components=3, feature_layer="3", upsampling="none")
    assert close(got, naive_deep_feature_factorization(net, x, "3", 3), f"rank {rank}")
    # one sample alone is factorised on its own: another answer than inside the batch
    alone = gradattr.deep_feature_factorization(net, x[:1], n_components=3, feature_layer="3", upsampling="none")
    assert not torch.allclose(alone[0], got[0], atol=1e-3)


@ZERO_MAPS
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_finer_cam_matches_naive(rank):
    classes = np.array([[0, 2], [3, 1]])
    assert per_sample(
        lambda net, x: gradattr.finer_cam(net, x, classes, feature_layer="3", upsampling="none"),
        lambda net, x1, i: naive_finer_cam(net, x1, "3", classes[i]), rank)
    net, x = toy(rank), toy_input(rank)
    got = gradattr.finer_cam(net, x, 1, alpha=0.5, comparison_ranks=(1, 2), feature_layer="3", upsampling="none")
    ref = torch.stack([naive_finer_cam(net, x[i:i + 1], "3", [1], alpha=0.5, ranks=(1, 2))[0] for i in range(2)])
    close(got, ref, "alpha, ranks")


@ZERO_MAPS
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_shapley_cam_matches_naive_hessian_vector_product(rank):
    net, x = toy(rank), toy_input(rank)
    every = lambda y: torch.log_softmax(y, 1)  # noqa: E731  (N, 4): one map per class
    got = gradattr.shapley_cam(net, x, reduction_fn=every, feature_layer="3", upsampling="none")
    ref = torch.stack([naive_shapley_cam(net, x[i:i + 1], "3", [log_softmax_of(c) for c in range(4)],
                                         tail_of(net)) for i in range(2)])
    assert close(got, ref, f"rank {rank}")
    # the second-order term is really there: Grad-CAM of the same score differs
    gc = gradattr.grad_cam(net, x, reduction_fn=every, feature_layer="3", upsampling="none")
    assert (gc - got).abs().max() > 1e-3 * got.abs().max()


@ZERO_MAPS
def test_shapley_cam_is_grad_cam_for_a_logit_of_a_piecewise_linear_tail():
    net, x = toy(2), toy_input(2)
    kw = dict(feature_layer="3", upsampling="none")
    torch.testing.assert_close(gradattr.shapley_cam(net, x, [0, 3], **kw), gradattr.grad_cam(net, x, [0, 3], **kw))


@ZERO_MAPS
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_smooth_grad_cam_plus_plus_matches_naive_with_the_same_noise(rank):
    net, x = toy(rank), toy_input(rank)
    classes = np.array([[0, 2], [3, 1]])
    got = gradattr.smooth_grad_cam_plus_plus(net, x, classes, num_samples=3, std=0.5, seed=7,
                                             feature_layer="3", upsampling="none")
    noise = draws(7, x.shape, 3)  # one draw of the whole batch per noisy pass
    ref = torch.stack([naive_smooth_grad_cam_plus_plus(
        net, x[i:i + 1], "3", [lambda y, c=c: y[:, c] for c in classes[i]], [z[i:i + 1] for z in noise], 0.5)
        for i in range(2)])
    assert close(got, ref, f"rank {rank}")


def test_smooth_grad_cam_plus_plus_seed_reproduces_and_generator_is_used():
    net, x = toy(2), toy_input(2)
    kw = dict(feature_layer="1", upsampling="none", num_samples=2, std=1.0)
    a = gradattr.smooth_grad_cam_plus_plus(net, x, 1, seed=3, **kw)
    torch.testing.assert_close(a, gradattr.smooth_grad_cam_plus_plus(net, x, 1, seed=3, **kw), rtol=0, atol=0)
    assert (a - gradattr.smooth_grad_cam_plus_plus(net, x, 1, seed=4, **kw)).abs().max() > 1e-3 * a.max()
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(a, gradattr.smooth_grad_cam_plus_plus(net, x, 1, generator=g, **kw))
    with pytest.raises(GradattrError, match="seed: expected None"):
        gradattr.smooth_grad_cam_plus_plus(net, x, 1, seed=1.5)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_full_grad_matches_naive(rank):
    classes = np.array([[0, 2], [3, 1]])
    assert per_sample(lambda net, x: gradattr.full_grad(net, x, classes),
                      lambda net, x1, i: naive_full_grad(net, x1, [lambda y, c=c: y[:, c] for c in classes[i]]),
                      rank)


def test_new_methods_leave_the_model_as_found_and_check_their_options():
    net, x = toy(2), toy_input(2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    for name in ("grad_cam_elementwise", "finer_cam", "shapley_cam", "smooth_grad_cam_plus_plus", "full_grad"):
        gradattr.attribute(net, x, 1, method=name, **({"seed": 0} if "smooth" in name else {}))
    for name in ("fem", "kpca_cam", "deep_feature_factorization"):
        gradattr.attribute(net, x, method=name)
    assert net.training and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(GradattrError, match="kernel: expected one of"):
        gradattr.kpca_cam(net, x, kernel="laplacian")
    with pytest.raises(GradattrError, match="comparison_ranks: expected"):
        gradattr.finer_cam(net, x, 1, comparison_ranks=(0,))
    with pytest.raises(GradattrError, match="target: expected class targets"):
        gradattr.finer_cam(net, x, reduction_fn=lambda y: y[:, 0])
    with pytest.raises(GradattrError, match="feature_layer: expected one layer"):
        gradattr.deep_feature_factorization(net, x, feature_layer=["1", "3"])
    with pytest.raises(GradattrError, match="target: expected None"):
        gradattr.attribute(net, x, 1, method="fem")


def test_dff_concepts_are_the_factorisation_and_scored_by_the_head():
    from gradattr.methods.activation import dff_concepts

    net, x = toy(2), toy_input(2, n=3)
    concepts, scores = dff_concepts(net, x, 3, feature_layer="3")
    assert concepts.shape == (3, 5) and scores.shape == (3, 4)
    torch.testing.assert_close(scores, net[6](concepts))  # the GAP + linear head, found by value
    # the concept embeddings reconstruct the (shifted) activations with the maps: W H ~ A - offset
    maps = gradattr.deep_feature_factorization(net, x, n_components=3, feature_layer="3", upsampling="none")
    a = torch.cat([activation(net, x[i:i + 1], "3")[0].detach() for i in range(3)])
    flat = a.transpose(0, 1).flatten(1)
    offset = flat.min(1, keepdim=True).values
    approx = (concepts.T - offset) @ maps.transpose(0, 1).flatten(1).double()
    assert float((approx - (flat - offset)).norm() / (flat - offset).norm()) < 0.5
    assert dff_concepts(net, x, 3, feature_layer="3", head=None)[1] is None


# ====================================================================== parity at 224 px
# Every test here runs 224-px networks and pytorch-grad-cam / torch-cam beside gradattr: marked slow
# (10-50 s each on a busy 2-core machine).
pgc = pytest.importorskip("pytorch_grad_cam")
torchvision = pytest.importorskip("torchvision")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget  # noqa: E402


def scale(a):
    """pytorch-grad-cam's ``scale_cam_image`` of one map (as tests/test_parity.py)."""
    a = a - np.min(a)
    return a / (1e-7 + np.max(a))


def pgc_post(maps, size):
    """``maps (N, h, w)`` -> what pytorch-grad-cam returns for one target layer (see test_parity.py)."""
    maps = np.asarray(maps, dtype=np.float32)
    return np.float32([scale(cv2.resize(np.float32(scale(np.maximum(m, 0))), size[::-1])) for m in maps])


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def rx():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def photos(cat_coffee):
    return torch.cat([cat_coffee[..., :224], cat_coffee[..., 224:]])


def pgc_call(cam, x, targets, **kw):
    with cam as explainer:
        return explainer(x, targets, **kw)


def ours_raw(method, net, x, layer, classes=None, **kw):
    target = () if classes is None else (np.asarray(classes)[:, None],)
    out = getattr(gradattr, method)(net, x, *target, feature_layer=layer, upsampling="none", **kw)
    return (out if classes is None else out[:, 0]).numpy()


def setups(resnet, rx, head_net, photos):
    return [(resnet, rx, "layer3", [3, 7]), (resnet, rx, "layer4", [3, 7]),
            (head_net, photos, "_bn1", [CAT, ESPRESSO])]


@pytest.fixture(scope="module")
def nets(resnet, rx, head_net, photos):
    return setups(resnet, rx, head_net, photos)


def module_of(net, layer):
    return dict(net.named_modules())[layer]


@pytest.mark.slow
@pytest.mark.parametrize("case", [0, 1, 2], ids=["resnet-layer3", "resnet-layer4", "effnet"])
def test_grad_cam_elementwise_and_fem_agree_with_pytorch_grad_cam(nets, case):
    net, x, layer, classes = nets[case]
    m = module_of(net, layer)
    ref = pgc_call(pgc.GradCAMElementWise(net, [m]), x, [ClassifierOutputTarget(c) for c in classes])
    np.testing.assert_allclose(pgc_post(ours_raw("grad_cam_elementwise", net, x, layer, classes), (224, 224)),
                               ref, atol=1e-5)
    ref = pgc_call(pgc.FEM(net, [m]), x, None)
    np.testing.assert_allclose(pgc_post(ours_raw("fem", net, x, layer), (224, 224)), ref, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", [0, 1, 2], ids=["resnet-layer3", "resnet-layer4", "effnet"])
def test_finer_cam_agrees_with_pytorch_grad_cam(nets, case):
    net, x, layer, classes = nets[case]
    ours = [ours_raw("finer_cam", net, x[i:i + 1], layer, [c]) for i, c in enumerate(classes)]
    for i, c in enumerate(classes):  # pgc's target_idx is one class for the whole batch
        ref = pgc_call(pgc.FinerCAM(net, [module_of(net, layer)]), x[i:i + 1], None, target_idx=c)
        np.testing.assert_allclose(pgc_post(ours[i], (224, 224)), ref, atol=1e-5)


def rest(classes):
    """pytorch-grad-cam's ClassifierOutputReST per sample: y_c - CE(y, c) = 2 y_c - logsumexp(y)."""
    idx = torch.as_tensor(classes)[:, None]
    return lambda y: 2 * y.gather(1, idx)[:, 0] - torch.logsumexp(y, 1)


@pytest.mark.slow
@pytest.mark.parametrize("case", [0, 1, 2], ids=["resnet-layer3", "resnet-layer4", "effnet"])
def test_shapley_cam_agrees_with_pytorch_grad_cam(nets, case):
    net, x, layer, classes = nets[case]
    ref = pgc_call(pgc.ShapleyCAM(net, [module_of(net, layer)]), x, [ClassifierOutputReST(c) for c in classes])
    got = ours_raw("shapley_cam", net, x, layer, reduction_fn=rest(classes))
    np.testing.assert_allclose(pgc_post(got, (224, 224)), ref, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", [0, 1, 2], ids=["resnet-layer3", "resnet-layer4", "effnet"])
def test_kpca_cam_agrees_with_pytorch_grad_cam_up_to_the_sign(nets, case):
    """Same projection; scikit-learn's sign (largest |entry| positive) may differ from ours."""
    from gradattr.methods.activation import kpca_projection
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_kernel

    net, x, layer, _ = nets[case]
    store = {}
    h = module_of(net, layer).register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach()))
    with torch.no_grad():
        net(x)
    h.remove()
    sk = get_2d_projection_kernel(store["a"].numpy())  # pytorch-grad-cam's raw projection
    mine = kpca_projection(store["a"][:, None])[:, 0].numpy()
    signs = np.sign(np.sum(sk * mine, axis=(1, 2)))
    got = ours_raw("kpca_cam", net, x, layer)
    np.testing.assert_allclose(pgc_post(got, (224, 224)), pgc_post(signs[:, None, None] * sk, (224, 224)),
                               atol=1e-5)
    ref = pgc_call(pgc.KPCA_CAM(net, [module_of(net, layer)]), x, None)
    for i in np.flatnonzero(signs > 0):  # where the signs agree, pytorch-grad-cam's own output
        np.testing.assert_allclose(pgc_post(got[i:i + 1], (224, 224)), ref[i:i + 1], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", [0, 1, 2], ids=["resnet-layer3", "resnet-layer4", "effnet"])
def test_deep_feature_factorization_agrees_with_pytorch_grad_cam(nets, case):
    from gradattr.methods.activation import dff_concepts
    from pytorch_grad_cam import DeepFeatureFactorization

    net, x, layer, _ = nets[case]
    head = None if layer == "layer3" else net.fc if hasattr(net, "fc") else net._fc  # what pools layer
    result = DeepFeatureFactorization(net, module_of(net, layer), computation_on_concepts=head)(x, 4)
    concepts, expl, outs = result if head is not None else (*result, None)
    got = ours_raw("deep_feature_factorization", net, x, layer, n_components=4)
    post = np.float32([[cv2.resize(np.float32(scale(m)), (224, 224)) for m in g] for g in got])
    np.testing.assert_allclose(post, np.float32(expl), atol=1e-5)
    c, s = dff_concepts(net, x, 4, feature_layer=layer, head="auto" if head is not None else None)
    np.testing.assert_allclose(c.numpy(), concepts.T, rtol=1e-5, atol=1e-5)
    if head is not None:  # the head found by value is the one pytorch-grad-cam's users pass
        np.testing.assert_allclose(s.numpy(), outs, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_full_grad_agrees_with_pytorch_grad_cam_on_resnet(resnet, rx):
    ref = pgc_call(pgc.FullGrad(resnet, []), rx, [ClassifierOutputTarget(c) for c in (3, 7)])
    got = gradattr.full_grad(resnet, rx, np.array([[3], [7]]))[:, 0].numpy()
    np.testing.assert_allclose(np.float32([scale(m) for m in got]), ref, atol=1e-5)


@pytest.mark.slow
def test_full_grad_agrees_with_pytorch_grad_cam_on_effnet(effnet, photos):
    """EfficientNet-Lite's convolutions are Conv2d subclasses without bias: both use its 49 batch norms."""
    ref = pgc_call(pgc.FullGrad(effnet, []), photos, [ClassifierOutputTarget(c) for c in (CAT, ESPRESSO)])
    got = gradattr.full_grad(effnet, photos, np.array([[CAT], [ESPRESSO]]))[:, 0].numpy()
    np.testing.assert_allclose(np.float32([scale(m) for m in got]), ref, atol=1e-5)


# ---------------------------------------------------------------- torch-cam's Smooth Grad-CAM++
def torchcam_smooth(net, layer, x, classes, **kw):
    from torchcam.methods import SmoothGradCAMpp

    with SmoothGradCAMpp(net, target_layer=layer, input_shape=tuple(x.shape[1:]), **kw) as ex:
        scores = net(x)
        return ex(list(classes), scores)[0].detach()


@pytest.mark.slow
@pytest.mark.parametrize("case", [1, 2], ids=["resnet-layer4", "effnet"])
def test_smooth_grad_cam_plus_plus_agrees_with_torchcam_without_noise_where_gradients_are_flat(nets, case):
    """torch-cam departs from the paper three times: it combines the channels of the *last noisy*
    input's activations, multiplies alpha by the last noisy gradient, and sums ``A_ab D3_ab`` over
    positions. Without noise the first two vanish, and before global average pooling (``d score /
    d A`` constant over positions) the third: there the two agree exactly."""
    pytest.importorskip("torchcam")
    net, x, layer, classes = nets[case]
    ref = torchcam_smooth(net, layer, x, classes, std=1e-12, num_samples=2)
    got = torch.from_numpy(ours_raw("smooth_grad_cam_plus_plus", net, x, layer, classes, std=1e-12, seed=0,
                                    num_samples=2))
    lo = got.flatten(1).amin(1)[:, None, None]
    got = got - lo
    got = got / (got.flatten(1).amax(1)[:, None, None] + 1e-8)
    if case == 1:
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)
    else:
        # EfficientNet applies ReLU6 again after the hooked Sequential(_bn1, ReLU6): the gradient is 0
        # where the activation saturates at 6, so it is not quite flat and the third departure shows.
        assert np.corrcoef(got.numpy().ravel(), ref.numpy().ravel())[0, 1] >= 0.999
        assert np.abs(got.numpy() - ref.numpy()).max() < 0.02


@pytest.mark.slow
def test_smooth_grad_cam_plus_plus_departs_from_torchcam_where_it_departs_from_the_paper(resnet):
    """At layer3 the gradient varies over positions: torch-cam's alpha (``sum_ab A_ab D3_ab``) and its
    use of the last noisy gradient give another map; with the same noise, ours is the paper's (the
    toy tests check the formula), torch-cam's is not."""
    pytest.importorskip("torchcam")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(11)  # torch-cam draws from the global generator
    ref = torchcam_smooth(resnet, "layer3", x, [3], num_samples=2)
    got = torch.from_numpy(ours_raw("smooth_grad_cam_plus_plus", resnet, x, "layer3", [3],
                                    num_samples=2, seed=11))
    got = (got - got.min()) / (got.max() - got.min() + 1e-8)
    diff = float((got - ref).abs().max())
    corr = float(np.corrcoef(got.flatten(), ref.flatten())[0, 1])
    assert diff > 0.05, diff
    assert corr > 0.3, corr  # the same kind of map, not the same map


# ---------------------------------------------------------------- class-discriminativeness
@pytest.mark.parametrize("method,kw", [("grad_cam_elementwise", {}), ("finer_cam", {}),
                                       pytest.param("shapley_cam", {}, marks=pytest.mark.slow),
                                       pytest.param("smooth_grad_cam_plus_plus", {"seed": 0},
                                                    marks=pytest.mark.slow)])
def test_class_discriminative_on_cat_and_espresso(effnet, cat_coffee, imagenet_classes, method, kw):
    maps = getattr(gradattr, method)(effnet, cat_coffee, ["Egyptian cat", "espresso"],
                                     classes=imagenet_classes, **kw)
    assert maps.shape == (1, 2, 224, 448)
    cat, cup = maps[0]
    w = 224
    assert cat[:, :w].sum() > 1.5 * cat[:, w:].sum(), method
    assert cup[:, w:].sum() > 1.5 * cup[:, :w].sum(), method


@pytest.mark.slow
def test_full_grad_is_only_weakly_class_discriminative(effnet, cat_coffee, imagenet_classes):
    """FullGrad scales every channel's map to [0, 1] on its own (the paper's psi), which removes most of
    the class's weighting: both maps cover both objects. What is left is relative: the cat's map puts
    a larger share of its mass on the cat than the espresso's map does, and the reverse."""
    maps = gradattr.full_grad(effnet, cat_coffee, ["Egyptian cat", "espresso"], classes=imagenet_classes)
    cat, cup = maps[0]
    share_cat = float(cat[:, :224].sum() / cat.sum())
    share_cup = float(cup[:, :224].sum() / cup.sum())
    assert share_cat > share_cup + 0.03, (share_cat, share_cup)
    assert share_cat < 0.7  # not the 3:1 of Grad-CAM


# ---------------------------------------------------------------- SESS
def test_sess_is_an_option_of_every_layer_method_and_checks_its_settings():
    from gradattr.registry import REGISTRY

    for name, m in REGISTRY.items():
        assert ("sess" in m.option_names()) == (m.layered and m.returns == "map"), name
    net, x = toy(2), toy_input(2)
    with pytest.raises(GradattrError, match="sess: expected True, False or a dict"):
        gradattr.grad_cam(net, x, 1, sess={"scales": 2})
    with pytest.raises(GradattrError, match="sess: expected False when aug_smooth=True"):
        gradattr.grad_cam(net, x, 1, sess=True, aug_smooth=True)


@ZERO_MAPS
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_sess_single_scale_is_the_scaled_map_and_more_scales_stay_in_unit_range(rank):
    """One scale, one window, no blur: the whole input is the only patch, and SESS returns the
    method's map resized (multi-)linearly to the input and min-max scaled, as pytorch-grad-cam."""
    net = toy(rank)
    x = torch.randn(2, 2, *(8,) * rank, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = dict(feature_layer="3")
    one = gradattr.grad_cam(net, x, [1, 2], sess=dict(num_scales=1, smooth=False), **kw)
    raw = gradattr.grad_cam(net, x, [1, 2], upsampling="none", **kw)
    mode = LINEAR_MODE[rank]
    up = F.interpolate(raw.flatten(0, 1)[:, None].float(), size=tuple(x.shape[2:]), mode=mode,
                       align_corners=False)[:, 0].unflatten(0, raw.shape[:2])
    ref = torch.stack([torch.stack([scale_t(scale_t(scale_t(m))) for m in row]) for row in up])
    torch.testing.assert_close(one.float(), ref, atol=1e-5, rtol=0)
    many = gradattr.grad_cam(net, x, [1, 2], sess=dict(num_scales=3, step_size=3), **kw)
    assert many.shape == x.shape[:1] + (2,) + x.shape[2:]
    assert float(many.min()) >= 0 and float(many.max()) <= 1 and float(many.max()) > 0.99
    # The blur is OpenCV's 11-tap GaussianBlur, sigma 5, reflect-101 borders: scipy's
    # gaussian_filter with radius 5 (truncate 1) and mode "mirror" on the unblurred fusion.
    from scipy.ndimage import gaussian_filter

    flat = gradattr.grad_cam(net, x, [1, 2], sess=dict(num_scales=3, step_size=3, smooth=False), **kw)
    blurred = gaussian_filter(flat.double().numpy(), sigma=(0, 0) + (5.0,) * rank, truncate=1.0,
                              mode="mirror")
    blurred = torch.from_numpy(blurred).float()
    torch.testing.assert_close(many.float(), torch.stack([torch.stack([scale_t(m) for m in row])
                                                          for row in blurred]), atol=1e-5, rtol=0)


def scale_t(m):
    m = m - m.min()
    return m / (m.max() + 1e-7)


@pytest.mark.slow
def test_sess_agrees_with_pytorch_grad_cam(resnet):
    """Exact with max pooling. With the default mean pooling, a pixel counts towards the mean where a
    pasted patch map is > 0; right at a patch's edge that value is 0 in one library and ~1e-9 in the
    other (OpenCV's and torch's bilinear resize round differently), which changes the count there,
    so the default is compared by correlation."""
    from pytorch_grad_cam.sess import SESS

    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(7)]
    for cfg in (dict(num_scales=2, pool="max"), dict(num_scales=2)):
        with SESS(resnet, [resnet.layer4], **cfg) as sess:
            ref = sess(x, targets)
        got = gradattr.grad_cam(resnet, x, np.array([[3], [7]]), feature_layer="layer4", sess=cfg)[:, 0].numpy()
        if cfg.get("pool") == "max":
            np.testing.assert_allclose(got, ref, atol=1e-5)
        else:
            assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] >= 0.999
