"""gradattr.metrics: hand-computed values, naive references, independent libraries, invariants.

Independent implementations used (each test skips when its library is missing):
torchcam 0.5 (DeletionInsertionMetric, ClassificationMetric), pytorch-grad-cam
(CamMultImageConfidenceChange, DropInConfidence, ROADMostRelevantFirst,
ROADLeastRelevantFirst, NoisyLinearImputer), Quantus (PointingGame,
RelevanceMassAccuracy, noisy_linear_imputation), scipy.ndimage.gaussian_filter.
"""
from __future__ import annotations

import itertools
from collections import deque
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from gradattr import GradattrError, metrics
from gradattr.ops import minmax as normalize_maps

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
SHAPES = {1: (48,), 2: (12, 12), 3: (6, 6, 6)}
OBJECT = {1: (slice(10, 22),), 2: (slice(3, 7), slice(4, 9)), 3: (slice(1, 4), slice(2, 5), slice(2, 4))}


def mean_net(rank: int) -> nn.Module:
    """score = mean(x) over positions: a 1x1 conv of weight 1, global average pool, flatten."""
    conv = CONV[rank](1, 1, 1, bias=False)
    nn.init.ones_(conv.weight)
    return nn.Sequential(conv, POOL[rank](1), nn.Flatten()).eval()


def object_net(rank: int) -> nn.Module:
    """Class 1 grows with the amount of bright (> 1) input: conv(x - 1) -> ReLU -> GAP -> linear."""
    conv = CONV[rank](1, 1, 1)
    lin = nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.fill_(-1.0)
        lin.weight.copy_(torch.tensor([[-3.0], [3.0]]))
        lin.bias.copy_(torch.tensor([0.5, -0.5]))
    return nn.Sequential(conv, nn.ReLU(), POOL[rank](1), nn.Flatten(), lin).eval()


def small_cnn(rank: int, channels: int = 2, classes: int = 3) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(CONV[rank](channels, 4, 3, padding=1), nn.ReLU(), CONV[rank](4, 4, 3, padding=1),
                         nn.ReLU(), POOL[rank](1), nn.Flatten(), nn.Linear(4, classes)).eval()


def object_scene(rank: int, n: int = 2):
    """Inputs with a bright object (value 3) on weak noise, and the object's mask."""
    g = torch.Generator().manual_seed(rank)
    s = SHAPES[rank]
    x = 0.5 * torch.rand(n, 1, *s, generator=g)
    mask = torch.zeros(s, dtype=torch.bool)
    mask[OBJECT[rank]] = True
    x[:, 0][:, mask] = 3.0
    return x, mask


# ------------------------------------------------------------------------------ naive references
def naive_curve(net, x, maps, kind, baseline, steps, classes):
    """Deletion/insertion straight from the RISE paper: one perturbed input at a time."""
    n = x.shape[0]
    aucs, curves = [], []
    for i in range(n):
        v = maps[i].flatten().tolist()
        p = len(v)
        order = sorted(range(p), key=lambda j: -v[j])  # python's sort is stable
        curve = []
        for step in range(steps + 1):
            count = step * p // steps
            chosen = set(order[:count])
            flat_x, flat_b = x[i].flatten(1), baseline[i].flatten(1)
            cols = []
            for j in range(p):
                use_x = (j not in chosen) if kind == "deletion" else (j in chosen)
                cols.append(flat_x[:, j] if use_x else flat_b[:, j])
            xi = torch.stack(cols, 1).view_as(x[i])[None]
            with torch.no_grad():
                curve.append(torch.softmax(net(xi), 1)[0, classes[i]].item())
        fr = [step * p // steps / p for step in range(steps + 1)]
        aucs.append(sum((fr[k + 1] - fr[k]) * (curve[k] + curve[k + 1]) / 2 for k in range(steps)))
        curves.append(curve)
    return np.array(aucs), np.array(curves)


def naive_impute(x: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Dense linear system built element by element: each missing value is the weighted mean of
    its in-bounds neighbours, weight 2^-(nonzero offsets - 1)."""
    shape = missing.shape
    unknown = [idx for idx in np.ndindex(*shape) if missing[idx]]
    pos = {idx: k for k, idx in enumerate(unknown)}
    m = len(unknown)
    a = np.zeros((m, m))
    b = np.zeros((m, x.shape[0]))
    for k, idx in enumerate(unknown):
        for off in itertools.product((-1, 0, 1), repeat=len(shape)):
            nz = sum(o != 0 for o in off)
            if nz == 0:
                continue
            nb = tuple(i + o for i, o in zip(idx, off))
            if not all(0 <= c < s for c, s in zip(nb, shape)):
                continue
            w = 0.5 ** (nz - 1)
            a[k, k] -= w
            if missing[nb]:
                a[k, pos[nb]] += w
            else:
                b[k] -= w * x[(slice(None), *nb)]
    sol = np.linalg.solve(a, b)
    out = x.copy()
    for k, idx in enumerate(unknown):
        out[(slice(None), *idx)] = sol[k]
    return out


def naive_largest_box(m: np.ndarray, threshold: float) -> list[list[int]]:
    """Flood fill (every neighbour connects) of m >= threshold * max; box of the biggest component,
    the first found in raster order on a tie."""
    keep = m >= threshold * m.max()
    seen = np.zeros_like(keep)
    best, best_box = 0, None
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=m.ndim) if any(o)]
    for start in np.ndindex(*m.shape):
        if not keep[start] or seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), []
        while queue:
            p = queue.popleft()
            members.append(p)
            for o in offsets:
                q = tuple(a + b for a, b in zip(p, o))
                if all(0 <= c < s for c, s in zip(q, m.shape)) and keep[q] and not seen[q]:
                    seen[q] = True
                    queue.append(q)
        if len(members) > best:
            arr = np.array(members)
            best, best_box = len(members), [[int(lo), int(hi) + 1] for lo, hi in zip(arr.min(0), arr.max(0))]
    return best_box


class FakeExtractor:
    """Gives torchcam's metrics a fixed map (its metrics take a CAM extractor)."""

    def __init__(self, model, cams):
        self.model, self.cams = model, cams

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.cams]

    def fuse_cams(self, cams):
        return cams[0]

    @contextmanager
    def _hooks_off(self):
        yield


def softmax_fn(y):
    return torch.softmax(y, -1)


# ============================================================================= deletion / insertion
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_deletion_hand_computed_raster_order(rank):
    """score = mean(x), raw output: after removing the first c positions (a constant map keeps raster
    order) the score is sum(x[c:]) / P."""
    s = SHAPES[rank]
    p = int(np.prod(s))
    x = torch.arange(1.0, p + 1).view(1, 1, *s)
    steps = 6
    c = metrics.deletion(mean_net(rank), x, torch.ones(1, *s), steps=steps, softmax=False)
    flat = x.flatten()
    expected = [flat[(k * p) // steps:].sum().item() / p for k in range(steps + 1)]
    np.testing.assert_allclose(c.scores[0].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(c.fractions.numpy(), [k / steps for k in range(steps + 1)], rtol=1e-6)
    fr = np.arange(steps + 1) / steps
    np.testing.assert_allclose(c.auc[0].item(), np.trapezoid(expected, fr), rtol=1e-5)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_constant_input_gives_known_auc(rank):
    """A constant input under a linear score: every curve is a straight line, AUC = (start + end) / 2,
    whatever the map."""
    s = SHAPES[rank]
    x = torch.full((2, 1, *s), 2.0)
    maps = torch.rand(2, *s)
    d = metrics.deletion(mean_net(rank), x, maps, steps=8, softmax=False)
    i = metrics.insertion(mean_net(rank), x, maps, steps=8, softmax=False, baseline="zeros")
    np.testing.assert_allclose(d.auc.numpy(), [1.0, 1.0], rtol=1e-5)  # (2 + 0) / 2
    np.testing.assert_allclose(i.auc.numpy(), [1.0, 1.0], rtol=1e-5)
    m = metrics.insertion(mean_net(rank), x, maps, steps=8, softmax=False, baseline=-1.0)
    np.testing.assert_allclose(m.auc.numpy(), [0.5, 0.5], rtol=1e-5)  # (-1 + 2) / 2


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("baseline", ["zeros", "mean", "blur"])
def test_curves_match_naive_reference(rank, baseline):
    net = small_cnn(rank)
    s = SHAPES[rank]
    x = torch.randn(2, 2, *s)
    maps = torch.rand(2, *s)
    classes = net(x).argmax(1).tolist()
    base = {"zeros": torch.zeros_like(x), "mean": x.mean(tuple(range(2, x.ndim)), keepdim=True).expand_as(x),
            "blur": metrics.blur(x)}[baseline]
    for kind in ("deletion", "insertion"):
        fast = getattr(metrics, kind)(net, x, maps, baseline=baseline, steps=5, batch_size=4)
        auc, curve = naive_curve(net, x, maps, kind, base, 5, classes)
        np.testing.assert_allclose(fast.auc.numpy(), auc, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(fast.scores.numpy(), curve, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rank,steps", [(1, 16), (2, 12), (3, 12)])
def test_deletion_insertion_match_torchcam(rank, steps):
    """torchcam's DeletionInsertionMetric (RISE) on the same maps, same softmax scores, same steps."""
    tc = pytest.importorskip("torchcam.metrics")
    from scipy.ndimage import gaussian_filter

    net = small_cnn(rank)
    s = SHAPES[rank]
    x = torch.randn(3, 2, *s)
    maps = torch.rand(3, *s)
    blurred = torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0) + (2.0,) * rank)).float()
    for ours_base, theirs_base in (("zeros", None), (blurred, blurred)):
        ref = tc.DeletionInsertionMetric(FakeExtractor(net, maps), softmax_fn, steps=steps, batch_size=7,
                                         baseline=theirs_base)
        ref.update(x)
        want = ref.summary()
        d = metrics.deletion(net, x, maps, steps=steps, baseline=ours_base)
        i = metrics.insertion(net, x, maps, steps=steps, baseline=ours_base)
        assert d.auc.mean().item() == pytest.approx(want["deletion_auc"], rel=1e-5)
        assert i.auc.mean().item() == pytest.approx(want["insertion_auc"], rel=1e-5)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_blur_matches_scipy(rank):
    """The reflect-101 border (scipy's "mirror"), reflected again where sigma 5's 20-element
    half-width exceeds the axis."""
    from scipy.ndimage import gaussian_filter

    x = torch.randn(2, 3, *SHAPES[rank], dtype=torch.float64)
    for sigma in (0.7, 5.0):
        want = gaussian_filter(x.numpy(), sigma=(0, 0) + (sigma,) * rank, mode="mirror", truncate=4.0)
        np.testing.assert_allclose(metrics.blur(x, sigma).numpy(), want, rtol=1e-10, atol=1e-12)


def test_blur_is_the_blur_of_the_methods():
    """One blur: insertion's baseline is ops.gaussian_blur (the IG, Group-CAM and SESS blur) with
    41 taps; a constant input stays constant (no border darkening), and a length-1 axis is kept."""
    from gradattr.ops import gaussian_blur

    x = torch.randn(2, 3, 30, 7)
    torch.testing.assert_close(metrics.blur(x), gaussian_blur(x, 41, 5.0, short_axes="repeat"), rtol=0, atol=0)
    y = torch.randn(2, 3, 30, 12)  # axes longer than 17 taps' half-width: one reflection, any policy
    for policy in ("shorten", "skip", "repeat"):
        torch.testing.assert_close(metrics.blur(y, 2.0), gaussian_blur(y, 17, 2.0, short_axes=policy), rtol=0, atol=0)
    const = torch.full((1, 2, 9, 1), 0.5, dtype=torch.float64)
    torch.testing.assert_close(metrics.blur(const), const)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_object_mask_beats_random_map(rank):
    """By construction: removing the object first kills the class-1 score at once."""
    net = object_net(rank)
    x, mask = object_scene(rank)
    good = mask.float().expand(2, *mask.shape)
    rand = torch.rand(2, *mask.shape)
    kw = dict(target=1, steps=10, baseline="zeros")
    assert (metrics.deletion(net, x, good, **kw).auc < metrics.deletion(net, x, rand, **kw).auc - 0.05).all()
    assert (metrics.insertion(net, x, good, **kw).auc > metrics.insertion(net, x, rand, **kw).auc + 0.05).all()
    # the reversed map (object last) is the worst possible for deletion
    assert (metrics.deletion(net, x, 1 - good, **kw).auc > metrics.deletion(net, x, rand, **kw).auc).all()


def test_several_targets_and_forms():
    """(N, K, *s) maps for K classes equal K separate calls; unbatched and numpy in -> same form out."""
    net = small_cnn(2)
    x = torch.randn(2, 2, 12, 12)
    maps = torch.rand(2, 2, 12, 12)
    both = metrics.deletion(net, x, maps, [0, 2], steps=4)
    assert both.auc.shape == (2, 2) and both.scores.shape == (2, 2, 5)
    for k, cls in enumerate([0, 2]):
        one = metrics.deletion(net, x, maps[:, k], cls, steps=4)
        np.testing.assert_allclose(both.auc[:, k].numpy(), one.auc.numpy(), rtol=1e-6)
    single = metrics.deletion(net, x[1], maps[1, 1], 2, steps=4)
    assert single.auc.ndim == 0 and single.auc.item() == pytest.approx(both.auc[1, 1].item(), rel=1e-6)
    as_np = metrics.deletion(net, x.numpy(), maps[:, 0].numpy(), 0, steps=4)
    assert isinstance(as_np.auc, np.ndarray) and isinstance(as_np.fractions, np.ndarray)
    np.testing.assert_allclose(as_np.auc, both.auc[:, 0].numpy(), rtol=1e-6)


def test_matlab_ordered_input_and_callable_baseline():
    net = small_cnn(2)
    x = torch.randn(12, 12, 2)  # H x W x C
    maps = torch.rand(12, 12)
    a = metrics.deletion(net, x, maps, 1, input_format="SSC", steps=4, baseline=lambda t: t * 0 + 0.5)
    b = metrics.deletion(net, x.permute(2, 0, 1), maps, 1, steps=4, baseline=0.5)
    assert a.auc.item() == pytest.approx(b.auc.item(), rel=1e-6)


# ============================================================================= confidence change
@pytest.mark.parametrize("rank", [1, 2])
def test_confidence_matches_pytorch_grad_cam(rank):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange, DropInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    net = small_cnn(rank)
    x = torch.randn(4, 2, *SHAPES[rank])
    maps = torch.rand(4, *SHAPES[rank]) * 3
    ours = metrics.confidence_change(net, x, maps)
    targets = [ClassifierOutputSoftmaxTarget(c) for c in net(x).argmax(1).tolist()]
    e = normalize_maps(maps[:, None])[:, 0].numpy()  # both multiply x by the [0, 1] map
    change = CamMultImageConfidenceChange()(x, e, targets, net)
    np.testing.assert_allclose((ours.masked - ours.score).numpy(), change, rtol=1e-5, atol=1e-7)
    drop = DropInConfidence()(x, e, targets, net)  # max(Y - O, 0), not divided by Y
    np.testing.assert_allclose((ours.drop * ours.score).numpy(), drop, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_confidence_matches_torchcam(rank):
    tc = pytest.importorskip("torchcam.metrics")
    net = small_cnn(rank)
    x = torch.randn(5, 2, *SHAPES[rank])
    maps = torch.rand(5, *SHAPES[rank])
    e = normalize_maps(maps[:, None])[:, 0]
    ref = tc.ClassificationMetric(FakeExtractor(net, e), softmax_fn)
    ref.update(x)
    want = ref.summary()
    ours = metrics.confidence_change(net, x, maps)
    assert ours.average_drop / 100 == pytest.approx(want["avg_drop"], rel=1e-4)
    assert ours.increase_in_confidence / 100 == pytest.approx(want["conf_increase"])
    assert metrics.average_drop(net, x, maps) == pytest.approx(ours.average_drop)
    assert metrics.increase_in_confidence(net, x, maps) == pytest.approx(ours.increase_in_confidence)


def test_confidence_hand_computed():
    """score = mean(x) raw: masking x = 2 by the map [0, .5, .5, 1] halves the score."""
    x = torch.full((1, 1, 4), 2.0)
    c = metrics.confidence_change(mean_net(1), x, torch.tensor([[0.0, 1.0, 1.0, 2.0]]), softmax=False)
    assert c.score.tolist() == [2.0] and c.masked.tolist() == [1.0]
    assert c.drop.tolist() == [0.5] and c.increase.tolist() == [False] and c.average_drop == 50.0
    up = metrics.confidence_change(mean_net(1), -x, torch.tensor([[0.0, 1.0, 1.0, 2.0]]), softmax=False)
    assert up.drop.tolist() == [0.0] or up.increase.tolist() == [True]
    raw = metrics.confidence_change(mean_net(1), x, torch.tensor([[0.0, 0.5, 0.5, 1.0]]), softmax=False,
                                    normalize=False)
    assert raw.masked.tolist() == [1.0]


# ============================================================================= ROAD
def test_imputer_matches_pytorch_grad_cam_and_quantus():
    torch.manual_seed(3)
    x = torch.randn(3, 11, 13)
    missing = torch.rand(11, 13) < 0.45
    ours = metrics.impute(x, missing)
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    theirs = NoisyLinearImputer(noise=0.0)(x, (~missing).float())
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)
    quantus = pytest.importorskip("quantus")
    q = quantus.functions.perturb_func.noisy_linear_imputation(
        x.numpy(), indices=np.flatnonzero(missing.numpy().ravel()), noise=0.0)
    np.testing.assert_allclose(ours.numpy(), q, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_imputer_matches_naive_dense_system(rank):
    g = torch.Generator().manual_seed(rank)
    s = SHAPES[rank] if rank < 3 else (4, 5, 4)
    x = torch.randn(2, *s, generator=g, dtype=torch.float64)
    missing = torch.rand(s, generator=g) < 0.5
    np.testing.assert_allclose(metrics.impute(x, missing).numpy(), naive_impute(x.numpy(), missing.numpy()),
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_imputer_is_exact_on_affine_data(rank):
    """Symmetric weights reproduce an affine function exactly on holes away from the border."""
    s = (9,) * rank
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in s], indexing="ij")
    f = (1.5 + sum((k + 1) * g for k, g in enumerate(grids)))[None]
    missing = torch.zeros(s, dtype=torch.bool)
    missing[(slice(2, 7),) * rank] = True
    torch.testing.assert_close(metrics.impute(f, missing), f, rtol=1e-10, atol=1e-9)


def test_imputer_noise_is_seeded_and_sized():
    x = torch.zeros(1, 60, 60)
    missing = torch.zeros(60, 60, dtype=torch.bool)
    missing[10:50, 10:50] = True
    a = metrics.impute(x, missing, noise=0.5, generator=torch.Generator().manual_seed(0))
    b = metrics.impute(x, missing, noise=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert (a[0][~missing] == 0).all()  # known elements untouched
    assert a[0][missing].std().item() == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("fraction", [0.2, 0.7])
def test_road_matches_pytorch_grad_cam(fraction):
    """ROADMostRelevantFirst(percentile=p) / ROADLeastRelevantFirst(percentile=p) remove the positions
    above / below the p-th percentile; p is set to remove exactly round(fraction * P) positions."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    net = small_cnn(2)
    x = torch.randn(3, 2, 10, 10)
    maps = torch.rand(3, 10, 10)
    ours = metrics.road(net, x, maps, fractions=[fraction], noise=0.0)
    targets = [ClassifierOutputSoftmaxTarget(c) for c in net(x).argmax(1).tolist()]
    p = 100
    k = round(fraction * p)
    percentile = 100 * (p - k - 0.5) / (p - 1)
    for cls, got in ((ROADMostRelevantFirst, ours.morf), (ROADLeastRelevantFirst, ours.lerf)):
        metric = cls(percentile=percentile)
        metric.perturbation.imputer.noise = 0.0
        want = metric(x, maps.numpy(), targets, net)  # score after - score before
        np.testing.assert_allclose((got[:, 0] - ours.score).numpy(), want, rtol=1e-4, atol=2e-7)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_road_object_mask_beats_random(rank):
    net = object_net(rank)
    x, mask = object_scene(rank)
    good = mask.float().expand(2, *mask.shape) + 0.01 * torch.rand(2, *mask.shape)
    rand = torch.rand(2, *mask.shape)
    fr = [0.1, 0.3, 0.5]
    rg, rr = metrics.road(net, x, good, 1, fractions=fr), metrics.road(net, x, rand, 1, fractions=fr)
    assert (rg.morf.mean(-1) < rr.morf.mean(-1) - 0.05).all()
    assert (rg.lerf.mean(-1) > rr.lerf.mean(-1)).all()  # imputation hides random holes: a small gap
    assert (rg.combined > rr.combined).all()
    again = metrics.road(net, x, good, 1, fractions=fr)  # seeded noise: reproducible
    assert torch.equal(again.morf, rg.morf)
    only = metrics.road(net, x, good, 1, fractions=fr, order="morf")
    assert only.lerf is None and torch.equal(only.morf, rg.morf)
    with pytest.raises(GradattrError, match="order"):
        _ = only.combined


# ============================================================================= localisation
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_pointing_game_peak_inside_and_outside(rank):
    s = SHAPES[rank]
    box = [[1, 4]] * rank
    m = torch.zeros(2, *s)
    m[(0,) + (2,) * rank] = 1.0  # inside
    m[(1,) + (5,) * rank] = 1.0  # outside
    assert metrics.pointing_game(m, box=box).tolist() == [True, False]
    mask = torch.zeros(s, dtype=torch.bool)
    mask[(slice(1, 4),) * rank] = True
    assert metrics.pointing_game(m, mask=mask).tolist() == [True, False]
    # peak at (5, ...) is 2 elements (Euclidean) from the box corner/edge only along... every axis:
    dist = (2 ** 2 * rank) ** 0.5
    assert metrics.pointing_game(m, box=box, tolerance=dist - 0.01).tolist() == [True, False]
    assert metrics.pointing_game(m, box=box, tolerance=dist).tolist() == [True, True]


def test_pointing_game_ties_and_numpy():
    m = np.zeros((1, 6, 6), dtype=np.float32)
    m[0, 0, 0] = m[0, 4, 4] = 1.0  # two maxima, one on the object
    hit = metrics.pointing_game(m, box=[[3, 6], [3, 6]])
    assert isinstance(hit, np.ndarray) and hit.tolist() == [True]


@pytest.mark.parametrize("shape", [(8, 40), (8, 12, 12)])
def test_pointing_and_energy_match_quantus(shape):
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(0)
    a = rng.random(shape).astype(np.float32)
    s = rng.random(shape) > 0.6
    a4, s4 = a[:, None], s[:, None].astype(np.float32)
    x = rng.random((shape[0], 1, *shape[1:])).astype(np.float32)
    y = np.zeros(shape[0], dtype=int)
    pg = quantus.PointingGame(disable_warnings=True, normalise=False)(
        model=None, x_batch=x, y_batch=y, a_batch=a4, s_batch=s4)
    rm = quantus.RelevanceMassAccuracy(disable_warnings=True, normalise=False)(
        model=None, x_batch=x, y_batch=y, a_batch=a4, s_batch=s4)
    assert metrics.pointing_game(a, mask=s).tolist() == [bool(v) for v in pg]
    np.testing.assert_allclose(metrics.energy_pointing_game(a, mask=s), np.array(rm, dtype=np.float64),
                               rtol=1e-5)


def test_energy_pointing_game_hand_computed():
    m = torch.tensor([[0.0, 1.0, 3.0, 0.0, -2.0], [0.0] * 5])
    e = metrics.energy_pointing_game(m, box=[[2, 4]])
    assert e[0].item() == pytest.approx(0.75)  # 3 / (1 + 3); the negative value is clipped
    assert torch.isnan(e[1])  # no energy at all


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_localize_hand_built_blobs(rank):
    s = (10,) * rank
    m = torch.zeros(1, *s)
    m[(0,) + (slice(2, 6),) * rank] = 1.0  # a blob of side 4
    m[(0,) + (8,) * rank] = 0.9  # a single speck, above 20% but smaller
    m[(0,) + (0,) * rank] = 0.1  # below 20% of the max: ignored
    ref = [[2, 5]] * rank
    loc = metrics.localize(m, ref)
    assert loc.boxes.tolist() == [[[2, 6]] * rank]
    assert loc.iou.item() == pytest.approx(3 ** rank / 4 ** rank)
    high = metrics.localize(m, threshold=0.95)
    assert high.boxes.tolist() == [[[2, 6]] * rank] and high.iou is None


def test_localize_connectivity():
    m = torch.zeros(1, 6, 6)
    m[0, 0:2, 0:2] = 1.0
    m[0, 2:5, 2:4] = 1.0  # touches the first blob only at a corner
    assert metrics.localize(m).boxes.tolist() == [[[0, 5], [0, 4]]]  # 8-connected: one component
    assert metrics.localize(m, connectivity=1).boxes.tolist() == [[[2, 5], [2, 4]]]


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_localize_matches_naive_flood_fill(rank):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(rank)
    s = {1: (60,), 2: (20, 20), 3: (9, 9, 9)}[rank]
    maps = np.stack([gaussian_filter(rng.random(s), 1.2) ** 4 for _ in range(4)]).astype(np.float32)
    for t in (0.2, 0.5):
        got = metrics.localize(maps, threshold=t).boxes
        for i in range(4):
            assert got[i].tolist() == naive_largest_box(maps[i], t)


def test_localize_zero_map_and_box_iou():
    loc = metrics.localize(torch.zeros(1, 5, 5), [[0, 2], [0, 2]])
    assert loc.boxes.tolist() == [[[0, 0], [0, 0]]] and loc.iou.tolist() == [0.0]
    assert metrics.box_iou([[0, 4]], [[2, 6]]).item() == pytest.approx(2 / 6)
    assert metrics.box_iou([[0, 2], [0, 2], [0, 2]], [[1, 3], [1, 3], [1, 3]]).item() == pytest.approx(1 / 15)


# ============================================================================= state and device
def test_model_and_input_left_as_found():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    net.train()
    net[0].weight.requires_grad_(False)
    net[6].weight.grad = torch.ones_like(net[6].weight)
    x = torch.randn(2, 2, 12, 12)
    x0 = x.clone()
    maps = torch.rand(2, 12, 12)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    metrics.deletion(net, x, maps, steps=3)
    metrics.confidence_change(net, x, maps)
    metrics.road(net, x, maps, fractions=[0.5])
    assert all(m.training for m in net.modules())
    assert not net[0].weight.requires_grad and net[2].inplace
    assert torch.equal(net[6].weight.grad, torch.ones_like(net[6].weight)) and net[0].bias.grad is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in net.modules())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # running stats too
    assert torch.equal(x, x0)


def test_eval_mode_is_used():
    """Dropout off during scoring: the same call gives the same numbers on a model left in train mode."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.Dropout(0.9), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                        nn.Linear(4, 2)).train()
    x, maps = torch.randn(2, 1, 16), torch.rand(2, 16)
    a = metrics.deletion(net, x, maps, steps=4).scores
    b = metrics.deletion(net, x, maps, steps=4).scores
    assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu():
    net = small_cnn(2)
    x, maps = torch.randn(2, 2, 12, 12), torch.rand(2, 12, 12)
    cpu = metrics.deletion(net, x, maps, steps=4)
    gpu = metrics.deletion(net, x.cuda(), maps.cuda(), steps=4, device="cuda")
    assert gpu.auc.device.type == "cuda" and next(net.parameters()).device.type == "cpu"
    torch.testing.assert_close(gpu.auc.cpu(), cpu.auc, rtol=1e-4, atol=1e-6)
    r_cpu = metrics.road(net, x, maps, fractions=[0.3])
    r_gpu = metrics.road(net.cuda(), x.cuda(), maps.cuda(), fractions=[0.3])
    net.cpu()
    assert r_gpu.morf.device.type == "cuda"
    torch.testing.assert_close(r_gpu.morf.cpu(), r_cpu.morf, rtol=1e-4, atol=1e-6)


# ============================================================================= errors
def test_errors_name_the_argument():
    net = small_cnn(2)
    x, maps = torch.randn(2, 2, 12, 12), torch.rand(2, 12, 12)
    with pytest.raises(GradattrError, match=r"maps: expected .*upsampling='bicubic'"):
        metrics.deletion(net, x, torch.rand(2, 3, 3))
    with pytest.raises(GradattrError, match=r"maps: expected one map per sample"):
        metrics.deletion(net, x, torch.rand(3, 12, 12))
    with pytest.raises(GradattrError, match=r"maps: expected one map per target score: 2"):
        metrics.deletion(net, x, torch.rand(2, 3, 12, 12), [0, 1])
    with pytest.raises(GradattrError, match=r"steps: expected an integer >= 1, got 0"):
        metrics.deletion(net, x, maps, steps=0)
    with pytest.raises(GradattrError, match=r"baseline: expected 'zeros', 'mean', 'blur'"):
        metrics.insertion(net, x, maps, baseline="noise")
    with pytest.raises(GradattrError, match=r"batch_size: expected an integer >= 1"):
        metrics.confidence_change(net, x, maps, batch_size=0)
    with pytest.raises(GradattrError, match=r"net: expected a torch.nn.Module"):
        metrics.deletion(lambda t: t, x, maps)
    with pytest.raises(GradattrError, match=r"maps: expected finite values"):
        metrics.deletion(net, x, maps * float("nan"))
    with pytest.raises(GradattrError, match=r"fractions: expected a non-empty sequence of numbers strictly"):
        metrics.road(net, x, maps, fractions=[0.0, 0.5])
    with pytest.raises(GradattrError, match=r"fractions: expected fractions that remove at least one"):
        metrics.road(net, x, maps, fractions=[0.001])
    with pytest.raises(GradattrError, match=r"order: expected 'morf', 'lerf' or 'both'"):
        metrics.road(net, x, maps, order="most")
    with pytest.raises(GradattrError, match=r"missing: expected at least one known element"):
        metrics.impute(torch.ones(1, 4), torch.ones(4, dtype=torch.bool))


def test_localisation_errors():
    m = torch.rand(2, 8, 8)
    with pytest.raises(GradattrError, match=r"mask: expected exactly one of mask and box, got neither"):
        metrics.pointing_game(m)
    with pytest.raises(GradattrError, match=r"mask: expected exactly one of mask and box, got both"):
        metrics.pointing_game(m, mask=torch.ones(8, 8, dtype=torch.bool), box=[[0, 1], [0, 1]])
    with pytest.raises(GradattrError, match=r"box: expected \(2, 2\) or \(2, 2, 2\) .*maps\[None\]"):
        metrics.pointing_game(m, box=[[0, 4]])
    with pytest.raises(GradattrError, match=r"box: expected 0 <= start < stop <= size"):
        metrics.energy_pointing_game(m, box=[[0, 9], [0, 4]])
    with pytest.raises(GradattrError, match=r"mask: expected a reference region with at least one element"):
        metrics.pointing_game(m, mask=torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(GradattrError, match=r"mask: expected a boolean array of shape \(8, 8\)"):
        metrics.pointing_game(m, mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(GradattrError, match=r"maps: expected a batch of maps"):
        metrics.localize(torch.rand(8))
    with pytest.raises(GradattrError, match=r"threshold: expected a fraction of the maximum"):
        metrics.localize(m, threshold=1.5)
    with pytest.raises(GradattrError, match=r"connectivity: expected an integer from 1 to the maps' rank 2"):
        metrics.localize(m, connectivity=3)
    with pytest.raises(GradattrError, match=r"tolerance: expected a distance >= 0"):
        metrics.pointing_game(m, box=[[0, 1], [0, 1]], tolerance=-1)


@pytest.mark.slow  # minutes of CPU in total with its neighbours; CI's second step runs it
# ============================================================================= the pretrained network
def test_pretrained_cat_and_coffee_localised_and_faithful(effnet, cat_coffee):
    """EfficientNet-Lite0 on the cat (left half) beside the espresso (right half): each class's Grad-CAM
    points into its own half, and inserting (removing) the cat's Grad-CAM first raises (lowers) the cat
    score faster than a random order."""
    import gradattr

    cat, coffee = 285, 967
    maps = gradattr.grad_cam(effnet, cat_coffee, [cat, coffee])  # (1, 2, 224, 448)
    left, right = [[0, 224], [0, 224]], [[0, 224], [224, 448]]
    assert metrics.pointing_game(maps[0, :1], box=left).tolist() == [True]
    assert metrics.pointing_game(maps[0, 1:], box=right).tolist() == [True]
    assert metrics.energy_pointing_game(maps[0, :1], box=left).item() > 0.7
    assert metrics.energy_pointing_game(maps[0, 1:], box=right).item() > 0.7
    loc = metrics.localize(maps[0, :1], left)
    assert loc.boxes[0, 1, 1].item() <= 260 and loc.iou.item() > 0.3  # the cat's box stays on the left
    rand = torch.rand(1, 224, 448)
    i_cam = metrics.insertion(effnet, cat_coffee, maps[:, 0], cat, steps=6, batch_size=7)  # blurred start
    i_rand = metrics.insertion(effnet, cat_coffee, rand, cat, steps=6, batch_size=7)
    assert i_cam.auc.item() > 3 * i_rand.auc.item()  # the cat alone is more "cat" than the whole picture
    assert i_cam.scores[0, 0].item() == pytest.approx(i_rand.scores[0, 0].item())  # same blurred start
    d_cam = metrics.deletion(effnet, cat_coffee, maps[:, 0], cat, steps=6, batch_size=7, softmax=False)
    d_rand = metrics.deletion(effnet, cat_coffee, rand, cat, steps=6, batch_size=7, softmax=False)
    assert d_cam.auc.item() < d_rand.auc.item() - 0.2  # the cat logit falls faster
