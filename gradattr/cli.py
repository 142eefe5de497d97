"""The ``gradattr`` command line: explain inputs, list layers, list methods.

::

    python -m gradattr.demo export-effnet demo/      # effnet.pt2, effnet.pth, imagenet.txt, chelsea.png
    gradattr explain demo/chelsea.png --model demo/effnet.pt2 --size 224 --mean 0.5 --std 0.5 \\
        --classes demo/imagenet.txt --out cat.png --save-map cat.npy
    gradattr explain frames/ --model mypkg.nets:build --weights net.pth --out overlays/
    gradattr layers --model demo/effnet.pt2 --input-shape 1,3,224,224 --filter swish
    gradattr methods

What it loads (``--model``): a ``torch.export`` program (``.pt2``) or a factory
``package.module:function`` with ``--weights`` (a state_dict read with
``torch.load(weights_only=True)``). Neither runs code from a file. A module
pickled whole with ``torch.save(model)`` is loaded only with ``--trust-model``:
unpickling it runs whatever code the file names. The working folder is searched
only for the factory's module, during that one import; ``python -m gradattr``
takes the working folder off ``sys.path`` first (Python puts it there), so a
``PIL.py`` or ``matplotlib.py`` lying there is not run. (Modules that
``import gradattr`` itself needs, torch and numpy, are imported before that; run
``python -P -m gradattr`` or the ``gradattr`` console script to rule those out too.)

What it writes: nothing at all when anything fails (every input is read and
explained before the first file is saved), and no existing file unless
``--overwrite`` is given. For a folder INPUT each output is named after the
whole input file name, extension included (``a.png`` -> ``a.png.npy`` and
``a.png.png``), so ``a.png`` and ``a_png.png`` never share an output. Every
path written is printed.

Memory: before any work the request is estimated as
``MEMORY_FACTOR x (bytes of the largest float32 network input)`` plus the maps
kept until writing, and refused above ``--max-memory`` (default 2G).

Errors are one line on stderr (``gradattr: error: ...``) with a non-zero exit
status.
"""
from __future__ import annotations

import argparse
import difflib
import fnmatch
import importlib
import io
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GradattrError

PROG = "gradattr"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: The ``--max-memory`` estimate: this many times the bytes of the float32 network
#: input (the input, its copies, the activations and gradients a backward pass keeps
#: for a small CNN, the map at the input's size, the picture). A rough guard
#: against requests that cannot fit (``--size 40000``), not a promise: deep networks
#: keep more activations per input byte.
MEMORY_FACTOR = 32
DEFAULT_MAX_MEMORY = "2G"

#: Input layouts in MATLAB letters, the same examples as the README.
FORMAT_EXAMPLES = "'SSC' (H x W x C), 'SSCB', 'SSSC', 'CT', 'TC', 'CBT'"

#: Names ``gradattr methods`` lists besides :func:`gradattr.list_methods`, with their line.
EXTRA_METHODS = {"random": "uniform random maps: the chance level gradattr.compare scores every "
                           "method against (compare only)"}

SAFE_FORMATS = ("save it with torch.export.save (.pt2), or pass the factory that builds it as "
                "--model 'package.module:function' with its state_dict as --weights FILE "
                "(both load without running code from the file)")

MODEL_HELP = (
    "the network: a torch.export program (.pt2, saved with torch.export.save), or a factory "
    "'package.module:function' called with no arguments (e.g. torchvision.models:resnet50) with "
    "--weights FILE for its state_dict; the working folder is searched for that module only. "
    "A module saved whole with torch.save(model) loads only with --trust-model (unpickling it "
    "runs code from the file). TorchScript files cannot take hooks and are refused. "
    "`python -m gradattr.demo export-effnet DIR` writes an example model.")


class CliError(Exception):
    """A user error reported as one line."""


@dataclass
class Loaded:
    """A network ready for gradattr, and what is known about its input."""

    net: object
    input_ndim: int | None = None  # ndim of the example input of an exported program
    input_shape: tuple[int, ...] | None = None  # its shape, when every dim is static
    types: dict[str, str] = field(default_factory=dict)  # layer name -> class name (exported programs)


# -- start-up ---------------------------------------------------------------------------
def drop_working_folder() -> None:
    """Take off ``sys.path`` the working folder that ``python -m`` puts first.

    Called by ``python -m gradattr`` and ``python -m gradattr.demo`` before any
    lazy import (PIL, matplotlib, tqdm), so files lying in the working folder are
    never imported by accident. The console script does not need it (Python puts
    the script's own folder first), nor does ``python -P``.
    """
    if sys.flags.safe_path or not sys.path:
        return
    if sys.path[0] in ("", os.getcwd()):
        del sys.path[0]


# -- models ---------------------------------------------------------------------------
def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _torchscript_error(path) -> CliError:
    return CliError(f"--model: {path} is a TorchScript file, which cannot take the hooks gradattr needs; "
                    "save the model with torch.export.save (.pt2), or pass a factory "
                    "'package.module:function' with --weights FILE")


def _exported_types(ep) -> dict[str, str]:
    """Layer name -> original class name, from an exported program's module stack metadata."""
    types: dict[str, str] = {}
    for node in ep.graph.nodes:
        for path, kind in (node.meta.get("nn_module_stack") or {}).values():
            name = kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))
            types.setdefault(path, name.rsplit(".", 1)[-1])
    return types


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
    try:
        types = _exported_types(ep)
    except Exception:  # noqa: BLE001 - only for the layer listing
        types = {}
    return Loaded(net, ndim, shape, types)


def _refuse_pickle(spec: str, err: BaseException) -> CliError:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    needs = f" (it asks for {found.group(1)})" if found else ""
    return CliError(f"--model: {spec} holds pickled objects{needs}, such as a module saved whole with "
                    "torch.save(model); unpickling runs code from the file, so gradattr loads it only "
                    f"with --trust-model; safe instead: {SAFE_FORMATS}")


def _load_file(path: Path, spec: str, trust: bool):
    """``torch.load`` a file: plain data (weights_only=True) always, pickled objects only when trusted."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" not in text and "reduce" not in text:  # not pickled objects: a broken file
            cause = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.DOTALL)
            raise CliError(f"--model: could not load {spec} with torch.load: "
                           f"{_one_line(cause.group(1)) if cause else _one_line(err)}") from None
        if not trust:
            raise _refuse_pickle(spec, err) from None
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--model: could not load {spec} with torch.load: {_one_line(err)}") from None
    try:  # the user said --trust-model: the file's code runs
        return torch.load(str(path), map_location="cpu", weights_only=False)  # --trust-model only
    except ModuleNotFoundError as err:
        raise CliError(f"--model: could not load {spec} (trusted): {_one_line(err)}; the classes a pickled "
                       "module names must be importable (set PYTHONPATH to their folder)") from None
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--model: could not load {spec} (trusted) with torch.load: {_one_line(err)}") from None


def _import_factory_module(module_name: str, spec: str):
    """Import ``module_name`` with the working folder first on ``sys.path``, for this import only."""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise CliError(f"--model: cannot import {module_name!r} for factory {spec!r}: {_one_line(err)}") \
            from None
    finally:
        if sys.path and sys.path[0] == cwd:
            del sys.path[0]
        elif cwd in sys.path:
            sys.path.remove(cwd)


def load_model(spec: str, weights: str | None = None, *, trust: bool = False,
               random_weights: bool = False) -> Loaded:
    """Load ``--model`` (see :data:`MODEL_HELP`)."""
    import torch
    from torch import nn

    path = Path(spec)
    if path.is_file():
        for given, flag in ((weights is not None, "--weights"), (random_weights, "--random-weights")):
            if given:
                raise CliError(f"{flag}: expected only with a factory --model 'package.module:function', "
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
        obj = _load_file(path, spec, trust)
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
        raise CliError(f"--model: no such file {spec!r} (expected a .pt2 file or a factory "
                       "'package.module:function')")
    if weights is None and not random_weights:
        raise CliError(f"--weights: expected a state_dict FILE for the factory {spec!r} (or --random-weights "
                       "to use the weights the factory makes, e.g. random ones, on purpose), got none")
    if weights is not None and random_weights:
        raise CliError("--random-weights: expected either --weights FILE or --random-weights, got both")
    module_name, _, attr = spec.partition(":")
    module = _import_factory_module(module_name, spec)
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


_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _bytes(text: str, argument: str) -> float:
    """``"2G"``, ``"500M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (1K = 1024); ``"none"`` -> inf."""
    if text.strip().lower() in ("none", "off", "inf"):
        return float("inf")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if m is None or float(m.group(1)) <= 0:
        raise CliError(f"{argument}: expected a size such as 2G, 500M or 1.5GB (or none), got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _size_text(n: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


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
            size = (img.height, img.width)
            if args.size is not None:
                size = _ints(args.size, "--size")
                if len(size) not in (1, 2):
                    raise CliError(f"--size: expected one number or H,W, got {args.size!r}")
                size = tuple((size * 2)[:2])
            check_memory((1 if args.gray else 3, *size), path.name, args.limit)  # before any large array
            img = img.convert("L" if args.gray else "RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise CliError(f"INPUT: cannot read {path} as an image: {_one_line(err)}") from None
    if args.size is not None:
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
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
        arr = np.load(path, allow_pickle=False, mmap_mode="r")  # the shape first, the data once checked
    except (ValueError, OSError) as err:
        raise CliError(f"INPUT: cannot read {path} as a .npy array: {_one_line(err)}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise CliError(f"INPUT: expected a numeric array in {path}, got dtype {getattr(arr, 'dtype', '?')}")
    check_memory(arr.shape, path.name, args.limit)
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
    return Item(path, np.array(arr, dtype=np.float32), fmt)


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

    from .prep import prepare_call

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

        from .inputs import prepare

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


def _picture(sample: np.ndarray, cam: np.ndarray, title: str, image=None) -> bytes:
    """A PNG of ``cam`` over ``image`` (a picture file) or over ``sample (C, *s)``, by :mod:`gradattr.plot`."""
    from . import plot

    rank = sample.ndim - 1
    if image is not None:
        fig = plot.overlay(image, cam, title=title, colorbar=True)
    elif rank == 1:
        fig = plot.sequence(sample, cam, title=title)
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

    from .inputs import prepare

    xt, layout = prepare(item.x, net, item.input_format, torch.device("cpu"), torch.float32)
    return int(xt.shape[0]), bool(layout.batched)


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


def _title(item: Item, j: int | None, method: str, score, classes, explains_class: bool, target=None) -> str:
    """Two lines: the method and the class (index and name), then the score and the file."""
    name = item.path.name if j is None else f"{item.path.name}[{j}]"
    if not explains_class:
        return f"{method}: no class (features only)\n{name}"
    if score is None:  # not a classifier's (N, K) output: no class name or probability to show
        return f"{method}" + ("" if target is None else f": target {target!r}") + f"\n{name}"
    c, s, p = score
    label = f" '{classes[c]}'" if classes and c < len(classes) else ""
    return f"{method}: class {c}{label}\nscore {s:.4g} (p={p:.3f}), {name}"


def check_memory(shape, name: str, limit: float, maps: int = 0) -> None:
    """Refuse a float32 network input of ``shape`` whose estimate exceeds ``limit`` bytes.

    Estimate: :data:`MEMORY_FACTOR` x its bytes, plus ``maps`` (the bytes of the maps
    kept until writing: one input's worth per input, an upper bound).
    """
    size = 4 * int(np.prod(shape))
    need = MEMORY_FACTOR * size + maps
    if need > limit:
        raise CliError(f"--max-memory: expected a request within {_size_text(limit)}, got an estimated "
                       f"{_size_text(need)} ({MEMORY_FACTOR} x the {_size_text(size)} float32 input "
                       f"{'x'.join(map(str, shape))} of {name}, plus the maps); use a smaller --size or "
                       "raise --max-memory")


def cmd_explain(args) -> int:
    import gradattr

    methods = gradattr.list_methods()
    if args.method not in methods:
        close = difflib.get_close_matches(args.method, methods, n=3, cutoff=0.5)
        hint = (f"; did you mean {', '.join(map(repr, close))}?" if close else "; see `gradattr methods`")
        extra = " (random maps are a baseline for gradattr.compare only)" if args.method in EXTRA_METHODS else ""
        raise CliError(f"--method: expected one of {', '.join(methods)}, got {args.method!r}{extra}{hint}")
    if args.target is not None and args.label is not None:
        raise CliError("--label: expected either --target or --label, got both")
    classes = _classes(args.classes)
    if args.label is not None and classes is None:
        raise CliError("--label: expected --classes FILE (one class name per line) to look the label up in")
    target = args.target if args.target is not None else args.label
    if args.upsampling is not None and args.upsampling not in ("bicubic", "nearest", "none"):
        raise CliError(f"--upsampling: expected bicubic, nearest or none, got {args.upsampling!r}")
    if args.out is not None and args.upsampling == "none":
        raise CliError("--out: expected maps at the input's size to draw; drop --upsampling none")
    args.limit = _bytes(args.max_memory, "--max-memory")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    files = input_files(args.input)
    images = [f for f in files if f.suffix.lower() != ".npy"]
    if args.input_format is not None and images:
        raise CliError(f"--input-format: expected only with .npy array inputs (images are read as H x W x C "
                       f"and given to the network as (C, H, W)), got {args.input_format!r} with the image "
                       f"{images[0].name}")
    if args.out is not None:
        from . import plot
        try:
            plot._mpl()  # fail early, before any work, when matplotlib is missing
        except GradattrError as err:
            raise CliError(f"--out: the picture needs matplotlib: {_one_line(err)}") from None
    loaded = load_model(args.model, args.weights, trust=args.trust_model, random_weights=args.random_weights)
    items = read_inputs(files, args, loaded, progress)
    folder = len(items) > 1 or Path(args.input).is_dir()

    big = max(items, key=lambda it: it.x.size)
    check_memory(big.x.shape, big.path.name, args.limit, sum(4 * it.x.size for it in items))

    counts = [_batch(it, loaded.net) for it in items]
    out_paths = _destinations(args.out, items, folder, "--out", ".png",
                              [n if batched else 1 for n, batched in counts])
    map_paths = _destinations(args.save_map, items, folder, "--save-map", ".npy", [1] * len(items))
    _check_writable([p for ps in (out_paths or []) + (map_paths or []) for p in ps], args.overwrite)

    info = gradattr.method_info(args.method)
    cls = args.target
    if args.label is not None:  # case-insensitive when only one name matches; else gradattr's own error
        cls = _label_index(args.label, classes)
        target = args.label if cls is None else cls

    # 1. explain everything (nothing is written if anything fails)
    results = []
    for i, item in enumerate(items, 1):
        if folder and progress:
            print(f"{PROG}: explaining [{i}/{len(items)}] {item.path.name}", file=sys.stderr, flush=True)
        maps, feat = _explain_one(loaded, item, args, target, classes, progress)
        scores = None
        if info.needs_target and (target is None or cls is not None):
            scores = _class_scores(loaded.net, item, args.device, cls)
        pictures = []
        if args.out is not None:
            samples = _samples(item, maps, loaded.net)
            for j, (xs, cam) in enumerate(samples):
                title = _title(item, None if len(samples) == 1 else j, args.method,
                               scores[j] if scores else None, classes, info.needs_target, target)
                pictures.append(_picture(xs, cam, title, item.image))
        results.append((item, maps, feat, scores, pictures))

    # 2. write
    for paths in (out_paths, map_paths):
        if paths is not None:
            paths[0][0].parent.mkdir(parents=True, exist_ok=True)
    for k, (item, maps, feat, scores, pictures) in enumerate(results):
        written = []
        if map_paths is not None:
            with open(map_paths[k][0], "wb") as fh:
                np.save(fh, maps.astype(np.float32))
            written.append(str(map_paths[k][0]))
        if out_paths is not None:
            for p, png in zip(out_paths[k], pictures):
                p.write_bytes(png)
                written.append(str(p))
        print(_report(item, maps, feat, scores, target, classes, written, args.method, info.needs_target))
    return 0


def _destinations(option: str | None, items: list[Item], folder: bool, flag: str, suffix: str,
                  counts: list[int]) -> list[list[Path]] | None:
    """Where each item's files go: ``counts[k]`` paths for item ``k`` (checked here, written later).

    A folder (``folder`` INPUT, or an existing folder given for one input) gets
    ``<input file name><suffix>``, extension kept (``a.png`` -> ``a.png.npy``); a
    file name without ``suffix`` gets it appended. Several samples of one input
    get ``_0``, ``_1``, ... before the suffix.
    """
    if option is None:
        return None
    dest = Path(option)
    if folder:
        if dest.exists() and not dest.is_dir():
            raise CliError(f"{flag}: expected a folder for a folder INPUT, got the file {option}")
        bases = [dest / (it.path.name + suffix) for it in items]
    elif dest.is_dir():
        bases = [dest / (items[0].path.name + suffix)]
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


# -- layers ---------------------------------------------------------------------------
def _matches(pattern: str, *texts: str) -> bool:
    p = pattern.casefold()
    if any(ch in p for ch in "*?["):
        return any(fnmatch.fnmatchcase(t.casefold(), p) for t in texts)
    return any(p in t.casefold() for t in texts)


def cmd_layers(args) -> int:
    import torch

    from .geometry import Observer
    from .layouts import read
    from .prep import borrowed

    shape = _ints(args.input_shape, "--input-shape")
    if len(shape) < 3:
        raise CliError(f"--input-shape: expected N,C and 1 to 3 spatial sizes, e.g. 1,3,224,224, got "
                       f"{args.input_shape!r}")
    loaded = load_model(args.model, args.weights, trust=args.trust_model, random_weights=args.random_weights)
    net = loaded.net
    x = torch.zeros(shape)
    n, spatial = shape[0], tuple(shape[2:])
    seen: dict[str, tuple] = {}
    calls = [0]
    observer = Observer(net, n, spatial, lambda: True)

    def hook_for(name):
        def hook(module, inputs, out):
            calls[0] += 1
            if isinstance(out, torch.Tensor):
                reading = read(out, n, spatial, None, observer, observer.tick())
                seen[name] = (calls[0], loaded.types.get(name, type(module).__name__), tuple(out.shape),
                              None if reading is None else (reading.description or reading.kind))
        return hook

    handles = []
    try:
        with borrowed(net), torch.no_grad():  # eval mode, restored after
            handles += observer.handles()  # the grids the pass shows (token readings need them)
            for name, module in net.named_modules():
                if name:
                    handles.append(module.register_forward_hook(hook_for(name)))
            with observer.watching():
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
                                        input_format="BC" + "S" * len(spatial))
        auto = (f"automatic feature layer: {chosen!r} (* below; what grad_cam uses when no "
                f"--feature-layer is given), scores from {reduction!r}")
    except GradattrError as err:
        chosen = None
        auto = f"automatic feature layer: none ({_one_line(err)})"
    rows = sorted(((o, nm, t, s, r) for nm, (o, t, s, r) in seen.items()), key=lambda r: r[0])
    if not args.all:
        rows = [r for r in rows if r[4] is not None]
    if not rows:
        raise CliError(f"--input-shape: no layer outputs the input's layout ({n}, C, {len(spatial)} "
                       "spatial dims); --all lists every layer")
    if args.filter is not None:
        total = len(rows)
        rows = [r for r in rows if _matches(args.filter, r[1], r[2])]
        if not rows:
            raise CliError(f"--filter: expected a part of a layer name or type (or a glob such as "
                           f"'*conv*'), got {args.filter!r}, which matches none of the {total} layers")
    table = [("name", "type", "output shape", "reading")]
    table += [(nm, t, str(s), r if r is not None else "-") for _, nm, t, s, r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    print(auto)
    for k, row in enumerate(table):
        mark = " " if k == 0 or row[0] != chosen else "*"
        print(f"{mark} " + "  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + f"  {row[3]}")
    print(f"{len(rows)} layers" + (f" matching {args.filter!r}" if args.filter is not None else "")
          + ("" if args.all else " whose output has the input's layout (--all lists every layer)"))
    return 0


def cmd_methods(args) -> int:
    import gradattr

    rows = [(name, gradattr.method_info(name).summary) for name in gradattr.list_methods()]
    rows += [(name, doc) for name, doc in EXTRA_METHODS.items() if name not in dict(rows)]
    width = max(len(n) for n, _ in rows)
    for name, doc in rows:
        text = " ".join(doc.replace("``", "").split())
        print(f"{name.ljust(width)}  {text}".rstrip())
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
                   "weights_only=True: no code from the file runs)")
    p.add_argument("--random-weights", action="store_true", help="use a factory --model without --weights "
                   "(its own initial weights, usually random) on purpose")
    p.add_argument("--trust-model", action="store_true", help="load a module saved whole with "
                   "torch.save(model) (torch.load with weights_only=False), which runs code from the file: "
                   "only for files you trust. Off by default")
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
                       "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for torchvision ImageNet models. "
                       "Nothing is written when anything fails, and no existing file without --overwrite.")
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
                   f"e.g. {FORMAT_EXAMPLES}; default: PyTorch's (N, C, ...) or (C, ...). Only for "
                   ".npy inputs (images are always read as H x W x C)")
    p.add_argument("--out", metavar="PNG", help="write the map drawn over the input (.png added when "
                   "missing; a folder for a folder INPUT, outputs named INPUTNAME.png, e.g. a.jpg.png)")
    p.add_argument("--save-map", metavar="NPY", help="save the map as a .npy array (.npy added when "
                   "missing; a folder for a folder INPUT, outputs named INPUTNAME.npy, e.g. a.jpg.npy)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (default: "
                   "refuse, writing nothing)")
    p.add_argument("--max-memory", default=DEFAULT_MAX_MEMORY, metavar="SIZE", help="refuse requests "
                   f"estimated above SIZE (default {DEFAULT_MAX_MEMORY}; e.g. 500M, 8G, none). The estimate "
                   f"is {MEMORY_FACTOR} x the bytes of the largest float32 network input, plus the maps")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress on stderr (files of a folder, Score-CAM and Ablation-CAM passes); "
                   "default: only when stderr is a terminal")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("layers", help="list the candidate feature layers and their output shapes",
                       description="Run the model on zeros of --input-shape and list the layers whose "
                       "output has the input's layout (N, C, spatial...), with a header (name, type, "
                       "output shape, reading); the automatic choice is named on the first line and "
                       "marked '*' in the table.")
    _model_args(p)
    p.add_argument("--input-shape", required=True, metavar="N,C,...", help="input shape, e.g. 1,3,224,224")
    p.add_argument("--all", action="store_true", help="list every layer, not only the candidates")
    p.add_argument("--filter", metavar="TEXT", help="only layers whose name or type contains TEXT "
                   "(case-insensitive; a glob with * ? [ ])")
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
    return reporting_errors(lambda: args.func(args), args.debug)


def reporting_errors(run, debug: bool, interrupted: str = "interrupted") -> int:
    """``run()``'s exit status, every failure reported as one line on stderr (exit 1; 130 on
    Ctrl-C, with ``interrupted`` said); ``debug`` re-raises for the traceback."""
    try:
        return run()
    except (CliError, GradattrError) as err:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: {interrupted}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gradattr layers ... | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
        except OSError:
            pass
        return 0
    except Exception as err:  # noqa: BLE001 - one line, --debug for the traceback
        if debug:
            raise
        print(f"{PROG}: error: {type(err).__name__}: {_one_line(err)} (--debug shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    drop_working_folder()
    raise SystemExit(main())
