"""The input's reading (batch axis, rank, channel axis) is observed from what the network does.

Oracles: captum's Saliency / InputXGradient / IntegratedGradients on the same batch, and
gradients taken row by row by hand (``torch.autograd.grad`` of one sample's score); none of
them uses gradattr's input code.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr.errors import GradattrError

captum_attr = pytest.importorskip("captum.attr")


def mlp(features: int = 6, classes: int = 3, seed: int = 0, norm: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(features, 16)] + ([nn.BatchNorm1d(16)] if norm else []) + [
        nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, classes)]
    net = nn.Sequential(*layers).double().eval()
    if norm:  # running statistics that are not the identity
        with torch.no_grad():
            net[1].running_mean.uniform_(-0.5, 0.5)
            net[1].running_var.uniform_(0.5, 2.0)
    return net


def rows(n: int = 5, f: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def by_hand(net, x: torch.Tensor, score) -> torch.Tensor:
    """d score(net(x_i)) / d x_i, one sample at a time (each row alone in its own batch)."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        out.append(torch.autograd.grad(score(net(xi)).sum(), xi)[0][0])
    return torch.stack(out)


# -- (N, F): a batch of feature vectors ------------------------------------------------------------
@pytest.mark.parametrize("fmt", [None, "BC"])
def test_feature_batch_saliency_ixg_ig_equal_captum(fmt):
    """(N, F) into an MLP is N samples of F features: every row attributed, as captum does (at
    c6b319c it was read as one (C=N, T=F) sequence: one non-zero row, correlation 0.01-0.13)."""
    net, x = mlp(), rows()
    sal = gradattr.saliency(net, x, 1, input_format=fmt)
    assert sal.shape == (5, 6)
    np.testing.assert_allclose(sal.numpy(), captum_attr.Saliency(net).attribute(x, target=1).detach().numpy(),
                               rtol=1e-5, atol=1e-7)
    ixg = gradattr.input_x_gradient(net, x, 2, input_format=fmt)
    np.testing.assert_allclose(ixg.numpy(), captum_attr.InputXGradient(net).attribute(x, target=2).detach().numpy(),
                               rtol=1e-5, atol=1e-7)
    ig = gradattr.integrated_gradients(net, x, 0, steps=16, input_format=fmt)
    want = captum_attr.IntegratedGradients(net).attribute(x, target=0, n_steps=16)
    np.testing.assert_allclose(ig.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    assert (np.abs(sal.numpy()).sum(1) > 0).all()  # every row, not one


def test_feature_batch_k_targets_and_rows_independent():
    net, x = mlp(), rows()
    both = gradattr.saliency(net, x, [0, 2], abs=False)
    assert both.shape == (5, 2, 6)
    for j, k in enumerate((0, 2)):
        torch.testing.assert_close(both[:, j], by_hand(net, x, lambda y, k=k: y[:, k]).float())
    other = x.clone()
    other[1:] = rows(4, 6, seed=7)
    again = gradattr.saliency(net, other, [0, 2], abs=False)
    torch.testing.assert_close(again[0], both[0])  # row 0 does not see the other rows


def test_regressor_with_reduction_fn_and_batchnorm():
    """A regressor explained with reduction_fn=lambda y: y[:, 0] (0.27 correlation at c6b319c)."""
    net, x = mlp(6, 2, norm=True), rows(7)
    got = gradattr.saliency(net, x, reduction_fn=lambda y: y[:, 0], abs=False)
    torch.testing.assert_close(got, by_hand(net, x, lambda y: y[:, 0]).float())
    np.testing.assert_allclose(np.corrcoef(got.flatten(), by_hand(net, x, lambda y: y[:, 0]).flatten())[0, 1],
                               1.0, atol=1e-6)


def test_one_vector_C_and_unbatched_numpy():
    net, x = mlp(), rows()
    one = gradattr.saliency(net, x[2].numpy(), 1)
    assert isinstance(one, np.ndarray) and one.shape == (6,)
    np.testing.assert_allclose(one, gradattr.saliency(net, x, 1)[2].numpy(), rtol=1e-6)
    np.testing.assert_allclose(gradattr.saliency(net, x[2], 1, input_format="C").numpy(), one, rtol=1e-6)
    np.testing.assert_allclose(gradattr.saliency(net, x.T.contiguous(), 1, input_format="CB").numpy(),
                               gradattr.saliency(net, x, 1).numpy(), rtol=1e-6)


@pytest.mark.parametrize("method", ["occlusion", "grad_cam", "score_cam", "image_lime", "guided_grad_cam"])
def test_map_methods_on_vectors_refuse_naming_what_works(method):
    """occlusion returned (F,) at c6b319c; a map over a grid has no meaning on feature vectors."""
    net, x = mlp(), rows()
    with pytest.raises(GradattrError, match=rf"^x: expected an input with spatial or time dimensions "
                       rf"for {method} .* got a batch of feature vectors of 6 features, shape \(5, 6\), "
                       r"which has no grid; per-feature methods work on vectors: .*saliency, "
                       r"input_x_gradient, integrated_gradients"):
        getattr(gradattr, method)(net, x, 1)


def test_observation_costs_no_pass_once_known():
    """The first call observes the reading (forward passes of its own for an MLP); later calls
    with the same signature run exactly the method's passes."""
    net, x = mlp(), rows()
    calls = []
    net.register_forward_pre_hook(lambda m, i: calls.append(tuple(i[0].shape)))
    gradattr.saliency(net, x, 1)
    assert (1, 5, 6) in calls  # the one-sample reading was tried (and refused) once
    calls.clear()
    gradattr.saliency(net, x, 1)
    gradattr.saliency(net, x + 1, 0)
    assert calls == [(5, 6), (5, 6)]


def test_a_convolution_first_confirms_the_reading_in_the_call_s_own_pass():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    calls = []
    net.register_forward_pre_hook(lambda m, i: calls.append(tuple(i[0].shape)))
    gradattr.grad_cam(net, torch.randn(2, 3, 8, 8), 1, feature_layer="0")
    assert calls == [(2, 3, 8, 8)]
    calls.clear()
    gradattr.grad_cam(net, torch.randn(3, 8, 8), 1, feature_layer="0")  # MATLAB's unbatched image
    assert calls == [(1, 3, 8, 8)]


class EitherWay(nn.Module):
    """Runs (N, F) as N rows and (1, N, F) as one row of its own (flattened): both readings run."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x.reshape(x.shape[0], -1)[:, :4])


def test_two_readings_that_run_are_refused_naming_input_format():
    net, x = EitherWay().eval(), torch.randn(3, 4)
    with pytest.raises(GradattrError, match=r"^input_format: expected a format that says how x is laid "
                       r"out \('BC' or 'CS'\): the network runs x of shape \(3, 4\) both as a batch of 3 "
                       r"vectors of 4 features and as one sample with 1 spatial/time dim"):
        gradattr.saliency(net, x, 1)
    assert gradattr.saliency(net, x, 1, input_format="BC").shape == (3, 4)  # the advice works


def test_vector_second_input_is_attributed():
    """x=(image, question vector), explain=1: refused at c6b319c ("expected (N, C, *S)")."""

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.q = nn.Linear(6, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, img, q):
            return self.head(self.conv(img).mean((2, 3)) * torch.tanh(self.q(q)))

    torch.manual_seed(0)
    net = Two().double().eval()
    img, q = torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    got = gradattr.integrated_gradients(net, (img, q), 2, explain=1, steps=12)
    # captum's forward_func + additional_forward_args: the image fixed, the question attributed
    ig = captum_attr.IntegratedGradients(lambda qq, im: net(im, qq))
    want = ig.attribute(q, target=2, n_steps=12, additional_forward_args=(img,))
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    sal = gradattr.saliency(net, (img, q), [0, 1], explain=1)
    assert sal.shape == (4, 2, 6)
    want = captum_attr.Saliency(net).attribute((img, q), target=1)[1]
    np.testing.assert_allclose(sal[:, 1].numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-7)


# -- raw waveforms, feature tokenizers, token ids ----------------------------------------------------
def test_ft_transformer_batch_is_n_samples():
    """An (N, F) batch into a feature-tokenizer transformer: a raw RuntimeError at c6b319c."""
    from zoo_models import FTTransformer

    torch.manual_seed(0)
    net, x = FTTransformer().eval(), torch.randn(4, 6)
    got = gradattr.saliency(net, x, 1, abs=False)
    want = by_hand(net, x, lambda y: y[:, 1])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_raw_waveform_batch_is_n_waveforms_with_a_time_map():
    """(N, L) into a conv feature encoder that adds the channel axis itself (x[:, None, :]): a raw
    RuntimeError at c6b319c. Maps and attributions come back as (N, L)."""
    from zoo_models import ConvFeatureEncoder

    torch.manual_seed(0)
    net, x = ConvFeatureEncoder().eval(), torch.randn(3, 800)
    assert gradattr.grad_cam(net, x, 1).shape == (3, 800)
    sal = gradattr.saliency(net, x, [0, 2], abs=False)
    assert sal.shape == (3, 2, 800)
    torch.testing.assert_close(sal[:, 1], by_hand(net, x, lambda y: y[:, 2]), rtol=1e-4, atol=1e-7)
    assert gradattr.occlusion(net, x, 1).shape == (3, 800)


def test_token_ids_grad_cam_per_token_and_refusals_whose_advice_works():
    from zoo_models import TokenSSM

    torch.manual_seed(0)
    net = TokenSSM().eval()
    ids = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(1))
    assert gradattr.grad_cam(net, ids, 1).shape == (2, 10)  # one value per token
    with pytest.raises(GradattrError, match=r"mask_value: expected a token id .* got 'auto'"):
        gradattr.occlusion(net, ids, 1)
    assert gradattr.occlusion(net, ids, 1, mask_value=0).shape == (2, 10)  # as the message says
    with pytest.raises(GradattrError, match=r"x: expected a floating-point input to attribute; for token "
                                            r"ids use integrated_gradients or smooth_grad with feature_layer="):
        gradattr.saliency(net, ids, 1)
    assert gradattr.integrated_gradients(net, ids, 1, feature_layer="emb", steps=4).shape == (2, 10, 16)
    with pytest.raises(GradattrError, match=r"x: expected a floating-point input for score_cam, .* on token "
                                            r"ids these work: grad_cam, .*occlusion"):
        gradattr.score_cam(net, ids, 1)


def test_every_layer_of_a_token_id_state_space_lm_works_or_its_advice_does():
    """Issue 25: the refusal suggested feature_layout='tokens:9' and following it raised IndexError.
    Every layer of the model now gives a per-token map, or a refusal whose feature_layout advice,
    followed literally, gives one."""
    import re

    from zoo_models import TokenSSM

    torch.manual_seed(0)
    net = TokenSSM(lm=True).eval()
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    for name, _ in net.named_modules():
        if not name or name == "head":
            continue
        try:
            out = gradattr.grad_cam(net, ids, 7, feature_layer=name, relu=False)
        except GradattrError as e:
            advice = re.search(r"feature_layout='([^']+)'", str(e))
            assert advice, f"{name}: {e}"
            out = gradattr.grad_cam(net, ids, 7, feature_layer=name, relu=False, feature_layout=advice.group(1))
        assert out.shape == (2, 9), name


# -- MATLAB's rule for singleton maps; a head that reads nothing ---------------------------------------
@pytest.mark.slow
def test_singleton_last_map_picks_the_last_non_singleton_layer_monai_densenet121_3d():
    """A 3-D DenseNet-121 at 48^3 ends at 1 x 1 x 1: MATLAB's rule picks the last layer with
    non-singleton spatial dims (refused at c6b319c). The oracle: a naive Grad-CAM there."""
    monai = pytest.importorskip("monai")
    torch.manual_seed(0)
    net = monai.networks.nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval()
    x = torch.randn(1, 1, 48, 48, 48, generator=torch.Generator().manual_seed(1))
    cam, layer, _ = gradattr.grad_cam(net, x, 1, upsampling="none", return_layers=True)
    assert layer == "features.transition3.conv"  # 3 x 3 x 3; its pool and denseblock4 are 1 x 1 x 1
    kept = []
    h = net.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.append(o))
    s = net(x)[:, 1].sum()
    h.remove()
    (g,) = torch.autograd.grad(s, kept[0])
    want = torch.relu((g.mean((2, 3, 4), keepdim=True) * kept[0]).sum(1))
    assert cam.shape == (1, 3, 3, 3)
    torch.testing.assert_close(cam, want.detach(), rtol=1e-4, atol=1e-6 * float(want.abs().max()))


def test_a_zero_head_refusal_says_the_score_depends_on_no_layer():
    """At c6b319c: "no layer of this network outputs a tensor with the input's layout"."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        net[3].weight.zero_()
    with pytest.raises(GradattrError, match=r"^feature_layer: expected a score that depends on a layer of "
                                            r"this network, but the target score depends on none: its gradient "
                                            r"is zero at every module output \(an untrained or zero-initialised "
                                            r"head\?\)"):
        gradattr.grad_cam(net, torch.randn(2, 3, 8, 8), 1)
