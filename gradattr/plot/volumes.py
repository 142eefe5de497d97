"""Volumes: three orthogonal slices of a ``D x H x W`` volume with its map (:func:`volume`), and the
same slices side by side as pixels (:func:`volume_array`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import expected
from .canvas import (add_colorbar, check_alpha, colormap, draw_outline, draw_overlay, new_figure,
                     require_matplotlib, save_png)
from .pixels import blend, to_uint8
from .values import as_array, map_like, rescale, squeeze_lead


def _volume_and_point(volume, cam, at):
    """(volume rescaled to [0, 1] (channels averaged), the raw D x H x W map, the (d, h, w) point ``at``)."""
    v = squeeze_lead(as_array(volume, "volume"), 4)
    if v.ndim == 4:
        v = v.mean(0)
    if v.ndim != 3:
        raise expected("volume", "D x H x W or C x D x H x W (for images use gradattr.plot.overlay)",
                       f"shape {tuple(np.shape(as_array(volume, 'volume')))}")
    v = rescale(v)
    raw = map_like(cam, "cam", v.shape)
    m = rescale(raw)
    if isinstance(at, str) and at == "max":
        point = np.unravel_index(int(np.argmax(m)), m.shape)
    elif isinstance(at, str) and at == "center":
        point = tuple(s // 2 for s in m.shape)
    elif (isinstance(at, Sequence) and not isinstance(at, str) and len(at) == 3
          and all(isinstance(i, (int, np.integer)) and 0 <= i < s for i, s in zip(at, m.shape))):
        point = tuple(at)
    else:
        raise expected("at", f"'max', 'center' or a (d, h, w) index inside {m.shape}", repr(at))
    return v, raw, tuple(int(i) for i in point)


def volume(volume, cam, path=None, at="max", alpha: float = 0.5, cmap="jet", title: str | None = None,
           *, contour=None, colorbar: bool = True, colorbar_label: str | None = "map value"):
    """Three orthogonal slices of a volume with its map overlaid.

    The slices are ``D``-slice (``H x W``), ``H``-slice (``D x W``) and ``W``-slice
    (``D x H``) through one point, marked by a cross. The volume is min-max
    scaled and the map rescaled over the whole volume (not per slice), so the
    three panels share one colour scale.

    Args:
        volume: ``D x H x W`` or ``C x D x H x W`` (channels averaged; a leading
            batch of one is dropped), tensor or numpy.
        cam: ``D x H x W`` map (leading singleton dims dropped).
        path: where to write a PNG; ``None`` writes nothing.
        at: ``"max"`` (through the map's maximum), ``"center"``, or a ``(d, h, w)``
            index.
        alpha: opacity of the map.
        cmap: colormap of the map.
        title: figure title.
        contour: an optional ``D x H x W`` mask (e.g. the true object or organ)
            whose outline is drawn in white on each slice.
        colorbar: add a colorbar in the map's own values (one scale for the
            whole volume).
        colorbar_label: the colorbar's label.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    require_matplotlib()
    alpha, cmap = check_alpha(alpha), colormap(cmap)
    v, raw, (d, h, w) = _volume_and_point(volume, cam, at)
    m = rescale(raw)
    mask = None if contour is None else map_like(contour, "contour", v.shape)
    cut = [(d, slice(None), slice(None)), (slice(None), h, slice(None)), (slice(None), slice(None), w)]
    views = [(c, f"{name} = {i}", labels, p) for c, name, i, labels, p in zip(
        cut, "DHW", (d, h, w), (("W", "H"), ("W", "D"), ("H", "D")), ((w, h), (w, d), (h, d)))]
    fig, axes = new_figure(1, 3, (11.0 + (0.8 if colorbar else 0), 4.0))
    for ax, (c, name, (xl, yl), (px, py)) in zip(axes[0], views):
        draw_overlay(ax, v[c], m[c], alpha, cmap)
        draw_outline(ax, None if mask is None else mask[c])
        ax.plot([px], [py], marker="+", color="white", ms=14, mew=1.5)
        ax.set_title(f"slice {name}")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_xticks([])
        ax.set_yticks([])
    if colorbar:
        add_colorbar(fig, list(axes[0]), cmap, float(raw.min()), float(raw.max()), colorbar_label, shrink=0.8)
    if title is not None:
        fig.suptitle(title)
    return save_png(fig, path)


def volume_array(volume, cam, at="max", alpha: float = 0.5, cmap="jet", *, gap: int = 2) -> np.ndarray:
    """Three orthogonal slices of a volume with its map, side by side, as an RGB uint8 array.

    The slices of :func:`volume` (``H x W`` at depth ``d``, ``D x W`` at row ``h``,
    ``D x H`` at column ``w``, through the map's maximum by default), blended as
    :func:`overlay_array` does with one scale for the whole volume, placed left to
    right on a black background ``gap`` pixels apart and aligned at the top.

    Args:
        volume: ``D x H x W`` or ``C x D x H x W`` (channels averaged; a leading batch
            of one dropped).
        cam: ``D x H x W`` map.
        at: ``"max"``, ``"center"`` or a ``(d, h, w)`` index.
        alpha: opacity of the map.
        cmap: colormap name or object.
        gap: black pixels between the slices.

    Returns:
        ``numpy.ndarray`` of shape ``(max(H, D), W + W + H + 2 * gap, 3)``, dtype uint8.

    >>> cam = np.zeros((4, 5, 6)); cam[1, 2, 3] = 1.0
    >>> volume_array(np.zeros((4, 5, 6)), cam, gap=1).shape
    (5, 19, 3)
    """
    require_matplotlib()
    alpha, cmap = check_alpha(alpha), colormap(cmap)
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise expected("gap", "an int >= 0", repr(gap))
    v, raw, (d, h, w) = _volume_and_point(volume, cam, at)
    m = rescale(raw)
    slices = [blend(v[d], m[d], alpha, cmap), blend(v[:, h], m[:, h], alpha, cmap),
              blend(v[:, :, w], m[:, :, w], alpha, cmap)]
    height = max(s.shape[0] for s in slices)
    out = np.zeros((height, sum(s.shape[1] for s in slices) + 2 * gap, 3))
    col = 0
    for s in slices:
        out[: s.shape[0], col: col + s.shape[1]] = s
        col += s.shape[1] + gap
    return to_uint8(out)
