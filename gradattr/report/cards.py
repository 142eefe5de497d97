"""One card per sample: its pictures written as PNG files (images, volume slices) or drawn as inline
SVG (sequences), with its class, score, probability and metrics.
"""
from __future__ import annotations

import io

import numpy as np

from .. import runfolder as rf


def _png(a: np.ndarray, img: rf.PlainDir, name: str, longer: int | None = None) -> str:
    """Write an ``H x W x 3`` uint8 array as PNG ``name`` in ``img``; return its name relative to the page.

    A smaller picture is enlarged by the whole factor that makes its longer side at
    least ``longer`` (nearest: map cells stay sharp squares); a larger one is reduced
    to ``longer``.
    """
    from PIL import Image

    im = Image.fromarray(a)
    if longer is not None and longer > max(im.size):  # enlarged by a whole factor: every pixel a square
        factor = -(-longer // max(im.size))
        im = im.resize((im.size[0] * factor, im.size[1] * factor), Image.Resampling.NEAREST)
    elif longer is not None and longer < max(im.size):
        scale = longer / max(im.size)
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                       Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    img.write(name, buf.getvalue())
    return f"img/{name}"


def _svg(x: np.ndarray | None, cam: np.ndarray, width: int, height: int) -> str:
    """A sequence (its channels, min-max scaled together) above its importance, as inline SVG."""
    from .. import plot

    t = cam.shape[-1]
    m = plot.rescale(cam.astype(np.float64))
    jet = jet_colors()
    step = width / t
    parts = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" role="img">']
    top = height * 0.62
    for k in range(t):  # the importance as a tinted band behind the lines
        r, g, b = jet[min(255, int(m[k] * 255))]
        parts.append(f'<rect x="{k * step:.2f}" y="0" width="{step + 0.3:.2f}" height="{top:.1f}" '
                     f'fill="rgb({r},{g},{b})" fill-opacity="0.35"/>')
    if x is not None:
        a = plot.rescale(x.reshape(-1, t).astype(np.float64))
        colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
        for c, row in enumerate(a[:6]):
            pts = " ".join(f"{(k + 0.5) * step:.1f},{top - 2 - v * (top - 4):.1f}" for k, v in enumerate(row))
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colours[c]}" stroke-width="1"/>')
    base = height - 2
    pts = " ".join(f"{(k + 0.5) * step:.1f},{base - v * (height - top - 6):.1f}" for k, v in enumerate(m))
    parts.append(f'<polyline points="{(0.5 * step):.1f},{base} {pts} {((t - 0.5) * step):.1f},{base}" '
                 'fill="#d62728" fill-opacity="0.3" stroke="#d62728" stroke-width="1"/>')
    parts.append("</svg>")
    return "".join(parts)


def jet_colors() -> list[tuple[int, ...]]:
    import matplotlib

    lut = matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3]
    return [tuple(int(round(255 * v)) for v in rgb) for rgb in lut]


def make_card(i: int, cam: np.ndarray, x, rank: int, info: dict, names, img: rf.PlainDir, thumb: int,
          name: str) -> dict:
    from .. import plot

    cam = np.asarray(cam, dtype=np.float64)
    card = {"index": i, "name": name, "min": float(cam.min()), "max": float(cam.max()),
            "metrics": {k: float(v) for k, v in (info.get("metrics") or {}).items()}}
    for key in ("class", "label"):
        if info.get(key) is not None:
            card[key] = int(info[key]) if isinstance(info[key], (int, np.integer)) or str(info[key]).isdigit() \
                else info[key]
    for key in ("score", "probability"):
        if info.get(key) is not None:
            card[key] = float(info[key])
    c = card.get("class")
    card["class_name"] = (names[c] if names and isinstance(c, int) and 0 <= c < len(names)
                          else "" if c is None else str(c))
    if rank == 1:
        card["svg"] = _svg(x, cam, 240, 90)
        card["svg_full"] = _svg(x, cam, 900, 320)
        return card
    if rank == 2:
        under = x if x is not None else np.zeros(cam.shape)
        if x is not None:
            card["input"] = _png(plot.overlay_array(under, cam, alpha=0.0), img, f"{i}_input.png", thumb)
        alpha = 0.5 if x is not None else 1.0
        full = plot.overlay_array(under, cam, alpha=alpha)
        card["overlay"] = _png(full, img, f"{i}_overlay.png", thumb)
        card["full"] = _png(full, img, f"{i}_full.png", max(512, max(cam.shape)))
        return card
    under = x if x is not None else np.zeros(cam.shape)
    alpha = 0.5 if x is not None else 1.0
    full = plot.volume_array(under, cam, alpha=alpha)
    if x is not None:
        card["input"] = _png(plot.volume_array(under, cam, alpha=0.0), img, f"{i}_input.png", 2 * thumb)
    card["overlay"] = _png(full, img, f"{i}_overlay.png", 2 * thumb)
    card["full"] = _png(full, img, f"{i}_full.png", max(900, full.shape[1]))
    return card
