"""Perturbation methods: weights or maps from forward passes on masked inputs.

SS-CAM and IS-CAM (Score-CAM over noisy or scaled masks), Group-CAM, RISE and the
random baseline, with the randomness options (``seed``, ``generator``) several methods
share. Score-CAM is in :mod:`.score_cam`, Ablation-CAM (modified activations) in
:mod:`.ablation`.
"""
from __future__ import annotations

from typing import cast

import torch
from einops import rearrange

from .. import resize
from ..errors import expected
from ..ops import gaussian_blur, minmax
from ..options import COMMON, GENERATOR, LAYER, TARGET, Option, flag, positive_int, seed_option
from ..registry import Method, register
from .common import BATCH_SIZE, PROGRESS, TOY as _TOY, make_generator
from .score_cam import score_cam_weights


# -- randomness -----------------------------------------------------------------------------
def positive_float(name, value):
    """Validator of an option that is a positive real number (shared with LIME)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise expected(name, "a positive number", repr(value))
    return float(value)


def _probability(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise expected(name, "a number in (0, 1]", repr(value))
    return float(value)


def _percentile(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 100:
        raise expected(name, "a percentile in [0, 100)", repr(value))
    return float(value)


SEED = seed_option(0, "seed of the random draws: the same seed gives the same map on a CPU; ``None`` "
                       "draws from torch's global random state (``torch.manual_seed``).")
SOFTMAX = Option("softmax", True, "bool",
                 "score the softmax probabilities of the output (the paper's choice); ``False``: the "
                 "raw output (use it for a regression or a ``reduction_fn`` on raw scores).", flag)


def _randn(shape, gen, device):
    dev = gen.device if gen is not None else device
    return torch.randn(shape, generator=gen, device=dev).to(device)


# -- SS-CAM and IS-CAM (torch-cam's masks) --------------------------------------------------
def torchcam_masks(acts: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Channel maps ``acts (B, *s)`` min-max scaled on the feature map, then upsampled to ``size``.

    torch-cam's masks for SS-CAM and IS-CAM: ``(A - min) / (max - min + 1e-8)`` per
    channel, then multi-linear upsampling with ``align_corners=False`` (torch-cam uses
    nearest for 1-D inputs; linear here, as for 2-D and 3-D). A constant channel gives
    a zero mask.
    """
    if len(size) not in resize.LINEAR_MODES:
        raise expected("x", "1, 2 or 3 spatial/time dims for masked-input methods", f"{len(size)}")
    scaled = minmax(acts, 1, 1e-8)
    return resize.linear(scaled[:, None], size)


def ss_cam_scores(view, samples: int = 35, std: float = 2.0, seed=0, generator=None,
                  batch_size=None, progress=False) -> torch.Tensor:
    """``(N, K, C)``: the mean over ``samples`` draws of the score of ``x * (H^k + noise)``.

    ``H^k`` is :func:`torchcam_masks` and the noise ``N(0, std^2)`` is drawn at the
    input's resolution, one field per (draw, sample, channel), in torch-cam's order
    (draw, then sample, then channel), so with the same seed the map is torch-cam's.
    """
    a, scorer = view.acts, view.scorer
    x = scorer.x
    n, c = a.shape[:2]
    size = tuple(x.shape[2:])
    gen = make_generator(seed, generator, x.device)
    pairs = n * c
    rows = torch.arange(n, device=x.device).repeat_interleave(c).repeat(samples)
    chans = torch.arange(c, device=x.device).repeat(n * samples)

    def make(i, j):
        r, ch = rows[i:j], chans[i:j]
        # one field per input, drawn one at a time: the stream does not depend on the chunk size
        noise = torch.cat([_randn((1, 1, *size), gen, x.device) for _ in range(j - i)])
        m = torchcam_masks(a[r, ch], size) + std * noise
        return x[r] * m.to(x.dtype)

    s = scorer.score_masked(samples * pairs, make, rows, batch_size=batch_size, progress=progress,
                           desc="SS-CAM")
    s = s.view(samples, n, c, -1).mean(0)
    return rearrange(s, "n c k -> n k c").to(a.dtype)


def is_cam_scores(view, samples: int = 10, batch_size=None, progress=False) -> torch.Tensor:
    """``(N, K, C)``: the mean over ``i = 1..samples`` of the score of ``x * c_i H^k``.

    ``H^k`` is :func:`torchcam_masks`; ``c_i = sum_{j<=i} j / samples``, torch-cam's
    running sum (1/N, 3/N, 6/N, ..., (N+1)/2). Constant channels (zero masks) share one
    pass of the zero input, as in Score-CAM.
    """
    a, scorer = view.acts, view.scorer
    x = scorer.x
    n, c = a.shape[:2]
    size = tuple(x.shape[2:])
    flat = a.flatten(2)
    constant = flat.amax(-1) == flat.amin(-1)
    rows, chans = (~constant).nonzero().unbind(1)
    p = len(rows)
    coeff = torch.cumsum(torch.arange(1, samples + 1, dtype=torch.float64) / samples, 0).tolist()

    def make(i, j):
        t = torch.arange(i, j, device=x.device)
        step, pair = t // max(p, 1), t % max(p, 1)
        m = torchcam_masks(a[rows[pair], chans[pair]], size)
        scale = torch.tensor(coeff, dtype=m.dtype, device=x.device)[step]
        return x[rows[pair]] * (m * scale.view(-1, *[1] * (m.ndim - 1))).to(x.dtype)

    s = scorer.score_masked(samples * p, make, rows.repeat(samples), batch_size=batch_size,
                           progress=progress, desc="IS-CAM")
    scores = s.new_zeros(n, c, s.shape[1])
    scores[rows, chans] = s.view(samples, p, -1).mean(0)
    if constant.any():
        s0 = scorer.score_inputs(torch.zeros_like(x[:1]), torch.arange(n, device=x.device))
        r0, c0 = constant.nonzero().unbind(1)
        scores[r0, c0] = s0[r0].to(scores.dtype)
    return rearrange(scores, "n c k -> n k c").to(a.dtype)


SAMPLES_SS = Option("samples", 35, "int", "noise draws per channel (torch-cam's ``num_samples``).",
                    positive_int)
STD = Option("std", 2.0, "float", "standard deviation of the noise added to each mask "
             "(torch-cam's default 2).", positive_float)
SAMPLES_IS = Option("samples", 10, "int", "integration steps per channel (torch-cam's "
                    "``num_samples``).", positive_int)

register(Method(
    "ss_cam", "SS-CAM",
    lambda v, samples, std, seed, generator, batch_size, progress: score_cam_weights(
        ss_cam_scores(v, samples, std, seed, generator, batch_size, progress)),
    "activations",
    changes_input=True, family="perturbation CAM", shared=COMMON + TARGET + LAYER + ("eigen_smooth", "relu"), options=(SAMPLES_SS, STD, SEED, GENERATOR, BATCH_SIZE, PROGRESS),
    summary="Smoothed Score-CAM map (Wang, Naidu et al. 2020): Score-CAM with each channel's "
            "score averaged over noisy masks.",
    doc="""``w_k = softmax_k(mean_i f(x * (H^k + d_i)))``, ``d_i ~ N(0, std^2)`` drawn at the
input's resolution, ``H^k`` channel ``k`` min-max scaled on the feature map then upsampled
(``align_corners=False``), as torch-cam's ``SSCAM`` (the same map for the same seed).
``samples x C`` forward passes per sample: ``samples`` times Score-CAM's cost. See
:func:`gradattr.methods.perturbation.ss_cam_scores`.""",
    example=_TOY + """>>> gradattr.ss_cam(net, torch.randn(2, 16), 1, samples=4, seed=0).shape
torch.Size([16])
""",
    use_when="Score-CAM looks noisy: averaging noisy masks sharpens it, at `samples` times "
             "Score-CAM's cost"))

register(Method(
    "is_cam", "IS-CAM",
    lambda v, samples, batch_size, progress: score_cam_weights(
        is_cam_scores(v, samples, batch_size, progress)),
    "activations",
    changes_input=True, family="perturbation CAM", shared=COMMON + TARGET + LAYER + ("eigen_smooth", "relu"), options=(SAMPLES_IS, BATCH_SIZE, PROGRESS),
    summary="Integrated Score-CAM map (Naidu et al. 2020): Score-CAM with each channel's score "
            "integrated over scaled masks.",
    doc="""``w_k = softmax_k(mean_i f(x * c_i H^k))`` with ``c_i = sum_{j=1..i} j / N``
(torch-cam's ``ISCAM``: its docstring writes the sum from ``j = 0`` to ``i - 1``, its code
and this function from 1 to ``i``). ``H^k`` as in :func:`gradattr.ss_cam`. Deterministic;
``samples x C`` forward passes per sample. See
:func:`gradattr.methods.perturbation.is_cam_scores`.""",
    example=_TOY + """>>> gradattr.is_cam(net, torch.randn(2, 16), 1, samples=3).shape
torch.Size([16])
""",
    use_when="a Score-CAM whose weights are integrated over mask strengths (fewer saturation "
             "artefacts), at `samples` times Score-CAM's cost"))


# -- Group-CAM ------------------------------------------------------------------------------
def group_maps(acts: torch.Tensor, grads: torch.Tensor, groups: int, threshold: float) -> torch.Tensor:
    """Group-CAM's group maps ``(N, K, G, *s)``: ``ReLU(sum_{c in g} mean(dS/dA^c) A^c)``, denoised.

    Channels are split into ``G`` consecutive groups (``torch.chunk``: ``ceil(C / G)``
    channels each, fewer groups when ``C < G``); values at or below the ``threshold``-th
    percentile of each group map are set to 0 (the paper's denoising, eq. 5).
    """
    alpha = grads.flatten(3).mean(-1)  # (N, K, C)
    terms = alpha[(...,) + (None,) * (acts.ndim - 2)] * acts[:, None]
    m = torch.stack([t.sum(2) for t in terms.chunk(groups, 2)], 2).relu()
    if threshold > 0:
        flat = m.flatten(3)
        q = torch.quantile(flat.double(), threshold / 100, dim=-1, keepdim=True).to(m.dtype)
        m = torch.where(flat > q, flat, torch.zeros_like(flat)).view_as(m)
    return m


def group_cam_map(view, groups: int = 32, threshold: float = 70.0, softmax: bool = True,
                  batch_size=None, progress=False) -> torch.Tensor:
    """Group-CAM (Zhang, Rao & Yang 2021): ``ReLU(sum_g (f(x_g) - f(x~)) M_g)``, ``(N, K, *s)``.

    ``M_g`` are :func:`group_maps`; ``x~`` is the blurred input (:func:`gaussian_blur`) and
    ``x_g = x * H_g + x~ * (1 - H_g)`` with ``H_g`` the group map upsampled to the input
    (multi-linear, ``align_corners=False``) and min-max scaled. A group map that is
    constant after upsampling is skipped (its weight is 0), as in the authors' code. All
    ``N x K x G`` masked inputs go through one :meth:`~gradattr.scorer.Scorer.score_masked`.
    """
    a, scorer = view.acts, view.scorer
    x = scorer.x
    m = group_maps(a, view.grads, groups, threshold)  # (N, K, G, *s)
    n, k, g = m.shape[:3]
    size = tuple(x.shape[2:])
    if len(size) not in resize.LINEAR_MODES:
        raise expected("x", "1, 2 or 3 spatial/time dims for Group-CAM", f"{len(size)}")
    up = resize.linear(m.flatten(0, 2)[:, None], size)[:, 0]  # (NKG, *S)
    flat = up.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    keep = (hi > lo).nonzero()[:, 0]
    blurred = gaussian_blur(x, 51, 50.0)  # the authors' 51 x 51 kernel, sigma 50
    rows = keep // (k * g)
    cols = (keep // g) % k

    def make(i, j):
        idx, r = keep[i:j], rows[i:j]
        h = ((up[idx].flatten(1) - lo[idx, None]) / (hi - lo)[idx, None]).view(-1, 1, *size)
        return x[r] * h + blurred[r] * (1 - h)

    s = scorer.score_masked(len(keep), make, rows, batch_size=batch_size, progress=progress,
                           desc="Group-CAM", softmax=softmax)
    base = scorer.score_inputs(blurred, torch.arange(n, device=x.device), softmax)  # (N, K)
    w = torch.zeros(n * k * g, dtype=s.dtype, device=s.device)
    w[keep] = s.gather(1, cols[:, None])[:, 0] - base[rows, cols]
    w = w.view(n, k, g)
    return torch.relu(torch.einsum("nkg,nkg...->nk...", w.to(m.dtype), m))


register(Method(
    "group_cam", "Group-CAM", group_cam_map, "activations+gradients",
    changes_input=True, family="perturbation CAM", shared=COMMON + TARGET + LAYER, combine="map",
    options=(Option("groups", 32, "int", "channel groups ``G`` (one masked pass each).", positive_int),
             Option("threshold", 70.0, "float", "percentile below which each group map is zeroed "
                    "(the paper's denoising; 0 turns it off).", _percentile),
             SOFTMAX, BATCH_SIZE, PROGRESS),
    summary="Group-CAM map (Zhang, Rao & Yang 2021): Grad-CAM terms summed in channel groups, "
            "each group weighted by the score of the input kept where the group is active and "
            "blurred elsewhere.",
    doc="""``M_g = ReLU(sum_{c in g} alpha_c A^c)`` (Grad-CAM's ``alpha``), zeroed below its
``threshold``-th percentile; ``w_g = f(x * H_g + blur(x) * (1 - H_g)) - f(blur(x))`` with
``H_g`` the upsampled, min-max scaled ``M_g`` and ``f`` the target's softmax probability;
the map is ``ReLU(sum_g w_g M_g)``. One backward pass and ``G + 1`` forward passes per
target, in one batched stream. The blur is deterministic (Gaussian, kernel 51, sigma 50,
reflected borders), so no seed. See :func:`gradattr.methods.perturbation.group_cam_map`.""",
    example=_TOY + """>>> gradattr.group_cam(net, torch.randn(2, 16), 2, groups=2).shape
torch.Size([16])
""",
    use_when="you want Score-CAM-like, perturbation-checked maps at a fraction of its cost "
             "(G = 32 masked passes instead of one per channel)"))


# -- RISE -----------------------------------------------------------------------------------
def rise_grids(count: int, cells: int, p: float, spatial: tuple[int, ...], gen, device):
    """RISE's random draws: ``count`` binary grids ``(count, *[cells]*d)`` (1 with probability
    ``p``) and the shifts ``(count, d)``, each in ``[0, ceil(L / cells))``."""
    d = len(spatial)
    dev = gen.device if gen is not None else device
    grids = (torch.rand((count,) + (cells,) * d, generator=gen, device=dev) < p).float()
    cell = [-(-s // cells) for s in spatial]
    shifts = torch.stack([torch.randint(0, c, (count,), generator=gen, device=dev) for c in cell], 1)
    return grids.to(device), shifts.to(device)


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Masks ``(B, *S)``: each grid upsampled to ``(cells + 1) * cell`` (multi-linear,
    ``align_corners=False``) and cropped at its shift: the paper's smooth, shifted masks."""
    cells = grids.shape[1]
    cell = [-(-s // cells) for s in spatial]
    up = resize.linear(grids[:, None], tuple((cells + 1) * c for c in cell))[:, 0]
    # crop each mask at its own shift with one gather per axis
    out = up
    for d, length in enumerate(spatial):
        idx = shifts[:, d, None] + torch.arange(length, device=up.device)  # (B, L)
        shape = [idx.shape[0]] + [1] * (out.ndim - 1)
        shape[1 + d] = length
        idx = idx.view(shape).expand(*out.shape[:1 + d], length, *out.shape[2 + d:])
        out = out.gather(1 + d, idx)
    return out


def rise_map(view, masks: int = 4000, cells: int = 7, p: float = 0.5, softmax: bool = True,
             seed=0, generator=None, batch_size=None, progress=False) -> torch.Tensor:
    """RISE (Petsiuk, Das & Saenko, BMVC 2018): ``sum_i f(x * M_i) M_i / (masks * p)``, ``(N, K, *S)``.

    The same ``masks`` random masks (:func:`rise_grids`, :func:`rise_masks`) serve every
    sample; they are drawn once (the small grids) and built chunk by chunk, so the result
    does not depend on ``batch_size``.
    """
    scorer = view.scorer
    x = scorer.x
    n = x.shape[0]
    spatial = tuple(x.shape[2:])
    if len(spatial) not in resize.LINEAR_MODES:
        raise expected("x", "1, 2 or 3 spatial/time dims for RISE", f"{len(spatial)}")
    gen = make_generator(seed, generator, x.device)
    grids, shifts = rise_grids(masks, cells, p, spatial, gen, x.device)
    rows = torch.arange(n, device=x.device).repeat(masks)  # item t: mask t // n, sample t % n

    def make(i, j):
        t = torch.arange(i, j, device=x.device)
        mk = rise_masks(grids[t // n], shifts[t // n], spatial)
        return x[t % n] * mk[:, None].to(x.dtype)

    s = scorer.score_masked(masks * n, make, rows, batch_size=batch_size, progress=progress,
                           desc="RISE", softmax=softmax)
    s = s.view(masks, n, -1)
    out = None
    step = 256
    for i in range(0, masks, step):
        mk = rise_masks(grids[i:i + step], shifts[i:i + step], spatial).to(s.dtype)
        part = torch.einsum("mnk,m...->nk...", s[i:i + step], mk)
        out = part if out is None else out + part
    return cast(torch.Tensor, out) / (masks * p)  # set by the first step


register(Method(
    "rise", "RISE", rise_map, "nothing",
    changes_input=True, family="perturbation", shared=COMMON + TARGET, combine="map",
    options=(Option("masks", 4000, "int", "random masks (the paper uses 4000 to 8000).", positive_int),
             Option("cells", 7, "int", "grid cells per axis of each mask before upsampling.",
                    positive_int),
             Option("p", 0.5, "float", "probability that a cell is kept.", _probability),
             SOFTMAX, SEED, GENERATOR, BATCH_SIZE, PROGRESS),
    summary="RISE saliency (Petsiuk, Das & Saenko, BMVC 2018): the mean of random masks weighted "
            "by the target score of the input they keep; model-agnostic, no feature layer.",
    doc="""``S = sum_i f(x * M_i) M_i / (masks * p)``: ``M_i`` a ``cells^d`` grid of cells kept
with probability ``p``, upsampled multi-linearly to ``(cells + 1)`` cells of
``ceil(L / cells)`` and cropped at a random shift (the paper's smooth masks); ``f`` the
target's softmax probability. The map is at the input's resolution. ``masks`` forward
passes per sample, in chunks. See :func:`gradattr.methods.perturbation.rise_map`.""",
    example=_TOY + """>>> gradattr.rise(net, torch.randn(2, 16), 1, masks=50, seed=0).shape
torch.Size([16])
""",
    use_when="the model is a black box (no usable feature layer or gradients): only forward "
             "passes on randomly masked inputs (thousands of them)"))


# -- random maps ----------------------------------------------------------------------------
def random_map(view, seed=0, generator=None) -> torch.Tensor:
    """Uniform noise in [0, 1) at the input's resolution, ``(N, K, *S)``: the chance level."""
    scorer = view.scorer
    x = scorer.x
    t = scorer.given_target
    if t.kind == "top":
        k = 1
    elif t.kind == "fn":
        k = scorer.scores.shape[1]
    else:
        k = t.classes.shape[-1]
    gen = make_generator(seed, generator, x.device)
    dev = gen.device if gen is not None else x.device
    return torch.rand((x.shape[0], k, *x.shape[2:]), generator=gen, device=dev).to(x.device)


register(Method(
    "random_cam", "random maps", random_map, "nothing",
    family="baseline", shared=COMMON + TARGET, combine="map",
    options=(SEED, GENERATOR),
    summary="Random maps: uniform noise in [0, 1) at the input's resolution, one per target.",
    doc="""The baseline any method must beat on the faithfulness metrics (``compare``'s
``"random"`` is this method). No forward pass unless the target is a ``reduction_fn``
(to count its maps).""",
    example=_TOY + """>>> gradattr.random_cam(net, torch.randn(2, 16), [0, 1], seed=3).shape
torch.Size([2, 16])
""",
    use_when="a chance-level baseline for deletion/insertion scores (what every method must beat)"))
