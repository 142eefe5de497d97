"""The forward-only interface a method gets: scores of inputs, masked inputs and modified activations.

A :class:`Scorer` is handed to a method (``view.scorer``) with what was captured for one
feature layer. It runs extra forward passes without gradients: :meth:`Scorer.score_inputs`
scores inputs, :meth:`Scorer.score_masked` chunks of masked inputs (Score-CAM, RISE,
occlusion, LIME...), :meth:`Scorer.score_activations` copies of one sample's feature map
with something changed (Ablation-CAM), put back into the network's own layout through the
layer's reading, and :meth:`Scorer.score_points` inputs or replaced outputs of a layer
(integrated gradients' completeness gap). It sizes chunks from its memory budget
(:attr:`Scorer.budget`, a :class:`gradattr.budget.Budget`), shows progress
(:class:`Progress`), holds the target fixed on the unperturbed input
(:attr:`Scorer.target`) and its scores (:attr:`Scorer.scores`).

Its gradient counterpart is :class:`gradattr.score_gradients.ScoreGradients`. Both are frozen for
the call; what a scorer computes lazily (the fixed target, its budget, whether the layers
after the feature layer alone can run on copies) is memoised in one private dict behind the
methods that compute it, never assigned to an attribute.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from . import resize
from .budget import Budget, MemoryWatch, chunk_size
from .capture import Capture, Output, Plan, module_named, run_hooked, thread_guard
from .capture.replay import Replay, replay_for
from .errors import GradattrError, expected
from .layouts import Reading
from .prep import Call
from .targets import Target

#: Give 2-D masked inputs to the network in channels_last memory format (convolutions then
#: run channels_last throughout). Off: on a CPU it gained nothing measurable for Score-CAM on
#: ResNet-18 (benchmarks/bench_perturbation.py); kept as a switch for GPU measurements.
CHANNELS_LAST = False


class Progress:
    """A tqdm bar when asked for (and installed), else a counter that prints only when asked."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar, self.n, self.total, self.enabled, self.desc = None, 0, total, enabled, desc
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc=desc)
            except ImportError:
                pass

    def update(self, k: int) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.enabled:
            print(f"\r{self.desc}: {self.n}/{self.total}", end="", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


#: A layer whose output is scored at or replaced: ``(name, module)``.
Site = tuple


def hooked_output(call: Call, reduction: str | None, x: torch.Tensor, rows: torch.Tensor | None,
                  grad: bool, layer: Site | None = None, replace=None):
    """The scored output of ``net(x)`` (``rows``: whose sample each row of ``x`` is), with the
    outputs of ``layer = (name, module)`` recorded (a copy each) or, with ``replace``, replaced
    by it: ``(y, reduction_name, [layer outputs])``. The shared primitive of
    :meth:`Scorer.score_points` and :meth:`gradattr.score_gradients.ScoreGradients.point_gradients`."""
    mine = thread_guard()
    out = Output(call.net, reduction, False, mine)
    seen: list = []

    def hook(m, i, o):
        if not mine():
            return None
        # a copy: a later in-place op (ReLU(inplace=True)) must not change what was recorded
        seen.append(o.detach().clone() if replace is None and isinstance(o, torch.Tensor) else o)
        return replace

    def install():
        return list(out.handles) + ([layer[1].register_forward_hook(hook)] if layer is not None else [])
    y = run_hooked(call, x, install, grad=grad, rows=rows)
    if layer is not None and len(seen) != 1:
        raise GradattrError(f"feature_layer: expected a layer that runs once per forward pass, "
                            f"but {layer[0]!r} ran {len(seen)} times")
    y, rname = out.finish(y)
    return y, rname, seen


@dataclass(frozen=True, eq=False)
class Scorer:
    """Forward passes without gradients for one call and (optionally) one captured feature layer.

    ``plan`` gives the reduction layer (and, with ``cap``, the feature layers);
    ``cap`` is the capture of the feature layer ``index`` (``None`` for methods
    without a feature layer); ``upsampling`` is the call's (for :meth:`to_input`).
    """

    call: Call
    plan: Plan
    cap: Capture | None = None
    index: int = 0
    upsampling: str = "bicubic"
    #: what the capture pass observed of the memory of a forward pass (or ``None``)
    watched: MemoryWatch | None = None
    # lazily computed, memoised here only (see the module's docstring): "target", "fast",
    # "budget"
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    # -- what is scored ---------------------------------------------------------------------
    @property
    def x(self) -> torch.Tensor:
        """The explained input ``(N, C, *S)`` (on the compute device)."""
        return self.call.x

    @property
    def n(self) -> int:
        return self.call.n

    @property
    def net(self) -> nn.Module:
        """The network, to read from (CAM reads its head); never to be changed."""
        return self.call.net

    @property
    def input_name(self) -> str:
        """How the explained input is named in messages: ``x``, or ``x[i]`` of several."""
        return f"x[{self.call.explain}]" if self.call.inputs else "x"

    @property
    def reduction(self) -> str | None:
        """The reduction layer scored (``None``: the network's output)."""
        return self.plan.reduction

    @property
    def reduction_name(self) -> str:
        """The scored output's name: the capture's, else the reduction layer's, else ``"output"``."""
        if self.cap is not None:
            return self.cap.reduction_name
        return self.plan.reduction or "output"

    @property
    def output(self):
        """The scored output of the captured pass (``None`` without a capture)."""
        return None if self.cap is None else self.cap.output

    @property
    def given_target(self) -> Target:
        """The target as the user gave it (a top-class target is not yet fixed)."""
        return self.call.target

    @property
    def target(self) -> Target:
        """The target with each sample's classes fixed on the unperturbed input (memoised)."""
        if "target" not in self._memo:
            y = self.output
            if y is None:
                y = self.output_of(self.x)
            self._memo["target"] = self.call.target.fixed(y, self.n)
        return self._memo["target"]

    @property
    def scores(self) -> torch.Tensor:
        """``(N, K)`` target scores of the unperturbed input."""
        y = self.output if self.output is not None else self.output_of(self.x)
        return self.call.target.scores(y, self.n).detach()

    # -- forward passes -------------------------------------------------------------------
    def output_of(self, x: torch.Tensor, replace=None, rows: torch.Tensor | None = None,
                  replay: Replay | None = None):
        """The scored output of a no-grad forward pass of ``x``.

        ``replace(o)`` substitutes the captured call of this scorer's feature layer; ``replay``
        records or replays the modules before it (:mod:`gradattr.capture.replay`).
        """
        mine = thread_guard()
        out = Output(self.net, self.reduction, False, mine)
        count = [0]

        def install():
            if replace is None:
                return out.handles
            lp = self.cap.plan.layers[self.index]

            def swap(m, i, o):
                if not mine():
                    return None
                k = count[0]
                count[0] += 1
                return replace(o) if k == lp.call else None
            more = [] if replay is None else [replay.install()]
            return more + out.handles + [module_named(self.net, lp.name).register_forward_hook(swap)]

        return out.finish(run_hooked(self.call, x, install, grad=False, rows=rows))[0]

    def score_inputs(self, x: torch.Tensor, rows: torch.Tensor, softmax: bool = False) -> torch.Tensor:
        """Scores ``(B, K)`` of inputs ``x (B or 1, C, *S)``; ``rows`` says whose target each uses.

        An ``x`` of batch 1 with several ``rows`` is run once and its output shared.
        The pass runs under ``torch.inference_mode`` (no autograd bookkeeping at all);
        the scores come back as ordinary tensors. ``softmax=True`` scores the softmax
        over the output's class axis (axis 1) instead of the raw output: the
        probabilities RISE and Group-CAM use.
        """
        target = self.target  # fixed on the unperturbed input, outside inference mode
        with torch.inference_mode():
            if (self.call.inputs or self.call.forward_kwargs) and x.shape[0] == 1 < len(rows):
                x = x.expand(len(rows), *x.shape[1:])  # one row per sample: the other inputs differ
            y = self.output_of(x, rows=rows if x.shape[0] == len(rows) else None)
            if softmax and isinstance(y, torch.Tensor) and y.ndim >= 2:
                y = torch.softmax(y.float() if y.dtype in (torch.float16, torch.bfloat16) else y, 1)
            if isinstance(y, torch.Tensor) and y.shape[0] == 1 and len(rows) > 1:
                y = y.expand(len(rows), *y.shape[1:])
            s = target.scores(y, len(rows), rows)
        return s.clone()

    def score_masked(self, count: int, make, rows: torch.Tensor, *, batch_size: int | None = None,
                     progress: bool = False, desc: str = "", softmax: bool = False) -> torch.Tensor:
        """Scores ``(count, K)`` of ``count`` perturbed inputs, built and run one chunk at a time.

        The shared primitive of the masked-input methods (Score-CAM, SS-CAM, IS-CAM,
        Group-CAM, RISE). ``make(start, stop)`` returns the perturbed inputs
        ``start..stop-1`` as ``(stop - start, C, *S)``; ``rows (count,)`` says whose
        target each is scored for. Chunks hold ``batch_size`` inputs, or as many as fit
        :data:`gradattr.budget.MEMORY_BUDGET` (at most :data:`gradattr.budget.CPU_CHUNK` on a
        CPU), so the ``count x input`` tensor is never built; the passes run under
        ``torch.inference_mode``; ``progress`` shows a bar over the ``count`` inputs.
        The result does not depend on the chunk size as long as ``make`` does not.
        """
        step = chunk_size(batch_size, self.budget.masked_bytes, self.x.device)
        out = None
        bar = self.progress(count, progress, desc)
        try:
            for start in range(0, count, step):
                stop = min(count, start + step)
                xb = make(start, stop)
                if CHANNELS_LAST and xb.ndim == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                s = self.score_inputs(xb, rows[start:stop], softmax)
                if out is None:
                    out = s.new_empty(count, s.shape[1])
                out[start:stop] = s
                bar.update(stop - start)
        finally:
            bar.close()
        if out is None:
            out = self.scores.new_zeros(0, self.scores.shape[1])
        return out

    def score_points(self, p: torch.Tensor, rows: torch.Tensor | None = None, layer: Site | None = None,
                     target: Target | None = None) -> torch.Tensor:
        """Scores ``(B, K)`` (no gradients) of the inputs ``p``, or, with ``layer = (name, module)``,
        of the rows' own inputs with that layer's output replaced by ``p``; ``target`` defaults to
        :attr:`target`."""
        target = self.target if target is None else target
        with torch.no_grad():
            if layer is None:
                y, _, _ = hooked_output(self.call, self.reduction, p, rows, grad=False)
            else:
                x = self.x if rows is None else self.x[rows]
                y, _, _ = hooked_output(self.call, self.reduction, x, rows, grad=False, layer=layer,
                                        replace=p)
            return target.scores(y, p.shape[0], rows).detach()

    def layer_output(self, layer: Site, x: torch.Tensor, rows: torch.Tensor | None = None):
        """What ``layer = (name, module)`` outputs (a copy, no gradients) for the inputs ``x``."""
        return hooked_output(self.call, self.reduction, x, rows, grad=False, layer=layer)[2][0]

    def attention(self):
        """The attention probabilities of one forward pass without gradients:
        ``(probs [(N, H, L, S)], grid, extra)`` (see
        :func:`gradattr.capture.attention_blocks.observe`)."""
        from .capture.attention_blocks import observe

        with torch.no_grad():
            cap, grid, extra, _, _ = observe(self.call, None, grad=False)
        return cap.probs, grid, extra

    @property
    def budget(self) -> Budget:
        """The memory budget of this scorer's passes: bytes per copy (memoised)."""
        if "budget" not in self._memo:
            self._memo["budget"] = Budget(self.call, self.cap, self.index, self.watched)
        return self._memo["budget"]

    # -- modified activations ---------------------------------------------------------------
    def activation_chunk(self, batch_size: int | None) -> int:
        """Copies per :meth:`score_activations` call, for the path that will run them."""
        if self._memo.get("fast") is False:
            return chunk_size(batch_size, lambda: self.budget.copy_bytes(tail=False), self.x.device)
        return chunk_size(batch_size, lambda: self.budget.copy_bytes(tail=True), self.x.device,
                          cpu_cap=False)

    @property
    def tail_only(self) -> bool:
        """Whether :meth:`score_activations` ran only the layers after the feature layer on the
        copies, its check passed (row 0 reproduced the captured score)."""
        return self._memo.get("fast") is True

    def score_activations(self, copies: torch.Tensor, i: int, batch_size: int | None = None, *,
                          unmodified_first: bool = False, left: int | None = None) -> torch.Tensor:
        """Scores ``(B, K)`` of sample ``i`` with its feature map replaced by ``copies (B, C, *s)``.

        Fast path (used when the network allows it): the network runs on sample
        ``i`` alone and the feature layer's output is replaced by the batch of
        copies, so only the layers after it run on the copies. Networks whose tail
        reads the batch size from the input (EfficientNet-Lite's ``x.view(bs, -1)``)
        break this: the first call therefore runs one unchanged copy with the others and
        keeps the path only if the output has one row per copy and that copy reproduces
        the original score (memoised). Otherwise each copy runs the whole network, in
        chunks of ``batch_size`` (or what fits the budget).

        On the fast path the first pass of sample ``i`` records the modules before the
        feature layer and the later ones replay them (:meth:`replay`); every replayed pass
        carries the unchanged copy and is checked in the same way (a pass that fails its
        check runs again without replaying, and sample ``i`` is not replayed again).

        ``unmodified_first=True``: row 0 of ``copies`` is sample ``i``'s own feature map
        (the caller built it in the same tensor, so no copy is concatenated for the
        check); it serves the check and its score is not returned (``(B - 1, K)``).
        ``left``: how many of sample ``i``'s copies later calls will score (``None``: not known);
        nothing is recorded for passes that will not come.
        """
        fast = self._memo.get("fast")
        if fast is not False:
            rep = self.replay(i, create=left is None or left > 0)
            rep = None if rep is None or rep.mode == "off" else rep
            replaying = rep is not None and rep.mode == "replay"
            check = fast is None or replaying
            if check and not unmodified_first:
                own = cast(Capture, self.cap).acts[self.index][i:i + 1]  # feature maps: captured
                copies, unmodified_first = torch.cat([own, copies]), True
            run = copies if check else copies[1:] if unmodified_first else copies
            s, ok = self._tail_scores(run, i, check, rep)
            if replaying and not ok:  # the replayed pass failed its check: without replaying
                cast(Replay, rep).mode = "off"
                s, ok = self._tail_scores(copies, i, True, None)
            if fast is None:
                self._memo["fast"] = ok
            if ok:
                return s
        own = copies[:1] if unmodified_first else cast(Capture, self.cap).acts[self.index][i:i + 1]
        rest = copies[1:] if unmodified_first else copies
        step = chunk_size(batch_size, lambda: self.budget.copy_bytes(tail=False), self.x.device)
        return torch.cat([self._whole_scores(own, rest[j:j + step], i,
                                             None if left is None else left + max(len(rest) - j - step, 0))
                          for j in range(0, len(rest), step)])

    def replay(self, i: int, create: bool = True) -> Replay | None:
        """The modules before the feature layer recorded for sample ``i``'s passes that run only
        the layers after it (the capture pass's own recording for N = 1, else made, with
        ``create``, for the first such pass; memoised), or ``None`` where there is none or they
        cannot be replayed."""
        key = ("replay", i)
        if key not in self._memo:
            cap = cast(Capture, self.cap)
            rep = cap.replay if self.n == 1 else None
            if rep is None and not create:
                return None
            if rep is None:
                lp = cap.plan.layers[self.index]
                rep = replay_for(self.net, lp.name, lp.call, thread_guard())
            self._memo[key] = rep
        return self._memo[key]

    def replays(self, i: int) -> bool:
        """Whether sample ``i``'s next pass that runs only the layers after the feature layer
        replays the modules before it, or records them: the tail-only path is not refused, and
        the last replayed pass skipped 90 % of their parameters' worth. Then a pass costs little
        more than the layers after the feature layer, and the copies may come in small chunks."""
        rep = self.replay(i, create=False)
        return rep is not None and self._memo.get("fast") is not False \
            and (rep.mode == "record" or rep.works)

    def _layer_raw(self, i: int, b: int) -> torch.Tensor:
        raw = cast(Capture, self.cap).raw[self.index].detach()
        return raw[i:i + 1].expand(b, *raw.shape[1:])

    def _tail_scores(self, copies: torch.Tensor, i: int, check: bool, replay: Replay | None = None):
        """Scores of ``copies`` through the layers after the feature layer; with ``check`` row 0
        is the sample's own map, compared with its captured score and dropped: ``(s, ok)``."""
        reading = cast(Reading, cast(Capture, self.cap).plan.layers[self.index].reading)
        b = copies.shape[0]
        rows = torch.full((b,), i, device=copies.device)
        raw = reading.from_ncs(copies, self._layer_raw(i, b))
        try:
            y = self.output_of(self.x[i:i + 1], replace=lambda o: raw, rows=rows[:1], replay=replay)
            if replay is not None and replay.mode == "record":
                replay.settle()
            if isinstance(y, torch.Tensor) and y.shape[0] != b:
                raise GradattrError(f"net: expected an output with one row per copy ({b}) when only "
                                    f"the layers after the feature layer run on the copies, got "
                                    f"{y.shape[0]} rows; the network reads its batch size from its input")
            s = self.target.scores(y, b, rows).detach()
        except (RuntimeError, GradattrError):
            if check:
                return None, False
            raise
        if check:
            if not self._reproduces(s[0], i):
                return None, False
            s = s[1:]
        return s, True

    def _whole_scores(self, own: torch.Tensor, copies: torch.Tensor, i: int, left: int | None) -> torch.Tensor:
        """Scores of ``copies`` in one whole pass of sample ``i`` repeated. Where the modules before
        the feature layer can be replayed, the first pass of each size records them (when ``left``
        copies still make a pass of this size) and the later ones replay them; these carry the unmodified
        map ``own`` as row 0, and a replayed pass whose row 0 does not reproduce the captured
        score runs again without replaying (and that size is not replayed again)."""
        key = ("whole", i, copies.shape[0] + 1)
        if key not in self._memo and (left is None or left >= copies.shape[0]):
            lp = cast(Capture, self.cap).plan.layers[self.index]
            self._memo[key] = replay_for(self.net, lp.name, lp.call, thread_guard())
        rep = self._memo.get(key)
        if rep is None or rep.mode == "off":
            return self._full_scores(copies, i)
        s = self._full_scores(torch.cat([own, copies]), i, rep)
        if rep.mode == "record":
            rep.settle()
        elif not self._reproduces(s[0], i):
            rep.mode = "off"
            return self._full_scores(copies, i)
        return s[1:]

    def _full_scores(self, copies: torch.Tensor, i: int, replay: Replay | None = None) -> torch.Tensor:
        b = copies.shape[0]
        reading = cast(Reading, cast(Capture, self.cap).plan.layers[self.index].reading)
        rows = torch.full((b,), i, device=copies.device)
        x = self._memo.get(("x", i, b)) if replay is not None else None
        if x is None:
            x = self.x[i:i + 1].expand(b, *self.x.shape[1:]).contiguous()
            if replay is not None:  # (the same tensor in every pass: its arguments compare by identity)
                self._memo[("x", i, b)] = x
        y = self.output_of(x, replace=lambda o: reading.from_ncs(copies.to(o.dtype), o), rows=rows,
                           replay=replay)
        return self.target.scores(y, b, rows).detach()

    def _reproduces(self, s0: torch.Tensor, i: int) -> bool:
        """Whether ``s0``, the score of sample ``i``'s unmodified map in a later pass, is its
        captured score (rtol 1e-4: a pass over more rows may round otherwise)."""
        y_i = self.scores[i]
        scale = float(y_i.abs().max().clamp(min=1))
        return torch.allclose(s0, y_i.to(s0.dtype), rtol=1e-4, atol=1e-4 * scale)

    # -- resizing and progress ----------------------------------------------------------------
    def to_input(self, maps: torch.Tensor) -> torch.Tensor:
        """``maps (N, K, *s)`` resized to the input's size with the call's upsampling."""
        if self.upsampling == "none":
            raise expected("upsampling", "'bicubic' or 'nearest' (this method needs the map at the "
                           "input's resolution)", "'none'")
        return resize.imresize(maps, tuple(self.x.shape[2:]), self.upsampling)

    def progress(self, total: int, enabled: bool, desc: str) -> Progress:
        return Progress(total, enabled, desc)


__all__ = ["Scorer", "Progress", "hooked_output", "Site", "CHANNELS_LAST"]
