"""Token provenance: which input cell each position of a tensor holds, observed in the pass.

A token tensor ``(N, L, C)`` does not say which grid cell its token ``l`` holds: class,
distillation, register and detection tokens may lead or trail the patches, and the
patches may be kept in any order (``(h, w, t)``, windows, shifted windows, Hiera's mask
units). The network knows, because it put them there with layout operations. A
:class:`Shadows` store carries an integer *shadow* beside every tensor of one forward
pass that came from the input: a tensor of the same shape whose value at each position
is the flat index of the input cell that position holds (``-1``: nothing of the input,
a class or detection token, padding). It starts as ``arange(cells)`` shaped like the
input and follows the same operations the network applies:

* layout operations (reshape, view, flatten, permute, transpose, slicing, gather,
  roll, flip, split, cat, stack, pad, ``__setitem__``) are applied to the shadow
  as they are to the tensor (tensors from elsewhere count as ``-1``);
* operations that keep the shape (elementwise, norms, activations, attention, token
  mixing) keep the positions: the output has its input's shadow;
* an operation over the last dim only (a linear layer, ``x @ W``) keeps the shadow
  when it is the same along that dim (channels), an embedding adds a dim;
* a convolution or pooling that changes the grid gives each output position the
  largest cell index of its bin (a cell of the patch it covers; padding stays ``-1``),
  a reduction over a dim (Hiera's mask-unit pooling) the smallest of the pooled ones;
* anything else ends the shadow: the output has none, so nothing is claimed.

Shadows are stored as views of a small core ``expand``-ed to the tensor's shape where
they are the same along a dim (channels, batch), so carrying them costs little memory.
:func:`token_order` reads a shadow back: the grid its cells form and which position
holds which cell.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F

from . import resize


def _funcs(names, *owners):
    out = set()
    for owner in owners:
        for nm in names:
            f = getattr(owner, nm, None)
            if f is not None:
                out.add(f)
    return out


_LAYOUT = _funcs(("reshape", "view", "flatten", "unflatten", "permute", "transpose", "movedim", "moveaxis",
                  "swapaxes", "swapdims", "squeeze", "unsqueeze", "narrow", "__getitem__", "index_select",
                  "gather", "take_along_dim", "chunk", "split", "tensor_split", "unbind", "expand",
                  "expand_as", "repeat", "repeat_interleave", "roll", "flip", "fliplr", "flipud", "t",
                  "view_as", "reshape_as", "select", "tile"), torch.Tensor, torch)
_LINEAR = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm,
           torch.bmm, torch.Tensor.bmm, torch.addmm}
_CAT = _funcs(("cat", "concat", "concatenate", "stack", "hstack", "vstack"), torch)
_REDUCE = _funcs(("amax", "amin", "max", "min", "mean", "sum", "std", "var", "logsumexp", "nanmean"),
                 torch.Tensor, torch)
_SCATTER = _funcs(("scatter", "scatter_add", "index_copy", "index_put", "masked_scatter", "scatter_reduce"),
                  torch.Tensor, torch)
_LAYOUT |= {getattr(torch.Tensor, p).__get__ for p in ("T", "mT", "H", "mH") if hasattr(torch.Tensor, p)}
# a same-shaped output whose positions do not follow its input's (unknown: no shadow)
_DROP = _funcs(("einsum", "rot90", "sort", "argsort", "topk", "unique", "nonzero", "msort", "fft"),
               torch.Tensor, torch)
_SPATIAL = ("conv1d", "conv2d", "conv3d", "convolution", "max_pool1d", "max_pool2d", "max_pool3d",
            "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d",
            "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
            "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d", "lp_pool3d",
            "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "interpolate", "upsample")
_MAXPOOL = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}


def core(s: torch.Tensor) -> torch.Tensor:
    """``s`` narrowed to one element along every dim it is expanded over (stride 0): a view."""
    for d in range(s.ndim):
        if s.stride(d) == 0 and s.shape[d] > 1:
            s = s.narrow(d, 0, 1)
    return s


def constant(s: torch.Tensor, dim: int) -> bool:
    """True when the shadow ``s`` is the same along ``dim``."""
    if s.shape[dim] <= 1 or s.stride(dim) == 0:
        return True
    c = core(s)
    return c.shape[dim] <= 1 or bool((c == c.narrow(dim, 0, 1)).all())


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    ca, cb = core(a), core(b)
    if ca.shape == cb.shape:
        return bool(torch.equal(ca, cb))
    return bool(torch.equal(a, b))


def _spatial_rank(func, src: torch.Tensor) -> int | None:
    name = getattr(func, "__name__", "")
    name = name.split(".")[0].lstrip("_") if isinstance(name, str) else ""
    if name not in _SPATIAL:
        return None
    digits = [c for c in name if c.isdigit()]
    return int(digits[0]) if digits else src.ndim - 2


class Shadows:
    """The shadows of one forward pass, by tensor (weakly: a freed tensor's entry is dropped)."""

    def __init__(self):
        self.store: dict[int, tuple[weakref.ReferenceType, torch.Tensor]] = {}
        self.space: tuple[int, ...] = ()  # the input cells' shape, which shadow values index
        self.puts = 0

    def seed(self, x) -> None:
        """Start from the explained input: ``(N, C, *S)`` values, or ``(N, L)`` token ids."""
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            return
        if x.ndim == 2 and x.is_floating_point():
            return  # a batch of feature vectors: no cells
        space = tuple(x.shape[1:]) if x.ndim == 2 else tuple(x.shape[2:])
        if not space or math.prod(space) >= 2**31:
            return
        self.space = space
        lead = x.ndim - len(space)
        base = torch.arange(math.prod(space), device=x.device, dtype=torch.int32)
        self.put(x, base.view(*[1] * lead, *space).expand(x.shape))

    def of(self, t) -> torch.Tensor | None:
        """The shadow of the (live) tensor ``t``, or None."""
        if not isinstance(t, torch.Tensor):
            return None
        e = self.store.get(id(t))
        return e[1] if e is not None and e[0]() is t else None

    def put(self, t, s) -> None:
        if not (isinstance(t, torch.Tensor) and isinstance(s, torch.Tensor)) or tuple(s.shape) != tuple(t.shape):
            return
        self.store[id(t)] = (weakref.ref(t), s)
        self.puts += 1
        if self.puts % 512 == 0:  # let the entries of freed tensors go
            self.store = {k: v for k, v in self.store.items() if v[0]() is not None}

    # -- one operation -----------------------------------------------------------------
    def step(self, func, args, kwargs, out) -> None:
        """Give the outputs of ``func(*args, **kwargs) = out`` their shadows (or none)."""
        if not self.store:
            return
        firsts = args[0] if args and isinstance(args[0], (list, tuple)) else ()
        found = [(a, s) for a in (*args, *firsts, *kwargs.values())
                 if isinstance(a, torch.Tensor) and (s := self.of(a)) is not None]
        if not found:
            return
        if func is torch.Tensor.__setitem__:
            self._setitem(args)
            return
        if func in _DROP:
            return
        if func is torch.Tensor.copy_:
            s = self.of(args[1]) if len(args) > 1 else None
            self.put(args[0], s) if s is not None else self.drop(args[0])
            return
        if func in _LAYOUT:
            self._layout(func, args, kwargs, out)
        elif func in _CAT:
            self._cat(func, args, kwargs, out)
        elif func is F.pad:
            self._pad(args, kwargs, out)
        elif func in _SCATTER:
            self._replay(func, args, kwargs, out, fill=True)
        elif func in _REDUCE and _reduce_dim(func, args, kwargs) is not None:
            self._reduce(func, args, kwargs, out, found)
        elif (nd := _spatial_rank(func, found[0][0])) is not None:
            self._spatial(found[0], out, nd)
        elif func in _LINEAR and args and found[0][0] is args[0] and len(found) == 1:
            # x W^T over the last dim: positions kept only where that dim is channels (the same
            # cell along it); a product over cells (the flattened image) holds none
            s, o = found[0][1], out
            if isinstance(o, torch.Tensor) and o.shape[:-1] == s.shape[:-1] and constant(s, -1):
                self.put(o, s.narrow(-1, 0, 1).expand(o.shape))
        else:
            self._keep(found, out)

    def _sub(self, v, fill: bool):
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):
            s = self.of(v)
            if s is None and fill:
                s = torch.full((1,) * v.ndim, -1, dtype=torch.int32, device=v.device).expand(v.shape)
            return s
        return v

    def _replay(self, func, args, kwargs, out, fill: bool = False) -> None:
        """The same operation on the shadows: of every floating tensor argument with ``fill``
        (``-1`` for those without one), else of the first argument only (index tensors, shapes
        and the rest as given)."""
        if fill:
            new = [self._sub(a, True) if isinstance(a, torch.Tensor) else a for a in args]
            kw = {k: self._sub(v, True) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            if any(a is None for a in new) or any(v is None for v in kw.values()):
                return
        else:
            s = self.of(args[0]) if args else None
            if s is None:
                return
            new, kw = [s, *args[1:]], kwargs
        self._assign(out, func(*new, **kw))

    def drop(self, t) -> None:
        self.store.pop(id(t), None)

    def lost(self, out) -> None:
        """An operation that could not be followed: its outputs have no shadow."""
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor):
                self.drop(o)

    def _assign(self, out, res) -> None:
        if isinstance(out, torch.Tensor):
            self.put(out, res)
        elif isinstance(out, (tuple, list)) and isinstance(res, (tuple, list)):
            for o, r in zip(out, res):
                self.put(o, r)

    def _layout(self, func, args, kwargs, out) -> None:
        if not args or self.of(args[0]) is None:
            return
        if func in (torch.roll, torch.Tensor.roll, torch.flip, torch.Tensor.flip) and isinstance(out, torch.Tensor):
            s = cast(torch.Tensor, self.of(args[0]))  # not None: checked on entry
            c = core(s)
            if c.shape != s.shape:  # roll/flip the core: dims it is expanded over are not moved
                moved = _as_dims(args[2] if func in (torch.roll, torch.Tensor.roll) and len(args) > 2
                                 else kwargs.get("dims", args[1] if func in (torch.flip, torch.Tensor.flip)
                                                 and len(args) > 1 else None), s.ndim)
                if moved is not None and all(c.shape[d] == s.shape[d] for d in moved):
                    self.put(out, func(c, *args[1:], **kwargs).expand(s.shape))
                    return
        self._replay(func, args, kwargs, out)

    def _cat(self, func, args, kwargs, out) -> None:
        tensors = args[0] if args else kwargs.get("tensors")
        if not isinstance(tensors, (list, tuple)) or not isinstance(out, torch.Tensor):
            return
        parts = [self._sub(t, True) for t in tensors]
        if any(p is None for p in parts):
            return
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if func is torch.cat or func in (getattr(torch, "concat", None), getattr(torch, "concatenate", None)):
            nd = parts[0].ndim
            d = dim % nd if nd else 0
            # dims every part is expanded over stay expanded: cat the cores
            flat = [e for e in range(nd) if e != d and all(p.stride(e) == 0 or p.shape[e] == 1 for p in parts)]
            small = []
            for p in parts:
                for e in flat:
                    p = p.narrow(e, 0, 1)
                small.append(p)
            self.put(out, torch.cat(small, d).expand(out.shape))
            return
        self.put(out, func(parts, *args[1:], **{k: v for k, v in kwargs.items() if k != "tensors"}))

    def _pad(self, args, kwargs, out) -> None:
        s = self.of(args[0]) if args else None
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        if s is None or mode != "constant" or not isinstance(out, torch.Tensor):
            return
        pad = args[1] if len(args) > 1 else kwargs.get("pad")
        self.put(out, F.pad(s, pad, value=-1))

    def _setitem(self, args) -> None:
        base, idx, value = args[0], args[1], args[2]
        s = self._sub(base, True)
        v = self._sub(value, True) if isinstance(value, torch.Tensor) else -1
        if s is None or v is None:
            return
        s = s.clone()
        s[idx] = v
        self.put(base, s)

    def _reduce(self, func, args, kwargs, out, found) -> None:
        """A reduction over a dim (pooling of tokens grouped along it): the smallest cell pooled."""
        src, s = found[0]
        o = out[0] if isinstance(out, (tuple, list)) else out
        if src is not args[0] or not isinstance(o, torch.Tensor):
            return
        dim = _reduce_dim(func, args, kwargs)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        c = core(s).amin(dim, keepdim=bool(keep))
        if c.ndim == o.ndim:
            self.put(o, c.expand(o.shape))

    def _spatial(self, src_shadow, out, nd: int) -> None:
        """A convolution or pooling: each output position holds the largest cell of its bin."""
        src, s = src_shadow
        o = out[0] if isinstance(out, (tuple, list)) else out
        if not (isinstance(o, torch.Tensor) and o.ndim == s.ndim == nd + 2 and constant(s, 1)):
            return
        c = s.narrow(1, 0, 1)
        if s.stride(0) == 0 and s.shape[0] > 1:
            c = c.narrow(0, 0, 1)
        size = tuple(o.shape[2:])
        if size != tuple(s.shape[2:]):
            if all(a <= b for a, b in zip(size, s.shape[2:])):
                c = _MAXPOOL[nd](c.double(), size).to(torch.int32)
            else:  # upsampled: the nearest cell (a map, though no grid of tokens)
                c = resize.nearest(c.double(), size).to(torch.int32)
        self.put(o, c.expand(o.shape))

    def _keep(self, found, out) -> None:
        """Shape-keeping operations keep positions; last-dim operations keep a per-token shadow."""
        outs = out if isinstance(out, (tuple, list)) else (out,)
        o = outs[0] if outs else None
        if not isinstance(o, torch.Tensor):
            return
        same = [s for a, s in found if tuple(a.shape) == tuple(o.shape)]
        if same:
            if all(_same(same[0], s) for s in same[1:]):
                self.put(o, same[0])
            else:
                self.drop(o)  # tokens of two orders mixed (an in-place op keeps none)
            return
        s = found[0][1]
        if o.ndim == s.ndim and o.ndim >= 2 and o.shape[:-1] == s.shape[:-1] and constant(s, -1):
            self.put(o, s.narrow(-1, 0, 1).expand(o.shape))
        elif o.ndim == s.ndim + 1 and tuple(o.shape[:-1]) == tuple(s.shape) and not found[0][0].is_floating_point():
            self.put(o, s.unsqueeze(-1).expand(o.shape))  # an embedding of token ids


def _reduce_dim(func, args, kwargs):
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(dim, bool) or not (isinstance(dim, int) or (isinstance(dim, (tuple, list)) and dim
                                                               and all(isinstance(d, int) for d in dim))):
        return None
    return dim


def _as_dims(dims, nd: int):
    if dims is None:
        return None
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return tuple(d % nd for d in dims)


@dataclass(frozen=True)
class Order:
    """Where the cells of a grid sit along a token axis: ``index[j]`` is the position holding
    cell ``j`` of ``grid`` (raster order); the other positions hold no input cell."""

    grid: tuple[int, ...]
    index: tuple[int, ...]
    length: int

    @property
    def extra(self) -> int:
        return self.length - len(self.index)

    @property
    def leading(self) -> bool:
        """The extra tokens lead and the cells follow in raster order (no index needed)."""
        e = self.extra
        return self.index == tuple(range(e, self.length))

    @property
    def others(self) -> tuple[int, ...]:
        held = set(self.index)
        return tuple(p for p in range(self.length) if p not in held)


def holds_grid(s: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """True unless the shadow ``s`` holds one cell all along a dim of ``dims`` of size > 1 (a
    per-head tensor's ``head_dim``, a pooled vector's channels): such a dim is no grid dim. A
    tensor that holds no input cell at all (``-1`` everywhere) says nothing: True."""
    wide = [d for d in dims if s.shape[d] > 1]
    flat = [d for d in wide if s.stride(d) == 0]  # expanded over it: the same cell all along
    if not flat and all(not constant(s, d) for d in wide):
        return True
    return int(core(s).max()) < 0


def token_order(s: torch.Tensor, dim: int, space: tuple[int, ...], batch: int = 0) -> Order | None:
    """The :class:`Order` a shadow ``s`` shows along its token axis ``dim`` (``batch``: the
    batch dim): None unless it is the same along every other dim and for every sample, and
    its cells form a whole grid (each cell of a product of per-axis positions once)."""
    nd = s.ndim
    dim, batch = dim % nd, batch % nd
    if not space or any(not constant(s, d) for d in range(nd) if d not in (dim, batch)):
        return None
    v = s
    for d in reversed(range(nd)):
        if d not in (dim, batch):
            v = v.select(d, 0)
    v = v if batch < dim else v.t()  # (B, L)
    if not constant(v, 0):
        return None
    v = v[0].long()
    held = (v >= 0).nonzero().flatten()
    cells = v[held]
    if cells.numel() == 0:
        return None
    coords, rest = [], cells
    for size in reversed(space):
        coords.append(rest % size)
        rest = rest // size
    coords.reverse()
    grid, flat = [], torch.zeros_like(cells)
    for c in coords:
        uniq, inv = torch.unique(c, return_inverse=True)
        grid.append(uniq.numel())
        flat = flat * uniq.numel() + inv
    if math.prod(grid) != cells.numel() or torch.unique(flat).numel() != cells.numel():
        return None
    index = held[flat.argsort()]
    return Order(tuple(grid), tuple(index.tolist()), int(v.numel()))
