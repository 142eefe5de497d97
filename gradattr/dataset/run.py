"""The run: :func:`explain_dataset` and its loop over the batches, with what it hands out
(:class:`BatchMaps` per batch, a :class:`DatasetReport` at the end)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import GradattrError, expected
from ..method_arg import resolve_method
from .batches import batch_rows, examine_batches, first_sample, plan_for_rank, split_batch
from .context import RunContext
from .distributed import join_process_group, unwrap_parallel
from .fingerprint import digest_tree, run_fingerprint
from .progress import ProgressBar
from .shards import Shards

#: The ``target`` value that explains each sample's own label (the ``y`` of ``(x, y)`` batches).
LABEL = "label"

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
        indices: the samples' indices in the data set (their positions in the stream
            unless a map-style ``DataLoader``'s sampler says otherwise).
    """

    index: int
    start: int
    maps: np.ndarray
    labels: object
    path: Path | None
    indices: np.ndarray | None = None


@dataclass(frozen=True)
class DatasetReport:
    """The summary :func:`explain_dataset` returns (nothing per sample: it stays small)."""

    method: str
    samples: int
    batches: int
    seconds: float
    out_dir: Path | None
    skipped: int = 0
    rank: int = 0
    world_size: int = 1
    repaired: int = 0

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        where = f", shards in {self.out_dir}" if self.out_dir is not None else ""
        where += f", {self.skipped} batches already done" if self.skipped else ""
        where += f", {self.repaired} damaged shard(s) computed again" if self.repaired else ""
        who = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        return (f"{who}{self.method}: {self.samples} samples in {self.batches} batches, "
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
    numbered by the batch's place in the whole stream), and then released.
    Nothing is accumulated, so memory stays that of one batch; :func:`load_maps` reads a
    finished ``out_dir`` back as one array. Several inputs, several processes (``torchrun``),
    the output folder and resuming: see the module's documentation (:mod:`gradattr.dataset`).

    Args:
        net: the network, as for any gradattr method (left exactly as found).
        batches: any iterable of batches: tensors or numpy arrays ``(B, C, *spatial)``,
            or tuples/lists whose first element is that (or a tuple of the network's
            inputs) and whose second is the labels ``y`` (what a ``DataLoader`` over a
            labelled data set yields).
        method: a method name (``"grad_cam"``, ``"score_cam"``, ...) or a callable
            ``f(net, x, target, **options)`` returning the maps (``target`` by position).
        target: ``None`` (each sample's top class), anything a method accepts as a
            fixed target for every batch (a class index, indices, a callable), or
            ``"label"`` to explain each sample's own label: ``y`` of shape ``(B,)``
            gives one map per sample, ``(B, K)`` gives K.
        on_batch: called with a :class:`BatchMaps` after each batch this process
            computes, in order (not for batches skipped on resume).
        out_dir: folder for the ``.npy`` shards (created if missing).
        overwrite: discard the files of an earlier run in ``out_dir`` instead of
            resuming it.
        progress: draw a progress bar with the throughput on stderr (rank 0 only).
        total: number of batches, for the bar, when ``batches`` has no ``len``.
        **options: the method's own options (``feature_layer``, ``upsampling``, ``device``,
            ``normalize``, ``explain``, ``forward_kwargs``, ...), checked by the method on the
            first batch, before anything is written. ``explain`` is one index: the maps of
            one input per run (for another input, run again into another ``out_dir``).

    Returns:
        A :class:`DatasetReport` with this process's ``samples``, ``batches``,
        ``seconds``, ``images_per_second``, the ``skipped`` (resumed) batches and the
        ``repaired`` ones (recorded shards found damaged and computed again).

    Example:
        >>> import torch
        >>> from gradattr.dataset import explain_dataset
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> data = [(torch.randn(5, 2, 16), torch.tensor([0, 1, 2, 0, 1])),
        ...         (torch.randn(3, 2, 16), torch.tensor([2, 2, 0]))]
        >>> shapes = []
        >>> report = explain_dataset(net, data, target="label",
        ...                          on_batch=lambda b: shapes.append(b.maps.shape))
        >>> shapes, report.samples, report.batches
        ([(5, 16), (3, 16)], 8, 2)
    """
    return run_explain_dataset(net, batches, method, target, on_batch, out_dir, overwrite, progress, total,
                               options, RunContext())


def run_explain_dataset(net, batches, method, target, on_batch, out_dir, overwrite, progress, total,
                        options: dict, ctx: RunContext) -> DatasetReport:
    """:func:`explain_dataset` with its arguments positional (``options`` a dict) and ``ctx`` saying
    how the caller spells them and what it adds to the run (the command line's fingerprint and files)."""
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
    folder = _check_out_dir(out_dir, ctx)
    net = unwrap_parallel(net)
    rank, world, made_group = join_process_group()
    try:
        return _run(net, batches, explain, name, target, on_batch, folder, overwrite, progress, total,
                    options, rank, world, ctx)
    finally:
        if made_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(net, batches, explain, name, target, on_batch, folder, overwrite, progress, total, options,
         rank, world, ctx: RunContext) -> DatasetReport:
    use_labels = isinstance(target, str) and target == LABEL
    source = examine_batches(batches, world, folder is not None and ctx.describe is None)
    shards = bar = None
    try:
        if folder is not None:
            shards = Shards(folder, rank, world, run_fingerprint(net, name, target, options, source, ctx),
                            overwrite, ctx)
        plan = plan_for_rank(source, rank, world, shards)
        bar = ProgressBar(plan.total if total is None else total) if progress and rank == 0 else None

        samples = count = skipped = 0
        t0 = time.perf_counter()
        for index, start, indices, batch in plan.jobs:
            if batch is None:  # a shard already complete (resume) whose data was not loaded
                skipped += 1
                continue
            x, y = split_batch(batch, index)
            b = batch_rows(x)
            indices = _batch_indices(indices, index, start, b)
            if index % world != rank:
                continue
            first = digest_tree(first_sample(x))[:16] if shards is not None else None
            if shards is not None and shards.done(index, start, b, first):
                skipped += 1
                continue
            if use_labels:
                maps = _squeeze_k(explain(net, x, _label_target(y, b, index), options), y)
            else:
                maps = explain(net, x, target, options)
            maps = _to_numpy(maps)
            if maps.shape[0] != b:
                raise GradattrError(f"batches: expected the maps of batch {index} to have one row per "
                                    f"sample ({b}), got shape {maps.shape}; is x batched (B, C, ...)?")
            path = shards.save(index, start, indices, maps, first) if shards is not None else None
            if on_batch is not None:
                on_batch(BatchMaps(index=index, start=start, maps=maps, labels=y, path=path,
                                   indices=np.asarray(indices)))
            samples += b
            count += 1
            del x, y, batch, maps  # the only references: the next batch starts from nothing
            if bar is not None:
                bar.update(count, samples, time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close(count, samples, seconds)
        if shards is not None:
            shards.finish(plan.batches())
    finally:
        if bar is not None:
            bar.end_line()  # an interrupted run's message then starts on a line of its own
        if shards is not None:
            shards.close()
    return DatasetReport(method=name, samples=samples, batches=count, seconds=seconds, out_dir=folder,
                         skipped=skipped, rank=rank, world_size=world,
                         repaired=shards.repaired if shards is not None else 0)


def _batch_indices(indices, index: int, start: int, b: int):
    """The data-set indices of batch ``index``'s ``b`` samples: its sampler's, else their positions."""
    if indices is None:
        return range(start, start + b)
    if len(indices) != b:
        raise GradattrError(f"batches: expected batch {index} to hold the {len(indices)} samples "
                            f"its sampler chose, got {b}")
    return indices


def _resolve_method(method, options: dict):
    """``method`` -> ``(explain(net, x, target, options) -> maps, name)``.

    A method name and its options are checked against the registry first; a
    callable checks its own options on the first batch, before any shard is written.
    """
    for key, why in _REFUSED.items():
        if key in options:
            raise expected(key, "no such option for explain_dataset", f"{key}=... ({why})")
    if isinstance(options.get("explain"), (list, tuple)):
        raise expected("explain", "one input's index per run (each shard holds one array of maps per "
                       "batch); run explain_dataset once per input, each into its own out_dir",
                       repr(options["explain"]))
    return resolve_method(method, options)  # unknown method or option: an error before any work


def _check_out_dir(out_dir, ctx) -> Path | None:
    if out_dir is None:
        return None
    if not isinstance(out_dir, (str, Path)):
        raise expected(ctx.out_dir, "None or a folder path (str or pathlib.Path)", type(out_dir).__name__)
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise expected(ctx.out_dir, "a folder", f"{str(folder)!r}, which is a file")
    return folder


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


__all__ = ["LABEL", "BatchMaps", "DatasetReport", "explain_dataset", "run_explain_dataset"]
