"""gradattr.metrics' checks of maps: randomisation (Adebayo et al.), max-sensitivity and
infidelity (Yeh et al.), sparseness (Chalasani et al.), relevance mass and rank (Arras et al.).

Oracles: captum.metrics (sensitivity_max, infidelity) fed the same perturbations; scipy.stats
(spearmanr, pearsonr) in a cascade written straight from the paper; loops from the papers for
the Gini index and relevance mass and rank; numbers derived by hand. Quantus is not used: it
pulls opencv-python, which would overwrite the cv2 files of the pinned opencv-python-headless.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr import GradattrError, metrics
from gradattr.comparison import METRICS, compare, explain
from expected_warnings import ZERO_MAPS

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
SHAPES = {1: (12,), 2: (6, 6), 3: (4, 4, 4)}


def small_cnn(rank: int = 2, classes: int = 3) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(CONV[rank](2, 4, 3, padding=1), nn.ReLU(), CONV[rank](4, 4, 3, padding=1), nn.ReLU(),
                         POOL[rank](1), nn.Flatten(), nn.Linear(4, classes)).eval()


def inputs(rank: int = 2, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 2, *SHAPES[rank], generator=torch.Generator().manual_seed(rank))


def uniform_noise(samples, shape, radius, seed):
    """The issue's perturbations, written out: d = (2u - 1) * radius."""
    u = torch.rand((samples, *shape), generator=torch.Generator().manual_seed(seed))
    return (2 * u - 1) * radius


def captum_rows(per_sample: torch.Tensor) -> torch.Tensor:
    """(samples, N, ...) -> captum's (N * samples, ...) rows (repeat_interleave: sample-major)."""
    return per_sample.transpose(0, 1).reshape(-1, *per_sample.shape[2:])


# ------------------------------------------------------------------ max-sensitivity
@pytest.mark.parametrize("method", ["grad_cam", "saliency"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_max_sensitivity_matches_captum(method, rank):
    captum_metrics = pytest.importorskip("captum.metrics")
    net, x = small_cnn(rank), inputs(rank)
    top = net(x).argmax(1)
    d = uniform_noise(4, x.shape, 0.3, seed=5)

    def explanation(inp, target):  # captum passes the unperturbed input as a tuple, and wants tuples back
        inp = inp[0] if isinstance(inp, tuple) else inp
        with torch.enable_grad():  # captum runs the explanation under no_grad
            return (gradattr.attribute(net, inp, target[:, None], method=method)[:, 0],)

    want = captum_metrics.sensitivity_max(explanation, x, perturb_func=lambda inp, r: inp + captum_rows(d),
                                          perturb_radius=0.3, n_perturb_samples=4, target=top)
    got = metrics.max_sensitivity(net, x, method=method, radius=0.3, samples=4, seed=5)
    assert want.min() > 0.01  # the maps do move
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6)


def test_max_sensitivity_hand_computed_and_chunks():
    net = small_cnn(1)
    x = torch.ones(2, 2, 12)
    x[1] *= 2

    def identity_map(net, inp, target):  # map(x) = x: the sensitivity is max_j ||d_j|| / ||x||
        return inp

    d = uniform_noise(3, x.shape, 0.1, seed=0)
    want = torch.stack([max(d[j, i].norm() / x[i].norm() for j in range(3)) for i in range(2)])
    for chunk in (None, 1, 4):
        got = metrics.max_sensitivity(net, x, method=identity_map, radius=0.1, samples=3, chunk_size=chunk)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


def test_copies_go_in_chunks_under_the_memory_budget(monkeypatch):
    from gradattr import budget

    net, x = small_cnn(1), inputs(1, n=3)
    rows = []

    def method(net_, inp, target):
        rows.append(inp.shape[0])
        return inp

    metrics.max_sensitivity(net, x, method=method, samples=5)
    assert rows == [3, 15]  # the unperturbed input, then all 15 copies: they fit the budget
    rows.clear()
    one_copy = x[0].numel() * x.element_size() * 2 * budget.FORWARD_FACTOR  # the estimate for one copy
    monkeypatch.setattr(budget, "MEMORY_BUDGET", 4 * one_copy)
    metrics.max_sensitivity(net, x, method=method, samples=5)
    assert rows == [3, 4, 4, 4, 3]
    forward_rows = []
    net.register_forward_pre_hook(lambda m, a: forward_rows.append(a[0].shape[0]))
    metrics.infidelity(net, x, torch.rand(3, 12), samples=3)  # one forward copy is half an explained one
    assert forward_rows == [3, 8, 1]


def test_max_sensitivity_regressor_and_forms():
    net = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(24, 1)).eval()
    x = torch.randn(3, 1, 8, generator=torch.Generator().manual_seed(0))
    s = metrics.max_sensitivity(net, x, method="saliency", reduction_fn=lambda y: y[:, 0], samples=3)
    assert s.shape == (3,) and bool((s > 0).all())
    one = metrics.max_sensitivity(net, x[0].numpy(), method="saliency", reduction_fn=lambda y: y[:, 0],
                                  samples=3, input_format="CT")
    assert isinstance(one, np.ndarray) and one.shape == ()
    # the randomisation check of a regressor explains reduction_fn's score on every copy
    score = lambda y: y[:, 0]  # noqa: E731
    want = naive_cascade(net, x, score, "saliency", "cascade", "spearman")
    got = metrics.randomization_check(net, x, method="saliency", reduction_fn=score)
    assert list(got) == ["3", "0"]
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=1e-5, atol=1e-6)
    # the same noise for a batch of one: sample 0 of the batch sees d[:, 0] and so does the single sample
    single = metrics.max_sensitivity(net, x[:1], method="saliency", reduction_fn=lambda y: y[:, 0], samples=3)
    assert float(one) == pytest.approx(float(single[0]), rel=1e-6)


# ------------------------------------------------------------------ infidelity
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_infidelity_matches_captum(rank, normalize):
    captum_metrics = pytest.importorskip("captum.metrics")
    net, x = small_cnn(rank), inputs(rank)
    top = net(x).argmax(1)
    maps = gradattr.attribute(net, x, top[:, None], method="saliency")[:, 0]  # shaped like x
    pert = 0.2 * torch.randn((6, *x.shape), generator=torch.Generator().manual_seed(2))

    def perturb(inp):
        i = captum_rows(pert)
        return i, inp - i

    want = captum_metrics.infidelity(net, perturb, x, maps, target=top, n_perturb_samples=6, normalize=normalize)
    got = metrics.infidelity(net, x, maps, samples=6, std=0.2, seed=2, normalize=normalize)
    assert want.min() > 0
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-9)


def test_infidelity_position_maps_regressor_and_batches():
    captum_metrics = pytest.importorskip("captum.metrics")
    net = small_cnn(2, classes=1)
    x = inputs(2, n=3)
    cam = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))  # (N, *S): same on both channels
    pert = 0.1 * torch.randn((5, *x.shape), generator=torch.Generator().manual_seed(0))
    want = captum_metrics.infidelity(lambda inp: net(inp)[:, 0], lambda inp: (captum_rows(pert),
                                                                              inp - captum_rows(pert)),
                                     x, cam[:, None].expand_as(x), n_perturb_samples=5, normalize=True)
    for batch_size in (None, 2):
        got = metrics.infidelity(net, x, cam, samples=5, reduction_fn=lambda y: y[:, 0], batch_size=batch_size)
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-9)


def test_infidelity_hand_computed_linear_net():
    # f(x) = w . x: the drop f(x) - f(x - I) is w . I exactly, so the map w has infidelity 0, and the
    # map 2w has (2 w.I - w.I)^2 = (w.I)^2 per perturbation, unless normalised (beta = 1/2 -> 0).
    net = nn.Sequential(nn.Conv1d(1, 1, 1, bias=False), nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[2].weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    w = net[2].weight.detach()
    x = torch.zeros(1, 1, 4)
    i = 0.1 * torch.randn((7, 1, 1, 4), generator=torch.Generator().manual_seed(0))
    wi = (i[:, 0, 0] * w).sum(-1)
    assert metrics.infidelity(net, x, w.view(1, 1, 4), 0, samples=7, normalize=False).item() == pytest.approx(
        0.0, abs=1e-12)
    assert metrics.infidelity(net, x, 2 * w.view(1, 1, 4), 0, samples=7, normalize=False).item() == pytest.approx(
        float((wi ** 2).mean()), rel=1e-5)
    assert metrics.infidelity(net, x, 2 * w.view(1, 1, 4), 0, samples=7).item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ randomisation check
def naive_cascade(net, x, target, method, mode, similarity, seed=0):
    """Adebayo et al.'s check written out: for each layer from the output back, a copy of the
    network with that layer (cascade: and all above it) re-initialised by its own seed; scipy's
    correlation of the flattened maps, sample by sample."""
    from scipy import stats

    corr = stats.spearmanr if similarity == "spearman" else stats.pearsonr
    layers = [name for name, m in net.named_modules()
              if list(m.parameters(recurse=False)) and hasattr(m, "reset_parameters")][::-1]
    original = gradattr.attribute(net, x, target, method=method).reshape(x.shape[0], -1)
    out = {}
    for i, name in enumerate(layers):
        net_copy = copy.deepcopy(net)
        for j in (range(i + 1) if mode == "cascade" else [i]):
            torch.manual_seed(seed + j)
            dict(net_copy.named_modules())[layers[j]].reset_parameters()
        maps = gradattr.attribute(net_copy, x, target, method=method).reshape(x.shape[0], -1)
        with np.errstate(all="ignore"):
            out[name] = [float(corr(a.numpy(), b.numpy())[0]) for a, b in zip(original, maps)]
    return out


@ZERO_MAPS  # and the reference's correlation of an empty map (the metric's NaN)
@pytest.mark.filterwarnings("ignore:An input array is constant:scipy.stats.ConstantInputWarning")
@pytest.mark.parametrize("mode,similarity,method", [("cascade", "spearman", "grad_cam"),
                                                    ("independent", "pearson", "saliency"),
                                                    ("cascade", "pearson", "guided_backprop")])
def test_randomization_matches_naive_cascade_with_scipy(mode, similarity, method):
    net, x = small_cnn(2), inputs(2, n=3)
    target = net(x).argmax(1)[:, None]
    want = naive_cascade(net, x, target, method, mode, similarity, seed=4)
    got = metrics.randomization_check(net, x, method=method, mode=mode, similarity=similarity, seed=4)
    assert list(got) == list(want) == ["6", "2", "0"]
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=1e-5, atol=1e-6)


def test_spearman_averages_ties_and_constant_maps_give_nan():
    from scipy import stats

    net, x = small_cnn(1), inputs(1, n=2)
    calls = []

    def tied(net_, inp, target):  # few distinct values: many ties; the randomised net's maps differ
        calls.append(net_)
        with torch.no_grad():
            return torch.round(net_[0](inp).sum(1) * 2) / 2

    got = metrics.randomization_check(net, x, method=tied, mode="independent")
    copies = calls[1:]
    assert calls[0] is net and len({id(c) for c in copies} | {id(net)}) == 4  # a new copy per step
    for name, values in got.items():
        copy_net = copies[list(got).index(name)]
        for i in range(2):
            want = stats.spearmanr(tied(net, x, None)[i].numpy(), tied(copy_net, x, None)[i].numpy())[0]
            assert values[i].item() == pytest.approx(want, abs=1e-6)
    flat = metrics.randomization_check(net, x, method=lambda n_, inp, t: torch.ones(inp.shape[0], 12))
    assert all(bool(torch.isnan(v).all()) for v in flat.values())


def test_randomization_forms_and_module_options():
    net = small_cnn(3)
    x = inputs(3, n=2)
    by_name = metrics.randomization_check(net, x, 1, method="grad_cam", feature_layer="2")
    by_module = metrics.randomization_check(net, x, 1, method="grad_cam", feature_layer=net[2])
    assert list(by_name) == ["6", "2", "0"]
    for k in by_name:
        torch.testing.assert_close(by_name[k], by_module[k], equal_nan=True)
    one = metrics.randomization_check(net, x[0].numpy(), 1, method="grad_cam", feature_layer="2")
    assert isinstance(one["6"], np.ndarray) and one["6"].shape == ()
    assert float(one["6"]) == pytest.approx(float(by_name["6"][0]), abs=1e-6)
    assert metrics.randomizable_layers(net) == ["6", "2", "0"]


def test_model_input_and_random_state_left_as_found():
    net = small_cnn(2).train()
    x, maps = inputs(2), torch.rand(2, 6, 6)
    x_before, state = x.clone(), copy.deepcopy(net.state_dict())
    rng = torch.get_rng_state()
    metrics.randomization_check(net, x, method="grad_cam")
    metrics.max_sensitivity(net, x, method="saliency", samples=2)
    metrics.infidelity(net, x, maps, samples=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, x_before) and net.training and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@pytest.mark.filterwarnings("ignore")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu():
    net, x = small_cnn(2), inputs(2)
    maps = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(0))
    cpu_s = metrics.max_sensitivity(net, x, method="saliency", samples=3)
    gpu_s = metrics.max_sensitivity(net, x.cuda(), method="saliency", samples=3, device="cuda")
    assert gpu_s.device.type == "cuda" and next(net.parameters()).device.type == "cpu"
    torch.testing.assert_close(gpu_s.cpu(), cpu_s, rtol=1e-4, atol=1e-6)
    cpu_i = metrics.infidelity(net, x, maps, samples=5)
    gpu_i = metrics.infidelity(net, x.cuda(), maps.cuda(), samples=5, device="cuda")
    torch.testing.assert_close(gpu_i.cpu(), cpu_i, rtol=1e-3, atol=1e-9)
    steps = metrics.randomization_check(net, x.cuda(), method="saliency", device="cuda")
    assert list(steps) == ["6", "2", "0"] and steps["6"].device.type == "cuda"
    assert next(net.parameters()).device.type == "cpu"


# ------------------------------------------------------------------ sparseness, relevance mass and rank
def naive_gini(values) -> float:
    """Gini index as the mean absolute difference over twice the mean (Hurley & Rickard's G)."""
    a = [abs(v) for v in values]
    d = len(a)
    return sum(abs(p - q) for p in a for q in a) / (2 * d * d * (sum(a) / d))


def test_sparseness_hand_computed_and_naive():
    # sorted |values| (0, 0, 1, 3): sum (2k - 5) a_k / (4 * 4) = (1 * 1 + 3 * 3) / 16 = 0.625
    m = torch.tensor([[0.0, 1.0, 0.0, -3.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    got = metrics.sparseness(m)
    assert got[:3].tolist() == [0.625, 0.0, 0.75] and torch.isnan(got[3])
    r = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(0))  # any rank, channels flattened
    want = [naive_gini(s.flatten().tolist()) for s in r]
    np.testing.assert_allclose(metrics.sparseness(r).numpy(), want, rtol=1e-6)
    assert isinstance(metrics.sparseness(r.numpy()), np.ndarray)


def naive_mass_and_rank(m, mask):
    """Arras et al.: positive relevance inside / positive relevance; the top-K positions' share inside."""
    v, inside = m.flatten().tolist(), mask.flatten().tolist()
    pos = [max(a, 0.0) for a in v]
    mass = sum(p for p, i in zip(pos, inside) if i) / sum(pos)
    k = sum(inside)
    top = sorted(range(len(v)), key=lambda j: -v[j])[:k]
    return mass, sum(inside[j] for j in top) / k


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_relevance_mass_and_rank_match_naive(rank):
    g = torch.Generator().manual_seed(rank)
    m = torch.randn(3, *SHAPES[rank], generator=g)
    mask = torch.rand(3, *SHAPES[rank], generator=g) > 0.6
    want = np.array([naive_mass_and_rank(a, b) for a, b in zip(m, mask)])
    np.testing.assert_allclose(metrics.relevance_mass(m, mask).numpy(), want[:, 0], rtol=1e-6)
    np.testing.assert_allclose(metrics.relevance_rank(m, mask).numpy(), want[:, 1], rtol=1e-6)
    torch.testing.assert_close(metrics.relevance_mass(m, mask), metrics.energy_pointing_game(m, mask))


def test_relevance_hand_computed():
    m = torch.tensor([[4.0, -1.0, 2.0], [1.0, 3.0, 3.0]])  # one shared mask (*S): positions 0 and 1
    mask = np.array([True, True, False])
    # mass: (4 + 0) / (4 + 2) and (1 + 3) / 7; rank (K = 2): top-2 {0, 2} -> 1 of 2; {1, 2} -> 1 of 2
    np.testing.assert_allclose(metrics.relevance_mass(m, mask).numpy(), [4 / 6, 4 / 7], rtol=1e-6)
    assert metrics.relevance_rank(m, mask).tolist() == [0.5, 0.5]
    assert np.isnan(metrics.relevance_mass(-np.abs(m.numpy()), mask)).all()  # no positive relevance


# ------------------------------------------------------------------ compare columns
def test_compare_columns_equal_the_direct_calls():
    net, x = small_cnn(2), inputs(2, n=2)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1:4, 2:5] = True
    names = ["randomization_check", "max_sensitivity", "infidelity", "sparseness", "relevance_mass",
             "relevance_rank"]
    t = compare(net, x, ["grad_cam", "guided_backprop"], names, mask=mask,
                metric_options={"max_sensitivity": {"samples": 3}, "infidelity": {"samples": 4}})
    assert t.higher_is_better == {"randomization_check": False, "max_sensitivity": False, "infidelity": False,
                                  "sparseness": True, "relevance_mass": True, "relevance_rank": True}
    for method in ("grad_cam", "guided_backprop"):
        maps = explain(net, x, method)
        maps = maps.abs().sum(1) if maps.ndim == 4 else maps
        row = t[method]
        # compare scores the maps of its rows: guided backprop's summed over channels
        reduce = (lambda m: m.abs().sum(2)) if method == "guided_backprop" else (lambda m: m)
        method_fn = lambda n_, inp, tg: reduce(explain(n_, inp, method, tg))  # noqa: E731
        cascade = metrics.randomization_check(net, x, method=method_fn)
        per_sample = np.nanmean(np.stack([v.numpy() for v in cascade.values()]), 0)  # over the layers
        want = {"randomization_check": np.nanmean(per_sample),
                "max_sensitivity": metrics.max_sensitivity(net, x, method=method_fn, samples=3).mean(),
                "infidelity": metrics.infidelity(net, x, maps, samples=4).mean(),
                "sparseness": metrics.sparseness(maps).mean(),
                "relevance_mass": metrics.relevance_mass(maps, mask).mean(),
                "relevance_rank": metrics.relevance_rank(maps, mask).mean()}
        for k, v in want.items():
            assert row[k] == pytest.approx(float(v), rel=1e-5, abs=1e-9), (method, k)
    boxed = compare(net, x, ["grad_cam"], ["relevance_rank"], box=[[1, 4], [2, 5]])
    assert boxed["grad_cam"]["relevance_rank"] == pytest.approx(t["grad_cam"]["relevance_rank"])
    assert all(METRICS[n].higher_is_better == t.higher_is_better[n] for n in names)


# ------------------------------------------------------------------ errors
def test_errors_name_the_argument():
    net, x = small_cnn(2), inputs(2)
    m = torch.rand(2, 6, 6)
    cases = [
        (lambda: metrics.max_sensitivity(net, x, radius=0), r"radius: expected a finite number > 0, got 0"),
        (lambda: metrics.max_sensitivity(net, x, radius=-0.1), r"radius: expected"),
        (lambda: metrics.max_sensitivity(net, x, samples=0), r"samples: expected an integer >= 1, got 0"),
        (lambda: metrics.infidelity(net, x, m, samples=0), r"samples: expected an integer >= 1"),
        (lambda: metrics.infidelity(net, x, m, std=0), r"std: expected a finite number > 0"),
        (lambda: metrics.infidelity(net, x, torch.rand(2, 5, 6)), r"maps: expected maps shaped like x"),
        (lambda: metrics.infidelity(net, x, m, [0, 1]), r"target: expected one score per sample"),
        (lambda: metrics.randomization_check(net, x, similarity="kendall"),
         r"similarity: expected 'spearman' or 'pearson', got 'kendall'"),
        (lambda: metrics.randomization_check(net, x, mode="top"),
         r"mode: expected 'cascade' or 'independent', got 'top'"),
        (lambda: metrics.randomization_check(net, x, method="no_such_cam"), r"method: expected"),
        (lambda: metrics.randomization_check(nn.Sequential(nn.Flatten()), x), r"net: expected a network with"),
        (lambda: metrics.max_sensitivity(net, x, method=lambda n_, i, t: i, normalize=True),
         r"normalize: expected no method options with a callable method"),
        (lambda: metrics.max_sensitivity(net, x, method=lambda n_, i, t: i[:1]),
         r"method: expected maps with one row per input copy"),
        (lambda: metrics.relevance_mass(m, torch.ones(5, 6, dtype=torch.bool)),
         r"mask: expected a mask of shape \(6, 6\) or \(2, 6, 6\)"),
        (lambda: metrics.relevance_rank(m, torch.zeros(6, 6, dtype=torch.bool)), r"mask: expected a region"),
        (lambda: metrics.sparseness(torch.ones(4)), r"maps: expected a batch of maps"),
        (lambda: compare(net, x, ["grad_cam"], ["max_sensitivity"],
                         metric_options={"max_sensitivity": {"method": "saliency"}}),
         r"metric_options\['max_sensitivity'\]: expected options other than method"),
    ]
    for call, pattern in cases:
        with pytest.raises(GradattrError, match=pattern):
            call()


# ------------------------------------------------------------------ known answer
def trained_cnn():
    """A CNN that tells a bright bar in the left half (class 0) from one in the right half (class 1)."""
    def data(n, g):
        x = 0.3 * torch.rand(n, 1, 16, 16, generator=g)
        y = torch.randint(0, 2, (n,), generator=g)
        for i in range(n):
            r = int(torch.randint(0, 12, (1,), generator=g))
            c = int(torch.randint(0, 5, (1,), generator=g)) + 9 * int(y[i])
            x[i, 0, r:r + 4, c:c + 3] += 1.0
        return x, y

    torch.manual_seed(0)
    x, y = data(256, torch.Generator().manual_seed(0))
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), data(8, torch.Generator().manual_seed(1))


@pytest.mark.slow  # trains for about a second
def test_cascade_drives_grad_cam_well_below_one():
    net, (x, y) = trained_cnn()
    assert (net(x).argmax(1) == y).float().mean() >= 0.9
    cam = metrics.randomization_check(net, x, y[:, None], method="grad_cam")
    gbp = metrics.randomization_check(net, x, y[:, None], method="guided_backprop")
    assert list(cam) == ["6", "2", "0"]
    top_cam, top_gbp = float(np.nanmean(cam["6"].numpy())), float(np.nanmean(gbp["6"].numpy()))
    assert top_cam < 0.4  # the map follows the class weights of the top layer
    assert top_gbp > top_cam + 0.2  # guided backprop keeps much of its picture (Adebayo et al.)
