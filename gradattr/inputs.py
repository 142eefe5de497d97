"""Reading the user's input: numpy or torch, batched or not, PyTorch or MATLAB layout.

Everything is turned into one internal form, a float tensor ``(N, C, *spatial)``
on the compute device, and a :class:`Layout` that remembers how to give the
maps back in the user's form (same kind, same device, unbatched or not).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import GradattrError, expected

_RANKED = (
    (1, (nn.Conv1d, nn.ConvTranspose1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d,
         nn.AdaptiveMaxPool1d, nn.InstanceNorm1d, nn.LPPool1d, nn.RNNBase)),  # an RNN reads sequences
    (2, (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
         nn.AdaptiveMaxPool2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.LPPool2d)),
    (3, (nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d,
         nn.AdaptiveMaxPool3d, nn.BatchNorm3d, nn.InstanceNorm3d)),
)


def infer_rank(net: nn.Module) -> int | None:
    """Number of spatial/time dims the network expects, read from its first ranked layer.

    >>> infer_rank(nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU()))
    1
    """
    for module in net.modules():
        for rank, kinds in _RANKED:
            if isinstance(module, kinds):
                return rank
    return None


@dataclass(frozen=True)
class Layout:
    """How the user's input was given, so the output can be given back the same way."""

    batched: bool
    numpy: bool
    device: torch.device
    spatial: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.spatial)

    def output(self, maps: torch.Tensor, scalar_target: bool):
        """``maps (N, K, *s)`` -> the user's form (drop K for a scalar target, N if unbatched)."""
        if scalar_target:
            maps = maps[:, 0]
        if not self.batched:
            maps = maps[0]
        maps = maps.detach().float()
        if self.numpy:
            return maps.cpu().numpy()
        return maps.to(self.device)


def _parse_format(fmt: object, ndim: int) -> list[int]:
    """MATLAB dimension letters -> permutation to (N?, C, *spatial)."""
    if not isinstance(fmt, str) or not fmt or set(fmt.upper()) - set("SCBT"):
        raise expected("input_format", "a string of MATLAB dimension letters S, C, B, T such as "
                       "'SSC', 'SSCB', 'SSSC', 'CT', 'TC' or 'CBT'", repr(fmt))
    f = fmt.upper()
    if len(f) != ndim:
        raise expected("input_format", f"one letter per dimension of x ({ndim} letters)",
                       f"{fmt!r} ({len(f)} letters)")
    if f.count("C") != 1 or f.count("B") > 1 or f.count("T") > 1 or ("T" in f and "S" in f):
        raise expected("input_format", "exactly one 'C', at most one 'B', and either 'S' letters "
                       "or one 'T'", repr(fmt))
    if "S" not in f and "T" not in f:
        raise expected("input_format", "at least one spatial ('S') or time ('T') dimension", repr(fmt))
    order = [f.index("B")] if "B" in f else []
    order.append(f.index("C"))
    order += [i for i, c in enumerate(f) if c in "ST"]
    return order


def prepare(x, net: nn.Module, input_format, device: torch.device, dtype: torch.dtype):
    """Validate ``x`` and return ``(x_internal (N, C, *s), Layout)``. ``x`` itself is never changed."""
    if torch.is_inference_mode_enabled():
        raise GradattrError("x: gradients are needed, but torch.inference_mode() is active; "
                            "call gradattr outside the inference_mode block")
    if isinstance(x, torch.Tensor):
        as_numpy, out_device, t = False, x.device, x
        if t.is_inference():
            raise expected("x", "a normal tensor (gradients need autograd)",
                           "a tensor created under torch.inference_mode(); make it outside that "
                           "block, or pass x.clone() called outside it")
    elif isinstance(x, np.ndarray) or (hasattr(x, "__array__") and not isinstance(x, (str, bytes))):
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise expected("x", "a numeric array", f"an array of dtype {arr.dtype}")
        as_numpy, out_device, t = True, torch.device("cpu"), torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise expected("x", "a torch.Tensor or a numpy array", type(x).__name__)
    if t.dtype == torch.bool or t.is_complex():
        raise expected("x", "a real-valued array", f"dtype {t.dtype}")
    shape = tuple(t.shape)

    if input_format is not None:
        order = _parse_format(input_format, t.ndim)
        batched = "B" in input_format.upper()
        t = t.permute(order)
    else:
        rank = infer_rank(net)
        if rank is not None and t.ndim == rank + 2:
            batched = True
        elif rank is not None and t.ndim == rank + 1:
            batched = False
        elif rank is None and t.ndim == 5:
            batched = True
        elif rank is None and t.ndim == 2:
            batched = False
        else:
            want = (f"(N, C, {', '.join('S' * rank)}) or (C, {', '.join('S' * rank)}) for a network whose "
                    f"first layers are {rank}-D" if rank else "an input whose layout can be read from the "
                    "network (it has no Conv/Pool layer to tell the rank)")
            raise expected("x", want + "; pass input_format (e.g. 'SSC' for an H x W x C image, "
                           "'CT' for a C x T sequence) to say how x is laid out", f"shape {shape}")
    if not batched:
        t = t.unsqueeze(0)
    if t.ndim < 3:
        raise expected("x", "at least one spatial or time dimension after (N, C)", f"shape {shape}")
    # A private copy: the network may modify its input in place, and x must stay as given.
    t = t.detach().to(device=device, dtype=dtype, copy=True)
    if not torch.isfinite(t).all():
        raise expected("x", "finite values", f"NaN or Inf in an input of shape {shape}")
    layout = Layout(batched=batched, numpy=as_numpy, device=out_device, spatial=tuple(t.shape[2:]))
    return t, layout
