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
``gradattr explain-dataset`` (:func:`cli_explain_dataset`) is the command line.
"""
from __future__ import annotations

import hashlib
import json
import os
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
_MANIFEST = "manifest-rank{:03d}.jsonl"
_MANIFEST_RE = re.compile(r"manifest-rank\d{3,}\.jsonl")
_RUN = "run.json"
_INDEX = "index.json"
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

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        where = f", shards in {self.out_dir}" if self.out_dir is not None else ""
        where += f", {self.skipped} batches already done" if self.skipped else ""
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
    Nothing is accumulated, so memory stays that of one batch;
    :func:`load_maps` reads a finished ``out_dir`` back as one array.

    Several processes: under an initialised ``torch.distributed`` process group
    (or ``torchrun``'s environment, for which a gloo (CPU) or nccl (GPU) group is
    made and released here), each rank explains its share and each sample is
    explained once. A ``DataLoader`` over a map-style data set (``shuffle=False``)
    is split by batch like ``DistributedSampler`` without its padding: rank ``r``
    loads and explains batches ``r, r + W, r + 2W, ...`` only. Any other iterable is
    read by every rank and split by batch index the same way. Each rank writes its
    own shards and ``manifest-rankNNN.jsonl`` (shard -> sample indices); after a
    barrier rank 0 writes ``index.json``. No maps pass between processes. A
    ``DistributedDataParallel`` model is explained through its ``.module``.

    Resume: a shard is written under a temporary name, renamed when complete and
    then recorded in the manifest, so re-running into the same ``out_dir`` (same
    model weights, method, target and options, recorded in ``run.json``) skips the
    recorded shards and computes only the rest; a different run is refused unless
    ``overwrite=True``, which starts again from nothing.

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
        on_batch: called with a :class:`BatchMaps` after each batch this process
            computes, in order (not for batches skipped on resume).
        out_dir: folder for the ``.npy`` shards (created when the first is written).
        overwrite: discard the shards of an earlier run in ``out_dir`` instead of
            resuming it.
        progress: draw a progress bar with the throughput on stderr (rank 0 only).
        total: number of batches, for the bar, when ``batches`` has no ``len``.
        **options: the method's own options (``feature_layer``, ``upsampling``,
            ``device``, ``normalize``, ...), checked by the method on the first batch,
            before anything is written.

    Returns:
        A :class:`DatasetReport` with this process's ``samples``, ``batches``,
        ``seconds``, ``images_per_second`` and the ``skipped`` (resumed) batches.

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
    folder = _check_out_dir(out_dir)
    net = _unwrap(net)
    rank, world, made_group = _distributed()
    try:
        return _run(net, batches, explain, name, target, on_batch, folder, overwrite, progress, total,
                    options, rank, world)
    finally:
        if made_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(net, batches, explain, name, target, on_batch, folder, overwrite, progress, total, options,
         rank, world) -> DatasetReport:
    use_labels = isinstance(target, str) and target == LABEL
    shards = None
    if folder is not None:
        header = {"method": name, "target": _stable(target),
                  "options": {k: _stable(v) for k, v in sorted(options.items())}, "model": _fingerprint(net)}
        shards = _Shards(folder, rank, world, header, overwrite)
    plan = _plan(batches, rank, world, shards)
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
        b = int(x.shape[0])
        if indices is None:
            indices = range(start, start + b)
        elif len(indices) != b:
            raise GradattrError(f"batches: expected batch {index} to hold the {len(indices)} samples "
                                f"its sampler chose, got {b}")
        if index % world != rank:
            continue
        if shards is not None and shards.done(index, start, b):
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
        path = shards.save(index, start, indices, maps) if shards is not None else None
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
        shards.finish()
    return DatasetReport(method=name, samples=samples, batches=count, seconds=seconds, out_dir=folder,
                         skipped=skipped, rank=rank, world_size=world)


def load_maps(out_dir: str | Path, *, return_indices: bool = False):
    """The maps a finished :func:`explain_dataset` run wrote, as one array in dataset order.

    Works for single-process and multi-process output alike: the shards of every
    rank are read through ``index.json`` and their rows placed by sample index.

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
    index_file = folder / _INDEX
    if not index_file.is_file():
        why = "not a folder" if not folder.is_dir() else (
            "an unfinished run: re-run explain_dataset with the same out_dir to finish it"
            if _read_manifests(folder) else "no shards")
        raise expected("out_dir", f"a folder written by explain_dataset, with its {_INDEX}",
                       f"{str(folder)!r} ({why})")
    records = json.loads(index_file.read_text())["shards"]
    all_idx = np.concatenate([_record_indices(r) for r in records]) if records else np.zeros(0, np.int64)
    order = np.sort(all_idx)
    out = None
    for r in records:
        maps = np.load(folder / r["file"], allow_pickle=False)
        if out is None:
            out = np.empty((len(order), *maps.shape[1:]), dtype=np.float32)
        elif maps.shape[1:] != out.shape[1:]:
            raise GradattrError(f"out_dir: expected shards of one map shape {out.shape[1:]}, got "
                                f"{maps.shape[1:]} in {r['file']}")
        out[np.searchsorted(order, _record_indices(r))] = maps
    if out is None:
        out = np.zeros((0,), dtype=np.float32)
    return (out, order) if return_indices else out


# ------------------------------------------------------------------------------ helpers
def _resolve_method(method, options: dict):
    """``method`` -> ``(explain(net, x, target, options) -> maps, name)``.

    A method name and its options are checked against the registry first; a
    callable checks its own options on the first batch, before any shard is written.
    """
    for key, why in _REFUSED.items():
        if key in options:
            raise expected(key, "no such option for explain_dataset", f"{key}=... ({why})")
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


def _check_out_dir(out_dir) -> Path | None:
    if out_dir is None:
        return None
    if not isinstance(out_dir, (str, Path)):
        raise expected("out_dir", "None or a folder path (str or pathlib.Path)", type(out_dir).__name__)
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise expected("out_dir", "a folder", f"{str(folder)!r}, which is a file")
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


def _stable(value) -> object:
    """A JSON-able description of an option that is the same from one run to the next."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return f"array{arr.shape}:{hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]}"
    if callable(value):
        return f"callable:{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return f"{type(value).__name__}:{value!s}"


def _fingerprint(net) -> str:
    """sha1 of the model's state (names, shapes, dtypes, values): a resumed run must use the same weights."""
    h = hashlib.sha1()
    for key, t in net.state_dict().items():
        t = t.detach()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Shards:
    """One rank's writer: atomic shards, an append-only manifest, the header and the index."""

    def __init__(self, folder: Path, rank: int, world: int, header: dict, overwrite: bool):
        self.folder, self.rank, self.world, self.header = folder, rank, world, header
        old = _read_run(folder)
        shards = sorted(p.name for p in folder.iterdir() if _SHARD_RE.fullmatch(p.name)) \
            if folder.is_dir() else []
        if not overwrite:
            if old is None and shards:
                raise expected("out_dir", "a folder without shards from another program (or overwrite=True)",
                               f"{str(folder)!r} holding {len(shards)} shard(s) such as {shards[0]!r} "
                               f"and no {_RUN}")
            if old is not None and old != header:
                diff = ", ".join(k for k in header if old.get(k) != header[k])
                raise expected("out_dir", "the folder of the same run to resume it (same model weights, "
                               "method, target and options), or overwrite=True to start again",
                               f"{str(folder)!r} written by a run whose {diff} differ(s)")
        _barrier(world)  # every rank has read the old state before rank 0 changes it
        if overwrite and rank == 0 and folder.is_dir():
            for p in folder.iterdir():
                if _SHARD_RE.fullmatch(p.name) or _MANIFEST_RE.fullmatch(p.name) \
                        or p.name in (_RUN, _INDEX) or p.name.startswith(".maps_"):
                    p.unlink()
        _barrier(world)
        self.records = {} if overwrite else _read_manifests(folder)
        self.manifest = folder / _MANIFEST.format(rank)
        if not overwrite and self.manifest.is_file():
            with open(self.manifest, "rb+") as f:  # end a line a crash cut short, so new ones parse
                if f.seek(0, 2) and (f.seek(-1, 2), f.read(1))[1] != b"\n":
                    f.write(b"\n")
        self.started = False
        _barrier(world)  # no rank writes before every rank has read the manifests

    def done(self, index: int, start: int, rows: int) -> bool:
        rec = self.records.get(index)
        if rec is None:
            return False
        if (rec["start"], rec["rows"]) != (start, rows):
            raise expected("out_dir", "the same batches as the run being resumed",
                           f"batch {index} with {rows} samples from position {start}, where the earlier "
                           f"run had {rec['rows']} from {rec['start']} (another batch size?)")
        return True

    def _begin(self) -> None:
        if not self.started:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.rank == 0:
                _atomic_write(self.folder / _RUN, json.dumps(self.header, indent=1))
            self.started = True

    def save(self, index: int, start: int, indices, maps: np.ndarray) -> Path:
        self._begin()
        name = _SHARD.format(index)
        tmp = self.folder / f".{name}.{self.rank}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, maps)
        os.replace(tmp, self.folder / name)  # a shard exists complete or not at all
        rec = {"shard": index, "file": name, "start": start, "rows": int(maps.shape[0])}
        idx = [int(i) for i in indices]
        if idx == list(range(idx[0], idx[0] + len(idx))):
            rec["first"] = idx[0]  # contiguous samples: the first is enough
        else:
            rec["indices"] = idx
        with open(self.manifest, "a") as f:  # recorded only once the shard is complete
            f.write(json.dumps(rec) + "\n")
        return self.folder / name

    def finish(self) -> None:
        """Barrier, then rank 0 writes ``index.json`` from every rank's manifest."""
        _barrier(self.world)
        if self.rank == 0:
            self._begin()
            merged = sorted(_read_manifests(self.folder).values(), key=lambda r: r["shard"])
            seen = np.concatenate([_record_indices(r) for r in merged]) if merged else np.zeros(0, int)
            uniq, counts = np.unique(seen, return_counts=True)
            if (counts > 1).any():
                raise GradattrError(f"out_dir: expected each sample in one shard, got samples "
                                    f"{uniq[counts > 1][:5].tolist()} in several (did the ranks see "
                                    "different data, e.g. a shuffling loader?)")
            _atomic_write(self.folder / _INDEX, json.dumps(
                {"samples": int(seen.size), "world_size": self.world, "shards": merged}))
        _barrier(self.world)  # the index exists when any rank returns


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_run(folder: Path):
    try:
        return json.loads((folder / _RUN).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_manifests(folder: Path) -> dict[int, dict]:
    """shard number -> record, for every recorded shard whose file is there (the last record wins)."""
    records: dict[int, dict] = {}
    if not folder.is_dir():
        return records
    for m in sorted(p for p in folder.iterdir() if _MANIFEST_RE.fullmatch(p.name)):
        for line in m.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: its shard is recomputed
                continue
            if (folder / rec["file"]).is_file():
                records[rec["shard"]] = rec
    return records


def _record_indices(rec: dict) -> np.ndarray:
    if "indices" in rec:
        return np.asarray(rec["indices"], dtype=np.int64)
    return np.arange(rec["first"], rec["first"] + rec["rows"], dtype=np.int64)


@dataclass
class _Plan:
    jobs: Iterable  # (batch index, stream position, sample indices or None, batch or None)
    total: int | None


def _plan(batches, rank: int, world: int, shards) -> _Plan:
    """This rank's batches: a map-style DataLoader loads only its own; other iterables are read whole."""
    from torch.utils.data import DataLoader, IterableDataset, SequentialSampler

    if isinstance(batches, DataLoader) and not isinstance(batches.dataset, IterableDataset) \
            and batches.batch_sampler is not None:
        if world > 1 and not isinstance(batches.sampler, SequentialSampler):
            raise expected("batches", "a DataLoader with shuffle=False (a sequential sampler) when "
                           "several processes split it", f"a {type(batches.sampler).__name__}")
        groups = [list(g) for g in batches.batch_sampler]
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

        return _Plan(jobs(), len(mine))

    def stream():
        start = 0
        for k, batch in enumerate(batches):
            x, _ = _split(batch, k)
            yield k, start, None, batch
            start += int(x.shape[0])

    total = None
    if hasattr(batches, "__len__"):
        try:
            n = len(batches)
            total = len(range(rank, n, world))
        except TypeError:  # e.g. a DataLoader over an IterableDataset
            total = None
    return _Plan(stream(), total)


# ------------------------------------------------------------------------------ command line
def cli_explain_dataset(argv: list[str]) -> int:
    """``gradattr explain-dataset FOLDER --model M --out-dir DIR``: every file of a folder, in shards.

    One process::

        gradattr explain-dataset images/ --model resnet.pt2 --size 224 --out-dir maps/

    Several (each explains its share; gloo on CPU, nccl and one GPU per process when
    CUDA is there)::

        torchrun --nproc-per-node 2 -m gradattr explain-dataset images/ --model resnet.pt2 \\
            --size 224 --out-dir maps/

    The files are taken in name order (written to ``DIR/inputs.txt``); sample ``i``
    of :func:`load_maps` is line ``i``. Returns the exit status.
    """
    from . import cli

    args = _cli_parser(cli).parse_args(argv)
    args.limit = float("inf")  # the explain command's --max-memory: one batch at a time here

    def run() -> int:
        files = _input_files(args.input, cli)
        loaded = cli.load_model(args.model, args.weights, trust=args.trust_model,
                                random_weights=args.random_weights)
        net = loaded.net
        if args.device != "cpu" and torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) \
                if args.device in ("auto", "cuda") else torch.device(args.device)
            net = net.to(device)
        elif args.device not in ("auto", "cpu"):
            raise cli.CliError(f"--device: expected auto or cpu on this machine (no CUDA), got {args.device!r}")
        samples = _Files(files, args, cli)
        loader = torch.utils.data.DataLoader(samples, batch_size=args.batch_size, num_workers=args.workers)
        options = {k: v for k, v in (("feature_layer", args.feature_layer),
                                     ("upsampling", args.upsampling)) if v is not None}
        # every batch is (B, C, *spatial): said outright, since an exported program has no
        # Conv modules left to tell the input's rank
        options["input_format"] = "BC" + "S" * (len(samples.shape) - 1)
        report = explain_dataset(net, loader, args.method, target=args.target, out_dir=args.out_dir,
                                 overwrite=args.overwrite, progress=args.progress, **options)
        if report.rank == 0:
            (Path(args.out_dir) / "inputs.txt").write_text("".join(f"{f}\n" for f in files))
        print(f"{cli.PROG}: {report}", file=sys.stderr)
        return 0

    return cli.reporting_errors(run, args.debug, "interrupted (run the same command again to resume)")


def _cli_parser(cli):
    p = cli._Parser(prog=f"{cli.PROG} explain-dataset",
                    description="Explain every image or .npy file of a folder (in name order) in batches "
                    "and write the maps as .npy shards to --out-dir; read them back in order with "
                    "gradattr.load_maps(DIR). Run it under `torchrun --nproc-per-node N -m gradattr "
                    "explain-dataset ...` to split the files across N processes (gloo on CPU, one GPU "
                    "each with nccl). Re-running with the same --out-dir resumes.")
    p.add_argument("input", metavar="FOLDER", help="a folder of images (all of one size, or pass --size) "
                   "or of .npy arrays, one sample (C, ...) each")
    p.add_argument("--model", required=True, metavar="MODEL", help=cli.MODEL_HELP)
    p.add_argument("--weights", metavar="FILE", help="state_dict for a factory --model")
    p.add_argument("--random-weights", action="store_true", help="use a factory --model without "
                   "--weights on purpose (its own, e.g. random, weights)")
    p.add_argument("--trust-model", action="store_true", help="load a module saved whole with "
                   "torch.save(model), which runs code from the file: only for files you trust")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the shards, manifests and "
                   "index.json")
    p.add_argument("--method", default="grad_cam", help="attribution method (see `gradattr methods`)")
    p.add_argument("--target", type=int, metavar="CLASS", help="class to explain; default: each "
                   "sample's top class")
    p.add_argument("--feature-layer", metavar="NAME", help="layer name (see `gradattr layers`)")
    p.add_argument("--upsampling", metavar="MODE", help="bicubic (default), nearest or none")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="samples per batch and per "
                   "shard (default 16)")
    p.add_argument("--workers", type=int, default=0, metavar="W", help="DataLoader worker processes per "
                   "rank (default 0)")
    p.add_argument("--device", default="auto", help="auto (default: the process's GPU when CUDA is "
                   "there, else CPU), cpu, cuda or cuda:K")
    p.add_argument("--size", metavar="H[,W]", help="resize images to H x W")
    p.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean subtracted from images in [0, 1]")
    p.add_argument("--std", metavar="S[,S,S]", help="per-channel std dividing images")
    p.add_argument("--gray", action="store_true", help="read images as one grey channel")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out-dir "
                   "instead of resuming it")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr (rank 0)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def _input_files(folder: str, cli) -> list[Path]:
    path = Path(folder)
    if not path.is_dir():
        raise cli.CliError(f"FOLDER: expected a folder of images or .npy files, got {folder!r}")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and (p.suffix.lower() == ".npy" or p.suffix.lower() in cli.IMAGE_SUFFIXES))
    if not files:
        raise cli.CliError(f"FOLDER: expected images or .npy files in {folder}, got none")
    return files


class _Files(torch.utils.data.Dataset):
    """The files of a folder, read one at a time (images as the ``explain`` command reads them)."""

    def __init__(self, files: list[Path], args, cli):
        self.files, self.args, self.cli = files, args, cli
        self.shape = tuple(self[0].shape)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        f = self.files[i]
        if f.suffix.lower() == ".npy":
            try:
                arr = np.load(f, allow_pickle=False)
            except (ValueError, OSError) as err:
                raise self.cli.CliError(f"FOLDER: cannot read {f} as a .npy array: {err}") from None
            if arr.dtype.kind not in "biuf" or arr.ndim < 2:
                raise self.cli.CliError(f"FOLDER: expected one numeric sample (C, *spatial) per .npy file, "
                                        f"got shape {arr.shape} and dtype {arr.dtype} in {f}")
            x = arr.astype(np.float32)
        else:
            x = self.cli.read_image(f, self.args).x
        if i and tuple(x.shape) != self.shape:
            raise self.cli.CliError(f"FOLDER: expected every sample of shape {self.shape} (as "
                                    f"{self.files[0].name}; --size resizes images), got {x.shape} in {f}")
        return torch.from_numpy(np.ascontiguousarray(x))



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


__all__ = ["LABEL", "BatchMaps", "DatasetReport", "cli_explain_dataset", "explain_dataset", "load_maps"]
