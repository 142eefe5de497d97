"""The driver every method runs through: one call of a public function is one :func:`explain`.

The flow of one call (see ``docs/ARCHITECTURE.md``)::

    options --validate, plan the layers--> Bound          [registry.Method.validate, capture.plans]
            --> prepare_call (input, device, target)     [prep.py, inputs.py, reading.py, targets.py]
            --> borrow the model (eval mode, device)     [prep.py]
            --> capture: one forward pass (+ backward)   [capture/passes.py]
            --> method: per layer, LayerView -> maps     [methods/<family>.py]
            --> combine, fuse layers, ensembles, check   [here, ensembles.py]
            --> upsampling, normalize, output form       [resize.py, here, inputs.Layout.output]

Methods do not touch hooks, models or devices (three named exceptions: ARCHITECTURE's
"Rules"): they get a :class:`LayerView` (activations ``(N, C, *s)``, gradients
``(N, K, C, *s)``, a forward-only
:class:`~gradattr.scorer.Scorer` and a :class:`~gradattr.score_gradients.ScoreGradients`
for extra passes) and return weights, channel terms or maps, which :func:`combine`
turns into ``(N, K, *s)`` maps.
"""
from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from . import resize
from .ensembles import augmented, sess
from torch import nn

from .capture import (Capture, Plan, capture, module_named, per_target_grads, plan_from_options, run_hooked,
                      thread_guard)
from .errors import GradattrError, expected, warn
from .inputs import check_model
from .layouts import Reading
from .reading import Unsettled
from .score_gradients import ScoreGradients
from .prep import Call, prepare_call, read_checks, read_values
from .ops import eigen_projection, minmax
from .registry import Method
from .budget import MemoryWatch
from .scorer import Scorer


@dataclass(frozen=True)
class LayerView:
    """What a method sees of one feature layer."""

    acts: torch.Tensor | None  # (N, C, *s), detached
    grads: torch.Tensor | None  # (N, K, C, *s) for gradient methods
    scorer: Scorer  # forward passes without gradients: inputs, masked inputs, modified activations
    score_gradients: ScoreGradients  # gradients of the score: input, layers, biases, attention, HVPs
    layers: int = 1  # how many feature layers this call explains


@dataclass(frozen=True)
class Bound:
    """A method with its options validated and its layers resolved on one network: what
    every call with these options shares (:func:`bind`; :func:`gradattr.explainer` keeps it)."""

    method: Method
    opts: dict  # every option, validated, defaults filled in (read only)
    own: dict  # the method's own options, passed to its compute function
    mode: str  # upsampling
    plan: Plan


def bind(method: Method, net, options: dict) -> Bound:
    """Validate ``options`` once and resolve the layers they name on ``net``."""
    check_model(net)
    opts = method.validate(options)
    if opts.get("sess") and opts.get("aug_smooth"):
        raise expected("sess", "False when aug_smooth=True (one ensemble at a time)", repr(opts["sess"]))
    plan = plan_from_options(net, opts.get("feature_layer"), opts["reduction_layer"],
                             opts.get("feature_layout"), opts.get("feature_call"))
    return Bound(method, opts, {o.name: opts[o.name] for o in method.options},
                 opts.get("upsampling", "bicubic"), plan)


_SIMPLE = frozenset((str, int, float, bool, type(None)))


def _canon(v):
    """``v`` with its type (so that ``1``, ``1.0`` and ``True`` differ); ``TypeError`` for a value
    that is not plain."""
    if isinstance(v, tuple):
        return (tuple, tuple(_canon(i) for i in v))
    t = type(v)
    if t not in _SIMPLE:
        raise TypeError
    return (t, v)


def _options_key(method: Method, options: dict):
    """A key for ``options`` when every value is a plain immutable value (types included, so
    that ``1``, ``1.0`` and ``True`` differ), else ``None``: such options bind the same way on
    the same network every time."""
    try:
        return method.name, tuple(sorted([(k, _canon(v)) for k, v in options.items()]))
    except TypeError:
        return None


class _BoundCache:
    """The :class:`Bound` of the function calls with plain options, per network (weakly), used
    while each layer it names is still the module it named (a replaced submodule re-binds)."""

    def __init__(self):
        self._store: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, net, key) -> Bound | None:
        try:
            entry = self._store.get(net, {}).get(key)
        except TypeError:  # an unhashable (or un-weakly-referenceable) network
            return None
        if entry is None:
            return None
        bound, refs = entry
        for name, ref in refs:
            try:
                if module_named(net, name) is not ref():
                    return None
            except AttributeError:
                return None
        return bound

    def put(self, net, key, bound: Bound) -> None:
        names = bound.plan.names + ([bound.plan.reduction] if bound.plan.reduction else [])
        refs = tuple((nm, weakref.ref(net.get_submodule(nm))) for nm in names)
        try:
            with self._lock:
                self._store.setdefault(net, {})[key] = (bound, refs)
        except TypeError:
            pass


_BOUND = _BoundCache()


def explain(method: Method, net, x, target=None, **options):
    """Run ``method`` on ``net`` and ``x``: validate, prepare, capture, compute, fuse, upsample, convert.

    The options are validated and the layers resolved once per network and set of plain
    options (names, numbers, flags; remembered weakly, as :func:`gradattr.explainer` keeps
    them): a later call with the same options starts at preparing its input.
    """
    if not method.needs_target and target is not None:
        raise expected("target", f"None for {method.name}, which explains no particular class",
                       repr(target))
    key = _options_key(method, options)
    bound = None if key is None else _BOUND.get(net, key)
    if bound is None:
        bound = bind(method, net, options)
        if key is not None:
            _BOUND.put(net, key, bound)
    return run(bound, net, x, target)


def run(bound: Bound, net, x, target=None):
    """One call of a bound method on ``x``. A first call presumes the input's reading and
    confirms it in its own first forward pass; when that pass does not, the reading is
    observed (:func:`gradattr.reading.observe_reading`) and the call runs again."""
    try:
        return _run(bound, net, x, target, presume=True)
    except Unsettled:
        return _run(bound, net, x, target, presume=False)


def _run(bound: Bound, net, x, target, presume: bool):
    method, opts, plan, mode = bound.method, bound.opts, bound.plan, bound.mode
    call = prepare_call(net, x, target=target, reduction_fn=opts.get("reduction_fn"),
                        classes=opts.get("classes"), input_format=opts["input_format"],
                        device=opts["device"], needs_target=method.needs_target,
                        autocast=opts["autocast"], output_key=opts.get("output_key"),
                        explain=opts["explain"], forward_kwargs=opts["forward_kwargs"], several=True,
                        defer_checks=True, presume=presume)
    if (call.layout.rank == 0 and call.x.is_floating_point()  # token ids (N, L) are sequences
            and (method.returns == "map" or method.finish is not None)):
        raise _no_grid(method, call)
    if not call.x.is_floating_point() and method.changes_input:
        raise _not_on_ids(method, call)
    if call.inputs and method.layered and not plan.layers:
        raise expected("feature_layer", "a layer (name or module) when x holds several inputs: the "
                       "automatic rule could pick a layer of another input's branch", "None")

    seen: list = []  # the captured (acts, grads) of the call's own input (not of augmented copies)

    def one(c: Call):
        return _maps(method, c, plan, opts, bound.own, mode, seen if c is call else None)

    with call.borrowed(), torch.enable_grad():
        try:
            if opts.get("sess"):
                maps, names, rname = sess(one, call, plan, opts["sess"])
            elif opts.get("aug_smooth"):
                maps, names, rname = augmented(one, call, plan, fix_target=method.needs_target)
            else:
                maps, names, rname = one(call)
        except Exception:
            read_checks(call)  # NaN or Inf in the input or a score explains the failure first
            raise
        extra = None
        if isinstance(maps, tuple):  # (attributions, (N, K) completeness gaps): return_delta
            maps, extra = maps
        _check_maps(method, maps, names, call, plan, opts, seen[0] if seen else None)
    if method.returns == "map" and mode != "none" and tuple(maps.shape[2:]) != call.layout.spatial:
        maps = resize.imresize(maps, call.layout.spatial, mode)
    if opts["normalize"]:
        maps = minmax(maps)
    out = call.layout.output(maps, call.target.scalar and maps.shape[1] == 1)
    if extra is not None:
        out = (out, call.layout.output(extra, call.target.scalar and extra.shape[1] == 1))
    if opts.get("return_layers"):
        return out, (names[0] if len(names) == 1 else names), rname
    return out


def _no_grid(method: Method, call: Call) -> GradattrError:
    """A map method (or one that multiplies by a map) on feature vectors ``(N, F)``: no grid to
    map or slide a window over."""
    from .registry import REGISTRY

    fits = [m.name for m in REGISTRY.values() if m.returns != "map" and m.finish is None]
    what = "x" if not call.inputs else f"x[{call.explain}]"
    return expected(what, f"an input with spatial or time dimensions for {method.name} (a map over a "
                    "grid)", f"{'a batch of' if call.layout.batched else 'one'} feature vector"
                    f"{'s' if call.layout.batched else ''} of {call.x.shape[1]} features, shape "
                    f"{tuple(call.x.shape) if call.layout.batched else tuple(call.x.shape[1:])}, which has "
                    f"no grid; per-feature methods work on vectors: {', '.join(fits)}")


def _not_on_ids(method: Method, call: Call) -> GradattrError:
    """A method that changes the input's values, on integer ids: name what works on them."""
    from .registry import REGISTRY

    fits = [m.name for m in REGISTRY.values() if not m.changes_input
            and m.family not in ("input attribution", "attention")]
    what = "x" if not call.inputs else f"x[{call.explain}]"
    return expected(what, f"a floating-point input for {method.name}, which scales, blurs or "
                    "differentiates the input's values (a scaled token id is another token or no "
                    "id at all)", f"integer ids of dtype {call.x.dtype}; on token ids these work: "
                    f"{', '.join(fits)} (occlusion with mask_value=<an id, e.g. the padding id>), and "
                    "the input attributions with feature_layer=<the embedding>")


def _check_maps(method: Method, maps: torch.Tensor, names: list[str], call: Call, plan: Plan,
                opts: dict, seen: tuple | None = None) -> None:
    """NaN or Inf anywhere in a map is an error; an all-zero map a :class:`GradattrWarning`.

    One fused reduction on the maps' device (the peak of each map) and one read of its
    ``(N, K)`` result, together with the input's and the scores' deferred checks
    (:func:`gradattr.prep.read_checks`): the only host synchronisation of a call. Only when
    something is wrong is the cause looked for (another pass, unless ``seen``, the activations
    and gradients the call captured, tells).
    """
    if not maps.is_floating_point() or maps.numel() == 0:
        read_checks(call)
        return
    # one layer's maps as combine rectified them (ReLU: no negative value to take |.| of)
    peak = map_peaks(maps, rectified=method.layered and method.combine != "map" and method.finish is None
                     and len(names) == 1 and opts.get("relu", True) is True
                     and not (opts.get("sess") or opts.get("aug_smooth")))
    # with the input's and the scores' deferred checks; then the (N, K) peaks as Python floats
    peaks = read_values(call, peak)
    if all(map(math.isfinite, peaks)) and not (method.layered and 0.0 in peaks):
        return  # (what the search below finds for maps that are fine, without its generators)
    width = peak.shape[1] if peak.ndim == 2 else 1
    bad = next((j for j, v in enumerate(peaks) if not math.isfinite(v)), None)
    zeros = [j for j, v in enumerate(peaks) if v == 0] if method.layered and bad is None else []
    if bad is None and not zeros:
        return
    layer = f"feature layer {names[0]!r}" if len(names) == 1 else (
        f"feature layers {names}" if names else "the input")
    if bad is not None:
        i, k = divmod(bad, width)
        raise GradattrError(f"{method.name}: expected finite maps, but the map of sample {i}, target "
                            f"{k} at {layer} has NaN or Inf values: {_cause(method, call, plan, opts, 'nan', i, k, seen)}")
    if zeros:
        i, k = divmod(zeros[0], width)
        what = (f"{len(zeros)} of {len(peaks)} maps are" if len(peaks) > 1 and len(zeros) < len(peaks)
                else "the map is" if len(peaks) == 1 else "every map is")
        hints = [h for o, h in (("counterfactual", "counterfactual=True (the evidence against the target)"),
                                ("relu", "relu=False (the signed map)")) if o in opts]
        cause = _cause(method, call, plan, opts, 'zero', i, k, seen)
        if "before the ReLU" not in cause:
            hints = []  # a score that does not read the layer, or NaN activations: no sign or ReLU helps
        head = _flattening_head(call, names) if cause == _AGAINST and len(names) == 1 \
            and method.family == "gradient CAM" and method.name != "hires_cam" else None
        if head is not None:
            hints.insert(0, f"hires_cam (the layer feeds a flattening head, {head}, which weighs every "
                         f"position with its own weight: averaged over the positions, as {method.name} "
                         "does, a channel's gradients can cancel; hires_cam keeps them per position)")
        hint = ", ".join(hints) + ", or another feature_layer" if hints else "another feature_layer"
        warn(f"gradattr: {method.name} at {layer}: {what} all zero (first: sample {i}, target {k}): "
             f"{cause}; try {hint}")


def map_peaks(maps: torch.Tensor, rectified: bool = False) -> torch.Tensor:
    """``max |map|`` of each map of ``maps (N, K, *s)`` as ``(N, K)`` (``|maps|`` when there is no
    ``s``), NaN and Inf kept: the values of ``vector_norm(ord=inf)`` over ``s``, which costs the
    same on a small map and ten times more on a large one (its CPU kernel is not vectorised).
    ``rectified``: the maps passed a ReLU (no value below zero), so ``max map`` is that value."""
    peak = maps.detach() if maps.requires_grad else maps
    if not rectified:
        peak = peak.abs()
    return peak.amax(tuple(range(2, peak.ndim))) if peak.ndim > 2 else peak


def _flattening_head(call: Call, names: list[str]) -> str | None:
    """``"nn.Linear 'fc'"`` when the feature layer's output reaches an ``nn.Linear`` as
    ``(N, features)``, every position a feature of its own (flattened by an ``nn.Flatten``, a
    view or a reshape, through layers that keep its size, such as activations), as observed in
    one more forward pass without gradients (only for an all-zero map whose layer the score
    depends on); else ``None``."""
    try:
        layer, mine = call.net.get_submodule(names[0]), thread_guard()
        followed: set[int] = set()  # storages of the layer's output and of what keeps its size
        kept: list[torch.Tensor] = []  # held, so that no later tensor takes a followed storage
        found: list[str] = []

        def follow(t: torch.Tensor):
            followed.add(t.untyped_storage().data_ptr())
            kept.append(t)
        leaves = [(nm, m) for nm, m in call.net.named_modules() if not m._modules]

        def at_layer(m, i, out):
            if mine() and isinstance(out, torch.Tensor) and out.ndim > 2 and not followed:
                follow(out)

        def hook_for(name):
            def hook(m, inputs, out):
                t = next((v for v in inputs if isinstance(v, torch.Tensor)), None)
                if not mine() or found or t is None or t.untyped_storage().data_ptr() not in followed:
                    return
                if isinstance(m, nn.Linear) and t.ndim == 2:
                    found.append(f"nn.Linear {name!r}")
                elif isinstance(out, torch.Tensor) and out.numel() == t.numel():
                    follow(out)
            return hook

        def install():
            return [layer.register_forward_hook(at_layer)] + [
                m.register_forward_hook(hook_for(nm)) for nm, m in leaves if m is not layer]
        run_hooked(call, call.x, install, grad=False)
        return found[0] if found else None
    except Exception:  # noqa: BLE001 - looking for a hint must not hide the finding
        return None


#: The cause of an all-zero map whose layer the score depends on.
_AGAINST = "every weighted sum was <= 0 before the ReLU (the layer's evidence is all against the target)"


def _cause(method: Method, call: Call, plan: Plan, opts: dict, what: str, i: int, k: int,
           seen: tuple | None = None) -> str:
    """Why the map of sample ``i``, target ``k`` is NaN or all zero, found by one more forward and
    one backward of that target's score (only when a map is). An all-zero map of a method that
    captured the gradients needs no other pass: its own activations and gradients tell."""
    if what == "zero" and seen is not None:
        acts, grads = seen
        if any(not bool(torch.isfinite(a[i]).all()) for a in acts):
            return "the layer's activations are NaN or Inf (the network before the layer produced them)"
        if all(not bool(g[i, k].any()) for g in grads):
            return ("the score does not depend on this layer (its gradient is zero everywhere: an "
                    "untrained or zero-initialised head, or a layer the score does not read)")
        return _AGAINST
    try:
        cap = capture(call, plan, grad=True)
        s = call.target.scores(cap.output, call.n) if method.needs_target else None
        if s is not None:
            s = s[:, k]
        if s is not None and not bool(torch.isfinite(s[i]).all()):
            return "the score itself is NaN or Inf (the network's output for this target)"
        if any(not bool(torch.isfinite(a[i]).all()) for a in cap.acts):
            return "the layer's activations are NaN or Inf (the network before the layer produced them)"
        if s is None:
            return ("produced by the method from finite activations" if what == "nan" else
                    "every weighted sum was <= 0 before the ReLU")
        raw = torch.autograd.grad(s.sum(), cap.raw, allow_unused=True)
        grads = [cast(Reading, lp.reading).to_ncs(g)[i] for g, lp in zip(raw, cap.plan.layers) if g is not None]
        if what == "nan":
            if any(not bool(torch.isfinite(g).all()) for g in grads):
                return ("the gradients of the score at this layer are NaN or Inf although the score is "
                        "finite (a NaN or Inf parameter after the layer: 0 x NaN in the backward)")
            return "the method's weights turned finite activations and gradients into NaN or Inf"
        if all(not bool(g.any()) for g in grads):
            return ("the score does not depend on this layer (its gradient is zero everywhere: an "
                    "untrained or zero-initialised head, or a layer the score does not read)")
        return _AGAINST
    except Exception:  # noqa: BLE001 - looking for the cause must not hide the finding
        return ("NaN or Inf in the score, the gradients or the weights" if what == "nan" else
                "every weighted sum <= 0 before the ReLU, or a score that does not depend on this layer")


def _maps(method: Method, call: Call, plan: Plan, opts: dict, own: dict, mode: str,
          seen: list | None = None):
    """``(maps (N, K, *s), feature_names, reduction_name)`` of one (possibly augmented) input;
    a gradient method appends the activations and gradients it captured to ``seen``, if given
    (what an all-zero map's cause is read from: :func:`_cause`)."""
    counterfactual = opts.get("counterfactual", False)

    def view(a, g, cap: Capture | None, i: int, layers: int) -> LayerView:
        scorer = Scorer(call, plan if cap is None else cap.plan, cap, i, mode, watch)
        return LayerView(a, g, scorer, ScoreGradients(scorer, counterfactual), layers)

    watch = None
    if not method.layered:
        v = view(None, None, None, 0, 0)
        return method.compute(v, **own), [], v.scorer.reduction_name
    grad = method.captures == "activations+gradients"
    if method.family == "perturbation CAM" and not grad:
        # its chunks are sized from the memory of a forward pass: observed in the capture pass
        watch = MemoryWatch(call.net, call.n)
    cap = None
    if method.capture_with is not None and not opts.get("return_layers"):
        cap = method.capture_with(call, plan, own)  # None: this network or call cannot carry it
    if cap is None:
        cap = capture(call, plan, grad=grad, stop=method.stop_early,
                      name_output=bool(opts.get("return_layers")), watch=watch)
    acts = cap.acts
    grads: Sequence[torch.Tensor | None] = _gradients(call, cap, counterfactual) if grad else [None] * len(acts)
    if call.autocast is not None:  # low-precision forward passes, maps accumulated in float32
        acts = [a.float() for a in acts]
        grads = [g if g is None else g.float() for g in grads]
    if grad and seen is not None:
        seen.append((acts, grads))
    maps = []
    for i, (a, g) in enumerate(zip(acts, grads)):
        v = view(a, g, cap, i, len(acts))
        out = method.compute(v, **own)
        maps.append(combine(method.combine, out, a, opts.get("eigen_smooth", False), opts.get("relu", True)))
    fused = _fuse(maps, call, mode)
    if method.finish is not None:
        fused = method.finish(v, fused)
    return fused, cap.plan.names, cap.reduction_name


def _gradients(call: Call, cap: Capture, counterfactual: bool) -> list[torch.Tensor]:
    """``d score_k / d A`` for every feature layer, read as ``(N, K, C, *s)``."""
    s = call.target.scores(cap.output, call.n, checks=call.deferred.checks)
    names = [f"feature layer {nm!r}" for nm in cap.plan.names]
    raw = per_target_grads(s, cap.raw, counterfactual, names, cap.reduction_name)
    out = []
    for g, lp in zip(raw, cap.plan.layers):
        if lp.reading is not None and lp.reading.kind == "channels_first":  # (N, C, *s): nothing to read
            out.append(g)
            continue
        n, k = g.shape[:2]
        out.append(cast(Reading, lp.reading).to_ncs(g.flatten(0, 1)).unflatten(0, (n, k)))
    return out


def combine(how: str, out: torch.Tensor, acts: torch.Tensor, eigen_smooth: bool,
            relu: bool = True) -> torch.Tensor:
    """A method's result -> maps ``(N, K, *s)``: ``ReLU(sum_c w A)``, ``ReLU(sum_c T)`` or as is.

    With ``eigen_smooth`` the channel sum becomes the projection on the first
    principal component of the channel terms (:func:`gradattr.ops.eigen_projection`).
    ``relu=False`` keeps the sign (captum's ``relu_attributions=False``).
    """
    if how == "map":
        return out
    rectify = torch.relu if relu else (lambda t: t)
    if how == "weights":
        if eigen_smooth:
            return rectify(eigen_projection(out[(...,) + (None,) * (acts.ndim - 2)] * acts[:, None]))
        # sum_c w[n, k, c] A[n, c, ...]: one batched matmul (what einsum runs, without its
        # permutes; the same numbers)
        w = out if out.dtype == acts.dtype else out.to(acts.dtype)
        return rectify(torch.matmul(w, acts.flatten(2)).view(*out.shape[:2], *acts.shape[2:]))
    return rectify(eigen_projection(out) if eigen_smooth else out.sum(2))


def _fuse(maps: list[torch.Tensor], call: Call, mode: str) -> torch.Tensor:
    """One layer's maps as they are; several layers' fused as pytorch-grad-cam does.

    Each layer's map is min-max normalised, resized to the input's size (to the
    largest map's size with ``upsampling="none"``), and the layers are averaged,
    then normalised again: layers of different scales count equally.
    """
    if len(maps) == 1:
        return maps[0]
    if mode == "none":
        size = max((tuple(m.shape[2:]) for m in maps), key=lambda s: torch.Size(s).numel())
        mode = "bicubic"
    else:
        size = tuple(call.x.shape[2:])
    resized = [resize.imresize(minmax(m), size, mode) for m in maps]
    return minmax(torch.relu(torch.stack(resized).mean(0)))


__all__ = ["explain", "bind", "run", "Bound", "LayerView", "combine"]
