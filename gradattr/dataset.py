"""Explaining a whole data set: stream maps batch by batch with bounded memory.

:func:`explain_dataset` runs one method on every batch an iterable yields (a
``torch.utils.data.DataLoader``, a generator, a list) and hands each batch's
maps to a callback and/or writes them to numbered ``.npy`` shards, then lets
them go: at any time only the current batch (its input, its maps) is alive, so
a data set of any size runs in the memory of one batch. It reports the number
of samples, the wall time and the throughput in images per second.
"""
from __future__ import annotations

import difflib
import inspect
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import GradattrError, expected

#: The ``target`` value that explains each sample's own label (the ``y`` of ``(x, y)`` batches).
LABEL = "label"

_SHARD = "maps_{:05d}.npy"
_SHARD_RE = re.compile(r"maps_\d{5,}\.npy")
#: Method options that would change what a batch's result looks like; not allowed here.
_REFUSED = {"return_layers": "each shard holds maps only, so return_layers is not supported",
            "x": "x comes from the batches", "net": "net is the first argument"}


@dataclass(frozen=True)
class BatchMaps:
    """What ``on_batch`` receives for one batch.

    Attributes:
        index: the batch's number, 0-based, in iteration order (also the shard number).
        start: the position of the batch's first sample in the whole stream.
        maps: float32 numpy array ``(B, *spatial)`` (or ``(B, K, *spatial)`` for several
            classes per sample), on the CPU. Copy it if you keep it: it is the only
            reference explain_dataset holds, and only until the callback returns.
        labels: the batch's ``y`` (as given) for ``(x, y)`` batches, else ``None``.
        path: the shard written for this batch, or ``None`` without ``out_dir``.
    """

    index: int
    start: int
    maps: np.ndarray
    labels: object
    path: Path | None


@dataclass(frozen=True)
class DatasetReport:
    """The summary :func:`explain_dataset` returns (nothing per sample: it stays small)."""

    method: str
    samples: int
    batches: int
    seconds: float
    out_dir: Path | None

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        where = f", shards in {self.out_dir}" if self.out_dir is not None else ""
        return (f"{self.method}: {self.samples} samples in {self.batches} batches, "
                f"{self.seconds:.2f} s, {self.images_per_second:.1f} images/s{where}")


def explain_dataset(net: torch.nn.Module, batches: Iterable, method: str | Callable = "grad_cam", *,
                    target=None, on_batch: Callable[[BatchMaps], object] | None = None,
                    out_dir: str | Path | None = None, overwrite: bool = False,
                    progress: bool = False, total: int | None = None, **options) -> DatasetReport:
    """Explain every batch of a data set with one CAM method, streaming the maps out.

    For each batch ``x`` (or ``(x, y, ...)``) the maps are computed by
    ``gradattr.attribute(net, x, target=..., method=method, **options)``,
    converted to a float32 numpy array on the CPU, given to ``on_batch`` and/or saved as
    ``out_dir/maps_00000.npy``, ``maps_00001.npy``, ... (one shard per batch,
    numbered in iteration order; ``np.load`` reads one back), and then
    released. Nothing is accumulated, so memory stays that of one batch.

    Args:
        net: the network, as for any gradattr method (left exactly as found).
        batches: any iterable of batches: tensors or numpy arrays ``(B, C, *spatial)``,
            or tuples/lists whose first element is that and whose second is the
            labels ``y`` (what a ``DataLoader`` over a labelled data set yields).
        method: a method name (``"grad_cam"``, ``"score_cam"``, ...) or a callable
            ``f(net, x, target=..., **options)`` returning the maps.
        target: ``None`` (each sample's top class), anything a method accepts as a
            fixed target for every batch (a class index, indices, a callable), or
            ``"label"`` to explain each sample's own label: ``y`` of shape ``(B,)``
            gives one map per sample, ``(B, K)`` gives K.
        on_batch: called with a :class:`BatchMaps` after each batch, in order.
        out_dir: folder for the ``.npy`` shards (created if missing).
        overwrite: allow writing into an ``out_dir`` that already holds shards.
        progress: draw a progress bar with the throughput on stderr.
        total: number of batches, for the bar, when ``batches`` has no ``len``.
        **options: the method's own options (``feature_layer``, ``upsampling``,
            ``device``, ``normalize``, ...), checked before the first batch runs.

    Returns:
        A :class:`DatasetReport` with ``samples``, ``batches``, ``seconds`` and
        ``images_per_second``.

    Example:
        >>> import torch
        >>> from gradattr.dataset import explain_dataset
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 3))
        >>> data = [(torch.randn(5, 2, 16), torch.tensor([0, 1, 2, 0, 1])),
        ...         (torch.randn(3, 2, 16), torch.tensor([2, 2, 0]))]
        >>> shapes = []
        >>> report = explain_dataset(net, data, target="label",
        ...                          on_batch=lambda b: shapes.append(b.maps.shape))
        >>> shapes, report.samples, report.batches
        ([(5, 16), (3, 16)], 8, 2)
    """
    explain, name = _resolve_method(method, options)
    if on_batch is not None and not callable(on_batch):
        raise expected("on_batch", "a callable taking a BatchMaps, or None", type(on_batch).__name__)
    if not isinstance(progress, bool):
        raise expected("progress", "True or False", repr(progress))
    if not isinstance(overwrite, bool):
        raise expected("overwrite", "True or False", repr(overwrite))
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
        raise expected("total", "None or a number of batches >= 0", repr(total))
    if isinstance(batches, (torch.Tensor, np.ndarray)) or not isinstance(batches, Iterable):
        raise expected("batches", "an iterable of batches (a DataLoader, a list, a generator); "
                       "for a single batch pass [x]", type(batches).__name__)
    use_labels = isinstance(target, str) and target == LABEL
    folder = _prepare_out_dir(out_dir, overwrite)
    if total is None and hasattr(batches, "__len__"):
        try:
            total = len(batches)
        except TypeError:  # e.g. a DataLoader over an IterableDataset
            total = None
    bar = _Progress(total) if progress else None

    samples = count = 0
    t0 = time.perf_counter()
    for count, batch in enumerate(batches, 1):
        index = count - 1
        x, y = _split(batch, index)
        b = int(x.shape[0])
        if use_labels:
            maps = _squeeze_k(explain(net, x, _label_target(y, b, index), options), y)
        else:
            maps = explain(net, x, target, options)
        maps = _to_numpy(maps)
        if maps.shape[0] != b:
            raise GradattrError(f"batches: expected the maps of batch {index} to have one row per "
                                f"sample ({b}), got shape {maps.shape}; is x batched (B, C, ...)?")
        path = None
        if folder is not None:
            path = folder / _SHARD.format(index)
            np.save(path, maps)
        if on_batch is not None:
            on_batch(BatchMaps(index=index, start=samples, maps=maps, labels=y, path=path))
        samples += b
        del x, y, batch, maps  # the only references: the next batch starts from nothing
        if bar is not None:
            bar.update(count, samples, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close(count, samples, seconds)
    return DatasetReport(method=name, samples=samples, batches=count, seconds=seconds, out_dir=folder)


# ------------------------------------------------------------------------------ helpers
def _resolve_method(method, options: dict):
    """``method`` -> ``(explain(net, x, target, options) -> maps, name)``; options checked first."""
    for key, why in _REFUSED.items():
        if key in options:
            raise expected(key, "no such option for explain_dataset", f"{key}=... ({why})")
    from . import api

    if callable(method) and not isinstance(method, str):
        fn = method
        _check_options(fn, options, getattr(method, "__name__", "method"))

        def explain(net, x, target, opts):
            return fn(net, x, target=target, **opts)

        return explain, getattr(method, "__name__", type(method).__name__)
    if not isinstance(method, str):
        raise expected("method", "a method name such as 'grad_cam', or a callable", type(method).__name__)
    known = api.list_methods()
    if method not in known:
        close = difflib.get_close_matches(method, known, n=2)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise expected("method", "one of " + ", ".join(map(repr, known)), f"{method!r}{hint}")
    _check_options(getattr(api, method), options, method)

    def explain(net, x, target, opts):
        return api.attribute(net, x, target=target, method=method, **opts)

    return explain, method


def _check_options(fn, options: dict, name: str) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable: let it check its own options
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = {k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    allowed -= {"net", "x", "target"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise expected("options", f"options of {name}: " + ", ".join(sorted(allowed - set(_REFUSED))),
                       ", ".join(map(repr, unknown)))


def _prepare_out_dir(out_dir, overwrite: bool) -> Path | None:
    if out_dir is None:
        return None
    if not isinstance(out_dir, (str, Path)):
        raise expected("out_dir", "None or a folder path (str or pathlib.Path)", type(out_dir).__name__)
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise expected("out_dir", "a folder", f"{str(folder)!r}, which is a file")
    folder.mkdir(parents=True, exist_ok=True)
    old = [p.name for p in folder.iterdir() if _SHARD_RE.fullmatch(p.name)]
    if old and not overwrite:
        raise expected("out_dir", "a folder without shards from an earlier run (or overwrite=True)",
                       f"{str(folder)!r} holding {len(old)} shard(s) such as {sorted(old)[0]!r}")
    return folder


def _split(batch, index: int):
    """A batch -> ``(x, y or None)``."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        x, y = batch, None
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (torch.Tensor, np.ndarray)):
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
    else:
        got = type(batch).__name__ + (f" of {[type(b).__name__ for b in batch][:3]}"
                                      if isinstance(batch, (tuple, list)) else "")
        raise expected("batches", f"batches that are a tensor/array x or a tuple (x, y, ...) "
                       f"(batch {index})", got)
    if x.ndim < 3:
        raise expected("batches", f"batched inputs (B, C, *spatial) (batch {index})",
                       f"shape {tuple(x.shape)}")
    return x, y


def _label_target(y, b: int, index: int):
    if y is None:
        raise expected("target", "'label' only for batches (x, y) that carry labels",
                       f"batch {index} without labels")
    lab = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    if lab.dtype.is_floating_point or lab.dtype == torch.bool or lab.is_complex() \
            or lab.ndim not in (1, 2) or lab.shape[0] != b:
        raise expected("target", f"'label' with integer labels y of shape ({b},) or ({b}, K) "
                       f"(batch {index})", f"y of shape {tuple(lab.shape)} and dtype {lab.dtype}")
    return lab.detach().cpu().reshape(b, -1)


def _squeeze_k(maps, y):
    """One label per sample -> one map per sample: drop the K axis of size 1."""
    return maps[:, 0] if np.ndim(y) == 1 else maps


def _to_numpy(maps) -> np.ndarray:
    if isinstance(maps, torch.Tensor):
        return maps.detach().to("cpu", torch.float32).numpy()
    return np.asarray(maps, dtype=np.float32)


class _Progress:
    """A one-line text bar on stderr (no dependency), redrawn at most ~10 times a second."""

    def __init__(self, total: int | None, stream=None):
        self.total, self.stream, self.last = total, stream or sys.stderr, -1.0

    def line(self, done: int, samples: int, seconds: float) -> str:
        rate = samples / seconds if seconds > 0 else 0.0
        if self.total:
            filled = min(20, 20 * done // self.total)
            head = f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total} batches"
        else:
            head = f"{done} batches"
        return f"\r{head}, {samples} images, {seconds:.1f} s, {rate:.1f} images/s"

    def update(self, done: int, samples: int, seconds: float) -> None:
        if seconds - self.last >= 0.1:
            self.last = seconds
            self.stream.write(self.line(done, samples, seconds))
            self.stream.flush()

    def close(self, done: int, samples: int, seconds: float) -> None:
        self.stream.write(self.line(done, samples, seconds) + "\n")
        self.stream.flush()


__all__ = ["explain_dataset", "BatchMaps", "DatasetReport", "LABEL"]
