"""A page to look at a dataset run: ``gradattr report OUT_DIR`` / :func:`report`.

:func:`report` reads a folder written by :func:`gradattr.explain_dataset` (its
maps through :func:`gradattr.load_maps`, its method and target from the run's
marker ``.gradattr-run.json``) and writes
``OUT_DIR/report/index.html``: a static page that needs no server and loads
nothing from the network (its CSS and JavaScript are inline, its pictures are
PNG files in ``OUT_DIR/report/img/`` beside it). Open it from the file system.

The page is a grid of cards, one per sample: the input and the map over it
(images), three orthogonal slices (volumes) or the sequence with its
importance (1-D, drawn as inline SVG), with the class, score and probability
where they are known. The cards sort by sample, class, score, probability or
any per-sample metric (``deletion``: lower is more faithful), and filter by
class and by name. A click opens the full-size overlay with the colour scale in
the raw map's own values (its minimum and maximum).

Where the per-sample facts come from:

* the inputs: ``inputs=`` (an array ``(N, C, *S)``, or a data set whose items are
  ``x`` or ``(x, y)``), else the files listed in ``OUT_DIR/inputs.json`` (written
  by ``gradattr explain-dataset``), re-read for the thumbnails; without either,
  the cards show the maps alone;
* class, score, probability and metrics: ``OUT_DIR/samples.jsonl`` when the run
  wrote one (one JSON object per line: ``index``, and any of ``class``,
  ``label``, ``score``, ``probability``, ``metrics`` = ``{name: value}``), and/or
  computed here when ``net=`` is given: one forward pass per batch scores the
  class the run explained (the fingerprint's target: a fixed class, each sample's
  label, or its top class), and ``metrics=["deletion"]`` adds each sample's
  deletion AUC (:func:`gradattr.metrics.deletion`, 20 steps).
"""
from __future__ import annotations

import html
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import runfolder as rf
from .errors import GradattrError, expected

__all__ = ["report", "Inputs"]

METRICS = ("deletion",)
_SAMPLES = "samples.jsonl"
_SAMPLES_RE = re.compile(r"samples(-rank\d{3,})?\.jsonl")
_INPUT_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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
    from .dataset import load_maps

    metrics = _check_options(out_dir, metrics, net, thumb, batch_size)
    folder = Path(out_dir)
    maps, order = load_maps(folder, return_indices=True)
    if maps.ndim < 2:
        raise expected("out_dir", "a run with at least one map", f"{str(folder)!r} (no samples)")
    run = _run_info(folder)
    names = _class_names(classes)
    source = Inputs(inputs, folder, len(order), reading)
    samples = _read_samples(folder)

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
        _score(net, source, maps, order, run.get("target"), metrics, batch_size, samples, input_format)
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
            cards.append(_card(i, maps[row], x, rank, info, names, img, thumb, source.name(i)))
        text = _html(heading, cards, run, rank, sorted({m for c in cards for m in c["metrics"]}))
        return where.write("index.html", text.encode("utf-8"))


# ------------------------------------------------------------------------------ reading
def _run_info(folder: Path) -> dict:
    """``{"method": ..., "target": ...}`` of a run: from its fingerprint (the marker
    ``.gradattr-run.json``; the command line's arguments are spelt ``--method``, ``--target``),
    or from a 0.2 folder's ``run.json``."""
    from .runfolder import MARKER

    marker = _read_json(folder / MARKER)
    if isinstance(marker, dict) and isinstance(marker.get("fingerprint"), dict):
        fp = marker["fingerprint"]
        return {k: fp.get(k, fp.get("--" + k)) for k in ("method", "target")}
    return _read_json(folder / "run.json") or {}


def _input_paths(folder: Path) -> list[Path] | None:
    """The files an ``explain-dataset`` run read, in the maps' order: ``inputs.json`` (``folder``
    and each file's ``name``, a plain file name), or a 0.2 run's ``inputs.txt``; ``None`` when the
    run has neither. Only image and ``.npy`` files are named; ``..`` is refused."""
    listing = _read_json(folder / "inputs.json")
    if listing is not None:
        files = listing.get("files") if isinstance(listing, dict) else None
        base = listing.get("folder", ".") if isinstance(listing, dict) else None
        if not isinstance(files, list) or not isinstance(base, str):
            raise rf.FolderError("out_dir: expected inputs.json to hold {'folder': a path, 'files': [entries]}, "
                                 f"got {_short(listing)}")
        names = []
        for k, e in enumerate(files):
            if not isinstance(e, dict) or "name" not in e:
                raise rf.FolderError(f"out_dir: expected each entry of 'files' in inputs.json to be an object "
                                     f"with a 'name' field, got {_short(e)} at files[{k}]")
            names.append(_input_name(rf.plain_name(e["name"], "out_dir", f"inputs.json, files[{k}], field "
                                                   "'name'"), f"inputs.json, files[{k}], field 'name'"))
        home = _where(Path(base), folder, names[0] if names else None)
        return [home / n for n in names]
    try:
        text = rf.read_plain(folder / "inputs.txt").decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    paths = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            p = Path(line.strip())
            if ".." in p.parts:
                raise rf.FolderError(f"out_dir: expected paths without '..' in inputs.txt, got {line.strip()!r} "
                                     f"on line {n}")
            paths.append(_where(p.parent, folder, p.name) / _input_name(p.name, f"inputs.txt line {n}"))
    return paths


def _input_name(name: str, where: str) -> str:
    if not name.lower().endswith(_INPUT_SUFFIXES):
        raise rf.FolderError(f"out_dir: expected image or .npy file names in {where}, got {name!r}")
    return name


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _read_json(path: Path):
    """A JSON file of the run folder (a plain file, never a link); ``None`` when missing."""
    try:
        return rf.read_json(path)
    except FileNotFoundError:
        return None


def _class_names(classes) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        try:
            lines = Path(classes).read_text().splitlines()
        except OSError as err:
            raise expected("classes", "a list of class names or a text file with one per line",
                           f"{str(classes)!r} ({err.strerror or err})") from None
        return [ln.strip() for ln in lines if ln.strip()]
    if isinstance(classes, Sequence):
        return [str(c) for c in classes]
    raise expected("classes", "a list of class names or a text file with one per line", type(classes).__name__)


def _read_samples(folder: Path) -> dict[int, dict]:
    """``samples.jsonl`` (and ``samples-rankNNN.jsonl``) -> {index: facts}, when the run wrote them.

    Each is read as a plain file of the folder (a link is refused); each line's fields are checked:
    ``index`` an int >= 0, ``class``/``label`` an int or a string, ``score``/``probability`` a
    number, ``metrics`` an object of numbers.
    """
    out: dict[int, dict] = {}
    for f in sorted(p for p in folder.iterdir() if _SAMPLES_RE.fullmatch(p.name)):
        text = rf.read_plain(f).decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict) or "index" not in rec:
                raise expected("out_dir", f"one JSON object with an 'index' per line of {f.name}",
                               f"line {n}: {line[:80]!r}")
            rec = _checked_facts(rec, f"{f.name} line {n}")
            i = rec.pop("index")
            merged = out.setdefault(i, {})
            merged.setdefault("metrics", {}).update(rec.pop("metrics", None) or {})
            merged.update(rec)
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_FACTS = {"index": ("an int >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
          "class": ("an int or a string", lambda v: v is None or isinstance(v, str) or
                    (isinstance(v, int) and not isinstance(v, bool))),
          "score": ("a number", lambda v: v is None or _number(v)),
          "probability": ("a number", lambda v: v is None or _number(v)),
          "metrics": ("an object {name: number}", lambda v: v is None or (isinstance(v, dict) and all(
              isinstance(k, str) and k and _number(m) for k, m in v.items())))}
_FACTS["label"] = _FACTS["class"]


def _checked_facts(rec: dict, where: str) -> dict:
    """One line of ``samples.jsonl`` with each known field of the right type, else an error
    naming the file, the line and the field."""
    for key, (what, ok) in _FACTS.items():
        if key in rec and not ok(rec[key]):
            raise rf.FolderError(f"out_dir: expected '{key}' to be {what} in {where}, got {_short(rec[key])}")
    return rec


class Inputs:
    """The run's samples: given (array or data set), from ``inputs.json`` (image files read as
    ``reading`` says, see :func:`report`), or none."""

    def __init__(self, inputs, folder: Path, n: int, reading=None):
        self.reading = reading
        self.files: list[Path] | None = None
        self.data: Any = None  # an array or a data set (kind "data"), else None
        self.kind = None
        self.rank = None
        if inputs is not None:
            if hasattr(inputs, "detach"):
                inputs = inputs.detach().cpu().numpy()
            if not hasattr(inputs, "__getitem__") or not hasattr(inputs, "__len__"):
                raise expected("inputs", "an array (N, C, *S) or a data set with len() and indexing",
                               type(inputs).__name__)
            self.data, self.kind = inputs, "data"
        else:
            self.files = _input_paths(folder)
            self.kind = None if self.files is None else "files"
        if self.kind is not None:
            count = len(self.data) if self.kind == "data" else len(cast(list, self.files))
            if count < n:
                raise expected("inputs", f"at least the run's {n} samples", f"{count}")
            x, _ = self.sample(0)
            self.rank = x.ndim - 1

    def name(self, i: int) -> str:
        return self.files[i].name if self.files is not None else f"sample {i}"

    def sample(self, i: int):
        """``(x (C, *S) float32, label or None)`` as the network sees it."""
        if self.kind == "data":
            item = self.data[i]
            x, y = (item[0], item[1] if len(item) > 1 else None) if isinstance(item, (tuple, list)) else (item, None)
        else:
            x, y = self._file(cast(list, self.files)[i], self.reading), None  # kind "files"
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        if hasattr(y, "item"):
            y = y.item()
        return x.astype(np.float32), y

    def _file(self, path: Path, args):
        from .loading import CliError, load_npy, read_image

        data = _read_input(path)
        try:
            if path.suffix.lower() == ".npy":
                return load_npy(path, "inputs", data)
            if args is None:
                from types import SimpleNamespace

                args = SimpleNamespace(size=None, mean=None, std=None, gray=False, crop="center",
                                       limit=float("inf"))
            return read_image(path, args, data).x
        except CliError as err:
            raise GradattrError(str(err)) from None

    def picture(self, i: int, spatial: tuple) -> np.ndarray:
        """What to draw under the map: an image file as it looks (resized to the map, its values
        scaled from its own bit depth), else the sample."""
        files = cast(list, self.files)  # read only for kind "files"
        if self.kind == "files" and files[i].suffix.lower() != ".npy":
            from PIL import Image

            from .loading import DEEP_MODES, image_array

            with Image.open(io.BytesIO(_read_input(files[i]))) as im:
                rgb = im.convert("RGB") if im.mode not in DEEP_MODES else im
                rgb = rgb.resize((spatial[1], spatial[0]), Image.Resampling.BILINEAR)
                return np.moveaxis(image_array(rgb, gray=False), -1, 0)
        x, _ = self.sample(i)
        if tuple(x.shape[1:]) != tuple(spatial):
            raise expected("inputs", f"samples of the maps' size {tuple(spatial)} (C, *S)",
                           f"sample {i} of shape {x.shape}")
        return x


def _where(path: Path, folder: Path, first: str | None = None) -> Path:
    """The input folder of ``inputs.json``/``inputs.txt``: as written (relative to where the run was
    started), else beside the run; the first of these that holds the file ``first``, else the first
    that exists."""
    bases = [path] if path.is_absolute() else [path, folder.parent / path, folder / path]
    found = [b for b in bases if b.is_dir()]
    for base in found:
        if first is None or os.path.lexists(base / first):
            return base
    if found:
        return found[0]
    raise expected("out_dir", "inputs.json naming a folder that exists (run the report from the folder the "
                   "run was started in)", f"{str(path)!r}, not found")


def _read_input(path: Path) -> bytes:
    """An input file's bytes: a plain file of the input folder, never through a link."""
    try:
        return rf.read_plain(path, "inputs.json", "the input folder")
    except FileNotFoundError:
        raise expected("out_dir", "inputs.json naming files that exist (run the report from the folder the "
                       "run was started in)", f"{str(path)!r}, not found") from None


def _score(net, source: Inputs, maps, order, target, metrics, batch_size: int, samples: dict,
           input_format: str | None = None) -> None:
    """Class, score, probability (and metrics) of every sample, by forward passes of ``net``."""
    import torch

    from . import metrics as metric_fns

    was = net.training
    params = list(net.parameters())
    device = params[0].device if params else torch.device("cpu")
    net.eval()
    try:
        for s in range(0, len(order), batch_size):
            rows = list(range(s, min(s + batch_size, len(order))))
            got = [source.sample(int(order[r])) for r in rows]
            x = torch.from_numpy(np.stack([g[0] for g in got])).to(device)
            with torch.no_grad():
                y = net(x)
            if isinstance(y, dict):
                y = y.get("logits", y.get("out", next(iter(y.values()))))
            if isinstance(y, (tuple, list)):
                y = y[0]
            if not isinstance(y, torch.Tensor) or y.ndim < 2:
                raise expected("net", "a classifier with an (N, classes, ...) output to score",
                               f"an output of type {type(y).__name__}")
            y = y.flatten(2).sum(-1) if y.ndim > 2 else y
            if isinstance(target, int) and not isinstance(target, bool):
                cls = torch.full((len(rows),), target, dtype=torch.long)
            elif target == "label" and all(g[1] is not None for g in got):
                cls = torch.tensor([int(g[1]) for g in got])
            else:
                cls = y.argmax(1).cpu()
            prob = torch.softmax(y.float(), 1).cpu()
            for k, r in enumerate(rows):
                i, c = int(order[r]), int(cls[k])
                facts = samples.setdefault(i, {})
                facts.update({"class": c, "score": float(y[k, c]), "probability": float(prob[k, c])})
                if got[k][1] is not None:
                    facts.setdefault("label", got[k][1])
            if "deletion" in metrics:
                m = torch.from_numpy(np.ascontiguousarray(maps[rows]))
                auc = metric_fns.deletion(net, x, m, cls[:, None].to(device), steps=20, batch_size=batch_size,
                                          input_format=input_format or "BC" + "S" * (x.ndim - 2)).auc
                auc = np.asarray(auc.detach().cpu() if hasattr(auc, "detach") else auc).reshape(len(rows), -1)[:, 0]
                for k, r in enumerate(rows):
                    samples[int(order[r])].setdefault("metrics", {})["deletion"] = float(auc[k])
    finally:
        net.train(was)


# ------------------------------------------------------------------------------ pictures
def _png(a: np.ndarray, img: rf.PlainDir, name: str, longer: int | None = None) -> str:
    """Write an ``H x W x 3`` uint8 array as PNG ``name`` in ``img``; return its name relative to the page.

    A smaller picture is enlarged by the whole factor that makes its longer side at
    least ``longer`` (nearest: map cells stay sharp squares); a larger one is reduced
    to ``longer``.
    """
    from PIL import Image

    im = Image.fromarray(a)
    if longer is not None and longer > max(im.size):  # enlarged by a whole factor: every pixel a square
        factor = -(-longer // max(im.size))
        im = im.resize((im.size[0] * factor, im.size[1] * factor), Image.Resampling.NEAREST)
    elif longer is not None and longer < max(im.size):
        scale = longer / max(im.size)
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                       Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    img.write(name, buf.getvalue())
    return f"img/{name}"


def _svg(x: np.ndarray | None, cam: np.ndarray, width: int, height: int) -> str:
    """A sequence (its channels, min-max scaled together) above its importance, as inline SVG."""
    from . import plot

    t = cam.shape[-1]
    m = plot.rescale(cam.astype(np.float64))
    jet = _jet()
    step = width / t
    parts = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" role="img">']
    top = height * 0.62
    for k in range(t):  # the importance as a tinted band behind the lines
        r, g, b = jet[min(255, int(m[k] * 255))]
        parts.append(f'<rect x="{k * step:.2f}" y="0" width="{step + 0.3:.2f}" height="{top:.1f}" '
                     f'fill="rgb({r},{g},{b})" fill-opacity="0.35"/>')
    if x is not None:
        a = plot.rescale(x.reshape(-1, t).astype(np.float64))
        colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
        for c, row in enumerate(a[:6]):
            pts = " ".join(f"{(k + 0.5) * step:.1f},{top - 2 - v * (top - 4):.1f}" for k, v in enumerate(row))
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colours[c]}" stroke-width="1"/>')
    base = height - 2
    pts = " ".join(f"{(k + 0.5) * step:.1f},{base - v * (height - top - 6):.1f}" for k, v in enumerate(m))
    parts.append(f'<polyline points="{(0.5 * step):.1f},{base} {pts} {((t - 0.5) * step):.1f},{base}" '
                 'fill="#d62728" fill-opacity="0.3" stroke="#d62728" stroke-width="1"/>')
    parts.append("</svg>")
    return "".join(parts)


def _jet() -> list[tuple[int, int, int]]:
    import matplotlib

    lut = matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3]
    return [tuple(int(round(255 * v)) for v in rgb) for rgb in lut]


def _card(i: int, cam: np.ndarray, x, rank: int, info: dict, names, img: rf.PlainDir, thumb: int,
          name: str) -> dict:
    from . import plot

    cam = np.asarray(cam, dtype=np.float64)
    card = {"index": i, "name": name, "min": float(cam.min()), "max": float(cam.max()),
            "metrics": {k: float(v) for k, v in (info.get("metrics") or {}).items()}}
    for key in ("class", "label"):
        if info.get(key) is not None:
            card[key] = int(info[key]) if isinstance(info[key], (int, np.integer)) or str(info[key]).isdigit() \
                else info[key]
    for key in ("score", "probability"):
        if info.get(key) is not None:
            card[key] = float(info[key])
    c = card.get("class")
    card["class_name"] = (names[c] if names and isinstance(c, int) and 0 <= c < len(names)
                          else "" if c is None else str(c))
    if rank == 1:
        card["svg"] = _svg(x, cam, 240, 90)
        card["svg_full"] = _svg(x, cam, 900, 320)
        return card
    if rank == 2:
        under = x if x is not None else np.zeros(cam.shape)
        if x is not None:
            card["input"] = _png(plot.overlay_array(under, cam, alpha=0.0), img, f"{i}_input.png", thumb)
        alpha = 0.5 if x is not None else 1.0
        full = plot.overlay_array(under, cam, alpha=alpha)
        card["overlay"] = _png(full, img, f"{i}_overlay.png", thumb)
        card["full"] = _png(full, img, f"{i}_full.png", max(512, max(cam.shape)))
        return card
    under = x if x is not None else np.zeros(cam.shape)
    alpha = 0.5 if x is not None else 1.0
    full = plot.volume_array(under, cam, alpha=alpha)
    if x is not None:
        card["input"] = _png(plot.volume_array(under, cam, alpha=0.0), img, f"{i}_input.png", 2 * thumb)
    card["overlay"] = _png(full, img, f"{i}_overlay.png", 2 * thumb)
    card["full"] = _png(full, img, f"{i}_full.png", max(900, full.shape[1]))
    return card


# ------------------------------------------------------------------------------ the page
def _fmt(v, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def metric_token(name: str) -> str:
    """The token a metric's name becomes in the page's attribute names and sort keys: the name itself
    when it is lower-case letters and digits starting with a letter (``deletion``), else ``_`` and
    the hex digits of its UTF-8 bytes (``"a b"`` -> ``_612062``), so that no name can end an
    attribute, add one, or meet another name's token.

    >>> metric_token("deletion"), metric_token("a b"), metric_token('x" onerror="y')
    ('deletion', '_612062', '_7822206f6e6572726f723d2279')
    """
    return name if re.fullmatch(r"[a-z][a-z0-9]*", name) else "_" + name.encode("utf-8").hex()


def _html(heading: str, cards: list[dict], run: dict, rank: int, metric_names: list[str]) -> str:
    e = html.escape  # quote=True: escapes & < > " ', for text and for quoted attribute values alike
    jet = _jet()
    gradient = ", ".join(f"rgb{jet[k]}" for k in range(0, 256, 32)) + f", rgb{jet[255]}"
    classes = sorted({(c.get("class"), c["class_name"]) for c in cards if c.get("class") is not None},
                     key=lambda t: (str(type(t[0])), t[0]))
    keys = [("index", "sample"), ("class", "class"), ("score", "score"), ("probability", "probability")] + \
        [(f"metric-{metric_token(m)}", m + (" (lower: more faithful)" if m == "deletion" else ""))
         for m in metric_names]
    options = "".join(f'<option value="{e(k)}:{d}">{e(label)} {"↑" if d == "asc" else "↓"}</option>'
                      for k, label in keys for d in ("asc", "desc"))
    class_options = '<option value="">all classes</option>' + "".join(
        f'<option value="{e(str(c))}">{e(str(c))}{": " + e(n) if n and n != str(c) else ""}</option>'
        for c, n in classes)
    body = []
    for c in cards:
        data = {"index": c["index"], "class": c.get("class", ""), "score": _fmt(c.get("score"), 17),
                "probability": _fmt(c.get("probability"), 17), "name": c["name"], "min": repr(c["min"]),
                "max": repr(c["max"]), "full": c.get("full", ""), "label": c.get("label", ""),
                "class-name": c["class_name"]}
        data.update({f"metric-{metric_token(m)}": repr(v) for m, v in c["metrics"].items()})
        attrs = " ".join(f'data-{k}="{e(str(v))}"' for k, v in data.items())
        facts = []
        if c.get("class") is not None:
            facts.append(f'<span class="cls">{e(str(c["class"]))}{" " + e(c["class_name"]) if c["class_name"] and c["class_name"] != str(c["class"]) else ""}</span>')
        if c.get("label") not in (None, ""):
            facts.append(f'<span>label {e(str(c["label"]))}</span>')
        if c.get("score") is not None:
            facts.append(f'<span>score {_fmt(c["score"])}</span>')
        if c.get("probability") is not None:
            facts.append(f'<span>p = {c["probability"]:.3f}</span>')
        facts += [f'<span>{e(m)} {_fmt(v, 3)}</span>' for m, v in c["metrics"].items()]
        if rank == 1:
            pics = f'<div class="svg">{c["svg"]}</div><template class="big">{c["svg_full"]}</template>'
        else:
            pics = "".join(f'<img src="{e(c[k])}" alt="{k} of {e(c["name"])}" loading="lazy">'
                           for k in ("input", "overlay") if k in c)
        body.append(f'<div class="card" id="card-{int(c["index"])}" tabindex="0" {attrs}>'
                    f'<div class="pics">{pics}</div><div class="name">{e(c["name"])}</div>'
                    f'<div class="facts">{" ".join(facts)}</div></div>')
    options_text = ", ".join(f"{k}={v}" for k, v in (run.get("options") or {}).items())
    what = f'method {e(str(run.get("method", "?")))}, target {e(str(run.get("target")))}' + (
        f", {e(options_text)}" if options_text else "")
    kind = {1: "sequences", 2: "images", 3: "volumes (slices through each map's maximum)"}[rank]
    return _PAGE.format(title=e(heading), what=what, n=len(cards), kind=kind, options=options,
                        class_options=class_options, cards="\n".join(body), gradient=gradient,
                        script=_SCRIPT)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }}
header {{ position: sticky; top: 0; background: #fff; padding: 8px 16px; border-bottom: 1px solid #ccc; z-index: 1; }}
header h1 {{ font-size: 18px; margin: 0 0 4px; }}
header .run {{ color: #555; font-size: 12px; }}
.controls {{ display: flex; gap: 12px; align-items: center; flex-wrap: wrap; margin-top: 6px; }}
#grid {{ display: flex; flex-wrap: wrap; gap: 10px; padding: 12px 16px; }}
.card {{ background: #fff; border: 1px solid #ccc; border-radius: 6px; padding: 6px; cursor: pointer; width: min-content; }}
.card:hover, .card:focus {{ border-color: #1f77b4; outline: none; box-shadow: 0 0 0 2px #1f77b455; }}
.card .pics {{ display: flex; gap: 4px; }}
.card img {{ display: block; image-rendering: pixelated; max-width: 256px; }}
.card .name {{ font-size: 12px; color: #555; margin-top: 4px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.card .facts span {{ display: inline-block; font-size: 12px; margin-right: 6px; white-space: nowrap; }}
.card .facts .cls {{ font-weight: 600; }}
#detail {{ position: fixed; inset: 0; background: #000a; display: flex; align-items: center; justify-content: center; z-index: 2; }}
#detail[hidden] {{ display: none; }}
#detail .box {{ background: #fff; padding: 16px; border-radius: 8px; max-width: 95vw; max-height: 95vh; overflow: auto; }}
#detail img {{ image-rendering: pixelated; max-width: 90vw; max-height: 75vh; display: block; }}
.scale {{ display: flex; align-items: center; gap: 8px; margin-top: 8px; font-size: 12px; }}
.scale .bar {{ width: 260px; height: 14px; background: linear-gradient(to right, {gradient}); border: 1px solid #888; }}
</style></head>
<body>
<header><h1>{title}</h1>
<div class="run">{n} {kind}; {what}. Click a card for the full-size map.</div>
<div class="controls">
<label>sort by <select id="sort">{options}</select></label>
<label>class <select id="class-filter">{class_options}</select></label>
<label>name <input id="name-filter" type="search" placeholder="part of a file name"></label>
<span id="shown"></span>
</div></header>
<main id="grid">
{cards}
</main>
<div id="detail" hidden><div class="box">
<div id="detail-title"></div>
<div id="detail-picture"></div>
<div class="scale"><span id="scale-min"></span><div class="bar"></div><span id="scale-max"></span>
<span>(the map's raw values: its minimum to its maximum)</span></div>
<p><button id="close">close (Esc)</button></p>
</div></div>
<script>{script}</script>
</body></html>
"""

_SCRIPT = r"""
(function () {
  const grid = document.getElementById('grid');
  const cards = Array.from(grid.querySelectorAll('.card'));
  const sort = document.getElementById('sort');
  const byClass = document.getElementById('class-filter');
  const byName = document.getElementById('name-filter');
  const shown = document.getElementById('shown');
  const detail = document.getElementById('detail');
  function value(card, key) {
    const v = card.getAttribute('data-' + key);
    if (v === null) return null;
    if (v === undefined || v === '') return null;
    const f = parseFloat(v);
    return isNaN(f) ? v : f;
  }
  function apply() {
    const [key, dir] = sort.value.split(':');
    const sign = dir === 'desc' ? -1 : 1;
    const sorted = cards.slice().sort((a, b) => {
      const va = value(a, key), vb = value(b, key);
      if (va === null && vb === null) return value(a, 'index') - value(b, 'index');
      if (va === null) return 1;
      if (vb === null) return -1;
      if (va < vb) return -sign;
      if (va > vb) return sign;
      return value(a, 'index') - value(b, 'index');
    });
    const cls = byClass.value, name = byName.value.toLowerCase();
    let n = 0;
    for (const card of sorted) {
      const ok = (cls === '' || card.dataset.class === cls) &&
                 (name === '' || card.dataset.name.toLowerCase().includes(name));
      card.hidden = !ok;
      n += ok ? 1 : 0;
      grid.appendChild(card);
    }
    shown.textContent = n + ' of ' + cards.length + ' shown';
  }
  function open(card) {
    const pic = document.getElementById('detail-picture');
    pic.innerHTML = '';
    const big = card.querySelector('template.big');
    if (big) {
      pic.appendChild(big.content.cloneNode(true));
    } else {
      const img = document.createElement('img');
      img.src = card.dataset.full;
      img.alt = 'full-size map of ' + card.dataset.name;
      pic.appendChild(img);
    }
    const facts = card.querySelector('.facts').textContent;
    document.getElementById('detail-title').textContent = card.dataset.name + (facts ? ': ' + facts : '');
    document.getElementById('scale-min').textContent = Number(card.dataset.min).toPrecision(4);
    document.getElementById('scale-max').textContent = Number(card.dataset.max).toPrecision(4);
    detail.dataset.index = card.dataset.index;
    detail.hidden = false;
  }
  function close() { detail.hidden = true; }
  for (const card of cards) {
    card.addEventListener('click', () => open(card));
    card.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') open(card); });
  }
  document.getElementById('close').addEventListener('click', close);
  detail.addEventListener('click', (ev) => { if (ev.target === detail) close(); });
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') close(); });
  sort.addEventListener('change', apply);
  byClass.addEventListener('change', apply);
  byName.addEventListener('input', apply);
  apply();
})();
"""
