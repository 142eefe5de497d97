"""Tabular attributions (issue 26): feature ablation, Shapley values, tabular LIME, DeepLIFT and
expected gradients on (N, F) rows of features, against brute force, captum and shap.

The registry sweep (test_registry.py) runs feature_ablation, deep_lift and gradient_shap on the
toy convnets against references.py; here each method meets its reference library and its
defining property on small MLPs (float64, so comparisons can be tight).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr.errors import GradattrError
from references import naive_deep_lift, naive_gradient_shap, naive_shapley, naive_tabular_lime

F = 5


def mlp(f=F, out=2, seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(f, 12), act(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, out)).double().eval()


def rows(n, f=F, seed=1):
    return torch.randn(n, f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- Shapley values
def test_shapley_exact_equals_brute_force_enumeration_for_every_target():
    net, x, bg = mlp(), rows(2), rows(6, seed=2)
    phi = gradattr.shapley(net, x, [0, 1], background=bg)
    assert phi.shape == (2, 2, F)
    for i in range(2):
        for k in range(2):
            ref = naive_shapley(lambda z, k=k: net(z)[:, k], x[i], bg)
            torch.testing.assert_close(phi[i, k].double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # importing shap (numba) takes seconds
def test_shapley_equals_shap_kernel_explainer_enumerating_every_coalition():
    shap = pytest.importorskip("shap")
    f = 4
    net, x, bg = mlp(f, out=1), rows(3, f), rows(8, f, seed=3)
    ex = shap.KernelExplainer(lambda a: net(torch.from_numpy(a)).detach().numpy()[:, 0], bg.numpy())
    ref = ex.shap_values(x.numpy(), nsamples=2 ** f, silent=True)
    phi = gradattr.shapley(net, x, 0, background=bg)
    np.testing.assert_allclose(phi.numpy(), np.asarray(ref), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("max_subsets", [1024, 60])
def test_shapley_values_sum_to_the_score_minus_the_background_mean(max_subsets):
    """Efficiency, exact (2^5 coalitions) and by Kernel SHAP (60 of 2^8), per row and target."""
    f = 5 if max_subsets == 1024 else 8
    net, x, bg = mlp(f), rows(3, f), rows(9, f, seed=4)
    phi = gradattr.shapley(net, x, [0, 1], background=bg, max_subsets=max_subsets)
    with torch.no_grad():
        gap = net(x) - net(bg).mean(0)
    torch.testing.assert_close(phi.sum(-1).double(), gap, rtol=1e-5, atol=1e-6)


def test_kernel_shap_is_exact_on_an_additive_model():
    """A linear model's Shapley values are w_j (x_j - mean b_j); Kernel SHAP recovers them from any
    coalitions that determine the regression."""
    f = 12
    torch.manual_seed(0)
    net = nn.Linear(f, 1).double()
    x, bg = rows(2, f), rows(5, f, seed=5)
    phi = gradattr.shapley(net, x, 0, background=bg, max_subsets=40)
    torch.testing.assert_close(phi.double(), net.weight[0].detach() * (x - bg.mean(0)), rtol=1e-5, atol=1e-6)


def test_kernel_shap_approaches_the_exact_values_as_max_subsets_grows():
    f = 9
    net, x, bg = mlp(f, out=1), rows(1, f), rows(4, f, seed=6)
    exact = gradattr.shapley(net, x, 0, background=bg, max_subsets=2 ** f)
    errs = [float((gradattr.shapley(net, x, 0, background=bg, max_subsets=m) - exact).abs().max())
            for m in (24, 400)]
    assert errs[1] < errs[0] and errs[1] < 0.05 * float(exact.abs().max())


def test_shapley_of_a_regressor_with_reduction_fn_and_chunks_of_any_size():
    net, x, bg = mlp(out=1), rows(2), rows(5, seed=7)
    a = gradattr.shapley(net, x, reduction_fn=lambda y: y[:, 0], background=bg)
    b = gradattr.shapley(net, x, 0, background=bg, batch_size=7)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(a.sum(-1).double(), net(x)[:, 0] - net(bg)[:, 0].mean(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- LIME
def test_lime_on_a_linear_network_gives_its_weights():
    torch.manual_seed(0)
    net = nn.Linear(F, 1).double()
    x, bg = rows(3), rows(40, seed=8)
    beta = gradattr.lime(net, x, 0, background=bg, num_samples=200)
    torch.testing.assert_close(beta.double(), net.weight.detach().expand(3, F), rtol=1e-5, atol=1e-6)


def test_lime_num_important_keeps_the_features_that_matter():
    net = nn.Linear(F, 1).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.0, 3.0, 0.0, -2.0, 0.0]]))
    beta = gradattr.lime(net, rows(2), 0, background=rows(40, seed=9), num_samples=300, num_important=2)
    torch.testing.assert_close(beta.double(), net.weight.detach().expand(2, F), rtol=1e-5, atol=1e-6)


def test_lime_equals_its_naive_reference():
    net, x, bg = mlp(), rows(2), rows(30, seed=10)
    beta = gradattr.lime(net, x, [1, 0], background=bg, num_samples=120, kernel_width=0.9, seed=3)
    for i in range(2):
        for j, k in enumerate([1, 0]):
            ref = naive_tabular_lime(lambda z, k=k: net(z)[:, k], x[i], bg, 120, 0.9, 3)
            torch.testing.assert_close(beta[i, j].double(), ref, rtol=1e-4, atol=1e-6)


def test_lime_per_sample_targets_equal_each_class_given_for_all():
    """Per-sample classes score the synthetic rows for each sample; one class for all scores them once."""
    net, x, bg = mlp(out=3), rows(2), rows(20, seed=21)
    per = gradattr.lime(net, x, np.array([[2], [0]]), background=bg, num_samples=80).reshape(2, F)
    for i, k in enumerate([2, 0]):
        torch.testing.assert_close(per[i], gradattr.lime(net, x, k, background=bg, num_samples=80)[i])


# ---------------------------------------------------------------- feature ablation
def test_feature_ablation_equals_captum_with_baselines_and_groups():
    from captum.attr import FeatureAblation

    net, x = mlp(), rows(3)
    base = rows(1, seed=11)[0]
    groups = np.array([0, 1, 0, 2, 1])
    got = gradattr.feature_ablation(net, x, [0, 1], baseline=base, groups=groups)
    for k in range(2):
        ref = FeatureAblation(net).attribute(x, target=k, baselines=base[None],
                                             feature_mask=torch.from_numpy(groups)[None])
        torch.testing.assert_close(got[:, k].double(), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- DeepLIFT
def conv_net(pool=True):
    torch.manual_seed(0)
    # a linear layer between ReLU and pooling: captum's module hooks mishandle two nonlinearities
    # in a row (see test_deep_lift_stays_exact_where_captum_does_not)
    layers = [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1)]
    layers += [nn.MaxPool2d(2)] if pool else [nn.AvgPool2d(2)]
    layers += [nn.Conv2d(4, 3, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(3 * 2 * 2, 3)]
    return nn.Sequential(*layers).double().eval()


@pytest.mark.parametrize("case", ["mlp", "sigmoid", "maxpool", "avgpool"])
def test_deep_lift_equals_captum(case):
    from captum.attr import DeepLift

    if case in ("maxpool", "avgpool"):
        net, x = conv_net(case == "maxpool"), rows(2, 2 * 8 * 8, seed=12).view(2, 2, 8, 8)
        base = 0.1 * torch.ones_like(x)
    else:
        net, x = mlp(act=nn.Sigmoid if case == "sigmoid" else nn.ReLU), rows(4)
        base = rows(1, seed=13).expand(4, F)
    got = gradattr.deep_lift(net, x, [0, 2] if x.ndim == 4 else [0, 1], baseline=base)
    for j, k in enumerate([0, 2] if x.ndim == 4 else [0, 1]):
        ref = DeepLift(net).attribute(x.clone().requires_grad_(True), baselines=base, target=k).detach()
        torch.testing.assert_close(got[:, j].double(), ref, rtol=1e-5, atol=1e-7)
    if case != "maxpool":  # summation-to-delta, exact without max pooling
        with torch.no_grad():
            delta = net(x) - net(base)
        torch.testing.assert_close(got.flatten(2).sum(-1).double(), delta[:, [0, 2] if x.ndim == 4 else [0, 1]],
                                   rtol=1e-5, atol=1e-7)


def test_deep_lift_equals_the_layer_by_layer_reference_on_a_regressor():
    net, x = mlp(out=1), rows(2)
    got = gradattr.deep_lift(net, x, reduction_fn=lambda y: y[:, 0], baseline=0.5)
    for i in range(2):
        ref = naive_deep_lift(net, x[i:i + 1], lambda y: y[:, 0], torch.full((1, F), 0.5, dtype=torch.float64))
        torch.testing.assert_close(got[i].double(), ref, rtol=1e-5, atol=1e-7)


def test_deep_lift_stays_exact_where_captum_does_not():
    """Two nonlinearities in a row (ReLU then sigmoid): the Rescale rule applied to each in turn sums
    to f(x) - f(b) exactly; captum's hooks give one of the two the wrong gradient and miss the sum."""
    from captum.attr import DeepLift

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Sigmoid(), nn.Linear(6, 2)).double().eval()
    x, b = rows(2, 4), rows(2, 4, seed=20)
    with torch.no_grad():
        delta = net(x)[:, 0] - net(b)[:, 0]
    got = gradattr.deep_lift(net, x, 0, baseline=b)
    torch.testing.assert_close(got.sum(1).double(), delta, rtol=1e-6, atol=1e-8)
    ref = DeepLift(net).attribute(x.clone().requires_grad_(True), baselines=b, target=0).detach()
    assert float((ref.sum(1) - delta).abs().max()) > 1e-3


class Functional(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.op = nn.Linear(F, 6).double(), nn.Linear(6, 2).double(), op

    def forward(self, x):
        return self.b(self.op(self.a(x)))


def test_deep_lift_applies_its_rule_to_functional_relu_as_to_the_module():
    torch.manual_seed(0)
    f = Functional(torch.relu)
    seq = nn.Sequential(f.a, nn.ReLU(), f.b)
    x = rows(3)
    torch.testing.assert_close(gradattr.deep_lift(f, x, 1, baseline=-0.3), gradattr.deep_lift(seq, x, 1, baseline=-0.3))


@pytest.mark.parametrize("op,name", [(nn.GELU(), "gelu"), (lambda h: torch.softmax(h, 1), "softmax"),
                                     (lambda h: h * h, "mul"), (nn.LayerNorm(6).double(), "layer_norm")])
def test_deep_lift_refuses_an_operation_without_a_rule_by_name(op, name):
    net, x = Functional(op), rows(2)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(GradattrError, match=f"net: deep_lift .*'{name}'"):
        gradattr.deep_lift(net, x, 0)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    assert all(not m._forward_hooks for m in net.modules())


# ---------------------------------------------------------------- expected gradients
def test_gradient_shap_equals_its_reference_draw_for_draw():
    net, x, bg = mlp(), rows(2), rows(10, seed=14)
    got = gradattr.gradient_shap(net, x, [1, 0], background=bg, samples=6, seed=5)
    torch.testing.assert_close(got.double(), naive_gradient_shap(net, x, [1, 0], bg, 6, seed=5), rtol=1e-5, atol=1e-7)


def test_gradient_shap_and_captum_estimate_the_same_expectation():
    """Expected gradients are the mean over background rows of integrated gradients from each row:
    gradattr's and captum's Monte Carlo estimates (3000 draws each) both land near it, and the
    attributions sum to f(x) - mean f(b) up to the sampling error."""
    from captum.attr import GradientShap, IntegratedGradients

    net, x, bg = mlp(), rows(2), rows(10, seed=14)
    exact = torch.stack([IntegratedGradients(net).attribute(x, baselines=b.expand(2, -1), target=1, n_steps=64)
                         for b in bg]).mean(0).detach()
    got = gradattr.gradient_shap(net, x, 1, background=bg, samples=3000, seed=1)
    torch.manual_seed(0)
    ref = GradientShap(net).attribute(x, baselines=bg, n_samples=3000, target=1).detach()
    scale = float(exact.abs().max())
    assert float((got.double() - exact).abs().max()) < 0.12 * scale
    assert float((ref - exact).abs().max()) < 0.12 * scale
    with torch.no_grad():
        gap = net(x)[:, 1] - net(bg)[:, 1].mean()
    assert float((got.sum(-1).double() - gap).abs().max()) < 0.03 * float(gap.abs().max())


def test_gradient_shap_noise_is_seeded():
    net, x, bg = mlp(), rows(2), rows(4, seed=15)
    a = gradattr.gradient_shap(net, x, 0, background=bg, samples=5, stdevs=0.3, seed=4)
    b = gradattr.gradient_shap(net, x, 0, background=bg, samples=5, stdevs=0.3, seed=4)
    c = gradattr.gradient_shap(net, x, 0, background=bg, samples=5, stdevs=0.0, seed=4)
    assert torch.equal(a, b) and not torch.allclose(a, c)


# ---------------------------------------------------------------- forms, state, bad input
TABULAR = {"feature_ablation": {}, "shapley": {"background": None}, "lime": {"background": None, "num_samples": 50},
           "deep_lift": {}, "gradient_shap": {"background": None, "samples": 4}}


def _opts(name, bg):
    return {k: (bg if k == "background" else v) for k, v in TABULAR[name].items()}


@pytest.mark.parametrize("name", list(TABULAR))
def test_numpy_in_numpy_out_k_targets_and_nothing_changed(name):
    net, x, bg = mlp(out=3), rows(2).float(), rows(6, seed=16).float()
    net = net.float().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    xn, bgn = x.numpy().copy(), bg.numpy().copy()
    out = getattr(gradattr, name)(net, xn, [0, 2], **_opts(name, bgn))
    assert isinstance(out, np.ndarray) and out.shape == (2, 2, F) and out.dtype == np.float32
    one = gradattr.attribute(net, x, 2, method=name, **_opts(name, bg))
    np.testing.assert_allclose(out[:, 1], one.numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(xn, x.numpy()) and np.array_equal(bgn, bg.numpy())
    assert net.training and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name,opts,match", [
    ("shapley", {"background": rows(4, F + 1)}, r"background: expected reference rows \(M, 5\)"),
    ("shapley", {"background": torch.zeros(0, F)}, "background: expected at least one row"),
    ("shapley", {}, "background: expected reference rows .* got None"),
    ("lime", {"background": torch.where(torch.eye(4, F, dtype=torch.bool), float("nan"), rows(4))},
     "background: expected finite values"),
    ("gradient_shap", {"background": np.ones((3, 2))}, "background: expected"),
    ("shapley", {"background": rows(4), "max_subsets": 8}, "max_subsets: expected at least F"),
    ("lime", {"background": rows(4), "num_important": F + 1}, "num_important: expected at most"),
    ("lime", {"background": rows(4), "kernel_width": 0}, "kernel_width: expected a positive number"),
    ("feature_ablation", {"groups": [0, 1, 2]}, r"groups: expected one integer group id per feature"),
    ("feature_ablation", {"baseline": torch.zeros(3)}, "baseline: expected"),
])
def test_bad_input_names_the_argument(name, opts, match):
    net, x = mlp(), rows(2)
    x0 = x.clone()
    f = 10 if "max_subsets" in opts else F
    if f != F:
        net, x, x0 = mlp(f), rows(2, f), rows(2, f)
        opts = {**opts, "background": rows(4, f)}
    with pytest.raises(GradattrError, match=match):
        getattr(gradattr, name)(net, x, 0, **opts)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("name", list(TABULAR))
def test_nan_in_x_is_refused(name):
    x = rows(2)
    x[1, 2] = float("nan")
    with pytest.raises(GradattrError, match="x: expected finite values"):
        getattr(gradattr, name)(mlp(), x, 0, **_opts(name, rows(4)))


def test_shapley_on_a_one_d_input_treats_every_element_as_a_feature():
    """(N, C, T) inputs: the features are the C x T elements (here 1 x 4)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(9, 2)).double().eval()
    x, bg = rows(2, 4).view(2, 1, 4), rows(5, 4, seed=17).view(5, 1, 4)
    phi = gradattr.shapley(net, x, 1, background=bg)
    assert phi.shape == (2, 1, 4)
    ref = naive_shapley(lambda z: net(z.view(-1, 1, 4))[:, 1], x[0, 0], bg[:, 0])
    torch.testing.assert_close(phi[0, 0].double(), ref, rtol=1e-5, atol=1e-6)


def test_progress_bar_on_request(capsys):
    gradattr.shapley(mlp(), rows(1), 0, background=rows(3), progress=True)
    assert "shapley" in capsys.readouterr().err
