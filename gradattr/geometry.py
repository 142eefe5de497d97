"""Observed geometry: the grids a network's own forward pass shows, and its attention modules.

A token tensor ``(N, L, C)`` carries no grid in its shape; the network knows it.
Rather than computing a grid from the input's size (which padding, overlapping
patches, strides and class tokens all break), an :class:`Observer` watches the
same forward pass that captures the feature and records every grid the network
itself produces:

* a convolution, pooling or normalisation module's output ``(N, C, *grid)`` with
  the input's rank (a patch embedding before it is flattened, a pooling stage);
* an ``nn.Unfold``'s blocks (its grid follows from its own parameters and its
  observed input);
* a reshape that splits a token axis into a grid or merges a grid into one
  (``(N, L, C) -> (N, *grid, C)``, ``(N, C, *grid) -> (N, C, L)``, a linear
  patcher's ``(N, *grid, p..., C) -> (N, L, D)``), and ``Tensor.unfold`` patches;
* a grid a module returns beside its tokens (``(tokens, (T, H, W))``, as MViT's
  blocks do);
* the input's own grid.

The grid of a token tensor is then the latest grid observed before it ("at that
stage"), and its extra tokens are ``L`` minus that grid's cells, leading; where the pass
followed the tensor's positions back to the input (:mod:`gradattr.provenance`, carried by
the same mode), :meth:`Observer.order` reads the grid and the token order from there. Grids observed
inside attention modules (a spatial-reduction convolution of the keys, a pooled
key grid) do not count: attention modules are known by type (``nn.MultiheadAttention``,
timm's ``Attention``/``ClassAttn``, MONAI's ``SABlock``/``CrossAttentionBlock``,
Hugging Face's attention classes; they and their insides are excluded) and by
observation (the innermost module that calls ``scaled_dot_product_attention`` or a
softmax over the last dim of a tensor of rank >= 3; its insides are excluded, its
output may be a whole block's and stays a candidate).
"""
from __future__ import annotations

import math
import sys
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .provenance import Order, Shadows, holds_grid, token_order

#: At most this many leading extra tokens (class, distillation, register tokens).
MAX_EXTRA_TOKENS = 16

_FIRST_DIM = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.pooling._MaxPoolNd,
              nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
              nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.instancenorm._InstanceNorm,
              nn.GroupNorm)
_RESHAPES = {torch.Tensor.reshape, torch.Tensor.view, torch.reshape, torch.Tensor.flatten, torch.flatten,
             torch.Tensor.unflatten}
_SOFTMAX = {torch.Tensor.softmax, torch.softmax, torch.nn.functional.softmax}
_SDPA = {torch.nn.functional.scaled_dot_product_attention}
_MATMUL = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.bmm,
           torch.Tensor.bmm, torch.einsum}


@dataclass(frozen=True)
class Grid:
    cells: tuple[int, ...]
    order: int  # when it was seen, on the pass's clock
    module: str  # the innermost module running when it was seen ("" for the input)
    source: str  # what showed it, for messages
    tensor: weakref.ReferenceType | None = None  # the tensor whose shape it is, weakly (ids are reused)
    inner: bool = False  # seen by a function call while ``module`` ran (not as a module's output)
    scramble: bool = False  # no grid: tokens came back from the batch dim (windows, mask units)
    behind: bool = False  # a reshape's dims behind dim 1, (N, C, *g) <-> (N, C, L): a head split's shape too

    def of(self, t) -> bool:
        """True when this grid is the shape of the (live) tensor ``t``."""
        return t is not None and self.tensor is not None and self.tensor() is t


def attention_types() -> tuple[type, ...]:
    """Attention module types of the libraries already imported (nothing is imported here)."""
    found: list[type] = [nn.MultiheadAttention]
    for mod, names in (("timm.layers.attention", ("Attention", "AttentionRope")),
                       ("timm.layers", ("Attention",)),
                       ("timm.models.vision_transformer", ("Attention",)),
                       ("timm.models.cait", ("ClassAttn", "TalkingHeadAttn")),
                       ("monai.networks.blocks.selfattention", ("SABlock",)),
                       ("monai.networks.blocks.crossattention", ("CrossAttentionBlock",)),
                       ("monai.networks.blocks", ("SABlock", "CrossAttentionBlock"))):
        m = sys.modules.get(mod)
        for nm in names:
            c = getattr(m, nm, None) if m is not None else None
            if isinstance(c, type) and issubclass(c, nn.Module) and c not in found:
                found.append(c)
    return tuple(found)


def is_attention_type(module: nn.Module, types: tuple[type, ...]) -> bool:
    """An attention module by type: one of ``types``, or a Hugging Face ``*Attention`` class."""
    if isinstance(module, types):
        return True
    cls = type(module)
    return cls.__module__.startswith("transformers.") and cls.__name__.endswith("Attention")


class _Watch(TorchFunctionMode):
    """Sees the reshapes, unfolds and attention calls of one forward pass."""

    def __init__(self, observer: Observer):
        super().__init__()
        self.observer = observer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.observer.mine():
            try:
                self.observer.function(func, args, kwargs or {}, out)
            except Exception:  # noqa: BLE001, S110 - watching must never break the user's forward pass
                pass
            try:
                self.observer.shadows.step(func, args, kwargs or {}, out)
            except Exception:  # noqa: BLE001 - an operation the shadow cannot follow ends it
                self.observer.shadows.lost(out)
        return out


class Observer:
    """Grids and attention modules observed in one forward pass (see the module's docstring).

    Install with :meth:`handles` (module hooks) and run the pass inside :meth:`watching`.
    :attr:`clock` orders observations and captured tensors alike.
    """

    def __init__(self, net: nn.Module, n: int, spatial: tuple[int, ...], mine):
        self.net, self.n, self.spatial, self.rank, self.mine = net, n, tuple(spatial), len(spatial), mine
        self.grids: list[Grid] = [Grid(self.spatial, 0, "", "the input")]
        self.clock = 0
        self.stack: list[str] = []
        types = attention_types()
        # attention modules by type (themselves and their insides are no feature maps) and the
        # modules seen computing attention (their insides are not; their output may be a block's)
        self.attention: set[str] = {nm for nm, m in net.named_modules() if nm and is_attention_type(m, types)}
        self.computing: set[str] = set()
        self.started: dict[str, int] = {}  # the clock when each module's latest call began
        self.modules = dict(net.named_modules())
        self.shadows = Shadows()  # which input cell each position holds (gradattr.provenance)

    def seed(self, x) -> None:
        """Track token provenance from the explained input ``x`` (the tensor the pass is given)."""
        self.shadows.seed(x)

    # -- the pass's clock and module stack ------------------------------------------------
    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def handles(self) -> list:
        out = []
        for nm, m in self.net.named_modules():
            if not nm:
                continue
            out.append(m.register_forward_pre_hook(self._pre(nm)))
            out.append(m.register_forward_hook(self._post(nm, m)))
        return out

    def watching(self, x=None) -> _Watch:
        """The mode to run the pass in; ``x``: the explained input, whose cells provenance follows."""
        if x is not None:
            self.seed(x)
        return _Watch(self)

    def _pre(self, name):
        def pre(module, inputs):
            if self.mine():
                self.stack.append(name)
                self.started[name] = self.clock
        return torch.compiler.disable(pre)  # runs eagerly under torch.compile: it reads, never traces

    def _post(self, name, module):
        def post(m, inputs, out):
            if not self.mine():
                return
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
            self.module_output(name, module, inputs, out)
        return torch.compiler.disable(post)

    def add(self, cells, source: str, module: str | None = None, tensor=None, behind: bool = False) -> None:
        cells = tuple(int(c) for c in cells)
        if len(cells) != self.rank or any(c < 1 for c in cells):
            return  # (a 1 x 1 grid is kept: it is that stage's grid, though no map is read on it)
        if any(c > s for c, s in zip(cells, self.spatial)):
            return  # more cells than input samples along a dim: not a grid over the input
        where = module if module is not None else (self.stack[-1] if self.stack else "")
        self.grids.append(Grid(cells, self.tick(), where, source,
                               None if tensor is None else weakref.ref(tensor), inner=module is None,
                               behind=behind))

    # -- what is observed -------------------------------------------------------------------
    def module_output(self, name: str, module: nn.Module, inputs, out) -> None:
        n, r = self.n, self.rank
        if name in self.attention or name in self.computing:
            self._query_grid(name, out)
        if isinstance(out, torch.Tensor) and isinstance(module, _FIRST_DIM):
            if out.ndim == r + 2 and out.shape[0] == n:
                self.add(out.shape[2:], f"{name} ({type(module).__name__}) output "
                          f"{tuple(out.shape)}", name, out)
        elif isinstance(out, torch.Tensor) and isinstance(module, nn.Unfold) and inputs:
            self._unfold(inputs[0], out, (module.kernel_size, module.dilation, module.padding,
                                          module.stride), {}, f"{name} (Unfold)", name)
        elif isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out):
            for o in out:
                if isinstance(o, (tuple, list, torch.Size)) and len(o) == r and all(
                        isinstance(v, int) and not isinstance(v, bool) for v in o):
                    self.add(o, f"{name} returned grid {tuple(o)}", name)

    def _query_grid(self, name: str, out) -> None:
        """An attention module returning ``(N, L, C)`` tokens on a grid it made inside (LeViT's
        subsampled queries): the latest grid seen inside this call with exactly ``L`` cells that
        downsamples the grid of the tokens it was given counts as the grid its output is on; not
        one read behind dim 1 of a reshape (``(N, L, h, d) -> (N, L, C)`` merges heads)."""
        t = out[0] if isinstance(out, (tuple, list)) and out else out
        if not (isinstance(t, torch.Tensor) and t.ndim == 3 and t.shape[0] == self.n):
            return
        start = self.started.get(name, -1)
        inside = [g for g in self.grids if g.order > start and not g.scramble and not g.behind
                  and (g.module == name or g.module.startswith(name + "."))
                  and math.prod(g.cells) == t.shape[1]]
        stage = self.stage_grid(start)  # the grid of the tokens it was given
        for g in reversed(inside):
            if stage is not None and len(stage.cells) == len(g.cells) and all(
                    _downsamples(G, c) for G, c in zip(stage.cells, g.cells)):
                self.grids.append(Grid(g.cells, self.tick(), name, f"{name} output {tuple(t.shape)}: "
                                       f"{t.shape[1]} tokens on its {g.source}"))
                return

    def _products(self, func, args) -> bool:
        """A product of two tensors that both hold the input's tokens (``Q K^T``, ``K^T V``):
        attention, whatever the module is called (a linear layer's weight holds none)."""
        if func not in _MATMUL:
            return False
        ts = [a for a in (args[1:] if func is torch.einsum else args) if isinstance(a, torch.Tensor)]
        if func is torch.einsum and len(args) == 2 and isinstance(args[1], (list, tuple)):
            ts = [a for a in args[1] if isinstance(a, torch.Tensor)]
        return len(ts) >= 2 and all(self.shadows.of(a) is not None for a in ts[:2])

    def function(self, func, args, kwargs, out) -> None:
        if func in _SDPA or func in _SOFTMAX or self._products(func, args):
            src = args[0] if args else kwargs.get("input", kwargs.get("query"))
            if func in _SOFTMAX and not self._products(func, args):
                dim = args[1] if len(args) > 1 else kwargs.get("dim")
                if not (isinstance(src, torch.Tensor) and src.ndim >= 3 and dim in (-1, src.ndim - 1)):
                    return
            for nm in reversed(self.stack):
                if not isinstance(self._module(nm), (nn.Softmax, nn.Dropout, nn.Identity)):
                    self.computing.add(nm)
                    break
            return
        if _spatial_op(func):  # a functional or exported convolution, pooling or norm
            o = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(o, torch.Tensor) and o.ndim == self.rank + 2 and o.shape[0] == self.n:
                self.add(o.shape[2:], f"{getattr(func, '__name__', func)} output {tuple(o.shape)}", tensor=o)
            return
        if not (isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor)):
            return
        src, n, r = args[0], self.n, self.rank
        if (func in _RESHAPES and src.ndim >= 3 and out.ndim == 3 and out.shape[0] == n
                and src.shape[0] > n and src.shape[0] % n == 0):
            # tokens gathered back from the batch dim (windows, Hiera's mask units): their order
            # is the network's own, no grid observed so far says where each one lies
            self.grids.append(Grid((), self.tick(), self.stack[-1] if self.stack else "",
                                   f"a reshape {tuple(src.shape)} -> {tuple(out.shape)} from the batch dim",
                                   inner=True, scramble=True))
            return
        if func is torch.Tensor.__getitem__:
            # a crop of a grid-shaped tensor (a same-padding trim): the cropped grid
            if (out.ndim == src.ndim == r + 2 and out.shape[:2] == src.shape[:2]
                    and out.shape[2:] != src.shape[2:] and any(g.of(src) for g in self.grids)):
                self.add(out.shape[2:], f"a crop {tuple(src.shape)} -> {tuple(out.shape)}", tensor=out)
            return
        if src.ndim < 3 or src.shape[0] != n or out.ndim < 3 or out.shape[0] != n:
            return
        if func is torch.nn.functional.unfold:
            self._unfold(src, out, args[1:], kwargs, "F.unfold")
            return
        if func is torch.Tensor.unfold:
            if src.ndim == 2 * r + 1 and out.ndim == 2 * r + 2:
                self.add(out.shape[2:2 + r], f"Tensor.unfold patches {tuple(out.shape)}", tensor=out)
            return
        if func in _RESHAPES and r >= 2 and tuple(src.shape) != tuple(out.shape):
            self._reshape(src, out)

    def _reshape(self, src: torch.Tensor, out: torch.Tensor) -> None:
        """A reshape of the batch's tensors that splits a token axis into a grid or merges one."""
        r = self.rank
        a, b = tuple(src.shape), tuple(out.shape)
        # a token axis split into a grid: (N, L, C) -> (N, *g, C) or (N, C, L) -> (N, C, *g), unless
        # the tokens came back from the batch dim since the last grid (split, they keep that order)
        if len(a) == 3 and len(b) == r + 2:
            if not self.since_scramble(None):
                return
            if b[-1] == a[-1] and math.prod(b[1:-1]) == a[1]:
                self.add(b[1:-1], f"a reshape {a} -> {b}", tensor=out)
            elif b[1] == a[1] and math.prod(b[2:]) == a[2]:
                self.add(b[2:], f"a reshape {a} -> {b}", tensor=out, behind=True)
            return
        # a grid merged into a token axis: (N, *g, rest) -> (N, L, rest') or (N, C, *g) -> (N, C, L)
        if len(b) == 3:
            if len(a) == r + 2 and a[1] == b[1] and math.prod(a[2:]) == b[2]:
                self.add(a[2:], f"a reshape {a} -> {b}", tensor=src, behind=True)
            elif len(a) >= r + 2 and math.prod(a[1:1 + r]) == b[1] and math.prod(a[1 + r:]) == b[2]:
                self.add(a[1:1 + r], f"a reshape {a} -> {b}", tensor=src)

    def _unfold(self, x, out, args, kwargs, source: str, module: str | None = None) -> None:
        """An unfold's blocks: its grid from its own parameters and its observed input."""
        if not (isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[0] == self.n and self.rank == 2
                and isinstance(out, torch.Tensor) and out.ndim == 3):
            return
        names = ("kernel_size", "dilation", "padding", "stride")
        vals = dict(zip(names, args))
        vals.update({k: v for k, v in kwargs.items() if k in names})
        defaults = {"dilation": 1, "padding": 0, "stride": 1}
        two = lambda v: (v, v) if isinstance(v, int) else tuple(v)
        k, d, p, s = (two(vals.get(nm, defaults.get(nm))) for nm in names)
        cells = tuple((x.shape[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))
        if math.prod(cells) == out.shape[-1]:
            self.add(cells, f"{source} blocks of {tuple(x.shape)}", module, out)

    def _module(self, name: str):
        return self.modules.get(name)

    # -- what the observations say ------------------------------------------------------------
    def order(self, t, dim: int = 1, batch: int = 0) -> tuple[bool, Order | None]:
        """``(tracked, order)``: whether the pass followed ``t``'s positions back to the input,
        and the grid and token order they show along ``dim`` (None: no grid of tokens)."""
        s = self.shadows.of(t)
        if s is None:
            return False, None
        return True, token_order(s, dim, self.shadows.space, batch)

    def grid_dims(self, t, channel: int, dims: tuple[int, ...]) -> bool | None:
        """Whether ``t``'s positions, followed back to the input, can be a grid along ``dims``
        (channels along ``channel``; None: not followed): False when one dim holds one cell all
        along it. A tensor inside attention (per head: ``(N, heads, L, head_dim)``) holds one
        token along ``head_dim`` (and along ``heads``): no grid in either reading."""
        s = self.shadows.of(t)
        return None if s is None else holds_grid(s, dims)

    def observed_first(self, t) -> bool:
        """True when ``t`` itself was observed as a channels-first ``(N, C, *grid)`` output."""
        return any(g.of(t) and not g.behind for g in self.grids)

    def inside_attention(self, name: str) -> bool:
        return (any(name == a or name.startswith(a + ".") for a in self.attention)
                or any(name.startswith(a + ".") for a in self.computing))

    def usable(self, exclude=None, scrambles: bool = False) -> list[Grid]:
        """Observed grids outside attention modules, in order (the input's first): neither inside
        an attention module nor seen by a function call while one computing attention ran (its
        heads split or merged: ``(N, L, h, d) <-> (N, L, C)``); with ``scrambles`` the points
        where tokens came back from the batch dim too."""
        return [g for g in self.grids if not self.inside_attention(g.module)
                and not (g.inner and g.module in self.computing)
                and (scrambles or not g.scramble) and not g.of(exclude)]

    def since_scramble(self, order: int | None, exclude=None) -> list[Grid]:
        """Usable grids seen before ``order`` (all, with None) and after the last scramble before it."""
        before = [g for g in self.usable(exclude, scrambles=True) if order is None or g.order <= order]
        last = max((i for i, g in enumerate(before) if g.scramble), default=-1)
        return before[last + 1:]

    def stage_grid(self, order: int | None, exclude=None) -> Grid | None:
        """The grid at the stage of a tensor seen at ``order``: the latest observed before it (the
        input's grid when nothing else was), or, with ``order`` None, the latest of the pass; None
        when tokens came back from the batch dim since (their order is the network's own)."""
        before = self.since_scramble(order, exclude)
        return before[-1] if before else None

    def with_cells(self, cells: int, order: int | None, exclude=None) -> Grid | None:
        """The latest observed grid of exactly ``cells`` cells before ``order`` (else after it),
        none from before tokens last came back from the batch dim."""
        before = [g for g in self.since_scramble(order, exclude) if math.prod(g.cells) == cells]
        if order is None or before:
            return before[-1] if before else None
        grids = [g for g in self.usable(exclude) if math.prod(g.cells) == cells and g.order > order]
        return grids[0] if grids else None

    def observed(self, cells) -> bool:
        """True when ``cells`` is exactly a grid observed in the pass (or the input's)."""
        cells = tuple(int(c) for c in cells)
        return any(g.cells == cells for g in self.usable())

    def ties(self, cells: tuple[int, ...], network_only: bool = True) -> bool:
        """True when ``cells`` is an observed grid or an integer downsampling of one (each dim
        ``ceil(G / f)`` for an integer ``f``), the input's own grid excepted with ``network_only``."""
        for g in self.usable():
            if network_only and g.order == 0:
                continue
            if len(g.cells) == len(cells) and all(_downsamples(G, c) for G, c in zip(g.cells, cells)):
                return True
        return False

    def scaled(self, cells: tuple[int, ...]) -> bool:
        """True when ``cells`` is a network-observed grid divided by one integer in every dim
        (a stage that merges patches the same way along each axis, seen through a permute)."""
        cells = tuple(int(c) for c in cells)
        for g in self.usable():
            if g.order == 0 or len(g.cells) != len(cells) or any(c < 1 or G % c for G, c in zip(g.cells, cells)):
                continue
            if len({G // c for G, c in zip(g.cells, cells)}) == 1:
                return True
        return False

    def seen(self) -> str:
        grids = self.usable()
        if len(grids) <= 1:
            return "no grid was observed besides the input's"
        return "grids observed: " + "; ".join(
            f"{' x '.join(map(str, g.cells))} ({g.source})" for g in grids[1:][-4:])


_SPATIAL_OPS = ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
                "conv_transpose3d", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
                "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                "adaptive_max_pool3d", "batch_norm", "native_batch_norm_legit_no_training", "group_norm",
                "instance_norm")


def _spatial_op(func) -> bool:
    """A convolution, pooling or norm called as a function (``F.conv2d``, an exported program's
    ``aten.conv2d.default``): its output ``(N, C, *grid)`` shows a grid as a module's would."""
    name = getattr(func, "__name__", "")
    return isinstance(name, str) and name.split(".")[0].lstrip("_") in _SPATIAL_OPS


def _downsamples(big: int, small: int) -> bool:
    if small > big or small < 1:
        return False
    f = max(round(big / small), 1)
    return any(-(-big // ff) == small for ff in (f - 1, f, f + 1) if ff >= 1)
