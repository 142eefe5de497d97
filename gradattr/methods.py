"""The CAM family: the maths of each method and its registry entry, side by side.

Each method is a small pure function over what the engine captured for one
feature layer, followed by its :func:`~gradattr.registry.register` call. The
functions return one of three things, and the entry's ``combine`` says which:

* channel **weights** ``(N, K, C)``: the engine forms ``ReLU(sum_c w A^c)``;
* channel **terms** ``(N, K, C, *s)``: the engine forms ``ReLU(sum_c T)``;
* **maps** ``(N, K, *s)`` as they are.

With ``eigen_smooth=True`` the channel sum becomes the projection on the first
principal component of the channel terms (:func:`eigen_projection`). The ReLU
is Grad-CAM's and MATLAB's and what pytorch-grad-cam applies to every method
before scaling, so every method's raw map is non-negative.

Shapes: ``acts (N, C, *s)``, ``grads (N, K, C, *s)``, weights ``(N, K, C)``,
maps ``(N, K, *s)``, for any number of spatial/time dims ``s``. A method that
perturbs (Score-CAM, Ablation-CAM) gets a :class:`~gradattr.probe.Probe`
(``view.probe``) that scores masked inputs or modified activations.

Adding a method: a pure function here, a ``register(Method(...))`` entry under
it, and a naive reference in ``tests/references.py`` (the registry-driven tests
refuse a method without one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from .errors import GradattrError, expected
from .guided import GuidedRectifiers
from .registry import Method, Option, flag, optional_positive_int, register
from .targets import Target

#: pytorch-grad-cam's stabilisers, kept so that the maps agree with it.
GRAD_CAM_PP_EPS = 1e-6
XGRAD_CAM_EPS = 1e-7

_TOY = """>>> import torch, gradattr
>>> _ = torch.manual_seed(0)
>>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
...                           torch.nn.Linear(4, 3))
"""

#: Options of the methods that run chunks of perturbed copies.
BATCH_SIZE = Option("batch_size", None, "int | None",
                    "perturbed copies per forward pass; ``None`` sizes chunks from a 512 MB budget.",
                    optional_positive_int)
PROGRESS = Option("progress", False, "bool", "show a progress bar (tqdm).", flag)


# -- principal components ----------------------------------------------------------------
def eigen_projection(terms: torch.Tensor) -> torch.Tensor:
    """Projection of ``terms (N, K, C, *s)`` on their first principal component -> ``(N, K, *s)``.

    For each ``(n, k)`` the ``C`` channels are the variables and the ``P``
    positions the observations: ``M`` is ``P x C``, centred per channel, and the
    map is ``M_c v1`` with ``v1`` the first right singular vector (Eigen-CAM,
    Muhammad & Yeasin, IJCNN 2020, eq. 5; the centring is pytorch-grad-cam's).

    An SVD fixes ``v1`` only up to its sign, and pytorch-grad-cam keeps whatever
    sign LAPACK returns, so its map can come out inverted (then mostly zero after
    the ReLU). Here the sign is chosen so that the map correlates positively with
    the plain channel sum ``sum_c T`` (the activations for Eigen-CAM, the
    un-smoothed CAM for ``eigen_smooth``): ``cov(M_c v1, M_c 1) = lambda_1 sum(v1)``,
    so this is ``sum_c v1[c] >= 0``. NaNs count as 0, as in pytorch-grad-cam.

    >>> t = torch.tensor([[[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]]])  # one rank-1 pair of channels
    >>> eigen_projection(t).squeeze().tolist()  # centred sum along v1 = (1, 2)/sqrt(5)
    [-2.2360680103302, 0.0, 2.2360680103302]
    """
    n, k, c, *s = terms.shape
    m = rearrange(torch.nan_to_num(terms.detach()).double(), "n k c ... -> (n k) (...) c")
    m = m - m.mean(1, keepdim=True)
    p = m.shape[1]
    # The first singular pair from the eigen-decomposition of the smaller Gram matrix: the
    # same projection as an SVD of the P x C matrix (a test checks it against numpy's svd),
    # several times faster when P and C differ a lot (7 x 7 = 49 positions, 2048 channels).
    if c <= p:
        _, vecs = torch.linalg.eigh(m.transpose(1, 2) @ m)  # (B, C, C), ascending eigenvalues
        v = vecs[..., -1]  # (B, C)
        proj = torch.einsum("bpc,bc->bp", m, v)
        v_sum = v.sum(-1)
    else:
        vals, vecs = torch.linalg.eigh(m @ m.transpose(1, 2))  # (B, P, P)
        u = vecs[..., -1]  # (B, P): M v1 = sigma_1 u1
        proj = u * vals[..., -1:].clamp(min=0).sqrt()
        v_sum = torch.einsum("bpc,bp->b", m, u)  # sum(v1) up to the positive factor sigma_1
    proj = torch.where(v_sum[:, None] < 0, -proj, proj)
    return proj.reshape(n, k, *s).to(terms.dtype)



# -- gradient methods ---------------------------------------------------------------------
def grad_cam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``alpha_k``, the spatial mean of ``d score / d A^k``.

    >>> g = torch.tensor([[[[1.0, 1, 1], [-3, -3, -3]]]])
    >>> grad_cam_weights(torch.ones(1, 2, 3), g).tolist()
    [[[1.0, -3.0]]]
    """
    return reduce(grads, "n k c ... -> n k c", "mean")


register(Method(
    "grad_cam", "Grad-CAM", lambda v: grad_cam_weights(v.acts, v.grads), "gradient",
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
    "gradient",
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
    "xgrad_cam", "XGrad-CAM", lambda v: xgrad_cam_weights(v.acts, v.grads), "gradient",
    summary="XGrad-CAM map (Fu et al., BMVC 2020): ``w_k = sum_ij (A_ij / sum_ab A_ab) d score / d A_ij``.",
    example=_TOY + """>>> gradattr.xgrad_cam(net, torch.randn(2, 16), 1, upsampling="none").shape
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
    "hires_cam", "HiResCAM", lambda v: hires_cam_terms(v.acts, v.grads), "gradient", combine="terms",
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
    "layer_cam", "Layer-CAM", lambda v: layer_cam_terms(v.acts, v.grads), "gradient", combine="terms",
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
    "eigengrad_cam", "EigenGrad-CAM", lambda v: eigengrad_cam_map(v.acts, v.grads), "gradient",
    combine="map",
    summary="EigenGrad-CAM map: first principal component of ``(d score / d A) * A`` (pytorch-grad-cam's).",
    doc="""The sign is fixed so that the map correlates positively with HiResCAM's
``sum_k (d score / d A^k) * A^k`` (pytorch-grad-cam leaves it to the SVD).""",
    example=_TOY + """>>> gradattr.eigengrad_cam(net, torch.randn(2, 16), 2).shape
torch.Size([16])
""",
    use_when="a class-specific, less noisy Eigen-CAM (principal component of gradient x activation)"))


# -- activation methods -------------------------------------------------------------------
def eigen_cam_map(acts: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): ``ReLU(A_c v1)``, one map ``(N, 1, *s)``.

    No gradients and no target: the first principal component of the activations
    (see :func:`eigen_projection` for the centring and the sign).

    >>> a = torch.tensor([[[0.0, 1.0, 4.0], [0.0, 2.0, 8.0]]])
    >>> [round(v, 4) for v in eigen_cam_map(a).flatten().tolist()]  # (35 / 3) / sqrt(5) where they peak
    [0.0, 0.0, 5.2175]
    """
    return torch.relu(eigen_projection(acts[:, None]))


register(Method(
    "eigen_cam", "Eigen-CAM", lambda v: eigen_cam_map(v.acts), "activation", combine="map",
    needs_target=False, stop_early=True,
    summary="Eigen-CAM map (Muhammad & Yeasin, IJCNN 2020): the activations' first principal component.",
    doc="""``ReLU(A_c v1)``: the centred activations projected on their first right singular
vector. No target and no gradients: one map per sample, class agnostic, and the forward
pass stops at the feature layer. The SVD's sign is fixed so the map correlates positively
with the activations' channel sum (pytorch-grad-cam keeps LAPACK's arbitrary sign, which
sometimes gives the inverted map); see :func:`gradattr.methods.eigen_projection`.""",
    example=_TOY + """>>> gradattr.eigen_cam(net, torch.randn(3, 2, 16), upsampling="none").shape
torch.Size([3, 16])
""",
    use_when="no target or no gradient available (detectors, embeddings): first principal component "
             "of the activations"))


def _target_weights(target: Target, y: torch.Tensor, n: int) -> torch.Tensor:
    """``d score_k / d y`` ``(N, K, classes)`` for an output ``y (N, classes)``: one-hot rows for classes."""
    leaf = y.detach().requires_grad_(True)
    with torch.enable_grad():
        s = target.scores(leaf, n)
        if not s.requires_grad:
            raise GradattrError("reduction_fn: expected a score computed from the network output, "
                                "but it does not depend on it")
        rows = [torch.autograd.grad(s[:, k].sum(), leaf, retain_graph=True, allow_unused=True)[0]
                for k in range(s.shape[1])]
    return torch.stack([torch.zeros_like(leaf) if r is None else r for r in rows], 1)


def find_cam_head(net: nn.Module, acts: torch.Tensor, output) -> tuple[str, nn.Linear]:
    """The final ``nn.Linear`` that maps the global average pool of ``acts`` to ``output``.

    Found by value, not by position: the candidate linear layers take ``C`` inputs,
    and the one whose ``W mean(A) + b`` reproduces the scored output is the head.
    """
    n, c, *s = acts.shape
    pooled = reduce(acts.detach(), "n c ... -> n c", "mean")
    linears = [(nm, m) for nm, m in net.named_modules() if isinstance(m, nn.Linear)]
    candidates = [(nm, m) for nm, m in linears if m.in_features == c]
    if isinstance(output, torch.Tensor) and output.ndim == 2:
        for nm, m in reversed(candidates):
            y = F.linear(pooled.to(m.weight.dtype), m.weight, m.bias)
            scale = float(output.detach().abs().max().clamp(min=1))
            if y.shape == output.shape and torch.allclose(y, output.detach(), rtol=1e-4,
                                                          atol=1e-4 * scale):
                return nm, m
    what = (f"no nn.Linear with in_features={c}" if not candidates else
            f"nn.Linear {', '.join(repr(nm) for nm, _ in candidates)} with in_features={c}, but the "
            "output is none of them applied to the global average pool of the feature layer")
    got = f"output {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
    raise GradattrError(
        f"net: CAM expected a network whose scored output is nn.Linear(global average pool of the "
        f"feature layer, {c} channels) (Zhou et al.'s GAP + linear head); found {what}; got {got}. "
        "Pass the feature layer that the head pools, or use grad_cam, which equals CAM up to a "
        "constant factor on such networks and works on any network")


_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def score_masks(acts: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Channel maps ``acts (B, *s)`` upsampled to ``size`` and min-max scaled to [0, 1].

    Multi-linear upsampling with ``align_corners=True``, as pytorch-grad-cam.

    A map that is constant after upsampling carries no location and becomes 0
    everywhere (what pytorch-grad-cam's ``/(max - min + 1e-8)`` gives).
    """
    if len(size) not in _LINEAR_MODES:
        raise expected("x", "1, 2 or 3 spatial/time dims for Score-CAM's masks", f"{len(size)}")
    up = F.interpolate(acts[:, None], size=size, mode=_LINEAR_MODES[len(size)], align_corners=True)
    flat = up.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1), 0.0)
    return scaled.view_as(up)



def cam_weights(view) -> torch.Tensor:
    """CAM (Zhou et al., CVPR 2016, eq. 2): the head's rows ``w^c`` for the targets, ``(N, K, C)``.

    For a class target the weight vector is the final linear layer's row ``W[c]``
    (found by :func:`find_cam_head`); for a ``reduction_fn`` it is
    ``W^T d score / d y`` (the same rows combined as the function combines the
    outputs; exact for the usual linear reductions). The bias is not part of the map.
    """
    if view.layers > 1:
        raise expected("feature_layer", "one layer for CAM (the layer its linear head pools)",
                       f"{view.layers} layers")
    a, probe = view.acts, view.probe
    _, head = find_cam_head(probe.net, a, probe.output)
    dy = _target_weights(probe.call.target, probe.output, a.shape[0])  # (N, K, classes)
    return torch.einsum("nko,oc->nkc", dy, head.weight.detach().to(dy.dtype)).to(a.dtype)


register(Method(
    "cam", "CAM", cam_weights, "activation",
    summary="CAM (Zhou et al., CVPR 2016): ``ReLU(sum_k w_k^c A^k)`` with ``w^c`` the head's row for class ``c``.",
    doc="""Needs a network whose scored output is ``nn.Linear(global average pool of the feature
layer)``; that linear layer is found automatically (by checking that it reproduces the
output), and a :class:`~gradattr.GradattrError` says so when the network has no such
head. On such a network CAM is Grad-CAM times the number of feature-map positions. No
gradients are computed.""",
    example=_TOY + """>>> x = torch.randn(2, 16)
>>> torch.allclose(gradattr.cam(net, x, 1), 16 * gradattr.grad_cam(net, x, 1), atol=1e-5)
True
""",
    use_when="the network ends in global average pooling + one linear layer: exact, no gradients"))


# -- perturbation methods -----------------------------------------------------------------
def score_cam_weights(scores: torch.Tensor) -> torch.Tensor:
    """Score-CAM (Wang et al., CVPR-W 2020): ``softmax_k(S_k)`` over channels, ``(N, K, C)``.

    ``scores (N, K, C)``: ``S_k = f(X * H^k)``, the target score of the input masked by
    channel ``k``'s upsampled, min-max normalised activation ``H^k`` (see
    :func:`score_cam_scores`). The paper's weight is the softmax over channels of the
    increase ``S_k - f(X_b)`` (its eq. 3 and Algorithm 1); the baseline cancels in the
    softmax, so raw scores (logits for a classifier) give the same weights.
    pytorch-grad-cam and torch-cam do the same; the authors' released code instead
    weights each channel by the masked input's softmax probability, without a softmax
    over channels. The masks follow pytorch-grad-cam (upsample with
    ``align_corners=True``, then min-max scale); torch-cam scales first and upsamples
    with ``align_corners=False``.

    >>> score_cam_weights(torch.tensor([[[0.0, float('-inf')]]])).tolist()
    [[[1.0, 0.0]]]
    """
    return torch.softmax(scores, -1)


def score_cam_scores(view, batch_size: int | None = None, progress: bool = False) -> torch.Tensor:
    """``S (N, K, C)``: the target score of every sample masked by every channel's map.

    Channel ``k`` of sample ``n`` masks the input with ``H^k`` (:func:`score_masks`)
    and scores ``x_n * H^k`` for sample ``n``'s target classes (fixed on the unmasked
    input). Chunks hold at most ``batch_size`` masked copies, so the ``C x input``
    tensor is never built. A channel that is constant on the feature map carries no
    location: its mask is 0 everywhere (what pytorch-grad-cam's
    ``/(max - min + 1e-8)`` gives), so its masked input is the zero input whatever the
    channel; those channels share the score of one forward pass of the zero input.
    """
    from .probe import chunk_size

    a, probe = view.acts, view.probe
    x = probe.x
    n, c = a.shape[:2]
    flat = a.flatten(2)
    constant = flat.amax(-1) == flat.amin(-1)  # (N, C)
    pairs = (~constant).nonzero()  # (P, 2) of (sample, channel)
    scores = None
    bar = probe.progress(n * c, progress, "Score-CAM")
    try:
        step = chunk_size(batch_size, x[0])
        for start in range(0, pairs.shape[0], step):
            rows, chans = pairs[start:start + step].unbind(1)
            s = probe.score_inputs(x[rows] * score_masks(a[rows, chans], tuple(x.shape[2:])), rows)
            scores = s.new_zeros(n, c, s.shape[1]) if scores is None else scores
            scores[rows, chans] = s
            bar.update(len(rows))
        if constant.any():
            s0 = probe.score_inputs(torch.zeros_like(x[:1]), torch.arange(n, device=x.device))
            scores = s0.new_zeros(n, c, s0.shape[1]) if scores is None else scores
            rows, chans = constant.nonzero().unbind(1)
            scores[rows, chans] = s0[rows]
            bar.update(len(rows))
    finally:
        bar.close()
    return rearrange(scores, "n c k -> n k c").to(a.dtype)


register(Method(
    "score_cam", "Score-CAM",
    lambda v, batch_size, progress: score_cam_weights(score_cam_scores(v, batch_size, progress)),
    "perturbation", options=(BATCH_SIZE, PROGRESS),
    summary="Score-CAM map (Wang et al., CVPR-W 2020): ``ReLU(sum_k softmax_k(f(x * H^k)) A^k)``.",
    doc="""``H^k`` is channel ``k`` upsampled to the input (multi-linear, ``align_corners=True``,
as pytorch-grad-cam) and min-max scaled; ``f`` the target score. One forward pass per
channel (the all-zero masks of constant channels share one), run in chunks. See
:func:`gradattr.methods.score_cam_scores`.""",
    example=_TOY + """>>> gradattr.score_cam(net, torch.randn(2, 16), 1, batch_size=3).shape
torch.Size([16])
""",
    use_when="gradients are noisy or saturated: weights come from forward passes on masked inputs "
             "(slow: one pass per channel)"))


def ablate(t: torch.Tensor, chans: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """A copy of ``t (B, C, *s)`` with channel ``chans[i]`` of row ``offset + i`` set to zero."""
    t = t.clone()
    t[torch.arange(len(chans), device=t.device) + offset, chans] = 0
    return t




def ablation_cam_weights(scores: torch.Tensor, ablated: torch.Tensor) -> torch.Tensor:
    """Ablation-CAM (Ramaswamy, WACV 2020, eq. 3): ``w_k = (y - y_k) / y``, ``(N, K, C)``.

    ``scores (N, K)`` is the target score ``y`` and ``ablated (N, K, C)`` the score ``y_k``
    with channel ``k`` of the feature map set to zero (see :func:`ablation_scores`). A
    score of exactly 0 divides by 0, as in the paper.

    >>> ablation_cam_weights(torch.tensor([[4.0]]), torch.tensor([[[1.0, 3.0]]])).tolist()
    [[[0.75, 0.25]]]
    """
    return (scores[..., None] - ablated) / scores[..., None]


def ablation_scores(view, batch_size: int | None = None, progress: bool = False) -> torch.Tensor:
    """``y_k (N, K, C)``: every sample's score with each channel of its feature map zeroed.

    The copies are scored by :meth:`~gradattr.probe.Probe.score_activations`, which
    runs only the layers after the feature layer where the network allows it. The
    ablated value is 0, as in the paper (pytorch-grad-cam uses 0 when the layer's
    minimum is 0 and ``min - 1e7`` otherwise).
    """
    a, probe = view.acts, view.probe
    n, c = a.shape[:2]
    y = probe.scores
    out = y.new_zeros(n, c, y.shape[1])
    bar = probe.progress(n * c, progress, "Ablation-CAM")
    try:
        for i in range(n):
            start = 0
            while start < c:
                chans = torch.arange(start, min(c, start + probe.activation_chunk(batch_size)),
                                     device=a.device)
                copies = ablate(a[i:i + 1].expand(len(chans), *a.shape[1:]), chans)
                out[i, start:start + len(chans)] = probe.score_activations(copies, i)
                start += len(chans)
                bar.update(len(chans))
    finally:
        bar.close()
    return rearrange(out, "n c k -> n k c")


def _ablation(view, batch_size, progress):
    y = view.probe.scores
    return ablation_cam_weights(y, ablation_scores(view, batch_size, progress)).to(view.acts.dtype)


register(Method(
    "ablation_cam", "Ablation-CAM", _ablation, "perturbation", options=(BATCH_SIZE, PROGRESS),
    summary="Ablation-CAM map (Ramaswamy, WACV 2020): ``ReLU(sum_k (y - y_k) / y A^k)``.",
    doc="""``y_k`` is the target score with channel ``k`` of the feature map set to zero. Where
the network allows it only the layers after the feature layer run on the ablated copies;
see :func:`gradattr.methods.ablation_scores`.""",
    example=_TOY + """>>> gradattr.ablation_cam(net, torch.randn(2, 16), 1, upsampling="none").shape
torch.Size([16])
""",
    use_when="gradient-free weights from zeroing each channel; only the layers after the feature "
             "layer run per channel where the network allows it"))


# -- pixel-space methods ------------------------------------------------------------------
register(Method(
    "guided_backprop", "Guided backpropagation",
    lambda v: v.probe.input_gradients(GuidedRectifiers()), "pixel", combine="map", returns="pixels",
    summary="Guided backpropagation (Springenberg et al., ICLR-W 2015): input gradients through "
            "guided rectifiers.",
    doc="""Every rectifier (``nn.ReLU``/``nn.ReLU6`` modules and functional ``relu``, ``relu6``,
``hardtanh(., 0, m)``, in place or not) passes back only positive gradients at positive
inputs: ``R_in = (x > 0) max(R_out, 0)``. Done with a
:class:`torch.overrides.TorchFunctionMode` for the one forward pass; no module is swapped
and nothing is patched. Not class-discriminative. ``normalize`` scales each attribution
over channels and positions.""",
    example=_TOY + """>>> gradattr.guided_backprop(net, torch.randn(2, 2, 16), 1).shape
torch.Size([2, 2, 16])
""",
    use_when="pixel-level detail (edges, texture); not class-discriminative; returns (N, C, *spatial)"))


def guided_grad_cam_pixels(probe, cam: torch.Tensor) -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017, sec. 3): guided backprop x upsampled Grad-CAM.

    ``cam (N, K, *s)`` is the Grad-CAM map (fused, for several layers). The paper
    upsamples it bilinearly; here it is resized to the input with the call's
    ``upsampling`` (MATLAB bicubic or nearest, captum's default) and clamped at 0
    (bicubic overshoots slightly below 0 next to sharp edges, which would flip the
    sign of the guided gradient there), then multiplies the guided gradients of
    every input channel: ``(N, K, C, *S)``.
    """
    up = torch.relu(probe.to_input(cam))
    return probe.input_gradients(GuidedRectifiers()) * up[:, :, None]


register(Method(
    "guided_grad_cam", "Guided Grad-CAM", lambda v: grad_cam_weights(v.acts, v.grads), "gradient",
    returns="pixels", finish=guided_grad_cam_pixels, refused_shared=("aug_smooth", "eigen_smooth"),
    summary="Guided Grad-CAM (Selvaraju et al., ICCV 2017): guided backprop times the upsampled Grad-CAM.",
    doc="""``G(x)[c] * up(GradCAM)`` for every input channel ``c``; the Grad-CAM map is resized
to the input with ``upsampling`` (``"bicubic"`` or ``"nearest"``; captum's ``GuidedGradCam``
uses nearest) and clamped at 0. One feature layer.""",
    example=_TOY + """>>> gradattr.guided_grad_cam(net, torch.randn(2, 16), 1, upsampling="nearest").shape
torch.Size([2, 16])
""",
    use_when="high-resolution and class-discriminative: guided backprop x Grad-CAM"))
