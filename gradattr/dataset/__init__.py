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
from .context import CLI_WORDING, RunContext
from .run import LABEL, BatchMaps, DatasetReport, explain_dataset, run_explain_dataset
from .shards import load_maps

__all__ = ["LABEL", "BatchMaps", "DatasetReport", "explain_dataset", "load_maps", "RunContext",
           "CLI_WORDING", "run_explain_dataset"]
