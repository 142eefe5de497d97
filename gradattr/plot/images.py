"""Maps over images: :func:`overlay` (one map), :func:`grid` (several maps side by side),
:func:`overlay_array` (the overlay as pixels), and input-resolution gradients drawn as RGB
images (:func:`gradient`, :func:`gradient_rgb`).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import expected
from .canvas import (add_colorbar, check_alpha, colormap, draw_outline, draw_overlay, new_figure,
                     require_matplotlib, save_png)
from .pixels import blend, to_uint8
from .values import as_array, channels_last, image2d, map_like, rescale, squeeze_lead


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
    a = squeeze_lead(as_array(grad, "grad"), 3)
    if a.ndim == 3:
        c = channels_last(a, is_tensor, None)
        if c is None:
            raise expected("grad", "C x H x W or H x W x C with C = 1 or 3, or H x W",
                           f"shape {tuple(np.shape(as_array(grad, 'grad')))}")
        a = c[..., 0] if c.shape[-1] == 1 else c
    if a.ndim != 2 and a.ndim != 3:
        raise expected("grad", "C x H x W or H x W x C with C = 1 or 3, or H x W",
                       f"shape {tuple(np.shape(as_array(grad, 'grad')))}")
    if isinstance(contrast, bool) or not isinstance(contrast, (int, float)) or not contrast > 0:
        raise expected("contrast", "a positive number", repr(contrast))
    std = float(a.std())
    return np.clip((a - a.mean()) / (std if std > 0 else 1.0) * contrast + 0.5, 0.0, 1.0)


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
    require_matplotlib()
    alpha, cmap = check_alpha(alpha), colormap(cmap)
    img = image2d(image)
    raw = map_like(cam, "cam", img.shape[:2])
    m = rescale(raw)
    mask = None if contour is None else map_like(contour, "contour", img.shape[:2])
    if ax is None:
        h, w = img.shape[:2]
        fig, axes = new_figure(1, 1, (4.0 * min(2.5, max(0.6, w / h)) + (0.6 if colorbar else 0), 4.0))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    draw_overlay(ax, img, m, alpha, cmap)
    draw_outline(ax, mask)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, wrap=True)
    if colorbar:
        add_colorbar(fig, ax, cmap, float(raw.min()), float(raw.max()), colorbar_label, shrink=0.8)
    return save_png(fig, path)


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
    require_matplotlib()
    rgb = gradient_rgb(grad, contrast=contrast)
    if ax is None:
        h, w = rgb.shape[:2]
        fig, axes = new_figure(1, 1, (4.0 * min(2.5, max(0.6, w / h)), 4.0))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    ax.imshow(rgb, cmap="gray" if rgb.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, wrap=True)
    return save_png(fig, path)


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
    require_matplotlib()
    alpha, cmap = check_alpha(alpha), colormap(cmap)
    if not isinstance(maps, Mapping) or not maps:
        raise expected("maps", "a non-empty dict {name: map}",
                       "an empty dict" if isinstance(maps, Mapping) else type(maps).__name__)
    img = image2d(image)
    hw = img.shape[:2]
    scaled, raws = _grid_panels(maps, hw)
    panels = ([(input_title, None)] if input_title is not None else []) + list(scaled.items())
    outlines = _grid_outlines(contours, panels, hw)
    bar = colorbar and bool(raws)
    fig, flat, nrows, ncols = _grid_figure(panels, ncols, hw, bar, title)
    for ax, (name, entry) in zip(flat, panels):
        _grid_panel(ax, img, entry, alpha, cmap)
        draw_outline(ax, outlines.get(str(name)))
        ax.set_title(name)
        ax.set_axis_off()
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    if bar:
        _grid_colorbar(fig, flat, raws, cmap, colorbar_label, nrows, ncols)
    if title is not None:
        fig.suptitle(title)
    return save_png(fig, path)


def _grid_panels(maps: Mapping, hw: tuple) -> tuple[dict, list]:
    """``({name: ("rgb" | "heat", picture)}, [raw heat maps])`` of :func:`grid`'s maps."""
    scaled, raws = {}, []
    for k, v in maps.items():
        a = as_array(v, f"maps[{k!r}]")
        rgb = channels_last(a, hasattr(v, "detach"), hw) if squeeze_lead(a, 3).ndim == 3 else None
        if rgb is not None and rgb.shape[-1] == 3:
            scaled[str(k)] = ("rgb", gradient_rgb(rgb))
        else:
            raw = map_like(v if rgb is None else rgb[..., 0], f"maps[{k!r}]", hw)
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
    fig, axes = new_figure(nrows, ncols, (width * ncols + (0.9 if bar else 0),
                                       nrows * (2.9 + 0.3 * lines + 0.15) + (0.1 if title is None else 0.4)))
    return fig, list(axes.ravel()), nrows, ncols


def _grid_outlines(contours, panels: list, hw: tuple) -> dict:
    """:func:`grid`'s ``contours`` checked against the panels' names: ``{name: H x W mask}``."""
    contours = {} if contours is None else contours
    if not isinstance(contours, Mapping) or set(map(str, contours)) - {str(p) for p, _ in panels}:
        raise expected("contours", f"a dict whose keys are panel names {[p for p, _ in panels]}",
                       repr(list(contours)) if isinstance(contours, Mapping) else type(contours).__name__)
    return {str(k): map_like(v, f"contours[{k!r}]", hw) for k, v in contours.items()}


def _grid_panel(ax, img: np.ndarray, entry, alpha: float, cmap) -> None:
    """One panel of :func:`grid`: the plain image (``entry`` None), an RGB gradient, or a heat map over the image."""
    if entry is None:
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    elif entry[0] == "rgb":
        ax.imshow(entry[1], interpolation="nearest")
    else:
        draw_overlay(ax, img, entry[1], alpha, cmap)


def _grid_colorbar(fig, flat, raws: list, cmap, colorbar_label, nrows: int, ncols: int) -> None:
    """One colorbar for :func:`grid`'s heat maps: the map's own values for one, [0, 1] for several."""
    one = len(raws) == 1
    lo, hi = (float(raws[0].min()), float(raws[0].max())) if one else (0.0, 1.0)
    label = colorbar_label if colorbar_label is not None else (
        "map value" if one else "each map rescaled to [0, 1]")
    add_colorbar(fig, flat, cmap, lo, hi, label, shrink=0.8 if nrows == 1 else 0.6, fraction=0.15 / ncols,
              pad=0.05 / ncols)


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
    require_matplotlib()
    alpha, cmap = check_alpha(alpha), colormap(cmap)
    img = image2d(image)
    m = rescale(map_like(cam, "cam", img.shape[:2]))
    return to_uint8(blend(img, m, alpha, cmap))
