"""The automatic feature layer: hooks on every module for one recorded pass, and the rule that
chooses among the module outputs (see :mod:`gradattr.layers`).

Without a known plan (the automatic layer, first call), every module is hooked to find
the last tensor with a feature reading (see :func:`gradattr.layout_inference.infer_reading`) on
which the score depends, while a :class:`gradattr.geometry.Observer` records the
grids and attention modules of the same pass; the graph is recorded from the
start because the layer is known only at the end, and the gradient is still
taken for the tail only.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .. import layout_inference
from ..errors import GradattrError
from ..geometry import Observer
from ..layouts import Reading
from ..prep import Call
from ..targets import tensors_of
from .hooks import Output, eager, module_named, run_hooked, thread_guard
from .plans import Capture, LayerPlan, Plan, warn_guess




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


def capture_auto(call: Call, plan: Plan, grad: bool, name_output: bool, x: torch.Tensor):
    """Hooks on every module to find the automatic layer: ``(capture, fresh)``.

    The module outputs of one recorded pass (outside attention modules by type) are read
    (:func:`_readable`) and the last one the score depends on is chosen (:func:`_depended_on`).
    """
    n, spatial, mine = x.shape[0], tuple(x.shape[2:]), thread_guard()
    obs = Observer(call.net, n, spatial, mine)
    typed = set(obs.attention)
    known_scope = _detector_scope(call.net)  # a known detector: only its backbone is kept
    seen: list = []  # [name, tensor, version, call, order, module] of the latest outputs, in order
    before_reduction: list = []
    counts: dict[str, int] = {}
    rejected: dict[str, tuple] = {}
    out = Output(call.net, plan.reduction, True if plan.reduction is None else name_output, mine)
    reduction_module = module_named(call.net, plan.reduction) if plan.reduction else None

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
    warn_guess(lp)
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
        reading = layout_inference.infer_reading(t, n, spatial, module, obs, order)
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
    from ..outputs import select

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
    from ..outputs import select

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
            and not isinstance(module_named(call.net, c[0]), nn.RNNBase)]


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
