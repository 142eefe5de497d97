"""The capture pass: one forward pass capturing a plan's feature layers and the scored output.

How a capture keeps the cost at one forward pass plus the backward of the tail:

* With a known plan, the forward runs under ``torch.no_grad()`` until the
  feature layer; its hook turns the output into a fresh leaf that requires
  grad and switches grad mode on, so autograd records the tail only.
* Without one (the automatic layer, first call), the layer is chosen by
  :func:`gradattr.capture.layer_choice.capture_auto` in a pass recorded from the start,
  and the plan it finds is remembered (:data:`gradattr.capture.plans.PLANS`).
* A feature hook returns a clone of what it captured, so a later in-place op
  (``ReLU(inplace=True)``) cannot change the captured activations. The one-layer pass of
  a known plan (:func:`capture_one`, the common call) clones only once the network's tail
  has been seen to write the captured tensor (:data:`TAIL_WRITES`).
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import torch

from .. import layout_inference
from ..errors import GradattrError
from ..geometry import Observer
from ..layouts import Reading
from ..prep import Call
from ..targets import tensors_of
from .hooks import Output, eager, module_named, run_hooked, thread_guard
from .layer_choice import capture_auto
from .plans import PLANS, Capture, LayerPlan, Plan, warn_guess


class _NotCalled(GradattrError):
    """A planned feature layer did not run (or not as often) for this input."""


class _Captured(Exception):
    """Raised by a feature hook to end a forward pass early, once everything is captured."""


def capture(call: Call, plan: Plan, grad: bool, stop: bool = False, name_output: bool = False,
            x: torch.Tensor | None = None, watch=None, swap=None) -> Capture:
    """One forward pass capturing ``plan``'s feature layers and the scored output.

    An automatic plan (no layers) is resolved by this pass and remembered.
    ``stop=True`` ends the pass once the feature layers are captured (no score
    needed, Eigen-CAM); it takes effect once the plan is known. ``watch(plan, mine)``, if
    given, returns more hooks for the pass with a known or named plan (installed first,
    removed with the others): what a method wants to observe of the same pass
    (:class:`gradattr.budget.MemoryWatch`); the first pass of an automatic layer runs
    without them. ``swap(reading, stored, out)``, if given (a known plan only), returns
    what the network continues with after the feature layer instead of its own output
    (the copies of Ablation-CAM, :func:`gradattr.methods.ablation.ablation_capture`).
    """
    x = call.x if x is None else x
    asked, remembered = plan, False
    if not plan.layers:
        cached = PLANS.get(call, plan)
        remembered = cached is not None
        if cached is None:
            cap, fresh = capture_auto(call, plan, grad, name_output, x)
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
        if plan.known and len(plan.layers) == 1 and not (stop or name_output) and watch is None \
                and swap is None and plan.reduction is None and _bound(plan.layers[0].reading):
            return capture_one(call, plan, grad, x)
        return _capture_planned(call, plan, grad, stop and plan.known, name_output, x, watch=watch,
                                swap=swap)
    except _NotCalled:
        if not remembered:
            raise
    # A remembered automatic layer that this input does not reach (a routed network took
    # another branch): choose again for this input, as on a first call.
    cap, fresh = capture_auto(call, asked, grad, name_output, x)
    PLANS.put(call, asked, cap.plan)
    return cap if fresh else _capture_planned(call, cap.plan, grad, stop, name_output, x)


def _capture_planned(call: Call, plan: Plan, grad: bool, stop: bool, name_output: bool,
                     x: torch.Tensor, record: bool = False, watch=None, swap=None) -> Capture:
    """Hooks on the planned layers; the forward runs under no_grad until the first of them.

    ``record=True`` records the whole graph from the input instead (the fallback
    for networks whose tail turns grad mode off again, such as reentrant
    ``torch.utils.checkpoint``).
    """
    n, spatial, mine = x.shape[0], tuple(x.shape[2:]), thread_guard()
    slots: list = [None] * len(plan.layers)
    readings = [lp.reading for lp in plan.layers]
    # the grids of this pass, observed while a reading is still to be bound
    obs = Observer(call.net, n, spatial, mine) if not all(r is not None and r.bound for r in readings) else None
    counts = [0] * len(plan.layers)
    out = Output(call.net, plan.reduction, name_output and not stop, mine)

    def feature_hook(i, lp):
        def hook(module, inputs, t):
            if not mine():
                return None
            k = counts[i]
            counts[i] += 1
            if lp.call is not None and k != lp.call:
                return None  # another call of a shared module: leave it alone
            readings[i] = layout_inference.check_reading(t, readings[i], lp.name, n, spatial, module, obs,
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
        return extra + out.handles + [module_named(call.net, lp.name).register_forward_hook(feature_hook(i, lp))
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


#: Per network (weakly), the one-layer plans whose tail wrote the captured tensor in place:
#: their passes give the network a clone of it (:func:`capture_one`).
TAIL_WRITES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TAIL_LOCK = threading.Lock()


def capture_one(call: Call, plan: Plan, grad: bool, x: torch.Tensor) -> Capture:
    """:func:`_capture_planned` for the common call: one known layer whose reading is bound,
    the network's output scored, nothing else observed or carried (the same pass: the hook
    acts in its own thread only and eagerly under ``torch.compile``, the tail is recorded
    from a fresh leaf; without the general pass's lists, observer, output hooks and resolving).

    The network continues from the captured tensor itself, not a clone, until its tail is
    seen to write it in place: autograd refuses that on a leaf that requires grad, and the
    tensor's version counter shows it otherwise. Then this pass runs again as the general
    one (which clones) and the plan is remembered for the network (:data:`TAIL_WRITES`):
    the captured tensor is never what the tail wrote, and a clone is paid only where it can
    matter.
    """
    lp = plan.layers[0]
    r, want, mine = lp.reading, lp.call, thread_guard()
    written = TAIL_WRITES.get(call.net)
    protect = written is not None and plan in written
    box: list = [None, 0, 0]  # the captured tensor, the layer's calls so far, its version then

    def hook(module, inputs, t):
        if not mine():
            return None
        k = box[1]
        box[1] = k + 1
        if k != want:
            return None  # another call of a shared module: leave it alone
        if not isinstance(t, torch.Tensor):  # (a bound reading of an item: or its error)
            layout_inference.check_reading(t, r, lp.name, x.shape[0], tuple(x.shape[2:]), module)
        s = r.stored(t)
        if grad and not s.requires_grad:
            s = s.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # record the tail from here on
        box[0], box[2] = s, s._version
        return r.network(s.clone() if protect else s, t)

    try:
        output = run_hooked(call, x, lambda: [module_named(call.net, lp.name).register_forward_hook(eager(hook))],
                            grad=False)
    except RuntimeError as e:  # (autograd's refusal of an in-place write to the leaf, or another)
        if protect or box[0] is None or isinstance(e, GradattrError):
            raise
        return _written(call, plan, grad, x)
    s = box[0]
    if s is None:
        _check_called(plan, [s], [box[1]])
    if not protect and s._version != box[2]:  # the tail wrote the captured tensor
        return _written(call, plan, grad, x)
    if grad and s.requires_grad and not (output.requires_grad if isinstance(output, torch.Tensor) else
                                         any(t.requires_grad for t in tensors_of(output))):
        # The tail ran without grad (reentrant checkpointing turns it off again): record it all.
        return _capture_planned(call, plan, grad, False, False, x, record=True)
    return Capture([s], plan, output, "output")


def _written(call: Call, plan: Plan, grad: bool, x: torch.Tensor) -> Capture:
    """The general pass (the network continues from a clone) for a plan whose tail wrote the
    captured tensor (or failed); remembered once that pass succeeds."""
    cap = _capture_planned(call, plan, grad, False, False, x)
    with _TAIL_LOCK:
        TAIL_WRITES.setdefault(call.net, set()).add(plan)
    return cap


def _bound(r: Reading | None) -> bool:
    return r is not None and r.bound


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
            warn_guess(lp)
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
