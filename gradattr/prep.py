"""One prepared call: what every method, metric, ``compare`` and the command line start from.

:func:`prepare_call` validates the network, resolves the device and dtype,
prepares the input (:func:`gradattr.inputs.prepare`) and resolves the target
(:func:`gradattr.targets.resolve_target`), before anything is changed.
:meth:`Call.borrowed` then lends the network for the call: eval mode and the
compute device, restored exactly afterwards.

(:class:`gradattr.borrow.borrowed`).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import cast

import torch
from torch import nn

from .borrow import borrowed
from .errors import GradattrError, expected
from .inputs import Layout, check_compute_device, check_model, prepare_inputs, prepare_kwargs
from .reading import Consumer, Unsettled, confirm
from .targets import Target, resolve_target

AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
            "float16": torch.float16}


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
    return check_compute_device(dev)


@dataclass(slots=True)
class Deferred:
    """What one call settles after it started, shared by the call and its augmented copies
    (:meth:`Call.with_input`); the only mutable part of a call.

    ``checks``: the deferred NaN/Inf checks ``(sum, check)`` of the input and the scores, read
    once at the end of the call (:func:`read_checks`, which empties the list); ``None``: every
    check runs at once. ``pending``: a presumed input reading ``(net, key, reading)`` that the
    call's first forward pass confirms (or raises :class:`~gradattr.reading.Unsettled`), then
    ``None``.
    """

    checks: list | None = None
    pending: tuple | None = None


@dataclass(frozen=True)
class Call:
    """A validated, prepared call: the network, the input ``(N, C, *S)``, the target, the device.

    Frozen: what a call learns while it runs (deferred checks, a reading still to confirm)
    is held by its :class:`Deferred`.
    """

    net: nn.Module
    x: torch.Tensor
    layout: Layout
    target: Target
    device: torch.device | None  # None: leave the model where it is ("auto")
    autocast: torch.dtype | None = None
    output_key: object = None
    inputs: tuple = ()  # several inputs: all of them, None at ``explain`` (x goes there)
    explain: int = 0
    forward_kwargs: dict | None = None
    deferred: Deferred = field(default_factory=Deferred)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def rank(self) -> int:
        return self.x.ndim - 2

    def borrowed(self):
        """Eval mode and the compute device for the duration (see :func:`borrowed`)."""
        return borrowed(self.net, self.device)

    def precision(self):
        """``torch.autocast`` for a forward pass when asked for, else nothing."""
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.x.device.type, dtype=self.autocast)

    def with_input(self, x: torch.Tensor, target: Target | None = None) -> Call:
        """The same call on another input of the same form (augmented copies)."""
        return replace(self, x=x, target=self.target if target is None else target)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None):
        """``net(x)``, or with several inputs ``net(*inputs, **forward_kwargs)`` with ``x`` explained.

        ``x`` may hold another number of rows than the call's input (perturbed copies,
        interpolation points): ``rows`` says which sample each row belongs to, and the
        other inputs and the batched keyword inputs (first dimension N) follow them. A
        call of one sample needs no ``rows``.
        """
        x = self.layout.to_network(x)
        if self.deferred.pending is not None:
            return self._confirming(x)
        if not self.inputs and not self.forward_kwargs:
            return self.net(x)
        n, b = self.n, x.shape[0]
        if rows is None and b != n:
            if n != 1:
                raise GradattrError(f"x: this method runs batches of {b} rows for {n} samples, which "
                                    "it cannot pair with the other inputs of a tuple x or with "
                                    "forward_kwargs; explain one sample at a time")
            rows = torch.zeros(b, dtype=torch.long)

        def follow(v):
            if rows is None or not isinstance(v, torch.Tensor) or v.ndim == 0 or v.shape[0] != n:
                return v
            return v[rows.to(v.device)]
        args = [x if i == self.explain else follow(v) for i, v in enumerate(self.inputs)] or [x]
        kwargs = {k: follow(v) for k, v in (self.forward_kwargs or {}).items()}
        return self.net(*args, **kwargs)

    def _confirming(self, x: torch.Tensor):
        """The first forward pass of a call whose input reading was presumed: confirmed here
        (:func:`gradattr.reading.confirm`), or :class:`~gradattr.reading.Unsettled`."""
        deferred = self.deferred
        pending, deferred.pending = cast(tuple, deferred.pending), None  # called only while one is pending
        consumer = Consumer(self.net, x)
        try:
            with consumer:
                y = self.net(x, **(self.forward_kwargs or {}))
        except GradattrError:
            raise
        except Exception:  # noqa: BLE001 - the network's own error (or a hook ending the pass
            # early) once its first layer took x as presumed; else the observation says why
            if not confirm(pending, x, consumer, None, rows=False):
                raise Unsettled from None
            raise
        if not confirm(pending, x, consumer, y):
            raise Unsettled
        return y


def first_parameter(net: nn.Module) -> nn.Parameter | None:
    """``next(net.parameters(), None)``, found without building the generator's names and
    memo (the same module order: depth first, a module's own parameters before its children's)."""
    for p in net._parameters.values():
        if p is not None:
            return p
    for child in net._modules.values():
        if child is not None:
            p = first_parameter(child)
            if p is not None:
                return p
    return None


def _model_dtype(net: nn.Module) -> torch.dtype:
    first = next((p for p in net.parameters() if p.is_floating_point()), None)
    return torch.float32 if first is None else first.dtype


def autocast_dtype(value) -> torch.dtype | None:
    """The dtype of the ``autocast`` option (checked by its ``Option``): ``None``, ``"bf16"``..."""
    return None if value is None else AUTOCAST[value.lower()]


def prepare_call(net, x, *, target=None, reduction_fn=None, classes=None, input_format=None,
                 device="auto", needs_target: bool = True, autocast=None, output_key=None,
                 needs_grad: bool = True, explain=0, forward_kwargs=None,
                 several: bool = False, defer_checks: bool = False, presume: bool = False) -> Call:
    """Validate and prepare everything a call needs; nothing is changed yet.

    ``needs_target=False`` (Eigen-CAM, RISE without a class...) scores each
    sample's top class where a score is needed at all; ``needs_grad=False``
    (metrics, which run forward passes only) accepts inputs made under
    ``torch.inference_mode()``. ``defer_checks=True`` defers the NaN/Inf checks of the
    input and the scores onto ``Call.deferred.checks``, for :func:`read_checks` to read once.
    ``presume=True`` lets the call's first forward pass confirm the input's reading
    (``Call.deferred.pending``; the caller reruns with ``presume=False`` on
    :class:`~gradattr.reading.Unsettled`), so that a first call costs no pass of its own.
    """
    check_model(net)
    auto = isinstance(device, str) and device.lower() == "auto"
    first = first_parameter(net)  # one look at the parameters serves the device and dtype
    if auto and first is not None:
        dev, dtype = check_compute_device(first.device), first.dtype if first.is_floating_point() \
            else _model_dtype(net)
    else:
        dev, dtype = resolve_device(device, net), _model_dtype(net)
    amp = autocast_dtype(autocast)
    if not several and isinstance(x, tuple):
        raise expected("x", "one tensor or array here (several inputs, a tuple x, are taken by the "
                       "attribution methods)", f"a {type(x).__name__} of {len(x)} items")
    if not several and forward_kwargs:
        raise expected("forward_kwargs", "None here (keyword inputs are taken by the attribution "
                       "methods)", "a dict")
    checks: list | None = [] if defer_checks else None
    pending: list | None = [] if presume and not isinstance(x, tuple) and not forward_kwargs else None
    kwargs = prepare_kwargs(forward_kwargs, dev) if forward_kwargs else None
    xt, layout, inputs = prepare_inputs(x, net, explain, input_format, dev, dtype,
                                        needs_grad=needs_grad, checks=checks,
                                        observe=_observer(net, None if auto else dev, kwargs, amp),
                                        pending=pending)
    if needs_target or target is not None or reduction_fn is not None:
        tgt = resolve_target(target, reduction_fn, classes, xt.shape[0])
    else:
        tgt = Target("top", scalar=True)
    if output_key is not None:
        tgt = tgt.with_output_key(output_key)
    return Call(net, xt, layout, tgt, None if auto else dev, amp, output_key, inputs,
                explain if inputs else 0, kwargs, Deferred(checks, pending[0] if pending else None))


def _observer(net: nn.Module, device: torch.device | None, kwargs: dict | None, amp):
    """``observe(t) -> net(t)``: one forward pass without gradients, the model borrowed (eval
    mode, the compute device), for :func:`gradattr.reading.observe_reading` (first calls only)."""
    def observe(t: torch.Tensor):
        with borrowed(net, device), torch.no_grad(), (
                torch.autocast(t.device.type, dtype=amp) if amp is not None else nullcontext()):
            return net(t, **(kwargs or {}))
    return observe


def _read(call: Call, more: torch.Tensor | None) -> list[float] | None:
    """The deferred checks and ``more`` in one copy to the host (:func:`_read_once`; on the CPU,
    with no synchronisation to save, one by one: :func:`_read_on_cpu`); runs the failing checks
    and returns ``more``'s values (flattened) as Python floats."""
    checks = call.deferred.checks
    pending = list(checks) if checks else ()
    if pending:
        cast(list, checks).clear()  # (shared with the call's augmented copies)
    if not pending and more is None:
        return None
    cpu = (more is None or more.is_cpu) and all(sm.is_cpu for sm, _ in pending)
    values = _read_on_cpu(pending, more) if cpu else _read_once(pending, more)
    for (_, check), v in zip(pending, values):
        if not math.isfinite(v):
            check()
    return values[len(pending):]


def _read_on_cpu(pending, more: torch.Tensor | None) -> list[float]:
    """:func:`_read`'s values on the CPU: each sum by ``float`` (finite or not in its own dtype;
    one that only overflows the map's dtype made the copy's check run, which passes), ``more`` by
    ``tolist``: the same floats, without the reshapes and the concatenation of the one copy."""
    values = [float(sm) for sm, _ in pending]
    if more is not None:
        more = more if more.is_floating_point() else more.float()
        if more.ndim == 2:  # the (N, K) peaks, flattened here (a reshape costs more than the read)
            values += [v for row in more.tolist() for v in row]
        else:
            values += more.reshape(-1).tolist()
    return values


def _read_once(pending, more: torch.Tensor | None) -> list[float]:
    """:func:`_read`'s values in one device-to-host copy: the call's one host synchronisation."""
    # one dtype for the copy: the map's (a sum that overflows it only makes its check run)
    dtype = more.dtype if more is not None and more.is_floating_point() else torch.float32
    parts = [t if t.dtype == dtype else t.to(dtype)
             for t in [sm.reshape(1) for sm, _ in pending] + ([] if more is None else [more.reshape(-1)])]
    cuda = parts[0].device.type == "cuda"
    mode = torch.cuda.get_sync_debug_mode() if cuda else 0
    if mode:  # the call's one host synchronisation, allowed under set_sync_debug_mode
        torch.cuda.set_sync_debug_mode(0)  # (which a test sets to "error" to prove there is no other)
    try:
        return (torch.cat(parts) if len(parts) > 1 else parts[0]).cpu().tolist()
    finally:
        if mode:
            torch.cuda.set_sync_debug_mode(mode)


def read_checks(call: Call, more: torch.Tensor | None = None) -> torch.Tensor | None:
    """Read the call's deferred checks and ``more`` (any tensor) in one device-to-host copy.

    A check whose sum is not finite runs (and raises its error, the one it would have
    raised at once); the checks are emptied. Returns ``more`` as read (on the CPU).
    """
    values = _read(call, more)
    if more is None or values is None:
        return None
    return torch.tensor(values, dtype=more.dtype if more.is_floating_point() else torch.float32
                        ).view(more.shape).to(more.dtype)


def read_values(call: Call, more: torch.Tensor) -> list[float]:
    """:func:`read_checks` returning ``more``'s values (flattened) as Python floats: the
    engine's read of the maps' peaks, with no tensor made of them on the host."""
    return cast(list[float], _read(call, more))  # a list whenever ``more`` is given


__all__ = ["Call", "Deferred", "prepare_call", "read_checks", "read_values", "borrowed", "resolve_device", "GradattrError"]
