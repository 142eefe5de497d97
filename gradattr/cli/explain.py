"""``gradattr explain``: the map of an image, a .npy array or every file of a folder (see :mod:`gradattr.cli`)."""
from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GradattrError
from ..loading.cli_error import CliError, one_line
from ..loading.input_files import Item, check_memory, read_array, read_classes, read_image
from ..loading.models import Loaded, load_model
from .common import EXTRA_METHODS, PROG, check_option, parse_bytes

if TYPE_CHECKING:
    import argparse

    from ..registry import Info


def input_files(target: str) -> list[Path]:
    path = Path(target)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CliError(f"INPUT: the folder {target} has no files")
        return files
    if path.is_file():
        return [path]
    raise CliError(f"INPUT: no such file or folder {target!r}")


def read_inputs(files: list[Path], args, loaded: Loaded, progress: bool) -> list[Item]:
    items = []
    for i, f in enumerate(files, 1):
        if progress and len(files) > 1:
            print(f"{PROG}: reading [{i}/{len(files)}] {f.name}", file=sys.stderr, flush=True)
        items.append(read_array(f, args, loaded) if f.suffix.lower() == ".npy" else read_image(f, args))
    return items


# -- explain --------------------------------------------------------------------------
def _label_index(label: str, classes: list[str]) -> int | None:
    """The index of ``label`` in ``classes``: exact, else case-insensitive when only one matches."""
    if label in classes:
        return classes.index(label)
    folded = [i for i, c in enumerate(classes) if c.casefold() == label.casefold()]
    return folded[0] if len(folded) == 1 else None


def _class_scores(net, item: Item, device, cls: int | None) -> list[tuple[int, float, float]] | None:
    """Per sample: (class, score, softmax probability) of class ``cls`` (None: the top class).

    ``None`` when the network is not a classifier with an ``(N, K)`` output.
    """
    import torch

    from ..prep import prepare_call

    call = prepare_call(net, item.x, input_format=item.input_format, device=device)
    x = call.x
    with call.borrowed(), torch.no_grad():
        y = net(x)
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != x.shape[0] or y.shape[1] < 2:
        return None
    if cls is not None and not 0 <= cls < y.shape[1]:
        return None
    p = torch.softmax(y.float(), 1)
    chosen = p.argmax(1) if cls is None else torch.full((y.shape[0],), cls)
    return [(int(c), float(y[i, c]), float(p[i, c])) for i, c in enumerate(chosen)]


def _class_text(score: tuple[int, float, float] | None, classes) -> str:
    if score is None:
        return ""
    c, s, p = score
    name = f" '{classes[c]}'" if classes and c < len(classes) else ""
    return f"class {c}{name} score {s:.4g} p={p:.3f}"


def _explain_one(loaded: Loaded, item: Item, args, target, classes, progress: bool):
    import gradattr

    accepted = set(gradattr.method_info(args.method).options)
    options = {"device": args.device, "input_format": item.input_format}
    if classes is not None and "classes" in accepted:
        options["classes"] = classes
    if args.feature_layer is not None:
        options["feature_layer"] = args.feature_layer
    if args.upsampling is not None:
        options["upsampling"] = args.upsampling
    if "progress" in accepted and progress:
        options["progress"] = True
    if loaded.input_shape is not None:
        import torch

        from ..inputs import prepare

        xt, _ = prepare(item.x, loaded.net, item.input_format, torch.device("cpu"), torch.float32)
        if tuple(xt.shape) != loaded.input_shape:
            raise CliError(f"INPUT: the exported program takes inputs of shape {loaded.input_shape} (its "
                           f"shapes are static), got {tuple(xt.shape)} from {item.path.name}; resize "
                           "with --size or re-export with dynamic_shapes")
        if "batch_size" in accepted:
            options["batch_size"] = loaded.input_shape[0]  # a static batch: perturbed copies one batch at a time
    if "return_layers" in accepted:
        maps, feat = gradattr.attribute(loaded.net, item.x, target, method=args.method, return_layers=True,
                                        **options)[:2]
    else:
        maps, feat = gradattr.attribute(loaded.net, item.x, target, method=args.method, **options), None
    return np.asarray(maps.detach().cpu() if hasattr(maps, "detach") else maps), feat


def _picture(sample: np.ndarray, cam: np.ndarray, title: str, image=None, *, method: str = "") -> bytes:
    """A PNG of ``cam`` over ``image`` (a picture file) or over ``sample (C, *s)``, by :mod:`gradattr.plot`;
    ``method``: the method's title, naming a sequence's importance axis ("Grad-CAM++ importance")."""
    from .. import plot

    rank = sample.ndim - 1
    if image is not None:
        fig = plot.overlay(image, cam, title=title, colorbar=True)
    elif rank == 1:
        fig = plot.sequence(sample, cam, title=title, ylabel=f"{method} importance".strip())
    elif rank == 2:
        fig = plot.overlay(sample.mean(0), cam, title=title, colorbar=True)
    elif rank == 3:
        fig = plot.volume(sample, cam, title=title)
    else:
        raise CliError(f"--out: expected a sequence, an image or a volume to draw, got {rank} spatial dims")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _batch(item: Item, net) -> tuple[int, bool]:
    """(samples, batched) of an item as gradattr will read it."""
    import torch

    from ..inputs import prepare

    xt, layout = prepare(item.x, net, item.input_format, torch.device("cpu"), torch.float32)
    return int(xt.shape[0]), bool(layout.batched)


def _samples(item: Item, maps: np.ndarray, net) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a batched item into (x of one sample (C, *s), map) pairs."""
    import torch

    from ..comparison import channel_reduce
    from ..inputs import prepare

    xt, layout = prepare(item.x, net, item.input_format, torch.device("cpu"), torch.float32)
    xs = xt.numpy()
    rank = xs.ndim - 2
    pairs = [(xs[0], maps)] if not layout.batched else [(xs[i], maps[i]) for i in range(xs.shape[0])]
    return [(x, channel_reduce(m, rank, 0)) for x, m in pairs]


def _title(item: Item, j: int | None, method: str, score, classes, explains_class: bool, target=None) -> str:
    """Two lines: the method and the class (index and name), then the score and the file."""
    name = item.path.name if j is None else f"{item.path.name}[{j}]"
    if item.prep:
        name += f" ({item.prep})"
    if not explains_class:
        return f"{method}: no class (features only)\n{name}"
    if score is None:  # not a classifier's (N, K) output: no class name or probability to show
        return f"{method}" + ("" if target is None else f": target {target!r}") + f"\n{name}"
    c, s, p = score
    label = f" '{classes[c]}'" if classes and c < len(classes) else ""
    return f"{method}: class {c}{label}\nscore {s:.4g} (p={p:.3f}), {name}"


def cmd_explain(args) -> int:
    """``gradattr explain``: explain every input, writing each one's outputs together."""
    import gradattr

    classes, target = _check_arguments(args, gradattr.list_methods())
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    files = input_files(args.input)
    _check_inputs(args, files)
    loaded = load_model(args.model, args.weights, trust=args.trust_model, random_weights=args.random_weights)
    items = read_inputs(files, args, loaded, progress)
    folder = len(items) > 1 or Path(args.input).is_dir()

    big = max(items, key=lambda it: it.x.size)
    check_memory(big.x.shape, big.path.name, args.limit, sum(4 * it.x.size for it in items))

    counts = [_batch(it, loaded.net) for it in items]
    out_paths = _destinations(args.out, items, folder, "--out", ".png",
                              [n if batched else 1 for n, batched in counts], args.method)
    map_paths = _destinations(args.save_map, items, folder, "--save-map", ".npy", [1] * len(items), args.method)
    _check_writable([p for ps in (out_paths or []) + (map_paths or []) for p in ps], args.overwrite)

    cls = args.target
    if args.label is not None:  # case-insensitive when only one name matches; else gradattr's own error
        cls = _label_index(args.label, classes)
        target = args.label if cls is None else cls
    job = _Job(args, loaded, gradattr.method_info(args.method), target, cls, classes, progress,
               out_paths, map_paths)

    # explain and write one input at a time: its outputs appear together (each written under a
    # temporary name, all renamed once all are written); a failure or Ctrl-C keeps the outputs of
    # the inputs finished before it, and says how many
    finished: list[str] = []
    try:
        for k, item in enumerate(items):
            if folder and progress:
                print(f"{PROG}: explaining [{k + 1}/{len(items)}] {item.path.name}", file=sys.stderr, flush=True)
            line = _explain_and_write(job, k, item)
            finished.append(item.path.name)
            print(line, flush=True)
    except KeyboardInterrupt:
        if not finished:
            raise
        raise Interrupted(f"interrupted; kept the outputs of {_kept(finished, len(items))}, each written "
                          "whole; the others have none") from None
    except Exception as err:
        if not finished or args.debug:
            raise
        text = one_line(err) if isinstance(err, (CliError, GradattrError)) else \
            f"{type(err).__name__}: {one_line(err)}"
        raise CliError(f"{text} (kept the outputs of {_kept(finished, len(items))}, finished before the "
                       "failure)") from None
    return 0


def _check_arguments(args, methods: list[str]):
    """``(classes, target)`` from the arguments, each checked before anything is loaded."""
    if args.method not in methods:
        close = difflib.get_close_matches(args.method, methods, n=3, cutoff=0.5)
        hint = (f"; did you mean {', '.join(map(repr, close))}?" if close else "; see `gradattr methods`")
        extra = " (random maps are a baseline for gradattr.compare only)" if args.method in EXTRA_METHODS else ""
        raise CliError(f"--method: expected one of {', '.join(methods)}, got {args.method!r}{extra}{hint}")
    if args.target is not None and args.label is not None:
        raise CliError("--label: expected either --target or --label, got both")
    classes = read_classes(args.classes)
    if args.label is not None and classes is None:
        raise CliError("--label: expected --classes FILE (one class name per line) to look the label up in")
    target = args.target if args.target is not None else args.label
    if args.upsampling is not None:
        args.upsampling = check_option("upsampling", args.upsampling)
    args.device = check_option("device", args.device)
    if args.out is not None and args.upsampling == "none":
        raise CliError("--out: expected maps at the input's size to draw; drop --upsampling none")
    args.limit = parse_bytes(args.max_memory, "--max-memory")
    return classes, target


def _check_inputs(args, files: list[Path]) -> None:
    """``--input-format`` only with arrays; matplotlib present when a picture is asked for."""
    images = [f for f in files if f.suffix.lower() != ".npy"]
    if args.input_format is not None and images:
        raise CliError(f"--input-format: expected only with .npy array inputs (images are read as H x W x C "
                       f"and given to the network as (C, H, W)), got {args.input_format!r} with the image "
                       f"{images[0].name}")
    if args.out is not None:
        from .. import plot
        try:
            plot.require_matplotlib()  # fail early, before any work, when matplotlib is missing
        except GradattrError as err:
            raise CliError(f"--out: the picture needs matplotlib: {one_line(err)}") from None


@dataclass(frozen=True)
class _Job:
    """What every input of one ``gradattr explain`` shares."""

    args: argparse.Namespace
    loaded: Loaded
    info: Info  # gradattr.method_info of the method
    target: object
    cls: int | None  # the class index explained, when known
    classes: list[str] | None
    progress: bool
    out_paths: list | None
    map_paths: list | None


def _explain_and_write(job: _Job, k: int, item: Item) -> str:
    """Explain input ``k`` and write its outputs together; returns the line that reports it."""
    args, loaded, info, target = job.args, job.loaded, job.info, job.target
    try:
        maps, feat = _explain_one(loaded, item, args, target, job.classes, job.progress)
        scores = None
        if info.needs_target and (target is None or job.cls is not None):
            scores = _class_scores(loaded.net, item, args.device, job.cls)
    except RuntimeError as err:
        raise _channel_error(err, item, args) or err
    outputs = []
    if job.map_paths is not None:
        buf = io.BytesIO()
        np.save(buf, maps.astype(np.float32))
        outputs.append(("--save-map", job.map_paths[k][0], buf.getvalue()))
    if job.out_paths is not None:
        samples = _samples(item, maps, loaded.net)
        for j, ((xs, cam), path) in enumerate(zip(samples, job.out_paths[k])):
            title = _title(item, None if len(samples) == 1 else j, args.method,
                           scores[j] if scores else None, job.classes, info.needs_target, target)
            outputs.append(("--out", path, _picture(xs, cam, title, item.image, method=info.title)))
    written = write_together(outputs, item.path.name)
    return _report(item, maps, feat, scores, target, job.classes, written, args.method, info.needs_target)


def _kept(finished: list[str], total: int) -> str:
    last = f"; the last: {finished[-1]}" if len(finished) > 1 else f": {finished[0]}"
    return f"{len(finished)} of {total} inputs{last}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was kept (said by :func:`reporting_errors`)."""


_CHANNELS = re.compile(r"expected input\[[0-9, ]+\] to have (\d+) channels, but got (\d+) channels")


def _channel_error(err: RuntimeError, item: Item, args) -> CliError | None:
    """torch's channel-count error of the first convolution, said with the argument that fixes it."""
    m = _CHANNELS.search(str(err))
    if m is None:
        return None
    want, got = int(m.group(1)), int(m.group(2))
    shape = "x".join(map(str, np.shape(item.x)))
    plural = "s" if want > 1 else ""
    if item.image is None:
        return CliError(f"INPUT: expected {want} channel{plural}, as the network's first layer takes, got {got} "
                        f"in {item.path.name} (shape {shape}, read as {item.input_format or 'PyTorch layout'}); "
                        "pass an array with that many channels, or --input-format if they lie on another axis")
    if args.gray:
        return CliError(f"--gray: expected {want} channel{plural}, as the network's first layer takes, got {got} "
                        f"from {item.path.name} read with --gray; drop --gray to read images as RGB"
                        + ("" if want == 3 else f" (the network takes {want})"))
    return CliError(f"INPUT: expected {want} channel{plural}, as the network's first layer takes, got {got} "
                    f"from {item.path.name} (images are read as RGB)"
                    + ("; pass --gray to read them as one grey channel" if want == 1 else ""))


def write_together(outputs: list[tuple[str, Path, bytes]], name: str) -> list[str]:
    """Write ``(flag, path, content)`` all or none: each under a unique temporary name in its
    folder, then all renamed; on failure the temporaries (and any file already renamed that did
    not exist before) are removed. Returns the paths written."""
    temps: list[str] = []
    renamed: list[Path] = []
    made: list[Path] = []  # folders created here, removed again on failure when empty
    existed = {path: path.exists() for _, path, _ in outputs}
    flag = outputs[0][0] if outputs else ""
    path = outputs[0][1] if outputs else Path()
    try:
        for flag, path, content in outputs:
            missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            made.extend(missing)
            tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any file
            temps.append(tmp)
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
        for (flag, path, _), tmp in zip(outputs, temps):
            os.replace(tmp, path)
            renamed.append(path)
    except BaseException as err:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for done in renamed:
            if not existed[done]:
                with contextlib.suppress(OSError):
                    os.unlink(done)
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, OSError):
            raise CliError(f"{flag}: could not write {path}: {one_line(err)}; none of the outputs of {name} "
                           "were written") from None
        raise
    return [str(p) for _, p, _ in outputs]


def output_names(items: list[Item], method: str, suffix: str) -> list[str]:
    """Each input's output file name in a folder: ``<stem>_<method><suffix>`` (``photo.png`` ->
    ``photo_grad_cam.png``, never the input's own name). When two inputs share a stem (``a.png``
    and ``a.jpg``), every input keeps its whole name instead (``a.png_grad_cam.png``), so no two
    inputs share an output (``a.png`` and ``a_png.png`` have different stems).

    >>> from types import SimpleNamespace as S
    >>> output_names([S(path=Path("a.png")), S(path=Path("a_png.png"))], "grad_cam", ".png")
    ['a_grad_cam.png', 'a_png_grad_cam.png']
    >>> output_names([S(path=Path("a.png")), S(path=Path("a.jpg"))], "grad_cam", ".npy")
    ['a.png_grad_cam.npy', 'a.jpg_grad_cam.npy']
    """
    stems = [it.path.stem for it in items]
    whole = len(set(stems)) < len(stems)
    return [f"{it.path.name if whole else it.path.stem}_{method}{suffix}" for it in items]


def _destinations(option: str | None, items: list[Item], folder: bool, flag: str, suffix: str,
                  counts: list[int], method: str) -> list[list[Path]] | None:
    """Where each item's files go: ``counts[k]`` paths for item ``k`` (checked here, written later).

    A folder (``folder`` INPUT, or an existing folder given for one input) gets
    :func:`output_names` (``a.png`` -> ``a_grad_cam.npy``); a file name without
    ``suffix`` gets it appended. Several samples of one input get ``_0``, ``_1``,
    ... before the suffix.
    """
    if option is None:
        return None
    dest = Path(option)
    if folder:
        if dest.exists() and not dest.is_dir():
            raise CliError(f"{flag}: expected a folder for a folder INPUT, got the file {option}")
        bases = [dest / name for name in output_names(items, method, suffix)]
    elif dest.is_dir():
        bases = [dest / output_names(items[:1], method, suffix)[0]]
    else:
        if not dest.parent.is_dir():
            raise CliError(f"{flag}: expected a path in an existing folder, got {option} (no folder "
                           f"{dest.parent})")
        bases = [dest if dest.suffix.lower() == suffix else dest.with_name(dest.name + suffix)]
    out = []
    for base, n in zip(bases, counts):
        stem = base.name[:-len(suffix)]
        out.append([base] if n == 1 else [base.with_name(f"{stem}_{j}{suffix}") for j in range(n)])
    return out


def _check_writable(paths: list[Path], overwrite: bool) -> None:
    seen: dict[Path, int] = {}
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
    twice = [str(p) for p, n in seen.items() if n > 1]
    if twice:
        raise CliError(f"--out/--save-map: expected one output file per result, got {len(twice)} names used twice "
                       f"({', '.join(twice[:3])}); rename the inputs")
    folders = [str(p) for p in paths if p.is_dir()]
    if folders:
        raise CliError(f"--out/--save-map: expected file names, got the existing folder {folders[0]}")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise CliError(f"--overwrite: expected outputs that do not exist yet, got {existing[0]}{more}; "
                       "pass --overwrite to replace them")


def _report(item: Item, maps, feat, scores, target, classes, written, method, explains_class) -> str:
    parts = [f"{item.path.name}:", method]
    if not explains_class:
        parts.append("(no class)")
    elif scores is not None:
        parts.append("; ".join(_class_text(s, classes) for s in scores))
    elif target is not None:
        parts.append(f"target {target!r}")
    if feat is not None:
        parts.append(f"layer {feat!r}")
    parts.append("map " + "x".join(map(str, maps.shape)) + f" max {float(np.max(maps)):.4g}")
    if written:
        parts.append("-> " + ", ".join(written))
    return " ".join(parts)
