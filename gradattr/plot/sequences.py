"""Sequences: a ``C x T`` sequence above its per-time-step importance (:func:`sequence`), and the
same picture as pixels (:func:`sequence_array`).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import expected
from .canvas import OFF_PYPLOT, add_colorbar, colormap, new_figure, require_matplotlib, save_png
from .pixels import figure_array
from .values import as_array, map_like, rescale, squeeze_lead


def sequence(x, importance, path=None, title: str | None = None, *, channel_names=None,
             ylabel: str = "importance", shade: bool = True, cmap="jet", legend: bool = True,
             colorbar: bool = True):
    """A ``C x T`` sequence above its per-time-step importance (MATLAB's 1-D gradCAM example).

    Top axes: one line per channel. Bottom axes: the importance per time step.
    The x axis ("Time Step", 0-based) is shared.

    Args:
        x: ``C x T`` (or ``T`` for one channel, or ``1 x C x T``), tensor or numpy.
        importance: a ``T`` map (leading singleton dims dropped), or a dict
            ``{name: T map}`` for several lines in the bottom axes.
        path: where to write a PNG; ``None`` writes nothing.
        title: title of the top axes.
        channel_names: legend labels (default ``"Feature 1"`` ... like MATLAB).
        ylabel: label of the importance axis and name of its line (say the
            method: ``"Grad-CAM importance"``; the default names none).
        shade: tint the sequence axes' background by the (first) rescaled
            importance with ``cmap``, so high-importance steps stand out.
        cmap: colormap of the tint.
        legend: show the channel legend (for at most 20 channels).
        colorbar: with ``shade``, a colorbar of the tint in the (first)
            importance's own values.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    require_matplotlib()
    cmap = colormap(cmap)
    a, lines, channel_names = _sequence_inputs(x, importance, ylabel, channel_names)
    c, t = a.shape
    fig, axes = new_figure(2, 1, (8.0, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top, bottom = axes[0, 0], axes[1, 0]
    steps = np.arange(t)
    colors = colormap("tab10")
    for i in range(c):  # ten colours, then the same colours dashed, then dotted
        top.plot(steps, a[i], lw=1.2, label=channel_names[i], color=colors(i % 10),
                 linestyle=("-", "--", ":")[(i // 10) % 3])
    if shade:
        _tint(fig, top, a, lines, cmap, colorbar)
    top.set_xlim(-0.5, t - 0.5)
    top.set_ylabel("value")
    if title is not None:
        top.set_title(title)
    if legend and c <= 20:
        top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    for name, v in lines.items():
        bottom.plot(steps, v, marker="o", ms=4, lw=1.5, label=name)
        if len(lines) == 1:
            bottom.fill_between(steps, 0, v, alpha=0.2)
    if len(lines) > 1:
        bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    bottom.set_xlabel("Time Step")
    from matplotlib.ticker import MaxNLocator

    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylabel(ylabel if len(lines) == 1 else "importance")
    bottom.grid(alpha=0.3)
    top.grid(alpha=0.3)
    return save_png(fig, path)


def _sequence_inputs(x, importance, ylabel: str, channel_names):
    """:func:`sequence`'s arguments checked: ``(x (C, T), {name: (T,) map}, channel names)``."""
    a = squeeze_lead(as_array(x, "x"), 2)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise expected("x", "a C x T sequence (or T, or 1 x C x T)", f"shape {tuple(np.shape(as_array(x, 'x')))}")
    c, t = a.shape
    named = importance if isinstance(importance, Mapping) else {ylabel: importance}
    if not named:
        raise expected("importance", "a T map or a non-empty dict of them", "an empty dict")
    lines = {str(k): map_like(v, "importance", (t,)) for k, v in named.items()}
    if channel_names is None:
        channel_names = [f"Feature {i + 1}" for i in range(c)]
    elif len(channel_names) != c:
        raise expected("channel_names", f"{c} names (one per channel of x)", f"{len(channel_names)}")
    return a, lines, channel_names


def _tint(fig, top, a: np.ndarray, lines: dict, cmap, colorbar: bool) -> None:
    """The sequence axes' background tinted by the first importance (and its colorbar)."""
    t = a.shape[1]
    lo, hi = a.min(), a.max()
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    first_name, first = next(iter(lines.items()))
    top.imshow(rescale(first)[None], cmap=cmap, alpha=0.25, aspect="auto",
               extent=(-0.5, t - 0.5, lo - pad, hi + pad), vmin=0, vmax=1, zorder=0,
               interpolation="nearest")
    top.set_ylim(lo - pad, hi + pad)
    if colorbar:
        bar = add_colorbar(fig, top, cmap, float(first.min()), float(first.max()),
                        f"{first_name} (tint)", location="left", pad=0.02, aspect=15)
        bar.solids.set_alpha(0.25)


def sequence_array(x, importance, **options) -> np.ndarray:
    """:func:`sequence`'s picture (a ``C x T`` sequence above its importance) as an RGB uint8 array.

    Takes :func:`sequence`'s arguments (except ``path``); the figure is rendered
    and dropped, never shown to pyplot.

    >>> sequence_array(np.sin(np.arange(20.0))[None], np.arange(20.0)).shape
    (550, 800, 3)
    """
    if "path" in options:
        raise expected("path", "no path (sequence_array returns pixels; use gradattr.plot.sequence "
                       "to write a PNG, or to_pil(array).save(path))", repr(options["path"]))
    token = OFF_PYPLOT.set(True)
    try:
        fig = sequence(x, importance, **options)
    finally:
        OFF_PYPLOT.reset(token)
    return figure_array(fig)
