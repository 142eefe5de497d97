"""Which reading fits a captured feature tensor: the automatic reading of a module's output
(:func:`read`, :func:`candidates`) and the check that binds a given reading to the tensor
(:func:`check_reading`, :func:`bind`).

:func:`read` is the automatic reading of a module's output given the batch
size, the input's spatial size, the producing module and the grids observed in
the pass (never a grid computed from the input's size). The readings themselves are
:class:`gradattr.layouts.Reading`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import torch
from torch import nn

from .errors import GradattrError
from .geometry import MAX_EXTRA_TOKENS, Grid
from .layouts import CHANNELS_FIRST, CHANNELS_LAST, Reading, describe, ordered, token_reading

#: The largest ratio between the strides of two spatial dims for a grid to follow the input.
STRIDE_SPREAD = 1.5


def _tracked_tokens(t, geometry, rank: int):
    """``(tracked, reading)``: a token tensor's reading from its observed provenance."""
    tracked, order = geometry.order(t)
    if not tracked:
        return False, None
    if order is None or len(order.grid) != rank or not any(c > 1 for c in order.grid):
        return True, None
    return True, ordered(order, rank)


# -- what the producing module says --------------------------------------------------------
_LAST_DIM = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention, nn.TransformerEncoderLayer,
             nn.TransformerDecoderLayer, nn.TransformerEncoder, nn.TransformerDecoder, nn.RNNBase,
             nn.Embedding)
_FIRST_DIM = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.pooling._MaxPoolNd,
              nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
              nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.instancenorm._InstanceNorm,
              nn.GroupNorm, nn.modules.pooling.LPPool2d)
_LAST_DIM_NAMES = ("Block", "Mlp", "MLP", "Transformer", "LayerNorm", "Encoder", "Attention")


def _feature_size(module) -> int | None:
    """The size of the feature dim a last-dim module produces, where the module says it."""
    if isinstance(module, nn.LayerNorm) and module.normalized_shape:
        return int(module.normalized_shape[-1])
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    return None


def producer_vote(module, shape: tuple[int, ...] | None = None) -> str | None:
    """``"last"`` when ``module`` works on the last dim, ``"first"`` for convolutions, else None.

    With the output's ``shape``, a LayerNorm, Linear or Embedding whose feature size is not
    the last dim was wrapped to work on dim 1 (a ``ChannelLayerNorm`` that transposes around
    ``nn.LayerNorm``): ``"first"`` when dim 1 has that size, else no vote.
    """
    if module is None:
        return None
    if isinstance(module, _FIRST_DIM):
        return "first"
    size = _feature_size(module)
    if size is not None and shape is not None and len(shape) >= 3 and shape[-1] != size:
        return "first" if shape[1] == size else None
    if isinstance(module, _LAST_DIM):
        return "last"
    name = type(module).__name__
    if "Conv" in name or "BatchNorm" in name:
        return "first"
    if any(s in name for s in _LAST_DIM_NAMES):
        return "last"
    # A container reads like its last child (a Sequential ending in a LayerNorm)
    children = list(module.children())
    return producer_vote(children[-1], shape) if children and isinstance(module, nn.Sequential) else None


# -- the automatic reading -----------------------------------------------------------------
def _fits(ext, spatial, strict: bool = True) -> float | None:
    """How well a grid ``ext`` follows the input's size ``spatial``: None if it cannot be a map
    of it (no dim > 1, a dim larger than the input's, or, when ``strict``, dims scaled too
    differently); else a penalty (0: one integer stride for every dim)."""
    ext = tuple(int(e) for e in ext)
    if len(ext) != len(spatial) or not any(e > 1 for e in ext) or any(e < 1 for e in ext):
        return None
    if any(e > s for e, s in zip(ext, spatial)):
        return None
    strides = [s / e for e, s in zip(ext, spatial) if s > 1]
    spread = max(strides) / min(strides) if strides else 1.0
    if strict and spread > STRIDE_SPREAD:
        return None
    ints = all(abs(s / e - round(s / e)) < 1e-6 or -(-s // max(round(s / e), 1)) == e
               for e, s in zip(ext, spatial))
    return min(spread - 1, 2.0) + (0 if ints else 0.5)


def _stage_tokens(length: int, geometry, order, exclude, rank: int) -> tuple[Reading, Grid] | None:
    """``length`` tokens read on the grid observed at their stage: extra = length - its cells."""
    g = geometry.stage_grid(order, exclude) if geometry is not None else None
    if g is None or not any(c > 1 for c in g.cells):
        return None  # nothing observed, or a 1 x 1 stage: no token map
    extra = length - math.prod(g.cells)
    if not 0 <= extra <= MAX_EXTRA_TOKENS:
        return None
    return token_reading(extra, g.cells, time=rank == 1 and extra == 0), g


def _input_only(spatial):
    """Geometry when no pass was observed: the input's own grid only."""
    from .geometry import Observer

    class _Net(nn.Module):
        pass

    return Observer(_Net(), 0, spatial, lambda: False)


def candidates(t, n: int, spatial: tuple[int, ...], module=None, geometry=None,
               order: int | None = None) -> list[tuple[Reading, float]]:
    """Every reading of a module output ``t`` as a feature map of the input, best first.

    ``geometry`` (a :class:`gradattr.geometry.Observer`) holds the grids observed in the
    pass, ``order`` when ``t`` was produced on its clock; token tensors are read on the
    grid observed at their stage, and only there (without a geometry: the input's grid).
    """
    item = None
    if isinstance(t, (tuple, list)) and t and isinstance(t[0], torch.Tensor):
        t, item = t[0], 0  # (output, (h, c)) of an RNN, (tokens, grid) of an MViT block
    if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim >= 3):
        return []
    if geometry is None:
        geometry = _input_only(spatial)
    rank, shape = len(spatial), tuple(t.shape)
    vote = producer_vote(module, shape)
    out: list[tuple[Reading, float]] = []
    if shape[0] == n:
        if t.ndim == rank + 2:
            f = _fits(shape[2:], spatial, strict=False)  # MATLAB's rule for (N, C, *S)
            # ... on a grid the pass shows: a convolution's, pooling's or norm's own (or the input's),
            # unless its positions, followed back to the input, show no grid there (per head)
            if f is not None and (vote == "first" or geometry.observed(shape[2:])
                                  or (vote is None and geometry.scaled(shape[2:]))) \
                    and geometry.grid_dims(t, 1, tuple(range(2, t.ndim))) is not False:
                out.append((CHANNELS_FIRST, f + (0.3 if vote == "last" else 0)))
            # a tensor observed as (N, C, *grid) (a pooled 1 x 1 map) is never read channels last
            if rank >= 2 and not geometry.observed_first(t) \
                    and geometry.grid_dims(t, t.ndim - 1, tuple(range(1, t.ndim - 1))) is not False:
                # channels last: its grid follows the input, or, made by a last-dim module (a
                # merging stage's norm or linear), is an integer downsampling of an observed grid,
                # whatever its strides (video: time 2x, space 32x)
                f = _fits(shape[1:-1], spatial)
                if f is None and vote == "last" and geometry.ties(shape[1:-1]):
                    f = _fits(shape[1:-1], spatial, strict=False)
                if f is not None:
                    out.append((CHANNELS_LAST, f + (0.3 if vote != "last" else 0)))
        tracked, reading = _tracked_tokens(t, geometry, rank) if t.ndim == 3 else (False, None)
        # a convolution, pooling or norm's dim 1 is channels, unless the positions followed back
        # to the input show tokens along it
        if t.ndim == 3 and (vote != "first" or reading is not None):
            found = (reading,) if tracked else _stage_tokens(shape[1], geometry, order, t, rank)
            if found is not None and found[0] is not None:
                pen = 0.0 if rank > 1 or vote == "last" else 0.3
                out.append((found[0], pen))
    if rank == 1 and t.ndim == 3 and shape[1] == n and shape[0] != n and vote in ("last", None):
        g = geometry.stage_grid(order, t)
        if g is not None and g.cells == (shape[0],):
            out.append((Reading("time_first", "time first (T, N, C)", False, 0, (shape[0],)),
                        0 if vote == "last" else 0.3))
    out = sorted(out, key=lambda p: p[1])
    if item is not None:
        out = [(replace(r, item=item), p) for r, p in out]
    return out


def infer_reading(t, n: int, spatial: tuple[int, ...], module=None, geometry=None,
         order: int | None = None) -> Reading | None:
    """The reading of a module output ``t`` for a batch of ``n`` inputs of size ``spatial``.

    ``None`` when ``t`` is not a feature map of the input (a vector, another batch
    size, a map larger than the input, tokens whose length no observed grid
    explains). Of the readings that fit, the one whose grid follows the input best
    and agrees with the producing ``module`` (convolutions and batch norms work on
    dim 1, linear layers, layer norms, attention and RNNs on the last dim); marked
    ``guessed``, naming the other reading, when another fits as well.
    """
    found = candidates(t, n, spatial, module, geometry, order)
    if not found:
        return None
    best, pen = found[0]
    if len(found) > 1 and found[1][1] - pen < 0.05:
        best = replace(best, guessed=True, alternatives=describe(found[1][0]))
    return best


def _not_a_tensor(t, reading, name, module):
    if isinstance(t, (tuple, list)) and not isinstance(t, torch.Tensor):
        if not (t and isinstance(t[0], torch.Tensor)):
            raise GradattrError(f"feature_layer: expected a layer whose output is a tensor "
                                f"(N, C, *spatial), but {name!r} returned a {type(t).__name__}")
    elif not isinstance(t, torch.Tensor):
        raise GradattrError(f"feature_layer: expected a layer whose output is a tensor "
                            f"(N, C, *spatial), but {name!r} returned a {type(t).__name__}")


def check_reading(t, reading: Reading | None, name: str, n: int, spatial: tuple[int, ...],
                  module=None, geometry=None, order: int | None = None) -> Reading:
    """The reading of an explicitly chosen layer's output ``t``, or an error naming the layer.

    A reading asked for (``feature_layout``) is bound as given, never re-interpreted;
    otherwise the layer's output is read with the grids observed in the pass
    (``geometry``): a channels-last layer of any rank reads channels last because its
    grid is an observed one, a token tensor only on the grid observed at its stage.
    """
    _not_a_tensor(t, reading, name, module)
    if reading is not None and reading.bound:
        return reading
    if geometry is None:
        geometry = _input_only(spatial)
    if reading is not None:
        return bind(reading, t, name, n, spatial, module, geometry, order)
    found = infer_reading(t, n, spatial, module, geometry, order)
    if found is None:
        _refuse_no_grid(t, name, geometry)
    if (found is None and isinstance(t, torch.Tensor) and t.ndim == len(spatial) + 2 and t.shape[0] == n
            and (all(s == 1 for s in t.shape[2:]) or producer_vote(module, tuple(t.shape)) != "last")):
        # An explicit layer with the input's layout is read channels-first even when its map is
        # 1 x 1 (MATLAB accepts any feature layer; only the automatic choice needs a dim > 1), but
        # never the output of a last-dim module (a linear layer's (N, L, C) tokens whose length no
        # observed grid explains: its C is features, no time axis) unless its map is 1 x 1.
        return bind(CHANNELS_FIRST, t, name, n, spatial, module, geometry, order)
    if found is None:
        shape = tuple((t[0] if not isinstance(t, torch.Tensor) else t).shape)
        rank = len(spatial)
        if len(shape) == 3 and shape[0] == n:
            raise GradattrError(
                f"feature_layer: expected a layer whose output reads as a feature map of the input, "
                f"but {name!r} outputs tokens of shape {shape} whose length {shape[1]} cannot be tied "
                f"to a grid observed in the forward pass ({geometry.seen()}; input: {n} samples of "
                f"size {spatial}); {_settle(shape, geometry, order, t)}")
        raise GradattrError(
            f"feature_layer: expected a layer whose output reads as a feature map of the input "
            f"({n}, C, {rank} spatial dims), ({n}, {rank} spatial dims, C) or tokens ({n}, L, C) "
            f"on a grid observed in the forward pass, but {name!r} outputs shape {shape}; "
            "pass feature_layout (a name or a callable tensor -> (N, C, *S)) to say how to read it")
    return found


def _refuse_no_grid(t, name: str, geometry) -> None:
    """Refuse a tensor whose positions, followed back to the input, show no grid in any reading:
    a dim that holds one token all along it (``head_dim`` of a per-head tensor inside attention)."""
    if not isinstance(t, torch.Tensor) or t.ndim < 4:
        return  # (a token tensor that reads as no grid is refused by the token messages)
    dims = tuple(range(2, t.ndim))
    if geometry.grid_dims(t, 1, dims) is not False:
        return
    s = geometry.shadows.of(t)
    from .provenance import constant
    flat = [d for d in range(1, t.ndim) if t.shape[d] > 1 and constant(s, d)]
    what = (f"dims {flat} of its shape {tuple(t.shape)} hold one token all along them" if len(flat) > 1
            else f"dim {flat[0]} of its shape {tuple(t.shape)} holds one token all along it" if flat
            else f"its shape {tuple(t.shape)} holds tokens in no grid order along dims 2 and on")
    raise GradattrError(
        f"feature_layer: expected a layer whose output is a map of the input's grid, but in "
        f"{name!r}'s output, followed back to the input through the forward pass, {what}: it is no "
        "grid of the input but a tensor inside attention (per head: (N, heads, tokens, head_dim), "
        "or per query and key); choose the output of the block or of the attention module, or pass "
        "feature_layout=callable (tensor -> (N, C, *S)) to say how to read it")


def _settle(shape, geometry, order, exclude) -> str:
    """Which ``feature_layout=`` would settle a token tensor of ``shape``."""
    since = geometry.since_scramble(order, exclude)
    fits = [g for g in since if 0 <= shape[1] - math.prod(g.cells) <= MAX_EXTRA_TOKENS]
    if exclude is not None and geometry.order(exclude)[0]:
        # followed back to the input, their positions form no grid: no count of leading tokens helps
        return ("followed back to the input through the forward pass, their positions form no "
                "grid of it; feature_layout=callable (tensor -> (N, C, *S), a pytorch-grad-cam "
                "reshape_transform) says how to read them")
    hint = ""
    if not since:
        scr = [g for g in geometry.usable(exclude, scrambles=True) if g.scramble
               and (order is None or g.order <= order)][-1]
        hint = (f"the tokens came back from the batch dim ({scr.source}, in {scr.module or 'the model'!r}) "
                "after the last grid observed, so their order is the network's own, not a raster "
                "order of any observed grid; ")
    if fits:
        g = fits[-1]
        hint = (f"feature_layout='tokens:{shape[1] - math.prod(g.cells)}' reads them as that many "
                f"leading extra tokens + the observed {' x '.join(map(str, g.cells))} grid; ")
    return (hint + "feature_layout=callable (tensor -> (N, C, *S), a pytorch-grad-cam "
            "reshape_transform) says how to read them in any case")


def _check_callable(reading: Reading, t: torch.Tensor, name: str, rank: int) -> None:
    """A ``feature_layout`` callable turns ``t`` into ``(N, C, *S)``, or an error says where it did not."""
    shape = tuple(t.shape)
    try:
        a = cast(Callable, reading.fn)(t)  # a callable reading has its fn
    except Exception as e:  # noqa: BLE001 - the user's function: say where it failed
        raise GradattrError(f"feature_layout: expected a callable tensor -> (N, C, *S), but it "
                            f"raised {type(e).__name__}: {e} on {name!r}'s output of shape {shape}") from None
    if not isinstance(a, torch.Tensor) or a.ndim != rank + 2 or a.shape[0] != shape[0]:
        got = f"shape {tuple(a.shape)}" if isinstance(a, torch.Tensor) else type(a).__name__
        raise GradattrError(f"feature_layout: expected a callable returning ({shape[0]}, C, "
                            f"{rank} spatial dims) for {name!r}'s output {shape}, got {got}")


def bind(reading: Reading, out, name: str, n: int, spatial: tuple[int, ...], module=None,
         geometry=None, order: int | None = None) -> Reading:
    """A reading asked for by name, fixed to the shape of ``out`` (grid, extra tokens) as given."""
    if geometry is None:
        geometry = _input_only(spatial)
    t = out
    item = None
    if isinstance(out, (tuple, list)):
        t, item = out[0], 0
    shape = tuple(t.shape)
    rank = len(spatial)

    def fail(what):
        return GradattrError(f"feature_layout: expected {what} for {name!r}, got shape {shape} "
                             f"(input: {n} samples of size {spatial}; {geometry.seen()})")

    k = reading.kind
    if k == "callable":
        _check_callable(reading, t, name, rank)
        return replace(reading, item=item, bound=True)
    if k == "time_first":
        if t.ndim != 3 or shape[1] != n:
            raise fail(f"a (T, {n}, C) tensor")
        return replace(reading, grid=(shape[0],), extra=0, item=item, bound=True)
    if shape[0] != n:
        raise fail(f"a tensor with the batch size {n} first")
    if k == "channels_first":
        if t.ndim != rank + 2:
            raise fail(f"({n}, C, {rank} spatial dims)")
        return replace(reading, item=item)
    if k == "channels_last":
        if t.ndim != rank + 2:
            raise fail(f"({n}, {rank} spatial dims, C)")
        return replace(reading, item=item)
    if k == "tokens":
        if t.ndim != 3:
            raise fail(f"tokens ({n}, L, C)")
        if rank == 1 and reading.extra == 0 and "time major" in reading.description:
            return replace(token_reading(0, (shape[1],), time=True), item=item)  # as said: every step
        seen = _bind_tracked(reading, t, name, geometry, rank)
        if seen is not None:
            return replace(seen, item=item)
        if reading.extra is not None:
            m = shape[1] - reading.extra
            g = geometry.with_cells(m, order, t) if m > 0 else None
            if g is None:
                raise fail(f"{reading.extra} extra tokens + {m} tokens on a grid observed in the "
                           f"forward pass")
            return replace(token_reading(reading.extra, g.cells, time=rank == 1 and reading.extra == 0),
                           item=item)
        found = _stage_tokens(shape[1], geometry, order, t, rank)
        if found is None:
            raise fail("tokens (N, L, C) with L = extra tokens + the cells of the grid observed at "
                       "their stage")
        return replace(found[0], item=item)
    raise AssertionError(k)


def _bind_tracked(reading: Reading, t, name: str, geometry, rank: int) -> Reading | None:
    """``feature_layout='tokens'`` / ``'tokens:k'`` on tokens whose positions the pass followed
    back to the input: the observed reading (``'tokens:k'`` only where ``k`` tokens lead and the
    cells follow in raster order), or an error saying what was observed. None: not followed."""
    tracked, seen = _tracked_tokens(t, geometry, rank)
    if not tracked:
        return None
    if seen is not None and (reading.extra is None or (seen.index is None and reading.extra == seen.extra)):
        return seen
    raise GradattrError(
        f"feature_layout: expected a token layout that {name!r}'s tokens {tuple(t.shape)} have, but "
        f"{describe(reading)!r} reads leading extra tokens and, followed back to the input through "
        "the forward pass, "
        + (f"they are {describe(seen)}; feature_layout='tokens' reads them as observed"
           if seen is not None else "their positions form no grid of the input")
        + "; a callable tensor -> (N, C, *S) reads them as you say")
