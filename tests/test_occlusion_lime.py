"""occlusion (MATLAB occlusionSensitivity) and image_lime (MATLAB imageLIME): hand-computed values,
parity with captum's Occlusion and Lime where they compute the same thing, seeds, bad input."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr.errors import GradattrError


def small_cnn(classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, classes)).double().eval()


def image(n=2, c=3, h=12, w=12, seed=1):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Weighted(nn.Module):
    """score_k = sum_{c, t} W[k, c, t] x[c, t]: the drop of an occluded region is pencil arithmetic."""

    def __init__(self, w):
        super().__init__()
        self.pool = nn.AvgPool1d(1)  # tells gradattr the input is (N, C, T)
        self.w = nn.Parameter(w)

    def forward(self, x):
        return torch.einsum("nct,kct->nk", self.pool(x), self.w)


def test_occlusion_hand_computed_on_a_linear_score():
    w = torch.zeros(2, 1, 6, dtype=torch.float64)
    w[1] = torch.tensor([1.0, 2.0, 0.0, 0.0, -1.0, 3.0])
    net = Weighted(w)
    x = torch.tensor([[[1.0, 1.0, 4.0, 0.0, 2.0, 4.0]]], dtype=torch.float64)  # mean 2
    # whole masks of 2, stride 2: drops w . (x - 2) on [0,2), [2,4), [4,6) = -3, 0, 6
    got = gradattr.occlusion(net, x, 1, mask_size=2, stride=2, mask_clipping=False, softmax=False,
                             upsampling="none")
    torch.testing.assert_close(got, torch.tensor([[-3.0, 0.0, 6.0]]))
    # MATLAB's default clipping, masks of 3: centres 0, 2, 4, masks [0,2), [1,4), [3,6): -3, -2, 6
    got = gradattr.occlusion(net, x, 1, mask_size=3, stride=2, softmax=False, upsampling="none")
    torch.testing.assert_close(got, torch.tensor([[-3.0, -2.0, 6.0]]))
    # a number as mask value: drops w . (x - 0) on [0,3), [3,6) = 3, 10
    got = gradattr.occlusion(net, x, 1, mask_size=3, stride=3, mask_clipping=False, mask_value=0.0,
                             softmax=False, upsampling="none")
    torch.testing.assert_close(got, torch.tensor([[3.0, 10.0]]))
    # nearest upsampling spreads each position's drop over its patch
    got = gradattr.occlusion(net, x, 1, mask_size=2, stride=2, mask_clipping=False, softmax=False,
                             upsampling="nearest")
    torch.testing.assert_close(got, torch.tensor([[-3.0, -3.0, 0.0, 0.0, 6.0, 6.0]]))


def test_occlusion_auto_sizes_follow_matlab():
    """MaskSize 20 % of the size (rounded), Stride 10 % (rounded up): 28 x 20 -> masks 6 x 4, stride
    3 x 2, and with clipping ceil(28 / 3) x ceil(20 / 2) = 10 x 10 positions."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).eval()
    x = torch.randn(1, 28, 20)
    assert gradattr.occlusion(net, x, 0, upsampling="none").shape == (10, 10)
    assert gradattr.occlusion(net, x, 0, upsampling="none", mask_clipping=False).shape == (8, 9)
    assert gradattr.occlusion(net, x, 0).shape == (28, 20)


def test_occlusion_per_channel_mask_value_and_mean():
    net = small_cnn()
    x = image(1)
    mean = x.mean((2, 3))[0].tolist()
    auto = gradattr.occlusion(net, x, 2, mask_size=4, stride=4, upsampling="none")
    explicit = gradattr.occlusion(net, x, 2, mask_size=4, stride=4, mask_value=mean, upsampling="none")
    torch.testing.assert_close(auto, explicit)
    other = gradattr.occlusion(net, x, 2, mask_size=4, stride=4, mask_value=[0.0, 0.0, 0.0], upsampling="none")
    assert not torch.allclose(auto, other)


@pytest.mark.parametrize("m", [3, 4])
def test_occlusion_equals_captum_where_patches_tile_the_input(m):
    captum = pytest.importorskip("captum.attr")
    net = small_cnn()
    x = image(2)
    mean = x.mean((2, 3), keepdim=True).expand_as(x).contiguous()
    ref = captum.Occlusion(lambda t: torch.softmax(net(t), 1)).attribute(
        x, sliding_window_shapes=(3, m, m), strides=(3, m, m), baselines=mean, target=1).mean(1)
    got = gradattr.occlusion(net, x, 1, mask_size=m, stride=m, mask_clipping=False, upsampling="nearest")
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-7)
    assert ref.abs().max() > 1e-4


def test_occlusion_three_d_and_several_targets_and_batch_size():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                        nn.Linear(3, 4)).double().eval()
    x = torch.randn(2, 1, 6, 5, 4, dtype=torch.float64)
    a = gradattr.occlusion(net, x, [0, 3], mask_size=2, stride=2, upsampling="none")
    b = gradattr.occlusion(net, x, [0, 3], mask_size=2, stride=2, upsampling="none", batch_size=5)
    assert a.shape == (2, 2, 3, 3, 2)
    torch.testing.assert_close(a, b)


def test_occlusion_bad_input_and_state():
    net = small_cnn()
    net.train()
    x = image(1)
    x0 = x.clone()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(GradattrError, match="mask_size"):
        gradattr.occlusion(net, x, 0, mask_size=13)
    with pytest.raises(GradattrError, match="mask_size"):
        gradattr.occlusion(net, x, 0, mask_size=(2, 2, 2))
    with pytest.raises(GradattrError, match="stride"):
        gradattr.occlusion(net, x, 0, stride=0)
    with pytest.raises(GradattrError, match="mask_value"):
        gradattr.occlusion(net, x, 0, mask_value=[0.0, 1.0])
    with pytest.raises(GradattrError, match="mask_value"):
        gradattr.occlusion(net, x, 0, mask_value="median")
    gradattr.occlusion(net, x, 0, mask_size=4, stride=4)
    assert all(m.training for m in net.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert torch.equal(x, x0) and all(p.grad is None for p in net.parameters())


# ------------------------------------------------------------------------------- LIME
def draws(seed, counts, samples):
    """The method's documented draws: one generator, sample after sample, ``rand < 1/2``."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(samples, f, generator=g) < 0.5) for f in counts]


@pytest.mark.slow  # captum's Lime fits through sklearn: seconds
def test_image_lime_equals_captum_lime_with_the_same_segments_and_samples():
    captum = pytest.importorskip("captum.attr")
    pytest.importorskip("sklearn")
    from captum._utils.models.linear_model import SkLearnLinearRegression

    net = small_cnn()
    x = image(1)
    labels = torch.arange(16).view(4, 4).repeat_interleave(3, 0).repeat_interleave(3, 1)  # 4 x 4 blocks
    samples = 200
    (z,) = draws(7, [16], samples)
    it = iter(z.double())

    def perturb(original_inp, **kwargs):
        return next(it)[None]

    def similarity(original_inp, perturbed_inp, interpretable, **kwargs):
        v = interpretable.double()[0]
        cos = v.sum() / (v.norm() * 4.0) if v.any() else torch.tensor(0.0, dtype=torch.float64)
        return float(torch.exp(-(1 - cos) ** 2 / 0.25 ** 2))

    lime = captum.Lime(lambda t: torch.softmax(net(t), 1), interpretable_model=SkLearnLinearRegression(),
                       similarity_func=similarity, perturb_func=perturb)
    mean = x.mean((2, 3), keepdim=True).expand_as(x).contiguous()
    ref = lime.attribute(x, baselines=mean, target=2, feature_mask=labels[None, None].expand(1, 3, 12, 12),
                         n_samples=samples, perturbations_per_eval=50)[:, 0]
    got = gradattr.image_lime(net, x, 2, segmentation=labels, num_samples=samples, seed=7)
    torch.testing.assert_close(got, ref.float(), rtol=1e-4, atol=1e-6)
    assert ref.abs().max() > 1e-4


def test_image_lime_seeds_superpixels_and_grid():
    pytest.importorskip("skimage")
    from skimage.segmentation import slic

    net = small_cnn()
    x = image(1, h=16, w=16)
    a = gradattr.image_lime(net, x, 1, num_features=9, num_samples=64, seed=3)
    b = gradattr.image_lime(net, x, 1, num_features=9, num_samples=64, seed=3)
    c = gradattr.image_lime(net, x, 1, num_features=9, num_samples=64, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the map is constant on every SLIC superpixel of the (min-max scaled) image
    img = x[0].permute(1, 2, 0).numpy()
    labels = slic((img - img.min()) / (img.max() - img.min()), n_segments=9, channel_axis=-1,
                  convert2lab=False, start_label=0)
    for lab in np.unique(labels):
        assert a[0][torch.from_numpy(labels == lab)].unique().numel() == 1
    # a grid of 3 x 3 cells on 16 x 16: cells of 6, 5, 5 rows (i * 3 // 16)
    g = gradattr.image_lime(net, x, 1, num_features=9, num_samples=64, segmentation="grid", seed=3)[0]
    rows = [0] * 6 + [1] * 5 + [2] * 5
    for (i, ri), (j, rj) in itertools.product(enumerate(rows), enumerate(rows)):
        assert g[i, j] == g[6 * (ri > 0) + 5 * max(ri - 1, 0), 6 * (rj > 0) + 5 * max(rj - 1, 0)]


def test_image_lime_bad_input():
    net = small_cnn()
    x = image(1)
    for kw, arg in [({"num_samples": 0}, "num_samples"), ({"num_features": 0}, "num_features"),
                    ({"segmentation": "felzenszwalb"}, "segmentation"), ({"model": "tree"}, "model"),
                    ({"kernel_width": -1.0}, "kernel_width"), ({"seed": -1}, "seed"),
                    ({"segmentation": torch.zeros(5, 5, dtype=torch.long)}, "segmentation")]:
        with pytest.raises(GradattrError, match=arg):
            gradattr.image_lime(net, x, 0, **kw)
