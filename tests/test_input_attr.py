"""Input-level attributions (saliency, input x gradient, integrated gradients, SmoothGrad), signed
CAMs (``relu=False``) and several-input calls (a tuple ``x``, ``forward_kwargs``, ``explain``).

Parity with captum on float64 networks (gradattr returns float32), naive references with their own
hooks and autograd calls, and the invariants (completeness, seeds, K targets = K single calls).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from references import VQA  # the shared two-input toy model
from gradattr.errors import GradattrError
from expected_warnings import ZERO_MAPS

captum_attr = pytest.importorskip("captum.attr")

QUADRATURES = ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]


def image_net(classes: int = 3, seed: int = 0, act=nn.ReLU) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), act(), nn.Conv2d(6, 5, 3, padding=1, stride=2),
                         nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, classes)).double().eval()


def image_input(n: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 7, generator=g, dtype=torch.float64)



def vqa_data(n=2, seed=3):
    torch.manual_seed(seed)
    net = VQA().double().eval()
    g = torch.Generator().manual_seed(seed)
    return net, torch.randn(n, 3, 6, 5, generator=g, dtype=torch.float64), torch.randint(1, 20, (n, 7), generator=g)


class Bound(nn.Module):
    """One input of the VQA model, the other fixed: the single-input oracle for tuple calls."""

    def __init__(self, net, ids, mask=None):
        super().__init__()
        self.net, self.ids, self.mask = net, ids, mask

    def forward(self, image):
        return self.net(image, self.ids, self.mask)


def state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}, [m.training for m in net.modules()]


# ---------------------------------------------------------------- captum parity
def test_saliency_and_input_x_gradient_match_captum_for_every_target():
    net, x = image_net(), image_input()
    for k in range(3):
        for absolute in (True, False):
            want = captum_attr.Saliency(net).attribute(x.clone().requires_grad_(), target=k, abs=absolute)
            got = gradattr.saliency(net, x, [0, 1, 2], abs=absolute)[:, k]
            torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-9)
        want = captum_attr.InputXGradient(net).attribute(x.clone().requires_grad_(), target=k)
        torch.testing.assert_close(gradattr.input_x_gradient(net, x, k).double(), want.detach(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("rule", QUADRATURES)
def test_integrated_gradients_matches_captum_for_every_quadrature(rule):
    net, x = image_net(), image_input()
    base = 0.3 * image_input(seed=5)
    ig = captum_attr.IntegratedGradients(net)
    want, want_delta = ig.attribute(x, baselines=base, target=2, n_steps=17, method=rule,
                                    return_convergence_delta=True)
    got, gap = gradattr.integrated_gradients(net, x, 2, baseline=base, steps=17, quadrature=rule,
                                             return_delta=True, batch_size=5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(gap.double(), -want_delta, rtol=1e-4, atol=1e-9)  # captum's sign is opposite


def test_integrated_gradients_baselines_mean_and_numbers_match_captum():
    net, x = image_net(), image_input()
    ig = captum_attr.IntegratedGradients(net)
    mean = x.mean((2, 3), keepdim=True).expand_as(x)
    torch.testing.assert_close(gradattr.integrated_gradients(net, x, 1, baseline="mean", steps=9).double(),
                               ig.attribute(x, baselines=mean, target=1, n_steps=9), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(gradattr.integrated_gradients(net, x, 1, baseline=-0.5, steps=9).double(),
                               ig.attribute(x, baselines=-0.5, target=1, n_steps=9), rtol=1e-5, atol=1e-9)
    # a per-channel baseline (C, 1, 1) broadcasts over samples and positions
    b = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)[:, None, None]
    torch.testing.assert_close(gradattr.integrated_gradients(net, x, 1, baseline=b, steps=9).double(),
                               ig.attribute(x, baselines=b.expand_as(x).contiguous(), target=1, n_steps=9),
                               rtol=1e-5, atol=1e-9)


def _captum_noise(monkeypatch, draws, sigma):
    """Make captum's NoiseTunnel draw exactly ``draws`` (M tensors (N, ...)): its torch.normal call gets
    them back interleaved sample-major, as it repeats the inputs (repeat_interleave)."""
    z = torch.stack(draws, 1).flatten(0, 1)  # (N * M, ...), row i * M + m

    def normal(mean, std, *args, **kwargs):
        assert std.shape == z.shape
        return z * sigma.repeat_interleave(len(draws), 0)

    monkeypatch.setattr(torch, "normal", normal)


@pytest.mark.parametrize("base,kind", [("saliency", "smoothgrad"), ("saliency", "vargrad"),
                                       ("input_x_gradient", "smoothgrad"), ("integrated_gradients", "smoothgrad")])
def test_smooth_grad_matches_captum_noise_tunnel_on_the_same_noise(monkeypatch, base, kind):
    """Same seed -> the documented draws (a CPU torch.Generator seeded with ``seed``, one (N, C, *S)
    draw per copy), passed to captum's NoiseTunnel through its torch.normal."""
    net, x = image_net(), image_input()
    m, level = 4, 0.2
    got = gradattr.smooth_grad(net, x, 1, base=base, samples=m, noise=level, var=kind == "vargrad", seed=7)
    g = torch.Generator().manual_seed(7)
    draws = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(m)]
    flat = x.flatten(1)
    sigma = (level * (flat.amax(1) - flat.amin(1)))[:, None, None, None].expand_as(x)
    inner = {"saliency": captum_attr.Saliency, "input_x_gradient": captum_attr.InputXGradient,
             "integrated_gradients": captum_attr.IntegratedGradients}[base](net)
    _captum_noise(monkeypatch, draws, sigma)
    want = captum_attr.NoiseTunnel(inner).attribute(x.clone().requires_grad_(), nt_type=kind, nt_samples=m,
                                                    stdevs=0.5, target=1)  # stdevs: replaced by sigma
    monkeypatch.undo()
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-9)


def test_layer_integrated_gradients_matches_captum_at_a_conv_layer_and_at_an_embedding():
    net, x = image_net(), image_input()
    want = captum_attr.LayerIntegratedGradients(net, net[2]).attribute(x, target=0, n_steps=12)
    got = gradattr.integrated_gradients(net, x, 0, feature_layer="2", steps=12)
    assert got.shape == (2, 5, 4, 4)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-9)

    vqa, image, ids = vqa_data()
    pad = torch.zeros_like(ids)
    lig = captum_attr.LayerIntegratedGradients(vqa, vqa.emb)
    want = lig.attribute((image, ids), baselines=(image, pad), target=3, n_steps=10)
    got = gradattr.integrated_gradients(vqa, (image, ids), 3, feature_layer="emb", explain=1, steps=10)
    assert got.shape == (2, 7, 6)  # per token and embedding dimension
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-9)


def test_layer_integrated_gradients_before_an_in_place_relu_equals_ig_of_the_tail():
    """The layer's output is recorded before ReLU(inplace=True) changes it: IG at conv "0" equals IG
    of the rest of the network on conv(x), from conv(0) (no hooks in the oracle)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double().eval()
    x = image_input()
    got = gradattr.integrated_gradients(net, x, 2, feature_layer="0", steps=9)
    with torch.no_grad():
        a, b = net[0](x), net[0](torch.zeros_like(x))
    want = gradattr.integrated_gradients(net[1:], a, 2, baseline=b, steps=9, input_format="BCSS")
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- invariants
def test_integrated_gradients_is_complete_and_its_gap_is_measured():
    """On a smooth network (Softplus: no kinks for the quadrature to straddle)."""
    net, x = image_net(act=nn.Softplus), image_input()
    attr, gap = gradattr.integrated_gradients(net, x, [0, 2], steps=64, return_delta=True)
    with torch.no_grad():
        diff = net(x)[:, [0, 2]] - net(torch.zeros_like(x))[:, [0, 2]]
    assert attr.shape == (2, 2, 3, 8, 7) and gap.shape == (2, 2)
    torch.testing.assert_close(attr.double().flatten(2).sum(-1), diff, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gap.double(), diff - attr.double().flatten(2).sum(-1), rtol=1e-3, atol=1e-7)
    coarse = gradattr.integrated_gradients(net, x, [0, 2], steps=2, return_delta=True)[1]
    assert coarse.abs().max() > 10 * gap.abs().max()  # the gap says how good the quadrature is


@pytest.mark.parametrize("name,kw", [("saliency", {}), ("input_x_gradient", {}),
                                     ("integrated_gradients", {"steps": 6}),
                                     ("smooth_grad", {"samples": 3, "seed": 0})])
def test_ten_targets_equal_ten_single_target_calls(name, kw):
    net, x = image_net(classes=10), image_input()
    many = gradattr.attribute(net, x, list(range(10)), method=name, **kw)
    assert many.shape == (2, 10, 3, 8, 7)
    for k in range(10):
        torch.testing.assert_close(many[:, k], gradattr.attribute(net, x, k, method=name, **kw),
                                   rtol=1e-5, atol=1e-8)


def test_chunking_does_not_change_the_result():
    net, x = image_net(), image_input()
    for name, kw in (("integrated_gradients", {"steps": 7}), ("smooth_grad", {"samples": 5, "seed": 3})):
        one = gradattr.attribute(net, x, 1, method=name, batch_size=1, **kw)
        big = gradattr.attribute(net, x, 1, method=name, batch_size=64, **kw)
        torch.testing.assert_close(one, big, rtol=1e-6, atol=1e-9)


def test_smooth_grad_without_noise_is_its_base_and_seeds_repeat():
    net, x = image_net(), image_input()
    for base in ("saliency", "input_x_gradient", "integrated_gradients"):
        plain = gradattr.attribute(net, x, 1, method=base)
        assert torch.equal(gradattr.smooth_grad(net, x, 1, base=base, samples=3, noise=0.0), plain)
    a = gradattr.smooth_grad(net, x, 1, samples=4, seed=11)
    assert torch.equal(a, gradattr.smooth_grad(net, x, 1, samples=4, seed=11))
    assert not torch.allclose(a, gradattr.smooth_grad(net, x, 1, samples=4, seed=12))
    torch.manual_seed(5)
    g1 = gradattr.smooth_grad(net, x, 1, samples=4)
    torch.manual_seed(5)
    assert torch.equal(g1, gradattr.smooth_grad(net, x, 1, samples=4))  # seed=None: torch's generator


def test_layer_smooth_grad_adds_the_noise_to_the_layer_output():
    """At a layer: |d score / d A| averaged over A + sigma z, against a naive hook-and-replace loop."""
    net, x = image_net(), image_input(n=1)
    m, level = 3, 0.1
    got = gradattr.smooth_grad(net, x, 2, samples=m, noise=level, seed=4, feature_layer="2")
    with torch.no_grad():
        a = net[:3](x)
    tail = net[3:]
    g = torch.Generator().manual_seed(4)
    sigma = level * float(a.max() - a.min())
    total = 0
    for _ in range(m):
        with torch.enable_grad():
            p = (a + sigma * torch.randn(a.shape, generator=g, dtype=a.dtype)).requires_grad_(True)
            (gr,) = torch.autograd.grad(tail(p)[:, 2].sum(), p)
        total = total + gr.abs()
    torch.testing.assert_close(got.double(), total / m, rtol=1e-6, atol=1e-9)


def test_counterfactual_negates_and_normalize_scales():
    net, x = image_net(), image_input()
    ig = gradattr.integrated_gradients(net, x, 1, steps=5)
    torch.testing.assert_close(gradattr.integrated_gradients(net, x, 1, steps=5, counterfactual=True), -ig)
    sal = gradattr.saliency(net, x, 1, normalize=True)
    assert float(sal.amin()) == 0.0 and float(sal.amax()) == 1.0


# ---------------------------------------------------------------- signed CAMs
def test_relu_false_gives_the_signed_map_of_captum_layer_grad_cam():
    net, x = image_net(), image_input()
    signed = gradattr.grad_cam(net, x, 1, feature_layer="2", upsampling="none", relu=False)
    want = captum_attr.LayerGradCam(net, net[2]).attribute(x, target=1, relu_attributions=False)[:, 0]
    torch.testing.assert_close(signed.double(), want.detach(), rtol=1e-5, atol=1e-9)
    assert (signed < 0).any()
    plain = gradattr.grad_cam(net, x, 1, feature_layer="2", upsampling="none")
    assert torch.equal(plain, torch.relu(signed))
    assert torch.equal(plain, gradattr.grad_cam(net, x, 1, feature_layer="2", upsampling="none", relu=True))
    assert "relu" in gradattr.method_info("score_cam").options
    assert "relu" not in gradattr.method_info("saliency").options
    assert "relu" not in gradattr.method_info("guided_grad_cam").options  # it clamps its own map


# ---------------------------------------------------------------- several inputs
@ZERO_MAPS
def test_grad_cam_and_score_cam_on_a_tuple_input_equal_the_single_input_model():
    vqa, image, ids = vqa_data()
    for method in ("grad_cam", "score_cam", "hires_cam", "ablation_cam"):
        got = gradattr.attribute(vqa, (image, ids), [0, 3], method=method, feature_layer="conv.2")
        assert got.shape == (2, 2, 6, 5)  # upsampled to the explained (image) input's grid
        for i in range(2):
            want = gradattr.attribute(Bound(vqa, ids[i:i + 1]), image[i:i + 1], [0, 3], method=method,
                                      feature_layer="net.conv.2")
            torch.testing.assert_close(got[i:i + 1], want, rtol=1e-5, atol=1e-7, msg=method)


def test_forward_kwargs_follow_the_batch():
    vqa, image, ids = vqa_data()
    mask = torch.tensor([[1.0] * 4 + [0.0] * 3, [1.0] * 7], dtype=torch.float64)
    got = gradattr.integrated_gradients(vqa, (image, ids), 2, steps=6, forward_kwargs={"mask": mask})
    sal = gradattr.saliency(vqa, (image, ids), 2, forward_kwargs={"mask": mask})
    cam = gradattr.score_cam(vqa, (image, ids), 2, feature_layer="conv.2", forward_kwargs={"mask": mask})
    for i in range(2):
        one = Bound(vqa, ids[i:i + 1], mask[i:i + 1])
        torch.testing.assert_close(got[i:i + 1], gradattr.integrated_gradients(one, image[i:i + 1], 2, steps=6))
        torch.testing.assert_close(sal[i:i + 1], gradattr.saliency(one, image[i:i + 1], 2))
        torch.testing.assert_close(cam[i:i + 1], gradattr.score_cam(one, image[i:i + 1], 2,
                                                                    feature_layer="net.conv.2"), rtol=1e-5, atol=1e-7)
    # the masked tokens get no attribution at the embedding
    per_token = gradattr.integrated_gradients(vqa, (image, ids), 2, feature_layer="emb", explain=1,
                                              forward_kwargs={"mask": mask}).abs().sum(-1)
    assert per_token[0, 4:].abs().max() == 0 and per_token[0, :4].min() > 0


def test_vqa_example_image_with_grad_cam_question_with_integrated_gradients():
    """The issue's example: explain the image branch with Grad-CAM and the question per token with IG."""
    vqa, image, ids = vqa_data(n=1)
    cam = gradattr.grad_cam(vqa, (image, ids), 1, feature_layer="conv")
    assert cam.shape == (1, 6, 5) and cam.max() > 0
    tokens, gap = gradattr.integrated_gradients(vqa, (image, ids), 1, feature_layer="emb", explain=1,
                                                baseline=0, steps=100, return_delta=True)
    per_token = tokens.sum(-1)  # (1, 7)
    assert per_token.shape == (1, 7)
    with torch.no_grad():
        diff = vqa(image, ids)[:, 1] - vqa(image, torch.zeros_like(ids))[:, 1]
    torch.testing.assert_close(per_token.sum(-1).double(), diff, rtol=1e-3, atol=1e-6)  # completeness per token


class TwoViews(nn.Module):
    """Two images of different sizes, one convolutional branch each."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, first, second):
        return self.head(torch.cat([self.a(first).mean((2, 3)), self.b(second).mean((2, 3))], 1))


class Second(nn.Module):
    def __init__(self, net, first):
        super().__init__()
        self.net, self.first = net, first

    def forward(self, second):
        return self.net(self.first, second)


def test_explain_picks_the_input_attributed_and_the_grid_a_map_is_upsampled_to():
    torch.manual_seed(0)
    net = TwoViews().double().eval()
    g = torch.Generator().manual_seed(2)
    first, second = (torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64),
                     torch.randn(2, 3, 12, 10, generator=g, dtype=torch.float64))
    cam = gradattr.grad_cam(net, (first, second), 1, feature_layer="b", explain=1)
    assert cam.shape == (2, 12, 10)
    for i in range(2):
        one = Second(net, first[i:i + 1])
        torch.testing.assert_close(cam[i:i + 1], gradattr.grad_cam(one, second[i:i + 1], 1, feature_layer="net.b"))
    sal = gradattr.saliency(net, (first, second), [0, 2], explain=1)
    assert sal.shape == (2, 2, 3, 12, 10)
    torch.testing.assert_close(sal[1:], gradattr.saliency(Second(net, first[1:]), second[1:], [0, 2]))
    assert gradattr.saliency(net, (first, second), [0, 2]).shape == (2, 2, 3, 8, 8)  # explain=0


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("name,kw,arg", [
    ("integrated_gradients", {"steps": 0}, "steps"),
    ("integrated_gradients", {"steps": 1, "quadrature": "riemann_left"}, "steps"),
    ("integrated_gradients", {"quadrature": "simpson"}, "quadrature"),
    ("integrated_gradients", {"baseline": torch.zeros(2, 3, 5, 5)}, "baseline"),
    ("integrated_gradients", {"baseline": "zero"}, "baseline"),
    ("integrated_gradients", {"feature_layer": "9"}, "feature_layer"),
    ("integrated_gradients", {"feature_layer": ["0", "2"]}, "feature_layer"),
    ("smooth_grad", {"samples": 0}, "samples"),
    ("smooth_grad", {"noise": -0.1}, "noise"),
    ("smooth_grad", {"base": "grad_cam"}, "base"),
    ("saliency", {"explain": 1}, "explain"),
    ("saliency", {"explain": -1}, "explain"),
    ("saliency", {"forward_kwargs": ["mask"]}, "forward_kwargs"),
])
def test_bad_options_name_the_argument_and_leave_everything_as_found(name, kw, arg):
    net, x = image_net(), image_input()
    net.train()
    before, x0 = state(net), x.clone()
    with pytest.raises(GradattrError, match=f"^{arg}"):
        gradattr.attribute(net, x, 1, method=name, **kw)
    after = state(net)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1] == after[1]
    assert torch.equal(x, x0) and all(p.grad is None for p in net.parameters())


def test_bad_several_inputs_are_refused():
    from gradattr.metrics import deletion

    vqa, image, ids = vqa_data()
    with pytest.raises(GradattrError, match=r"^feature_layer: .*several inputs"):
        gradattr.grad_cam(vqa, (image, ids), 1)  # the automatic layer could be the question's
    with pytest.raises(GradattrError, match=r"^explain: .*2 inputs"):
        gradattr.grad_cam(vqa, (image, ids), 1, explain=2)
    with pytest.raises(GradattrError, match=r"^x\[1\]: .*batch size"):
        gradattr.grad_cam(vqa, (image, ids[:1]), 1, feature_layer="conv")
    with pytest.raises(GradattrError, match=r"^x\[1\]: .*feature_layer"):
        gradattr.saliency(vqa, (image, ids), 1, explain=1)  # token ids: attribute at the embedding
    with pytest.raises(GradattrError, match=r"^baseline: .*integer"):
        gradattr.integrated_gradients(vqa, (image, ids), 1, explain=1, feature_layer="emb", baseline=0.5)
    with pytest.raises(GradattrError, match=r"^explain: .*floating-point"):  # token ids: nothing to delete
        deletion(vqa, (image, ids), gradattr.grad_cam(vqa, (image, ids), 1, feature_layer="conv"), 1, explain=1)
    assert torch.equal(ids, vqa_data()[2])


def test_integrated_gradients_per_token_of_a_hugging_face_bert_matches_captum():
    """A Hugging Face classifier from a config (random weights), ids as the one input of a tuple, the
    attention mask as a keyword input: IG at the word embeddings equals captum's LayerIntegratedGradients."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, num_labels=3, max_position_embeddings=32)
    bert = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0
    got = gradattr.integrated_gradients(bert, (ids,), 1, feature_layer="bert.embeddings.word_embeddings",
                                        forward_kwargs={"attention_mask": mask}, steps=20)
    lig = captum_attr.LayerIntegratedGradients(lambda i, am: bert(input_ids=i, attention_mask=am).logits,
                                               bert.bert.embeddings.word_embeddings)
    want = lig.attribute(ids, baselines=torch.zeros_like(ids), target=1, n_steps=20, additional_forward_args=(mask,))
    assert got.shape == (2, 9, 16)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_blur_baseline_is_an_11_tap_gaussian_of_sigma_5():
    """``baseline="blur"`` equals the same call with the blurred input given as a tensor, the blur
    made by scipy (radius 5, sigma 5, mirror borders: OpenCV's reflect-101)."""
    from scipy.ndimage import gaussian_filter

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.randn(2, 2, 12, 12)
    blurred = torch.from_numpy(gaussian_filter(x.double().numpy(), sigma=(0, 0, 5, 5), truncate=1.0,
                                               mode="mirror")).float()
    got = gradattr.integrated_gradients(net, x, 1, baseline="blur", steps=8)
    want = gradattr.integrated_gradients(net, x, 1, baseline=blurred, steps=8)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
