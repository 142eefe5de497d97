"""Reading the command line's inputs: image files (scaled from their own bit depth, resized or
center-cropped to ``--size``, normalised by ``--mean``/``--std``), ``.npy`` arrays, class names,
and the ``--max-memory`` estimate checked before any large array is made.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cli_error import CliError, one_line

if TYPE_CHECKING:
    from .models import Loaded


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: The ``--max-memory`` estimate: this many times the bytes of the float32 network
#: input (the input, its copies, the activations and gradients a backward pass keeps
#: for a small CNN, the map at the input's size, the picture). A rough guard
#: against requests that cannot fit (``--size 40000``), not a promise: deep networks
#: keep more activations per input byte.
MEMORY_FACTOR = 32


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

    img: Image.Image  # an ImageFile when opened; convert, copy, resize and crop give plain Images
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            size: tuple[int, ...] | list[int] = (img.height, img.width)
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


def _center_crop(img, size: Sequence[int], resample):
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
