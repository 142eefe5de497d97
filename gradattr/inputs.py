"""Reading the user's input: numpy or torch, batched or not, PyTorch or MATLAB layout.

Everything is turned into one internal form, a float tensor ``(N, C, *spatial)``
on the compute device, and a :class:`Layout` that remembers how to give the
maps back in the user's form (same kind, same device, unbatched or not).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from .errors import GradattrError, expected
from .reading import READINGS, InputReading, observe_reading, presumed_reading

@dataclass(frozen=True)
class Layout:
    """How the user's input was given, so the output can be given back the same way."""

    batched: bool
    numpy: bool
    device: torch.device
    spatial: tuple[int, ...]
    #: False when the network takes ``x`` without a channel axis (a raw waveform ``(N, L)``,
    #: token ids): the internal form has one channel inserted at dim 1, which the network
    #: never sees (:meth:`to_network`) and per-element attributions do not keep.
    channel: bool = True

    @property
    def rank(self) -> int:
        return len(self.spatial)

    def to_network(self, x: torch.Tensor) -> torch.Tensor:
        """The internal ``(N, C, *S)`` tensor as the network takes it."""
        return x if self.channel else x.select(1, 0)

    def output(self, maps: torch.Tensor, scalar_target: bool):
        """``maps (N, K, *s)`` -> the user's form (drop K for a scalar target, N if unbatched;
        an inserted channel is dropped from per-element attributions ``(N, K, 1, *S)``)."""
        if (not self.channel and maps.ndim == 3 + self.rank and maps.shape[2] == 1
                and tuple(maps.shape[3:]) == self.spatial):
            maps = maps[:, :, 0]
        # one indexing op for the dims dropped; the dtype and the device changed only when they differ
        if scalar_target:  # (``select``: the view ``maps[:, 0]`` makes, without its indexing)
            maps = maps.select(1, 0) if self.batched else maps[0, 0]
        elif not self.batched:
            maps = maps[0]
        if maps.requires_grad:
            maps = maps.detach()
        if maps.dtype != torch.float32:
            maps = maps.float()
        if self.numpy:
            return maps.cpu().numpy()
        return maps if maps.device == self.device else maps.to(self.device)


def _parse_format(fmt: object, ndim: int) -> list[int]:
    """MATLAB dimension letters -> permutation to (N?, C, *spatial)."""
    if not isinstance(fmt, str) or not fmt or set(fmt.upper()) - set("SCBT"):
        raise expected("input_format", "a string of MATLAB dimension letters S, C, B, T such as "
                       "'SSC', 'SSCB', 'SSSC', 'CT', 'TC', 'CBT', 'BC' or 'C'", repr(fmt))
    f = fmt.upper()
    if len(f) != ndim:
        raise expected("input_format", f"one letter per dimension of x ({ndim} letters)",
                       f"{fmt!r} ({len(f)} letters)")
    if f.count("C") != 1 or f.count("B") > 1 or f.count("T") > 1 or ("T" in f and "S" in f):
        raise expected("input_format", "exactly one 'C', at most one 'B', and either 'S' letters "
                       "or one 'T'", repr(fmt))
    order = [f.index("B")] if "B" in f else []
    order.append(f.index("C"))
    order += [i for i, c in enumerate(f) if c in "ST"]
    return order


def check_model(net) -> nn.Module:
    """Refuse what gradattr cannot explain: non-modules and TorchScript modules (no forward hooks).

    Called by :func:`prepare`; the engine may call it first, before resolving layers.
    """
    if isinstance(net, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise expected("net", "an eager torch.nn.Module (gradattr hooks its layers, which TorchScript "
                       "does not allow); pass the Python model the script was made from",
                       f"a TorchScript {type(net).__name__}")
    if not isinstance(net, nn.Module):
        raise expected("net", "a torch.nn.Module", type(net).__name__)
    return net


def check_compute_device(device: torch.device) -> torch.device:
    """Refuse devices that hold no data (``meta``): nothing could be computed there."""
    if isinstance(device, torch.device) and device.type == "meta":
        raise expected("device", "a device that computes ('auto', 'cpu', 'cuda')",
                       "'meta' (a device without data)")
    return device


def _describe(values: torch.Tensor, shape: tuple) -> str:
    nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
    return f"NaN or Inf ({nan} NaN, {inf} Inf of {values.numel()} elements) in an input of shape {shape}"


def prepare(x, net: nn.Module, input_format, device: torch.device, dtype: torch.dtype,
            needs_grad: bool = True, name: str = "x", checks: list | None = None, observe=None,
            pending: list | None = None):
    """Validate ``x`` and return ``(x_internal (N, C, *s), Layout)``. ``x`` itself is never changed.

    ``name`` is the argument named in errors (``"baseline"`` for a metric's baseline).
    ``needs_grad=False`` (metrics: forward passes only) accepts inputs made under
    ``torch.inference_mode()`` and calls made inside it. An empty batch (N = 0) or
    an empty spatial/channel dimension is refused: every function gives the same
    clear error instead of an empty result from some and a torch error from others.
    With a ``checks`` list the NaN/Inf checks are deferred onto it, as
    :func:`gradattr.targets.check_finite` defers a score's (no host synchronisation).

    Without ``input_format`` the batch axis, the rank and the channel axis are observed
    (:func:`observe_reading`; ``observe(t)`` runs the network on ``t`` and returns its output),
    once per model and input signature (:data:`READINGS`). With a ``pending`` list, a reading
    that the call's own first forward pass can confirm (:func:`presumed_reading`) is taken
    without a pass of its own and appended there, for :func:`confirm` to check in that pass.
    """
    check_model(net)
    check_compute_device(device)
    if needs_grad and torch.is_inference_mode_enabled():
        raise GradattrError(f"{name}: gradients are needed, but torch.inference_mode() is active; "
                            "call gradattr outside the inference_mode block")
    t, as_numpy, out_device = _as_tensor(x, name, needs_grad)
    shape = tuple(t.shape)
    reading: InputReading | None  # None only until read (the cache's miss)
    if input_format is not None:
        given, batched = _batch_first(t, input_format, name, shape)
        reading = InputReading(batched, given.ndim - 2)
    else:
        _check_not_empty(shape, name)
        key = (shape, t.is_floating_point())
        reading = READINGS.get(net, key)
        if reading is None and pending is not None:
            reading = presumed_reading(t, net)
            if reading is not None:
                pending.append((net, key, reading))
        if reading is None:
            reading = observe_reading(t, net, device, dtype, observe, name)
            READINGS.put(net, key, reading)
        given = t if reading.batched else t.unsqueeze(0)
        given = given.unsqueeze(1) if not reading.channel else given
    # A private copy: the network may modify its input in place, and x must stay as given.
    want = given.dtype if reading.ids else dtype
    if given.dtype == want and given.device == device:  # what ``to(copy=True)`` makes, in one op
        t = given.detach().clone()
    else:
        t = given.detach().to(device=device, dtype=want, copy=True)
    _check_finite(given, t, name, shape, checks)
    return t, layout_of(reading.batched, as_numpy, out_device, tuple(t.shape[2:]), reading.channel)


@lru_cache(maxsize=256)
def layout_of(batched: bool, numpy: bool, device: torch.device, spatial: tuple, channel: bool) -> Layout:
    """The :class:`Layout` of these values, made once (a frozen value, shared by the calls that
    give their inputs the same way)."""
    return Layout(batched=batched, numpy=numpy, device=device, spatial=spatial, channel=channel)


def _as_tensor(x, name: str, needs_grad: bool) -> tuple[torch.Tensor, bool, torch.device]:
    """``x`` (a tensor or anything numpy reads) as ``(tensor, given as numpy, its device)``."""
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            raise expected(name, "a dense (strided) tensor", f"a tensor with layout {x.layout}; "
                           "pass x.to_dense()")
        if x.device.type == "meta":
            raise expected(name, "a tensor with data", "a tensor on the 'meta' device (shape only)")
        if needs_grad and x.is_inference():
            raise expected(name, "a normal tensor (gradients need autograd)",
                           "a tensor created under torch.inference_mode(); make it outside that "
                           "block, or pass x.clone() called outside it")
        t, as_numpy, out_device = x, False, x.device
    elif isinstance(x, np.ndarray) or (hasattr(x, "__array__") and not isinstance(x, (str, bytes))):
        try:
            arr = np.asarray(x)
        except Exception as err:  # noqa: BLE001 - report what was given
            raise expected(name, "a torch.Tensor or a numpy array", f"{type(x).__name__} that numpy "
                           f"cannot read ({err})") from None
        if arr.dtype.kind not in "biuf":
            raise expected(name, "a numeric array", f"an array of dtype {arr.dtype}")
        if arr.ndim == 0:
            raise expected(name, "an array with channel and spatial/time dimensions", "shape ()")
        t, as_numpy, out_device = torch.from_numpy(np.ascontiguousarray(arr)), True, torch.device("cpu")
    else:
        raise expected(name, "a torch.Tensor or a numpy array", type(x).__name__)
    if t.dtype == torch.bool or t.is_complex():
        raise expected(name, "a real-valued array", f"dtype {t.dtype}")
    return t, as_numpy, out_device


def _batch_first(t: torch.Tensor, input_format, name: str, shape: tuple):
    """``(t as (N, C, *S), batched)`` by the MATLAB letters of ``input_format``."""
    order = _parse_format(input_format, t.ndim)
    batched = "B" in input_format.upper()
    t = t.permute(order)
    if not batched:
        t = t.unsqueeze(0)
    _check_not_empty(tuple(t.shape), name, shape)
    return t, batched


def _check_not_empty(dims: tuple, name: str, shape: tuple | None = None) -> None:
    """An empty batch or an empty channel/spatial dimension, refused (``dims`` batch first when
    the reading is known; as given otherwise, where a leading 0 is read as the batch)."""
    shape = dims if shape is None else shape
    if len(dims) >= 2 and dims[0] == 0:
        raise expected(name, "at least one sample", f"shape {shape} (an empty batch)")
    if 0 in dims:
        raise expected(name, "non-empty channel and spatial/time dimensions", f"shape {shape}")


def _check_finite(given: torch.Tensor, t: torch.Tensor, name: str, shape: tuple, checks: list | None) -> None:
    """NaN or Inf in ``given``, or values its copy ``t`` in the network's dtype cannot hold:
    refused now, or (with a ``checks`` list) when the checks are read."""
    dtype = t.dtype

    def check():
        if given.is_floating_point() and not torch.isfinite(given).all():
            raise expected(name, "finite values", _describe(given, shape))
        if not torch.isfinite(given.to(dtype)).all():  # finite as given, too large for the network's dtype
            big = float(given.detach().abs().max())
            kind = str(dtype).replace("torch.", "")
            raise expected(name, f"values that fit in the network's {kind} (|x| <= {torch.finfo(dtype).max:.4g})",
                           f"a maximum |x| of {big:.4g}, which overflows {kind}")
    if checks is None:
        check()
    else:  # NaN or Inf as given or after the cast makes the sum NaN or Inf
        # (``sum()`` without a dtype argument where none is needed: parsing ``dtype=None`` costs
        # as much as the sum of a small input)
        checks.append((t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum(), check))


def prepare_inputs(x, net: nn.Module, explain, input_format, device: torch.device, dtype: torch.dtype,
                   needs_grad: bool = True, checks: list | None = None, observe=None,
                   pending: list | None = None):
    """``x`` as one input or a tuple of inputs run as ``net(*x)``: ``(x_explained, Layout, inputs)``.

    One tensor (or array) is :func:`prepare`'d as always and ``inputs`` is ``()``.
    A tuple holds every positional input of the network, each with its
    batch dimension first: the input at index ``explain`` is the explained one
    (prepared like a single input, batched; an integer input such as token ids is
    kept as it is, on the device, for methods that attribute at a layer); the
    others are copied to the device unchanged (tensors, numpy arrays) or passed as
    they are (anything else). ``inputs`` holds them all, with ``None`` at ``explain``.
    Nothing given is changed: the network sees private copies.
    """
    if not isinstance(x, tuple):
        if explain not in (0, None):
            raise expected("explain", "0 for a single input x (a tuple x has several inputs)",
                           repr(explain))
        t, layout = prepare(x, net, input_format, device, dtype, needs_grad=needs_grad, checks=checks,
                            observe=observe, pending=pending)
        return t, layout, ()
    if not x:
        raise expected("x", "a tensor, an array, or a non-empty tuple of the network's inputs", "()")
    if not isinstance(explain, int) or isinstance(explain, bool) or not 0 <= explain < len(x):
        raise expected("explain", f"an index of x's {len(x)} inputs (0..{len(x) - 1})", repr(explain))
    if input_format is not None:
        raise expected("input_format", "None with several inputs (each input is given as the "
                       "network takes it, batch first)", repr(input_format))
    item, name = x[explain], f"x[{explain}]"
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(np.ascontiguousarray(item))
    if not isinstance(item, torch.Tensor):
        raise expected(name, "a tensor or a numpy array (the explained input, see explain)",
                       type(item).__name__)
    if item.is_floating_point():
        if item.ndim < 2:
            raise expected(name, "(N, C, *S) or a batch of vectors (N, F), batch first, for the "
                           "explained input", f"shape {tuple(item.shape)}")
        fmt = "BC" + "S" * (item.ndim - 2)  # (N, F): a batch of vectors
        t, layout = prepare(item, net, fmt, device, dtype, needs_grad=needs_grad, name=name, checks=checks)
        layout = Layout(batched=True, numpy=isinstance(x[explain], np.ndarray), device=layout.device,
                        spatial=layout.spatial)
    else:
        if item.dtype == torch.bool or item.is_complex() or item.ndim < 1 or item.shape[0] == 0:
            raise expected(name, "a batch-first tensor of real numbers or integer ids",
                           f"dtype {item.dtype}, shape {tuple(item.shape)}")
        t = item.detach().to(device=device, copy=True)
        layout = Layout(batched=True, numpy=isinstance(x[explain], np.ndarray), device=item.device,
                        spatial=tuple(t.shape[2:]))
    return t, layout, _other_inputs(x, explain, t.shape[0], device)


def _other_inputs(x: tuple, explain: int, n: int, device: torch.device) -> tuple:
    """Private copies on ``device`` of the inputs of ``x`` other than ``explain`` (``None`` there);
    tensors and arrays must be batch first, with ``n`` rows; anything else is passed as given."""
    inputs: list = []
    for i, v in enumerate(x):
        if i == explain:
            inputs.append(None)
            continue
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, torch.Tensor):
            if v.ndim == 0 or v.shape[0] != n:
                raise expected(f"x[{i}]", f"the batch size of x[{explain}] ({n}) as its first dimension "
                               "(every input of a tuple x is batch first)", f"shape {tuple(v.shape)}")
            v = v.detach().to(device=device, copy=True)
        inputs.append(v)
    return tuple(inputs)


def prepare_kwargs(forward_kwargs, device: torch.device) -> dict:
    """Private copies of ``forward_kwargs``' tensors (and arrays) on ``device``; the rest as given."""
    out = {}
    for k, v in (forward_kwargs or {}).items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, torch.Tensor):
            v = v.detach().to(device=device, copy=True)
        out[k] = v
    return out
