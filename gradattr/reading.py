"""The input's reading, observed: which axis of ``x`` is the batch, how many spatial or time
dims it has, and whether the network takes a channel axis, settled by what the network does
with ``x`` (:func:`observe_reading`), remembered per model and input signature
(:data:`READINGS`). :mod:`gradattr.inputs` turns ``x`` into the internal form by the reading.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

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


def first_in_channels(net: nn.Module) -> int | None:
    """``in_channels`` of the network's first convolution (in module order), or ``None``."""
    for module in net.modules():
        if isinstance(module, (nn.modules.conv._ConvNd,)):
            return int(module.in_channels)
        for _, kinds in _RANKED:
            if isinstance(module, kinds):
                return None  # a pooling/normalisation layer first: the channel count is not known
    return None


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
