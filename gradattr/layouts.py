"""Reading a captured feature tensor as ``(N, C, *spatial)``: the layout seam.

Every method works on feature maps ``(N, C, *S)``. A captured tensor is kept
as the network produced it (batch first; see :meth:`Reading.stored`); a
:class:`Reading` turns it (and its gradient, which has the same layout) into
``(N, C, *S)`` with :meth:`Reading.to_ncs`, and puts modified ``(B, C, *S)``
activations back into the network's layout with :meth:`Reading.from_ncs`
(Score-CAM and Ablation-CAM perturbations), keeping whatever the reading
dropped (class tokens) from the original.

The readings:

* ``channels_first`` ``(N, C, *S)`` (convolutional networks);
* ``channels_last`` ``(N, *S, C)`` (Swin, ConvNeXt's inner layers);
* ``tokens`` ``(N, L, C)``: ``k`` leading extra tokens (class, distillation,
  register tokens) and ``L - k`` patch tokens on the grid the network's own
  forward pass shows at that stage (:mod:`gradattr.geometry`: the patch
  embedding's output, a merging or pooling stage), ``k = L - cells``, in 1-D,
  2-D and 3-D alike; for a sequence input with ``k = 0`` this is the batch-first
  ``time_major`` reading ``(N, T, C)``. Where the pass followed the tokens' positions back
  to the input (:mod:`gradattr.provenance`), the grid and which position holds each cell
  are read from there instead (``Reading.index``): extra tokens anywhere (trailing detection
  or register tokens), any order (``(h, w, t)``, windowed, shifted, Hiera's mask units);
* ``time_first`` ``(T, N, C)`` (PyTorch's default RNN and Transformer layout);
* a callable ``tensor -> (N, C, *S)`` (a pytorch-grad-cam ``reshape_transform``),
  inverted for perturbations with a vector-Jacobian product.

A module that returns a tuple (``nn.LSTM``: ``(output, (h, c))``) is read
through its first element.

:func:`resolve_layout` turns the ``feature_layout`` option into a reading that
:func:`gradattr.layout_inference.check_reading` binds to the tensor; the automatic reading of
a module's output is :func:`gradattr.layout_inference.infer_reading`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch

from .errors import expected
from .options import LAYOUT_NAMES
from .provenance import Order


@dataclass(frozen=True)
class Reading:
    """How one captured tensor maps to ``(N, C, *S)`` and back.

    ``kind`` is ``"channels_first"``, ``"channels_last"``, ``"tokens"``,
    ``"time_first"`` or ``"callable"``; ``extra`` the number of leading extra
    tokens and ``grid`` the patch grid (tokens); ``item`` the tuple element read
    (``None``: the output is a tensor); ``fn`` the callable; ``bound`` is false for a
    reading asked for by name whose grid is not known yet; ``guessed`` marks a
    reading that another reading would also fit.
    """

    kind: str
    description: str = ""
    guessed: bool = False
    extra: int | None = None
    grid: tuple[int, ...] | None = None
    item: int | None = None
    fn: Callable | None = None
    bound: bool = True
    alternatives: str = ""  # the other reading that fits as well (a guessed one)
    # tokens in the network's own order: index[j] is the position holding grid cell j (raster
    # order), observed by following the positions back to the input (gradattr.provenance)
    index: tuple[int, ...] | None = None
    _positions: dict = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)

    def positions(self, device) -> torch.Tensor:
        """``index`` as a tensor on ``device`` (made once per device)."""
        p = self._positions.get(device)
        if p is None:
            p = self._positions[device] = torch.tensor(self.index, dtype=torch.long, device=device)
        return p

    # -- the captured tensor as stored (batch first) and back --------------------------
    def stored(self, out):
        """The module output ``out`` as the tensor gradattr keeps: its batch dim first."""
        t = out[self.item] if self.item is not None else out
        return t.transpose(0, 1) if self.kind == "time_first" else t

    def network(self, t: torch.Tensor, out):
        """A stored tensor ``t`` back in the module's output form (``out`` supplies the rest)."""
        if self.kind == "time_first":
            t = t.transpose(0, 1)
        if self.item is None:
            return t
        items = list(out)
        items[self.item] = t
        return tuple(items) if isinstance(out, tuple) else type(out)(items)

    # -- the seam ----------------------------------------------------------------------
    def to_ncs(self, t: torch.Tensor) -> torch.Tensor:
        """The stored tensor (or its gradient) as ``(N, C, *S)``."""
        k = self.kind
        if k == "channels_first":
            return t
        if k == "channels_last":
            return t.movedim(-1, 1)
        if k in ("tokens", "time_first"):
            patches = t[:, self.positions(t.device)] if self.index is not None else t[:, self.extra or 0:]
            return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], *cast(tuple[int, ...], self.grid))
        if k == "callable":
            return cast(Callable, self.fn)(t)
        raise AssertionError(k)

    def from_ncs(self, a: torch.Tensor, like) -> torch.Tensor | tuple | list:
        """``a (B, C, *S)`` in the network's layout of ``like`` (``(B, ...)`` or the module's
        output), which supplies anything the reading dropped (class tokens, tuple elements)."""
        core = like[self.item] if self.item is not None and isinstance(like, (tuple, list)) else like
        k = self.kind
        if k == "channels_first":
            t = a.to(core.dtype)
        elif k == "channels_last":
            t = a.movedim(1, -1).to(core.dtype)
        elif k == "tokens" and self.index is not None:
            patches = a.flatten(2).transpose(1, 2).to(core.dtype)
            t = core.expand(a.shape[0], *core.shape[1:]).index_copy(1, self.positions(a.device), patches)
        elif k == "tokens":
            patches = a.flatten(2).transpose(1, 2).to(core.dtype)
            e = self.extra or 0
            t = torch.cat([core[:, :e].expand(a.shape[0], e, core.shape[-1]), patches], 1) if e else patches
        elif k == "time_first":
            t = a.flatten(2).permute(2, 0, 1).to(core.dtype)
        elif k == "callable":
            t = _vjp_inverse(self.fn, a, core)
        else:
            raise AssertionError(k)
        if self.item is not None and isinstance(like, (tuple, list)):
            items = list(like)
            items[self.item] = t
            return tuple(items) if isinstance(like, tuple) else type(like)(items)
        return t

    def ncs_shape(self, t: torch.Tensor) -> tuple[int, ...]:
        s = self.stored(t) if self.item is not None or self.kind == "time_first" else t
        return tuple(self.to_ncs(s[:1].detach()).shape[1:])


def _vjp_inverse(fn, a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``like + J^T (a - fn(like))``: the inverse of an index/permutation/reshape ``fn`` at ``like``.

    For such a transform ``J^T`` scatters each value back where ``fn`` took it from,
    so this is exact, and the parts ``fn`` drops (class tokens) keep ``like``'s values.
    """
    with torch.enable_grad():
        src = like.detach().requires_grad_(True)
        out = fn(src)
        (g,) = torch.autograd.grad(out, src, grad_outputs=(a.to(out.dtype) - out).detach(),
                                   allow_unused=True)
    return like if g is None else like + g


CHANNELS_FIRST = Reading("channels_first", "channels first (N, C, *S)")
CHANNELS_LAST = Reading("channels_last", "channels last (N, *S, C)")


def token_reading(extra: int, grid: tuple[int, ...], guessed: bool = False, time: bool = False) -> Reading:
    """The token reading of ``extra`` leading extra tokens and a ``grid`` of cells (``time``: the
    time-major reading of a sequence)."""
    if time:
        return Reading("tokens", "time major (N, T, C)", guessed, 0, grid)
    g = " x ".join(map(str, grid))
    what = f"{extra} extra token{'s' if extra != 1 else ''} + " if extra else ""
    return Reading("tokens", f"tokens (N, L, C): {what}{g} grid", guessed, extra, grid)


def ordered(order: Order, rank: int) -> Reading:
    """The token reading of an observed :class:`gradattr.provenance.Order`: the usual one when
    the extra tokens lead and the cells follow in raster order, else one with its ``index``."""
    if order.leading:
        return token_reading(order.extra, order.grid, time=rank == 1 and order.extra == 0)
    g = " x ".join(map(str, order.grid))
    others = order.others
    where = f" at position{'s' if len(others) != 1 else ''} {_spans(others)}" if others else ""
    what = f"{len(others)} other token{'s' if len(others) != 1 else ''}{where} + " if others else ""
    return Reading("tokens", f"tokens (N, L, C): {what}a {g} grid in the network's token order",
                   extra=order.extra, grid=order.grid, index=order.index)


def _spans(positions: tuple[int, ...]) -> str:
    out, i = [], 0
    while i < len(positions):
        j = i
        while j + 1 < len(positions) and positions[j + 1] == positions[j] + 1:
            j += 1
        out.append(str(positions[i]) if i == j else f"{positions[i]}-{positions[j]}")
        i = j + 1
    return ", ".join(out)



def describe(reading: Reading) -> str:
    return reading.description or reading.kind



def resolve_layout(spec) -> Reading | None:
    """Validate the ``feature_layout`` option: ``None`` (automatic) or a reading to bind."""
    if spec is None:
        return None
    if callable(spec) and not isinstance(spec, str):
        return Reading("callable", f"feature_layout {getattr(spec, '__name__', type(spec).__name__)}",
                       fn=spec, bound=False)
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "channels_first":
            return CHANNELS_FIRST
        if s == "channels_last":
            return CHANNELS_LAST
        if s == "time_major":
            return Reading("tokens", "time major (N, T, C)", extra=0, bound=False)
        if s == "time_first":
            return Reading("time_first", "time first (T, N, C)", bound=False)
        if s == "tokens":
            return Reading("tokens", "tokens", bound=False)
        if s.startswith("tokens:"):
            k = s[len("tokens:"):]
            if k.isdigit():
                return Reading("tokens", f"tokens:{int(k)}", extra=int(k), bound=False)
    raise expected("feature_layout", "None, one of " + ", ".join(map(repr, LAYOUT_NAMES))
                   + " (k: the number of leading extra tokens, e.g. 'tokens:1') or a callable "
                   "tensor -> (N, C, *S)", repr(spec))
