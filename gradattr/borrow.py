"""Lending a model for one call: eval mode, the compute device and the buffers, restored exactly after.

Borrowing is counted per module and guarded by a lock, so several threads can explain one
shared model (or models sharing a submodule) at once: the first borrower of a module switches
it to eval mode and snapshots its buffers, the last one restores both; the device is borrowed
per model. Training the model in another thread while it is explained remains unsafe.
"""
from __future__ import annotations

import threading

import torch
from torch import nn

from .errors import expected


class _Borrow:
    """The device of one model, shared by the calls that borrow it at once."""

    def __init__(self, net: nn.Module, device: torch.device | None):
        self.count = 0
        self.device = device
        self.tensors = []
        if device is not None:
            self.tensors = [(store, k, t.device) for m in net.modules() for store in (m._parameters, m._buffers)
                            for k, t in store.items() if t is not None]
            if all(d == device for *_, d in self.tensors):
                self.tensors = []

    def lend(self, net: nn.Module):
        if self.tensors:
            net.to(self.device)

    def restore(self):
        for store, k, dev in self.tensors:
            t = store[k]
            if isinstance(t, nn.Parameter):
                t.data = t.data.to(dev)
                if t.grad is not None:
                    t.grad = t.grad.to(dev)
            else:
                store[k] = t.to(dev)


#: Modules of these exact types write no buffer in eval mode (their running statistics are read,
#: not updated): no snapshot. Subclasses may override ``forward`` and are snapshot like any other.
_READ_ONLY_IN_EVAL = frozenset({nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                                nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d})


def buffer_snapshot(module: nn.Module) -> list:
    """``(name, tensor, version, copy)`` per buffer of ``module`` (an inference tensor has no
    version: only its replacement is undone); none for :data:`_READ_ONLY_IN_EVAL`'s types."""
    if not module._buffers or type(module) in _READ_ONLY_IN_EVAL:
        return []
    with torch.no_grad():
        return [(k, t, None, None) if t.is_inference() else (k, t, t._version, t.clone())
                for k, t in module._buffers.items() if t is not None]


def put_back(module: nn.Module, training: bool, buffers: list) -> None:
    """``module``'s buffers as :func:`buffer_snapshot` saw them, and its ``training`` flag."""
    if buffers:
        with torch.no_grad():
            for k, t, version, copy in buffers:
                if version is not None and t._version != version:  # written in place
                    t.copy_(copy)
                if module._buffers.get(k) is not t:  # replaced (or moved back to its device)
                    module._buffers[k] = t
    if module.training != training:
        module.training = training


class _ModuleBorrow:
    """One module's training flag and buffers, shared by every call that borrows it at once.

    Counted per module, not per model: a submodule shared by two models (one backbone, two
    heads) stays in eval mode until the last call through either model ends. The buffers
    are snapshot when the first call borrows the module (:func:`buffer_snapshot`) and put
    back when the last one returns it: a forward pass that writes a buffer even in eval mode
    (a step counter, an EMA) changes it only for the duration of the calls. ``training`` and
    ``buffers``, when given, are what an earlier borrow saw (:func:`_spill`).
    """

    __slots__ = ("count", "module", "training", "buffers")

    def __init__(self, module: nn.Module, training: bool | None = None, buffers: list | None = None,
                 count: int = 0):
        self.count = count
        self.module = module
        self.training = module.training if training is None else training
        self.buffers = buffer_snapshot(module) if buffers is None else buffers

    def restore(self):
        put_back(self.module, self.training, self.buffers)


def modules_of(net: nn.Module) -> list[nn.Module]:
    """Every module of ``net`` once (``net.modules()``'s set), read from ``_modules`` directly.

    Walked on every call (a module added or replaced since the last call is seen); about
    five times cheaper than ``named_modules``, which builds every name.
    """
    out, seen, i = [net], {id(net)}, 0
    while i < len(out):
        for m in out[i]._modules.values():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                out.append(m)
        i += 1
    return out


_BORROWS: dict[int, _Borrow] = {}
_MODULES: dict[int, _ModuleBorrow] = {}  # the per-module records, once two borrows overlap
_SOLO: list = [None]  # the one borrow in progress while no other is (its state in two lists)
_BORROW_LOCK = threading.RLock()


def _spill() -> None:
    """The lone borrow in progress, if any, turned into per-module records (counted once each),
    as if it had made them when it began: a second borrow is starting (called under the lock)."""
    solo = _SOLO[0]
    if solo is None:
        return
    _SOLO[0] = None
    saved = dict(solo.buffers)
    solo.borrows = [_ModuleBorrow(m, flag, saved.get(i, []), count=1)
                    for i, (m, flag) in enumerate(zip(solo.modules, solo.flags))]
    _MODULES.update((id(m), mb) for m, mb in zip(solo.modules, solo.borrows))


class borrowed:
    """Eval mode (and ``device``, if given) for the duration; the model is restored exactly after.

    Eval mode (what every CAM paper assumes: dropout off, batch norm on running statistics)
    and the buffers are borrowed per module (:class:`_ModuleBorrow`): each module's flag and
    buffers are put back as the first concurrent call found them once the last such call
    (through this model or another sharing the module) returns it, so a mode changed while a
    call runs is undone. The device is borrowed per model; a model already on ``device`` (or
    ``device=None``: leave it where it is) is not moved. A class, not a generator: its
    per-call cost is paid on every call. A borrow that starts while no other runs (the common
    case) keeps the flags and buffers in two lists, no record per module; a second borrow
    starting meanwhile turns them into the records (:func:`_spill`): the same counting.
    """

    __slots__ = ("net", "device", "modules", "borrows", "state", "flags", "buffers")

    def __init__(self, net: nn.Module, device: torch.device | None = None):
        self.net, self.device = net, device

    def __enter__(self):
        net, device = self.net, self.device
        self.modules = modules = modules_of(net)
        with _BORROW_LOCK:
            state = _BORROWS.get(id(net))
            if state is not None and device is not None and state.tensors and state.device != device:
                raise expected("device", f"{state.device} while another call explains this model there",
                               repr(device))
            if _SOLO[0] is None and not _MODULES:  # alone: the state in two lists
                self.flags = flags = [m.training for m in modules]
                self.buffers = [(i, b) for i, m in enumerate(modules) if m._buffers
                                for b in (buffer_snapshot(m),) if b]
                self.borrows = None
                _SOLO[0] = self
                training = True in flags
            else:
                _spill()
                held = _MODULES
                self.borrows = borrows = [held.get(id(m)) or held.setdefault(id(m), _ModuleBorrow(m))
                                          for m in modules]
                for mb in borrows:
                    mb.count += 1
                training = any(m.training for m in modules)
            self.state = None
            try:
                if training:
                    net.eval()
                if state is None:
                    fresh = _Borrow(net, device)
                    try:
                        fresh.lend(net)
                    except BaseException:
                        fresh.restore()  # (a move that failed part way)
                        raise
                    state = _BORROWS[id(net)] = fresh
            except BaseException:  # nothing of this borrow stays counted: the next call's is whole
                self.__exit__()
                raise
            state.count += 1
            self.state = state
        return None

    def __exit__(self, *exc) -> None:
        held, state = _MODULES, self.state
        with _BORROW_LOCK:
            if state is not None:  # (None: __enter__ failed before the device was borrowed)
                state.count -= 1
                if state.count == 0:
                    del _BORROWS[id(self.net)]
                    state.restore()
            if self.borrows is None:  # alone from start to end
                _SOLO[0] = None
                modules = self.modules
                for i, buffers in self.buffers:
                    put_back(modules[i], self.flags[i], buffers)
                for m, flag in zip(modules, self.flags):
                    if m.training != flag:
                        m.training = flag
                return
            for m, mb in zip(self.modules, self.borrows):
                mb.count -= 1
                if mb.count == 0:
                    del held[id(m)]
                    mb.restore()
