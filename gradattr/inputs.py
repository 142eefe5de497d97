"""Reading the user's input: numpy or torch, batched or not, PyTorch or MATLAB layout.

Everything is turned into one internal form, a float tensor ``(N, C, *spatial)``
on the compute device, and a :class:`Layout` that remembers how to give the
maps back in the user's form (same kind, same device, unbatched or not).
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import GradattrError, expected
from .outputs import select
from .targets import tensors_of

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
        if scalar_target:
            maps = maps[:, 0]
        if not self.batched:
            maps = maps[0]
        maps = maps.detach().float()
        if self.numpy:
            return maps.cpu().numpy()
        return maps.to(self.device)


# -- the input's reading, observed --------------------------------------------------------
@dataclass(frozen=True)
class InputReading:
    """How ``x`` as given maps onto the internal ``(N, C, *S)``.

    ``batched``: ``x``'s first axis is the batch (else ``x`` is one sample); ``rank``: the
    number of spatial/time dims; ``channel=False``: the network takes ``x`` without a channel
    axis (one is inserted internally); ``ids``: an integer ``x`` kept as integers (token ids),
    not converted to the network's float dtype.
    """

    batched: bool
    rank: int
    channel: bool = True
    ids: bool = False

    def letters(self) -> str | None:
        """The ``input_format`` that says the same (None when no channel axis is given)."""
        if not self.channel:
            return None
        return ("B" if self.batched else "") + "C" + "S" * self.rank

    def describe(self, shape: tuple) -> str:
        n = f"a batch of {shape[0]}" if self.batched else "one sample"
        if self.rank == 0:
            return f"{n} vector{'s' if self.batched else ''} of {shape[-1]} features"
        return f"{n} with {self.rank} spatial/time dim{'s' * (self.rank > 1)}" + (
            "" if self.channel else " and no channel axis")


class _Readings:
    """Readings observed per model (weakly) and input signature ``(shape, floating)``."""

    def __init__(self):
        self._store: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, net: nn.Module, key) -> InputReading | None:
        try:
            return self._store.get(net, {}).get(key)
        except TypeError:  # an unhashable model
            return None

    def put(self, net: nn.Module, key, reading: InputReading) -> None:
        with self._lock:
            try:
                self._store.setdefault(net, {})[key] = reading
            except TypeError:
                pass


#: The observed readings: the observation costs forward passes on a model's first call with
#: an input signature only.
READINGS = _Readings()


def _rows(y):
    """How many rows (samples) the network's output ``y`` has, or None when it cannot say."""
    if isinstance(y, (list, tuple)) and y and all(isinstance(d, dict) for d in y):
        return len(y)  # detections: one dict per image
    try:
        t = select(y)
    except GradattrError:
        t = None
    if not isinstance(t, torch.Tensor):
        t = next(iter(tensors_of(y)), None)
    return None if t is None or t.ndim == 0 else int(t.shape[0])


class Consumer:
    """The first leaf module that receives ``t`` or a view of it (same storage) in one pass:
    what its first consuming layer reads as channels, time or positions."""

    handles: list  # the forward pre-hooks' handles while the pass runs

    def __init__(self, net: nn.Module, t: torch.Tensor):
        self.net, self.ptr, self.numel = net, t.untyped_storage().data_ptr(), t.numel()
        self.module, self.shape, self.handles = None, None, []
        self.embedding = None  # the first embedding that looks up a tensor of x's shape
        self.fed = tuple(t.shape)
        self.owner = threading.get_ident()

    @torch.compiler.disable  # run eagerly inside a torch.compile'd model (Dynamo must not trace it)
    def hook(self, module, args):
        if threading.get_ident() != self.owner:
            return
        if (self.embedding is None and isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and args
                and isinstance(args[0], torch.Tensor) and tuple(args[0].shape) == self.fed):
            self.embedding = module  # x's values as ids (x.long() is a copy, not a view)
        if self.module is not None:
            return
        for a in args:
            if (isinstance(a, torch.Tensor) and a.numel() == self.numel and a.numel()
                    and a.untyped_storage().data_ptr() == self.ptr):
                self.module, self.shape = module, tuple(a.shape)
                return

    def __enter__(self):
        self.handles = [m.register_forward_pre_hook(self.hook) for m in self.net.modules()
                        if not m._modules]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _refine(reading: InputReading, fed: tuple, consumer: Consumer,
            integer: bool) -> tuple[InputReading | None, str]:
    """The reading as the first consuming layer confirms it: ``(reading, "")``, or ``(None, why)``
    when that layer reads the axes otherwise. ``fed``: the shape the network was given;
    ``integer``: ``x`` was given as integers (ids looked up by an embedding stay integers)."""
    m, v = consumer.module, consumer.shape
    if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and v == fed or m is None and consumer.embedding:
        # ids: every axis a position, no channel axis
        return InputReading(reading.batched, len(fed) - 1, channel=False, ids=integer), ""
    if m is None:
        return reading, ""
    weight = getattr(m, "weight", None)
    if isinstance(m, nn.modules.conv._ConvNd) and isinstance(weight, torch.Tensor):
        r = weight.ndim - 2
        if len(v) != r + 2:
            return None, f"its first layer, a {r}-D {type(m).__name__}, gets {v} as one unbatched sample"
        if v == (fed[0], 1) + fed[1:] and m.in_channels == 1:  # the network adds the channel axis
            return InputReading(reading.batched, r, channel=False), ""
        return reading, ""
    if isinstance(m, nn.Linear) and v == fed and len(fed) > 2:
        return None, (f"its first layer, a Linear, reads the last dimension ({fed[-1]}) as the "
                      "features: channels last")
    return reading, ""


def observe_reading(t: torch.Tensor, net: nn.Module, device: torch.device, dtype: torch.dtype, observe,
                    name: str) -> InputReading:
    """The reading of ``x`` (as given, ``t``) that the network's behaviour confirms.

    Two readings are tried, each by one forward pass without gradients (``observe``): a
    batch (the network gets ``x``) and one sample (it gets ``x[None]``). A reading is kept
    when the pass runs, its output has one row per sample, and the first layer that consumes
    ``x`` (or a view of it) reads its axes that way (:func:`_refine`: a convolution gets a
    batch, an embedding gets ids, a ``Linear`` its features last). One sample is not kept
    when its output is the batch's with a leading 1 (an MLP broadcasts over ``x[None]``: the
    first axis is a batch it keeps apart, not channels). Integer arrays are tried as floats
    (images), then as ids. Each pass gets a private copy of ``x`` on ``device``. None kept,
    or two kept: a :class:`GradattrError` naming ``input_format`` (or, when ``x`` has the
    rank the network's first layers take, the network's own error). Without ``observe``:
    the module-type rule of earlier versions.
    """
    shape = tuple(t.shape)
    if observe is None or t.ndim == 0:
        return _by_module_types(t, net, name, shape)
    tried: list[str] = []
    errors: dict[bool, Exception] = {}
    for kind in [dtype] + ([torch.long] if not t.is_floating_point() else []):
        cast = t.detach().to(device=device, dtype=kind, copy=True)
        kept: list[InputReading] = []
        outs: dict[bool, object] = {}
        for batched in ([True] if t.ndim >= 2 else []) + [False]:
            fed = cast if batched else cast.unsqueeze(0)
            why = _try(InputReading(batched, fed.ndim - 2), fed, net, observe, outs, kept,
                       not t.is_floating_point())
            if why is not None:
                if isinstance(why, Exception):
                    errors.setdefault(batched, why)
                    why = f"{type(why).__name__}: {(str(why).splitlines() or [''])[0][:160]}"
                tried.append(f"as {InputReading(batched, fed.ndim - 2).describe(shape)}: {why}")
        if kept:
            break
    if len(kept) == 1:
        return kept[0]
    if not kept:
        _check_channels_last(t, net, shape, name)
        hinted = presumed_reading(t, net)
        if hinted is not None and hinted.batched in errors and infer_rank(net) == hinted.rank:
            raise errors[hinted.batched]  # x fits the network's first layers: its own error
        raise _unread(net, name, shape, tried)
    both = " and as ".join(r.describe(shape) for r in kept)
    letters = " or ".join(repr(r.letters()) for r in kept if r.letters())
    raise expected("input_format", f"a format that says how x is laid out ({letters}): the network "
                   f"runs x of shape {shape} both as {both}, with one output row per sample",
                   "None")


def _try(reading: InputReading, fed: torch.Tensor, net: nn.Module, observe, outs: dict, kept: list,
         integer: bool):
    """One reading's pass: ``None`` (kept, appended to ``kept``), why not (a str), or the
    exception the network raised on it."""
    consumer = Consumer(net, fed)
    try:
        with consumer:
            y = observe(fed)
    except Exception as err:  # noqa: BLE001 - a reading the network refuses
        if _takes(reading, fed, consumer):
            raise  # its first layer took x so: the network's own error
        return err
    rows = _rows(y)
    if rows is not None and rows != fed.shape[0]:
        return f"an output of {rows} rows for {fed.shape[0]} sample(s)"
    refined, why = _refine(reading, tuple(fed.shape), consumer, integer)
    if refined is None:
        return why
    outs[reading.batched] = y
    if not reading.batched and True in outs and _broadcast(outs[True], y):
        return ("the network keeps x's first axis apart as it keeps samples (its output is the "
                "batch's with a leading 1)")
    kept.append(refined)
    return None


class Unsettled(Exception):
    """The call's first forward pass did not confirm the presumed reading: observe it instead.
    (Not a ``RuntimeError`` nor a ``GradattrError``: nothing on the way may take it for a
    failure of the network.)"""


def presumed_reading(t: torch.Tensor, net: nn.Module) -> InputReading | None:
    """A reading for a float ``x`` that one forward pass can confirm on its own (:func:`confirm`):
    one sample when ``x`` has one dim fewer than the first convolution-like layer takes, else a
    batch. None for integer arrays and vectors (observed by :func:`observe_reading`)."""
    if not t.is_floating_point() or t.ndim < 3:
        return None
    rank = infer_rank(net)
    return InputReading(False, rank) if rank is not None and t.ndim == rank + 1 else InputReading(True, t.ndim - 2)


def _takes(reading: InputReading, fed: torch.Tensor, consumer: Consumer) -> bool:
    """Whether the first consuming layer is a convolution that took ``fed`` itself, batched,
    with the reading's rank and its channel count (a convolution takes no other rank)."""
    m, weight = consumer.module, getattr(consumer.module, "weight", None)
    return (isinstance(m, nn.modules.conv._ConvNd) and isinstance(weight, torch.Tensor)
            and weight.ndim - 2 == reading.rank and consumer.shape == tuple(fed.shape)
            and m.in_channels == fed.shape[1])


def confirm(pending: tuple, fed: torch.Tensor, consumer: Consumer, y, rows: bool = True) -> bool:
    """Whether one pass that fed ``fed`` confirms the presumed reading (and rules the other out):
    one output row per sample, and a first consuming convolution that gets ``fed`` itself,
    batched, with the reading's rank (a convolution takes no other rank, and the other reading
    would give it one dimension more or one less, read as an unbatched sample). Remembered.
    ``rows=False``: a pass that ended before the output (the rows are not checked)."""
    net, key, reading = pending
    ok = _takes(reading, fed, consumer) and (not rows or _rows(y) == fed.shape[0])
    if ok:
        READINGS.put(net, key, reading)
    return ok


def _broadcast(batch_y, one_y) -> bool:
    """Whether ``one_y`` (the output for ``x[None]``) is ``batch_y`` (for ``x``) with a leading 1."""
    a, b = tensors_of(batch_y), tensors_of(one_y)
    if not a or len(a) != len(b):
        return False
    for u, v in zip(a, b):
        if v.ndim != u.ndim + 1 or v.shape[0] != 1 or v.shape[1:] != u.shape:
            return False
        if u.is_floating_point() and not torch.allclose(u, v[0], rtol=1e-4, atol=1e-5, equal_nan=True):
            return False
    return True


def _unread(net: nn.Module, name: str, shape: tuple, tried: list[str]) -> GradattrError:
    """No reading of ``x`` runs: what the network's first ranked layer expects, and why each failed."""
    rank = infer_rank(net)
    want = (f"(N, C, {', '.join('S' * rank)}) or (C, {', '.join('S' * rank)}) for a network whose "
            f"first layers are {rank}-D" if rank else "an input whose layout the network's forward "
            "pass settles (a batch (N, C, *S) or (N, F), or one sample)")
    why = f" (the network was tried {'; '.join(tried)})" if tried else ""
    return expected(name, want + "; pass input_format (e.g. 'SSC' for an H x W x C image, "
                    "'CT' for a C x T sequence, 'BC' for a batch of feature vectors) to say how x "
                    "is laid out", f"shape {shape}{why}")


def _by_module_types(t: torch.Tensor, net: nn.Module, name: str, shape: tuple) -> InputReading:
    """Without a forward pass (an array prepared outside a call, when no call has observed this
    model and shape): the first ranked layer's rank; without one, ``(N, F)`` is a batch of vectors."""
    rank = infer_rank(net)
    if rank is not None and t.ndim in (rank + 1, rank + 2):
        return InputReading(t.ndim == rank + 2, rank)
    if rank is None and t.ndim in (2, 5):
        return InputReading(True, t.ndim - 2)
    raise _unread(net, name, shape, [])


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


def check_flag(name: str, value) -> bool:
    """Refuse anything but a real ``bool`` for an on/off option (``"no"`` is truthy).

    >>> check_flag("normalize", True)
    True
    """
    if not isinstance(value, (bool, np.bool_)):
        raise expected(name, "True or False", repr(value))
    return bool(value)


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


def first_in_channels(net: nn.Module) -> int | None:
    """``in_channels`` of the network's first convolution (in module order), or ``None``."""
    for module in net.modules():
        if isinstance(module, (nn.modules.conv._ConvNd,)):
            return int(module.in_channels)
        for _, kinds in _RANKED:
            if isinstance(module, kinds):
                return None  # a pooling/normalisation layer first: the channel count is not known
    return None


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
    t = given.detach().to(device=device, dtype=given.dtype if reading.ids else dtype, copy=True)
    _check_finite(given, t, name, shape, checks)
    layout = Layout(batched=reading.batched, numpy=as_numpy, device=out_device,
                    spatial=tuple(t.shape[2:]), channel=reading.channel)
    return t, layout


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
        checks.append((t.sum(dtype=torch.float32 if t.element_size() < 4 else None), check))


def _check_channels_last(t: torch.Tensor, net: nn.Module, shape: tuple, name: str) -> None:
    """An ``H x W x C`` (or ``N x H x W x C``) array that no reading runs: say so when its last
    dimension is the first convolution's channel count."""
    in_ch, rank = first_in_channels(net), infer_rank(net)
    if in_ch is None or rank is None or t.ndim not in (rank + 1, rank + 2):
        return
    batched = t.ndim == rank + 2
    c_axis = 1 if batched else 0
    if t.ndim <= c_axis + 1 or t.shape[c_axis] == in_ch or t.shape[-1] != in_ch:
        return
    letters = ("B" if batched else "") + "S" * (t.ndim - c_axis - 1) + "C"
    raise expected(name, f"channels first, {in_ch} channels for the network's first layer, at "
                   f"dimension {c_axis}; x looks channels-last (its last dimension is {in_ch}): pass "
                   f"input_format={letters!r} (MATLAB order) or move the channels first",
                   f"shape {shape}")


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
