"""Replaying the layers before a feature layer: the later passes of one call run only the layers after it.

A method that scores many copies of one sample's feature map (Ablation-CAM) runs the network
once per chunk of copies, the feature layer's output replaced by the chunk. In a general
network the layers before the feature layer run again on every such pass, on the same input,
to the same outputs. :class:`Replay` records, in one pass, what the modules before the feature
layer were called with and returned: the feature layer itself and the other children of each
module that contains it (for ``layer4`` of a ResNet: ``conv1`` ... ``layer3`` and ``layer4``).
In the later passes of the same call such a module is handed its recorded output instead of
running when it is called with the same arguments as in the recorded pass; a tensor argument is
the same when it is what a replayed module handed over for the recorded tensor in this pass,
written as often since as the recorded one was; the same view of the same memory, not written
since (the input's row); or a tensor equal to the recorded one (``torch.equal``, where that one
was not written after the call). Otherwise the module runs as usual. An output that a later op
wrote (an in-place ReLU after a convolution) is handed over as a copy of what the module
returned; a module whose output shares memory with an argument (an in-place module, a view)
runs. What is replayed is what the module would compute again from the same arguments: in eval
mode (borrowed for the call) a deterministic function of them and of parameters and buffers the
recorded pass did not write (no module is replayed when it wrote one of these modules' buffers).

A replayed pass still runs the modules' hooks (only ``forward`` is replaced), in the
calling thread only: another thread's pass of the same model runs the modules' own
``forward``. The caller checks every replayed pass with an unmodified copy (its score must
reproduce the captured one) and stops replaying when it does not.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

#: Replay the modules before the feature layer in a call's later passes; off: they run every time.
ENABLED = True

_SIMPLE = (type(None), bool, int, float, complex, str, torch.dtype, torch.device, torch.layout,
           torch.memory_format)


def version_of(t: torch.Tensor) -> int | None:
    """``t``'s version counter (bumped by every in-place write), ``None`` for an inference tensor."""
    return None if t.is_inference() else t._version


_version = version_of


def _leaves(value, out: list) -> None:
    """``value``'s arguments as a flat list: tensors as ``(tensor, version)``, simple values as
    themselves, containers as their type and length, anything else by identity."""
    if isinstance(value, torch.Tensor):
        out.append((value, _version(value)))
    elif isinstance(value, (tuple, list)):
        out.append((type(value), len(value)))
        for v in value:
            _leaves(v, out)
    elif isinstance(value, dict):
        out.append((dict, tuple(value)))
        for v in value.values():
            _leaves(v, out)
    elif isinstance(value, _SIMPLE):
        out.append(("=", value))
    else:
        out.append(("is", value))


@dataclass(eq=False)
class _Call:
    """One recorded call of a module: its arguments' leaves, its output and when it ran."""

    args: list
    out: object
    version: int | None  # the output's version when forward returned it
    start: int
    end: int
    #: the output as it was returned, kept until :meth:`Replay.settle` (a later op may write it)
    kept: torch.Tensor | None = None
    #: how it is replayed (set by :meth:`Replay.settle`): None (it runs), "out" (the recorded
    #: output itself), "copy" (a copy of the output as returned: the pass wrote it afterwards)
    give: str | None = None
    #: per argument leaf: a tensor not written since the call (it can be compared by value)
    still: tuple = ()


def _weight(m: nn.Module) -> int:
    """What running ``m`` is taken to cost, to judge a pass: its parameters, plus one."""
    return 1 + sum(p.numel() for p in m.parameters())


class Replay:
    """The recorded calls of the modules before the feature layer ``name`` of ``net`` (its call
    ``at``, 0-based; its earlier calls are replayed like the other modules'), for the later
    passes of one call (see the module's docstring).

    ``install()`` patches the modules' ``forward`` for one pass (a handle whose ``remove()``
    puts them back); the first pass records, :meth:`settle` then decides what may be replayed,
    and the passes after it replay. ``mine()`` is the calling thread's guard."""

    def __init__(self, net: nn.Module, name: str, at: int, mine):
        self.mine, self.mode, self.seq, self.at = mine, "record", 0, at
        self.modules = _before(net, name)
        self.feature = self.modules[-1]
        self.calls: dict[int, list[_Call]] = {}
        self.counts: dict[int, int] = {}
        self.weights = {id(m): _weight(m) for m in self.modules}
        self.buffers = _buffer_versions(self.modules)
        self.replayed = self.computed = 0
        #: the recording pass reached the feature layer; the modules called after that
        self.begun, self.after = False, set[int]()
        #: in a replaying pass, per recorded output: (what was handed over for it, its version then)
        self.given: dict[int, tuple[torch.Tensor, int | None, int | None]] = {}

    @property
    def works(self) -> bool:
        """The last pass skipped at least 90 % of what the modules before the feature layer cost
        (by parameters), or none ran since the recording: later chunks may be small."""
        return self.mode == "replay" and self.computed * 9 <= self.replayed

    def install(self) -> _Patch:
        self.counts, self.given = {}, {}
        self.replayed = self.computed = 0
        return _Patch(self)

    def settle(self) -> None:
        """After the recording pass: how each call is replayed (a module called after the feature
        layer began is left to run, uncounted); off when the feature layer's call was not reached
        or the pass wrote a buffer of these modules."""
        feature = self.calls.get(id(self.feature), [])
        if self.mode != "record" or len(feature) != self.at + 1 or _buffer_versions(self.modules) != self.buffers:
            self.mode, self.calls = "off", {}
            return
        begin = feature[self.at].start
        for m in self.modules:
            calls = self.calls.get(id(m), [])
            if m is not self.feature and (id(m) in self.after or not all(c.end <= begin for c in calls)):
                self.calls.pop(id(m), None)
                self.weights[id(m)] = 0
                continue
            for c in calls:
                c.give = _how(c)
                c.kept = c.kept if c.give == "copy" else None
                c.still = tuple(isinstance(a, torch.Tensor) and v is not None and _version(a) == v
                                for a, v in c.args)
        self.mode = "replay"

    def call(self, m: nn.Module, forward, args, kwargs):
        if not self.mine():
            return forward(*args, **kwargs)
        k = self.counts.get(id(m), 0)
        self.counts[id(m)] = k + 1
        if self.mode == "record":
            feature = m is self.feature and k == self.at
            if self.begun or m is self.feature and k > self.at:  # (after the feature layer began)
                if m is not self.feature:
                    self.after.add(id(m))
                return forward(*args, **kwargs)
            self.begun = feature
            leaves: list = []
            _leaves((args, kwargs), leaves)
            start = self.seq
            self.seq += 1
            out = forward(*args, **kwargs)
            tensor = isinstance(out, torch.Tensor)
            self.calls.setdefault(id(m), []).append(_Call(
                leaves, out, _version(out) if tensor else None, start, self.seq,
                out.clone() if tensor and not feature else None))
            self.seq += 1
            return out
        calls = self.calls.get(id(m)) if self.mode == "replay" else None
        if calls is None:  # (off, or called after the feature layer)
            return forward(*args, **kwargs)
        if k < len(calls) and self._same(calls[k], args, kwargs):
            c = calls[k]
            out = cast(torch.Tensor, c.out if c.give == "out" else cast(torch.Tensor, c.kept).clone())
            self.given[id(c.out)] = (out, _version(out), c.version)
            self.replayed += self.weights[id(m)]
            return out
        self.computed += self.weights[id(m)]
        return forward(*args, **kwargs)

    def _same(self, c: _Call, args, kwargs) -> bool:
        """Whether call ``c`` may be replayed for these arguments."""
        if c.give is None or c.give == "out" and _version(cast(torch.Tensor, c.out)) != c.version:
            return False
        leaves: list = []
        _leaves((args, kwargs), leaves)
        if len(leaves) != len(c.args):
            return False
        for (a, v), (ra, rv), still in zip(leaves, c.args, c.still):
            if isinstance(ra, torch.Tensor):
                if not isinstance(a, torch.Tensor) or not self._same_tensor(a, v, ra, rv, still):
                    return False
            elif isinstance(a, torch.Tensor) or a is not ra and a != ra:
                return False
            elif ra == "is":
                if v is not rv:
                    return False
            elif ra == "=":
                if type(v) is not type(rv) or v != rv:
                    return False
            elif v != rv:  # a container: its type and length (or keys)
                return False
        return True

    def _same_tensor(self, a: torch.Tensor, v: int | None, ra: torch.Tensor, rv: int | None,
                     still: bool) -> bool:
        """``a`` (at version ``v``) holds what ``ra`` held when it was recorded (at version ``rv``):
        what this pass was handed for ``ra`` by a replayed module, written as often since as
        ``ra`` was in the recorded pass; the same view of the same memory, not written since;
        or, ``ra`` not written since the recorded call (``still``), a tensor equal to it."""
        if rv is None or v is None or a.shape != ra.shape or a.dtype != ra.dtype or a.device != ra.device:
            return False
        given = self.given.get(id(ra))
        if given is not None:
            out, v0, rv0 = given
            return a is out and v0 is not None and rv0 is not None and v - v0 == rv - rv0
        if a is ra or a.data_ptr() == ra.data_ptr() and a.stride() == ra.stride():
            return v == rv
        return still and _version(ra) == rv and bool(torch.equal(a, ra))


def _how(c: _Call) -> str | None:
    """How a recorded call is replayed (see :attr:`_Call.give`): not when its output is no
    tensor, shares memory with one of its arguments (an in-place module: running it is what
    writes that argument) or is the feature layer's written after it returned."""
    out = c.out
    if not isinstance(out, torch.Tensor) or c.version is None:
        return None
    ptr = out.untyped_storage().data_ptr()
    if any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == ptr for a, _ in c.args):
        return None
    if _version(out) == c.version:
        return "out"
    return "copy" if c.kept is not None else None


class _Patch:
    """The replay's modules' ``forward`` dispatching to it in this thread for one pass;
    ``remove()`` ends that. A module's ``forward`` is replaced once, by a dispatcher, while any
    thread replays it (each thread's passes go to its own replay, other calls to the module's
    own ``forward``), and put back as it was when the last such pass ends."""

    def __init__(self, replay: Replay):
        self.modules, me = replay.modules, threading.get_ident()
        with _PATCH_LOCK:
            for m in self.modules:
                entry = _PATCHED.get(id(m))
                if entry is None:
                    own, forward, active = m.__dict__.get("forward", _MISSING), m.forward, dict[int, Replay]()
                    entry = _PATCHED[id(m)] = (own, active)
                    m.__dict__["forward"] = _dispatcher(m, forward, active)
                entry[1][me] = replay

    def remove(self) -> None:
        me = threading.get_ident()
        with _PATCH_LOCK:
            for m in self.modules:
                entry = _PATCHED.get(id(m))
                if entry is None:
                    continue
                entry[1].pop(me, None)
                if not entry[1]:
                    del _PATCHED[id(m)]
                    if entry[0] is _MISSING:
                        m.__dict__.pop("forward", None)
                    else:
                        m.__dict__["forward"] = entry[0]
        self.modules = []


_MISSING = object()
#: Per patched module (by id): (its own ``forward`` attribute or _MISSING, {thread: replay}).
_PATCHED: dict[int, tuple[object, dict[int, Replay]]] = {}
_PATCH_LOCK = threading.Lock()


def _dispatcher(m: nn.Module, forward, active: dict[int, Replay]):
    def patched(*args, **kwargs):
        replay = active.get(threading.get_ident())
        return forward(*args, **kwargs) if replay is None else replay.call(m, forward, args, kwargs)
    return patched


def _before(net: nn.Module, name: str) -> list[nn.Module]:
    """The other children of every module containing the feature layer ``name`` (the members of
    a ``ModuleList`` or ``ModuleDict`` among them), then the layer."""
    chain, m = [net], net
    for part in name.split(".") if name else ():
        m = m._modules.get(part)  # type: ignore[assignment]
        if m is None:  # (a layer reached otherwise than through _modules: not replayed)
            return []
        chain.append(m)
    out: list[nn.Module] = []
    seen = {id(c) for c in chain}

    def add(parent: nn.Module) -> None:
        for child in parent._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                if isinstance(child, _LISTS):  # (never called itself: its members are)
                    add(child)
                else:
                    out.append(child)
    for parent in chain[:-1]:
        add(parent)
    return out + [chain[-1]]


#: Containers that hold modules without being called: their members are the candidates.
_LISTS = (nn.ModuleList, nn.ModuleDict)


def _buffer_versions(modules: list[nn.Module]) -> list:
    return [(id(b), _version(b)) for m in modules for b in m.buffers()]


def replay_for(net: nn.Module, name: str, at: int | None, mine) -> Replay | None:
    """A :class:`Replay` of the modules before call ``at`` of the feature layer ``name``, or
    ``None`` where that call is not known or a
    module's ``forward`` cannot be replaced: a scripted or ``torch.compile``d network or part
    (whose graph would not call it), one holding an ``nn.DataParallel`` (whose replicas would
    carry the patched ``forward`` to other devices), or a layer not reached through ``_modules``."""
    if not ENABLED or isinstance(net, torch.jit.ScriptModule) or hasattr(net, "_orig_mod") or not _before(net, name) \
            or any(isinstance(m, (torch.jit.ScriptModule, nn.DataParallel)) or hasattr(m, "_orig_mod")
                   for m in net.modules()):
        return None
    return None if at is None else Replay(net, name, at, mine)
