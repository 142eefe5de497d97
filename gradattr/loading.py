"""Loading what the command line is given: models (``--model``), images, ``.npy`` arrays, class names.

Shared by ``gradattr explain`` / ``layers`` (:mod:`gradattr.cli`) and
``gradattr explain-dataset`` (:mod:`gradattr.dataset`).

The model-file rule: no code from a model file runs unless ``--trust-model`` is
given. A ``torch.export`` archive (recognised by its content, whatever its
suffix) is checked and rebuilt by :mod:`gradattr.pt2` before torch reads it:
its pickles are loaded only with ``torch.load(weights_only=True)``, anything it
cannot check is refused. A file that ``torch.load`` reads (a state_dict, a
module saved whole) is loaded with ``weights_only=True``; pickled objects are
refused. TorchScript files are refused (they take no hooks).
"""
from __future__ import annotations

import importlib
import io
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import pt2

if TYPE_CHECKING:
    from torch import nn

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: The ``--max-memory`` estimate: this many times the bytes of the float32 network
#: input (the input, its copies, the activations and gradients a backward pass keeps
#: for a small CNN, the map at the input's size, the picture). A rough guard
#: against requests that cannot fit (``--size 40000``), not a promise: deep networks
#: keep more activations per input byte.
MEMORY_FACTOR = 32

SAFE_FORMATS = ("save it with torch.export.save (.pt2), or pass the factory that builds it as "
                "--model 'package.module:function' with its state_dict as --weights FILE "
                "(both load without running code from the file)")

TRUST = "gradattr runs no code from a model file unless you pass --trust-model (only for files you trust)"

CUSTOM_OPS = ("its library must be imported before the model loads: from Python, import the module that "
              "registers it, then call gradattr; from the command line, pass a factory --model "
              "'package.module:function' whose module imports that library and loads the program")


def _missing_operator(data: bytes, spec: str) -> CliError | None:
    """The error for an archive calling an operator not registered here (a custom one), or ``None``."""
    try:
        missing = pt2.missing_operators(data)
    except Exception:  # noqa: BLE001 - only a better message for a failure already reported
        return None
    if not missing:
        return None
    more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])})" if len(missing) > 1 else ""
    return CliError(f"--model: {spec} calls the operator {missing[0]}{more}, which is not registered in this "
                    f"Python; {CUSTOM_OPS}")


class CliError(Exception):
    """A user error reported as one line."""


@dataclass
class Loaded:
    """A network ready for gradattr, and what is known about its input."""

    net: nn.Module
    input_ndim: int | None = None  # ndim of the example input of an exported program
    input_shape: tuple[int, ...] | None = None  # its shape, when every dim is static
    types: dict[str, str] = field(default_factory=dict)  # layer name -> class name (exported programs)


# -- models ---------------------------------------------------------------------------
def _zip_members(data: bytes):
    """(member names, reader) of a zip file's bytes; ``([], None)`` when it is not a zip. The
    members' declared sizes are checked first (:func:`gradattr.pt2.check_sizes`: a zip bomb is
    refused before anything is read) and each is read up to its declared size only."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        return [], None
    pt2.check_sizes(z.infolist(), len(data))
    return z.namelist(), pt2.member_reader(z)


def _load_exported(data: bytes, spec: str, trust: bool):
    """The ``ExportedProgram`` of a ``.pt2`` archive's bytes; checked by :mod:`gradattr.pt2` unless trusted."""
    import torch

    if trust:  # --trust-model: torch.export.load as it is, pickled members included
        try:
            with pt2.quiet_torch():
                return torch.export.load(io.BytesIO(data))
        except Exception as err:  # noqa: BLE001
            raise _missing_operator(data, spec) or CliError(
                f"--model: could not load {spec} (trusted) with torch.export.load: {one_line(err)}") from None
    try:
        clean = pt2.checked_archive(data)
    except pt2.Unsafe as err:
        raise CliError(f"--model: {spec} {err}; {TRUST}") from None
    except pt2.TooLarge as err:
        raise CliError(f"--model: {spec} {err}") from None
    except pt2.NotAnArchive as err:
        raise CliError(f"--model: {spec} is not a torch.export archive gradattr can read: {err}; re-save it "
                       f"with torch.export.save under this torch, or pass --trust-model to let torch.export.load "
                       "try (it may run code from the file)") from None
    except Exception as err:  # noqa: BLE001 - a damaged zip (bad CRC, cut short)
        raise CliError(f"--model: could not read {spec} as a torch.export archive: {one_line(err)}") from None
    missing = _missing_operator(clean, spec)
    if missing is not None:
        raise missing
    try:
        with pt2.quiet_torch():
            ep = torch.export.load(io.BytesIO(clean))
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--model: could not load {spec} with torch.export.load: {one_line(err)}") from None
    try:
        pt2.check_graphs(ep)
    except pt2.Unsafe as err:
        raise CliError(f"--model: {spec} {err}; {TRUST}") from None
    return ep


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
        raise CliError(f"--model: could not unflatten the exported program {path}: {one_line(err)}") from None
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


def _load_file(data: bytes, spec: str, trust: bool):
    """``torch.load`` a file's bytes: plain data (weights_only=True) always, pickled objects only when trusted."""
    import torch

    try:
        with pt2.quiet_torch():
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" not in text and "reduce" not in text:  # not pickled objects: a broken file
            cause = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.DOTALL)
            raise CliError(f"--model: could not load {spec} with torch.load: "
                           f"{one_line(cause.group(1)) if cause else one_line(err)}") from None
        if not trust:
            raise _refuse_pickle(spec, err) from None
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--model: could not load {spec} with torch.load: {one_line(err)}") from None
    try:  # the user said --trust-model: the file's code runs
        with pt2.quiet_torch():
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)  # --trust-model only
    except ModuleNotFoundError as err:
        raise CliError(f"--model: could not load {spec} (trusted): {one_line(err)}; the classes a pickled "
                       "module names must be importable (set PYTHONPATH to their folder)") from None
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--model: could not load {spec} (trusted) with torch.load: {one_line(err)}") from None


def _import_factory_module(module_name: str, spec: str):
    """Import ``module_name`` with the working folder first on ``sys.path``, for this import only."""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise CliError(f"--model: cannot import {module_name!r} for factory {spec!r}: {one_line(err)}") \
            from None
    finally:
        if sys.path and sys.path[0] == cwd:
            del sys.path[0]
        elif cwd in sys.path:
            sys.path.remove(cwd)


def load_model(spec: str, weights: str | None = None, *, trust: bool = False,
               random_weights: bool = False) -> Loaded:
    """Load ``--model`` (see :data:`MODEL_HELP`): a model file, or a factory and its weights."""
    path = Path(spec)
    if path.is_file():
        for given, flag in ((weights is not None, "--weights"), (random_weights, "--random-weights")):
            if given:
                raise CliError(f"{flag}: expected only with a factory --model 'package.module:function', "
                               f"got it with the model file {spec}")
        return _model_file(path, spec, trust)
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
    net = _from_factory(spec)
    if weights is not None:
        _load_weights(net, weights, spec)
    return Loaded(net)


def _model_file(path: Path, spec: str, trust: bool) -> Loaded:
    """A model file: a torch.export archive (checked member by member), or a whole module saved
    with ``torch.save`` (only with ``trust``)."""
    import torch
    from torch import nn

    try:
        data = path.read_bytes()
    except OSError as err:
        raise CliError(f"--model: cannot read {spec}: {one_line(err)}") from None
    try:
        names, read = _zip_members(data)
    except pt2.TooLarge as err:
        raise CliError(f"--model: {spec} {err}") from None
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        raise _torchscript_error(spec)
    try:
        archive = bool(names) and pt2.is_archive(names, read)
    except Exception:  # noqa: BLE001 - a damaged zip: torch.load reports it below
        archive = False
    if archive or pt2.is_legacy(names):  # by content: a .pt2 renamed model.bin is one too
        return _from_exported(_load_exported(data, spec, trust), spec)
    if path.suffix.lower() == ".pt2" and not names and data[:1] != b"\x80":
        raise CliError(f"--model: expected {spec} to be a torch.export archive (a zip file written by "
                       "torch.export.save), got a file that is not a zip")
    obj = _load_file(data, spec, trust)
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


def _from_factory(spec: str):
    """The network ``package.module:function`` builds."""
    from torch import nn

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
    return net


def _load_weights(net, weights: str, spec: str) -> None:
    """``net.load_state_dict`` of the state_dict in ``weights`` (read with ``weights_only=True``)."""
    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CliError(f"--weights: no such file {weights!r}") from None
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--weights: could not load {weights} as a state_dict: {one_line(err)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CliError(f"--weights: expected a state_dict in {weights}, got a {type(state).__name__}")
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CliError(f"--weights: {weights} does not fit {spec}: {one_line(err)}") from None


# -- inputs ---------------------------------------------------------------------------
def _floats(text: str | None, argument: str, default: float) -> np.ndarray:
    if text is None:
        return np.array([default], dtype=np.float32)
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise CliError(f"{argument}: expected numbers separated by commas, got {text!r}") from None
    return np.asarray(vals, dtype=np.float32)


def parse_ints(text: str, argument: str) -> list[int]:
    """``"224,224"`` -> ``[224, 224]`` (positive ints), or a :class:`CliError` naming ``argument``."""
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise CliError(f"{argument}: expected integers separated by commas, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise CliError(f"{argument}: expected positive integers, got {text!r}")
    return vals


def _size_text(n: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


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


@dataclass
class Item:
    """One input file, read and preprocessed."""

    path: Path
    x: np.ndarray  # numpy array handed to gradattr
    input_format: str | None
    image: object = None  # the picture of an image file (drawn under the map)
    prep: str | None = None  # how an image was brought to --size (said in the picture's title)


#: Pillow modes of more than 8 bits per sample: read as their values, scaled from their own depth.
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _int_depth(img) -> tuple[int, bool]:
    """``(bits, signed)`` of a Pillow mode ``I`` picture: a PNG's 16 bits, a TIFF's ``BitsPerSample``
    and ``SampleFormat`` (2: signed), else Pillow's own 32-bit signed integers."""
    if img.format == "PNG":
        return 16, False
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        bits = tags.get(258, (32,))
        fmt = tags.get(339, (1,))
        bits = bits[0] if isinstance(bits, tuple) else bits
        fmt = fmt[0] if isinstance(fmt, tuple) else fmt
        return int(bits), fmt == 2
    return 32, True


def image_array(img, gray: bool) -> np.ndarray:
    """A Pillow picture as float32 ``(H, W)`` (``gray``) or ``(H, W, 3)``, scaled from its own bit depth.

    8-bit modes (``L``, ``RGB``, ``P``, ``RGBA``...) are converted by Pillow to ``L`` or ``RGB``
    and divided by 255; 16-bit grey (``I;16``) by 65535; 32-bit integers (``I``: a TIFF's
    ``BitsPerSample`` bits, unsigned by ``2**bits - 1``, signed by ``2**(bits - 1) - 1``; a PNG
    read as ``I`` holds 16 bits) by their largest value; float pictures (``F``, a float TIFF)
    are taken as they are. Nothing is clipped. A one-channel picture read as RGB repeats its
    channel three times.
    """
    mode = img.mode
    if mode not in DEEP_MODES:
        return np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0
    a = np.asarray(img)
    if mode.startswith("I;16"):
        a = a.astype(np.float64) / 65535.0
    elif mode == "I":
        bits, signed = _int_depth(img)
        a = a.astype(np.float64) / float(2 ** (bits - 1) - 1 if signed else 2 ** bits - 1)
    a = a.astype(np.float32)
    return a if gray else np.repeat(a[..., None], 3, axis=-1)


def read_image(path: Path, args, data: bytes | None = None) -> Item:
    """An image file read as ``args`` says (``size``, ``crop``, ``gray``, ``mean``, ``std``, ``limit``),
    its values scaled to [0, 1] from its own bit depth (:func:`image_array`); ``data``: the file's
    bytes, already read (``path`` then only names it)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise CliError(f"INPUT: reading the image {path} needs Pillow (pip install pillow)") from None

    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            size = (img.height, img.width)
            if args.size is not None:
                size = parse_ints(args.size, "--size")
                if len(size) not in (1, 2):
                    raise CliError(f"--size: expected one number or H,W, got {args.size!r}")
                size = tuple((size * 2)[:2])
            check_memory((1 if args.gray else 3, *size), path.name, args.limit)  # before any large array
            img = img.convert("L" if args.gray else "RGB") if img.mode not in DEEP_MODES else img.copy()
    except (UnidentifiedImageError, OSError) as err:
        raise CliError(f"INPUT: cannot read {path} as an image: {one_line(err)}") from None
    prep = None
    if args.size is not None:
        crop = getattr(args, "crop", None) or "center"  # the same default for a parser without --crop
        if crop not in ("center", "none"):
            raise CliError(f"--crop: expected center or none, got {crop!r}")
        if crop == "center" and (img.height, img.width) != size:
            img = _center_crop(img, size, Image.Resampling.BILINEAR)
            prep = f"center-cropped to {size[0]}x{size[1]}"
        else:
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            prep = f"squashed to {size[0]}x{size[1]}" if crop == "none" else None
    arr = image_array(img, args.gray)
    chw = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    c = chw.shape[0]
    mean, std = _floats(args.mean, "--mean", 0.0), _floats(args.std, "--std", 1.0)
    for name, v in (("--mean", mean), ("--std", std)):
        if v.size not in (1, c):
            raise CliError(f"{name}: expected 1 or {c} values (one per channel), got {v.size}")
    if np.any(std == 0):
        raise CliError("--std: expected non-zero values, got 0")
    x = (chw - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)
    picture = np.asarray(img) if img.mode not in DEEP_MODES else \
        (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Item(path, x.astype(np.float32), "CSS" if x.ndim == 3 else "CS", picture, prep)


def _center_crop(img, size: tuple[int, int], resample):
    """torchvision's ``Resize`` + ``CenterCrop`` for ``size = (H, W)``: scale the picture (bilinear) so that
    it covers H x W with its aspect kept (for a square size: its shorter side becomes H, the longer
    ``int(H * long / short)``), then cut the middle H x W (offsets ``round((h - H) / 2)``)."""
    (h0, w0), (h, w) = (img.height, img.width), size
    if h / h0 >= w / w0:
        nh, nw = h, max(w, int(h * w0 / h0))
    else:
        nh, nw = max(h, int(w * h0 / w0)), w
    img = img.resize((nw, nh), resample)
    top, left = int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))
    return img.crop((left, top, left + w, top + h))


def _npy_problem(path: Path, err: BaseException) -> str:
    """What is wrong with a ``.npy`` file numpy could not read, in words."""
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size == 0:
        return "the file is empty (0 bytes)"
    if isinstance(err, EOFError) or "EOF" in str(err):
        return f"the file ends inside its header ({size} bytes; cut short?)"
    if "mmap length is greater than file size" in str(err):
        return f"the file holds fewer bytes ({size}) than its header's shape and dtype need (cut short?)"
    return one_line(err)


def load_npy(path: Path, argument: str = "INPUT", data: bytes | None = None) -> np.ndarray:
    """The array of a ``.npy`` file (no pickles), or a :class:`CliError` naming ``argument``, the
    file and what is wrong with it (empty, cut short, not an array); ``data``: its bytes, already read."""
    try:
        return np.load(path if data is None else io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        if data is not None and not data:
            why = "the file is empty (0 bytes)"
        elif data is not None and isinstance(err, EOFError):
            why = f"the file ends inside its header ({len(data)} bytes; cut short?)"
        else:
            why = _npy_problem(path, err)
        raise CliError(f"{argument}: cannot read {path} as a .npy array: {why}") from None


def read_array(path: Path, args, loaded: Loaded) -> Item:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")  # the shape first, the data once checked
    except (ValueError, OSError, EOFError) as err:
        raise CliError(f"INPUT: cannot read {path} as a .npy array: {_npy_problem(path, err)}") from None
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


def read_classes(path: str | None) -> list[str] | None:
    """Class names, one per line, from the file ``path`` (``None``: none)."""
    if path is None:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise CliError(f"--classes: cannot read {path}: {one_line(err)}") from None
    except UnicodeDecodeError as err:
        raise CliError(f"--classes: expected a UTF-8 text file, one class name per line, got {path}, which is "
                       f"not text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    names = [ln.strip() for ln in lines if ln.strip()]
    if not names:
        raise CliError(f"--classes: expected one class name per line in {path}, got an empty file")
    return names


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    text = " ".join(str(err).split())
    return text if text else type(err).__name__
