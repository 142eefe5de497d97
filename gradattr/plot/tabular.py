"""Tabular attributions: one row's attributions as horizontal bars, one per feature (:func:`features`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import expected
from .canvas import new_figure, save_png
from .values import as_array, squeeze_lead


#: Bar colours of :func:`features`: a feature that raises the score, one that lowers it.
RAISES, LOWERS = "#c0392b", "#2e6fb7"


def _feature_panels(values, names) -> tuple[dict, list[str]]:
    """``values`` (one row, or a mapping title -> row) as ``{title: (F,)}`` and the feature names."""
    rows = dict(values) if isinstance(values, Mapping) else {None: values}
    if not rows:
        raise expected("values", "a row of attributions (F,) or a non-empty mapping of them", "{}")
    panels = {}
    for title, v in rows.items():
        a = squeeze_lead(as_array(v, "values"), 1)
        if a.ndim != 1:
            raise expected("values", "one row of attributions (F,) per panel (a leading batch of one is "
                           "dropped)", f"shape {a.shape}")
        panels[title] = a
    sizes = {a.size for a in panels.values()}
    if len(sizes) != 1:
        raise expected("values", "rows of one length (the same features in every panel)", f"lengths {sorted(sizes)}")
    f = sizes.pop()
    if names is None:
        names = [f"x{j + 1}" for j in range(f)]
    elif isinstance(names, (str, bytes)) or len(names) != f:
        raise expected("names", f"{f} feature names (one per value)",
                       repr(names) if isinstance(names, (str, bytes)) else f"{len(names)} names")
    return panels, [str(n) for n in names]


def features(values, names: Sequence[str] | None = None, path=None, title: str | None = None, *,
             top: int | None = None, sort: bool = True, xlabel: str = "contribution to the score"):
    """Attributions of one row of tabular data as horizontal bars, one bar per feature.

    Bars that raise the score are red, bars that lower it blue, each labelled with its
    value; features are sorted by the size of their attribution (the largest on top), so
    the picture reads at a glance. Several methods side by side: pass a mapping
    ``{"Shapley": phi, "LIME": beta, ...}``; the panels share the order of the first.

    Args:
        values: ``(F,)`` attributions of one row (tensor or numpy; a leading batch of one
            dropped), or a mapping ``title -> (F,)`` for one panel each.
        names: feature names (``x1, x2, ...`` when ``None``).
        path: where to write a PNG; ``None`` writes nothing.
        title: the figure's title.
        top: show only the ``top`` largest features (by the first panel); ``None``: all.
        sort: order by size (``False``: the given order, first feature on top).
        xlabel: the value axis' label.

    Returns:
        The ``matplotlib.figure.Figure``.

    Example:
        >>> import numpy as np
        >>> fig = features(np.array([0.5, -1.0, 2.0]), names=["age", "bmi", "dose"])
        >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]  # bottom to top: the largest on top
        ['age', 'bmi', 'dose']
    """
    panels, names = _feature_panels(values, names)
    first = next(iter(panels.values()))
    order = np.argsort(-np.abs(first), kind="stable") if sort else np.arange(first.size)
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
            raise expected("top", "None or a positive int", repr(top))
        order = order[:top]
    order = order[::-1]  # barh draws the first bar at the bottom
    f = len(order)
    fig, axes = new_figure(1, len(panels), (0.6 + 3.6 * len(panels), 0.9 + 0.38 * f), sharey=True)
    shown = np.stack([a[order] for a in panels.values()])
    span = max(float(np.abs(shown).max()), 1e-12)  # one scale for every panel: bars compare across them
    lo, hi = min(0.0, float(shown.min())) - 0.3 * span, max(0.0, float(shown.max())) + 0.3 * span
    decimals = max(0, 2 - int(np.floor(np.log10(span))))
    for ax, (sub, a) in zip(axes[0], panels.items()):
        v = a[order]
        ax.barh(np.arange(f), v, color=[RAISES if t >= 0 else LOWERS for t in v], height=0.7)
        ax.axvline(0, color="#444444", lw=0.8)
        ax.set_xlim(lo, hi)
        for y, t in enumerate(v):
            ax.text(t + (0.03 if t >= 0 else -0.03) * span, y, f"{t:+.{decimals}f}", va="center",
                    ha="left" if t >= 0 else "right", fontsize=8, color="#222222")
        ax.set_yticks(np.arange(f), [names[j] for j in order])
        ax.set_xlabel(xlabel)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if sub is not None:
            ax.set_title(str(sub))
    if title is not None:
        fig.suptitle(title)
    return save_png(fig, path)
