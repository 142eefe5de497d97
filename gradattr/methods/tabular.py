"""Attributions for tabular data and regressors: feature ablation, Shapley values, LIME.

The perturbation methods of MATLAB's Statistics and Machine Learning Toolbox
(``shapley``, ``lime``) and captum's ``FeatureAblation``, on a batch of feature rows
``(N, F)`` (and on ``(N, C, *S)`` inputs, where every element of ``(C, *S)`` is a
feature). A feature row is ``x[i]`` flattened to ``D`` values; every perturbed row
goes through the network in chunks under the memory budget, and all ``K`` targets are
scored from the same forward passes (:meth:`~gradattr.scorer.Scorer.score_inputs`).
The gradient-based baseline methods (DeepLIFT, expected gradients) live in
:mod:`gradattr.methods.deeplift`.

* :func:`feature_ablation_map`: ``f(x) - f(x with a feature (group) set to the baseline)``.
* :func:`shapley_map`: interventional Shapley values, ``v(S) = mean_b f(x_S, b_notS)`` over
  background rows ``b``; every coalition when ``2^D <= max_subsets`` (exact), Kernel SHAP
  (Lundberg & Lee 2017) on ``max_subsets`` coalitions otherwise, constrained to efficiency.
* :func:`tabular_lime_map`: a weighted linear surrogate fitted on synthetic rows drawn from
  the background's per-feature distribution.
"""
from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch

from ..errors import expected
from ..options import COMMON, TARGET, Option, positive_int
from ..registry import Method, register
from ..budget import chunk_size
from .baseline import baseline_like, baseline_option
from .common import BATCH_SIZE, PROGRESS
from .perturbation import SEED, positive_float

TABULAR_TOY = """>>> import torch, gradattr
>>> _ = torch.manual_seed(0)
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
>>> x, data = torch.randn(3, 4), torch.randn(50, 4)
"""


# -- inputs: feature rows, background rows, baselines, groups -------------------------------
def feature_rows(view) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The explained input as rows ``(N, D)`` and the shape of one sample ``E`` (``D = prod E``)."""
    x = view.scorer.x
    if not x.is_floating_point():
        raise expected(view.scorer.input_name, "floating-point features", f"dtype {x.dtype}")
    return x.reshape(x.shape[0], -1), tuple(x.shape[1:])


def background_rows(value, element: tuple[int, ...], like: torch.Tensor, name: str = "background"):
    """Background rows ``(M, D)``: a number (one constant row), one row ``E`` or rows ``(M, *E)``
    (``(M, D)`` flattened also accepted), on ``like``'s device and dtype."""
    d = math.prod(element)
    what = (f"reference rows (M, {', '.join(map(str, element))}) from the data the model was "
            "trained on (MATLAB's X), one such row, or a number (one constant row)")
    if value is None:
        raise expected(name, what, "None")
    if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        if not np.isfinite(float(value)):
            raise expected(name, "finite values", repr(value))
        return torch.full((1, d), float(value), dtype=like.dtype, device=like.device)
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.from_numpy(np.ascontiguousarray(np.asarray(value, dtype=np.float64)))
        except (TypeError, ValueError):
            raise expected(name, what, type(value).__name__) from None
    shape = tuple(value.shape)
    if shape == element:
        value = value.reshape(1, d)
    elif len(shape) >= 1 and (shape[1:] == element or shape[1:] == (d,)):
        value = value.reshape(shape[0], d)
    else:
        raise expected(name, what, f"shape {shape}")
    if value.shape[0] == 0:
        raise expected(name, "at least one row", f"shape {shape} (no rows)")
    if value.is_complex() or value.dtype == torch.bool:
        raise expected(name, "real numbers", f"dtype {value.dtype}")
    value = value.detach().to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(value).all()):
        raise expected(name, "finite values", f"NaN or Inf in rows of shape {shape}")
    return value


def group_labels(groups, element: tuple[int, ...], device) -> tuple[torch.Tensor, int]:
    """``groups`` -> labels ``(D,)`` in ``0..G-1`` (in order of first appearance of each id) and ``G``."""
    d = math.prod(element)
    if groups is None:
        return torch.arange(d, device=device), d
    g = groups if isinstance(groups, torch.Tensor) else torch.from_numpy(np.asarray(groups))
    if g.is_floating_point() or g.dtype == torch.bool or g.is_complex():
        raise expected("groups", "integer group ids", f"dtype {g.dtype}")
    if tuple(g.shape) not in (element, (d,)):
        raise expected("groups", f"one integer group id per feature, shape {element}", f"shape {tuple(g.shape)}")
    _, first, labels = np.unique(g.reshape(-1).cpu().numpy(), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # relabel by first appearance: group 0 holds feature 0
    return torch.from_numpy(order[labels.reshape(-1)]).to(device), len(first)


# -- scoring perturbed rows -----------------------------------------------------------------
def mean_scores(scorer, count: int, make, rows: torch.Tensor, group: int, batch_size, progress: bool,
                desc: str) -> torch.Tensor:
    """Scores of ``count`` perturbed inputs averaged over consecutive runs of ``group``:
    ``(count // group, K)`` in float64.

    ``make(start, stop)`` builds inputs ``start..stop-1`` as ``(stop - start, *E)``; ``rows``
    says whose target each is scored for. Chunks hold ``batch_size`` inputs or what fits the
    memory budget (these are small rows: no per-pass cap), so ``count x E`` is never built.
    """
    step = chunk_size(batch_size, scorer.budget.masked_bytes, scorer.x.device, cpu_cap=False)
    out = None
    bar = scorer.progress(count, progress, desc)
    try:
        for start in range(0, count, step):
            stop = min(count, start + step)
            s = scorer.score_inputs(make(start, stop), rows[start:stop]).double()
            if out is None:
                out = s.new_zeros(count // group, s.shape[1])
            index = torch.arange(start, stop, device=s.device) // group
            out.index_add_(0, index, s)
            bar.update(stop - start)
    finally:
        bar.close()
    return cast(torch.Tensor, out) / group  # set by the first chunk (count > 0)


def coalition_values(scorer, xr, bg, masks, element, batch_size, progress, desc="shapley"):
    """``v(S) = mean_b f(x_S, b_notS)``: ``(N, C, K)`` for the coalitions ``masks (C, D)`` (True:
    the feature is taken from ``x``), every background row ``bg (M, D)``, every sample."""
    n, m, c = xr.shape[0], bg.shape[0], masks.shape[0]
    rows = torch.arange(n, device=xr.device).repeat_interleave(c * m)
    masks = masks.to(xr.device)

    def make(i, j):  # the (sample, coalition) pairs the rows i..j-1 span, every background row each
        q = torch.arange(i // m, (j - 1) // m + 1, device=xr.device)
        block = torch.where(masks[q % c][:, None], xr[q // c][:, None], bg[None])  # (Q, M, D)
        return block.view(-1, xr.shape[1])[i - q[0] * m:j - q[0] * m].view(-1, *element)

    return mean_scores(scorer, n * c * m, make, rows, m, batch_size, progress, desc).view(n, c, -1)


# -- feature ablation ---------------------------------------------------------------------
def feature_ablation_map(view, baseline=0.0, groups=None, batch_size=None, progress=False) -> torch.Tensor:
    """``(N, K, *E)``: ``f(x) - f(x with the feature's group set to the baseline)``."""
    scorer = view.scorer
    xr, element = feature_rows(view)
    base = baseline_like(baseline, scorer.x).reshape(scorer.x.shape[0], -1)
    labels, g = group_labels(groups, element, xr.device)
    n = xr.shape[0]
    rows = torch.arange(n, device=xr.device).repeat_interleave(g)
    onehot = labels[None, :] == torch.arange(g, device=xr.device)[:, None]  # (G, D)

    def make(i, j):
        t = torch.arange(i, j, device=xr.device)
        r = t // g
        return torch.where(onehot[t % g], base[r], xr[r]).view(-1, *element)

    full = scorer.score_inputs(scorer.x, torch.arange(n, device=xr.device)).double()  # (N, K)
    drop = full[:, None] - mean_scores(scorer, n * g, make, rows, 1, batch_size, progress,
                                       "feature ablation").view(n, g, -1)
    return drop[:, labels].transpose(1, 2).reshape(n, -1, *element).to(xr.dtype)


# -- Shapley values -----------------------------------------------------------------------
def all_coalitions(d: int) -> torch.Tensor:
    """Every coalition ``(2^d, d)``; row ``c`` holds feature ``j`` when bit ``j`` of ``c`` is set."""
    return ((torch.arange(2 ** d)[:, None] >> torch.arange(d)) & 1).bool()


def exact_shapley(v: torch.Tensor, d: int) -> torch.Tensor:
    """Shapley values ``(N, K, d)`` from the values ``v (N, 2^d, K)`` of every coalition:
    ``phi_j = sum_{S not containing j} |S|! (d - |S| - 1)! / d! (v(S + j) - v(S))``."""
    idx = torch.arange(2 ** d, device=v.device)
    size = all_coalitions(d).to(v.device).sum(1)
    w = torch.tensor([math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) for s in range(d)],
                     dtype=torch.float64, device=v.device)
    out = []
    for j in range(d):
        without = idx[((idx >> j) & 1) == 0]
        diff = v[:, without | (1 << j)] - v[:, without]  # (N, 2^(d-1), K)
        out.append((w[size[without]][None, :, None] * diff).sum(1))
    return torch.stack(out, -1)


def kernel_coalitions(d: int, budget: int, seed) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel SHAP's coalitions besides the empty and the full one: ``(masks (C, d), weights (C,))``.

    As ``shap.KernelExplainer`` chooses them: subset sizes in pairs ``(s, d - s)`` from the
    smallest, each enumerated completely while the budget covers its share of the Shapley
    kernel's weight; the rest sampled (size by the remaining kernel weight, then a random
    subset and its complement), repeats adding weight, the sampled weights scaled to the
    kernel weight left (numpy's generator seeded ``seed``).
    """
    import itertools

    rng = np.random.default_rng(seed)
    sizes, paired = math.ceil((d - 1) / 2), (d - 1) // 2
    kernel = np.array([(d - 1) / (s * (d - s)) for s in range(1, sizes + 1)])
    kernel[:paired] *= 2
    kernel /= kernel.sum()
    masks, weights, left, remaining, full = [], [], budget, kernel.copy(), 0
    for s in range(1, sizes + 1):
        count = math.comb(d, s) * (2 if s <= paired else 1)
        if left * remaining[s - 1] / count < 1 - 1e-8:
            break
        full, left = full + 1, left - count
        if remaining[s - 1] < 1:
            remaining = remaining / (1 - remaining[s - 1])
        w = kernel[s - 1] / count
        for inds in itertools.combinations(range(d), s):
            m = np.zeros(d, bool)
            m[list(inds)] = True
            masks += [m, ~m] if s <= paired else [m]
            weights += [w, w] if s <= paired else [w]
    fixed = len(masks)
    if full < sizes and left > 0:
        p = kernel.copy()
        p[:paired] /= 2
        p = p[full:] / p[full:].sum()
        seen: dict = {}
        for size in rng.choice(len(p), 4 * left, p=p) + full + 1:
            if left <= 0:
                break
            m = np.zeros(d, bool)
            m[rng.permutation(d)[:size]] = True
            for mm in ((m, ~m) if size <= paired else (m,)):
                key = mm.tobytes()
                if key in seen:
                    weights[seen[key]] += 1.0
                elif left > 0:
                    seen[key] = len(masks)
                    masks.append(mm)
                    weights.append(1.0)
                    left -= 1
        scaled = np.array(weights)
        scaled[fixed:] *= kernel[full:].sum() / scaled[fixed:].sum()
        return torch.from_numpy(np.array(masks).reshape(-1, d)), torch.tensor(np.asarray(scaled, float))
    return torch.from_numpy(np.array(masks).reshape(-1, d)), torch.tensor(np.asarray(weights, float))


def kernel_shap(v: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted least squares of ``v(S) - v(empty)`` on the coalitions, constrained to
    ``sum phi = v(full) - v(empty)`` (the last value eliminated, as shap does): ``(N, K, d)``.

    ``v (N, 2 + C, K)`` holds the empty and the full coalition first, then ``masks (C, d)``."""
    n, _, k = v.shape
    d = masks.shape[1]
    null, total = v[:, 0], v[:, 1] - v[:, 0]  # (N, K)
    z = masks.to(v.device, torch.float64)
    y = (v[:, 2:] - null[:, None]) - z[None, :, -1:] * total[:, None]  # (N, C, K)
    design = (z[:, :-1] - z[:, -1:]) * weights.to(v.device).sqrt()[:, None]
    rhs = (y * weights.to(v.device).sqrt()[None, :, None]).permute(1, 0, 2).reshape(len(z), n * k)
    sol = torch.linalg.lstsq(design.cpu(), rhs.cpu(), driver="gelsd").solution.to(v.device)
    head = sol.reshape(d - 1, n, k).permute(1, 2, 0)  # (N, K, d - 1)
    return torch.cat([head, (total - head.sum(-1))[..., None]], -1)


def shapley_map(view, background=None, max_subsets=1024, seed=0, batch_size=None, progress=False):
    """``(N, K, *E)``: interventional Shapley values, exact or by Kernel SHAP."""
    scorer = view.scorer
    xr, element = feature_rows(view)
    bg = background_rows(background, element, xr)
    d = xr.shape[1]
    if d <= 62 and 2 ** d <= max_subsets:
        v = coalition_values(scorer, xr, bg, all_coalitions(d), element, batch_size, progress)
        phi = exact_shapley(v, d)
    else:
        if max_subsets < d + 1:
            raise expected("max_subsets", f"at least F + 1 = {d + 1} coalitions for Kernel SHAP on "
                           f"{d} features (or 2^F for the exact values)", repr(max_subsets))
        masks, weights = kernel_coalitions(d, max_subsets - 2, seed)
        ends = torch.stack([torch.zeros(d, dtype=torch.bool), torch.ones(d, dtype=torch.bool)])
        v = coalition_values(scorer, xr, bg, torch.cat([ends, masks]), element, batch_size, progress)
        phi = kernel_shap(v, masks, weights)
    return phi.reshape(xr.shape[0], -1, *element).to(xr.dtype)


# -- LIME ---------------------------------------------------------------------------------
def lime_samples(bg: torch.Tensor, num_samples: int, seed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic rows ``(S, D)`` from the background's per-feature normal distribution (mean and
    sample standard deviation of each column; MATLAB's ``DataLocality="global"``), drawn in
    float64 from a CPU generator seeded ``seed``; with the column means and spreads."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    b = bg.double().cpu()
    mu = b.mean(0)
    sd = b.std(0) if b.shape[0] > 1 else torch.zeros_like(mu)
    z = mu + sd * torch.randn(num_samples, b.shape[1], generator=gen, dtype=torch.float64)
    return z, mu, sd


def weighted_fit(z: torch.Tensor, f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Coefficients ``(K, D)`` of ``f (S, K) ~ c + z (S, D) beta``, least squares weighted by ``w (S,)``."""
    design = torch.cat([torch.ones(len(z), 1, dtype=torch.float64), z], 1) * w.sqrt()[:, None]
    return torch.linalg.lstsq(design, f * w.sqrt()[:, None], driver="gelsd").solution[1:].T


def important_fit(z: torch.Tensor, f: torch.Tensor, w: torch.Tensor, keep: int) -> torch.Tensor:
    """``(D,)``: the weighted fit of ``f (S,)`` on ``keep`` predictors chosen by orthogonal matching
    pursuit (each step adds the predictor most correlated with the weighted residual, then refits
    on all chosen ones); the others are 0."""
    sw = w.sqrt()
    zc = (z - (w[:, None] * z).sum(0) / w.sum()) * sw[:, None]
    norms = zc.norm(dim=0).clamp(min=1e-300)
    chosen: list[int] = []
    coef = torch.zeros(z.shape[1], dtype=torch.float64)
    resid = (f - (w * f).sum() / w.sum()) * sw
    for _ in range(keep):
        score = (zc.T @ resid).abs() / norms
        score[chosen] = -1
        chosen.append(int(score.argmax()))
        beta = weighted_fit(z[:, chosen], f[:, None], w)[0]
        coef.zero_()
        coef[chosen] = beta
        resid = (f - (w * f).sum() / w.sum() - ((z - (w[:, None] * z).sum(0) / w.sum()) @ coef)) * sw
    return coef


def tabular_lime_map(view, background=None, num_important=None, num_samples=5000, kernel_width=0.75, seed=0,
                     batch_size=None, progress=False) -> torch.Tensor:
    """``(N, K, *E)``: the coefficients of the weighted linear surrogate (original units)."""
    scorer = view.scorer
    xr, element = feature_rows(view)
    bg = background_rows(background, element, xr)
    n, d = xr.shape
    if num_important is not None and num_important > d:
        raise expected("num_important", f"at most the number of features ({d})", repr(num_important))
    z, mu, sd = lime_samples(bg, num_samples, seed)
    zx = z.to(xr.device, xr.dtype)
    # the synthetic rows do not depend on the query row: scored once when every sample has the same
    # target (class indices or a function) and no other input follows the samples
    call = scorer.call
    once = scorer.given_target.kind in ("index", "fn") and not call.inputs and not call.forward_kwargs
    reps = 1 if once else n
    rows = torch.arange(reps, device=xr.device).repeat_interleave(num_samples)
    f = mean_scores(scorer, reps * num_samples, lambda i, j: zx[torch.arange(i, j) % num_samples].view(-1, *element),
                    rows, 1, batch_size, progress, "LIME").view(reps, num_samples, -1).cpu().expand(n, -1, -1)
    live = sd > 0  # a constant column cannot be fitted: its coefficient is 0
    scale = torch.where(live, sd, torch.ones_like(sd))
    dist2 = (((z[None] - xr.double().cpu()[:, None]) / scale) ** 2).sum(-1)  # (N, S)
    width2 = kernel_width ** 2 * d
    # exp(-d^2 / w^2), shifted by each row's smallest distance (the same fit, no underflow)
    w = torch.exp(-(dist2 - dist2.amin(1, keepdim=True)) / width2)
    zs = (z[:, live] - mu[live]) / scale[live]  # standardised columns (better conditioned)
    coef = torch.zeros(n, f.shape[2], d, dtype=torch.float64)
    keep = min(num_important, int(live.sum())) if num_important is not None else None
    for i in range(n):
        if keep is None:
            coef[i][:, live] = weighted_fit(zs, f[i], w[i])
        else:
            coef[i][:, live] = torch.stack([important_fit(zs, f[i, :, k], w[i], keep) for k in range(f.shape[2])])
    coef[:, :, live] /= scale[live]
    return coef.reshape(n, -1, *element).to(device=xr.device, dtype=xr.dtype)


# -- validators and registration ----------------------------------------------------------
def _background(name, value):
    if isinstance(value, (str, bytes, bool)):
        raise expected(name, "reference rows (a tensor or array), or a number", repr(value))
    return value


def _groups(name, value):
    if value is not None and not isinstance(value, (torch.Tensor, np.ndarray, list, tuple)):
        raise expected(name, "None or an integer array of group ids, one per feature", repr(value))
    return value


def _optional_count(name, value):
    if value is not None:
        positive_int(name, value)
    return value


BACKGROUND = Option("background", None, "torch.Tensor | np.ndarray | float | None",
                    "reference rows ``(M, F)`` (``(M, C, *S)``), e.g. the training data or a sample "
                    "of it (MATLAB's ``X``), one such row, or a number (one constant row). Required.",
                    _background)

register(Method(
    "feature_ablation", "Feature ablation", feature_ablation_map, "nothing", family="perturbation",
    shared=COMMON + TARGET, combine="map", returns="pixels",
    options=(Option("baseline", 0.0, "float | torch.Tensor | np.ndarray",
                    "what an ablated feature becomes: a number, or values broadcastable to ``x`` "
                    "(one per feature ``(F,)``, or per sample ``(N, F)``).", baseline_option),
             Option("groups", None, "np.ndarray | torch.Tensor | None",
                    "integer group ids, one per feature ``(F,)`` (``(C, *S)``): the features of a "
                    "group are ablated together and each reports the group's value (captum's "
                    "``feature_mask``); ``None``: every feature alone.", _groups),
             BATCH_SIZE, PROGRESS),
    summary="Feature ablation (captum ``FeatureAblation``): the drop of the score when a feature, or "
            "a group of features, is set to a baseline.",
    doc="""``a_j = f(x) - f(x with feature j's group set to baseline)``, one forward pass per group
and sample (in chunks, all targets from the same passes). Equal to captum's ``FeatureAblation``
with the same baselines and ``feature_mask``. See :mod:`gradattr.methods.tabular`.""",
    example=TABULAR_TOY + """>>> gradattr.feature_ablation(net, x, 0, baseline=data.mean(0)).shape
torch.Size([3, 4])
""",
    use_when="which features a regressor or classifier needs, one pass per feature (or group)"))

register(Method(
    "shapley", "Shapley values", shapley_map, "nothing", family="perturbation",
    shared=COMMON + TARGET, combine="map", returns="pixels",
    options=(BACKGROUND,
             Option("max_subsets", 1024, "int",
                    "coalitions evaluated per row, the empty and the full one included (MATLAB's "
                    "``MaxNumSubsets``): every coalition (exact values) when ``2^F <= max_subsets``, "
                    "else Kernel SHAP on this many.", positive_int),
             SEED, BATCH_SIZE, PROGRESS),
    summary="Shapley values (MATLAB ``shapley``; Lundberg & Lee 2017): interventional Shapley values "
            "of each feature against background data, exact or by Kernel SHAP.",
    doc="""``phi_j = sum_S |S|!(F-|S|-1)!/F! (v(S + j) - v(S))`` with ``v(S) = mean_b f(x_S, b_notS)``
over the background rows ``b`` (interventional). Exact (all ``2^F`` coalitions) when
``2^F <= max_subsets``; otherwise Kernel SHAP: the Shapley-kernel-weighted least squares on
``max_subsets`` coalitions chosen as ``shap.KernelExplainer`` chooses them (sizes enumerated
from the smallest while the budget allows, the rest sampled with ``seed``), constrained so that
the values of each row sum to ``f(x) - mean_b f(b)`` (efficiency). Costs ``N x coalitions x M``
rows of forward passes, batched. See :mod:`gradattr.methods.tabular`.""",
    example=TABULAR_TOY + """>>> phi = gradattr.shapley(net, x, 0, background=data)
>>> total = net(x)[:, 0] - net(data)[:, 0].mean()
>>> bool(torch.allclose(phi.sum(1), total, atol=1e-5))
True
""",
    use_when="tabular data and regressors: additive, exact attributions against a background "
             "(MATLAB's shapley); 2^F x M forward rows per sample"))

register(Method(
    "lime", "LIME (tabular)", tabular_lime_map, "nothing", family="perturbation",
    shared=COMMON + TARGET, combine="map", returns="pixels",
    options=(BACKGROUND,
             Option("num_important", None, "int | None",
                    "refit on this many predictors, chosen by orthogonal matching pursuit; the "
                    "others are 0 (MATLAB's ``numImportantPredictors``); ``None``: all.",
                    _optional_count),
             Option("num_samples", 5000, "int", "synthetic rows (MATLAB's ``NumSyntheticData``).",
                    positive_int),
             Option("kernel_width", 0.75, "float",
                    "the kernel ``exp(-d^2 / (kernel_width^2 F))`` on the distance ``d`` standardised "
                    "by the background's per-feature spread (MATLAB's ``KernelWidth``).", positive_float),
             SEED, BATCH_SIZE, PROGRESS),
    summary="LIME for tabular data (MATLAB ``lime``; Ribeiro et al., KDD 2016): the coefficients of a "
            "weighted linear model of the score fitted on synthetic rows around the data.",
    doc="""``num_samples`` synthetic rows ``z`` are drawn from independent normal distributions with
each background column's mean and standard deviation (MATLAB's default, ``DataLocality="global"``:
centred on the data, not on the query row), scored, and weighted by the paper's kernel
``exp(-d(x, z)^2 / (kernel_width^2 F))``, ``d`` the Euclidean distance after dividing each
feature by its background standard deviation. The result is the coefficients of the weighted
least-squares fit ``f(z) ~ c + z beta`` in the features' own units (a linear network gives its
weights); ``num_important`` keeps that many predictors (orthogonal matching pursuit) and refits.
Constant background columns get 0. The image method is ``image_lime``. See
:mod:`gradattr.methods.tabular`.""",
    example=TABULAR_TOY + """>>> gradattr.lime(net, x, 0, background=data, num_samples=500).shape
torch.Size([3, 4])
""",
    use_when="a local linear surrogate of a tabular model (MATLAB's lime); num_samples forward rows "
             "per sample"))
