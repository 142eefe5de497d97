"""Pictures as pixels: a map blended into its image, ``round(255 * v)`` as uint8, any figure rendered
to an ``H x W x 3`` array (:func:`figure_array`), and a Pillow image of either (:func:`to_pil`).
"""
from __future__ import annotations

import io

import numpy as np

from ..errors import GradattrError, expected
from .canvas import require_matplotlib


def blend(img01: np.ndarray, cam01: np.ndarray, alpha: float, cmap) -> np.ndarray:
    """``(1 - alpha) * image + alpha * cmap(map)`` in [0, 1], ``H x W x 3`` (a grey image as three equal channels)."""
    rgb = np.repeat(img01[..., None], 3, axis=-1) if img01.ndim == 2 else img01
    heat = np.asarray(cmap(cam01))[..., :3]
    return (1.0 - alpha) * rgb + alpha * heat


def to_uint8(a01: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a01 * 255.0), 0, 255).astype(np.uint8)


def figure_array(fig) -> np.ndarray:
    """Any matplotlib figure rendered to an ``H x W x 3`` uint8 RGB array (at the figure's dpi)."""
    require_matplotlib()
    if not hasattr(fig, "savefig"):
        raise expected("fig", "a matplotlib Figure", type(fig).__name__)
    import matplotlib.image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    buf.seek(0)
    rgba = matplotlib.image.imread(buf, format="png")
    return to_uint8(rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:]))  # transparent -> white


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
