"""Explaining a whole data set: stream maps batch by batch with bounded memory.

:func:`explain_dataset` runs one method on every batch an iterable yields (a
``torch.utils.data.DataLoader``, a generator, a list) and hands each batch's
maps to a callback and/or writes them to numbered ``.npy`` shards, then lets
them go: at any time only the current batch (its input, its maps) is alive, so
a data set of any size runs in the memory of one batch. It reports the number
of samples, the wall time and the throughput in images per second.

Under ``torch.distributed`` (``torchrun``) every rank explains its share of the
batches and writes its own shards; :func:`load_maps` reads any finished output
folder back in data-set order, and re-running into the same folder resumes.
``gradattr explain-dataset`` (:mod:`gradattr.cli.explain_dataset`) is the command line.

What :func:`explain_dataset` does in more detail:

Several inputs: the first element of a batch may be a tuple or list of the network's
inputs, each batch first, run as ``net(*x)`` (a ``DataLoader`` over items
``((image, question_ids), label)`` yields ``[[images, ids], labels]``); a
batch without labels is then ``((image, question_ids),)``, since a bare
``(image, ids)`` reads as ``(x, y)``. The maps explain the input
``explain=`` names (an option, default 0), one array per batch as for one
input; keyword inputs the same for every batch go in ``forward_kwargs=``
(batched tensors in it must match every batch's size); a dict inside a
batch is refused.

Several processes: under an initialised ``torch.distributed`` process group
(or ``torchrun``'s environment, for which a gloo (CPU) or nccl (GPU) group is
made and released here), each rank explains its share and each sample is
explained once. A ``DataLoader`` over a map-style data set (``shuffle=False``)
is split by batch like ``DistributedSampler`` without its padding: rank ``r``
loads and explains batches ``r, r + W, r + 2W, ...`` only. Any other iterable is
read by every rank and split by batch index the same way. Each rank writes its
own shards and ``manifest-rankNNN.jsonl`` (shard -> sample indices, size, sha256);
after a barrier rank 0 writes ``index.json``. No maps pass between processes. A
``DistributedDataParallel`` model is explained through its ``.module``.

The folder: ``out_dir`` must be new, empty, or made by an earlier run (it holds
gradattr's marker ``.gradattr-run.json``); a folder holding anything else is
refused, ``overwrite=True`` included. Each rank holds an exclusive lock
(``fcntl.flock`` on ``.gradattr-lock-rankNNN``) for the whole run, so a second
run into the same folder is refused while the first is alive.

Resume: a shard is written under a unique temporary name, renamed when complete
and then recorded in the manifest with its size and sha256, so re-running into
the same ``out_dir`` skips the recorded shards that are still intact and computes
the rest (a shard that is missing, truncated or altered is computed again). The
run's fingerprint, kept in the marker, must be the same: the model's class and a
sha256 of its parameters and buffers, the method, ``target``, every option, and
the data: for a map-style ``DataLoader`` the data set's class (and its
``transform``'s repr), its length, the batch size, the order of the samples and a
hash of three samples (the first, middle and last, as the data set returns them);
for any other iterable its type, its length when it has one and a hash of the
first batch, and each batch's first sample is checked again when it is read.
Code is not hashed: a callable (a ``transform``, a ``collate_fn``, a method or an
option) is known by its qualified name, and what it does only through the sample
hashes. A run that differs is refused with what differs; ``overwrite=True``
deletes the files the earlier run wrote (only those) and starts again.
"""
from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import runfolder as rf
from .errors import GradattrError, expected

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
            ``f(net, x, target=..., **options)`` returning the maps.
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


@dataclass(frozen=True)
class RunContext:
    """How the caller spells things, and what the command line adds to a run (nothing for the API).

    :func:`explain_dataset` runs with the defaults; ``gradattr explain-dataset``
    (:mod:`gradattr.cli.explain_dataset`) passes ``RunContext(**CLI_WORDING, ...)`` with its own
    fingerprint (``describe``), accounts of differences (``details``) and files (``extra``).
    """

    out_dir: str = "out_dir"
    overwrite: str = "overwrite=True"
    #: the fingerprint entries that replace the method/target/options/data entries (the CLI's arguments)
    describe: dict | None = None
    #: label -> f(folder, old value, new value) -> a clearer account of what differs
    details: dict | None = None
    #: extra files rank 0 writes into the folder (name -> bytes), recorded in the marker
    extra: dict | None = None
    none: str = "None"  # how a missing value is shown in a difference


#: :class:`RunContext`'s spellings for the command line (its arguments instead of the API's keywords).
CLI_WORDING = dict(out_dir="--out-dir", overwrite="--overwrite", none="(not given)")


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
    net = _unwrap(net)
    rank, world, made_group = _distributed()
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
    source = _source(batches, world, folder is not None and ctx.describe is None)
    shards = None
    try:
        if folder is not None:
            shards = _Shards(folder, rank, world, _fingerprint(net, name, target, options, source, ctx),
                             overwrite, ctx)
        plan = _plan(source, rank, world, shards)
        if total is None:
            total = plan.total
        bar = _Progress(total) if progress and rank == 0 else None

        samples = count = skipped = 0
        t0 = time.perf_counter()
        for index, start, indices, batch in plan.jobs:
            if batch is None:  # a shard already complete (resume) whose data was not loaded
                skipped += 1
                continue
            x, y = _split(batch, index)
            b = _rows(x)
            indices = _batch_indices(indices, index, start, b)
            if index % world != rank:
                continue
            first = _digest_tree(_first(x))[:16] if shards is not None else None
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
        if shards is not None:
            shards.close()
    return DatasetReport(method=name, samples=samples, batches=count, seconds=seconds, out_dir=folder,
                         skipped=skipped, rank=rank, world_size=world,
                         repaired=shards.repaired if shards is not None else 0)


def _fingerprint(net, name: str, target, options: dict, source, ctx: RunContext) -> dict[str, object]:
    """What a run's maps depend on: the model's digest and the method, target, options and data
    (or, from the command line, its own account of its arguments)."""
    fingerprint: dict[str, object] = {"model": _model_digest(net)}
    if ctx.describe is not None:
        fingerprint.update(ctx.describe)
    else:
        fingerprint.update(method=name, target=_stable(target, net))
        for k, v in sorted(options.items()):
            fingerprint[k if k not in fingerprint else f"option {k}"] = _stable(v, net)
        fingerprint.update(source.description)
    return fingerprint


def _batch_indices(indices, index: int, start: int, b: int):
    """The data-set indices of batch ``index``'s ``b`` samples: its sampler's, else their positions."""
    if indices is None:
        return range(start, start + b)
    if len(indices) != b:
        raise GradattrError(f"batches: expected batch {index} to hold the {len(indices)} samples "
                            f"its sampler chose, got {b}")
    return indices


def load_maps(out_dir: str | Path, *, return_indices: bool = False):
    """The maps a finished :func:`explain_dataset` run wrote, as one array in dataset order.

    Works for single-process and multi-process output alike: the shards of every
    rank are read through ``index.json`` and their rows placed by sample index.
    Only plain files inside ``out_dir`` that the index names as shards
    (``maps_NNNNN.npy``) are read, never through a symbolic link; each must have the
    size and sha256 the index records, and the counts must agree (shards numbered
    0..K-1, each with the rows and map shape recorded, every sample once).
    Anything else is refused with the file's name.

    Args:
        out_dir: the ``out_dir`` given to :func:`explain_dataset`.
        return_indices: also return the sorted sample indices (``0..N-1`` unless a
            sampler chose a subset of the data set).

    Returns:
        float32 array ``(N, *map_shape)`` (and the indices ``(N,)`` if asked).

    Example:
        >>> import tempfile, torch, gradattr
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten())
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = gradattr.explain_dataset(net, [torch.randn(3, 1, 8), torch.randn(2, 1, 8)], out_dir=d)
        ...     gradattr.load_maps(d).shape
        (5, 8)
    """
    if not isinstance(out_dir, (str, Path)):
        raise expected("out_dir", "a folder path (str or pathlib.Path)", type(out_dir).__name__)
    folder = Path(out_dir)
    index_file = folder / rf.INDEX
    if not (index_file.is_file() or index_file.is_symlink()):
        why = "not a folder" if not folder.is_dir() else (
            "an unfinished run: re-run explain_dataset with the same out_dir to finish it"
            if rf.read_manifests(folder) else "no shards")
        raise expected("out_dir", f"a folder written by explain_dataset, with its {rf.INDEX}",
                       f"{str(folder)!r} ({why})")
    index = rf.read_json(index_file)
    records, map_shape = _check_index(index, folder)
    all_idx = np.concatenate([_record_indices(r) for r in records]) if records else np.zeros(0, np.int64)
    order = np.sort(all_idx)
    out = None
    for r in records:
        maps = _read_shard(folder, r)
        if map_shape is not None and tuple(maps.shape[1:]) != map_shape:
            raise GradattrError(f"out_dir: expected {r['file']} to hold maps of shape {map_shape} as "
                                f"{rf.INDEX} says, got {tuple(maps.shape[1:])}")
        if out is None:
            out = np.empty((len(order), *maps.shape[1:]), dtype=np.float32)
        elif maps.shape[1:] != out.shape[1:]:
            raise GradattrError(f"out_dir: expected shards of one map shape {out.shape[1:]}, got "
                                f"{maps.shape[1:]} in {r['file']}")
        out[np.searchsorted(order, _record_indices(r))] = maps
    if out is None:
        out = np.zeros((0,), dtype=np.float32)
    return (out, order) if return_indices else out


def _check_index(index, folder: Path) -> tuple[list[dict], tuple | None]:
    """The index's shard records, each checked, and the map shape it states (format 2), or an error."""
    def bad(why: str) -> GradattrError:
        return GradattrError(f"out_dir: expected an {rf.INDEX} written by explain_dataset, got {why} in "
                             f"{str(folder)!r} (a damaged or edited folder)")

    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise bad("no list of shards")
    fmt = index.get("gradattr_run", 1)
    if fmt not in (1, rf.FORMAT):
        raise bad(f"folder format {fmt!r} (this gradattr reads 1 and {rf.FORMAT})")
    records = [rf.check_record(r, rf.INDEX) for r in index["shards"]]
    numbers = [r["shard"] for r in records]
    if numbers != list(range(len(records))):
        dup = sorted({n for n in numbers if numbers.count(n) > 1})
        raise bad(f"shards {dup[:5]} recorded twice" if dup else
                  f"shard numbers {numbers[:8]}{'...' if len(numbers) > 8 else ''} instead of 0..{len(numbers) - 1}")
    start = 0
    for r in records:
        if r["start"] != start:
            raise bad(f"shard {r['shard']} starting at sample {r['start']} where the shards before it end "
                      f"at {start}")
        start += r["rows"]
    samples = index.get("samples")
    if samples != start:
        raise bad(f"samples={samples!r} where the shards hold {start} rows")
    idx = np.concatenate([_record_indices(r) for r in records]) if records else np.zeros(0, np.int64)
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise bad(f"samples {uniq[counts > 1][:5].tolist()} recorded in several shards")
    map_shape = None
    if fmt == rf.FORMAT:
        if any("sha256" not in r for r in records):
            raise bad("a shard without its size and sha256")
        ms = index.get("map_shape")
        if not (isinstance(ms, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                             for v in ms)):
            raise bad(f"map_shape={ms!r}")
        map_shape = tuple(ms)
    return records, map_shape


def _read_shard(folder: Path, rec: dict) -> np.ndarray:
    """One shard, read from a plain file inside ``folder`` and checked against its record."""
    name = rec["file"]
    try:
        data = rf.read_plain(folder / name)
    except FileNotFoundError:
        raise GradattrError(f"out_dir: expected the shard {name} that {rf.INDEX} records, got no such file "
                            f"in {str(folder)!r}") from None
    if "sha256" in rec and (len(data), hashlib.sha256(data).hexdigest()) != (rec["size"], rec["sha256"]):
        raise GradattrError(f"out_dir: expected {name} of {rec['size']} bytes with the sha256 {rf.INDEX} "
                            f"records, got {len(data)} bytes{' with another sha256' if len(data) == rec['size'] else ''}"
                            f" (a damaged shard: re-run explain_dataset into {str(folder)!r} to compute it again)")
    try:
        maps = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise GradattrError(f"out_dir: expected {name} to be a .npy array, got a damaged file ({err}); "
                            f"re-run explain_dataset into {str(folder)!r} to compute it again") from None
    if not isinstance(maps, np.ndarray) or maps.dtype != np.float32 or maps.ndim < 1 \
            or maps.shape[0] != rec["rows"]:
        raise GradattrError(f"out_dir: expected {name} to hold {rec['rows']} float32 maps as {rf.INDEX} "
                            f"records, got shape {getattr(maps, 'shape', '?')} and dtype {getattr(maps, 'dtype', '?')}")
    return maps


# ------------------------------------------------------------------------------ helpers
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
    from . import api

    if callable(method) and not isinstance(method, str):
        fn = method

        def explain(net, x, target, opts):
            return fn(net, x, target=target, **opts)

        return explain, getattr(method, "__name__", type(method).__name__)
    if not isinstance(method, str):
        raise expected("method", "a method name such as 'grad_cam', or a callable", type(method).__name__)
    from . import registry

    registry.get(method).validate(options)  # unknown method or option: an error before any work

    def explain(net, x, target, opts):
        return api.attribute(net, x, target=target, method=method, **opts)

    return explain, method


def _check_out_dir(out_dir, ctx) -> Path | None:
    if out_dir is None:
        return None
    if not isinstance(out_dir, (str, Path)):
        raise expected(ctx.out_dir, "None or a folder path (str or pathlib.Path)", type(out_dir).__name__)
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise expected(ctx.out_dir, "a folder", f"{str(folder)!r}, which is a file")
    return folder


def _unwrap(net):
    """A ``DistributedDataParallel`` (or ``DataParallel``) model -> the module it wraps.

    Explaining the wrapper would run its forward hooks and, in training mode, the
    gradient all-reduce of every backward; the wrapped module needs neither.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    return net.module if isinstance(net, (DistributedDataParallel, DataParallel)) else net


def _distributed() -> tuple[int, int, bool]:
    """``(rank, world_size, made_group)``; a group is made from torchrun's environment if none exists."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()




def _agree(world: int, err: BaseException | None, out_dir: str = "out_dir") -> None:
    """Every rank raises if any rank failed (an all-reduce, so it is also a barrier); one process raises ``err``."""
    if world > 1:
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        failed = torch.zeros(world, dtype=torch.int32, device=device)
        failed[dist.get_rank()] = int(err is not None)
        dist.all_reduce(failed)
        ranks = failed.nonzero().flatten().tolist()
        if err is None and ranks:
            raise GradattrError(f"{out_dir}: rank(s) {ranks} refused the folder (their error says why); "
                                "this rank stopped with them")
    if err is not None:
        raise err


def _stable(value, net=None) -> object:
    """A JSON-able description of an option that is the same from one run to the next.

    Numbers, strings, lists and dicts are themselves; tensors and arrays are their shape and a
    sha256 of their bytes; a submodule of ``net`` is its name there; any other callable is its
    qualified name (its code is not hashed), a ``functools.partial`` that and its arguments.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_stable(v, net) for v in value]
    if isinstance(value, dict):
        return {str(k): _stable(v, net) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"array{tuple(value.shape)}:{_digest_tree(value)[:16]}"
    if isinstance(value, torch.nn.Module):
        names = [n for n, m in net.named_modules() if m is value] if net is not None else []
        return f"layer {names[0]!r}" if names else f"module {_qualname(value)} {_model_digest(value)}"
    if isinstance(value, functools.partial):
        return {"partial": _stable(value.func, net), "args": _stable(list(value.args), net),
                "keywords": _stable(value.keywords, net)}
    if callable(value):
        return f"callable {_qualname(value)}"
    return f"{type(value).__name__}:{value!s}"


def _qualname(obj) -> str:
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(obj).__name__)}"


def _tensor_bytes(t) -> bytes:
    if isinstance(t, torch.Tensor):
        t = t.detach()
        try:
            return t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        except (RuntimeError, TypeError):  # a dtype numpy cannot view (quantized, ...): its values
            return repr(t.cpu().tolist()).encode()
    return np.ascontiguousarray(t).tobytes()


def _digest_tree(obj, h=None) -> str:
    """sha256 (hex) of the tensors, arrays, numbers and strings in a (nested) sample, with their
    shapes and dtypes; any other object counts by its type only."""
    top = h is None
    h = hashlib.sha256() if top else h
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        h.update(f"{type(obj).__name__}{tuple(obj.shape)}{obj.dtype};".encode())
        h.update(_tensor_bytes(obj))
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}[{len(obj)}](".encode())
        for v in obj:
            _digest_tree(v, h)
        h.update(b")")
    elif isinstance(obj, dict):
        h.update(f"dict[{len(obj)}](".encode())
        for k in sorted(obj, key=str):
            h.update(f"{k!s}=".encode())
            _digest_tree(obj[k], h)
        h.update(b")")
    else:
        h.update(f"<{_qualname(obj)}>;".encode())
    return h.hexdigest() if top else ""


def _model_digest(net) -> str:
    """The model's class and a sha256 of every parameter and buffer (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for kind, items in (("p", net.named_parameters(remove_duplicate=False)),
                        ("b", net.named_buffers(remove_duplicate=False))):
        for key, t in items:
            h.update(f"{kind}:{key}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(_tensor_bytes(t))
    return f"{_qualname(net)}, weights sha256 {h.hexdigest()[:16]}"


def _show(value, none: str) -> str:
    if value is None:
        return none
    if none != "None" and isinstance(value, (str, int, float)):  # the command line: as typed
        return str(value)
    return repr(value) if isinstance(value, (str, bool, int, float)) else json.dumps(value)


#: what a difference may mean where it is not plain
_NOTES = {"samples": "the first, middle and last samples as the data set returns them: one whose samples change "
                     "from one read to the next (random augmentation) cannot be resumed",
          "sample order": "a shuffling DataLoader resumes only with the same seed"}


def _differences(old: dict, new: dict, folder: Path, ctx: RunContext) -> list[str]:
    out = []
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key) != new.get(key):
            detail = (ctx.details or {}).get(key)
            text = detail(folder, old.get(key), new.get(key)) if detail is not None else None
            text = text or f"{_show(old.get(key), ctx.none)} -> {_show(new.get(key), ctx.none)}"
            out.append(f"{key}: {text}" + (f" ({_NOTES[key]})" if key in _NOTES else ""))
    return out


class _Shards:
    """One rank's writer: the folder's checks and lock, atomic shards, the manifest, the marker and the index."""

    def __init__(self, folder: Path, rank: int, world: int, fingerprint: dict, overwrite: bool, ctx: RunContext):
        self.folder, self.rank, self.world, self.ctx = folder, rank, world, ctx
        self.lock: rf.Lock | None = None
        self.repaired = 0
        self.chosen: dict[int, dict] = {}
        try:
            self.records = self._open(folder, rank, fingerprint, overwrite, ctx)
        except BaseException:
            self.close()  # a lock is never left held by an object nobody holds
            raise

    def _open(self, folder, rank, fingerprint, overwrite, ctx) -> dict:
        err = None
        try:
            self._marker(folder)  # read only: a folder that is not gradattr's is refused untouched
            folder.mkdir(parents=True, exist_ok=True)
            self.lock = rf.Lock(folder, rank, ctx.out_dir)
        except (GradattrError, OSError) as e:
            err = e
        self._agree(err)
        fresh = overwrite
        try:
            marker = self._marker(folder)  # again, now that no other run can change the folder
            records = rf.read_manifests(folder)
            old = marker.get("fingerprint") if marker is not None else None
            if old is not None and old != fingerprint and not overwrite:
                if records:
                    diffs = _differences(old, fingerprint, folder, ctx)
                    raise GradattrError(
                        f"{ctx.out_dir}: expected the folder of the same run to resume it, or "
                        f"{ctx.overwrite} to start again, got {str(folder)!r}, written by a run that differs "
                        f"in {'; '.join(diffs)}")
                fresh = True  # nothing computed yet: nothing to keep
        except (GradattrError, OSError) as e:
            err = e
        self._agree(err)
        try:
            if rank == 0:
                self._clean(marker, records, fresh)
                files = sorted(ctx.extra or {})
                rf.write_atomic(folder / rf.MARKER, json.dumps(
                    {"gradattr_run": rf.FORMAT, "gradattr": _version(), "fingerprint": fingerprint,
                     "files": files}, indent=1).encode())
                for name, data in (ctx.extra or {}).items():
                    rf.write_atomic(folder / name, data)
            self.manifest = folder / rf.MANIFEST.format(rank)
            if not fresh:
                rf.end_cut_line(self.manifest)
        except (GradattrError, OSError) as e:
            err = e
        self._agree(err)  # no rank goes on before rank 0 has cleaned up and marked the folder
        return {} if fresh else records

    def _agree(self, err) -> None:
        _agree(self.world, err, self.ctx.out_dir)

    def _marker(self, folder: Path) -> dict | None:
        """The folder's marker, ``None`` for a new or empty folder, or an error for anyone else's."""
        if not folder.exists():
            return None
        _, others = rf.own_entries(folder)
        sp = self.ctx
        if rf.MARKER in others:
            marker = rf.read_json(folder / rf.MARKER, sp.out_dir)
            if not isinstance(marker, dict) or marker.get("gradattr_run") != rf.FORMAT \
                    or not isinstance(marker.get("fingerprint"), dict):
                raise expected(sp.out_dir, f"a folder made by this version of gradattr (format {rf.FORMAT})",
                               f"{str(folder)!r}, whose {rf.MARKER} says format "
                               f"{marker.get('gradattr_run') if isinstance(marker, dict) else '?'}; "
                               "give this run another folder")
            return marker
        if not others:
            return None
        if rf.OLD_RUN in others:
            raise expected(sp.out_dir, f"a new or empty folder, or one this version of gradattr made (with "
                           f"its {rf.MARKER})", f"{str(folder)!r}, written by gradattr 0.2 ({rf.OLD_RUN}, no "
                           "checksums): load_maps still reads it; give this run another folder, or delete "
                           "that one yourself to start again")
        shown = ", ".join(repr(n) for n in others[:4]) + (", ..." if len(others) > 4 else "")
        raise expected(sp.out_dir, f"a new or empty folder, or one an earlier run made (with its {rf.MARKER})",
                       f"{str(folder)!r}, holding {len(others)} entr{'y' if len(others) == 1 else 'ies'} of "
                       f"its own ({shown}); gradattr never writes into such a folder, {sp.overwrite} included")

    def _clean(self, marker, records: dict, fresh: bool) -> None:
        """Rank 0, all locks held: remove what an earlier run wrote (``fresh``), or only what goes stale."""
        folder = self.folder
        doomed = {rf.INDEX}  # the run is open again until finish writes it
        doomed |= {p.name for p in folder.iterdir() if rf.TMP_RE.fullmatch(p.name)}  # cut by a crash
        if fresh:
            doomed |= {r["file"] for recs in records.values() for r in recs}
            doomed |= {p.name for p in folder.iterdir() if rf.MANIFEST_RE.fullmatch(p.name)}
            if marker is not None:
                doomed |= {n for n in marker.get("files", []) if isinstance(n, str) and "/" not in n
                           and n not in (".", "..", rf.MARKER) and not n.startswith(".gradattr-lock")}
        for name in doomed:
            p = folder / name
            if p.is_symlink() or p.is_file():
                p.unlink()

    def done(self, index: int, start: int, rows: int, first: str | None = None) -> bool:
        """Whether batch ``index`` has an intact shard already (it is then checked against this run)."""
        recs = self.records.get(index)
        if not recs:
            return False
        digest = rf.file_digest(self.folder / rf.SHARD.format(index))
        match = [r for r in recs if digest is not None and (r.get("size"), r.get("sha256")) == digest]
        if not match:  # missing, truncated or altered: computed again
            self.repaired += 1
            return False
        rec = match[-1]
        if (rec["start"], rec["rows"]) != (start, rows):
            raise expected(self.ctx.out_dir, "the same batches as the run being resumed",
                           f"batch {index} with {rows} samples from position {start}, where the earlier "
                           f"run had {rec['rows']} from {rec['start']} (another batch size?)")
        if first is not None and rec.get("x0") not in (None, first):
            raise expected(self.ctx.out_dir, "the same data as the run being resumed",
                           f"batch {index} whose first sample differs from the one the earlier run "
                           f"explained; use {self.ctx.overwrite} to start again")
        self.chosen[index] = rec
        return True

    def save(self, index: int, start: int, indices, maps: np.ndarray, first: str | None) -> Path:
        name = rf.SHARD.format(index)
        path = self.folder / name
        tmp, f = rf.open_new(path)
        try:
            with f:
                w = rf.HashingWriter(f)
                np.save(w, maps)
            os.replace(tmp, path)  # a shard exists complete or not at all
        except BaseException:
            rf.unlink_quietly(tmp)
            raise
        rec = {"shard": index, "file": name, "start": start, "rows": int(maps.shape[0]),
               "shape": list(maps.shape), "size": w.size, "sha256": w.hash.hexdigest()}
        idx = [int(i) for i in indices]
        if idx == list(range(idx[0], idx[0] + len(idx))):
            rec["first"] = idx[0]  # contiguous samples: the first is enough
        else:
            rec["indices"] = idx
        if first is not None:
            rec["x0"] = first
        rf.append_line(self.manifest, json.dumps(rec))  # recorded only once the shard is complete
        self.chosen[index] = rec
        return path

    def finish(self, n_batches: int | None) -> None:
        """Barrier, then rank 0 writes ``index.json`` from every rank's manifest."""
        _barrier(self.world)  # every rank's manifest is complete
        err = None
        if self.rank == 0:
            try:
                merged = self._merge(n_batches)
                shapes = {tuple(r["shape"][1:]) for r in merged if "shape" in r}
                if len(shapes) > 1:
                    raise GradattrError(f"out_dir: expected maps of one shape in every shard, got "
                                        f"{sorted(shapes)}")
                rf.write_atomic(self.folder / rf.INDEX, json.dumps(
                    {"gradattr_run": rf.FORMAT, "samples": sum(r["rows"] for r in merged),
                     "world_size": self.world, "map_shape": list(shapes.pop()) if shapes else [1],
                     "shards": merged}).encode())
            except (GradattrError, OSError) as e:
                err = e
        _agree(self.world, err, self.ctx.out_dir)  # the index exists when any rank returns

    def _merge(self, n_batches: int | None) -> list[dict]:
        """One record per shard 0..n-1, the one that matches the file where ranks recorded it twice."""
        found = rf.read_manifests(self.folder)
        n = n_batches if n_batches is not None else (max(found) + 1 if found else 0)
        merged = []
        for k in range(n):
            recs = found.get(k, [])
            if k in self.chosen:
                rec = self.chosen[k]
            elif len({(r.get("size"), r.get("sha256")) for r in recs}) == 1:
                rec = recs[-1]
            else:
                digest = rf.file_digest(self.folder / rf.SHARD.format(k))
                match = [r for r in recs if (r.get("size"), r.get("sha256")) == digest]
                if not match:
                    raise GradattrError(f"out_dir: expected shard {k} to be recorded by a rank, got "
                                        f"{'no record' if not recs else 'records that do not match the file'}")
                rec = match[-1]
            merged.append({key: v for key, v in rec.items() if key != "x0"})
        start = 0
        for r in merged:
            if r["start"] != start:
                raise GradattrError(f"out_dir: expected shard {r['shard']} to start at sample {start}, got "
                                    f"{r['start']} (did the ranks see different data?)")
            start += r["rows"]
        seen = np.concatenate([_record_indices(r) for r in merged]) if merged else np.zeros(0, int)
        uniq, counts = np.unique(seen, return_counts=True)
        if (counts > 1).any():
            raise GradattrError(f"out_dir: expected each sample in one shard, got samples "
                                f"{uniq[counts > 1][:5].tolist()} in several (did the ranks see "
                                "different data, e.g. a shuffling loader?)")
        return merged

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _version() -> str:
    from . import __version__

    return __version__


def _record_indices(rec: dict) -> np.ndarray:
    if "indices" in rec:
        return np.asarray(rec["indices"], dtype=np.int64)
    return np.arange(rec["first"], rec["first"] + rec["rows"], dtype=np.int64)


@dataclass
class _Source:
    """The batches, examined once before the run: what identifies them, and how to go through them."""

    description: dict
    groups: list | None = None  # a map-style DataLoader's batches of sample indices
    loader: Any = None
    stream: Iterator | None = None
    length: int | None = None  # a stream's number of batches, when it has a len


def _source(batches, world: int, describe: bool) -> _Source:
    from torch.utils.data import DataLoader, IterableDataset, SequentialSampler

    if isinstance(batches, DataLoader) and not isinstance(batches.dataset, IterableDataset) \
            and batches.batch_sampler is not None:
        if world > 1 and not isinstance(batches.sampler, SequentialSampler):
            raise expected("batches", "a DataLoader with shuffle=False (a sequential sampler) when "
                           "several processes split it", f"a {type(batches.sampler).__name__}")
        groups = [[int(i) for i in g] for g in batches.batch_sampler]
        ds = batches.dataset
        kind = _qualname(ds)
        transform = getattr(ds, "transform", None)
        if transform is not None:
            shown = repr(transform)
            kind += f" with transform {shown if ' at 0x' not in shown else _qualname(transform)}"
        try:
            length = len(ds)  # type: ignore[arg-type]
        except TypeError:
            length = None
        if not describe:
            return _Source({}, groups=groups, loader=batches)
        flat = [i for g in groups for i in g]
        picks = sorted({flat[0], flat[len(flat) // 2], flat[-1]}) if flat else []
        samples = hashlib.sha256()
        for i in picks:
            samples.update(_digest_tree(ds[i]).encode())
        order = hashlib.sha256(json.dumps(groups).encode()).hexdigest()[:16]
        description = {
            "data set": kind, "data set length": length, "batch size": batches.batch_size,
            "sample order": f"{len(groups)} batches of {len(flat)} samples, sha256 {order}",
            "samples": f"{len(picks)} samples, sha256 {samples.hexdigest()[:16]}",
            "collate_fn": _stable(batches.collate_fn)}
        return _Source(description, groups=groups, loader=batches)

    it = iter(batches)
    head = list(itertools.islice(it, 1))
    length = None
    if hasattr(batches, "__len__"):
        try:
            length = len(batches)
        except TypeError:  # e.g. a DataLoader over an IterableDataset
            length = None
    description = {}
    if describe:
        # the first batch here, each later batch's first sample as it is read (Shards.done), and
        # each batch's size and position: a list and an iterator over it are the same data
        if head:
            x, y = _split(head[0], 0)
            description["first batch"] = f"{_shape(x)}, sha256 {_digest_tree([x, y])[:16]}"
        else:
            description["first batch"] = None
    return _Source(description, stream=_then(head, it), length=length)


def _then(head: list, rest: Iterator) -> Iterator:
    """The peeked batch, then the rest; the list lets go of the batch once it is given out."""
    while head:
        yield head.pop()
    yield from rest


@dataclass
class _Plan:
    jobs: Iterable  # (batch index, stream position, sample indices or None, batch or None)
    total: int | None
    batches: Callable[[], int]  # the number of batches in the stream (once gone through)


def _plan(source: _Source, rank: int, world: int, shards) -> _Plan:
    """This rank's batches: a map-style DataLoader loads only its own; other iterables are read whole."""
    from torch.utils.data import DataLoader

    if source.groups is not None:
        batches, groups = source.loader, source.groups
        starts = np.concatenate([[0], np.cumsum([len(g) for g in groups])]).astype(int).tolist()
        mine = [k for k in range(len(groups)) if k % world == rank
                and not (shards is not None and shards.done(k, starts[k], len(groups[k])))]
        skipped = [k for k in range(len(groups)) if k % world == rank and k not in mine]
        kw = {"num_workers": batches.num_workers, "collate_fn": batches.collate_fn,
              "pin_memory": batches.pin_memory, "worker_init_fn": batches.worker_init_fn,
              "timeout": batches.timeout}
        if batches.num_workers > 0:
            kw.update(prefetch_factor=batches.prefetch_factor,
                      persistent_workers=batches.persistent_workers)
        loader = DataLoader(batches.dataset, batch_sampler=[groups[k] for k in mine], **kw)

        def jobs():
            for k in skipped:
                yield k, starts[k], groups[k], None
            for k, batch in zip(mine, loader):
                yield k, starts[k], groups[k], batch

        return _Plan(jobs(), len(mine), lambda: len(groups))

    seen = [0]

    def stream():
        start = 0
        for k, batch in enumerate(source.stream):
            x, _ = _split(batch, k)
            seen[0] = k + 1
            yield k, start, None, batch
            start += _rows(x)

    total = source.length
    if total is not None:
        total = len(range(rank, total, world))
    return _Plan(stream(), total, lambda: seen[0])


def _split(batch, index: int):
    """A batch -> ``(x, y or None)``; ``x`` a tensor/array, or a tuple of inputs for ``net(*x)``."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        x, y = batch, None
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (torch.Tensor, np.ndarray)):
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
    elif isinstance(batch, (tuple, list)) and batch and _several(batch[0]):
        # ((image, question), label) items: a DataLoader yields [[images, questions], labels]
        x, y = tuple(batch[0]), (batch[1] if len(batch) > 1 else None)
    else:
        got = type(batch).__name__ + (f" of {[type(b).__name__ for b in batch][:3]}"
                                      if isinstance(batch, (tuple, list)) else "")
        raise expected("batches", f"batches that are a tensor/array x or a tuple (x, y, ...), x a "
                       f"tensor/array or a tuple/list of the network's inputs (batch {index})", got)
    if isinstance(x, tuple):
        bad = [i for i, v in enumerate(x) if isinstance(v, dict)]
        if bad:
            raise expected("batches", f"positional inputs in x (batch {index}); keyword inputs the same "
                           "for every batch go in forward_kwargs=, per-batch ones need a model that takes "
                           "them positionally (a small wrapper module)", f"a dict at x[{bad[0]}]")
        sizes = {int(v.shape[0]) for v in x if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim > 0}
        if len(sizes) != 1:
            raise expected("batches", f"inputs with one batch size as their first dimension (batch {index})",
                           "shapes " + ", ".join(str(tuple(getattr(v, "shape", ()))) for v in x))
        return x, y
    if x.ndim < 3:
        raise expected("batches", f"batched inputs (B, C, *spatial) (batch {index})",
                       f"shape {tuple(x.shape)}")
    return x, y


def _several(x) -> bool:
    """A batch's first element holds several inputs: a tuple/list with a tensor or array in it."""
    return isinstance(x, (tuple, list)) and any(isinstance(v, (torch.Tensor, np.ndarray)) for v in x)


def _rows(x) -> int:
    """The batch size of ``x`` (a tensor, or a tuple of batch-first inputs)."""
    if isinstance(x, tuple):
        return next(int(v.shape[0]) for v in x if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim > 0)
    return int(x.shape[0])


def _first(x):
    """The batch's first sample (of every input, for several inputs): what a resume checks."""
    if isinstance(x, tuple):
        return tuple(v[0] if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim > 0 else v for v in x)
    return x[0]


def _shape(x) -> str:
    if isinstance(x, tuple):
        return "inputs of shapes " + ", ".join(str(tuple(getattr(v, "shape", ()))) for v in x)
    return f"x of shape {tuple(x.shape)}"


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


__all__ = ["LABEL", "BatchMaps", "DatasetReport", "explain_dataset", "load_maps", "RunContext",
           "CLI_WORDING", "run_explain_dataset"]
