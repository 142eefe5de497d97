""":func:`report`: the run folder read, its samples scored (with ``net``) and the page written.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .. import runfolder as rf
from ..errors import expected
from .cards import make_card
from .markup import page_html
from .run_files import class_names, read_samples, run_info
from .samples import Inputs, score_samples


METRICS = ("deletion",)


def report(out_dir, *, inputs=None, net=None, classes=None, metrics: Sequence[str] = (), thumb: int = 128,
           batch_size: int = 32, title: str | None = None, reading=None, input_format: str | None = None) -> Path:
    """Write ``OUT_DIR/report/index.html``, a static page of every sample's map; return its path.

    Args:
        out_dir: a folder written by :func:`gradattr.explain_dataset` (or ``gradattr explain-dataset``).
        inputs: the samples the run explained, in data-set order: an array or tensor
            ``(N, C, *S)``, or a data set (``len`` and indexing) whose items are ``x``
            or ``(x, y)``. ``None``: the files of ``OUT_DIR/inputs.json`` when there is one.
        net: the network the run explained; with ``inputs`` it gives each card its
            class, score (the output) and probability (softmax), and the metrics.
        classes: class names in output order (a list, or a text file with one per line).
        metrics: per-sample faithfulness scores to compute with ``net``: ``"deletion"``.
        thumb: the thumbnails' longer side in pixels.
        batch_size: samples per forward pass for the scores and metrics.
        title: the page's title (default: the folder's name and the method).
        reading: how image files of ``inputs.json`` are read, as the run read them: an object
            with the command line's ``size``, ``mean``, ``std``, ``gray``, ``crop`` and ``limit``
            (``gradattr report`` passes its arguments); ``None``: as they are.
        input_format: a batch of ``inputs`` in MATLAB letters for the metrics (``"BTC"``...); ``None``: ``(N, C, *S)``.

    Returns:
        The path of ``index.html``.

    Example:
        >>> import tempfile, torch, gradattr
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x = torch.rand(6, 3, 12, 12)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = gradattr.explain_dataset(net, [x[:4], x[4:]], out_dir=d)
        ...     page = gradattr.report(d, inputs=x, net=net)
        ...     page.name, page.read_text().count('class="card"')
        ('index.html', 6)
    """
    from ..dataset import load_maps

    metrics = _check_options(out_dir, metrics, net, thumb, batch_size)
    folder = Path(out_dir)
    maps, order = load_maps(folder, return_indices=True)
    if maps.ndim < 2:
        raise expected("out_dir", "a run with at least one map", f"{str(folder)!r} (no samples)")
    run = run_info(folder)
    names = class_names(classes)
    source = Inputs(inputs, folder, len(order), reading)
    samples = read_samples(folder)

    rank = source.rank if source.rank is not None else maps.ndim - 1
    if maps.ndim - 1 > rank:  # several maps per sample (K targets): the page shows the first
        maps = maps[:, 0]
    if rank not in (1, 2, 3) or maps.ndim - 1 != rank:
        raise expected("out_dir", "maps of sequences (N, T), images (N, H, W) or volumes (N, D, H, W)",
                       f"maps of shape {maps.shape}")
    if net is not None:
        if source.kind is None:
            raise expected("inputs", "the run's samples (an array or data set), or an OUT_DIR/inputs.json, "
                           "to score with net", "inputs=None and no inputs.json")
        score_samples(net, source, maps, order, run.get("target"), metrics, batch_size, samples, input_format)
    heading = title if title is not None else f"{folder.resolve().name}: {run.get('method', '?')}"
    return _write_page(folder / "report", maps, order, source, rank, samples, names, thumb, heading, run)


def _check_options(out_dir, metrics, net, thumb, batch_size) -> tuple:
    """:func:`report`'s arguments checked before anything is read; returns the metrics' names."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise expected("out_dir", "a folder path (str or pathlib.Path)", type(out_dir).__name__)
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise expected("metrics", f"names from {list(METRICS)}", repr(unknown))
    if metrics and net is None:
        raise expected("net", "the run's network, to compute the metrics " + ", ".join(metrics), "net=None")
    if isinstance(thumb, bool) or not isinstance(thumb, int) or thumb < 16:
        raise expected("thumb", "an int >= 16 (pixels)", repr(thumb))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise expected("batch_size", "a positive int", repr(batch_size))
    return tuple(metrics)


def _write_page(page: Path, maps, order, source: Inputs, rank: int, samples: dict, names, thumb: int,
                heading: str, run: dict) -> Path:
    """The cards' pictures in ``page/img`` and ``page/index.html``; returns the page's path.

    Both folders and every file are written as :class:`gradattr.runfolder.PlainDir` writes: a
    folder or file that is a symbolic link is refused, never written through; each file is
    written under a fresh temporary name and renamed into place.
    """
    with rf.PlainDir(page) as where, where.sub("img") as img:
        cards = []
        for row, i in enumerate(order):
            i = int(i)
            info = dict(samples.get(i, {}))
            x = source.picture(i, maps.shape[1:]) if source.kind is not None else None
            cards.append(make_card(i, maps[row], x, rank, info, names, img, thumb, source.name(i)))
        text = page_html(heading, cards, run, rank, sorted({m for c in cards for m in c["metrics"]}))
        return where.write("index.html", text.encode("utf-8"))
