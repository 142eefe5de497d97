"""Reading and checking what the metrics are given: integers, numbers, choices, arrays, batches
of maps; and giving results back in the form of the user's maps (a tensor on their device, or
numpy)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import expected


def check_int(value, argument: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise expected(argument, f"an integer >= {low}", repr(value))
    return int(value)


def check_positive(value, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
            math.isfinite(float(value)) and value > 0):
        raise expected(argument, "a finite number > 0", repr(value))
    return float(value)


def check_choice(value, argument: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise expected(argument, " or ".join(repr(a) for a in allowed), repr(value))
    return value.lower()


def as_tensor(a, argument: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach()
    try:
        arr = np.asarray(a)
    except Exception:  # noqa: BLE001 - report what was given
        raise expected(argument, "a tensor or a numpy array", type(a).__name__) from None
    if arr.dtype.kind not in "biuf":
        raise expected(argument, "a numeric or boolean array", f"{type(a).__name__} of dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def as_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def maps_float64(maps) -> tuple[torch.Tensor, bool, torch.device]:
    """A batch of maps ``(N, ...)`` -> float64 tensor, whether it was numpy, its device."""
    if isinstance(maps, torch.Tensor):
        m, as_numpy, dev = maps.detach(), False, maps.device
    else:
        try:
            arr = np.asarray(maps)
        except Exception:  # noqa: BLE001 - report what was given
            raise expected("maps", "a tensor or a numpy array", type(maps).__name__) from None
        if arr.dtype.kind not in "biuf":
            raise expected("maps", "a numeric array", f"dtype {arr.dtype}")
        m, as_numpy, dev = torch.from_numpy(np.ascontiguousarray(arr)), True, torch.device("cpu")
    if m.ndim < 2:
        raise expected("maps", "a batch of maps (N, *spatial) (use maps[None] for a single map)",
                       f"shape {tuple(m.shape)}")
    m = m.double()
    if not torch.isfinite(m).all():
        raise expected("maps", "finite values", "NaN or Inf")
    return m, as_numpy, dev


def give(values, as_numpy: bool, device):
    """``values`` (a tensor or a numpy array) as numpy for numpy maps, else as a tensor on ``device``."""
    if as_numpy:
        return values.cpu().numpy() if isinstance(values, torch.Tensor) else values
    return values.to(device) if isinstance(values, torch.Tensor) else torch.as_tensor(values).to(device)
