"""The driver every method runs through.

One call of a public function is one :func:`run`: it validates every argument
before touching anything, prepares the input, puts the network in eval mode
(and on the compute device) for the duration, hands a :class:`Session` to the
method, upsamples what the method returns and converts it back to the user's
form. Hooks live inside :meth:`Session.capture` only and are removed in
``finally``; gradients come from ``torch.autograd.grad`` with respect to the
captured feature tensors, so no parameter ``.grad`` is ever written.

How the capture keeps the cost at one forward pass plus the backward of the
network's tail:

* With an explicit feature layer, the forward runs under ``torch.no_grad()``
  until that layer; its hook turns the output into a fresh leaf that requires
  grad and switches grad mode on, so autograd records the tail only.
* With the automatic layer, every module is hooked to find the last tensor
  with the input's layout (see :mod:`gradattr.layers`); the graph is recorded
  from the start because the layer is known only at the end, and the gradient
  is still taken for the tail only.
* A feature hook returns a clone of what it captured, so a later in-place op
  (``ReLU(inplace=True)``) cannot change the captured activations.
* The first pass with a model and an input shape is remembered (weakly, per
  model): the automatic layer, and which call of each feature module to capture
  (a shared activation module runs many times). Later passes take the explicit
  path, touch only that call, and methods that need no score (Eigen-CAM) stop
  the forward pass right after it.
"""
from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import chain

import torch
from torch import nn

from . import resize
from .errors import GradattrError, expected
from .inputs import Layout, prepare
from .layers import check_feature, has_layout, resolve_layer, resolve_layers
from .targets import Target, resolve_target


def resolve_device(device, net: nn.Module) -> torch.device:
    """``"auto"`` (where the parameters are), ``"cpu"``, ``"gpu"``/``"cuda"`` or a torch.device."""
    if isinstance(device, str) and device.lower() == "auto":
        first = next(chain(net.parameters(), net.buffers()), None)
        return torch.device("cpu") if first is None else first.device
    if isinstance(device, str) and device.lower() in ("gpu", "cuda"):
        device = "cuda"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise expected("device", "'auto', 'cpu', 'gpu'/'cuda' or a torch.device", repr(device)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise expected("device", "an available CUDA GPU for device=" + repr(device),
                       "none (torch.cuda.is_available() is False); use device='cpu' or 'auto'")
    return dev


@contextmanager
def borrowed(net: nn.Module, device: torch.device | None = None):
    """Eval mode (and ``device``, if given) for the duration; the model is restored exactly after.

    Computing in eval mode is what every CAM paper assumes (dropout off, batch
    norm on running statistics, samples independent of each other). Only the
    modules that were training are switched back; a model already on ``device``
    (or ``device=None``: leave it where it is, even across several devices) is not moved.
    """
    training = [m for m in net.modules() if m.training]
    tensors = []
    if device is not None:
        tensors = [(store, k, t.device) for m in net.modules() for store in (m._parameters, m._buffers)
                   for k, t in store.items() if t is not None]
        if all(d == device for *_, d in tensors):
            tensors = []
    try:
        if training:
            net.eval()
        if tensors:
            net.to(device)
        yield
    finally:
        for store, k, dev in tensors:
            t = store[k]
            if isinstance(t, nn.Parameter):
                t.data = t.data.to(dev)
                if t.grad is not None:
                    t.grad = t.grad.to(dev)
            else:
                store[k] = t.to(dev)
        for m in training:
            m.training = True


@dataclass
class Capture:
    """What one forward pass captured."""

    acts: list[torch.Tensor]  # one (N, C, *s) per feature layer
    output: object  # the reduction layer's output
    feature_names: list[str]
    reduction_name: str


class Session:
    """One explain call: the network, the prepared input and the resolved options.

    Methods (see :mod:`gradattr.methods`) use :meth:`capture`, :meth:`scores`,
    :meth:`gradients`, :meth:`forward_scores`/:meth:`forward_output` (perturbed
    passes) and :meth:`input_gradients` (guided backprop), and never touch hooks
    themselves.
    """

    def __init__(self, net: nn.Module, x: torch.Tensor, target: Target, features, reduction,
                 upsampling: str = "bicubic", name_output: bool = True):
        self.net, self.x, self.target = net, x, target
        self.name_output = name_output  # name the module that produced the output (costs hooks)
        self.features = features  # list of (module, name) or None for automatic
        self.reduction = reduction  # (module, name) or None for the network output
        self.upsampling = upsampling
        self.calls: list[int | None] | None = None  # which call of each feature module is captured
        self.n, self.rank = x.shape[0], x.ndim - 2

    def fuse(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """One layer's maps as they are; several layers' fused as pytorch-grad-cam does.

        Each layer's map is min-max normalised, resized to the input's size (to the
        largest map's size with ``upsampling="none"``), and the layers are averaged,
        then normalised again: layers of different scales count equally.
        """
        if len(maps) == 1:
            return maps[0]
        if self.upsampling == "none":
            size = max((tuple(m.shape[2:]) for m in maps), key=lambda s: torch.Size(s).numel())
            mode = "bicubic"
        else:
            size, mode = tuple(self.x.shape[2:]), self.upsampling
        resized = [resize.imresize(normalize_maps(m), size, mode) for m in maps]
        return normalize_maps(torch.relu(torch.stack(resized).mean(0)))

    # -- one forward pass ------------------------------------------------------------
    def _watch_reduction(self, handles: list, name_output: bool | None = None):
        """Hook the reduction layer (appending to ``handles``); returns ``finish(output) -> (y, name)``.

        With no reduction layer, ``y`` is the network output, named after the module
        that produced it (``name_output``) or ``"output"``.
        """
        red: dict = {}
        name_output = self.name_output if name_output is None else name_output
        names = Namer(self.net) if self.reduction is None and name_output else None
        if self.reduction is not None:
            handles.append(self.reduction[0].register_forward_hook(
                lambda m, i, o: red.__setitem__("out", o)))
        if names is not None:
            handles += names.attach()

        def finish(output):
            if self.reduction is None:
                return output, names.name_of(output) if names is not None else "output"
            if "out" not in red:
                raise GradattrError(f"reduction_layer: expected a layer that runs in the forward pass, "
                                    f"but {self.reduction[1]!r} was never called for this input")
            return red["out"], self.reduction[1]

        return finish

    def capture(self, grad: bool = True, x: torch.Tensor | None = None, stop: bool = False) -> Capture:
        """Run the network once, capturing the feature layer(s) and the reduction output.

        ``stop=True`` ends the forward pass as soon as the feature layers are captured
        (for methods that need no score, such as Eigen-CAM); ``output`` is then ``None``.
        It takes effect once the call to capture of every layer is known (after the
        first pass with this model and input shape).
        """
        x = self.x if x is None else x
        if self.features is None:
            self.features, self.calls = _AUTO_CACHE.get(self.net, self._cache_key(x)) or (None, None)
        elif self.calls is None:  # explicit layers: which call to capture, if a pass has told
            cached = _AUTO_CACHE.get(self.net, self._cache_key(x, self.features))
            self.calls = cached[1] if cached and cached[0] == self.features else None
        if self.features is None:
            cap, fresh, call = self._capture_auto(grad, x)
            # Later passes of this call (and a re-run) use the layer found here, and so do
            # later calls with the same model and input shape (the cheaper explicit path).
            self.features = [resolve_layer(self.net, cap.feature_names[0], "feature_layer")]
            self.calls = [call]
            _AUTO_CACHE.put(self.net, self._cache_key(x), (self.features, self.calls))
            if fresh:
                return cap
            # The chosen tensor was changed in place after it was recorded: run again,
            # this time protecting it with a clone (explicit-layer path).
        known = self.calls is not None
        cap = self._capture_explicit(grad, x, stop)
        if not known:
            _AUTO_CACHE.put(self.net, self._cache_key(x, self.features), (self.features, self.calls))
        return cap

    def _cache_key(self, x: torch.Tensor, features=None):
        """Cache key: input shape, dtype, device, reduction layer, and the explicit layers' names."""
        return (tuple(x.shape[1:]), x.dtype, x.device, None if self.reduction is None else self.reduction[1],
                None if features is None else tuple(nm for _, nm in features))

    def _capture_explicit(self, grad: bool, x: torch.Tensor, stop: bool = False) -> Capture:
        """Hooks on the known feature layers; the forward runs under no_grad until the first one.

        ``self.calls[i]`` is the call of layer ``i`` to capture (a module the network
        calls several times counts its last call); ``None`` (not known yet) captures
        every call, the last one winning, and records the count.
        """
        slots: list[torch.Tensor | None] = [None] * len(self.features)
        counts = [0] * len(self.features)
        calls = self.calls if self.calls is not None else [None] * len(self.features)
        stop = stop and None not in calls
        n, rank = x.shape[0], self.rank

        def feature_hook(i, name):
            def hook(module, inputs, out):
                k = counts[i]
                counts[i] += 1
                if calls[i] is not None and k != calls[i]:
                    return None  # another call of a shared module: leave it alone
                out = check_feature(out, name, n, rank)
                if grad and not out.requires_grad:
                    out = out.detach().requires_grad_(True)
                    torch.set_grad_enabled(True)  # record the tail from here on
                slots[i] = out
                if stop and all(t is not None for t in slots):
                    raise _Captured
                return out.clone()
            return hook

        handles: list = []
        output = None
        try:
            for i, (module, name) in enumerate(self.features):
                handles.append(module.register_forward_hook(feature_hook(i, name)))
            finish = self._watch_reduction(handles, name_output=False if stop else None)
            with torch.no_grad():
                output = self.net(x)
        except _Captured:
            pass
        finally:
            for h in handles:
                h.remove()
        for i, (_, name) in enumerate(self.features):
            if slots[i] is None:
                raise GradattrError(f"feature_layer: expected a layer that runs in the forward pass, "
                                    f"but {name!r} was never called for this input")
        self.calls = [c if c is not None else k - 1 for c, k in zip(calls, counts)]
        names = [nm for _, nm in self.features]
        if stop:
            return Capture(slots, None, names, self.reduction[1] if self.reduction else "output")
        y, rname = finish(output)
        return Capture(slots, y, names, rname)

    def _capture_auto(self, grad: bool, x: torch.Tensor):
        """Hooks on every module to find the automatic layer: ``(capture, fresh, call)``."""
        n, rank = x.shape[0], self.rank
        seen: list = []  # [name, tensor, version, call] of the latest qualifying outputs, in order
        red: dict = {}
        counts: dict[str, int] = {}
        reduction_module = self.reduction[0] if self.reduction else None
        named = [(m, nm) for nm, m in self.net.named_modules() if nm]

        def hook_for(name, module):
            def hook(m, inputs, out):
                call = counts[name] = counts.get(name, -1) + 1
                if has_layout(out, n, rank):
                    if seen and seen[-1][1] is out:
                        # the same tensor from an enclosing module: name it so
                        seen[-1][0], seen[-1][2], seen[-1][3] = name, out._version, call
                    else:
                        seen.append([name, out, out._version, call])
                        del seen[:-2]  # only the last two can be chosen; let the rest be freed
                if module is reduction_module:  # candidates must come before the reduction layer
                    red["seen"] = [list(s) for s in seen]
            return hook

        handles: list = []
        needs_input_grad = grad and not any(p.requires_grad for p in self.net.parameters())
        try:
            for m, nm in named:
                handles.append(m.register_forward_hook(hook_for(nm, m)))
            finish = self._watch_reduction(handles)
            with torch.set_grad_enabled(grad):
                output = self.net(x.requires_grad_(needs_input_grad) if needs_input_grad else x)
        finally:
            for h in handles:
                h.remove()
            x.requires_grad_(False)
        y, rname = finish(output)
        candidates = [s for s in red.get("seen", seen) if s[1] is not y]
        if not candidates:
            raise GradattrError(
                f"feature_layer: no layer of this network outputs a tensor with the input's layout "
                f"({n}, C, {rank} spatial dims, one of them > 1) before the reduction layer; pass "
                f"feature_layer explicitly")
        name, act, version, call = candidates[-1]
        # ``call`` is usually the module's last; a shared module may run again later on
        # something else (an activation reused after pooling): the chosen call is kept.
        fresh = act._version == version and (act.requires_grad or not grad)
        return Capture([act], y, [name], rname), fresh, call

    def forward_scores(self, x: torch.Tensor, target: Target, rows: torch.Tensor | None = None,
                       replace: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       layer: int = 0) -> torch.Tensor:
        """Scores ``(B, K)`` of a forward pass without gradients, for perturbation methods.

        ``target`` should be :meth:`Target.fixed`; ``rows`` (``B``,) says which
        original sample each row of ``x`` is a copy of; ``replace`` and ``layer``
        are :meth:`forward_output`'s.
        """
        y = self.forward_output(x, replace=replace, layer=layer)
        b = y.shape[0] if isinstance(y, torch.Tensor) else x.shape[0]
        return target.scores(y, b, rows)

    # -- scores and gradients --------------------------------------------------------
    def scores(self, cap: Capture) -> torch.Tensor:
        """The ``(N, K)`` target scores of a capture."""
        return self.target.scores(cap.output, cap.acts[0].shape[0])

    def gradients(self, cap: Capture, counterfactual: bool = False) -> list[torch.Tensor]:
        """``d score_k / d A`` for every feature layer: a list of ``(N, K, C, *s)`` tensors.

        One backward of the tail per target ``k``, all from the same forward pass.
        """
        what = f"feature layer {cap.feature_names[0]!r}"
        return per_target_grads(self.scores(cap), cap.acts, counterfactual,
                                [f"feature layer {nm!r}" for nm in cap.feature_names], what,
                                cap.reduction_name)

    # -- perturbation and input-gradient passes ---------------------------------------
    def forward_output(self, x: torch.Tensor, replace: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       layer: int = 0, call: int | None = None):
        """The reduction layer's output ``y`` of a no-grad forward pass of ``x``.

        Like :meth:`forward_scores` but returns ``y`` itself, so a caller can check
        its batch before scoring it. ``replace`` substitutes the output of feature
        layer ``layer`` on its ``call``-th call (0-based, as counted by
        ``capture`` in ``self.calls``; ``None``: every call), which matters for a module
        that the network calls several times (a shared activation module).
        """
        if self.features is None:
            raise RuntimeError("forward_output needs the feature layer: call capture() first")
        handles: list = []
        count = [0]

        def swap(m, i, o):
            k = count[0]
            count[0] += 1
            if call is None or k == call:
                return replace(o)
            return None

        try:
            if replace is not None:
                handles.append(self.features[layer][0].register_forward_hook(swap))
            finish = self._watch_reduction(handles, name_output=False)
            with torch.no_grad():
                output = self.net(x)
        finally:
            for h in handles:
                h.remove()
        return finish(output)[0]

    def input_gradients(self, counterfactual: bool = False, context=None):
        """``d score_k / d x`` through the whole network: ``(grads (N, K, C, *s), reduction_name)``.

        ``context`` (a context manager, e.g. :class:`gradattr.guided.GuidedRectifiers`)
        is active during the forward pass, so it can change how the graph is
        recorded. The input is a private leaf; the network sees a copy of it, so
        in-place operations on the input are allowed. No parameter ``.grad`` is written.
        """
        leaf = self.x.detach().requires_grad_(True)  # self.x is already a private copy
        handles: list = []
        try:
            finish = self._watch_reduction(handles)
            with context if context is not None else nullcontext(), torch.enable_grad():
                output = self.net(leaf.clone())
        finally:
            for h in handles:
                h.remove()
        y, rname = finish(output)
        s = self.target.scores(y, leaf.shape[0])
        (g,) = per_target_grads(s, [leaf], counterfactual, ["the input"], "the input", rname)
        return g, rname


def per_target_grads(s: torch.Tensor, inputs: list[torch.Tensor], counterfactual: bool,
                     names: list[str], what: str, reduction_name: str) -> list[torch.Tensor]:
    """``d s[:, k] / d inputs[i]`` for every target ``k``: one ``(N, K, *input)`` tensor per input.

    Samples are independent in eval mode, so the gradient of the batch sum is each
    sample's own. Several targets share one vectorised backward
    (``is_grads_batched``), or one backward each where an op cannot be vectorised.
    """
    if not s.requires_grad:
        raise GradattrError(
            f"target: expected a score that depends on {what}, but the score computed from "
            f"reduction layer {reduction_name!r} does not depend on it (is the reduction layer "
            "before the feature layer?)")
    if counterfactual:
        s = -s
    k_count = s.shape[1]
    grads = None
    if k_count > 1:  # all targets in one vectorised backward (vmap over the one-hot rows)
        eye = torch.eye(k_count, dtype=s.dtype, device=s.device)[:, None, :].expand(k_count, *s.shape)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # vmap's "performance drop" notes
                g = torch.autograd.grad(s, inputs, grad_outputs=eye, is_grads_batched=True,
                                        retain_graph=True, allow_unused=True)
            grads = [None if gi is None else gi.transpose(0, 1) for gi in g]
        except RuntimeError:  # an op without a batching rule: one backward per target
            grads = None
    if grads is None:
        per_k = [torch.autograd.grad(s[:, k].sum(), inputs, retain_graph=k < k_count - 1, allow_unused=True)
                 for k in range(k_count)]
        grads = [None if per_k[0][i] is None else torch.stack([g[i] for g in per_k], 1)
                 for i in range(len(inputs))]
    for gi, name in zip(grads, names):
        if gi is None:
            raise GradattrError(f"target: expected a score that depends on {name}, but the score "
                                f"from reduction layer {reduction_name!r} does not depend on it")
    return grads


class _Captured(Exception):
    """Raised by a feature hook to end a forward pass early, once everything is captured."""


class _AutoLayerCache:
    """What a first pass learned for (model, input shape, dtype, device, reduction layer, layers).

    ``(features, calls)``: the automatic feature layer (key without layer names), and
    which call of each feature module is captured (a shared module runs several
    times). Held weakly per model; an entry is used only while its names still
    resolve to the same module objects, so replacing a submodule invalidates it.
    """

    def __init__(self):
        self._store: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, net: nn.Module, key):
        """``(features, calls)`` or ``None``."""
        entry = self._store.get(net, {}).get(key)
        if entry is None:
            return None
        named = dict(net.named_modules())
        return entry if all(named.get(name) is module for module, name in entry[0]) else None

    def put(self, net: nn.Module, key, entry) -> None:
        self._store.setdefault(net, {})[key] = entry


_AUTO_CACHE = _AutoLayerCache()


class Namer:
    """Names the module that produced the network output (MATLAB's reduction layer name)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.last: dict[int, tuple[str, weakref.ref]] = {}

    def attach(self):
        def hook_for(name):
            def hook(m, i, out):
                if isinstance(out, torch.Tensor):
                    self.last[id(out)] = (name, weakref.ref(out))
            return hook
        return [m.register_forward_hook(hook_for(nm)) for nm, m in self.net.named_modules() if nm]

    def name_of(self, output) -> str:
        name, ref = self.last.get(id(output), ("output", None))
        return name if ref is not None and ref() is output else "output"


def check_upsampling(upsampling) -> str:
    if not isinstance(upsampling, str) or upsampling.lower() not in resize.UPSAMPLING_MODES:
        raise expected("upsampling", "one of " + ", ".join(map(repr, resize.UPSAMPLING_MODES)),
                       repr(upsampling))
    return upsampling.lower()


def run(method: Callable[[Session], tuple[torch.Tensor, list[str], str]], net: nn.Module, x, *,
        target=None, reduction_fn=None, feature_layer=None, reduction_layer=None,
        upsampling="bicubic", device="auto", classes=None, input_format=None,
        return_layers=False, normalize=False, needs_target=True):
    """Validate, prepare, run ``method(session)`` in a borrowed model, upsample, convert back.

    ``method`` returns ``(maps (N, K, *s), feature_names, reduction_name)``; maps
    whose spatial size differs from the input's are resized by ``upsampling``.
    """
    if not isinstance(net, nn.Module):
        raise expected("net", "a torch.nn.Module", type(net).__name__)
    mode = check_upsampling(upsampling)
    dev = resolve_device(device, net)
    auto = isinstance(device, str) and device.lower() == "auto"
    features = resolve_layers(net, feature_layer, "feature_layer")
    reduction = resolve_layer(net, reduction_layer, "reduction_layer")
    first = next((p for p in net.parameters() if p.is_floating_point()), None)
    dtype = torch.float32 if first is None else first.dtype
    xt, layout = prepare(x, net, input_format, dev, dtype)
    tgt = resolve_target(target, reduction_fn, classes, xt.shape[0])
    if not needs_target:
        tgt = Target("top", scalar=True) if target is None and reduction_fn is None else tgt
    with borrowed(net, None if auto else dev), torch.enable_grad():
        session = Session(net, xt, tgt, features, reduction, mode, name_output=return_layers)
        maps, fnames, rname = method(session)
    if mode != "none" and tuple(maps.shape[2:]) != layout.spatial:
        maps = resize.imresize(maps, layout.spatial, mode)
    if normalize:
        maps = normalize_maps(maps)
    # A reduction_fn may return (N, K): K maps even though the target itself is 'scalar'.
    out = layout.output(maps, tgt.scalar and maps.shape[1] == 1)
    if return_layers:
        return out, (fnames[0] if len(fnames) == 1 else fnames), rname
    return out


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map to [0, 1] (MATLAB's ``rescale``); a constant map becomes 0."""
    flat = maps.flatten(2)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((flat - lo) / span).view_as(maps)


__all__ = ["run", "Session", "Capture", "Layout", "normalize_maps", "resolve_device"]
