"""Perturbation methods: weights from forward passes on masked inputs or modified activations."""
from __future__ import annotations

import threading
import weakref
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange

from ..capture import PLANS, Capture, Plan, capture, module_named
from ..errors import GradattrError, expected
from ..layouts import Reading
from ..ops import gaussian_blur, minmax
from ..options import COMMON, LAYER, TARGET, Option, flag, positive_int
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
    family="perturbation CAM", shared=COMMON + TARGET + LAYER + ("eigen_smooth", "relu"), options=(BATCH_SIZE, PROGRESS),
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

    When the capture pass carried the first chunk of copies (:func:`ablation_capture`), their
    scores come from its output. The other copies are scored by
    :meth:`~gradattr.scorer.Scorer.score_activations`, which runs only the layers after the
    feature layer where the network allows it. Each chunk of copies is written into one
    buffer, reused from chunk to chunk: row 0 is the sample's own map (the scorer's check of
    the fast path), row ``1 + j`` the map with channel ``start + j`` zeroed. The ablated value
    is 0, as in the paper (pytorch-grad-cam uses 0 when the layer's minimum is 0 and
    ``min - 1e7`` otherwise).
    """
    a, scorer = view.acts, view.scorer
    n, c = a.shape[:2]
    y = scorer.scores
    out = y.new_zeros(n, c, y.shape[1])
    bar = scorer.progress(n * c, progress, "Ablation-CAM")
    first, chunk, buf = _carried(scorer, out)
    buf = a.new_empty(0) if buf is None else buf
    try:
        bar.update(n * first)
        for i in range(n):
            start = first
            while start < c:
                b = min(c - start, chunk or scorer.activation_chunk(batch_size))
                if buf.shape[0] < 1 + b:
                    buf = a.new_empty(1 + b, *a.shape[1:])
                copies = buf[:1 + b]
                copies.copy_(a[i:i + 1].expand_as(copies))
                rows = torch.arange(1, 1 + b, device=a.device)
                copies[rows, rows + (start - 1)] = 0  # row 1 + j: channel start + j
                out[i, start:start + b] = scorer.score_activations(copies, i, batch_size,
                                                                   unmodified_first=True)
                start += b
                bar.update(b)
    finally:
        bar.close()
    if not first and scorer.tail_only and scorer.cap is not None and len(scorer.cap.plan.layers) == 1:
        # the budget's chunk when it was computed for this call (else no pass only to size it)
        _remember(scorer.call, scorer.cap.plan, scorer.activation_chunk(None) if batch_size is None else None)
    return rearrange(out, "n c k -> n k c")


def _carried(scorer, out: torch.Tensor) -> tuple:
    """The scores of the copies the capture pass carried, written into ``out``: ``(channels
    done per sample, copies per later chunk, the buffer to reuse)``; ``(0, None, None)`` when
    it carried none. The carrying pass's buffer is reused for the later chunks (its pages are
    already touched: filling a fresh buffer of hundreds of MB is mostly page faults)."""
    carried = scorer.cap.carried if scorer.cap is not None else None
    if carried is None:
        return 0, None, None
    y, b, chunk, buf = carried
    n, m = out.shape[0], b + 2
    rows = torch.arange(n, device=out.device).repeat_interleave(m)
    s = scorer.target.scores(y, n * m, rows).detach().view(n, m, -1)
    out[:, :b] = s[:, 1:1 + b].to(out.dtype)
    return b, chunk, buf


#: Networks (weakly) whose layers after the feature layer were found to score copies of a
#: sample's feature map as whole passes do: the two-pass path's check passed on a first call
#: (:meth:`~gradattr.scorer.Scorer.score_activations`). Per (input signature, plan): the copies
#: per pass the memory budget allowed then, and the feature module (a weak reference, so a
#: replaced module is not trusted); ``None`` once a carrying pass failed its check.
_TAILS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TAILS_LOCK = threading.Lock()
#: Let the capture pass carry Ablation-CAM's first chunk of copies (:func:`ablation_capture`);
#: off: the capture pass and the two-pass path of :meth:`~gradattr.scorer.Scorer.score_activations`.
CARRY = True


def _tail_key(call, plan: Plan, refused: bool = False):
    x = call.x
    return (tuple(x.shape[1:]), x.dtype, x.device, plan, refused)


def _remember(call, plan: Plan, chunk: int | None) -> None:
    with _TAILS_LOCK:
        entries = _TAILS.setdefault(call.net, {})
        old = entries.get(_tail_key(call, plan), (None,))
        if old is not None and old[0] is None:
            entries[_tail_key(call, plan)] = (chunk, weakref.ref(module_named(call.net, plan.layers[0].name)))


def _refuse(call, plan: Plan) -> None:
    with _TAILS_LOCK:
        _TAILS.setdefault(call.net, {})[_tail_key(call, plan, refused=True)] = None


def ablation_capture(call, plan: Plan, options: dict) -> Capture | None:
    """The capture pass of Ablation-CAM carrying its first chunk of copies past the feature layer.

    The feature layer's hook records the activation ``A (1, C, *s)`` and hands the layers
    after it ``b + 2`` rows instead: the sample's own map, the ``b`` maps with channel
    ``j < b`` zeroed, and its own map again; so the layers before the feature layer run once
    per call. Used only for one sample (N = 1: the input's single row then meets the copies as
    in the two-pass path), a single feature layer read channels-first or channels-last, one
    input, no autocast, and a network whose tail passed the two-pass path's independent check
    (its unmodified copy reproduced the capture pass's score) on an earlier call with the same
    feature module, input signature and plan (remembered per network, weakly). The pass is kept
    only if its output is a tensor with exactly ``b + 2`` rows and the last row equals the first
    bit for bit; the first row is then the captured output. Else ``None``: the plain capture
    pass and the two-pass path run, and this input signature is not carried again.
    """
    carriable = _carriable(call, plan)
    if carriable is None:
        return None
    known, chunk = carriable
    batch = options.get("batch_size")
    size = batch if batch is not None else chunk
    if size is None or size < 2:  # no chunk known without a pass to size it; too small to carry
        return None
    made: list = []

    def swap(r, s, t):
        a = r.to_ncs(s.detach())
        b = min(a.shape[1], size - 1)  # b + 2 rows: the two-pass path's 1 + size, at most
        buf = a.new_empty(b + 2, *a.shape[1:])
        buf.copy_(a.expand_as(buf))
        j = torch.arange(b, device=a.device)
        buf[j + 1, j] = 0  # row 1 + j: channel j zeroed
        made.append((b, buf))
        return r.network(r.from_ncs(buf, t), t)

    try:
        cap = capture(call, known, grad=False, swap=swap)
    except (RuntimeError, GradattrError):
        cap = None
    y = None if cap is None else cap.output
    if len(made) != 1 or not isinstance(y, torch.Tensor) or y.ndim < 1 or y.shape[0] != made[0][0] + 2 \
            or not torch.equal(y[0], y[-1]):
        _refuse(call, known)
        return None
    b, buf = made[0]
    cap = cast(Capture, cap)  # its output y was checked above
    return Capture(cap.raw, cap.plan, y[:1].detach(), cap.reduction_name,
                   carried=(y.detach(), b, None if batch is not None else chunk, buf))


def _carriable(call, plan: Plan):
    """``(the known plan, copies per chunk remembered or None)`` when the capture pass may carry
    Ablation-CAM's copies for this call (see :func:`ablation_capture`), else ``None``."""
    known = plan if plan.known else PLANS.get(call, plan)
    if not CARRY or known is None or not known.known or len(known.layers) != 1:
        return None
    lp = known.layers[0]
    reading = cast(Reading, lp.reading)  # a known plan has its readings
    if call.n != 1 or call.inputs or call.forward_kwargs or call.autocast is not None \
            or reading.kind not in ("channels_first", "channels_last") or reading.item is not None:
        # N > 1: N rows of input beside N x (b + 2) of copies; a tail that tiles a term computed
        # from the input would pair rows wrongly, and periodically so (no row check sees it)
        return None
    entries = _TAILS.get(call.net, {})
    entry = entries.get(_tail_key(call, known))
    if entry is None or _tail_key(call, known, refused=True) in entries \
            or entry[1]() is not module_named(call.net, lp.name):
        return None
    return known, entry[0]


def _ablation(view, batch_size, progress):
    y = view.scorer.scores
    return ablation_cam_weights(y, ablation_scores(view, batch_size, progress)).to(view.acts.dtype)


register(Method(
    "ablation_cam", "Ablation-CAM", _ablation, "activations",
    family="perturbation CAM", shared=COMMON + TARGET + LAYER + ("eigen_smooth", "relu"), options=(BATCH_SIZE, PROGRESS),
    capture_with=ablation_capture,
    summary="Ablation-CAM map (Ramaswamy, WACV 2020): ``ReLU(sum_k (y - y_k) / y A^k)``.",
    doc="""``y_k`` is the target score with channel ``k`` of the feature map set to zero. Where
the network allows it only the layers after the feature layer run on the ablated copies;
see :func:`gradattr.methods.ablation_scores`.""",
    example=_TOY + """>>> gradattr.ablation_cam(net, torch.randn(2, 16), 1, upsampling="none").shape
torch.Size([16])
""",
    use_when="gradient-free weights from zeroing each channel; only the layers after the feature "
             "layer run per channel where the network allows it"))




# -- randomness -----------------------------------------------------------------------------
def _seed(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise expected(name, "None (torch's global random state) or an int >= 0", repr(value))
    return value


def _generator(name, value):
    if value is not None and not isinstance(value, torch.Generator):
        raise expected(name, "None or a torch.Generator", repr(value))
    return value


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


SEED = Option("seed", 0, "int | None",
              "seed of the random draws: the same seed gives the same map on a CPU; ``None`` "
              "draws from torch's global random state (``torch.manual_seed``).", _seed)
GENERATOR = Option("generator", None, "torch.Generator | None",
                   "a ``torch.Generator`` to draw from (overrides ``seed``; advanced by the call).",
                   _generator)
SOFTMAX = Option("softmax", True, "bool",
                 "score the softmax probabilities of the output (the paper's choice); ``False``: the "
                 "raw output (use it for a regression or a ``reduction_fn`` on raw scores).", flag)


def make_generator(seed, generator, device) -> torch.Generator | None:
    """The generator a call draws from: ``generator``, a fresh one seeded ``seed``, or ``None`` (global)."""
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


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
    if len(size) not in _LINEAR_MODES:
        raise expected("x", "1, 2 or 3 spatial/time dims for masked-input methods", f"{len(size)}")
    scaled = minmax(acts, 1, 1e-8)
    return F.interpolate(scaled[:, None], size=size, mode=_LINEAR_MODES[len(size)], align_corners=False)


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
    family="perturbation CAM", shared=COMMON + TARGET + LAYER + ("eigen_smooth", "relu"), options=(SAMPLES_SS, STD, SEED, GENERATOR, BATCH_SIZE, PROGRESS),
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
    family="perturbation CAM", shared=COMMON + TARGET + LAYER + ("eigen_smooth", "relu"), options=(SAMPLES_IS, BATCH_SIZE, PROGRESS),
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
    if len(size) not in _LINEAR_MODES:
        raise expected("x", "1, 2 or 3 spatial/time dims for Group-CAM", f"{len(size)}")
    up = F.interpolate(m.flatten(0, 2)[:, None], size=size, mode=_LINEAR_MODES[len(size)],
                       align_corners=False)[:, 0]  # (NKG, *S)
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
    family="perturbation CAM", shared=COMMON + TARGET + LAYER, combine="map",
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
    example=_TOY + """>>> gradattr.group_cam(net, torch.randn(2, 16), 1, groups=2).shape
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
    up = F.interpolate(grids[:, None], size=tuple((cells + 1) * c for c in cell),
                       mode=_LINEAR_MODES[len(spatial)], align_corners=False)[:, 0]
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
    if len(spatial) not in _LINEAR_MODES:
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
    family="perturbation", shared=COMMON + TARGET, combine="map",
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
