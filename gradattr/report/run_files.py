"""What the report reads from a run's folder, each file checked: the run's method and target (its
marker), the input files it read (``inputs.json``, a 0.2 run's ``inputs.txt``), the per-sample
facts of ``samples.jsonl``, and the class names it is given.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .. import runfolder as rf
from ..errors import expected


_SAMPLES = "samples.jsonl"
_SAMPLES_RE = re.compile(r"samples(-rank\d{3,})?\.jsonl")
_INPUT_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def run_info(folder: Path) -> dict:
    """``{"method": ..., "target": ...}`` of a run: from its fingerprint (the marker
    ``.gradattr-run.json``; the command line's arguments are spelt ``--method``, ``--target``),
    or from a 0.2 folder's ``run.json``."""
    from ..runfolder import MARKER

    marker = _read_json(folder / MARKER)
    if isinstance(marker, dict) and isinstance(marker.get("fingerprint"), dict):
        fp = marker["fingerprint"]
        return {k: fp.get(k, fp.get("--" + k)) for k in ("method", "target")}
    return _read_json(folder / "run.json") or {}


def input_paths(folder: Path) -> list[Path] | None:
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


def class_names(classes) -> list[str] | None:
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


def read_samples(folder: Path) -> dict[int, dict]:
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


def read_input(path: Path) -> bytes:
    """An input file's bytes: a plain file of the input folder, never through a link."""
    try:
        return rf.read_plain(path, "inputs.json", "the input folder")
    except FileNotFoundError:
        raise expected("out_dir", "inputs.json naming files that exist (run the report from the folder the "
                       "run was started in)", f"{str(path)!r}, not found") from None
