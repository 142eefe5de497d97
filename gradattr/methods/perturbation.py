"""Perturbation methods: weights from forward passes on masked inputs or modified activations."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import expected
from ..registry import Method, register
from .common import BATCH_SIZE, PROGRESS, TOY as _TOY


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
    from ..probe import chunk_size

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


