"""The matplotlib side of every picture: matplotlib imported only when a picture is drawn, a new
figure (pyplot's when the program uses pyplot, else one on the Agg canvas), the PNG written, the
colormap and opacity checked, a map drawn over its image, a mask's outline, a colorbar.
"""
from __future__ import annotations

import contextvars
import os
import sys

import numpy as np

from ..errors import GradattrError, expected


def _mpl():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise GradattrError("gradattr.plot: expected matplotlib to be installed (it is optional: "
                            "pip install \"gradattr[plot]\"), got ImportError: " + str(err)) from None
    return Figure, FigureCanvasAgg


def require_matplotlib() -> None:
    """Raise :class:`~gradattr.GradattrError` now when matplotlib (an optional extra) is missing,
    before any work whose result is to be drawn."""
    _mpl()


OFF_PYPLOT = contextvars.ContextVar("gradattr_plot_off_pyplot", default=False)


def _pyplot():
    """pyplot when the program already uses it (imported it), else None: gradattr never imports it."""
    if OFF_PYPLOT.get():  # a figure made only to be rendered to an array
        return None
    return sys.modules.get("matplotlib.pyplot")


def new_figure(nrows: int | np.integer, ncols: int | np.integer, figsize, **kw):
    Figure, FigureCanvasAgg = _mpl()
    plt = _pyplot()
    if plt is not None:  # a pyplot figure: plt.savefig/plt.show/plt.gcf see it, as after plt.figure()
        fig = plt.figure(figsize=figsize, dpi=100, layout="constrained")
    else:
        fig = Figure(figsize=figsize, dpi=100, layout="constrained")
        FigureCanvasAgg(fig)  # the Agg canvas: savefig and buffer_rgba work without pyplot
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save_png(fig, path):
    if path is not None:
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise expected("path", "a file path in an existing folder", f"{path!r} (no folder {parent!r})")
        fig.savefig(path, dpi=fig.dpi)  # PNG pixels = the figure's own pixels (no tight bbox)
    return fig


def colormap(cmap):
    import matplotlib

    if isinstance(cmap, matplotlib.colors.Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except (KeyError, TypeError, ValueError):
        raise expected("cmap", "a matplotlib colormap or its name such as 'jet'", repr(cmap)) from None


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(alpha) <= 1.0:
        raise expected("alpha", "a number in [0, 1]", repr(alpha))
    return float(alpha)


def draw_overlay(ax, img01: np.ndarray, cam01: np.ndarray, alpha: float, cmap):
    """imshow(X); hold on; imagesc(map, AlphaData=alpha) on one axes."""
    if img01.ndim == 2:
        ax.imshow(img01, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img01, interpolation="nearest")
    return ax.imshow(cam01, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0, interpolation="nearest")


def draw_outline(ax, mask):
    """The 0.5 level line of a mask, in white (nothing for an empty or full mask)."""
    if mask is not None and mask.min() < 0.5 < mask.max():
        ax.contour(mask, levels=[0.5], colors="white", linewidths=1.5)


def add_colorbar(fig, ax, cmap, lo: float, hi: float, label: str | None, **kw):
    """A colorbar for ``cmap`` spanning ``[lo, hi]`` (the map's own values), next to ``ax``."""
    import matplotlib

    if not hi > lo:  # a constant map is drawn as 0 (rescale): show a unit bar starting at its value
        hi = lo + 1.0
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(lo, hi), cmap=cmap)
    return fig.colorbar(mappable, ax=ax, label=label, **kw)
