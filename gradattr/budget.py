"""The memory budget of a call's extra forward passes: how many copies go in one chunk.

:func:`chunk_size` sizes chunks of perturbed copies from :data:`MEMORY_BUDGET`; a
:class:`Budget` (``scorer.budget``) estimates the bytes one copy holds (a masked input,
a modified feature map, a point of a gradient pass) from the bytes of module outputs
alive at once in a forward pass of one sample, observed in the capture pass when the
engine watched it (:class:`MemoryWatch`), else once in a pass of its own.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from .capture import Capture, LayerPlan, Plan, eager, module_named, run_hooked, thread_guard
from .errors import GradattrError
from .layouts import Reading
from .prep import Call
from .targets import tensors_of

#: Memory that one chunk of perturbed copies may use when ``batch_size=None``.
MEMORY_BUDGET = 512 * 2**20
#: What a forward pass of one copy holds, as a multiple of what is observed
#: (:meth:`Budget.forward_bytes`: the module outputs alive at once): the rest is each
#: module's own temporaries and workspaces, which no hook sees.
FORWARD_MARGIN = 2
#: Temporaries of building one masked input, in tensors of the input's size (the gathered
#: sample, the product, the copy the network gets) and of one channel of it (the upsampled
#: mask and its scaled copies).
MASKED_INPUTS, MASKS = 3, 4
#: Copies of the feature map one modified copy holds on the way in when the network's layout
#: of it is a tensor of its own (a token reading): the modified copy (written into the chunk's
#: buffer) and that layout. A channels-first or channels-last map is handed over as a view of
#: the buffer: one copy.
FEATURE_COPIES = 2
#: The estimate per copy, as a multiple of the input's bytes, when the forward pass cannot be
#: observed on one sample (the network refuses a batch of one).
FORWARD_FACTOR = 16
#: At most this many copies per forward pass on a CPU when ``batch_size=None`` (the memory
#: budget still applies). Score-CAM on ResNet-18 (112 px, one loaded 2-core run): 64 copies
#: per pass took 0.73 of the time of 16 (benchmarks/bench_perturbation.py).
CPU_CHUNK = 64
#: On a CPU, the copies of a pass that replays the layers before the feature layer (Ablation-CAM's
#: later chunks, :mod:`gradattr.capture.replay`) come in chunks of about this many bytes, and at
#: least :data:`SMALL_ROWS` rows: a chunk the caches hold is filled and read by the layers after
#: the feature layer 2-2.5x faster than one of hundreds of MB of fresh pages (ResNet-50's
#: ``layer4`` at 224 px; benchmarks/RESULTS.md, "chunking the copies").
SMALL_CHUNK, SMALL_ROWS = 16 * 2**20, 64


def small_chunk(row_bytes: int, device: torch.device) -> int | None:
    """Rows per chunk of copies of ``row_bytes`` each for passes that replay the layers before the
    feature layer: about :data:`SMALL_CHUNK` bytes on a CPU; ``None`` (the budget's chunk) elsewhere."""
    if device.type != "cpu":
        return None
    return max(SMALL_ROWS, SMALL_CHUNK // max(row_bytes, 1))


def chunk_size(batch_size: int | None, per_copy, device: torch.device, cpu_cap: bool = True) -> int:
    """Copies per forward pass: ``batch_size``, or as many copies of ``per_copy`` bytes (an int,
    or a function returning it, called only when needed) as fit :data:`MEMORY_BUDGET` (at most
    :data:`CPU_CHUNK` on a CPU with ``cpu_cap``)."""
    if batch_size is not None:
        return batch_size
    per_copy = per_copy() if callable(per_copy) else per_copy
    fit = max(1, MEMORY_BUDGET // max(per_copy, 1))
    return min(fit, CPU_CHUNK) if cpu_cap and device.type == "cpu" else fit


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class MemoryWatch:
    """The bytes of module outputs alive at once, observed in a pass run for something else.

    Handed to :func:`gradattr.capture.capture` (``watch=``), it hooks every module of the
    network for that pass (first, in the pass's thread only) and records, as
    :meth:`Budget.forward_bytes` would observe in a pass of its own, the most bytes of
    module outputs alive at once over the whole pass and from each call of each feature
    layer on (the layers that run on modified copies). Each output's storage is held by a
    weak reference, so what the network has freed stops counting. The capture pass of a
    perturbation CAM then sizes its chunks without another forward pass.
    """

    def __init__(self, net: nn.Module, rows: int):
        self.net, self.rows, self.ran = net, rows, False
        self.full = 0
        self.tail: dict[tuple[str, int | None], int] = {}  # looked up with a plan's call (None: not counted)

    def __call__(self, plan: Plan, mine) -> list:
        features: dict[int, list[str]] = {}
        for lp in plan.layers:
            features.setdefault(id(module_named(self.net, lp.name)), []).append(lp.name)
        live: dict[int, tuple] = {}
        calls: dict[str, int] = {}
        starts: dict[tuple[str, int], int] = {}
        seq = [0]
        self.full, self.tail, self.ran = 0, {}, False

        def hook(m: nn.Module, i, o):
            if not mine():
                return None
            self.ran = True
            here = features.get(id(m), ())
            for name in here:  # a feature layer's call: count from its output on
                k = calls.get(name, 0)
                calls[name] = k + 1
                starts[(name, k)] = seq[0]
            for t in tensors_of(o):
                st = t.untyped_storage()
                key = st.data_ptr()
                if here or key not in live or live[key][0]() is None:
                    live[key] = (weakref.ref(t), st.nbytes(), seq[0])
                    seq[0] += 1
            for key in [k for k, (r, _, _) in live.items() if r() is None]:
                del live[key]
            self.full = max(self.full, sum(b for _, b, _ in live.values()))
            for site, start in starts.items():
                now = sum(b for _, b, q in live.values() if q >= start)
                self.tail[site] = max(self.tail.get(site, 0), now)
            return None

        hook = eager(hook)
        return [m.register_forward_hook(hook) for m in self.net.modules()]

    def per_sample(self, tail: bool, plan: Plan, index: int) -> int | None:
        """The observed bytes for one sample (the pass's ``rows`` share them evenly); ``None``
        when this pass did not observe them (another plan, a feature call that did not run)."""
        if not self.ran or self.rows < 1:
            return None
        if not tail:
            return -(-self.full // self.rows)
        lp = plan.layers[index]
        peak = self.tail.get((lp.name, lp.call))
        return None if peak is None else -(-peak // self.rows)


@dataclass(frozen=True, eq=False)
class Budget:
    """Bytes per copy for one call and (optionally) one captured feature layer ``index`` of
    ``cap``; ``watched`` is what the capture pass observed of a forward pass (or ``None``)."""

    call: Call
    cap: Capture | None = None
    index: int = 0
    watched: MemoryWatch | None = None
    # the observed bytes of a forward pass, memoised here only: ("peak", tail)
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def x(self) -> torch.Tensor:
        return self.call.x

    @property
    def net(self) -> nn.Module:
        return self.call.net

    def masked_bytes(self) -> int:
        """Bytes one masked input holds while it is built and scored: the input-sized tensors
        and one-channel masks it is built from, and the network's forward pass of it."""
        x = self.x[0]
        mask = x[0].numel() * max(x.element_size(), 4)
        forward = self.forward_bytes(tail=False)
        if forward is None:
            return nbytes(x) * FORWARD_FACTOR
        return MASKED_INPUTS * nbytes(x) + MASKS * mask + FORWARD_MARGIN * forward

    def copy_bytes(self, tail: bool) -> int:
        """Bytes one modified feature map holds (:meth:`gradattr.scorer.Scorer.score_activations`):
        its copies on the way in and the forward pass of the layers after the feature layer
        (``tail``) or of the whole network on the sample it belongs to.

        The tail's observed bytes count the feature layer's output, which the modified copy
        replaces in that pass: it is counted once, as the copy, and the margin for what no hook
        sees goes to the layers that compute (:data:`FORWARD_MARGIN`)."""
        cap = cast(Capture, self.cap)  # feature maps: captured, their reading settled
        one = nbytes(cap.acts[self.index][0])
        kind = cast(Reading, cap.plan.layers[self.index].reading).kind
        feature = one * (1 if kind in ("channels_first", "channels_last") else FEATURE_COPIES)
        forward = self.forward_bytes(tail)
        if forward is None:
            return nbytes(self.x[0]) * FORWARD_FACTOR + feature
        if tail:
            return feature + FORWARD_MARGIN * max(forward - one, 0)
        return feature + nbytes(self.x[0]) + FORWARD_MARGIN * forward

    def point_bytes(self, point: torch.Tensor) -> int:
        """Bytes one point ``point (*element)`` of a gradient pass holds: the forward pass's
        outputs and their gradients, the point itself and its gradient."""
        size = point.numel() * point.element_size()
        forward = self.forward_bytes()
        return 2 * FORWARD_MARGIN * forward + 2 * size if forward else FORWARD_FACTOR * size

    def forward_bytes(self, tail: bool = False) -> int | None:
        """The most bytes of module outputs alive at once in a forward pass of one sample.

        Observed in the capture pass when it was watched (:class:`MemoryWatch`), else once per
        budget (memoised; one per scorer) in a pass of its own, on the first sample without gradients: a hook on
        every module records each output's storage with a weak reference, so what the network
        has freed stops counting. ``tail=True`` counts from the feature layer's output on
        (the layers that run on modified copies). ``None`` when the network refuses a
        batch of one.
        """
        key = ("peak", tail)
        if key not in self._memo and self.watched is not None and self.cap is not None:
            seen = self.watched.per_sample(tail, self.cap.plan, self.index)
            if seen is not None:  # observed in the capture pass: no pass of its own
                self._memo[key] = seen
        if key not in self._memo:
            try:
                self._memo[key] = self._observe(tail)
            except (RuntimeError, GradattrError):
                self._memo[key] = None
        return self._memo[key]

    def _observe(self, tail: bool) -> int:
        mine = thread_guard()
        live: dict[int, tuple] = {}
        state = {"peak": 0, "on": not tail, "calls": 0}
        lp = cast(Capture, self.cap).plan.layers[self.index] if tail else None
        feature = module_named(self.net, lp.name) if lp is not None else None  # None iff not tail

        def hook(m: nn.Module, i, o):
            if not mine():
                return None
            if m is feature:
                state["calls"] += 1
                if state["calls"] - 1 == cast(LayerPlan, lp).call:  # feature is set: so is lp
                    state["on"] = True
                    live.clear()
            if not state["on"]:
                return None
            for t in tensors_of(o):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key not in live or live[key][0]() is None:
                    live[key] = (weakref.ref(t), st.nbytes())
            for key in [k for k, (r, _) in live.items() if r() is None]:
                del live[key]
            state["peak"] = max(state["peak"], sum(b for _, b in live.values()))
            return None

        def install():
            return [m.register_forward_hook(hook) for m in self.net.modules()]

        with torch.inference_mode():
            run_hooked(self.call, self.x[:1], install, grad=False)
        return state["peak"]
