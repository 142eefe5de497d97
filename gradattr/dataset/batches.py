"""The batches of a run: what identifies them, how this rank goes through them, and each
batch read as ``(x, y)`` with its size and first sample."""
from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import expected
from .fingerprint import digest_tree, qualname, stable_value


@dataclass
class _Source:
    """The batches, examined once before the run: what identifies them, and how to go through them."""

    description: dict
    groups: list | None = None  # a map-style DataLoader's batches of sample indices
    loader: Any = None
    stream: Iterator | None = None
    length: int | None = None  # a stream's number of batches, when it has a len


def examine_batches(batches, world: int, describe: bool) -> _Source:
    from torch.utils.data import DataLoader, IterableDataset, SequentialSampler

    if isinstance(batches, DataLoader) and not isinstance(batches.dataset, IterableDataset) \
            and batches.batch_sampler is not None:
        if world > 1 and not isinstance(batches.sampler, SequentialSampler):
            raise expected("batches", "a DataLoader with shuffle=False (a sequential sampler) when "
                           "several processes split it", f"a {type(batches.sampler).__name__}")
        groups = [[int(i) for i in g] for g in batches.batch_sampler]
        ds = batches.dataset
        kind = qualname(ds)
        transform = getattr(ds, "transform", None)
        if transform is not None:
            shown = repr(transform)
            kind += f" with transform {shown if ' at 0x' not in shown else qualname(transform)}"
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
            samples.update(digest_tree(ds[i]).encode())
        order = hashlib.sha256(json.dumps(groups).encode()).hexdigest()[:16]
        description = {
            "data set": kind, "data set length": length, "batch size": batches.batch_size,
            "sample order": f"{len(groups)} batches of {len(flat)} samples, sha256 {order}",
            "samples": f"{len(picks)} samples, sha256 {samples.hexdigest()[:16]}",
            "collate_fn": stable_value(batches.collate_fn)}
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
            x, y = split_batch(head[0], 0)
            description["first batch"] = f"{_shape(x)}, sha256 {digest_tree([x, y])[:16]}"
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


def plan_for_rank(source: _Source, rank: int, world: int, shards) -> _Plan:
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
            x, _ = split_batch(batch, k)
            seen[0] = k + 1
            yield k, start, None, batch
            start += batch_rows(x)

    total = source.length
    if total is not None:
        total = len(range(rank, total, world))
    return _Plan(stream(), total, lambda: seen[0])


def split_batch(batch, index: int):
    """A batch -> ``(x, y or None)``; ``x`` a tensor/array, or a tuple of inputs for ``net(*x)``."""
    x: torch.Tensor | np.ndarray | tuple[Any, ...]
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


def batch_rows(x) -> int:
    """The batch size of ``x`` (a tensor, or a tuple of batch-first inputs)."""
    if isinstance(x, tuple):
        return next(int(v.shape[0]) for v in x if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim > 0)
    return int(x.shape[0])


def first_sample(x):
    """The batch's first sample (of every input, for several inputs): what a resume checks."""
    if isinstance(x, tuple):
        return tuple(v[0] if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim > 0 else v for v in x)
    return x[0]


def _shape(x) -> str:
    if isinstance(x, tuple):
        return "inputs of shapes " + ", ".join(str(tuple(getattr(v, "shape", ()))) for v in x)
    return f"x of shape {tuple(x.shape)}"


__all__ = ["examine_batches", "plan_for_rank", "split_batch", "batch_rows", "first_sample"]
