"""The maths of each CAM method, one small function per method.

Every method ends the same way: per target ``k`` it forms channel terms
``T[n, k, c, *s]`` (a weight times the activation, or an element-wise product)
and returns ``ReLU(sum_c T)``, or, with ``eigen_smooth=True``,
``ReLU(projection of T on its first principal component)`` (see
:func:`eigen_projection`). The ReLU is Grad-CAM's and MATLAB's and what
pytorch-grad-cam applies to every method before scaling, so every method's raw
map is non-negative.

The pure functions (``grad_cam``, ``grad_cam_plus_plus``, ``xgrad_cam``,
``hires_cam``, ``layer_cam``, ``eigengrad_cam`` on ``(acts, grads)``;
``eigen_cam`` on ``acts``; ``cam``, ``score_cam`` and ``ablation_cam`` from
their per-channel weights) know nothing of hooks or models. The drivers below
them (:func:`gradient_method`, :func:`cam_method`, :func:`score_cam_method`,
:func:`ablation_cam_method`, :func:`eigen_cam_method`,
:func:`guided_backprop_method`, :func:`guided_grad_cam_method`,
:func:`augmented`) turn them into ``session -> (maps (N, K, *s), feature_names,
reduction_name)`` methods that run through the engine's
:class:`~gradattr.engine.Session`.

Shapes: ``acts (N, C, *s)``, ``grads (N, K, C, *s)``, weights ``(N, K, C)``,
maps ``(N, K, *s)``, for any number of spatial/time dims ``s``.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from . import resize
from .engine import Session, normalize_maps
from .errors import GradattrError, expected
from .guided import GuidedRectifiers
from .targets import Target

Maps = torch.Tensor

#: Memory that one chunk of perturbed copies (Score-CAM, Ablation-CAM) may use when
#: ``batch_size=None``.
MEMORY_BUDGET = 512 * 2**20
#: Bytes a forward pass is assumed to need per copy, as a multiple of the bytes of the
#: tensor that is copied (the masked input or the ablated activation): the copy itself
#: plus the network's intermediate activations, which for CNNs are a few times larger.
FORWARD_FACTOR = 16
#: The same, when only the layers after the feature layer run on the copies (Ablation-CAM's
#: fast path): the ablated copies, the hook's clone, and the tail's activations.
TAIL_FACTOR = 3
#: At most this many copies per forward pass on a CPU when ``batch_size=None``: larger
#: batches are slower per copy there (cache), while a GPU gains from the whole budget.
CPU_CHUNK = 16
#: pytorch-grad-cam's stabilisers, kept so that the maps agree with it.
GRAD_CAM_PP_EPS = 1e-6
XGRAD_CAM_EPS = 1e-7


# -- combining channel terms ------------------------------------------------------------
def weighted_sum(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """``sum_c weights[n, k, c] * acts[n, c, *s]`` -> ``(N, K, *s)`` for any number of spatial dims."""
    return torch.einsum("nkc,nc...->nk...", weights, acts)


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


def from_weights(weights: torch.Tensor, acts: torch.Tensor, eigen_smooth: bool = False) -> Maps:
    """``ReLU(sum_c w[n, k, c] A[n, c])``, or ReLU of the principal projection of ``w A``."""
    if eigen_smooth:
        return torch.relu(eigen_projection(weights[(...,) + (None,) * (acts.ndim - 2)] * acts[:, None]))
    return torch.relu(weighted_sum(weights, acts))


def from_terms(terms: torch.Tensor, eigen_smooth: bool = False) -> Maps:
    """``ReLU(sum_c T[n, k, c])``, or ReLU of the principal projection of ``T``."""
    return torch.relu(eigen_projection(terms) if eigen_smooth else terms.sum(2))


# -- the methods' maths ---------------------------------------------------------------
def grad_cam(acts: torch.Tensor, grads: torch.Tensor, *, eigen_smooth: bool = False) -> Maps:
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``ReLU(sum_k alpha_k A^k)``.

    ``alpha_k`` is the spatial mean of ``d score / d A^k``; the map keeps raw values
    (MATLAB's behaviour).

    >>> a = torch.ones(1, 2, 3); g = torch.tensor([[[[1.0, 1, 1], [-3, -3, -3]]]])
    >>> grad_cam(a, g).tolist()  # 1*1 + (-3)*1 < 0 everywhere, so ReLU gives 0
    [[[0.0, 0.0, 0.0]]]
    """
    alpha = reduce(grads, "n k c ... -> n k c", "mean")
    return from_weights(alpha, acts, eigen_smooth)


def grad_cam_plus_plus(acts: torch.Tensor, grads: torch.Tensor, *, eigen_smooth: bool = False) -> Maps:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018): ``ReLU(sum_k w_k A^k)`` with

    ``w_k = sum_ij ReLU(g_ij) a_ij``, ``a_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)``
    (the paper's eq. 19, its closed form for an exponential score, evaluated with
    the plain gradients ``g = d score / d A`` as pytorch-grad-cam does), ``a_ij = 0``
    where ``g_ij = 0``. As in pytorch-grad-cam, ``1e-6`` is added to the
    denominator; it is not in the paper but it changes the weights of channels
    whose gradients are of order ``1e-3``, so it is kept for agreement.

    >>> a = torch.tensor([[[1.0, 3.0]]]); g = torch.tensor([[[[0.5, 0.0]]]])
    >>> # a = .25 / (2 * .25 + 4 * .125) = .25 at the first position; w = .5 * .25 = .125
    >>> [round(v, 4) for v in grad_cam_plus_plus(a, g).flatten().tolist()]
    [0.125, 0.375]
    """
    g2 = grads**2
    total = reduce(acts, "n c ... -> n 1 c", "sum")[(...,) + (None,) * (acts.ndim - 2)]
    alpha = torch.where(grads != 0, g2 / (2 * g2 + total * g2 * grads + GRAD_CAM_PP_EPS), 0.0)
    weights = reduce(torch.relu(grads) * alpha, "n k c ... -> n k c", "sum")
    return from_weights(weights, acts, eigen_smooth)


def xgrad_cam(acts: torch.Tensor, grads: torch.Tensor, *, eigen_smooth: bool = False) -> Maps:
    """XGrad-CAM (Fu et al., BMVC 2020): ``ReLU(sum_k w_k A^k)``, ``w_k = sum_ij (A_ij / sum_ab A_ab) g_ij``.

    The activation-weighted average of the gradient (the paper's eq. 14), with
    pytorch-grad-cam's ``1e-7`` added to ``sum_ab A_ab``.

    >>> a = torch.tensor([[[1.0, 3.0]]]); g = torch.tensor([[[[2.0, 6.0]]]])
    >>> xgrad_cam(a, g).flatten().tolist()  # w = (1*2 + 3*6) / 4 = 5
    [5.0, 15.0]
    """
    total = reduce(acts, "n c ... -> n 1 c", "sum")
    weights = reduce(grads * acts[:, None], "n k c ... -> n k c", "sum") / (total + XGRAD_CAM_EPS)
    return from_weights(weights, acts, eigen_smooth)


def hires_cam(acts: torch.Tensor, grads: torch.Tensor, *, eigen_smooth: bool = False) -> Maps:
    """HiResCAM (Draelos & Carin, 2020): ``ReLU(sum_k g^k * A^k)``, element-wise (no spatial averaging).

    >>> a = torch.tensor([[[1.0, 3.0]]]); g = torch.tensor([[[[2.0, -1.0]]]])
    >>> hires_cam(a, g).flatten().tolist()
    [2.0, 0.0]
    """
    return from_terms(grads * acts[:, None], eigen_smooth)


def layer_cam(acts: torch.Tensor, grads: torch.Tensor, *, eigen_smooth: bool = False) -> Maps:
    """Layer-CAM (Jiang et al., IEEE TIP 2021, eq. 5): ``ReLU(sum_k ReLU(g^k) * A^k)``.

    >>> a = torch.tensor([[[1.0, 3.0], [1.0, 1.0]]]); g = torch.tensor([[[[2.0, -1.0], [1.0, 1.0]]]])
    >>> layer_cam(a, g).flatten().tolist()
    [3.0, 1.0]
    """
    return from_terms(torch.relu(grads) * acts[:, None], eigen_smooth)


def eigengrad_cam(acts: torch.Tensor, grads: torch.Tensor) -> Maps:
    """EigenGrad-CAM (pytorch-grad-cam): Eigen-CAM on the gradient-weighted activations ``g * A``.

    ``ReLU(projection of (g * A) on its first principal component)``, with the
    sign fixed as in :func:`eigen_projection` (positive correlation with
    ``sum_c g A``, HiResCAM's map).
    """
    return from_terms(grads * acts[:, None], eigen_smooth=True)


def eigen_cam(acts: torch.Tensor) -> Maps:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): ``ReLU(A_c v1)``, one map ``(N, 1, *s)``.

    No gradients and no target: the first principal component of the activations
    (see :func:`eigen_projection` for the centring and the sign).

    >>> a = torch.tensor([[[0.0, 1.0, 4.0], [0.0, 2.0, 8.0]]])
    >>> [round(v, 4) for v in eigen_cam(a).flatten().tolist()]  # (35 / 3) / sqrt(5) where they peak
    [0.0, 0.0, 5.2175]
    """
    return from_terms(acts[:, None], eigen_smooth=True)


def cam(acts: torch.Tensor, weights: torch.Tensor, *, eigen_smooth: bool = False) -> Maps:
    """CAM (Zhou et al., CVPR 2016, eq. 2): ``ReLU(sum_k w_k^c A^k)`` with ``w^c`` the head's row for ``c``.

    ``weights (N, K, C)`` are the final linear layer's rows for the targets (see
    :func:`cam_method`). The bias is not part of the map, as in the paper.
    """
    return from_weights(weights, acts, eigen_smooth)


def score_cam(acts: torch.Tensor, scores: torch.Tensor, *, eigen_smooth: bool = False) -> Maps:
    """Score-CAM (Wang et al., CVPR-W 2020): ``ReLU(sum_k softmax_k(S_k) A^k)``.

    ``scores (N, K, C)``: ``S_k = f(X * H^k)``, the target score of the input
    masked by channel ``k``'s upsampled, min-max normalised activation ``H^k``
    (see :func:`score_cam_method`). The paper's weight is the softmax over
    channels of the increase ``S_k - f(X_b)`` (its eq. 3 and Algorithm 1); the
    baseline cancels in the softmax, so raw scores (logits for a classifier) give
    the same weights. pytorch-grad-cam and torch-cam do the same; the authors'
    released code instead weights each channel by the masked input's softmax
    probability, without a softmax over channels. The masks follow
    pytorch-grad-cam (upsample with ``align_corners=True``, then min-max scale);
    torch-cam scales first and upsamples with ``align_corners=False``.

    >>> a = torch.ones(1, 2, 1); s = torch.tensor([[[0.0, float('-inf')]]])
    >>> score_cam(a, s).flatten().tolist()
    [1.0]
    """
    return from_weights(torch.softmax(scores, -1), acts, eigen_smooth)


def ablation_cam(acts: torch.Tensor, scores: torch.Tensor, ablated: torch.Tensor, *,
                 eigen_smooth: bool = False) -> Maps:
    """Ablation-CAM (Ramaswamy, WACV 2020, eq. 3): ``ReLU(sum_k w_k A^k)``, ``w_k = (y - y_k) / y``.

    ``scores (N, K)`` is the target score ``y`` and ``ablated (N, K, C)`` the score
    ``y_k`` with channel ``k`` of the feature map set to zero (see
    :func:`ablation_cam_method`). A score of exactly 0 divides by 0, as in the paper.

    >>> a = torch.ones(1, 2, 1)
    >>> ablation_cam(a, torch.tensor([[4.0]]), torch.tensor([[[1.0, 3.0]]])).flatten().tolist()
    [1.0]
    """
    weights = (scores[..., None] - ablated) / scores[..., None]
    return from_weights(weights, acts, eigen_smooth)


# -- drivers ----------------------------------------------------------------------------
def gradient_method(fn: Callable[[torch.Tensor, torch.Tensor], Maps], *, counterfactual: bool = False):
    """Drive a pure ``fn(acts, grads)`` through one forward pass and the tail's backward."""

    def method(session: Session):
        cap = session.capture(grad=True)
        grads = session.gradients(cap, counterfactual=counterfactual)
        maps = [fn(a.detach(), g) for a, g in zip(cap.acts, grads)]
        return session.fuse(maps), cap.feature_names, cap.reduction_name

    return method


def eigen_cam_method(session: Session):
    """Eigen-CAM driver: one no-grad forward pass, no target."""
    cap = session.capture(grad=False, stop=True)  # nothing after the feature layer is needed
    return session.fuse([eigen_cam(a) for a in cap.acts]), cap.feature_names, cap.reduction_name


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


def cam_method(*, eigen_smooth: bool = False):
    """CAM driver: one no-grad pass; the weights are the head's rows for the targets.

    For a class target the weight vector is the head's row ``W[c]``; for a
    ``reduction_fn`` it is ``W^T d score / d y`` (the same rows combined as the
    function combines the outputs; exact for the usual linear reductions).
    """

    def method(session: Session):
        if session.features is not None and len(session.features) > 1:
            raise expected("feature_layer", "one layer for CAM (the layer its linear head pools)",
                           f"{len(session.features)} layers")
        cap = session.capture(grad=False)
        a = cap.acts[0].detach()
        _, head = find_cam_head(session.net, a, cap.output)
        dy = _target_weights(session.target, cap.output, a.shape[0])  # (N, K, classes)
        weights = torch.einsum("nko,oc->nkc", dy, head.weight.detach().to(dy.dtype))
        return cam(a, weights.to(a.dtype), eigen_smooth=eigen_smooth), cap.feature_names, cap.reduction_name

    return method


def _progress(total: int, enabled: bool, desc: str):
    """A tqdm bar when asked for (and installed), else a no-op counter."""
    if enabled:
        try:
            from tqdm.auto import tqdm
            return tqdm(total=total, desc=desc)
        except ImportError:
            pass

    class _Quiet:
        def __init__(self):
            self.n = 0

        def update(self, k):
            self.n += k
            if enabled:
                print(f"\r{desc}: {self.n}/{total}", end="", file=sys.stderr)

        def close(self):
            if enabled:
                print(file=sys.stderr)

    return _Quiet()


def check_batch_size(batch_size) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise expected("batch_size", "None (sized from a 512 MB budget) or a positive int",
                       repr(batch_size))


def chunk_size(batch_size: int | None, per_copy: torch.Tensor, cpu_cap: bool = True,
               factor: int = FORWARD_FACTOR) -> int:
    """Copies per forward pass: ``batch_size``, or as many as fit :data:`MEMORY_BUDGET`.

    ``per_copy`` is one copy of what is perturbed; a forward pass is assumed to need
    ``factor`` times its bytes per copy. On a CPU at most :data:`CPU_CHUNK`
    copies when the whole network runs on them (``cpu_cap``).
    """
    if batch_size is not None:
        return batch_size
    per = per_copy.numel() * per_copy.element_size() * factor
    fit = max(1, MEMORY_BUDGET // max(per, 1))
    return min(fit, CPU_CHUNK) if cpu_cap and per_copy.device.type == "cpu" else fit


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


def score_cam_method(*, batch_size: int | None = None, progress: bool = False,
                     eigen_smooth: bool = False):
    """Score-CAM driver: one capture, then the masked inputs in chunks.

    Channel ``k`` of sample ``n`` masks the input with ``H^k`` (:func:`score_masks`)
    and scores ``x_n * H^k`` for sample ``n``'s target classes (fixed on the
    unmasked input). Chunks hold at most ``batch_size`` masked copies (default:
    :func:`chunk_size`, from :data:`MEMORY_BUDGET`), so the ``C x input`` tensor
    is never built; each chunk's masks are made when it runs.

    A channel that is constant on the feature map carries no location: its mask
    is 0 everywhere (what pytorch-grad-cam's ``/(max - min + 1e-8)`` gives), so
    its masked input is the zero input whatever the channel. Those channels are
    not run one by one; they all get the score of one forward pass of the zero
    input, which is exactly what running them would give.
    """
    check_batch_size(batch_size)

    def method(session: Session):
        cap = session.capture(grad=False)
        x = session.x
        n, _, *size = x.shape
        target = session.target.fixed(cap.output, n)
        maps = []
        bar = _progress(sum(a.shape[0] * a.shape[1] for a in cap.acts), progress, "Score-CAM")
        try:
            for a in cap.acts:
                a = a.detach()
                flat = a.flatten(2)
                constant = flat.amax(-1) == flat.amin(-1)  # (N, C)
                scores = None
                pairs = (~constant).nonzero()  # (P, 2) of (sample, channel)
                step = chunk_size(batch_size, x[0])
                for start in range(0, pairs.shape[0], step):
                    rows, chans = pairs[start:start + step].unbind(1)
                    masked = x[rows] * score_masks(a[rows, chans], tuple(size))
                    s = session.forward_scores(masked, target, rows=rows)  # (B, K)
                    if scores is None:
                        scores = s.new_zeros(n, a.shape[1], s.shape[1])
                    scores[rows, chans] = s
                    bar.update(len(rows))
                if constant.any():
                    y0 = session.forward_output(torch.zeros_like(x[:1]))
                    if isinstance(y0, torch.Tensor):
                        y0 = y0.expand(n, *y0.shape[1:])
                    s0 = target.scores(y0, n, torch.arange(n, device=x.device))  # (N, K)
                    if scores is None:
                        scores = s0.new_zeros(n, a.shape[1], s0.shape[1])
                    rows, chans = constant.nonzero().unbind(1)
                    scores[rows, chans] = s0[rows]
                    bar.update(len(rows))
                maps.append(score_cam(a, rearrange(scores, "n c k -> n k c").to(a.dtype),
                                      eigen_smooth=eigen_smooth))
        finally:
            bar.close()
        return session.fuse(maps), cap.feature_names, cap.reduction_name

    return method


def ablate(t: torch.Tensor, chans: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """A copy of ``t (B, C, *s)`` with channel ``chans[i]`` of row ``offset + i`` set to zero."""
    t = t.clone()
    t[torch.arange(len(chans), device=t.device) + offset, chans] = 0
    return t


def ablation_cam_method(*, batch_size: int | None = None, progress: bool = False,
                        eigen_smooth: bool = False, fast: bool | None = None):
    """Ablation-CAM driver: one capture, then the ablated copies in chunks.

    Fast path (used when the network allows it): for each sample, the network
    runs on that one sample and the feature layer's output is replaced by a
    batch of ablated copies of its activation, so the layers before the feature
    layer run once per chunk at batch 1 and only the tail runs on the copies.
    Networks whose tail reads the batch size from the input (EfficientNet-Lite's
    ``x.view(bs, -1)``) break this: the first chunk therefore carries one
    un-ablated copy and the path is kept only if the output has one row per copy
    and that copy reproduces the original score. Otherwise (and with
    ``fast=False``) each chunk runs the whole network on repeated inputs and the
    ablation replaces the feature layer's output. Chunks hold ``batch_size``
    copies (default: :func:`chunk_size`, from :data:`MEMORY_BUDGET`).

    The ablated value is 0, as in the paper. (pytorch-grad-cam uses 0 when the
    layer's minimum is 0 and ``min - 1e7`` otherwise.) A module called several
    times (a shared activation) is ablated on its last call, the one captured.
    """
    check_batch_size(batch_size)

    def method(session: Session):
        cap = session.capture(grad=False)
        x = session.x
        n = x.shape[0]
        y = session.scores(cap).detach()  # (N, K)
        target = session.target.fixed(cap.output, n)
        calls = session.calls  # the captured call of each feature module (a shared one runs more)
        maps = []
        bar = _progress(sum(a.shape[0] * a.shape[1] for a in cap.acts), progress, "Ablation-CAM")
        try:
            for li, a in enumerate(cap.acts):
                a = a.detach()
                ablated = _ablation_scores(session, target, a, y, li, calls[li], fast, batch_size, bar)
                maps.append(ablation_cam(a, y.to(a.dtype), rearrange(ablated, "n c k -> n k c").to(a.dtype),
                                         eigen_smooth=eigen_smooth))
        finally:
            bar.close()
        return session.fuse(maps), cap.feature_names, cap.reduction_name

    return method


def _ablation_scores(session: Session, target: Target, a, y, layer: int, call: int, fast, batch_size,
                     bar) -> torch.Tensor:
    """``y_k`` for every sample and channel of feature layer ``layer``: ``(N, C, K)``."""
    x = session.x
    n, c = a.shape[:2]
    ablated = y.new_zeros(n, c, y.shape[1])
    use_fast = fast  # None: decided by a probe on the first chunk
    for i in range(n):
        start = 0
        while start < c:
            if use_fast is not False:
                # only the tail runs on the copies: the copy, its clone in the hook and the
                # tail's own activations (after the feature layer they are no larger)
                step = chunk_size(batch_size, a[0], cpu_cap=False, factor=TAIL_FACTOR)
                chans = torch.arange(start, min(c, start + step), device=x.device)
                s, ok = _ablate_tail(session, target, a, i, chans, layer, call, y[i], probe=use_fast is None)
                use_fast = ok if use_fast is None else use_fast
                if not ok:
                    continue  # the same channels again, on the full network
            else:
                step = chunk_size(batch_size, x[0])
                chans = torch.arange(start, min(c, start + step), device=x.device)
                rows = torch.full((len(chans),), i, device=x.device)
                yb = session.forward_output(x[i:i + 1].expand(len(chans), *x.shape[1:]).contiguous(),
                                            replace=lambda o, chans=chans: ablate(o, chans),
                                            layer=layer, call=call)
                s = target.scores(yb, len(chans), rows)
            ablated[i, start:start + len(chans)] = s
            start += len(chans)
            bar.update(len(chans))
    return ablated


def _ablate_tail(session: Session, target: Target, a, i, chans, layer, call, y_i, probe: bool):
    """Scores of sample ``i`` with ``chans`` ablated, running the tail only; ``(scores, ok)``.

    With ``probe`` the batch carries one un-ablated copy first, and the result is
    accepted only if the output has a row per copy and that copy scores ``y_i``.
    """
    extra = 1 if probe else 0
    copies = ablate(a[i:i + 1].expand(len(chans) + extra, *a.shape[1:]), chans, offset=extra)
    b = copies.shape[0]
    rows = torch.full((b,), i, device=a.device)
    try:
        yb = session.forward_output(session.x[i:i + 1], replace=lambda o: copies, layer=layer, call=call)
        if isinstance(yb, torch.Tensor) and yb.shape[0] != b:
            raise GradattrError(f"net: expected an output with one row per ablated copy ({b}) when "
                                f"only the layers after the feature layer run on the copies, got "
                                f"{yb.shape[0]} rows; the network reads its batch size from its input")
        s = target.scores(yb, b, rows)
    except (RuntimeError, GradattrError):
        if probe:
            return None, False
        raise
    if probe:
        scale = float(y_i.abs().max().clamp(min=1))
        if not torch.allclose(s[0], y_i.to(s.dtype), rtol=1e-4, atol=1e-4 * scale):
            return None, False
        s = s[1:]
    return s, True


def guided_backprop_method(*, counterfactual: bool = False):
    """Guided backpropagation driver: input gradients under :class:`~gradattr.guided.GuidedRectifiers`.

    Returns ``(N, K, C, *s)`` at the input's resolution (the engine is called
    with ``upsampling="none"``).
    """

    def method(session: Session):
        g, rname = session.input_gradients(counterfactual=counterfactual, context=GuidedRectifiers())
        return g, [], rname

    return method


def guided_grad_cam_method(*, cam_upsampling: str = "bicubic", counterfactual: bool = False):
    """Guided Grad-CAM driver (Selvaraju et al., ICCV 2017, sec. 3): guided backprop x Grad-CAM.

    The paper upsamples the Grad-CAM map bilinearly; here it is resized to the
    input with ``cam_upsampling`` (MATLAB bicubic or nearest, captum's default) and
    clamped at 0 (bicubic overshoots slightly below 0 next to sharp edges, which
    would flip the sign of the guided gradient there), then multiplies the guided
    gradients of every input channel: ``(N, K, C, *s)``.
    """
    grad_cam_driver = gradient_method(grad_cam, counterfactual=counterfactual)

    def method(session: Session):
        maps, fnames, rname = grad_cam_driver(session)
        up = torch.relu(resize.imresize(maps, tuple(session.x.shape[2:]), cam_upsampling))
        g, _ = session.input_gradients(counterfactual=counterfactual, context=GuidedRectifiers())
        return g * up[:, :, None], fnames, rname

    return method


#: pytorch-grad-cam's default test-time augmentations (ttach): flip x multiply.
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


def augmented(method: Callable[[Session], tuple], *, fix_target: bool = True):
    """``aug_smooth``: the mean of the maps of six augmented inputs, as pytorch-grad-cam does.

    The augmentations are pytorch-grad-cam's (ttach): horizontal flip (the last
    axis: width, or time for sequences) x multiplication by 0.9, 1 and 1.1. Each
    augmented input's map is un-flipped and min-max normalised, then the six are
    averaged (so the result lies in [0, 1]). The top-class target is fixed on the
    original input first (one more forward pass), so every augmentation explains
    the same class; ``fix_target=False`` skips that for methods without a target.
    """

    def smooth(session: Session):
        target = session.target
        if fix_target and target.kind == "top":
            target = target.fixed(session.capture(grad=False).output, session.n)
        features, acc = session.features, None
        for flip, factor in AUGMENTATIONS:
            x = session.x.flip(-1) if flip else session.x
            sub = Session(session.net, x * factor, target, features, session.reduction, session.upsampling,
                          name_output=session.name_output)
            maps, fnames, rname = method(sub)
            features = sub.features
            maps = normalize_maps(maps.flip(-1) if flip else maps)
            acc = maps if acc is None else acc + maps
        return acc / len(AUGMENTATIONS), fnames, rname

    return smooth
