"""Input-level attributions: one signed value per element of the input, or of a layer's output.

Saliency, input x gradient, integrated gradients and SmoothGrad/VarGrad (captum's
``Saliency``, ``InputXGradient``, ``IntegratedGradients``, ``NoiseTunnel``; with
``feature_layer``, ``LayerIntegratedGradients``-style). They have no feature map
to combine: each returns ``(N, K, *element)`` where an element is one entry of the
explained input ``(C, *S)`` (or of the layer's output). Every gradient comes from
one primitive, the score gradients'
:meth:`~gradattr.score_gradients.ScoreGradients.point_gradients` (through :meth:`_Space.grads`): a
batch of points (the input, interpolated or noisy copies of it, or replacements of the
layer's output) and ``d score_k / d point`` for all ``K`` targets from one forward pass.
"""
from __future__ import annotations

from typing import cast

import numpy as np
import torch

from ..errors import expected
from ..options import COMMON, TARGET, Option, flag, optional_positive_int, positive_int, seed_option
from ..registry import Method, register
from ..budget import chunk_size
from .baseline import baseline_like, named_baseline_option
from .common import TOY as _TOY, make_generator
from .quadrature import QUADRATURES, quadrature


class _Space:
    """Where attributions live: the explained input, or the output of one layer (``layer``).

    ``origin`` is the point of the call's own input there ``(N, *element)``. A point
    ``p (B, *element)`` with ``rows (B,)`` (whose sample each row is) is scored with the
    classes fixed on the unperturbed input; at a layer, the network runs on the rows'
    own inputs and the layer's output is replaced by ``p``. Scores come from the view's
    scorer (:meth:`~gradattr.scorer.Scorer.score_points`), gradients from its ScoreGradients
    (:meth:`~gradattr.score_gradients.ScoreGradients.point_gradients`).
    """

    def __init__(self, view, feature_layer=None, fix: bool = True):
        self.scorer, self.score_gradients = view.scorer, view.score_gradients
        self.layer = None
        if isinstance(feature_layer, (list, tuple)):
            raise expected("feature_layer", "one layer (a name or a module) or None (the input)",
                           f"{len(feature_layer)} layers")
        if feature_layer is not None:
            from ..layers import resolve_layer

            module, name = cast(tuple[torch.nn.Module, str],  # not None: feature_layer is not None
                                resolve_layer(self.scorer.net, feature_layer, "feature_layer"))
            self.layer = (name, module)
        # Points other than the input itself explain the classes fixed on the input (one more
        # forward pass for a top-class target); at the input itself the target is as given.
        given = self.scorer.given_target
        self.target = self.scorer.target if fix and given.kind == "top" else given
        if self.layer is None:
            x = self.scorer.x
            if not x.is_floating_point():
                raise expected(self.scorer.input_name, "a floating-point input to attribute; for "
                               "token ids use integrated_gradients or smooth_grad with feature_layer= "
                               "(e.g. the embedding) to attribute its output", f"dtype {x.dtype}")
            self.origin = x
        else:
            self.origin = self.layer_output(self.scorer.x)
        self.name = "the input" if self.layer is None else f"feature layer {self.layer[0]!r}"

    def layer_output(self, x, rows=None) -> torch.Tensor:
        """The layer's output ``(B, *element)`` for the inputs ``x`` (``rows``)."""
        o = self.scorer.layer_output(self.layer, x, rows)
        if not isinstance(o, torch.Tensor) or not o.is_floating_point() or o.ndim < 1 \
                or o.shape[0] != x.shape[0]:
            got = f"shape {tuple(o.shape)}, dtype {o.dtype}" if isinstance(o, torch.Tensor) else type(o).__name__
            raise expected("feature_layer", f"a layer whose output is one floating-point tensor with "
                           f"the batch ({x.shape[0]}) first", got)
        return o

    def scores(self, p: torch.Tensor, rows=None) -> torch.Tensor:
        """Target scores ``(B, K)`` of the points ``p`` (no gradients; counterfactual: negated)."""
        s = self.scorer.score_points(p, rows, self.layer, self.target)
        return -s if self.score_gradients.counterfactual else s

    def grads(self, p: torch.Tensor, rows=None) -> torch.Tensor:
        """``d score_k / d p`` for every target: ``(B, K, *element)``, one forward pass."""
        return self.score_gradients.point_gradients(p, rows, self.layer, self.target, self.name)

    def chunk(self, batch_size) -> int:
        """Points per forward + backward pass: ``batch_size``, or what fits the memory budget
        (:meth:`~gradattr.budget.Budget.point_bytes` of one point)."""
        return chunk_size(batch_size, lambda: self.scorer.budget.point_bytes(self.origin[0]), self.origin.device)

    # -- baselines ------------------------------------------------------------------------
    def baseline(self, value) -> torch.Tensor:
        """The baseline point ``(N, *element)``: of the input, or the layer's output at it."""
        x = self.scorer.x
        b = baseline_like(value, x, named=True)
        return b if self.layer is None else self.layer_output(b)


def _integrate(space: _Space, origin, base, rows0, steps, rule, batch_size) -> torch.Tensor:
    """``(origin - base) * sum_j w_j grad(base + a_j (origin - base))``: ``(B0, K, *element)``.

    The ``steps x B0`` points run in chunks (steps outermost, as captum orders them);
    each chunk is one forward pass and one (vectorised) backward for all targets.
    """
    alphas, weights = quadrature(rule, steps)
    b0 = origin.shape[0]
    diff = origin - base
    a_t = torch.tensor(alphas, dtype=torch.float64)
    w_t = torch.tensor(weights, dtype=torch.float64)
    total = None
    step = space.chunk(batch_size)
    count = steps * b0
    for start in range(0, count, step):
        idx = torch.arange(start, min(count, start + step))
        st, r = idx // b0, idx % b0
        shape = (-1,) + (1,) * (origin.ndim - 1)
        p = base[r] + a_t[st].to(origin.dtype).view(shape).to(origin.device) * diff[r]
        g = space.grads(p, rows0[r].to(origin.device))
        g = g * w_t[st].to(g.dtype).view((-1, 1) + (1,) * (g.ndim - 2)).to(g.device)
        if total is None:
            total = g.new_zeros((b0,) + tuple(g.shape[1:]))
        total.index_add_(0, r.to(g.device), g)
    total = cast(torch.Tensor, total)  # set by the first chunk
    return total * diff[:, None].to(total.dtype)


# -- the methods --------------------------------------------------------------------------
def saliency_map(view, abs: bool = True) -> torch.Tensor:  # noqa: A002 (captum's name)
    """Saliency (Simonyan et al., 2014): ``|d score / d x|`` (``abs=False``: signed)."""
    space = _Space(view, fix=False)
    g = space.grads(space.origin)
    return g.abs() if abs else g


def input_x_gradient_map(view) -> torch.Tensor:
    """Input x gradient (Shrikumar et al., 2016): ``x * d score / d x`` per element."""
    space = _Space(view, fix=False)
    return space.origin[:, None] * space.grads(space.origin)


def _check_steps(steps: int, rule: str) -> None:
    if rule != "gausslegendre" and steps < 2:
        raise expected("steps", f"an int >= 2 for quadrature={rule!r} (a Riemann sum needs two points)",
                       repr(steps))


def integrated_gradients_map(view, baseline=0, steps: int = 50, quadrature: str = "gausslegendre",
                             return_delta: bool = False, batch_size=None, feature_layer=None):
    """Integrated gradients (Sundararajan et al., ICML 2017), eq. 3 by a quadrature rule.

    ``IG_i = (x_i - b_i) int_0^1 d score(b + a (x - b)) / d x_i da``. With
    ``return_delta``, also the completeness gap ``score(x) - score(b) - sum_i IG_i``
    ``(N, K)`` (captum's convergence delta has the opposite sign).
    """
    _check_steps(steps, quadrature)
    space = _Space(view, feature_layer)
    origin = space.origin
    base = space.baseline(baseline)
    rows0 = torch.arange(origin.shape[0])
    attr = _integrate(space, origin, base, rows0, steps, quadrature, batch_size)
    if not return_delta:
        return attr
    both = torch.cat([origin, base])
    s = space.scores(both, torch.cat([rows0, rows0]).to(origin.device))
    n = origin.shape[0]
    delta = s[:n] - s[n:] - attr.flatten(2).sum(-1).to(s.dtype)
    return attr, delta


BASES = ("saliency", "input_x_gradient", "integrated_gradients")


def smooth_grad_map(view, base: str = "saliency", samples: int = 50, noise: float = 0.15,
                    var: bool = False, seed=None, batch_size=None, feature_layer=None):
    """SmoothGrad (Smilkov et al., 2017) / VarGrad (Adebayo et al., 2018) over ``base``.

    ``samples`` noisy copies ``x + sigma z``, ``z ~ N(0, 1)`` drawn one sample at a time
    with the shape of the whole batch ``(N, *element)`` (from ``torch.Generator``
    seeded with ``seed``, on the input's device), ``sigma = noise (max - min)`` of each
    sample; the mean of ``base``'s attributions (VarGrad: their variance,
    ``E[a^2] - E[a]^2``). At a layer the noise is added to the layer's output.
    """
    if base not in BASES:
        raise expected("base", "one of " + ", ".join(map(repr, BASES)), repr(base))
    space = _Space(view, feature_layer)
    origin = space.origin
    n = origin.shape[0]
    flat = origin.flatten(1)
    sigma = (noise * (flat.amax(1) - flat.amin(1))).view((-1,) + (1,) * (origin.ndim - 1))
    gen = make_generator(seed, None, origin.device)
    draws = [torch.randn(origin.shape, generator=gen, device=origin.device, dtype=origin.dtype)
             for _ in range(samples)]
    rows_n = torch.arange(n)
    b = space.baseline(0) if base == "integrated_gradients" else None
    per = max(1, space.chunk(batch_size) // n)  # noisy copies of the whole batch per forward pass
    total = total_sq = None
    for start in range(0, samples, per):
        z = torch.cat(draws[start:start + per])  # (c N, *element), sample-major
        c = z.shape[0] // n
        rows = rows_n.repeat(c).to(origin.device)
        p = origin[rows] + sigma[rows] * z
        if base == "integrated_gradients":
            a = _integrate(space, p, cast(torch.Tensor, b)[rows], rows, 50, "gausslegendre", batch_size)
        else:
            g = space.grads(p, rows)
            a = g.abs() if base == "saliency" else p[:, None] * g
        a = a.unflatten(0, (c, n))
        s1, s2 = a.sum(0), (a * a).sum(0)
        total = s1 if total is None else total + s1
        total_sq = s2 if total_sq is None else total_sq + s2
    mean = cast(torch.Tensor, total) / samples  # both set by the first chunk
    return cast(torch.Tensor, total_sq) / samples - mean * mean if var else mean


# -- validators and registration ----------------------------------------------------------
def _real_nonneg(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or not np.isfinite(value):
        raise expected(name, "a finite real number >= 0", repr(value))
    return float(value)


def _one_of(choices):
    def check(name, value):
        if value not in choices:
            raise expected(name, "one of " + ", ".join(map(repr, choices)), repr(value))
        return value
    return check


def _layer(name, value):
    if isinstance(value, (list, tuple)):
        raise expected(name, "one layer (a name or a module) or None (the input)", f"{len(value)} layers")
    return value


BATCH = Option("batch_size", None, "int | None",
               "points (interpolation steps, noisy copies) per forward pass; ``None`` sizes the "
               "chunks from a 512 MB budget.", optional_positive_int)
LAYER = Option("feature_layer", None, "str | nn.Module | None",
               "``None``: attribute the explained input; a layer (name or module): attribute each "
               "element of that layer's output, ``(N, K, *layer output)`` (captum's "
               "``LayerIntegratedGradients``; for a text model, the embedding: per token and "
               "dimension). The layer must run once per forward pass.", _layer)

register(Method(
    "saliency", "Saliency", saliency_map, "input_gradients", family="input attribution",
    shared=COMMON + TARGET + ("counterfactual",), combine="map", returns="pixels",
    options=(Option("abs", True, "bool", "the absolute value of the gradient (``False``: signed).", flag),),
    summary="Saliency (Simonyan, Vedaldi & Zisserman, ICLR-W 2014): the score's gradient with respect "
            "to the input (captum ``Saliency``).",
    doc="""``|d score / d x|`` per input element, one backward for all targets; ``abs=False`` keeps
the sign. No feature layer and no upsampling: the attribution has the explained input's
shape ``(C, *S)`` per sample and target.""",
    example=_TOY + """>>> gradattr.saliency(net, torch.randn(2, 2, 16), [0, 2]).shape
torch.Size([2, 2, 2, 16])
""",
    use_when="the cheapest input-level view (one backward); noisy; see smooth_grad"))

register(Method(
    "input_x_gradient", "Input x gradient", input_x_gradient_map, "input_gradients", family="input attribution",
    shared=COMMON + TARGET + ("counterfactual",), combine="map",
    returns="pixels",
    summary="Input x gradient (Shrikumar et al., 2016): the input times the score's gradient "
            "(captum ``InputXGradient``).",
    doc="""``x * d score / d x`` per input element, signed: a first-order estimate of each
element's contribution relative to a zero input (exact for a linear model without bias).""",
    example=_TOY + """>>> gradattr.input_x_gradient(net, torch.randn(2, 16), 1).shape
torch.Size([2, 16])
""",
    use_when="signed first-order contributions at the cost of saliency"))

register(Method(
    "integrated_gradients", "Integrated gradients", integrated_gradients_map, "input_gradients", family="input attribution",
    shared=COMMON + TARGET + ("counterfactual",), combine="map",
    returns="pixels",
    options=(Option("baseline", 0, "float | torch.Tensor | np.ndarray | str",
                    "the reference input: a number, a tensor (or array) broadcastable to ``x`` "
                    "(``(N, C, *S)``), ``\"blur\"`` (each channel blurred: an 11-tap Gaussian, "
                    "sigma 5, along every dim longer than 5) or ``\"mean\"`` (each sample's "
                    "channel means). For integer inputs (token ids) an id.", named_baseline_option),
             Option("steps", 50, "int", "integration points (captum's ``n_steps``).", positive_int),
             Option("quadrature", "gausslegendre", "str",
                    "the rule: ``\"gausslegendre\"``, ``\"riemann_trapezoid\"``, ``\"riemann_left\"``, "
                    "``\"riemann_right\"`` or ``\"riemann_middle\"`` (captum's ``method``, which "
                    "is the name of ``attribute``'s method argument here).", _one_of(QUADRATURES)),
             Option("return_delta", False, "bool",
                    "also return the completeness gap ``score(x) - score(baseline) - sum(attr)`` "
                    "per sample and target (captum's convergence delta with the opposite sign).",
                    flag, result_type="tuple[{map}, {map}]"),
             BATCH, LAYER),
    summary="Integrated gradients (Sundararajan, Taly & Yan, ICML 2017): gradients integrated "
            "along the straight path from a baseline (captum ``IntegratedGradients``).",
    doc="""``(x - b) * int_0^1 d score(b + a (x - b)) / d x da``, the integral by ``quadrature``
with ``steps`` points (captum's points and weights). The ``steps x N`` points run in chunks
of ``batch_size``; each chunk is one forward pass and one vectorised backward for all K
targets, so K targets cost little more than one. The attributions sum to
``score(x) - score(b)`` up to the quadrature error (``return_delta``). With
``feature_layer`` the path runs between the layer's outputs at the baseline and at
``x`` (captum's ``LayerIntegratedGradients``); with several inputs the baseline
replaces the explained one only.""",
    example=_TOY + """>>> attr, gap = gradattr.integrated_gradients(net, torch.randn(2, 16), 1, return_delta=True)
>>> attr.shape, bool(abs(gap) < 1e-3)
(torch.Size([2, 16]), True)
""",
    use_when="input-level attributions that add up to the score (completeness); models where "
             "CAMs cannot localise (transformers, recurrent nets); per token at an embedding"))

register(Method(
    "smooth_grad", "SmoothGrad / VarGrad", smooth_grad_map, "input_gradients", family="input attribution",
    shared=COMMON + TARGET + ("counterfactual",), combine="map", returns="pixels",
    options=(Option("base", "saliency", "str",
                     "the attribution averaged: ``\"saliency\"``, ``\"input_x_gradient\"`` or "
                     "``\"integrated_gradients\"`` (50 Gauss-Legendre steps from 0), each with "
                     "its defaults.", _one_of(BASES)),
             Option("samples", 50, "int", "noisy copies (captum's ``nt_samples``).", positive_int),
             Option("noise", 0.15, "float",
                    "the noise's standard deviation as a fraction of each sample's range "
                    "``max - min`` (Smilkov et al.'s noise level); 0 gives ``base`` exactly.",
                    _real_nonneg),
             Option("var", False, "bool", "VarGrad: the variance over the copies instead of the mean.", flag),
             seed_option(None, "seed of the noise (a ``torch.Generator`` on the input's device); the "
                               "same seed gives the same result. ``None``: torch's global generator."),
             BATCH, LAYER),
    summary="SmoothGrad (Smilkov et al., 2017) and VarGrad: an input-level attribution averaged "
            "over noisy copies of the input (captum ``NoiseTunnel``).",
    doc="""The mean (``var=True``: the variance) of ``base``'s attributions of ``samples`` copies
``x + N(0, sigma^2)``, ``sigma = noise * (max(x) - min(x))`` per sample. The copies run in
chunks of ``batch_size``, all targets from the same passes. With ``feature_layer`` the
noise is added to that layer's output (token ids cannot be noised) and the attribution is
per element of it.""",
    example=_TOY + """>>> gradattr.smooth_grad(net, torch.randn(2, 16), 1, samples=8, seed=0).shape
torch.Size([2, 16])
""",
    use_when="saliency or integrated gradients with less gradient noise; sharper input-level maps"))
