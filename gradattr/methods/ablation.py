"""Ablation-CAM: channel weights from the score drop when each channel of the feature map is zeroed.

Besides the weights (:func:`ablation_cam_weights`) and the scores of the ablated copies
(:func:`ablation_scores`), this module holds Ablation-CAM's carrying capture pass
(:func:`ablation_capture`): where a network's layers after the feature layer were found to
score copies of a feature map as whole passes do, the capture pass itself carries the first
chunk of ablated copies past the feature layer, so the layers before it run once per call.
"""
from __future__ import annotations

import threading
import weakref
from typing import cast

import torch
from einops import rearrange

from ..budget import nbytes, small_chunk
from ..capture import PLANS, Capture, Plan, capture, module_named, thread_guard
from ..capture.replay import Replay, replay_for, version_of
from ..errors import GradattrError
from ..layouts import Reading
from ..options import COMMON, LAYER, TARGET
from ..registry import Method, register
from .common import BATCH_SIZE, PROGRESS, TOY as _TOY


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
    feature layer where the network allows it, and from a sample's second pass on replays the
    layers before it (:mod:`gradattr.capture.replay`; then the copies come in small chunks on
    a CPU: :func:`_chunk`). Each chunk of copies is written into one buffer, reused from chunk
    to chunk (:class:`Copies`): row 0 is the sample's own map (the scorer's check of the fast
    path and of a replayed pass), row ``1 + j`` the map with channel ``start + j`` zeroed. The ablated value
    is 0, as in the paper (pytorch-grad-cam uses 0 when the layer's minimum is 0 and
    ``min - 1e7`` otherwise).
    """
    a, scorer = view.acts, view.scorer
    n, c = a.shape[:2]
    y = scorer.scores
    out = y.new_zeros(n, c, y.shape[1])
    bar = scorer.progress(n * c, progress, "Ablation-CAM")
    first, chunk, copies = _carried(scorer, out, a)
    replayed = _replayed(scorer.call, scorer.cap.plan)[0] if scorer.cap is not None else None
    try:
        bar.update(n * first)
        for i in range(n):
            start = first
            while start < c:
                b = min(c - start, _chunk(scorer, i, batch_size, chunk, c - start, a[0], replayed))
                out[i, start:start + b] = scorer.score_activations(
                    copies.chunk(i, start, b), i, batch_size, unmodified_first=True, left=c - start - b)
                start += b
                bar.update(b)
    finally:
        bar.close()
    if not first and scorer.tail_only and scorer.cap is not None and len(scorer.cap.plan.layers) == 1:
        # the budget's chunk when it was computed for this call (else no pass only to size it)
        _remember(scorer.call, scorer.cap.plan, scorer.activation_chunk(None) if batch_size is None else None)
    if scorer.cap is not None:
        made = [scorer.replay(i, create=False) for i in range(n)]
        replays = all(scorer.replays(i) for i in range(n)) \
            if batch_size is None and any(made) else None  # (None: nothing learnt)
        _remember_replayed(scorer.call, scorer.cap.plan, replays, c, nbytes(a[0]))
    return rearrange(out, "n c k -> n k c")


def _chunk(scorer, i: int, batch_size: int | None, chunk: int | None, left: int, row: torch.Tensor,
           replayed: bool | None) -> int:
    """Copies in sample ``i``'s next pass (``left`` to do): ``batch_size``, the remembered or the
    budget's chunk, or fewer (:func:`~gradattr.budget.small_chunk`) where the pass replays the
    modules before the feature layer or records them (unless this network's replaying failed on
    its last call). Nothing is recorded for a pass that takes all that is left."""
    size = chunk or scorer.activation_chunk(batch_size)
    small = None if batch_size is not None else small_chunk(nbytes(row), row.device)
    if small is None or left <= min(size, small):
        return size
    rep = scorer.replay(i)
    if not scorer.replays(i) or replayed is False and rep is not None and rep.mode == "record":
        return size
    return min(size, small)


class Copies:
    """The buffer of a sample's ablated copies, reused from chunk to chunk: row 0 is the sample's
    own feature map, row ``1 + j`` the map with channel ``start + j`` zeroed.

    A sample's first chunk is filled whole (a copy of its map per row); a later one only puts
    back the channels the last one zeroed and zeroes its own, where the buffer's version counter
    says nothing wrote it since (the layers after the feature layer read the chunk: an in-place
    op there writes it, and the next chunk is filled whole again). ``state``: ``(sample, start,
    b, rows, version)``: rows ``0 .. rows - 1`` hold the sample's map, rows ``1 .. b`` with
    channels ``start .. start + b - 1`` zeroed, as the buffer was at ``version``.
    """

    def __init__(self, a: torch.Tensor, buf: torch.Tensor | None = None, state: tuple | None = None):
        self.a, self.buf, self.state = a, a.new_empty(0) if buf is None else buf, state

    def chunk(self, i: int, start: int, b: int) -> torch.Tensor:
        """Rows ``0 .. b`` for sample ``i``: its map, then channels ``start .. start + b - 1`` zeroed."""
        a, buf, state = self.a, self.buf, self.state
        if buf.shape[0] < 1 + b:
            buf, state = a.new_empty(1 + b, *a.shape[1:]), None
        if PATCH and state is not None and state[0] == i and state[3] >= 1 + b \
                and state[4] is not None and version_of(buf) == state[4]:
            _, s0, k, rows, _ = state
            r = torch.arange(1, 1 + k, device=a.device)
            buf[r, r + (s0 - 1)] = a[i, s0:s0 + k]  # the last chunk's channels put back
        else:
            buf[:1 + b].copy_(a[i:i + 1].expand(1 + b, *a.shape[1:]))
            rows = 1 + b
        r = torch.arange(1, 1 + b, device=a.device)
        buf[r, r + (start - 1)] = 0  # row 1 + j: channel start + j
        self.buf, self.state = buf, (i, start, b, rows, version_of(buf))
        return buf[:1 + b]


#: Fill a later chunk of copies by putting back the last chunk's channels (:class:`Copies`);
#: off: every chunk is filled whole.
PATCH = True


def _carried(scorer, out: torch.Tensor, a: torch.Tensor) -> tuple:
    """The scores of the copies the capture pass carried, written into ``out``: ``(channels
    done per sample, copies per later chunk, the Copies to fill)``; ``(0, None, empty Copies)``
    when it carried none. The carrying pass's buffer is reused for the later chunks (its pages
    are already touched: filling a fresh buffer of hundreds of MB is mostly page faults)."""
    carried = scorer.cap.carried if scorer.cap is not None else None
    if carried is None:
        return 0, None, Copies(a)
    y, b, chunk, buf, version = carried
    n, m = out.shape[0], b + 2
    rows = torch.arange(n, device=out.device).repeat_interleave(m)
    s = scorer.target.scores(y, n * m, rows).detach().view(n, m, -1)
    out[:, :b] = s[:, 1:1 + b].to(out.dtype)
    return b, chunk, Copies(a, buf, (0, 0, b, b + 2, version))


#: Networks (weakly) whose layers after the feature layer were found to score copies of a
#: sample's feature map as whole passes do: the two-pass path's check passed on a first call
#: (:meth:`~gradattr.scorer.Scorer.score_activations`). Per (input signature, plan): the copies
#: per pass the memory budget allowed then, and the feature module (a weak reference, so a
#: replaced module is not trusted); ``None`` once a carrying pass failed its check.
_TAILS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TAILS_LOCK = threading.Lock()
#: Networks (weakly), per (input signature, plan): whether their later passes replayed the modules
#: before the feature layer on the last call (then the copies come in small chunks from the
#: capture pass's on; not: the pass that records them takes the usual chunk).
_REPLAYED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
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


def _replayed(call, plan: Plan) -> tuple:
    """What this input signature's last call learnt: ``(whether its passes replayed the modules
    before the feature layer or None, the feature map's channels, one copy's bytes)``; all
    ``None`` before a first call."""
    return _REPLAYED.get(call.net, {}).get(_tail_key(call, plan), (None, None, None))


def _remember_replayed(call, plan: Plan, replays: bool | None, channels: int, row: int) -> None:
    with _TAILS_LOCK:
        entries = _REPLAYED.setdefault(call.net, {})
        key = _tail_key(call, plan)
        old = entries.get(key, (None,))[0]
        entries[key] = (old if replays is None else replays, channels, row)


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
    rows, rep = _carried_rows(call, known, size, batch)
    made: list = []

    def swap(r, s, t):
        a = r.to_ncs(s.detach())
        b = min(a.shape[1], rows - 1)  # b + 2 rows: the two-pass path's 1 + size, at most
        buf = a.new_empty(b + 2, *a.shape[1:])
        buf.copy_(a.expand_as(buf))
        j = torch.arange(b, device=a.device)
        buf[j + 1, j] = 0  # row 1 + j: channel j zeroed
        made.append((b, buf, version_of(buf)))
        return r.network(r.from_ncs(buf, t), t)

    try:
        cap = capture(call, known, grad=False, swap=swap,
                      watch=None if rep is None else lambda plan, mine: [cast(Replay, rep).install()])
    except (RuntimeError, GradattrError):
        cap = None
    y = None if cap is None else cap.output
    if len(made) != 1 or not isinstance(y, torch.Tensor) or y.ndim < 1 or y.shape[0] != made[0][0] + 2 \
            or not torch.equal(y[0], y[-1]):
        _refuse(call, known)
        return None
    b, buf, version = made[0]
    cap = cast(Capture, cap)  # its output y was checked above
    if rep is not None:
        rep.settle()
    return Capture(cap.raw, cap.plan, y[:1].detach(), cap.reduction_name,
                   carried=(y.detach(), b, None if batch is not None else chunk, buf, version), replay=rep)


def _carried_rows(call, known: Plan, size: int, batch: int | None) -> tuple:
    """``(rows the capture pass carries, a Replay recording that pass or None)``: a small chunk
    where this network's passes replayed on its last call (with ``batch_size`` None), else
    ``size``; a recording only where copies will be left for later passes (or their number is
    not known yet)."""
    replays, channels, row = _replayed(call, known)
    small = small_chunk(row, call.x.device) if batch is None and replays is True and row else None
    rows = size if small is None else min(size, max(2, small))
    if channels is not None and channels <= rows - 1:
        return rows, None
    rep = replay_for(call.net, known.layers[0].name, known.layers[0].call, thread_guard())
    return (rows if rep is not None else size), rep


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
