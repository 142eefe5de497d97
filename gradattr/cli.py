"""The ``gradattr`` command line: explain inputs, list layers, list methods.

::

    gradattr explain cat.png --model resnet.pt2 --size 224 --mean 0.485,0.456,0.406 \\
        --std 0.229,0.224,0.225 --out overlay.png --save-map map.npy
    gradattr explain frames/ --model mypkg.nets:build --weights net.pth --out overlays/
    gradattr layers --model resnet.pt2 --input-shape 1,3,224,224
    gradattr methods

Errors are one line on stderr (``gradattr: error: ...``) with a non-zero exit
status, and nothing is written: every input is read and explained before the
first file is saved.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GradattrError

PROG = "gradattr"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

MODEL_HELP = (
    "the network: a torch.export program (.pt2, saved with torch.export.save), a whole module "
    "saved with torch.save (loaded with torch.load(weights_only=False), which runs pickled code: "
    "only load files you trust), or a factory 'package.module:function' called with no arguments "
    "(e.g. torchvision.models:resnet50, with --weights FILE for its state_dict; the current folder "
    "is importable). TorchScript files cannot take hooks and are refused.")


class CliError(Exception):
    """A user error reported as one line."""


@dataclass
class Loaded:
    """A network ready for gradattr, and what is known about its input."""

    net: object
    input_ndim: int | None = None  # ndim of the example input of an exported program
    input_shape: tuple[int, ...] | None = None  # its shape, when every dim is static
    notes: list[str] = field(default_factory=list)


# -- models ---------------------------------------------------------------------------
def _ensure_cwd_importable():
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _torchscript_error(path) -> CliError:
    return CliError(f"--model: {path} is a TorchScript file, which cannot take the hooks gradattr needs; "
                    "save the model with torch.export.save (.pt2) or torch.save(model), or pass a "
                    "factory 'package.module:function' with --weights FILE")


def _from_exported(ep, path) -> Loaded:
    import torch

    try:
        net = torch.export.unflatten(ep)
    except Exception as err:  # noqa: BLE001 - report the cause in one line
        raise CliError(f"--model: could not unflatten the exported program {path}: {_one_line(err)}") from None
    ndim, shape = None, None
    try:
        users = set(ep.graph_signature.user_inputs)
        shapes = [n.meta["val"].shape for n in ep.graph.nodes if n.op == "placeholder" and n.name in users]
        if shapes:
            ndim = len(shapes[0])
            if all(isinstance(d, int) for d in shapes[0]):
                shape = tuple(int(d) for d in shapes[0])
    except Exception:  # noqa: BLE001 - only a hint for the input layout
        pass
    return Loaded(net, ndim, shape)


def load_model(spec: str, weights: str | None = None) -> Loaded:
    """Load ``--model`` (see :data:`MODEL_HELP`)."""
    import torch
    from torch import nn

    path = Path(spec)
    if path.is_file():
        if weights is not None:
            raise CliError("--weights: expected only with a factory --model 'package.module:function', "
                           f"got it with the model file {spec}")
        names = _zip_names(path)
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            raise _torchscript_error(spec)
        if path.suffix == ".pt2" or any(n.endswith("/archive_format") for n in names):
            try:
                ep = torch.export.load(str(path))
            except Exception as err:  # noqa: BLE001
                raise CliError(f"--model: could not load {spec} with torch.export.load: {_one_line(err)}") \
                    from None
            return _from_exported(ep, spec)
        _ensure_cwd_importable()
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001
            raise CliError(f"--model: could not load {spec} with torch.load: {_one_line(err)}") from None
        if isinstance(obj, torch.jit.ScriptModule):
            raise _torchscript_error(spec)
        if isinstance(obj, torch.export.ExportedProgram):
            return _from_exported(obj, spec)
        if isinstance(obj, dict):
            raise CliError(f"--model: {spec} holds a state_dict (weights only), not a model; pass the "
                           "factory that builds the network as --model 'package.module:function' and the "
                           f"file as --weights {spec}")
        if not isinstance(obj, nn.Module):
            raise CliError(f"--model: expected {spec} to hold a torch.nn.Module, got a {type(obj).__name__}")
        return Loaded(obj)
    if path.is_dir():
        raise CliError(f"--model: expected a model file or 'package.module:function', got the folder {spec}")
    if ":" not in spec:
        raise CliError(f"--model: no such file {spec!r} (expected a .pt2 or torch.save file, or a factory "
                       "'package.module:function')")
    module_name, _, attr = spec.partition(":")
    _ensure_cwd_importable()
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CliError(f"--model: cannot import {module_name!r} for factory {spec!r}: {_one_line(err)}") \
            from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise CliError(f"--model: expected {attr!r} in module {module_name!r} to be a callable factory, "
                       f"got {type(factory).__name__}")
    net = factory()
    if not isinstance(net, nn.Module):
        raise CliError(f"--model: expected factory {spec!r} to return a torch.nn.Module, got "
                       f"{type(net).__name__}")
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CliError(f"--weights: no such file {weights!r}") from None
        except Exception as err:  # noqa: BLE001
            raise CliError(f"--weights: could not load {weights} as a state_dict: {_one_line(err)}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CliError(f"--weights: expected a state_dict in {weights}, got a {type(state).__name__}")
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise CliError(f"--weights: {weights} does not fit {spec}: {_one_line(err)}") from None
    return Loaded(net)


# -- inputs ---------------------------------------------------------------------------
def _floats(text: str | None, argument: str, default: float) -> np.ndarray:
    if text is None:
        return np.array([default], dtype=np.float32)
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise CliError(f"{argument}: expected numbers separated by commas, got {text!r}") from None
    return np.asarray(vals, dtype=np.float32)


def _ints(text: str, argument: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise CliError(f"{argument}: expected integers separated by commas, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise CliError(f"{argument}: expected positive integers, got {text!r}")
    return vals


@dataclass
class Item:
    """One input file, read and preprocessed."""

    path: Path
    x: object  # numpy array handed to gradattr
    input_format: str | None
    image: object = None  # the picture of an image file (drawn under the map)


def read_image(path: Path, args) -> Item:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise CliError(f"INPUT: reading the image {path} needs Pillow (pip install pillow)") from None

    try:
        with Image.open(path) as img:
            img = img.convert("L" if args.gray else "RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise CliError(f"INPUT: cannot read {path} as an image: {_one_line(err)}") from None
    if args.size is not None:
        size = _ints(args.size, "--size")
        if len(size) not in (1, 2):
            raise CliError(f"--size: expected one number or H,W, got {args.size!r}")
        h, w = (size * 2)[:2]
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    chw = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    c = chw.shape[0]
    mean, std = _floats(args.mean, "--mean", 0.0), _floats(args.std, "--std", 1.0)
    for name, v in (("--mean", mean), ("--std", std)):
        if v.size not in (1, c):
            raise CliError(f"{name}: expected 1 or {c} values (one per channel), got {v.size}")
    if np.any(std == 0):
        raise CliError("--std: expected non-zero values, got 0")
    x = (chw - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)
    return Item(path, x.astype(np.float32), "CSS" if x.ndim == 3 else "CS", np.asarray(img))


def read_array(path: Path, args, loaded: Loaded) -> Item:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CliError(f"INPUT: cannot read {path} as a .npy array: {_one_line(err)}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise CliError(f"INPUT: expected a numeric array in {path}, got dtype {getattr(arr, 'dtype', '?')}")
    fmt = args.input_format
    if fmt is None and loaded.input_ndim is not None:  # an exported program knows its input rank
        nd = loaded.input_ndim
        if arr.ndim == nd:
            fmt = "BC" + "S" * (nd - 2)
        elif arr.ndim == nd - 1:
            fmt = "C" + "S" * (nd - 2)
        else:
            raise CliError(f"INPUT: expected an array of {nd} dims (N, C, ...) or {nd - 1} (C, ...) for "
                           f"this exported model, got shape {arr.shape} in {path}; pass --input-format")
    return Item(path, arr.astype(np.float32), fmt)


def read_inputs(target: str, args, loaded: Loaded) -> list[Item]:
    path = Path(target)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CliError(f"INPUT: the folder {target} has no files")
    elif path.is_file():
        files = [path]
    else:
        raise CliError(f"INPUT: no such file or folder {target!r}")
    items = []
    for i, f in enumerate(files, 1):
        if len(files) > 1:
            print(f"{PROG}: reading [{i}/{len(files)}] {f.name}", file=sys.stderr, flush=True)
        items.append(read_array(f, args, loaded) if f.suffix.lower() == ".npy" else read_image(f, args))
    return items


# -- explain --------------------------------------------------------------------------
def _classes(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise CliError(f"--classes: cannot read {path}: {_one_line(err)}") from None
    names = [ln.strip() for ln in lines if ln.strip()]
    if not names:
        raise CliError(f"--classes: expected one class name per line in {path}, got an empty file")
    return names


def _top_classes(net, item: Item, device) -> list[tuple[int, float]] | None:
    """Top class and softmax probability per sample, for the report (None if not a classifier)."""
    import torch

    from .engine import borrowed, resolve_device
    from .inputs import prepare

    dev = resolve_device(device, net)
    x, _ = prepare(item.x, net, item.input_format, dev, torch.float32)
    with borrowed(net, dev), torch.no_grad():
        y = net(x)
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != x.shape[0] or y.shape[1] < 2:
        return None
    p = torch.softmax(y.float(), 1)
    top = p.argmax(1)
    return [(int(c), float(p[i, c])) for i, c in enumerate(top)]


def _explain_one(loaded: Loaded, item: Item, args, target, classes):
    from .comparison import explain, method_options

    options = {"device": args.device, "input_format": item.input_format}
    if classes is not None:
        options["classes"] = classes
    if args.feature_layer is not None:
        options["feature_layer"] = args.feature_layer
    if args.upsampling is not None:
        options["upsampling"] = args.upsampling
    if loaded.input_shape is not None:
        import torch

        from .inputs import prepare

        xt, _ = prepare(item.x, loaded.net, item.input_format, torch.device("cpu"), torch.float32)
        if tuple(xt.shape) != loaded.input_shape:
            raise CliError(f"INPUT: the exported program takes inputs of shape {loaded.input_shape} (its "
                           f"shapes are static), got {tuple(xt.shape)} from {item.path.name}; resize "
                           "with --size or re-export with dynamic_shapes")
    accepted = method_options(args.method)
    if loaded.input_shape is not None and accepted is not None and "batch_size" in accepted:
        options["batch_size"] = loaded.input_shape[0]  # a static batch: perturbed copies one batch at a time
    if accepted is not None and "return_layers" in accepted:
        maps, feat = explain(loaded.net, item.x, args.method, target, return_layers=True, **options)[:2]
    else:
        maps, feat = explain(loaded.net, item.x, args.method, target, **options), None
    return np.asarray(maps.detach().cpu() if hasattr(maps, "detach") else maps), feat


def _picture(sample: np.ndarray, cam: np.ndarray, title: str, image=None) -> bytes:
    """A PNG of ``cam`` over ``image`` (a picture file) or over ``sample (C, *s)``, by :mod:`gradattr.plot`."""
    from . import plot

    rank = sample.ndim - 1
    if image is not None:
        fig = plot.overlay(image, cam, title=title)
    elif rank == 1:
        fig = plot.sequence(sample, cam, title=title)
    elif rank == 2:
        fig = plot.overlay(sample.mean(0), cam, title=title)
    elif rank == 3:
        fig = plot.volume(sample, cam, title=title)
    else:
        raise CliError(f"--out: expected a sequence, an image or a volume to draw, got {rank} spatial dims")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _samples(item: Item, maps: np.ndarray, net) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Split a batched item into (x of one sample (C, *s), map) pairs."""
    import torch

    from .comparison import channel_reduce
    from .inputs import prepare

    xt, layout = prepare(item.x, net, item.input_format, torch.device("cpu"), torch.float32)
    xs = xt.numpy()
    rank = xs.ndim - 2
    pairs = [(xs[0], maps)] if not layout.batched else [(xs[i], maps[i]) for i in range(xs.shape[0])]
    return [(x, channel_reduce(m, rank, 0)) for x, m in pairs]


def cmd_explain(args) -> int:
    if args.target is not None and args.label is not None:
        raise CliError("--label: expected either --target or --label, got both")
    classes = _classes(args.classes)
    if args.label is not None and classes is None:
        raise CliError("--label: expected --classes FILE (one class name per line) to look the label up in")
    target = args.target if args.target is not None else args.label
    if args.upsampling is not None and args.upsampling not in ("bicubic", "nearest", "none"):
        raise CliError(f"--upsampling: expected bicubic, nearest or none, got {args.upsampling!r}")
    loaded = load_model(args.model, args.weights)
    items = read_inputs(args.input, args, loaded)
    folder = len(items) > 1 or Path(args.input).is_dir()
    if args.out is not None and args.upsampling == "none":
        raise CliError("--out: expected maps at the input's size to draw; drop --upsampling none")
    if args.out is not None:
        from . import plot
        try:
            plot._mpl()  # fail early, before any work, when matplotlib is missing
        except GradattrError as err:
            raise CliError(f"--out: the picture needs matplotlib: {_one_line(err)}") from None
    out_paths = _destinations(args.out, items, folder, "--out", ".png")
    map_paths = _destinations(args.save_map, items, folder, "--save-map", ".npy")

    # 1. explain everything (nothing is written if anything fails)
    results = []
    for i, item in enumerate(items, 1):
        if folder:
            print(f"{PROG}: explaining [{i}/{len(items)}] {item.path.name}", file=sys.stderr, flush=True)
        maps, feat = _explain_one(loaded, item, args, target, classes)
        top = _top_classes(loaded.net, item, args.device) if target is None else None
        pictures = []
        if args.out is not None:
            samples = _samples(item, maps, loaded.net)
            for j, (xs, cam) in enumerate(samples):
                title = f"{item.path.name} ({args.method})" if len(samples) == 1 else \
                    f"{item.path.name}[{j}] ({args.method})"
                pictures.append(_picture(xs, cam, title, item.image))
        results.append((item, maps, feat, top, pictures))

    # 2. write
    for paths in (out_paths, map_paths):
        if paths is not None:
            paths[0].parent.mkdir(parents=True, exist_ok=True)
    for k, (item, maps, feat, top, pictures) in enumerate(results):
        written = []
        if map_paths is not None:
            np.save(map_paths[k], maps.astype(np.float32))
            written.append(str(map_paths[k]))
        if out_paths is not None:
            base = out_paths[k]
            for j, png in enumerate(pictures):
                p = base if len(pictures) == 1 else base.with_name(f"{base.stem}_{j}{base.suffix}")
                p.write_bytes(png)
                written.append(str(p))
        print(_report(item, maps, feat, top, target, classes, written, args.method))
    return 0


def _destinations(option: str | None, items: list[Item], folder: bool, flag: str, suffix: str):
    """Where each item's file goes (checked here, created only when writing)."""
    if option is None:
        return None
    dest = Path(option)
    if folder:
        if dest.exists() and not dest.is_dir():
            raise CliError(f"{flag}: expected a folder for a folder INPUT, got the file {option}")
        stems = [it.path.stem for it in items]
        return [dest / (s + ("" if stems.count(s) == 1 else it.path.suffix.replace(".", "_")) + suffix)
                for s, it in zip(stems, items)]
    if not dest.parent.is_dir():
        raise CliError(f"{flag}: the folder of {option} does not exist")
    return [dest]


def _report(item: Item, maps, feat, top, target, classes, written, method) -> str:
    parts = [f"{item.path.name}:", method]
    if top is not None:
        cls = ", ".join(f"{c}" + (f" '{classes[c]}'" if classes and c < len(classes) else "") + f" p={p:.3f}"
                        for c, p in top)
        parts.append(f"class {cls}")
    elif target is not None:
        parts.append(f"target {target!r}")
    if feat is not None:
        parts.append(f"layer {feat!r}")
    parts.append("map " + "x".join(map(str, maps.shape)) + f" max {float(np.max(maps)):.4g}")
    if written:
        parts.append("-> " + ", ".join(written))
    return " ".join(parts)


# -- layers ---------------------------------------------------------------------------
def cmd_layers(args) -> int:
    import torch

    from .engine import borrowed
    from .layers import has_layout

    shape = _ints(args.input_shape, "--input-shape")
    if len(shape) < 3:
        raise CliError(f"--input-shape: expected N,C and 1 to 3 spatial sizes, e.g. 1,3,224,224, got "
                       f"{args.input_shape!r}")
    loaded = load_model(args.model, args.weights)
    net = loaded.net
    x = torch.zeros(shape)
    n, rank = shape[0], len(shape) - 2
    seen: dict[str, tuple[int, str, tuple]] = {}
    calls = [0]

    def hook_for(name):
        def hook(module, inputs, out):
            calls[0] += 1
            if isinstance(out, torch.Tensor):
                seen[name] = (calls[0], type(module).__name__, tuple(out.shape), has_layout(out, n, rank))
        return hook

    handles = []
    try:
        with borrowed(net), torch.no_grad():  # eval mode, restored after
            for name, module in net.named_modules():
                if name:
                    handles.append(module.register_forward_hook(hook_for(name)))
            net(x)
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--input-shape: the model does not run on an input of shape {tuple(shape)}: "
                       f"{_one_line(err)}") from None
    finally:
        for h in handles:
            h.remove()
    from . import grad_cam

    try:
        _, chosen, reduction = grad_cam(net, x, return_layers=True, upsampling="none",
                                        input_format="BC" + "S" * rank)
    except GradattrError as err:
        chosen, reduction = None, None
        print(f"{PROG}: note: grad_cam cannot pick a layer automatically: {_one_line(err)}", file=sys.stderr)
    rows = sorted(((o, nm, t, s, c) for nm, (o, t, s, c) in seen.items()), key=lambda r: r[0])
    if not args.all:
        rows = [r for r in rows if r[4]]
    if not rows:
        raise CliError(f"--input-shape: no layer outputs the input's layout ({n}, C, {rank} spatial dims)")
    name_w = max(len(r[1]) for r in rows)
    type_w = max(len(r[2]) for r in rows)
    for _, nm, typ, s, cand in rows:
        mark = "*" if nm == chosen else (" " if cand or not args.all else "-")
        print(f"{mark} {nm.ljust(name_w)}  {typ.ljust(type_w)}  {tuple(s)}")
    print(f"(* = the feature layer grad_cam picks automatically: {chosen!r}; scores from {reduction!r}"
          + ("; - = not a candidate" if args.all else "") + ")")
    return 0


def cmd_methods(args) -> int:
    from .comparison import available_methods

    methods = available_methods()
    width = max(len(n) for n in methods)
    for name, doc in methods.items():
        print(f"{name.ljust(width)}  {doc}".rstrip())
    return 0


# -- parser ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message):  # noqa: D102
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _model_args(p):
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--weights", metavar="FILE", help="state_dict for a factory --model (loaded with "
                   "weights_only=True)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Class activation maps (Grad-CAM and family) from the "
                     "command line.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("explain", help="compute the map of an input (image, .npy array or folder)",
                       description="Compute the map of INPUT and save it and/or draw it. Images are "
                       "read with PIL as RGB (or --gray), scaled to [0, 1], optionally resized "
                       "(--size) and normalised as (x - mean) / std per channel. Defaults: no resize, "
                       "mean 0, std 1 -- pass your model's preprocessing, e.g. --size 224 "
                       "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for torchvision ImageNet models.")
    p.add_argument("input", metavar="INPUT", help="an image file, a .npy array (PyTorch layout (N, C, ...) "
                   "or (C, ...), or MATLAB layout with --input-format), or a folder (every file in it)")
    _model_args(p)
    p.add_argument("--method", default="grad_cam", help="attribution method (see `gradattr methods`); "
                   "default grad_cam")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--target", type=int, metavar="CLASS", help="class index to explain (0-based); "
                   "default: the top class of each input")
    t.add_argument("--label", metavar="NAME", help="class name to explain, looked up in --classes")
    p.add_argument("--classes", metavar="FILE", help="text file of class names, one per line")
    p.add_argument("--feature-layer", metavar="NAME", help="layer name (see `gradattr layers`); default: "
                   "picked automatically as MATLAB does")
    p.add_argument("--upsampling", metavar="MODE", help="bicubic (default, MATLAB imresize), nearest, or "
                   "none (the feature map's size)")
    p.add_argument("--device", default="auto", help="auto (default: where the model is), cpu or cuda")
    p.add_argument("--size", metavar="H[,W]", help="resize images to H x W (one number: square); "
                   "default: no resize")
    p.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean subtracted from images in [0, 1]; "
                   "default 0")
    p.add_argument("--std", metavar="S[,S,S]", help="per-channel std dividing images; default 1")
    p.add_argument("--gray", action="store_true", help="read images as one grey channel instead of RGB")
    p.add_argument("--input-format", metavar="LETTERS", help="layout of a .npy array in MATLAB letters, "
                   "e.g. SSC (H x W x C), SSCB, CT, TC, SSSC; BCSS for a PyTorch batch")
    p.add_argument("--out", metavar="PNG", help="write the map drawn over the input (a folder for a "
                   "folder INPUT)")
    p.add_argument("--save-map", metavar="NPY", help="save the map as a .npy array (a folder for a folder "
                   "INPUT)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("layers", help="list the candidate feature layers and their output shapes",
                       description="Run the model on zeros of --input-shape and list the layers whose "
                       "output has the input's layout (N, C, spatial...); '*' marks the one grad_cam "
                       "picks when no feature layer is given.")
    _model_args(p)
    p.add_argument("--input-shape", required=True, metavar="N,C,...", help="input shape, e.g. 1,3,224,224")
    p.add_argument("--all", action="store_true", help="list every layer, not only the candidates")
    p.set_defaults(func=cmd_layers)

    sub.add_parser("explain-dataset", help="explain a folder into .npy shards, on one or several "
                   "processes (torchrun); see gradattr.dataset.cli_explain_dataset")
    p = sub.add_parser("methods", help="list the attribution methods")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_methods)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["explain-dataset"]:  # its own parser and driver live in gradattr.dataset
        from .dataset import cli_explain_dataset

        return cli_explain_dataset(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, GradattrError) as err:
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line, --debug for the traceback
        if args.debug:
            raise
        print(f"{PROG}: error: {type(err).__name__}: {_one_line(err)} (--debug shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
