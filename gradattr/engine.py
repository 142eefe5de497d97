"""The driver every method runs through: one call of a public function is one :func:`explain`.

The flow of one call (see ``docs/ARCHITECTURE.md``)::

    options --validate--> prepare_call (input, device, target)   [prep.py]
            --> plan (feature layers, reduction layer)           [capture.py]
            --> borrow the model (eval mode, device)             [prep.py]
            --> capture: one forward pass (+ the tail's backward) [capture.py]
            --> method: per layer, LayerView -> maps              [methods.py]
            --> fusion of several layers, aug_smooth              [here]
            --> upsampling (one place), normalize, output form    [here]

Methods never touch hooks, models or devices: they get a :class:`LayerView`
(activations ``(N, C, *s)``, gradients ``(N, K, C, *s)`` and a
:class:`~gradattr.probe.Probe` for perturbations) and return weights, channel
terms or maps, which :func:`combine` turns into ``(N, K, *s)`` maps.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from . import resize
from .capture import Capture, Plan, capture, per_target_grads, plan_from_options
from .errors import GradattrError, GradattrWarning, expected
from .prep import Call, normalize_maps, prepare_call
from .probe import Probe
from .registry import Method


@dataclass(frozen=True)
class LayerView:
    """What a method sees of one feature layer."""

    acts: torch.Tensor | None  # (N, C, *s), detached
    grads: torch.Tensor | None  # (N, K, C, *s) for gradient methods
    probe: Probe
    layers: int = 1  # how many feature layers this call explains


def check_upsampling(upsampling) -> str:
    if not isinstance(upsampling, str) or upsampling.lower() not in resize.UPSAMPLING_MODES:
        raise expected("upsampling", "one of " + ", ".join(map(repr, resize.UPSAMPLING_MODES)),
                       repr(upsampling))
    return upsampling.lower()


def explain(method: Method, net, x, target=None, **options):
    """Run ``method`` on ``net`` and ``x``: validate, prepare, capture, compute, fuse, upsample, convert."""
    if not method.needs_target and target is not None:
        raise expected("target", f"None for {method.name}, which explains no particular class",
                       repr(target))
    opts = method.validate(options)
    own = {o.name: opts[o.name] for o in method.options}
    mode = check_upsampling(opts.get("upsampling", "bicubic"))
    call = prepare_call(net, x, target=target, reduction_fn=opts.get("reduction_fn"),
                        classes=opts.get("classes"), input_format=opts["input_format"],
                        device=opts["device"], needs_target=method.needs_target,
                        autocast=opts["autocast"], output_key=opts.get("output_key"))
    plan = plan_from_options(net, opts.get("feature_layer"), opts["reduction_layer"],
                             opts.get("feature_layout"), opts.get("feature_call"))

    def run(c: Call):
        return _maps(method, c, plan, opts, own, mode)

    with call.borrowed(), torch.enable_grad():
        if opts.get("sess"):
            if opts.get("aug_smooth"):
                raise expected("sess", "False when aug_smooth=True (one ensemble at a time)", repr(opts["sess"]))
            maps, names, rname = _sess(run, call, plan, opts["sess"])
        elif opts.get("aug_smooth"):
            maps, names, rname = _augmented(run, call, plan, fix_target=method.needs_target)
        else:
            maps, names, rname = run(call)
        _check_maps(method, maps, names, call, plan, opts)
    if method.returns == "map" and mode != "none" and tuple(maps.shape[2:]) != call.layout.spatial:
        maps = resize.imresize(maps, call.layout.spatial, mode)
    if opts["normalize"]:
        maps = normalize_maps(maps)
    out = call.layout.output(maps, call.target.scalar and maps.shape[1] == 1)
    if opts.get("return_layers"):
        return out, (names[0] if len(names) == 1 else names), rname
    return out


def _check_maps(method: Method, maps: torch.Tensor, names: list[str], call: Call, plan: Plan,
                opts: dict) -> None:
    """NaN or Inf anywhere in a map is an error; an all-zero map a :class:`GradattrWarning`.

    One fused reduction on the maps' device (the peak of each map) and one read of its
    ``(N, K)`` result; only when something is wrong is the cause looked for (another pass).
    """
    if not maps.is_floating_point() or maps.numel() == 0:
        return
    peak = maps.detach().flatten(2).abs().amax(-1) if maps.ndim > 2 else maps.detach().abs()
    peak = peak.cpu()
    bad = ~torch.isfinite(peak)
    layer = f"feature layer {names[0]!r}" if len(names) == 1 else (
        f"feature layers {names}" if names else "the input")
    if bool(bad.any()):
        i, k = (int(v) for v in bad.nonzero()[0]) if peak.ndim == 2 else (int(bad.nonzero()[0]), 0)
        raise GradattrError(f"{method.name}: expected finite maps, but the map of sample {i}, target "
                            f"{k} at {layer} has NaN or Inf values: {_cause(method, call, plan, opts, 'nan')}")
    zero = peak == 0
    if method.layered and bool(zero.any()):
        i, k = (int(v) for v in zero.nonzero()[0]) if peak.ndim == 2 else (int(zero.nonzero()[0]), 0)
        what = (f"{int(zero.sum())} of {zero.numel()} maps are" if zero.numel() > 1 and not bool(zero.all())
                else "the map is" if zero.numel() == 1 else "every map is")
        hint = "counterfactual=True (the evidence against the target), or another feature_layer" \
            if "counterfactual" in opts else "another feature_layer"
        warnings.warn(f"gradattr: {method.name} at {layer}: {what} all zero (first: sample {i}, target "
                      f"{k}): {_cause(method, call, plan, opts, 'zero')}; try {hint}",
                      GradattrWarning, stacklevel=4)


def _cause(method: Method, call: Call, plan: Plan, opts: dict, what: str) -> str:
    """Why a map is NaN or all zero, found by one more pass (only when it is)."""
    try:
        cap = capture(call, plan, grad=True)
        s = call.target.scores(cap.output, call.n) if method.needs_target else None
        if s is not None and not bool(torch.isfinite(s).all()):
            return "the score itself is NaN or Inf (the network's output for this target)"
        if any(not bool(torch.isfinite(a).all()) for a in cap.acts):
            return "the layer's activations are NaN or Inf (the network before the layer produced them)"
        if s is None:
            return ("produced by the method from finite activations" if what == "nan" else
                    "every weighted sum was <= 0 before the ReLU")
        grads = _gradients(call, cap, opts.get("counterfactual", False))
        if what == "nan":
            if any(not bool(torch.isfinite(g).all()) for g in grads):
                return ("the gradients of the score at this layer are NaN or Inf although the score is "
                        "finite (a NaN or Inf parameter after the layer: 0 x NaN in the backward)")
            return "the method's weights turned finite activations and gradients into NaN or Inf"
        if all(not bool(g.any()) for g in grads):
            return ("the score does not depend on this layer (its gradient is zero everywhere: an "
                    "untrained or zero-initialised head, or a layer the score does not read)")
        return "every weighted sum was <= 0 before the ReLU (the layer's evidence is all against the target)"
    except Exception:  # noqa: BLE001 - looking for the cause must not hide the finding
        return ("NaN or Inf in the score, the gradients or the weights" if what == "nan" else
                "every weighted sum <= 0 before the ReLU, or a score that does not depend on this layer")


def _maps(method: Method, call: Call, plan: Plan, opts: dict, own: dict, mode: str):
    """``(maps (N, K, *s), feature_names, reduction_name)`` of one (possibly augmented) input."""
    counterfactual = opts.get("counterfactual", False)
    if not method.layered:
        probe = Probe(call, None, counterfactual=counterfactual, upsampling=mode)
        if plan.reduction is not None:
            probe.cap = Capture([], plan, None, plan.reduction)
        maps = method.compute(LayerView(None, None, probe, 0), **own)
        return maps, [], probe.reduction_name
    grad = method.kind == "gradient"
    cap = capture(call, plan, grad=grad, stop=method.stop_early,
                  name_output=bool(opts.get("return_layers")))
    acts = cap.acts
    grads = _gradients(call, cap, counterfactual) if grad else [None] * len(acts)
    if call.autocast is not None:  # low-precision forward passes, maps accumulated in float32
        acts = [a.float() for a in acts]
        grads = [g if g is None else g.float() for g in grads]
    maps = []
    for i, (a, g) in enumerate(zip(acts, grads)):
        probe = Probe(call, cap, i, counterfactual=counterfactual, upsampling=mode)
        out = method.compute(LayerView(a, g, probe, len(acts)), **own)
        maps.append(combine(method.combine, out, a, opts.get("eigen_smooth", False)))
    fused = _fuse(maps, call, mode)
    if method.finish is not None:
        fused = method.finish(probe, fused)
    return fused, cap.plan.names, cap.reduction_name


def _gradients(call: Call, cap: Capture, counterfactual: bool) -> list[torch.Tensor]:
    """``d score_k / d A`` for every feature layer, read as ``(N, K, C, *s)``."""
    s = call.target.scores(cap.output, call.n)
    names = [f"feature layer {nm!r}" for nm in cap.plan.names]
    raw = per_target_grads(s, cap.raw, counterfactual, names, cap.reduction_name)
    out = []
    for g, lp in zip(raw, cap.plan.layers):
        n, k = g.shape[:2]
        out.append(lp.reading.to_ncs(g.flatten(0, 1)).unflatten(0, (n, k)))
    return out


def combine(how: str, out: torch.Tensor, acts: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
    """A method's result -> maps ``(N, K, *s)``: ``ReLU(sum_c w A)``, ``ReLU(sum_c T)`` or as is.

    With ``eigen_smooth`` the channel sum becomes the projection on the first
    principal component of the channel terms (:func:`gradattr.methods.eigen_projection`).
    """
    from .methods.common import eigen_projection

    if how == "map":
        return out
    if how == "weights":
        if eigen_smooth:
            return torch.relu(eigen_projection(out[(...,) + (None,) * (acts.ndim - 2)] * acts[:, None]))
        return torch.relu(torch.einsum("nkc,nc...->nk...", out.to(acts.dtype), acts))
    return torch.relu(eigen_projection(out) if eigen_smooth else out.sum(2))


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
    resized = [resize.imresize(normalize_maps(m), size, mode) for m in maps]
    return normalize_maps(torch.relu(torch.stack(resized).mean(0)))


#: pytorch-grad-cam's default test-time augmentations (ttach): flip x multiply.
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


def _augmented(run, call: Call, plan: Plan, fix_target: bool):
    """``aug_smooth``: the mean of the maps of six augmented inputs, as pytorch-grad-cam does.

    Horizontal flip (the last axis: width, or time for sequences) x multiplication
    by 0.9, 1 and 1.1. Each augmented input's map is un-flipped and min-max
    normalised, then the six are averaged (so the result lies in [0, 1]). The
    top-class target is fixed on the original input first (one more forward
    pass), so every augmentation explains the same class.
    """
    target = call.target
    if fix_target and target.kind == "top":
        target = target.fixed(capture(call, plan, grad=False).output, call.n)
    acc = None
    for flip, factor in AUGMENTATIONS:
        x = call.x.flip(-1) if flip else call.x
        maps, names, rname = run(call.with_input(x * factor, target))
        maps = normalize_maps(maps.flip(-1) if flip else maps)
        acc = maps if acc is None else acc + maps
    return acc / len(AUGMENTATIONS), names, rname


#: SESS's settings (pytorch-grad-cam's defaults); ``sess=dict(...)`` overrides any of them.
SESS_DEFAULTS = {"num_scales": 12, "scale_step_ratio": 2 / 7, "window_size": None, "step_size": None,
                 "pre_filter_ratio": 0.0, "theta": 0.0, "pool": "mean", "smooth": True, "batch_size": 32}


def check_sess(name: str, value):
    """``sess``: ``False``, ``True`` (the defaults) or a dict overriding :data:`SESS_DEFAULTS`."""
    if isinstance(value, bool):
        return dict(SESS_DEFAULTS) if value else False
    if not isinstance(value, dict) or set(value) - set(SESS_DEFAULTS):
        raise expected(name, "True, False or a dict with keys among " + ", ".join(SESS_DEFAULTS),
                       repr(value))
    out = {**SESS_DEFAULTS, **value}
    if out["pool"] not in ("mean", "max") or not 0 <= out["pre_filter_ratio"] < 1 or out["num_scales"] < 1:
        raise expected(name, "pool 'mean' or 'max', 0 <= pre_filter_ratio < 1, num_scales >= 1",
                       repr(value))
    return out


def _window_starts(length: int, step: int, window: int) -> list[int]:
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def _linear(t: torch.Tensor, size, antialias: bool = False) -> torch.Tensor:
    """``(B, C, *s)`` resized (multi-)linearly, half-pixel centres (OpenCV's ``INTER_LINEAR``)."""
    import torch.nn.functional as F

    if tuple(t.shape[2:]) == tuple(size):
        return t
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(t, size=tuple(size), mode=mode, align_corners=False,
                         antialias=antialias and len(size) == 2)


def _scale01(m: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``scale_cam_image`` per map over its trailing dims: ``(m - min) / (max + 1e-7)``."""
    flat = m.flatten(2)
    flat = flat - flat.amin(-1, keepdim=True)
    return (flat / (flat.amax(-1, keepdim=True) + 1e-7)).view_as(m)


def _gaussian_blur(m: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """OpenCV's ``GaussianBlur`` (reflect-101 border) along every trailing dim of ``m (B, K, *s)``."""
    import torch.nn.functional as F

    i = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-i**2 / (2 * sigma**2))
    k = (k / k.sum()).to(m.dtype)
    rank = m.ndim - 2
    for d in range(rank):
        if m.shape[2 + d] <= size // 2:
            continue
        t = m.movedim(2 + d, -1)
        shape = t.shape
        flat = F.pad(t.reshape(-1, 1, shape[-1]), (size // 2, size // 2), mode="reflect")
        t = F.conv1d(flat, k.view(1, 1, -1)).reshape(shape)
        m = t.movedim(-1, 2 + d)
    return m


def _sess(run, call: Call, plan: Plan, cfg: dict):
    """SESS (Tyagi et al., 2022; pytorch-grad-cam's ``SESS``): scales x sliding windows, fused.

    Each sample is resized so its shorter side takes ``num_scales`` sizes (the window
    size, then steps of ``scale_step_ratio`` windows); windows of the shorter side's
    size slide over every scale (``step_size``, windows past the border shifted back).
    Each patch's map (the method's, at the window's size, min-max scaled, as
    pytorch-grad-cam's base CAM returns it) is weighted by the patch's target
    probability (softmax of a class output; the ReLU of a ``reduction_fn`` score)
    over the best patch's, pasted back where the patch came from, resized to the
    input, and fused: the mean over the patches whose value exceeds ``theta``
    (``pool="mean"``) or the maximum; then an 11-tap Gaussian blur (sigma 5) and a
    min-max scaling. The result lies in [0, 1] at the input's resolution. The target
    classes are fixed on the whole input first.
    """
    from .targets import Target

    x = call.x
    n, spatial = x.shape[0], tuple(x.shape[2:])
    target = call.target
    if target.kind != "fn":
        target = target.fixed(capture(call, plan, grad=False).output, n)
    window = cfg["window_size"] or min(spatial)
    step = cfg["step_size"] or window
    inc = int(round(window * cfg["scale_step_ratio"]))
    scales = [window + inc * i for i in range(cfg["num_scales"])]
    out, names, rname = [], [], "output"
    for i in range(n):
        patches, where = [], []
        for s in scales:
            short = spatial.index(min(spatial))  # torchvision's resize(x, s): the shorter side to s
            size = tuple(s if j == short else int(s * d / spatial[short]) for j, d in enumerate(spatial))
            scaled = _linear(x[i:i + 1], size, antialias=True)
            grids = [_window_starts(d, step, window) for d in size]
            for corner in torch.cartesian_prod(*[torch.tensor(g) for g in grids]).reshape(-1, len(size)).tolist():
                sl = tuple(slice(c, c + window) for c in corner)
                patches.append(scaled[(slice(None), slice(None)) + sl])
                where.append((size, corner))
        rows_t = None if target.kind == "fn" else target.classes[i:i + 1]
        scores, maps = [], []
        for start in range(0, len(patches), cfg["batch_size"]):
            batch = torch.cat(patches[start:start + cfg["batch_size"]])
            b = batch.shape[0]
            t_b = target if rows_t is None else Target("per_sample", target.scalar,
                                                      classes=rows_t.expand(b, -1))
            sub = call.with_input(batch, t_b)
            with torch.no_grad():
                y = capture(sub, plan, grad=False).output
            if target.kind == "fn":
                sc = torch.relu(t_b.scores(y, b))
            else:
                per_class = y.flatten(2).sum(-1) if y.ndim > 2 else y
                sc = torch.softmax(per_class.float(), 1).gather(1, rows_t.expand(b, -1).to(y.device))
            scores.append(sc.detach())
            m, names, rname = run(sub)
            m = _scale01(_linear(_scale01(torch.relu(m.float())), (window,) * len(spatial)))
            maps.append(m)
        scores, maps = torch.cat(scores), torch.cat(maps)  # (P, K), (P, K, *window)
        k = maps.shape[1]
        fused = []
        for kk in range(k):
            sc = scores[:, kk]
            order = torch.argsort(sc, stable=True)[int(len(sc) * cfg["pre_filter_ratio"]):]
            best = sc[order[-1]]
            w = sc[order] / best if best > 0 else torch.ones(len(order), device=sc.device)
            total = torch.zeros(spatial, device=x.device)
            counts = torch.zeros(spatial, device=x.device)
            for wj, j in zip(w.tolist(), order.tolist()):
                size, corner = where[j]
                full = torch.zeros(size, device=x.device)
                full[tuple(slice(c, c + window) for c in corner)] = maps[j, kk] * wj
                full = _linear(full[None, None], spatial)[0, 0]
                if cfg["pool"] == "max":
                    total = torch.maximum(total, full)
                else:
                    mask = full > cfg["theta"]
                    total = total + torch.where(mask, full, 0.0)
                    counts = counts + mask
            if cfg["pool"] == "mean":
                total = torch.where(counts > 0, total / counts.clamp(min=1), 0.0)
            fused.append(total)
        out.append(torch.stack(fused))
    maps = torch.stack(out)
    if cfg["smooth"]:
        maps = _gaussian_blur(maps)
    return _scale01(maps), names, rname


__all__ = ["explain", "LayerView", "combine", "check_upsampling"]
