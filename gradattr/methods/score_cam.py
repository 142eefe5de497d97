"""Score-CAM: channel weights from the scores of the input masked by each channel's map.

SS-CAM and IS-CAM (:mod:`.perturbation`) weight their scores as Score-CAM does
(:func:`score_cam_weights`).
"""
from __future__ import annotations

import torch
from einops import rearrange

from .. import resize
from ..errors import expected
from ..options import COMMON, LAYER, TARGET
from ..registry import Method, register
from .common import BATCH_SIZE, PROGRESS, TOY as _TOY


def score_masks(acts: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Channel maps ``acts (B, *s)`` upsampled to ``size`` and min-max scaled to [0, 1].

    Multi-linear upsampling with ``align_corners=True``, as pytorch-grad-cam.

    A map that is constant after upsampling carries no location and becomes 0
    everywhere (what pytorch-grad-cam's ``/(max - min + 1e-8)`` gives).
    """
    if len(size) not in resize.LINEAR_MODES:
        raise expected("x", "1, 2 or 3 spatial/time dims for Score-CAM's masks", f"{len(size)}")
    up = resize.linear(acts[:, None], size, align_corners=True)
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
    input), through :meth:`~gradattr.scorer.Scorer.score_masked` (chunks of at most
    ``batch_size`` masked copies, so the ``C x input`` tensor is never built). A channel
    that is constant on the feature map carries no location: its mask is 0 everywhere
    (what pytorch-grad-cam's ``/(max - min + 1e-8)`` gives), so its masked input is the
    zero input whatever the channel; those channels share the score of one forward pass
    of the zero input.
    """
    a, scorer = view.acts, view.scorer
    x = scorer.x
    n, c = a.shape[:2]
    flat = a.flatten(2)
    constant = flat.amax(-1) == flat.amin(-1)  # (N, C)
    rows, chans = (~constant).nonzero().unbind(1)  # the (sample, channel) pairs to run
    size = tuple(x.shape[2:])

    def make(i, j):
        r = rows[i:j]
        return x[r] * score_masks(a[r, chans[i:j]], size)

    s = scorer.score_masked(len(rows), make, rows, batch_size=batch_size, progress=progress,
                           desc="Score-CAM")
    scores = s.new_zeros(n, c, s.shape[1])
    scores[rows, chans] = s
    if constant.any():
        s0 = scorer.score_inputs(torch.zeros_like(x[:1]), torch.arange(n, device=x.device))
        r0, c0 = constant.nonzero().unbind(1)
        scores[r0, c0] = s0[r0].to(scores.dtype)
    return rearrange(scores, "n c k -> n k c").to(a.dtype)


register(Method(
    "score_cam", "Score-CAM",
    lambda v, batch_size, progress: score_cam_weights(score_cam_scores(v, batch_size, progress)),
    "activations",
    changes_input=True, family="perturbation CAM", shared=COMMON + TARGET + LAYER + ("eigen_smooth", "relu"), options=(BATCH_SIZE, PROGRESS),
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
