"""Hooks and forward passes: which layers to capture (the :class:`Plan`) and capturing them.

A :class:`Plan` says which call of which module is each feature layer, how its
tensor is read (:mod:`gradattr.layouts`) and which layer is scored. It is
immutable, resolved once per call and remembered per (model, input signature,
layer options), weakly: the cache never keeps a model alive.

How a capture keeps the cost at one forward pass plus the backward of the tail:

* With a known plan, the forward runs under ``torch.no_grad()`` until the
  feature layer; its hook turns the output into a fresh leaf that requires
  grad and switches grad mode on, so autograd records the tail only.
* Without one (the automatic layer, first call), every module is hooked to find
  the last tensor with a feature reading (see :func:`gradattr.layouts.read`) on
  which the score depends, while a :class:`gradattr.geometry.Observer` records the
  grids and attention modules of the same pass; the graph is recorded from the
  start because the layer is known only at the end, and the gradient is still
  taken for the tail only.
* A feature hook returns a clone of what it captured, so a later in-place op
  (``ReLU(inplace=True)``) cannot change the captured activations.

Every hook acts only for the thread that installed it, so another thread's
forward pass of the same model (explained or not) never sees it.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from dataclasses import dataclass, replace

import torch
from torch import nn

from . import layouts
from .errors import GradattrError
from .geometry import Observer
from .layouts import Reading
from .prep import Call
from .targets import tensors_of


@dataclass(frozen=True)
class LayerPlan:
    name: str
    call: int | None  # which call of the module (0-based); None: the last, counted on the first pass
    reading: Reading | None  # None: read from the first captured tensor


@dataclass(frozen=True)
class Plan:
    """Which tensors a call captures: feature layers (empty: automatic) and the reduction layer."""

    layers: tuple[LayerPlan, ...]
    reduction: str | None

    @property
    def known(self) -> bool:
        return bool(self.layers) and all(lp.call is not None and lp.reading is not None
                                         for lp in self.layers)

    @property
    def names(self) -> list[str]:
        return [lp.name for lp in self.layers]


@dataclass
class Capture:
    """What one forward pass captured: per feature layer the raw tensor and its reading."""

    raw: list[torch.Tensor]  # as the network produced them (leaves when the tail was recorded)
    plan: Plan
    output: object  # the reduction layer's output (None when the pass stopped early)
    reduction_name: str
    #: what a pass that carried a method's copies past the feature layer gave besides (``swap=``
    #: of :func:`capture`; Ablation-CAM's scores of its first chunk), else ``None``
    carried: object = None

    @property
    def acts(self) -> list[torch.Tensor]:
        """Every feature layer as ``(N, C, *S)``, detached."""
        return [lp.reading.to_ncs(r.detach()) for r, lp in zip(self.raw, self.plan.layers)]


class _NotCalled(GradattrError):
    """A planned feature layer did not run (or not as often) for this input."""


class _Captured(Exception):
    """Raised by a feature hook to end a forward pass early, once everything is captured."""


class eager:
    """``fn`` called eagerly, also inside a ``torch.compile``d model (a hook reads or swaps
    tensors; Dynamo must not trace it nor bake in what it saw). Wrapping costs one small
    object per hook, not a new disabled function per call."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    @torch.compiler.disable
    def __call__(self, *args):
        return self.fn(*args)


class _Mine:
    __slots__ = ("owner",)

    def __init__(self):
        self.owner = threading.get_ident()

    @torch.compiler.disable  # Dynamo cannot trace threading.get_ident (and must not bake it in)
    def __call__(self) -> bool:
        return threading.get_ident() == self.owner


def _mine():
    """A guard for hooks: true only in the thread that created it (run eagerly under
    ``torch.compile``)."""
    return _Mine()


def _module(net: nn.Module, name: str) -> nn.Module:
    return net.get_submodule(name)


def _lookup(net: nn.Module, name: str) -> nn.Module | None:
    """The submodule called ``name`` (its path walked), or ``None`` when there is none now."""
    try:
        return net.get_submodule(name)
    except AttributeError:
        return None


class _Output:
    """Hooks that find the scored output: the reduction layer's, or the network's (named)."""

    def __init__(self, net: nn.Module, reduction: str | None, name_output: bool, mine):
        self.reduction, self.value, self.handles = reduction, None, []
        self.names: dict[int, tuple[str, weakref.ref]] = {}
        if reduction is not None:
            def keep(m, i, o):
                if mine():
                    self.value = (o,)
            self.handles.append(_module(net, reduction).register_forward_hook(keep))
        elif name_output:
            def hook_for(name):
                def hook(m, i, out):
                    if mine() and isinstance(out, torch.Tensor):
                        self.names[id(out)] = (name, weakref.ref(out))
                return eager(hook)
            self.handles += [m.register_forward_hook(hook_for(nm)) for nm, m in net.named_modules() if nm]

    def finish(self, output):
        """``(y, name)`` of the scored output."""
        if self.reduction is None:
            name, ref = self.names.get(id(output), ("output", None))
            return output, name if ref is not None and ref() is output else "output"
        if self.value is None:
            raise GradattrError(f"reduction_layer: expected a layer that runs in the forward pass, "
                                f"but {self.reduction!r} was never called for this input")
        return self.value[0], self.reduction


def run_hooked(call: Call, x: torch.Tensor, handles_for, grad: bool, rows: torch.Tensor | None = None):
    """``net(x)`` with the hooks ``handles_for()`` returns installed, removed in ``finally``.

    With several inputs the call's other inputs come along (:meth:`Call.forward`;
    ``rows``: whose sample each row of ``x`` is)."""
    handles = []
    try:
        handles = handles_for()
        with torch.set_grad_enabled(grad), call.precision():
            return call.forward(x, rows)
    finally:
        for h in handles:
            h.remove()


def capture(call: Call, plan: Plan, grad: bool, stop: bool = False, name_output: bool = False,
            x: torch.Tensor | None = None, watch=None, swap=None) -> Capture:
    """One forward pass capturing ``plan``'s feature layers and the scored output.

    An automatic plan (no layers) is resolved by this pass and remembered.
    ``stop=True`` ends the pass once the feature layers are captured (no score
    needed, Eigen-CAM); it takes effect once the plan is known. ``watch(plan, mine)``, if
    given, returns more hooks for the pass with a known or named plan (installed first,
    removed with the others): what a method wants to observe of the same pass
    (:class:`gradattr.scorer.MemoryWatch`); the first pass of an automatic layer runs
    without them. ``swap(reading, stored, out)``, if given (a known plan only), returns
    what the network continues with after the feature layer instead of its own output
    (the copies of Ablation-CAM, :func:`gradattr.methods.perturbation.ablation_capture`).
    """
    x = call.x if x is None else x
    asked, remembered = plan, False
    if not plan.layers:
        cached = PLANS.get(call, plan)
        remembered = cached is not None
        if cached is None:
            cap, fresh = _capture_auto(call, plan, grad, name_output, x)
            PLANS.put(call, plan, cap.plan)
            if fresh:
                return cap
            # The chosen tensor was changed in place after it was recorded: run again with
            # the plan, which protects it with a clone.
            cached = cap.plan
        plan = cached
    elif not plan.known:
        plan = PLANS.get(call, plan) or plan
    try:
        return _capture_planned(call, plan, grad, stop and plan.known, name_output, x, watch=watch,
                                swap=swap)
    except _NotCalled:
        if not remembered:
            raise
    # A remembered automatic layer that this input does not reach (a routed network took
    # another branch): choose again for this input, as on a first call.
    cap, fresh = _capture_auto(call, asked, grad, name_output, x)
    PLANS.put(call, asked, cap.plan)
    return cap if fresh else _capture_planned(call, cap.plan, grad, stop, name_output, x)


def _capture_planned(call: Call, plan: Plan, grad: bool, stop: bool, name_output: bool,
                     x: torch.Tensor, record: bool = False, watch=None, swap=None) -> Capture:
    """Hooks on the planned layers; the forward runs under no_grad until the first of them.

    ``record=True`` records the whole graph from the input instead (the fallback
    for networks whose tail turns grad mode off again, such as reentrant
    ``torch.utils.checkpoint``).
    """
    n, spatial, mine = x.shape[0], tuple(x.shape[2:]), _mine()
    slots: list = [None] * len(plan.layers)
    readings = [lp.reading for lp in plan.layers]
    # the grids of this pass, observed while a reading is still to be bound
    obs = Observer(call.net, n, spatial, mine) if not all(r is not None and r.bound for r in readings) else None
    counts = [0] * len(plan.layers)
    out = _Output(call.net, plan.reduction, name_output and not stop, mine)

    def feature_hook(i, lp):
        def hook(module, inputs, t):
            if not mine():
                return None
            k = counts[i]
            counts[i] += 1
            if lp.call is not None and k != lp.call:
                return None  # another call of a shared module: leave it alone
            readings[i] = layouts.check_reading(t, readings[i], lp.name, n, spatial, module, obs,
                                                None if obs is None else obs.tick())
            r = readings[i]
            s = r.stored(t)
            if grad and not s.requires_grad and not record:
                s = s.detach().requires_grad_(True)
                torch.set_grad_enabled(True)  # record the tail from here on
            slots[i] = s
            if stop and all(v is not None for v in slots):
                raise _Captured
            return r.network(s.clone(), t) if swap is None else swap(r, s, t)
        return eager(hook)

    def install():
        extra = (watch(plan, mine) if watch is not None else []) + (obs.handles() if obs is not None else [])
        return extra + out.handles + [call.net.get_submodule(lp.name).register_forward_hook(feature_hook(i, lp))
                                      for i, lp in enumerate(plan.layers)]

    output = None
    leaf = x.detach().requires_grad_(True) if record and not any(
        p.requires_grad for p in call.net.parameters()) else x
    try:
        with obs.watching(leaf) if obs is not None else contextlib.nullcontext():
            output = run_hooked(call, leaf, install, grad=record)
    except _Captured:
        pass
    done = _resolved(call, plan, slots, counts, readings)
    if stop:
        return Capture(slots, done, None, plan.reduction or "output")
    y, rname = out.finish(output)
    if grad and not record and not any(t.requires_grad for t in tensors_of(y)) \
            and any(s.requires_grad for s in slots):
        # The tail ran without grad (reentrant checkpointing turns it off again): record it all.
        return _capture_planned(call, done, grad, stop, name_output, x, record=True)
    _check_recorded(done, slots, grad and record)
    return Capture(slots, done, y, rname)


def _resolved(call: Call, plan: Plan, slots: list, counts: list[int], readings: list) -> Plan:
    """The plan as the pass resolved it (each layer's call and reading), remembered when it was
    not known; every planned layer must have been captured."""
    _check_called(plan, slots, counts)
    if plan.known and all(r is lp.reading for r, lp in zip(readings, plan.layers)):
        return plan  # a known plan, read as planned: nothing to resolve
    done = Plan(tuple(LayerPlan(lp.name, lp.call if lp.call is not None else k - 1, r)
                      for lp, k, r in zip(plan.layers, counts, readings)), plan.reduction)
    if not plan.known:
        PLANS.put(call, plan, done)
        for lp in done.layers:
            _warn_guess(lp)
    return done


def _check_called(plan: Plan, slots: list, counts: list[int]) -> None:
    """Every planned feature layer captured in the pass, or :class:`_NotCalled` naming the first not."""
    for lp, s in zip(plan.layers, slots):
        if s is None:
            detail = (f" (it ran {counts[plan.layers.index(lp)]} times; feature_call is 0-based)"
                      if lp.call is not None and counts[plan.layers.index(lp)] else "")
            raise _NotCalled(f"feature_layer: expected a layer that runs in the forward pass, "
                             f"but {lp.name!r} was never called for this input{detail}")


def _check_recorded(done: Plan, slots: list, recorded: bool) -> None:
    """Every feature layer's output recorded by autograd when the whole graph was (``recorded``)."""
    if recorded and not all(s.requires_grad for s in slots):
        names = [lp.name for lp, s in zip(done.layers, slots) if not s.requires_grad]
        raise GradattrError(f"feature_layer: expected a layer whose output autograd records, but "
                            f"{names[0]!r} runs without gradients (inside a reentrant "
                            "torch.utils.checkpoint segment?); choose a layer outside the segment "
                            "or checkpoint with use_reentrant=False")


def _warn_guess(lp: LayerPlan) -> None:
    r = lp.reading
    if r is not None and r.guessed:
        other = f" ({r.alternatives})" if r.alternatives else ""
        warnings.warn(f"gradattr: feature layer {lp.name!r} read as {layouts.describe(r)}, a guess "
                      f"(another reading fits its shape too{other}); pass feature_layout= to say how "
                      "to read it", stacklevel=4)


def _attention_names(net: nn.Module) -> list[str]:
    """Names of attention modules known by type (the pass adds those it sees computing attention):
    their insides (queries, keys, heads) are never feature maps."""
    from .geometry import attention_types, is_attention_type

    types = attention_types()
    return [nm for nm, m in net.named_modules() if nm and is_attention_type(m, types)]


#: torchvision's detector classes (any model with a ``backbone`` whose output is detections counts too)
_DETECTORS = ("GeneralizedRCNN", "RetinaNet", "FCOS", "SSD")


def _detector_scope(net: nn.Module, y=None) -> str | None:
    """``"backbone.body."`` (or ``"backbone."``) for a detector: its map is the backbone's last
    feature map, never a head (anchors x classes are no grid) nor one that feeds detached
    proposals. A detector is a torchvision detector class, or any network with a ``backbone``
    submodule whose output is detections (a list of dicts)."""
    backbone = getattr(net, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return None
    known = any(c.__name__ in _DETECTORS for c in type(net).__mro__)
    detections = isinstance(y, (list, tuple)) and bool(y) and all(isinstance(d, dict) for d in y)
    if not (known or detections):
        return None
    names = dict(net.named_modules())
    return "backbone.body." if "backbone.body" in names else "backbone."


def _capture_auto(call: Call, plan: Plan, grad: bool, name_output: bool, x: torch.Tensor):
    """Hooks on every module to find the automatic layer: ``(capture, fresh)``.

    The module outputs of one recorded pass (outside attention modules by type) are read
    (:func:`_readable`) and the last one the score depends on is chosen (:func:`_depended_on`).
    """
    n, spatial, mine = x.shape[0], tuple(x.shape[2:]), _mine()
    obs = Observer(call.net, n, spatial, mine)
    typed = set(obs.attention)
    known_scope = _detector_scope(call.net)  # a known detector: only its backbone is kept
    seen: list = []  # [name, tensor, version, call, order, module] of the latest outputs, in order
    before_reduction: list = []
    counts: dict[str, int] = {}
    rejected: dict[str, tuple] = {}
    out = _Output(call.net, plan.reduction, True if plan.reduction is None else name_output, mine)
    reduction_module = _module(call.net, plan.reduction) if plan.reduction else None

    def inside(name, names):
        return any(name == a or name.startswith(a + ".") for a in names)

    def hook_for(name, module):
        def hook(m, inputs, out_):
            if not mine():
                return None
            k = counts[name] = counts.get(name, -1) + 1
            t, item = out_, None
            if isinstance(out_, (tuple, list)) and out_ and isinstance(module, nn.RNNBase):
                t, item = out_[0], 0
            if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim >= 3
                    and n in t.shape[:2] and not inside(name, typed)
                    and (known_scope is None or name.startswith(known_scope))):
                if seen and seen[-1][1] is t:
                    # the same tensor from an enclosing module: named by the outermost
                    seen[-1][0], seen[-1][2], seen[-1][3] = name, t._version, k
                else:
                    seen.append([name, t, t._version, k, obs.tick(), module, item])
                    _keep_last(seen)
                rejected[name] = tuple(t.shape)
            if module is reduction_module:  # candidates must come before the reduction layer
                before_reduction[:] = [list(e) for e in seen]
        return eager(hook)

    def install():
        return obs.handles() + out.handles + [m.register_forward_hook(hook_for(nm, m))
                                              for nm, m in call.net.named_modules() if nm]

    # The graph is recorded even for methods without gradients: it decides which tensor the
    # score depends on, and the plan found here is remembered for every method.
    needs_input_grad = not any(p.requires_grad for p in call.net.parameters())
    leaf = x.detach().requires_grad_(True) if needs_input_grad else x
    with obs.watching(leaf):
        output = run_hooked(call, leaf, install, grad=True)
    y, rname = out.finish(output)
    candidates = _readable(before_reduction if plan.reduction else seen, call, y, obs, x, rejected)
    name, t, version, k, reading = _depended_on(candidates, call, y)
    lp = LayerPlan(name, k, reading)
    _warn_guess(lp)
    # A time-first tensor is stored transposed, which autograd has not recorded: run again.
    fresh = t._version == version and (t.requires_grad or not grad) and reading.kind != "time_first"
    return Capture([t], Plan((lp,), plan.reduction), y, rname), fresh


#: How many of the latest module outputs the automatic layer is chosen among.
LATEST = 64


def _keep_last(seen: list) -> None:
    """Only the last :data:`LATEST` outputs can be chosen; let the rest be freed, except the
    latest one with a non-singleton spatial/time dim: when every later map is singleton (a 3-D
    DenseNet-121 at 48^3 ends at 1 x 1 x 1), MATLAB's rule chooses the last layer with
    non-singleton spatial dimensions, however many singleton layers follow it."""
    if len(seen) <= LATEST:
        return
    dropped = seen[:-LATEST]
    wide = [e for e in dropped if e[1].ndim >= 3 and any(d > 1 for d in e[1].shape[2:])][-1:]
    seen[:] = wide + seen[-LATEST:]


def _readable(entries: list, call: Call, y, obs: Observer, x: torch.Tensor, rejected: dict) -> list:
    """``[name, tensor, version, call, reading]`` of the recorded outputs that may be the automatic
    layer; refused with what was seen when none may.

    The rule (see :mod:`gradattr.layers`; :func:`_depended_on` picks among these): the module
    outputs before the reduction layer's output that read as a feature map of the input on a
    grid observed in the same pass (:mod:`gradattr.geometry`), outside attention modules (by
    type and by the attention they are seen computing); for a spatial output (segmenters, UNets)
    those before the prediction layer (whose channel count is the output's); for detectors the
    backbone's; for an output that is a sequence of steps ``(N, T, V)`` of an image (a
    captioner) the encoder's maps, never the decoder's steps. For CNNs this is MATLAB's rule.
    """
    n, spatial = x.shape[0], tuple(x.shape[2:])
    outs = {id(t) for t in tensors_of(y)}
    scope = _detector_scope(call.net, y)
    candidates = []
    for name, t, version, k, order, module, item in entries:
        if id(t) in outs or obs.inside_attention(name) or (scope and not name.startswith(scope)):
            continue
        reading = layouts.read(t, n, spatial, module, obs, order)
        if reading is not None:
            reading = replace(reading, item=item)
            candidates.append([name, t, version, k, reading])
            rejected.pop(name, None)
    candidates = _not_steps(_before_head(candidates, call, y), call, y)
    if not candidates:
        listed = "; ".join(f"{nm} {shape}" for nm, shape in list(rejected.items())[-8:])
        if _reads_nothing(call, y, [e[1] for e in entries]):
            raise GradattrError(
                "feature_layer: expected a score that depends on a layer of this network, but the "
                "target score depends on none: its gradient is zero at every module output (an "
                "untrained or zero-initialised head?), so no layer can be chosen by what the score "
                "reads; explain a trained model, or pass feature_layer (and feature_layout) explicitly")
        raise GradattrError(
            f"feature_layer: no layer of this network outputs a tensor with the input's layout "
            f"({n}, C, {len(spatial)} spatial dims, one of them > 1), channels last or tokens "
            f"({n}, L, C) on a grid observed in the forward pass ({obs.seen()}), before the "
            "reduction layer"
            + (f" (outputs with the batch size, none readable: {listed})" if listed else "")
            + "; pass feature_layer (and feature_layout) explicitly")
    return candidates


def _reads_nothing(call: Call, y, outputs: list[torch.Tensor]) -> bool:
    """Whether the target score's gradient is zero at every recorded module output (a zero head):
    then no layer can be chosen by what the score depends on, whatever their layouts."""
    try:
        s = call.target.scores(y, call.x.shape[0])
        used = [t for t in outputs if t.requires_grad]
        if not s.requires_grad or not used:
            return False
        g = torch.autograd.grad(s.sum(), used, retain_graph=True, allow_unused=True)
    except (GradattrError, RuntimeError):
        return False
    return not any(gi is not None and bool(gi.any()) for gi in g)


def _before_head(candidates: list, call: Call, y) -> list:
    """Drop the prediction layer of a spatial output: trailing candidates with the output's
    channel count (a segmenter's logits before upsampling, a UNet's last convolution)."""
    from .outputs import select

    try:
        y = select(y, call.output_key)
    except GradattrError:
        return candidates
    rank = call.x.ndim - 2
    if not (isinstance(y, torch.Tensor) and y.ndim == rank + 2 and y.shape[0] == call.x.shape[0]
            and any(s > 1 for s in y.shape[2:])):
        return candidates
    out = list(candidates)
    while out and out[-1][4].ncs_shape(out[-1][1])[0] == y.shape[1]:
        out.pop()
    return out


def _not_steps(candidates: list, call: Call, y) -> list:
    """For an output that is a sequence of steps ``(N, T, V)`` of an input of rank >= 2 (an
    image captioner's decoder), drop the decoder's steps: token readings of ``T`` tokens and
    recurrent layers' outputs. What remains is the encoder's maps."""
    from .outputs import select

    try:
        y = select(y, call.output_key)
    except GradattrError:
        return candidates
    n, rank = call.x.shape[0], call.x.ndim - 2
    if not (isinstance(y, torch.Tensor) and y.ndim == 3 and y.shape[0] == n and rank >= 2):
        return candidates
    steps = y.shape[1]
    return [c for c in candidates
            if not (c[4].kind in ("tokens", "time_first") and c[1].shape[1] == steps)
            and not isinstance(_module(call.net, c[0]), nn.RNNBase)]


def _spread(reading: Reading, g: torch.Tensor) -> int:
    """At how many grid positions (at most, over the samples) the gradient ``g`` is non-zero."""
    a = reading.to_ncs(g.transpose(0, 1) if reading.kind == "time_first" else g)
    return int((a.abs().amax(1) != 0).flatten(1).sum(1).max())  # NaN counts: it is no zero


def _depended_on(candidates: list, call: Call, y) -> list:
    """The last candidate on which the target score depends: its gradient (one backward of the
    graph the pass recorded) is non-zero at more than one grid position (a channels-first map:
    at one position or more, MATLAB's rule for CNNs). A candidate that
    cannot be measured (changed in place later) counts when it is a channels-first map (MATLAB's
    rule); without a score to measure, the last candidate."""
    try:
        s = call.target.scores(y, call.x.shape[0])
    except GradattrError:
        return candidates[-1]
    if not s.requires_grad:
        return candidates[-1]
    usable = [c for c in candidates if c[1].requires_grad and c[1]._version == c[2]]
    grads = {}
    if usable:
        try:
            g = torch.autograd.grad(s.sum(), [c[1] for c in usable], retain_graph=True, allow_unused=True)
        except RuntimeError:  # a reentrant checkpoint segment allows only .backward(): not measurable
            return candidates[-1]
        grads = {id(c): gi for c, gi in zip(usable, g)}
    if not any(gi is not None and bool(gi.any()) for gi in grads.values()):
        return candidates[-1]  # the score depends on none of them (no detections, a zero head)
    for c in reversed(candidates):
        if id(c) not in grads:
            if c[4].kind == "channels_first":
                return c
            continue
        gi = grads[id(c)]
        # A channels-first map (a CNN's, MATLAB's rule) counts when the score depends on it at
        # all: a TCN's head may read one step of it, and its map is still the last map's. A token
        # or channels-last tensor must carry the score at more than one position (a ViT's patch
        # tokens after the last attention feed only themselves).
        if gi is not None and _spread(c[4], gi) > (0 if c[4].kind == "channels_first" else 1):
            return c
    return candidates[-1]


# -- the remembered plans -----------------------------------------------------------------
class _PlanCache:
    """Plans resolved by a first pass, per model (weakly) and (input signature, plan asked for).

    An entry holds layer names and weak references to their modules only, so it
    never keeps a model alive (a submodule that refers back to its model would
    otherwise keep both alive through the cache), and it is used only while the
    names still resolve to the same modules: replacing a submodule invalidates it.
    """

    def __init__(self):
        self._store: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @staticmethod
    def key(call: Call, asked: Plan):
        x = call.x
        return (tuple(x.shape[1:]), x.dtype, x.device, asked)

    def get(self, call: Call, asked: Plan) -> Plan | None:
        entry = self._store.get(call.net, {}).get(self.key(call, asked))
        if entry is None:
            return None
        plan, refs = entry
        return plan if all(_lookup(call.net, lp.name) is r() for lp, r in zip(plan.layers, refs)) else None

    def put(self, call: Call, asked: Plan, plan: Plan) -> None:
        refs = tuple(weakref.ref(call.net.get_submodule(lp.name)) for lp in plan.layers)
        with self._lock:
            self._store.setdefault(call.net, {})[self.key(call, asked)] = (plan, refs)


PLANS = _PlanCache()


# -- gradients ----------------------------------------------------------------------------

#: Memory the one-hot rows of one vectorised backward (and the gradients it returns) may use:
#: ``K`` targets run in chunks of as many rows as fit, so ``K x K`` is never built.
GRADS_BUDGET = 128 * 2**20


def _available_bytes(device: torch.device) -> int | None:
    """Free memory where the gradients will live: the GPU's free memory, or the host's
    ``MemAvailable``; ``None`` where it cannot be read."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError):
        return None
    return None


def target_chunk(s: torch.Tensor, inputs: list[torch.Tensor]) -> int:
    """Targets per vectorised backward for scores ``s (N, K)``; refuses gradients that cannot fit.

    The gradients of all ``K`` targets, ``N x K x`` every input, are the result and must be
    held at once: when they exceed the free memory (:func:`_available_bytes`) the call is
    refused with the estimate. A chunk's one-hot rows ``(k, N, K)`` and its gradients
    ``(k, N, *input)`` fit :data:`GRADS_BUDGET` (a row counts three times: itself and the
    gradient of the output it becomes on the way back).
    """
    n, k_count = s.shape
    per_target = sum(t.numel() * t.element_size() for t in inputs)
    total = per_target * k_count
    free = _available_bytes(s.device)
    if free is not None and total > free:
        raise GradattrError(
            f"target: expected targets whose gradients fit in memory, but {k_count} targets need "
            f"{total / 2**20:,.0f} MiB of gradients ({k_count} x {per_target / 2**20:,.2f} MiB for "
            f"inputs {[tuple(t.shape) for t in inputs]}) and {free / 2**20:,.0f} MiB are free on "
            f"{s.device}; explain fewer targets per call (split the target list)")
    per_row = 3 * n * k_count * s.element_size() + per_target  # the row, the output's gradient, a copy
    return max(1, min(k_count, GRADS_BUDGET // max(per_row, 1)))


def _batched_grads(s: torch.Tensor, inputs: list[torch.Tensor], step: int):
    """``d s[:, k] / d inputs`` as ``(N, K, *input)`` (``None`` where unused), ``step`` targets
    per vectorised backward; one-hot rows built per chunk (one chunk: exactly ``eye(K)``)."""
    k_count = s.shape[1]
    grads: list = [None] * len(inputs)
    for k0 in range(0, k_count, step):
        k1 = min(k_count, k0 + step)
        rows = torch.zeros(k1 - k0, k_count, dtype=s.dtype, device=s.device)
        rows[torch.arange(k1 - k0, device=s.device), torch.arange(k0, k1, device=s.device)] = 1
        hot = rows[:, None, :].expand(k1 - k0, *s.shape)
        g = torch.autograd.grad(s, inputs, grad_outputs=hot, is_grads_batched=True,
                                retain_graph=True, allow_unused=True)
        if k0 == 0 and k1 == k_count:
            return [None if gi is None else gi.transpose(0, 1) for gi in g]
        for i, gi in enumerate(g):
            if gi is None:
                continue
            if grads[i] is None:
                grads[i] = gi.new_empty(gi.shape[1], k_count, *gi.shape[2:])
            grads[i][:, k0:k1] = gi.transpose(0, 1)
    return grads

def per_target_grads(s: torch.Tensor, inputs: list[torch.Tensor], counterfactual: bool,
                     names: list[str], reduction_name: str) -> list[torch.Tensor]:
    """``d s[:, k] / d inputs[i]`` for every target ``k``: one ``(N, K, *input)`` tensor per input.

    Samples are independent in eval mode, so the gradient of the batch sum is each
    sample's own. Several targets share one vectorised backward
    (``is_grads_batched``), or one backward each where an op cannot be vectorised.
    """
    if not s.requires_grad:
        raise GradattrError(
            f"target: expected a score that depends on {names[0]}, but the score computed from "
            f"reduction layer {reduction_name!r} does not depend on it (is the reduction layer "
            "before the feature layer?)")
    if counterfactual:
        s = -s
    k_count = s.shape[1]
    grads = None
    if k_count > 1:  # targets share vectorised backwards (vmap over one-hot rows), chunk by chunk
        step = target_chunk(s, inputs)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # vmap's "performance drop" notes
                grads = _batched_grads(s, inputs, step)
        except RuntimeError:  # an op without a batching rule: one backward per target
            grads = None
    if grads is None:
        try:
            # one target: the sum's gradient given directly (ones), no select and sum recorded
            per_k = [torch.autograd.grad(s, inputs, torch.ones_like(s), allow_unused=True)] if k_count == 1 \
                else [torch.autograd.grad(s[:, k].sum(), inputs, retain_graph=k < k_count - 1,
                                          allow_unused=True) for k in range(k_count)]
        except RuntimeError as e:
            if "use_reentrant" not in str(e):
                raise
            raise GradattrError(
                "net: expected a network whose layers after the feature layer autograd can "
                "differentiate with torch.autograd.grad, but they run in a reentrant "
                "torch.utils.checkpoint segment (use_reentrant=True), which allows only "
                ".backward(); checkpoint with use_reentrant=False, or choose a feature layer "
                "after the segment") from None
        grads = [None if per_k[0][i] is None else per_k[0][i].unsqueeze(1) if k_count == 1
                 else torch.stack([g[i] for g in per_k], 1) for i in range(len(inputs))]
    for gi, name in zip(grads, names):
        if gi is None:
            raise GradattrError(f"target: expected a score that depends on {name}, but the score "
                                f"from reduction layer {reduction_name!r} does not depend on it")
    return grads


def plan_from_options(net: nn.Module, feature_layer, reduction_layer, feature_layout,
                      feature_call) -> Plan:
    """The plan the user asked for: explicit layers (or none: automatic) and the reduction layer."""
    from .layers import resolve_layer, resolve_layers

    features = resolve_layers(net, feature_layer, "feature_layer") or []
    reduction = resolve_layer(net, reduction_layer, "reduction_layer")
    reading = layouts.resolve_layout(feature_layout)  # checked by its Option; here made a Reading
    if feature_call is not None and not features:  # (feature_call itself is checked by its Option)
        from .errors import expected
        raise expected("feature_layer", "an explicit layer when feature_call is given", "None")
    call = None if feature_call is None or feature_call < 0 else feature_call
    layers = tuple(LayerPlan(name, call, reading) for _, name in features)
    return Plan(layers, None if reduction is None else reduction[1])


# -- the public capture API ----------------------------------------------------------------
# What the scorer, the gradient oracle and the attention observer build their passes from.
# (Aliases of the names this module uses itself, so that its hook code stays as it is.)

#: ``thread_guard() -> mine``: a guard for hooks, ``mine()`` true only in the thread that
#: created it (evaluated eagerly under ``torch.compile``).
thread_guard = _mine
#: ``module_named(net, name)``: the submodule of ``net`` called ``name``.
module_named = _module
#: ``Output(net, reduction, name_output, mine)``: hooks that find the scored output
#: (``.handles`` to install, ``.finish(output) -> (y, name)`` after the pass).
Output = _Output

__all__ = ["LayerPlan", "Plan", "Capture", "capture", "plan_from_options", "run_hooked",
           "per_target_grads", "target_chunk", "thread_guard", "module_named", "Output", "PLANS",
           "GRADS_BUDGET"]
