"""Running hooked forward passes: hooks that act only in the thread that installed them, run
eagerly under ``torch.compile``, the submodule a name refers to, and the hooks that find the
scored output. What the capture pass, the scorer, the score gradients and the attention
observer build their passes from.

Every hook acts only for the thread that installed it, so another thread's
forward pass of the same model (explained or not) never sees it.
"""
from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

from ..errors import GradattrError
from ..prep import Call


class eager:
    """``fn`` called eagerly, also inside a ``torch.compile``d model (a hook reads or swaps
    tensors; Dynamo must not trace it nor bake in what it saw). Wrapping costs one small
    object per hook, not a new disabled function per call, and outside ``torch.compile`` no
    disabled function runs at all (one costs about 10 us per call inside a forward pass): only
    where Dynamo traces the hook (``is_compiling()`` is true there) does it break the graph at
    ``_eagerly``, which runs ``fn`` eagerly, as a disabled ``__call__`` did."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        if torch.compiler.is_compiling():  # (Dynamo traces this as True and breaks the graph at
            return _eagerly(self.fn, *args)  # the disabled call; outside it, no wrapper runs)
        return self.fn(*args)


@torch.compiler.disable
def _eagerly(fn, *args):
    return fn(*args)


class _Mine:
    __slots__ = ("owner",)

    def __init__(self):
        self.owner = threading.get_ident()

    def __call__(self) -> bool:
        if torch.compiler.is_compiling():  # Dynamo cannot trace threading.get_ident (and must
            return _eagerly(_is_owner, self)  # not bake it in): asked eagerly there
        return threading.get_ident() == self.owner


def _is_owner(mine: _Mine) -> bool:
    return threading.get_ident() == mine.owner


def thread_guard():
    """A guard for hooks, ``mine()`` true only in the thread that created it (evaluated
    eagerly under ``torch.compile``)."""
    return _Mine()


def module_named(net: nn.Module, name: str) -> nn.Module:
    """The submodule of ``net`` called ``name``: ``net.get_submodule(name)``, its path walked
    through ``_modules`` (a dict look-up per part, about ten times cheaper: the hot path looks
    up its layers on every call); a part not found there goes to ``get_submodule``, which
    finds it otherwise or raises its error."""
    m: nn.Module | None = net
    for part in name.split(".") if name else ():
        m = m._modules.get(part)  # type: ignore[union-attr]  # (None ends the walk)
        if m is None:
            return net.get_submodule(name)
    return m  # type: ignore[return-value]  # (net or a module found in _modules)


def lookup(net: nn.Module, name: str) -> nn.Module | None:
    """The submodule called ``name`` (its path walked), or ``None`` when there is none now."""
    try:
        return module_named(net, name)
    except AttributeError:
        return None


class Output:
    """Hooks that find the scored output: the reduction layer's, or the network's (named).

    ``.handles`` to install, ``.finish(output) -> (y, name)`` after the pass."""

    def __init__(self, net: nn.Module, reduction: str | None, name_output: bool, mine):
        self.reduction, self.value, self.handles = reduction, None, []
        self.names: dict[int, tuple[str, weakref.ref]] = {}
        if reduction is not None:
            def keep(m, i, o):
                if mine():
                    self.value = (o,)
            self.handles.append(module_named(net, reduction).register_forward_hook(keep))
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
        if call.autocast is None:  # (no precision context to enter)
            with torch.set_grad_enabled(grad):
                return call.forward(x, rows)
        with torch.set_grad_enabled(grad), call.precision():
            return call.forward(x, rows)
    finally:
        for h in handles:
            h.remove()
