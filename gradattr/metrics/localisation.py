"""Localisation: does the map point at the object? Against a mask or a box, maps only (no network):
the pointing game (Zhang et al., ECCV 2016), its energy-based form (Wang et al., Score-CAM, CVPRW
2020), CAM's weakly supervised box and its IoU (Zhou et al., CVPR 2016), and relevance mass and
rank accuracy (Arras et al., CLEVR-XAI, Information Fusion 2022). Boxes are described in
:mod:`gradattr.metrics`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import GradattrError, expected
from .arguments import as_numpy, as_tensor, give, maps_float64


def _maps_batch(maps) -> tuple[torch.Tensor, bool, torch.device]:
    m = as_tensor(maps, "maps")
    if m.ndim < 2:
        raise expected("maps", "a batch of maps (N, *spatial) (use maps[None] for a single map)",
                       f"shape {tuple(m.shape)}")
    if not torch.isfinite(m.float()).all():
        raise expected("maps", "finite values", "NaN or Inf")
    return m.float(), not isinstance(maps, torch.Tensor), (maps.device if isinstance(maps, torch.Tensor)
                                                          else torch.device("cpu"))


def _boxes(box, n: int, spatial: tuple[int, ...], argument: str = "box") -> np.ndarray:
    """``(d, 2)`` or ``(N, d, 2)`` half-open boxes -> ``(N, d, 2)`` int64, validated."""
    b = as_tensor(box, argument).cpu().numpy()
    d = len(spatial)
    if b.ndim == 2:
        b = np.broadcast_to(b, (n, *b.shape))
    if b.ndim != 3 or b.shape[1:] != (d, 2) or b.shape[0] != n:
        raise expected(argument, f"({d}, 2) or ({n}, {d}, 2) [start, stop) intervals, one per spatial "
                       f"dim of maps shaped (N={n}, *{spatial}) (use maps[None] for a single map)",
                       f"shape {tuple(np.shape(box))}")
    if not np.all(b == np.round(b)):
        raise expected(argument, "integer indices", "fractional values")
    b = b.astype(np.int64)
    if np.any(b[..., 0] < 0) or np.any(b[..., 1] > np.asarray(spatial)) or np.any(b[..., 0] >= b[..., 1]):
        raise expected(argument, f"0 <= start < stop <= size along each dim of {spatial}",
                       np.array2string(b[0] if n == 1 else b, separator=", ").replace("\n", ""))
    return b


def _region(m: torch.Tensor, mask, box) -> np.ndarray:
    """The reference region ``(N, *s)`` bool from exactly one of ``mask`` and ``box``."""
    n, *s = m.shape
    if (mask is None) == (box is None):
        raise GradattrError("mask: expected exactly one of mask and box, got "
                            + ("neither" if mask is None else "both"))
    if mask is not None:
        r = as_tensor(mask, "mask").cpu().numpy().astype(bool)
        if r.shape == tuple(s):
            r = np.broadcast_to(r, (n, *s)).copy()
        if r.shape != (n, *s):
            raise expected("mask", f"a boolean array of shape {tuple(s)} or {(n, *s)} (maps are read as a "
                           f"batch (N, *spatial); use maps[None] for a single map)", f"shape {r.shape}")
    else:
        b = _boxes(box, n, tuple(s))
        r = np.zeros((n, *s), dtype=bool)
        for i in range(n):
            r[(i,) + tuple(slice(lo, hi) for lo, hi in b[i])] = True
    empty = ~r.reshape(n, -1).any(1)
    if empty.any():
        raise expected("mask", "a reference region with at least one element per sample",
                       f"an empty region for sample(s) {np.flatnonzero(empty).tolist()}")
    return r


def pointing_game(maps, mask=None, box=None, *, tolerance: float = 0.0):
    """Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016).

    A hit when the map's maximum lies on the object: within ``tolerance``
    elements (Euclidean) of the reference region. When several elements tie for
    the maximum, any of them on the object counts (as in Quantus).

    Args:
        maps: a batch of maps ``(N, *spatial)`` (any rank; ``maps[None]`` for one).
        mask: boolean ``(N, *spatial)`` or ``(*spatial)`` object mask; or
        box: ``(d, 2)`` / ``(N, d, 2)`` half-open ``[start, stop)`` boxes (see
            :mod:`gradattr.metrics`).
        tolerance: distance in elements (15 pixels in the paper's protocol).

    Returns:
        ``(N,)`` booleans (a tensor on the maps' device, or numpy for numpy maps);
        their mean is the pointing accuracy.

    Example:
        >>> m = torch.zeros(1, 6, 6); m[0, 2, 3] = 1.0
        >>> pointing_game(m, box=[[1, 4], [2, 5]]).tolist(), pointing_game(m, box=[[4, 6], [0, 6]]).tolist()
        ([True], [False])
    """
    from scipy import ndimage

    m, as_numpy, dev = _maps_batch(maps)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise expected("tolerance", "a distance >= 0", repr(tolerance))
    region = _region(m, mask, box)
    mm = m.cpu().numpy()
    n = mm.shape[0]
    peak = mm == mm.reshape(n, -1).max(1).reshape(n, *([1] * (mm.ndim - 1)))
    if tolerance > 0:
        near = np.stack([ndimage.distance_transform_edt(~r) <= tolerance for r in region])
    else:
        near = region
    hits = (peak & near).reshape(n, -1).any(1)
    return give(hits, as_numpy, dev)


def energy_pointing_game(maps, mask=None, box=None):
    """Energy-based pointing game (Wang et al., "Score-CAM", CVPR Workshops 2020).

    ``sum(map on the object) / sum(map)`` with the map clipped at 0 (CAM maps
    are non-negative); Quantus calls it *relevance mass accuracy*. ``NaN`` where a
    map has no positive value.

    Args:
        maps: a batch of maps ``(N, *spatial)`` (``maps[None]`` for one).
        mask: boolean ``(N, *spatial)`` or ``(*spatial)`` object mask; or
        box: ``(d, 2)`` / ``(N, d, 2)`` half-open boxes.

    Returns:
        ``(N,)`` proportions in [0, 1].

    Example:
        >>> m = torch.tensor([[0.0, 1.0, 3.0, 0.0]])
        >>> energy_pointing_game(m, box=[[2, 4]]).tolist()
        [0.75]
    """
    m, as_numpy, dev = _maps_batch(maps)
    region = torch.as_tensor(_region(m, mask, box)).to(m.device)
    e = torch.relu(m).flatten(1)
    inside = (e * region.flatten(1)).sum(1)
    total = e.sum(1)
    ratio = torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), torch.nan)
    return ratio.cpu().numpy() if as_numpy else ratio.to(dev)


def box_iou(a, b):
    """Intersection over union of half-open boxes ``(..., d, 2)`` of any rank (length, area, volume).

    Example:
        >>> box_iou([[0, 4], [0, 4]], [[2, 6], [0, 4]]).item()   # 8 / (16 + 16 - 8)
        0.3333333333333333
    """
    ta, tb = np.asarray(as_numpy(as_tensor(a, "a")), dtype=np.float64), np.asarray(
        as_numpy(as_tensor(b, "b")), dtype=np.float64)
    if ta.shape[-1:] != (2,) or tb.shape[-1:] != (2,) or ta.shape[-2] != tb.shape[-2]:
        raise expected("b", f"boxes (..., d, 2) with the same d as a {ta.shape}", f"shape {tb.shape}")
    inter = np.clip(np.minimum(ta[..., 1], tb[..., 1]) - np.maximum(ta[..., 0], tb[..., 0]), 0, None).prod(-1)
    union = (ta[..., 1] - ta[..., 0]).prod(-1) + (tb[..., 1] - tb[..., 0]).prod(-1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass
class Localization:
    """CAM's weakly supervised localisation of a batch of maps.

    Attributes:
        boxes: ``(N, d, 2)`` half-open ``[start, stop)`` box of the largest
            connected component of ``map >= threshold * max(map)`` (all zeros for
            a map with no positive value).
        iou: ``(N,)`` IoU with the reference box, or ``None`` without one; the CAM
            paper counts a localisation as correct at IoU >= 0.5.
    """

    boxes: object
    iou: object | None


def localize(maps, box=None, *, threshold: float = 0.2, connectivity: int | None = None) -> Localization:
    """Weakly supervised localisation (Zhou et al., "Learning Deep Features for
    Discriminative Localization", CVPR 2016).

    Keep the elements with ``map >= threshold * max(map)``, take the largest
    connected component (``scipy.ndimage.label``) and return its bounding box:
    an interval for sequences, a box for images, a cuboid for volumes.

    Args:
        maps: a batch of maps ``(N, *spatial)`` (``maps[None]`` for one).
        box: optional reference ``(d, 2)`` / ``(N, d, 2)`` half-open box(es) for the IoU.
        threshold: fraction of each map's maximum (0.2 in the CAM paper).
        connectivity: neighbours that connect, from 1 (faces only) to the rank
            (every neighbour, the default, like MATLAB's ``bwconncomp``: 8 in 2-D,
            26 in 3-D).

    Returns:
        A :class:`Localization` (boxes and IoU as tensors on the maps' device, or
        numpy for numpy maps).

    Example:
        >>> m = torch.zeros(1, 8, 8); m[0, 2:5, 3:7] = 1.0; m[0, 7, 0] = 0.9  # a blob and a speck
        >>> loc = localize(m, box=[[2, 5], [3, 6]])
        >>> loc.boxes.tolist(), round(loc.iou.item(), 4)
        ([[[2, 5], [3, 7]]], 0.75)
    """
    from scipy import ndimage

    m, as_numpy, dev = _maps_batch(maps)
    n, *s = m.shape
    d = len(s)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise expected("threshold", "a fraction of the maximum in [0, 1]", repr(threshold))
    conn = d if connectivity is None else connectivity
    if isinstance(conn, bool) or not isinstance(conn, (int, np.integer)) or not 1 <= conn <= d:
        raise expected("connectivity", f"an integer from 1 to the maps' rank {d}", repr(connectivity))
    ref = _boxes(box, n, tuple(s)) if box is not None else None
    structure = ndimage.generate_binary_structure(d, int(conn))
    mm = m.cpu().numpy()
    boxes = np.zeros((n, d, 2), dtype=np.int64)
    for i in range(n):
        peak = mm[i].max()
        if not peak > 0:
            continue
        labels, count = ndimage.label(mm[i] >= threshold * peak, structure=structure)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        biggest = int(np.argmax(sizes)) + 1  # the first of equal-sized components
        sl = ndimage.find_objects((labels == biggest).astype(np.int32))[0]
        boxes[i] = [[t.start, t.stop] for t in sl]
    iou = box_iou(boxes, ref) if ref is not None else None
    return Localization(boxes=give(boxes, as_numpy, dev),
                        iou=None if iou is None else give(iou, as_numpy, dev))


def _mask(mask, m: torch.Tensor) -> torch.Tensor:
    """``(N, *S)`` or ``(*S)`` mask -> ``(N, *S)`` bool on the maps' device, checked non-empty."""
    n, *s = m.shape
    if isinstance(mask, torch.Tensor):
        r = mask.detach()
    else:
        try:
            r = torch.from_numpy(np.ascontiguousarray(np.asarray(mask)))
        except (TypeError, ValueError):
            raise expected("mask", "a boolean tensor or array", type(mask).__name__) from None
    if r.dtype.is_complex or (r.dtype != torch.bool and not r.is_floating_point()
                              and r.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise expected("mask", "a boolean tensor or array", f"dtype {r.dtype}")
    if tuple(r.shape) == tuple(s):
        r = r.expand(n, *s)
    if tuple(r.shape) != (n, *s):
        raise expected("mask", f"a mask of shape {tuple(s)} or {(n, *s)}, the maps' (maps are read as a "
                       "batch (N, *spatial); use maps[None] for a single map)", f"shape {tuple(r.shape)}")
    r = r.to(m.device) != 0
    empty = ~r.flatten(1).any(1)
    if empty.any():
        raise expected("mask", "a region with at least one element per sample",
                       f"an empty mask for sample(s) {torch.nonzero(empty)[:, 0].tolist()}")
    return r


def relevance_mass(maps, mask):
    """Relevance mass accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022). Higher is better.

    ``sum(positive relevance inside the mask) / sum(positive relevance)`` per sample (negative
    values count as 0); NaN for a map without positive values.

    Args:
        maps: a batch of maps ``(N, *S)`` (``maps[None]`` for one).
        mask: the ground truth, boolean ``(N, *S)`` or ``(*S)``.

    Returns:
        ``(N,)`` shares in [0, 1] (a tensor on the maps' device, numpy for numpy maps).

    Example:
        >>> relevance_mass(torch.tensor([[3.0, 1.0, -2.0, 4.0]]), torch.tensor([True, True, True, False])).tolist()
        [0.5]
    """
    m, as_numpy, dev = maps_float64(maps)
    inside = _mask(mask, m)
    pos = m.clamp(min=0).flatten(1)
    total = pos.sum(1)
    within = (pos * inside.flatten(1)).sum(1)
    share = torch.where(total > 0, within / torch.where(total > 0, total, 1.0), torch.nan)
    return give(share.float(), as_numpy, dev)


def relevance_rank(maps, mask):
    """Relevance rank accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022). Higher is better.

    With ``K`` the mask's size (per sample), the share of the ``K`` highest-ranked positions
    (raw values, ties in raster order) that lie inside the mask.

    Args:
        maps: a batch of maps ``(N, *S)`` (``maps[None]`` for one).
        mask: the ground truth, boolean ``(N, *S)`` or ``(*S)``.

    Returns:
        ``(N,)`` shares in [0, 1] (a tensor on the maps' device, numpy for numpy maps).

    Example:
        >>> relevance_rank(torch.tensor([[3.0, 1.0, -2.0, 4.0]]), torch.tensor([True, True, False, False])).tolist()
        [0.5]
    """
    m, as_numpy, dev = maps_float64(maps)
    inside = _mask(mask, m).flatten(1)
    flat = m.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    k = inside.sum(1, keepdim=True)
    hits = ((ranks < k) & inside).sum(1)
    return give((hits.double() / k[:, 0]).float(), as_numpy, dev)
