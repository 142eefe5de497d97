"""What is drawn, as checked numpy arrays: a tensor or array read as finite float64 values, leading
singleton dims dropped, an image brought to ``H x W`` or ``H x W x 3``, a map checked against its
input's size, and :func:`rescale` (MATLAB's ``rescale``).
"""
from __future__ import annotations

import numpy as np

from ..errors import expected


def as_array(a, argument: str) -> np.ndarray:
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


def squeeze_lead(a: np.ndarray, ndim: int) -> np.ndarray:
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


def image2d(image) -> np.ndarray:
    """HxW, HxWx{1,3}, {1,3}xHxW (or with a leading batch of one) -> HxW or HxWx3 in [0, 1]."""
    is_tensor = hasattr(image, "detach")
    a = squeeze_lead(as_array(image, "image"), 3)
    if a.ndim == 3:
        last, first = a.shape[-1] in (1, 3), a.shape[0] in (1, 3)
        if first and (not last or is_tensor):  # CxHxW: PyTorch's layout, preferred for tensors
            a = np.moveaxis(a, 0, -1)
        elif not last:
            raise expected("image", "H x W, H x W x 3 or 3 x H x W (1 channel also allowed, a "
                           "leading batch of one too)", f"shape {tuple(as_array(image, 'image').shape)}")
        if a.shape[-1] == 1:
            a = a[..., 0]
    if a.ndim != 2 and a.ndim != 3:
        raise expected("image", "H x W, H x W x 3 or 3 x H x W (for a C x T sequence use "
                       "gradattr.plot.sequence, for a volume gradattr.plot.volume)",
                       f"shape {tuple(np.shape(as_array(image, 'image')))}")
    return rescale(a)


def map_like(cam, argument: str, shape: tuple[int, ...]) -> np.ndarray:
    m = squeeze_lead(as_array(cam, argument), len(shape))
    if tuple(m.shape) != tuple(shape):
        raise expected(argument, f"a map of the input's size {tuple(shape)} (call the method with "
                       "upsampling='bicubic', or resize with gradattr.imresize)",
                       f"shape {tuple(np.shape(as_array(cam, argument)))}")
    return m


def channels_last(a: np.ndarray, is_tensor: bool, shape) -> np.ndarray | None:
    """A ``C x H x W`` or ``H x W x C`` array (C in 1, 3) of spatial size ``shape`` -> ``H x W x C``; else None."""
    a = squeeze_lead(a, 3)
    if a.ndim != 3:
        return None
    first = a.shape[0] in (1, 3) and (shape is None or tuple(a.shape[1:]) == tuple(shape))
    last = a.shape[-1] in (1, 3) and (shape is None or tuple(a.shape[:2]) == tuple(shape))
    if first and (not last or is_tensor):
        return np.moveaxis(a, 0, -1)
    return a if last else None
