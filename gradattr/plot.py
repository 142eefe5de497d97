"""Pictures of maps: images, sequences, volumes and side-by-side comparisons.

matplotlib is an optional dependency (``pip install "gradattr[plot]"``) imported
only when a function here is called. Every function returns the
``matplotlib.figure.Figure`` and writes a PNG when given ``path``. The figure
behaves like any matplotlib figure: when your program uses pyplot (``import
matplotlib.pyplot as plt``, as any script that calls ``plt.show()`` or
``plt.savefig()`` does, and every notebook), the figure is made by pyplot and is
its current figure, so ``plt.savefig("a.png")``, ``plt.show()`` and ``plt.gcf()``
work after the call, exactly as after ``plt.figure()``. A program that never
imports pyplot (the command line, a server) gets figures on the Agg canvas that
pyplot never sees: gradattr itself never imports pyplot, opens no window and
keeps no figure alive.

Pictures as arrays, for saving with any image library or logging to TensorBoard:
:func:`overlay_array` (``H x W x 3`` uint8, pytorch-grad-cam's
``show_cam_on_image``, torch-cam's ``overlay_mask``), :func:`volume_array` (three
orthogonal slices side by side), :func:`sequence_array` and :func:`figure_array`
(any figure rendered to pixels), and :func:`to_pil` (a Pillow image).

Inputs may be torch tensors (any device, with or without grad) or numpy arrays.
An input is min-max scaled for display; a map is rescaled to [0, 1] like
MATLAB's ``rescale`` (a constant map becomes 0) and drawn with ``cmap`` on top of
the input, as MATLAB's ``imshow(X); hold on; imagesc(scoreMap, AlphaData=0.5);
colormap jet`` does, with a colorbar (``colorbar=True``) that reads in the map's
own values where one map is drawn.

Input-resolution gradients ``(C, H, W)`` (guided backprop, Guided Grad-CAM) are
not heat maps: :func:`gradient` draws them as an RGB image, normalised as in the
Grad-CAM paper's figures (:func:`gradient_rgb`), and :func:`grid` does the same
for any ``(3, H, W)`` entry.
"""
from __future__ import annotations

import contextvars
import io
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import GradattrError, expected

__all__ = ["overlay", "sequence", "volume", "grid", "gradient", "gradient_rgb", "rescale",
           "overlay_array", "volume_array", "sequence_array", "figure_array", "to_pil", "features"]


# -- matplotlib, lazily -----------------------------------------------------------------
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


_OFF_PYPLOT = contextvars.ContextVar("gradattr_plot_off_pyplot", default=False)


def _pyplot():
    """pyplot when the program already uses it (imported it), else None: gradattr never imports it."""
    if _OFF_PYPLOT.get():  # a figure made only to be rendered to an array
        return None
    return sys.modules.get("matplotlib.pyplot")


def _figure(nrows: int, ncols: int, figsize, **kw):
    Figure, FigureCanvasAgg = _mpl()
    plt = _pyplot()
    if plt is not None:  # a pyplot figure: plt.savefig/plt.show/plt.gcf see it, as after plt.figure()
        fig = plt.figure(figsize=figsize, dpi=100, layout="constrained")
    else:
        fig = Figure(figsize=figsize, dpi=100, layout="constrained")
        FigureCanvasAgg(fig)  # the Agg canvas: savefig and buffer_rgba work without pyplot
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig, path):
    if path is not None:
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise expected("path", "a file path in an existing folder", f"{path!r} (no folder {parent!r})")
        fig.savefig(path, dpi=fig.dpi)  # PNG pixels = the figure's own pixels (no tight bbox)
    return fig


def _colormap(cmap):
    import matplotlib

    if isinstance(cmap, matplotlib.colors.Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except (KeyError, TypeError, ValueError):
        raise expected("cmap", "a matplotlib colormap or its name such as 'jet'", repr(cmap)) from None


def _alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(alpha) <= 1.0:
        raise expected("alpha", "a number in [0, 1]", repr(alpha))
    return float(alpha)


# -- arrays ---------------------------------------------------------------------------------
def _array(a, argument: str) -> np.ndarray:
    """A tensor (any device, grad or not) or array-like -> finite float64 numpy array."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch.Tensor, without importing torch here
        a = a.detach().cpu().float().numpy()
    elif not isinstance(a, np.ndarray):
        if isinstance(a, (str, bytes)) or not hasattr(a, "__len__") and not hasattr(a, "__array__"):
            raise expected(argument, "a torch.Tensor or a numpy array", type(a).__name__)
        a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise expected(argument, "a real numeric array", f"an array of dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.size == 0:
        raise expected(argument, "a non-empty array", f"shape {a.shape}")
    if not np.isfinite(a).all():
        raise expected(argument, "finite values", f"NaN or Inf in an array of shape {a.shape}")
    return a


def _squeeze_lead(a: np.ndarray, ndim: int) -> np.ndarray:
    """Drop leading singleton dims (a batch of one, one map) down to ``ndim`` dims."""
    while a.ndim > ndim and a.shape[0] == 1:
        a = a[0]
    return a


def rescale(a: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] as MATLAB's ``rescale``; a constant array becomes 0.

    >>> rescale(np.array([2.0, 4.0, 3.0])).tolist()
    [0.0, 1.0, 0.5]
    """
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _image2d(image) -> np.ndarray:
    """HxW, HxWx{1,3}, {1,3}xHxW (or with a leading batch of one) -> HxW or HxWx3 in [0, 1]."""
    is_tensor = hasattr(image, "detach")
    a = _squeeze_lead(_array(image, "image"), 3)
    if a.ndim == 3:
        last, first = a.shape[-1] in (1, 3), a.shape[0] in (1, 3)
        if first and (not last or is_tensor):  # CxHxW: PyTorch's layout, preferred for tensors
            a = np.moveaxis(a, 0, -1)
        elif not last:
            raise expected("image", "H x W, H x W x 3 or 3 x H x W (1 channel also allowed, a "
                           "leading batch of one too)", f"shape {tuple(_array(image, 'image').shape)}")
        if a.shape[-1] == 1:
            a = a[..., 0]
    if a.ndim != 2 and a.ndim != 3:
        raise expected("image", "H x W, H x W x 3 or 3 x H x W (for a C x T sequence use "
                       "gradattr.plot.sequence, for a volume gradattr.plot.volume)",
                       f"shape {tuple(np.shape(_array(image, 'image')))}")
    return rescale(a)


def _map_like(cam, argument: str, shape: tuple[int, ...]) -> np.ndarray:
    m = _squeeze_lead(_array(cam, argument), len(shape))
    if tuple(m.shape) != tuple(shape):
        raise expected(argument, f"a map of the input's size {tuple(shape)} (call the method with "
                       "upsampling='bicubic', or resize with gradattr.imresize)",
                       f"shape {tuple(np.shape(_array(cam, argument)))}")
    return m


def _draw(ax, img01: np.ndarray, cam01: np.ndarray, alpha: float, cmap):
    """imshow(X); hold on; imagesc(map, AlphaData=alpha) on one axes."""
    if img01.ndim == 2:
        ax.imshow(img01, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img01, interpolation="nearest")
    return ax.imshow(cam01, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0, interpolation="nearest")


def _outline(ax, mask):
    """The 0.5 level line of a mask, in white (nothing for an empty or full mask)."""
    if mask is not None and mask.min() < 0.5 < mask.max():
        ax.contour(mask, levels=[0.5], colors="white", linewidths=1.5)


def _colorbar(fig, ax, cmap, lo: float, hi: float, label: str | None, **kw):
    """A colorbar for ``cmap`` spanning ``[lo, hi]`` (the map's own values), next to ``ax``."""
    import matplotlib

    if not hi > lo:  # a constant map is drawn as 0 (rescale): show a unit bar starting at its value
        hi = lo + 1.0
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(lo, hi), cmap=cmap)
    return fig.colorbar(mappable, ax=ax, label=label, **kw)


def _channels_last(a: np.ndarray, is_tensor: bool, shape) -> np.ndarray | None:
    """A ``C x H x W`` or ``H x W x C`` array (C in 1, 3) of spatial size ``shape`` -> ``H x W x C``; else None."""
    a = _squeeze_lead(a, 3)
    if a.ndim != 3:
        return None
    first = a.shape[0] in (1, 3) and (shape is None or tuple(a.shape[1:]) == tuple(shape))
    last = a.shape[-1] in (1, 3) and (shape is None or tuple(a.shape[:2]) == tuple(shape))
    if first and (not last or is_tensor):
        return np.moveaxis(a, 0, -1)
    return a if last else None


def gradient_rgb(grad, *, contrast: float = 0.1) -> np.ndarray:
    """An input-resolution gradient as a displayable image in [0, 1], as the Grad-CAM paper draws it.

    ``(g - mean(g)) / std(g) * contrast + 0.5``, clipped to [0, 1] (the
    normalisation of the Grad-CAM and guided-backprop reference code,
    ``deprocess_image``): zero gradient is mid-grey, each channel's sign and
    size show as colour. One channel comes back ``H x W``, three ``H x W x 3``.

    Args:
        grad: ``3 x H x W`` / ``H x W x 3`` (a tensor is read as ``C x H x W``),
            one channel, or ``H x W``; a leading batch of one is dropped.
        contrast: standard deviations mapped to half the grey range (0.1:
            values beyond 5 standard deviations are clipped).

    >>> gradient_rgb(np.array([[-1.0, 1.0]]), contrast=0.25).tolist()
    [[0.25, 0.75]]
    """
    is_tensor = hasattr(grad, "detach")
    a = _squeeze_lead(_array(grad, "grad"), 3)
    if a.ndim == 3:
        c = _channels_last(a, is_tensor, None)
        if c is None:
            raise expected("grad", "C x H x W or H x W x C with C = 1 or 3, or H x W",
                           f"shape {tuple(np.shape(_array(grad, 'grad')))}")
        a = c[..., 0] if c.shape[-1] == 1 else c
    if a.ndim != 2 and a.ndim != 3:
        raise expected("grad", "C x H x W or H x W x C with C = 1 or 3, or H x W",
                       f"shape {tuple(np.shape(_array(grad, 'grad')))}")
    if isinstance(contrast, bool) or not isinstance(contrast, (int, float)) or not contrast > 0:
        raise expected("contrast", "a positive number", repr(contrast))
    std = float(a.std())
    return np.clip((a - a.mean()) / (std if std > 0 else 1.0) * contrast + 0.5, 0.0, 1.0)


def _volume_and_point(volume, cam, at):
    """(volume rescaled to [0, 1] (channels averaged), the raw D x H x W map, the (d, h, w) point ``at``)."""
    v = _squeeze_lead(_array(volume, "volume"), 4)
    if v.ndim == 4:
        v = v.mean(0)
    if v.ndim != 3:
        raise expected("volume", "D x H x W or C x D x H x W (for images use gradattr.plot.overlay)",
                       f"shape {tuple(np.shape(_array(volume, 'volume')))}")
    v = rescale(v)
    raw = _map_like(cam, "cam", v.shape)
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


# -- public functions ---------------------------------------------------------------------
def overlay(image, cam, alpha: float = 0.5, cmap="jet", path=None, title: str | None = None, *,
            ax=None, colorbar: bool = True, colorbar_label: str | None = "map value", contour=None):
    """A map over its image, as MATLAB's ``imshow(X); hold on; imagesc(map, AlphaData=0.5)``.

    Args:
        image: ``H x W`` (grey), ``H x W x 3`` or ``3 x H x W`` (tensor or numpy; a
            leading batch of one is dropped), min-max scaled for display.
        cam: ``H x W`` map (leading singleton dims dropped), rescaled to [0, 1].
        alpha: opacity of the map.
        cmap: colormap name or object for the map (MATLAB's ``colormap jet``).
        path: where to write a PNG; ``None`` writes nothing.
        title: axes title.
        ax: draw into this matplotlib axes instead of a new figure (the PNG, if
            asked for, is then of that axes' figure).
        colorbar: add a colorbar; it reads in the map's own values (its
            minimum to its maximum: the colours are those of the rescaled map).
        colorbar_label: the colorbar's label.
        contour: an optional ``H x W`` mask (a region, the true object) whose
            outline is drawn in white.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    _mpl()
    alpha, cmap = _alpha(alpha), _colormap(cmap)
    img = _image2d(image)
    raw = _map_like(cam, "cam", img.shape[:2])
    m = rescale(raw)
    mask = None if contour is None else _map_like(contour, "contour", img.shape[:2])
    if ax is None:
        h, w = img.shape[:2]
        fig, axes = _figure(1, 1, (4.0 * min(2.5, max(0.6, w / h)) + (0.6 if colorbar else 0), 4.0))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    _draw(ax, img, m, alpha, cmap)
    _outline(ax, mask)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, wrap=True)
    if colorbar:
        _colorbar(fig, ax, cmap, float(raw.min()), float(raw.max()), colorbar_label, shrink=0.8)
    return _save(fig, path)


def sequence(x, importance, path=None, title: str | None = None, *, channel_names=None,
             ylabel: str = "Grad-CAM importance", shade: bool = True, cmap="jet", legend: bool = True,
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
        ylabel: label of the importance axis.
        shade: tint the sequence axes' background by the (first) rescaled
            importance with ``cmap``, so high-importance steps stand out.
        cmap: colormap of the tint.
        legend: show the channel legend (for at most 20 channels).
        colorbar: with ``shade``, a colorbar of the tint in the (first)
            importance's own values.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    _mpl()
    cmap = _colormap(cmap)
    a, lines, channel_names = _sequence_inputs(x, importance, ylabel, channel_names)
    c, t = a.shape
    fig, axes = _figure(2, 1, (8.0, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top, bottom = axes[0, 0], axes[1, 0]
    steps = np.arange(t)
    colors = _colormap("tab10")
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
    return _save(fig, path)


def _sequence_inputs(x, importance, ylabel: str, channel_names):
    """:func:`sequence`'s arguments checked: ``(x (C, T), {name: (T,) map}, channel names)``."""
    a = _squeeze_lead(_array(x, "x"), 2)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise expected("x", "a C x T sequence (or T, or 1 x C x T)", f"shape {tuple(np.shape(_array(x, 'x')))}")
    c, t = a.shape
    named = importance if isinstance(importance, Mapping) else {ylabel: importance}
    if not named:
        raise expected("importance", "a T map or a non-empty dict of them", "an empty dict")
    lines = {str(k): _map_like(v, "importance", (t,)) for k, v in named.items()}
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
        bar = _colorbar(fig, top, cmap, float(first.min()), float(first.max()),
                        f"{first_name} (tint)", location="left", pad=0.02, aspect=15)
        bar.solids.set_alpha(0.25)


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
    _mpl()
    alpha, cmap = _alpha(alpha), _colormap(cmap)
    v, raw, (d, h, w) = _volume_and_point(volume, cam, at)
    m = rescale(raw)
    mask = None if contour is None else _map_like(contour, "contour", v.shape)
    cut = [(d, slice(None), slice(None)), (slice(None), h, slice(None)), (slice(None), slice(None), w)]
    views = [(c, f"{name} = {i}", labels, p) for c, name, i, labels, p in zip(
        cut, "DHW", (d, h, w), (("W", "H"), ("W", "D"), ("H", "D")), ((w, h), (w, d), (h, d)))]
    fig, axes = _figure(1, 3, (11.0 + (0.8 if colorbar else 0), 4.0))
    for ax, (c, name, (xl, yl), (px, py)) in zip(axes[0], views):
        _draw(ax, v[c], m[c], alpha, cmap)
        _outline(ax, None if mask is None else mask[c])
        ax.plot([px], [py], marker="+", color="white", ms=14, mew=1.5)
        ax.set_title(f"slice {name}")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_xticks([])
        ax.set_yticks([])
    if colorbar:
        _colorbar(fig, list(axes[0]), cmap, float(raw.min()), float(raw.max()), colorbar_label, shrink=0.8)
    if title is not None:
        fig.suptitle(title)
    return _save(fig, path)


def gradient(grad, path=None, title: str | None = None, *, ax=None, contrast: float = 0.1):
    """An input-resolution gradient (guided backprop, Guided Grad-CAM) as an RGB image.

    Drawn as the Grad-CAM paper draws them: each value ``(g - mean) / std * contrast
    + 0.5`` (:func:`gradient_rgb`), so zero is mid-grey and the colours are the
    signs and sizes of the three channels' gradients. No colormap, no colorbar:
    the picture is read for its edges and textures, not its values.

    Args:
        grad: ``3 x H x W`` or ``H x W x 3`` (tensor or numpy, a leading batch of one
            dropped; a tensor is read as ``C x H x W``), or one channel.
        path: where to write a PNG; ``None`` writes nothing.
        title: axes title.
        ax: draw into this matplotlib axes instead of a new figure.
        contrast: as in :func:`gradient_rgb`.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    _mpl()
    rgb = gradient_rgb(grad, contrast=contrast)
    if ax is None:
        h, w = rgb.shape[:2]
        fig, axes = _figure(1, 1, (4.0 * min(2.5, max(0.6, w / h)), 4.0))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    ax.imshow(rgb, cmap="gray" if rgb.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, wrap=True)
    return _save(fig, path)


def grid(image, maps: Mapping, path=None, alpha: float = 0.5, cmap="jet", title: str | None = None, *,
         ncols: int | None = None, input_title: str | None = "input", contours: Mapping | None = None,
         colorbar: bool = True, colorbar_label: str | None = None):
    """Several maps over one image, one panel each titled with its name.

    Each map is rescaled to [0, 1] on its own (as MATLAB's ``rescale`` per map).
    An entry ``3 x H x W`` or ``H x W x 3`` (guided backprop, Guided Grad-CAM: a
    gradient per colour channel) is drawn on its own as an RGB gradient image
    (:func:`gradient_rgb`), not over the photo.

    Args:
        image: ``H x W``, ``H x W x 3`` or ``3 x H x W`` (tensor or numpy).
        maps: ``{name: H x W map}``, e.g. ``{"Grad-CAM": m1, "Grad-CAM++": m2}``
            (or ``{name: 3 x H x W gradient}``).
        path: where to write a PNG; ``None`` writes nothing.
        alpha: opacity of the maps.
        cmap: colormap of the maps.
        title: figure title.
        ncols: panels per row (default: all in one row up to 4).
        input_title: title of a first panel with the plain image; ``None`` leaves
            that panel out.
        contours: ``{name: H x W mask}``: outlines (white) drawn on the panels of
            those names (a name of ``maps``, or ``input_title``).
        colorbar: one colorbar for the heat-map panels. With one heat map it
            reads in that map's own values; with several, each map is rescaled
            on its own, so it reads 0 (the map's minimum) to 1 (its maximum).
        colorbar_label: the colorbar's label (default ``"map value"`` for one
            map, ``"each map rescaled to [0, 1]"`` for several).

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    _mpl()
    alpha, cmap = _alpha(alpha), _colormap(cmap)
    if not isinstance(maps, Mapping) or not maps:
        raise expected("maps", "a non-empty dict {name: map}",
                       "an empty dict" if isinstance(maps, Mapping) else type(maps).__name__)
    img = _image2d(image)
    hw = img.shape[:2]
    scaled, raws = _grid_panels(maps, hw)
    panels = ([(input_title, None)] if input_title is not None else []) + list(scaled.items())
    outlines = _grid_outlines(contours, panels, hw)
    bar = colorbar and bool(raws)
    fig, flat, nrows, ncols = _grid_figure(panels, ncols, hw, bar, title)
    for ax, (name, entry) in zip(flat, panels):
        _grid_panel(ax, img, entry, alpha, cmap)
        _outline(ax, outlines.get(str(name)))
        ax.set_title(name)
        ax.set_axis_off()
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    if bar:
        _grid_colorbar(fig, flat, raws, cmap, colorbar_label, nrows, ncols)
    if title is not None:
        fig.suptitle(title)
    return _save(fig, path)


def _grid_panels(maps: Mapping, hw: tuple) -> tuple[dict, list]:
    """``({name: ("rgb" | "heat", picture)}, [raw heat maps])`` of :func:`grid`'s maps."""
    scaled, raws = {}, []
    for k, v in maps.items():
        a = _array(v, f"maps[{k!r}]")
        rgb = _channels_last(a, hasattr(v, "detach"), hw) if _squeeze_lead(a, 3).ndim == 3 else None
        if rgb is not None and rgb.shape[-1] == 3:
            scaled[str(k)] = ("rgb", gradient_rgb(rgb))
        else:
            raw = _map_like(v if rgb is None else rgb[..., 0], f"maps[{k!r}]", hw)
            raws.append(raw)
            scaled[str(k)] = ("heat", rescale(raw))
    return scaled, raws


def _grid_figure(panels: list, ncols, hw: tuple, bar: bool, title):
    """``(figure, its axes in order, rows, columns)`` for :func:`grid`'s panels, each 2.9 inches high."""
    if ncols is None:
        ncols = min(len(panels), 4)
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise expected("ncols", "a positive int", repr(ncols))
    nrows = -(-len(panels) // ncols)
    h, w = hw
    width = 2.9 * min(2.5, max(0.6, w / h))  # a panel 2.9 inches high (the image's aspect, within limits)
    lines = max(str(name).count("\n") + 1 for name, _ in panels)  # the tallest panel title
    fig, axes = _figure(nrows, ncols, (width * ncols + (0.9 if bar else 0),
                                       nrows * (2.9 + 0.3 * lines + 0.15) + (0.1 if title is None else 0.4)))
    return fig, list(axes.ravel()), nrows, ncols


def _grid_outlines(contours, panels: list, hw: tuple) -> dict:
    """:func:`grid`'s ``contours`` checked against the panels' names: ``{name: H x W mask}``."""
    contours = {} if contours is None else contours
    if not isinstance(contours, Mapping) or set(map(str, contours)) - {str(p) for p, _ in panels}:
        raise expected("contours", f"a dict whose keys are panel names {[p for p, _ in panels]}",
                       repr(list(contours)) if isinstance(contours, Mapping) else type(contours).__name__)
    return {str(k): _map_like(v, f"contours[{k!r}]", hw) for k, v in contours.items()}


def _grid_panel(ax, img: np.ndarray, entry, alpha: float, cmap) -> None:
    """One panel of :func:`grid`: the plain image (``entry`` None), an RGB gradient, or a heat map over the image."""
    if entry is None:
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    elif entry[0] == "rgb":
        ax.imshow(entry[1], interpolation="nearest")
    else:
        _draw(ax, img, entry[1], alpha, cmap)


def _grid_colorbar(fig, flat, raws: list, cmap, colorbar_label, nrows: int, ncols: int) -> None:
    """One colorbar for :func:`grid`'s heat maps: the map's own values for one, [0, 1] for several."""
    one = len(raws) == 1
    lo, hi = (float(raws[0].min()), float(raws[0].max())) if one else (0.0, 1.0)
    label = colorbar_label if colorbar_label is not None else (
        "map value" if one else "each map rescaled to [0, 1]")
    _colorbar(fig, flat, cmap, lo, hi, label, shrink=0.8 if nrows == 1 else 0.6, fraction=0.15 / ncols,
              pad=0.05 / ncols)


# -- pictures as arrays ---------------------------------------------------------------------
def _blend(img01: np.ndarray, cam01: np.ndarray, alpha: float, cmap) -> np.ndarray:
    """``(1 - alpha) * image + alpha * cmap(map)`` in [0, 1], ``H x W x 3`` (a grey image as three equal channels)."""
    rgb = np.repeat(img01[..., None], 3, axis=-1) if img01.ndim == 2 else img01
    heat = np.asarray(cmap(cam01))[..., :3]
    return (1.0 - alpha) * rgb + alpha * heat


def _uint8(a01: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a01 * 255.0), 0, 255).astype(np.uint8)


def overlay_array(image, cam, alpha: float = 0.5, cmap="jet") -> np.ndarray:
    """The overlay as pixels: an ``H x W x 3`` uint8 RGB array, for any image library.

    The same blend :func:`overlay` draws, without axes, title or colorbar:
    ``(1 - alpha) * image + alpha * cmap(rescale(cam))`` per pixel, the image
    min-max scaled (a grey image as three equal channels), then ``round(255 * v)``.
    pytorch-grad-cam's ``show_cam_on_image(img, mask, use_rgb=True,
    image_weight=1 - alpha)`` computes the same blend (with OpenCV's jet table,
    then divided by its maximum); torch-cam's ``overlay_mask`` blends the squared
    mask. Save it with ``to_pil(a).save("cam.png")``, or log it
    (``writer.add_image(tag, a, dataformats="HWC")``).

    Args:
        image: ``H x W``, ``H x W x 3`` or ``3 x H x W`` (tensor or numpy, a leading
            batch of one dropped).
        cam: ``H x W`` map (leading singleton dims dropped), rescaled to [0, 1].
        alpha: opacity of the map.
        cmap: colormap name or object.

    Returns:
        ``numpy.ndarray`` of shape ``(H, W, 3)``, dtype uint8.

    >>> a = overlay_array(np.zeros((2, 3)), np.array([[0.0, 0, 0], [0, 0, 1]]))
    >>> a.shape, a.dtype, a[1, 2].tolist(), a[0, 0].tolist()
    ((2, 3, 3), dtype('uint8'), [64, 0, 0], [0, 0, 64])
    """
    _mpl()
    alpha, cmap = _alpha(alpha), _colormap(cmap)
    img = _image2d(image)
    m = rescale(_map_like(cam, "cam", img.shape[:2]))
    return _uint8(_blend(img, m, alpha, cmap))


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
    _mpl()
    alpha, cmap = _alpha(alpha), _colormap(cmap)
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise expected("gap", "an int >= 0", repr(gap))
    v, raw, (d, h, w) = _volume_and_point(volume, cam, at)
    m = rescale(raw)
    slices = [_blend(v[d], m[d], alpha, cmap), _blend(v[:, h], m[:, h], alpha, cmap),
              _blend(v[:, :, w], m[:, :, w], alpha, cmap)]
    height = max(s.shape[0] for s in slices)
    out = np.zeros((height, sum(s.shape[1] for s in slices) + 2 * gap, 3))
    col = 0
    for s in slices:
        out[: s.shape[0], col: col + s.shape[1]] = s
        col += s.shape[1] + gap
    return _uint8(out)


def figure_array(fig) -> np.ndarray:
    """Any matplotlib figure rendered to an ``H x W x 3`` uint8 RGB array (at the figure's dpi)."""
    _mpl()
    if not hasattr(fig, "savefig"):
        raise expected("fig", "a matplotlib Figure", type(fig).__name__)
    import matplotlib.image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    buf.seek(0)
    rgba = matplotlib.image.imread(buf, format="png")
    return _uint8(rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:]))  # transparent -> white


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
    token = _OFF_PYPLOT.set(True)
    try:
        fig = sequence(x, importance, **options)
    finally:
        _OFF_PYPLOT.reset(token)
    return figure_array(fig)


def to_pil(picture):
    """A Pillow image of an ``H x W x 3`` (or ``H x W``) uint8 array or of a matplotlib figure.

    >>> to_pil(np.zeros((2, 3, 3), np.uint8)).size
    (3, 2)
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise GradattrError("gradattr.plot.to_pil: expected Pillow to be installed (pip install "
                            "pillow), got ImportError: " + str(err)) from None
    if hasattr(picture, "savefig"):
        picture = figure_array(picture)
    a = np.asarray(picture) if isinstance(picture, np.ndarray) else None
    if a is None or a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        got = f"dtype {a.dtype}, shape {a.shape}" if a is not None else type(picture).__name__
        raise expected("picture", "an H x W x 3 uint8 array (overlay_array's) or a matplotlib Figure", got)
    return Image.fromarray(a)


# -- tabular attributions --------------------------------------------------------------------
#: Bar colours of :func:`features`: a feature that raises the score, one that lowers it.
RAISES, LOWERS = "#c0392b", "#2e6fb7"


def _feature_panels(values, names) -> tuple[dict, list[str]]:
    """``values`` (one row, or a mapping title -> row) as ``{title: (F,)}`` and the feature names."""
    rows = dict(values) if isinstance(values, Mapping) else {None: values}
    if not rows:
        raise expected("values", "a row of attributions (F,) or a non-empty mapping of them", "{}")
    panels = {}
    for title, v in rows.items():
        a = _squeeze_lead(_array(v, "values"), 1)
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
    fig, axes = _figure(1, len(panels), (0.6 + 3.6 * len(panels), 0.9 + 0.38 * f), sharey=True)
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
    return _save(fig, path)
