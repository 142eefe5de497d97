"""Gradient methods: weights or terms from the activations and ``d score / d A``."""
from __future__ import annotations

from typing import cast

import torch
from einops import reduce

from .. import resize
from ..errors import expected
from ..options import COMMON, GENERATOR, LAYER, TARGET, Option, positive_int, seed_option
from ..registry import Method, register
from ..ops import eigen_projection, minmax
from .common import TOY as _TOY, make_generator

#: pytorch-grad-cam's stabilisers, kept so that the maps agree with it.
GRAD_CAM_PP_EPS = 1e-6
XGRAD_CAM_EPS = 1e-7


def grad_cam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``alpha_k``, the spatial mean of ``d score / d A^k``.

    >>> g = torch.tensor([[[[1.0, 1, 1], [-3, -3, -3]]]])
    >>> grad_cam_weights(torch.ones(1, 2, 3), g).tolist()
    [[[1.0, -3.0]]]
    """
    return grads.flatten(3).mean(-1)  # the spatial mean, rank-generic


register(Method(
    "grad_cam", "Grad-CAM", lambda v: grad_cam_weights(v.acts, v.grads), "activations+gradients",
    family="gradient CAM", shared=COMMON + TARGET + LAYER + ("counterfactual", "eigen_smooth", "relu"),
    positional=("reduction_fn", "feature_layer", "reduction_layer", "upsampling", "device"),
    summary="Grad-CAM map of ``net`` for input ``x``, mirroring MATLAB's ``gradCAM``.",
    doc="""The map is ``ReLU(sum_k alpha_k A^k)`` where ``A`` is the feature layer's output and
``alpha_k`` the spatial mean of ``d score / d A^k`` (Selvaraju et al., ICCV 2017). Values
are raw, as in MATLAB; ``normalize=True`` rescales each map to [0, 1]. Class indices are
0-based, unlike MATLAB's 1-based ``classIdx``.""",
    example=""">>> import torch, gradattr
>>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
...                           torch.nn.Linear(4, 3))
>>> m, feat, red = gradattr.grad_cam(net, torch.randn(2, 16), 1, return_layers=True)
>>> m.shape, feat, red
(torch.Size([16]), '1', '4')
""",
    use_when="the default: one forward and a short backward, any differentiable score"))


def grad_cam_plus_plus_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018): ``w_k = sum_ij ReLU(g_ij) a_ij``.

    ``a_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)`` (the paper's eq. 19, its closed
    form for an exponential score, evaluated with the plain gradients
    ``g = d score / d A`` as pytorch-grad-cam does), ``a_ij = 0`` where ``g_ij = 0``. As in
    pytorch-grad-cam, ``1e-6`` is added to the denominator; it is not in the paper but
    it changes the weights of channels whose gradients are of order ``1e-3``, so it is
    kept for agreement.

    >>> a = torch.tensor([[[1.0, 3.0]]]); g = torch.tensor([[[[0.5, 0.0]]]])
    >>> # a = .25 / (2 * .25 + 4 * .125) = .25 at the first position; w = .5 * .25 = .125
    >>> [round(v, 4) for v in grad_cam_plus_plus_weights(a, g).flatten().tolist()]
    [0.125]
    """
    g2 = grads**2
    total = reduce(acts, "n c ... -> n 1 c", "sum")[(...,) + (None,) * (acts.ndim - 2)]
    alpha = torch.where(grads != 0, g2 / (2 * g2 + total * g2 * grads + GRAD_CAM_PP_EPS), 0.0)
    return reduce(torch.relu(grads) * alpha, "n k c ... -> n k c", "sum")


register(Method(
    "grad_cam_plus_plus", "Grad-CAM++", lambda v: grad_cam_plus_plus_weights(v.acts, v.grads),
    "activations+gradients",
    family="gradient CAM", shared=COMMON + TARGET + LAYER + ("counterfactual", "eigen_smooth", "relu"),
    summary="Grad-CAM++ map (Chattopadhay et al., WACV 2018).",
    doc="""``ReLU(sum_k w_k A^k)`` with ``w_k = sum_ij ReLU(g_ij) g_ij^2 / (2 g_ij^2 + sum_ab A_ab
g_ij^3)``, ``g = d score / d A`` (see :func:`gradattr.methods.grad_cam_plus_plus_weights`).""",
    example=_TOY + """>>> gradattr.grad_cam_plus_plus(net, torch.randn(2, 16), [0, 2]).shape
torch.Size([2, 16])
""",
    use_when="several instances of the class in one input: it weights positive gradients per position"))


def xgrad_cam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020, eq. 14): ``w_k = sum_ij (A_ij / sum_ab A_ab) g_ij``.

    The activation-weighted average of the gradient, with pytorch-grad-cam's ``1e-7``
    added to ``sum_ab A_ab``.

    >>> a = torch.tensor([[[1.0, 3.0]]]); g = torch.tensor([[[[2.0, 6.0]]]])
    >>> xgrad_cam_weights(a, g).flatten().tolist()  # (1*2 + 3*6) / 4 = 5
    [5.0]
    """
    total = reduce(acts, "n c ... -> n 1 c", "sum")
    return reduce(grads * acts[:, None], "n k c ... -> n k c", "sum") / (total + XGRAD_CAM_EPS)


register(Method(
    "xgrad_cam", "XGrad-CAM", lambda v: xgrad_cam_weights(v.acts, v.grads), "activations+gradients",
    family="gradient CAM", shared=COMMON + TARGET + LAYER + ("counterfactual", "eigen_smooth", "relu"),
    summary="XGrad-CAM map (Fu et al., BMVC 2020): ``w_k = sum_ij (A_ij / sum_ab A_ab) d score / d A_ij``.",
    example=_TOY + """>>> gradattr.xgrad_cam(net, torch.randn(2, 16), 2, upsampling="none").shape
torch.Size([16])
""",
    use_when="you want Grad-CAM with weights that satisfy its sensitivity/conservation axioms"))


def hires_cam_terms(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin, 2020): terms ``g^k * A^k``, element-wise (no spatial averaging).

    >>> hires_cam_terms(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[[2.0, -1.0]]]])).tolist()
    [[[[2.0, -3.0]]]]
    """
    return grads * acts[:, None]


register(Method(
    "hires_cam", "HiResCAM", lambda v: hires_cam_terms(v.acts, v.grads), "activations+gradients",
    family="gradient CAM", shared=COMMON + TARGET + LAYER + ("counterfactual", "eigen_smooth", "relu"), combine="terms",
    summary="HiResCAM map (Draelos & Carin, 2020): ``ReLU(sum_k (d score / d A^k) * A^k)``, element-wise.",
    example=_TOY + """>>> gradattr.hires_cam(net, torch.randn(16, 2), input_format="TC").shape
torch.Size([16])
""",
    use_when="you need a map that provably reflects the locations the score used (no gradient averaging)"))


def layer_cam_terms(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Layer-CAM (Jiang et al., IEEE TIP 2021, eq. 5): terms ``ReLU(g^k) * A^k``.

    >>> a = torch.tensor([[[1.0, 3.0], [1.0, 1.0]]]); g = torch.tensor([[[[2.0, -1.0], [1.0, 1.0]]]])
    >>> layer_cam_terms(a, g).sum(2).tolist()
    [[[3.0, 1.0]]]
    """
    return torch.relu(grads) * acts[:, None]


register(Method(
    "layer_cam", "Layer-CAM", lambda v: layer_cam_terms(v.acts, v.grads), "activations+gradients",
    family="gradient CAM", shared=COMMON + TARGET + LAYER + ("counterfactual", "eigen_smooth", "relu"), combine="terms",
    summary="Layer-CAM map (Jiang et al., IEEE TIP 2021): ``ReLU(sum_k ReLU(d score / d A^k) * A^k)``.",
    doc="Made for several layers at once: pass a list as ``feature_layer`` and the per-layer maps are fused.",
    example=_TOY + """>>> gradattr.layer_cam(net, torch.randn(2, 16), 0, feature_layer=["0", "1"]).shape
torch.Size([16])
""",
    use_when="finer maps from earlier layers; pass a list of layers to fuse them"))


def eigengrad_cam_map(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """EigenGrad-CAM (pytorch-grad-cam): ReLU of the first principal component of ``g * A``.

    The sign is fixed as in :func:`eigen_projection` (positive correlation with
    ``sum_c g A``, HiResCAM's map).
    """
    return torch.relu(eigen_projection(grads * acts[:, None]))


register(Method(
    "eigengrad_cam", "EigenGrad-CAM", lambda v: eigengrad_cam_map(v.acts, v.grads), "activations+gradients",
    family="gradient CAM", shared=COMMON + TARGET + LAYER + ("counterfactual",),
    combine="map",
    summary="EigenGrad-CAM map: first principal component of ``(d score / d A) * A`` (pytorch-grad-cam's).",
    doc="""The sign is fixed so that the map correlates positively with HiResCAM's
``sum_k (d score / d A^k) * A^k`` (pytorch-grad-cam leaves it to the SVD).""",
    example=_TOY + """>>> gradattr.eigengrad_cam(net, torch.randn(2, 16), 2).shape
torch.Size([16])
""",
    use_when="a class-specific, less noisy Eigen-CAM (principal component of gradient x activation)"))


def grad_cam_elementwise_terms(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Element-wise Grad-CAM (pytorch-grad-cam's ``GradCAMElementWise``): terms ``ReLU(g^k * A^k)``.

    HiResCAM's terms with a ReLU on each before the channel sum, so a channel that
    speaks against the class at a position cannot cancel one that speaks for it.

    >>> grad_cam_elementwise_terms(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[[2.0, -1.0]]]])).tolist()
    [[[[2.0, 0.0]]]]
    """
    return torch.relu(grads * acts[:, None])


register(Method(
    "grad_cam_elementwise", "Grad-CAM element-wise",
    lambda v: grad_cam_elementwise_terms(v.acts, v.grads), "activations+gradients",
    family="gradient CAM", shared=COMMON + TARGET + LAYER + ("counterfactual", "eigen_smooth", "relu"), combine="terms",
    summary="Element-wise Grad-CAM (pytorch-grad-cam's ``GradCAMElementWise``): "
            "``sum_k ReLU((d score / d A^k) * A^k)``.",
    doc="""HiResCAM with the ReLU moved inside the channel sum: only the positive evidence of
each channel at each position is kept. With ``eigen_smooth`` the principal component of
these rectified terms replaces their sum (as pytorch-grad-cam does).""",
    example=_TOY + """>>> gradattr.grad_cam_elementwise(net, torch.randn(2, 16), 2).shape
torch.Size([16])
""",
    use_when="HiResCAM-like maps where negative channel terms should not cancel positive ones"))


# -- Finer-CAM ---------------------------------------------------------------------------
FINER_EPS = 1e-9


def finer_score(y: torch.Tensor, main: torch.Tensor, comparison: torch.Tensor,
                alpha: float) -> torch.Tensor:
    """Finer-CAM's score ``(N, K)``: ``sum_j p_j (y_t - alpha y_j) / (sum_j p_j + 1e-9)``.

    ``main (N, K)`` the target classes ``t``, ``comparison (N, K, J)`` the similar
    classes ``j``, ``p = softmax(y)`` (not detached: the gradient flows through the
    weights too, as in pytorch-grad-cam's ``FinerWeightedTarget``).

    >>> y = torch.tensor([[2.0, 1.0, 0.0]])
    >>> round(float(finer_score(y, torch.tensor([[0]]), torch.tensor([[[1]]]), 1.0)), 6)
    1.0
    """
    p = torch.softmax(y, -1)
    n, k, j = comparison.shape
    yc = y.gather(1, comparison.reshape(n, k * j)).reshape(n, k, j)
    pc = p.gather(1, comparison.reshape(n, k * j)).reshape(n, k, j)
    yt = y.gather(1, main)[..., None]
    return (pc * (yt - alpha * yc)).sum(-1) / (pc.sum(-1) + FINER_EPS)


def similar_classes(y: torch.Tensor, main: torch.Tensor, ranks) -> torch.Tensor:
    """``(N, K, J)``: the classes at ``ranks`` when sorted by ``|y_c - y_t|`` (rank 0: the target itself)."""
    d = (y[:, None, :] - y.gather(1, main)[..., None]).abs()  # (N, K, classes)
    d = d.scatter(2, main[..., None], -1.0)  # the target itself first, even against a tie
    order = d.argsort(dim=-1, stable=True)
    r = [int(i) for i in ranks if int(i) < y.shape[1]]
    return order[..., r]


def finer_cam_weights(view, alpha: float = 1.0, comparison_ranks=(1, 2, 3)) -> torch.Tensor:
    """Finer-CAM (Zhang et al., CVPR 2025): Grad-CAM weights of the score :func:`finer_score`."""
    scorer = view.scorer
    y = scorer.output
    if scorer.given_target.kind == "fn" or not isinstance(y, torch.Tensor) or y.ndim != 2:
        raise expected("target", "class targets on a (N, classes) output for finer_cam (it compares "
                       "the target's logit with those of the most similar classes)",
                       "a reduction function" if scorer.given_target.kind == "fn" else
                       f"output {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    main = scorer.target.classes.to(y.device)
    comparison = similar_classes(y.detach(), main, comparison_ranks)
    if comparison.shape[-1] == 0:
        raise expected("comparison_ranks", "at least one rank below the number of classes",
                       repr(comparison_ranks))
    _, g, _ = view.score_gradients.layer_gradients(score=lambda out: finer_score(out, main, comparison, alpha))
    return grad_cam_weights(view.acts, g)


def _ranks(name, value):
    ok = isinstance(value, (tuple, list)) and value and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        raise expected(name, "a non-empty sequence of ranks >= 1 (1: the most similar class)",
                       repr(value))
    return tuple(value)


def _real(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise expected(name, "a real number", repr(value))
    return float(value)


register(Method(
    "finer_cam", "Finer-CAM", finer_cam_weights, "activations",
    family="gradient CAM", shared=COMMON + TARGET + LAYER + ("eigen_smooth", "relu"),
    options=(Option("alpha", 1.0, "float", "weight of the similar classes' logits in the difference.",
                    _real),
             Option("comparison_ranks", (1, 2, 3), "Sequence[int]",
                    "which classes to compare with, as ranks in the order of ``|y_c - y_t|`` "
                    "(0 is the target itself); ranks past the number of classes are dropped.",
                    _ranks)),
    summary="Finer-CAM (Zhang et al., CVPR 2025): Grad-CAM of the target's logit minus those of "
            "the most similar classes.",
    doc="""The score explained is ``sum_j p_j (y_t - alpha y_j) / (sum_j p_j + 1e-9)`` over the
classes ``j`` whose logits are closest to the target's (``comparison_ranks``), ``p`` the
softmax of the output, and the map is Grad-CAM's on that score (pytorch-grad-cam's
``FinerCAM`` with its default ``GradCAM`` base): what separates the class from its
look-alikes. Needs class targets on an ``(N, classes)`` output. It runs its own backward
pass (the engine captures the activations only).""",
    example=_TOY + """>>> gradattr.finer_cam(net, torch.randn(2, 16), 2, comparison_ranks=(1,)).shape
torch.Size([16])
""",
    use_when="fine-grained classes: what tells the class apart from its most similar classes"))


# -- ShapleyCAM --------------------------------------------------------------------------
def shapley_cam_weights(view) -> torch.Tensor:
    """ShapleyCAM (Cai et al., 2025): ``w_k = mean_ij (g - H A / 2)``, second-order Shapley weights.

    ``g = d score / d A`` and ``H A`` the Hessian-vector product of the score with
    the activations (:meth:`~gradattr.score_gradients.ScoreGradients.layer_gradients`). On a network
    that is piecewise linear after the feature layer (ReLU, max pooling, linear
    head) with the logit as score, ``H = 0`` and this is Grad-CAM.
    """
    a, g, hv = view.score_gradients.layer_gradients(hvp=True)
    return reduce(g - 0.5 * hv, "n k c ... -> n k c", "mean")


register(Method(
    "shapley_cam", "ShapleyCAM", shapley_cam_weights, "activations",
    family="gradient CAM", shared=COMMON + TARGET + LAYER + ("counterfactual", "eigen_smooth", "relu"),
    summary="ShapleyCAM (Cai et al., 2025): Grad-CAM weights corrected by the Hessian-vector "
            "product, ``w_k = mean_ij (g - 1/2 H A)``.",
    doc="""A second-order Taylor estimate of each channel's Shapley value: the weights are the
spatial mean of ``d score / d A - 1/2 (d^2 score / d A^2) A``, as pytorch-grad-cam's
``ShapleyCAM``. The Hessian term vanishes when everything after the feature layer is
piecewise linear in ``A`` and the score is a logit; the paper pairs it with a score that is
not: pytorch-grad-cam's ``ClassifierOutputReST``, the logit plus the log-softmax, is
``reduction_fn=lambda y: 2 * y[:, c] - torch.logsumexp(y, 1)`` here (the parity test uses it). One forward and two backward
passes (the second through the first's graph).""",
    example=_TOY + """>>> gradattr.shapley_cam(net, torch.randn(2, 16), 2).shape
torch.Size([16])
""",
    use_when="Grad-CAM with a second-order correction, for scores that are not linear in the "
             "activations (softmax, log-probabilities)"))


# -- Smooth Grad-CAM++ -------------------------------------------------------------------
SMOOTH_GRAD_CAM_PP_EPS = 1e-8


def smooth_grad_cam_plus_plus_weights(view, num_samples: int = 4, std: float = 0.3, seed=None,
                                      generator=None) -> torch.Tensor:
    """Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with derivatives averaged over noisy inputs.

    For ``m = 1..num_samples`` the input is ``x + N(0, std^2)`` and ``g_m = d score /
    d A`` there; ``D1, D2, D3`` are the means of ``g_m``, ``g_m^2``, ``g_m^3``. With the
    activations ``A`` of the clean input, ``alpha_ij = D2_ij / (2 D2_ij + sum_ab A_ab D3_ij
    + 1e-8)`` and ``w_k = sum_ij alpha_ij ReLU(D1_ij)`` (the paper's eqs. with the
    exponential-score closed forms of Grad-CAM++).
    """
    x, a = view.scorer.x, view.acts
    gen = make_generator(seed, generator, x.device)
    d1 = d2 = d3 = None
    for _ in range(num_samples):
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        _, g, _ = view.score_gradients.layer_gradients(x + std * noise)
        g = g.to(torch.float64) if a.dtype == torch.float64 else g
        d1 = g if d1 is None else d1 + g
        d2 = g**2 if d2 is None else d2 + g**2
        d3 = g**3 if d3 is None else d3 + g**3
    d1, d2, d3 = (cast(torch.Tensor, d1) / num_samples, cast(torch.Tensor, d2) / num_samples,  # set by
                  cast(torch.Tensor, d3) / num_samples)  # the first sample
    total = reduce(a, "n c ... -> n 1 c", "sum")[(...,) + (None,) * (a.ndim - 2)]
    alpha = d2 / (2 * d2 + total * d3 + SMOOTH_GRAD_CAM_PP_EPS)
    return reduce(alpha * torch.relu(d1), "n k c ... -> n k c", "sum")


def _nonneg_real(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise expected(name, "a real number >= 0", repr(value))
    return float(value)


SEED = seed_option(None, "seed of the noise; the same seed gives the same map. ``None``: torch's global "
                          "generator.")


register(Method(
    "smooth_grad_cam_plus_plus", "Smooth Grad-CAM++", smooth_grad_cam_plus_plus_weights, "activations",
    changes_input=True, family="gradient CAM", shared=COMMON + TARGET + LAYER + ("counterfactual", "eigen_smooth", "relu"),
    options=(Option("num_samples", 4, "int", "noisy copies of the input.", positive_int),
             Option("std", 0.3, "float", "standard deviation of the Gaussian noise added to the "
                    "input (in the input's units, as torch-cam).", _nonneg_real),
             SEED, GENERATOR),
    summary="Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ on gradients averaged over noisy "
            "copies of the input.",
    doc="""``ReLU(sum_k w_k A^k)`` with Grad-CAM++'s weights computed from the mean first, second
and third powers of the gradients of ``num_samples`` noisy inputs ``x + N(0, std^2)`` (see
:func:`gradattr.methods.gradient.smooth_grad_cam_plus_plus_weights`); ``A`` is the clean
input's. torch-cam's ``SmoothGradCAMpp`` (0.5) departs from the paper three times, and this
follows the paper: it combines the channels of the *last noisy* input's activations instead
of the clean input's, multiplies ``alpha`` by the ReLU of the last noisy gradient instead of
the mean one, and sums ``A_ab D3_ab`` over positions instead of ``sum_ab A_ab`` times
``D3_ij``. Without noise and where the gradient is constant over positions (the layer
before global average pooling) the two agree exactly (tested).""",
    example=_TOY + """>>> gradattr.smooth_grad_cam_plus_plus(net, torch.randn(2, 16), 2, seed=0).shape
torch.Size([16])
""",
    use_when="Grad-CAM++ with less gradient noise; several instances of the class"))


# -- FullGrad ----------------------------------------------------------------------------
#: pytorch-grad-cam's ``scale_cam_image`` stabiliser, kept so the maps agree with it.
FULL_GRAD_EPS = 1e-7


def channel_scaled(t: torch.Tensor) -> torch.Tensor:
    """``|t|`` min-max scaled per map over its positions: ``(v - min) / (max(v - min) + 1e-7)``."""
    return minmax(t.abs(), 3, FULL_GRAD_EPS)


def full_grad_map(view) -> torch.Tensor:
    """FullGrad (Srinivas & Fleuret, NeurIPS 2019, eq. 6): ``psi(|x g_x|) + sum_l sum_c psi(|b_c g_lc|)``.

    ``g_x = d score / d x`` per input channel, ``b`` each bias layer's bias and ``g_l``
    the gradient of the score with respect to that layer's output
    (:meth:`~gradattr.score_gradients.ScoreGradients.bias_gradients`); ``psi`` min-max scales one channel's
    map (pytorch-grad-cam's ``scale_cam_image``, with its ``1e-7``) and upsamples it to
    the input with (multi-)linear interpolation (``align_corners=False``, OpenCV's
    ``INTER_LINEAR``). The channel sum is taken before the upsampling, which is linear.
    Returns ``(N, K, *S)``.
    """
    x = view.scorer.x
    gx, layers = view.score_gradients.bias_gradients()
    size = tuple(x.shape[2:])
    total = channel_scaled(gx * x[:, None]).sum(2)
    for b, g in layers:
        t = channel_scaled(b.to(g.dtype)[(slice(None),) + (None,) * (g.ndim - 3)] * g).sum(2)
        if tuple(t.shape[2:]) != size:
            n, k = t.shape[:2]
            t = resize.linear(t.flatten(0, 1)[:, None], size)[:, 0].unflatten(0, (n, k))
        total = total + t
    return total


register(Method(
    "full_grad", "FullGrad", full_grad_map, "nothing",
    changes_input=True, family="gradient CAM", shared=COMMON + TARGET + ("counterfactual",), combine="map",
    summary="FullGrad (Srinivas & Fleuret, NeurIPS 2019): input-gradient x input plus the "
            "bias-gradients of every convolution and batch norm.",
    doc="""``psi(|x d score / d x|)`` summed over input channels plus, for every convolution and
batch norm with a bias (a batch norm's effective bias ``beta - mu gamma / sqrt(var + eps)``)
and every channel ``c`` of its output ``z``, ``psi(|b_c d score / d z_c|)``; ``psi`` min-max
scales a map and upsamples it (multi-)linearly to the input (see
:func:`gradattr.methods.gradient.full_grad_map`). No feature layer: the map is at the
input's resolution. As pytorch-grad-cam's ``FullGrad`` and the paper's eq. 6, each channel
is scaled on its own (the authors' code scales each layer's channels together).""",
    example=_TOY + """>>> gradattr.full_grad(net, torch.randn(2, 2, 16), 1).shape
torch.Size([2, 16])
""",
    use_when="input-resolution detail from a complete gradient decomposition, no layer to choose "
             "(only weakly class-discriminative)"))
