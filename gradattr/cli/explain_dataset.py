"""``gradattr explain-dataset``: every file of a folder explained into .npy shards, resumable,
on one process or several (torchrun). The run itself is :func:`gradattr.explain_dataset`."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .. import runfolder as rf
from ..dataset.context import CLI_WORDING, RunContext
from ..dataset.run import run_explain_dataset
from ..errors import GradattrError
from ..loading import IMAGE_SUFFIXES, CliError, load_model, load_npy, read_image
from .common import MODEL_HELP, PROG, UPSAMPLING_HELP, Parser, check_option, reporting_errors, shared_option


def cli_explain_dataset(argv: list[str]) -> int:
    """``gradattr explain-dataset FOLDER --model M --out-dir DIR``: every file of a folder, in shards.

    One process::

        gradattr explain-dataset images/ --model resnet.pt2 --size 224 --out-dir maps/

    Several (each explains its share; gloo on CPU, nccl and one GPU per process when
    CUDA is there)::

        torchrun --nproc-per-node 2 -m gradattr explain-dataset images/ --model resnet.pt2 \\
            --size 224 --out-dir maps/

    The files are taken in name order and listed in ``DIR/inputs.json`` (``"files"``: name,
    size and modification time of each, relative to ``"folder"``); sample ``i`` of
    :func:`load_maps` is ``files[i]``. The run's fingerprint is every argument that changes a
    map (all but ``--out-dir``, ``--overwrite``, ``--progress``, ``--debug``, ``--workers``,
    ``--device`` and ``--trust-model``; ``--model`` and ``--weights`` files by their sha256),
    the model's weights and that list of files; a resume that differs is refused with what
    differs. Returns the exit status.
    """
    args = _cli_parser().parse_args(argv)
    args.limit = float("inf")  # the explain command's --max-memory: one batch at a time here

    def run() -> int:
        files = _input_files(args.input)
        if args.upsampling is not None:  # the method's own check, before the model loads
            check_option("upsampling", args.upsampling)
        device = _rank_device(check_option("device", args.device))
        loaded = load_model(args.model, args.weights, trust=args.trust_model,
                            random_weights=args.random_weights)
        net = loaded.net if device is None else loaded.net.to(device)
        samples = _Files(files, args)
        loader = torch.utils.data.DataLoader(samples, batch_size=args.batch_size, num_workers=args.workers)
        options = {k: v for k, v in (("feature_layer", args.feature_layer),
                                     ("upsampling", args.upsampling)) if v is not None}
        # every batch is (B, C, *spatial): said outright, since an exported program has no
        # Conv modules left to tell the input's rank
        options["input_format"] = "BC" + "S" * (len(samples.shape) - 1)
        listing = _listing(args.input, files)
        describe = _cli_fingerprint(args, listing)
        ctx = RunContext(**CLI_WORDING, describe=describe, extra={_INPUTS: json.dumps(listing, indent=0).encode()},
                         details={"FOLDER": lambda folder, old, new: _inputs_difference(folder, listing)})
        report = run_explain_dataset(net, loader, args.method, args.target, None, args.out_dir, args.overwrite,
                                     args.progress, None, options, ctx)
        print(f"{PROG}: {report}", file=sys.stderr)
        return 0

    return reporting_errors(run, args.debug, "interrupted (run the same command again to resume)")


def _rank_device(device: str) -> torch.device | None:
    """Where this process's model goes for ``--device`` (checked by the registry's validator):
    ``auto``, ``cuda`` or ``gpu``: the process's GPU (``LOCAL_RANK``) when CUDA is there, another
    name as given; ``None``: the model stays where it is (CPU, or ``auto`` without CUDA)."""
    name = device.lower()
    if name != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) \
            if name in ("auto", "cuda", "gpu") else torch.device(device)
    if name not in ("auto", "cpu"):
        raise CliError(f"--device: expected auto or cpu on this machine (no CUDA), got {device!r}")
    return None


def _cli_parser():
    p = Parser(prog=f"{PROG} explain-dataset",
                    description="Explain every image or .npy file of a folder (in name order) in batches "
                    "and write the maps as .npy shards to --out-dir; read them back in order with "
                    "gradattr.load_maps(DIR). Run it under `torchrun --nproc-per-node N -m gradattr "
                    "explain-dataset ...` to split the files across N processes (gloo on CPU, one GPU "
                    "each with nccl). Re-running with the same --out-dir resumes. Each file is the one "
                    "input of a one-input model; models of several inputs (net(image, question)) are "
                    "explained from Python: gradattr.explain_dataset with ((image, question), label) "
                    "batches.")
    p.add_argument("input", metavar="FOLDER", help="a folder of images (all of one size, or pass --size) "
                   "or of .npy arrays, one sample (C, ...) each")
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--weights", metavar="FILE", help="state_dict for a factory --model")
    p.add_argument("--random-weights", action="store_true", help="use a factory --model without "
                   "--weights on purpose (its own, e.g. random, weights)")
    p.add_argument("--trust-model", action="store_true", help="load a module saved whole with "
                   "torch.save(model), which runs code from the file: only for files you trust")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the shards, manifests and "
                   "index.json")
    p.add_argument("--method", default="grad_cam", help="attribution method (see `gradattr methods`)")
    p.add_argument("--target", type=int, metavar="CLASS", help="class to explain; default: each "
                   "sample's top class")
    p.add_argument("--feature-layer", metavar="NAME", help="layer name (see `gradattr layers`)")
    p.add_argument("--upsampling", metavar="MODE", help=UPSAMPLING_HELP)
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="samples per batch and per "
                   "shard (default 16)")
    p.add_argument("--workers", type=int, default=0, metavar="W", help="DataLoader worker processes per "
                   "rank (default 0)")
    p.add_argument("--device", default=shared_option("device").default, help="auto (default: the process's GPU when CUDA is "
                   "there, else CPU), cpu, cuda or cuda:K")
    p.add_argument("--size", metavar="H[,W]", help="resize images to H x W")
    p.add_argument("--crop", choices=("center", "none"), default="center", help="how --size is reached: "
                   "center (default, as torchvision's ImageNet transforms) or none (squashed)")
    p.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean subtracted from images in [0, 1]")
    p.add_argument("--std", metavar="S[,S,S]", help="per-channel std dividing images")
    p.add_argument("--gray", action="store_true", help="read images as one grey channel")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out-dir "
                   "instead of resuming it")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr (rank 0)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


_INPUTS = "inputs.json"
#: explain-dataset's arguments that do not change a map (the rest make the run's fingerprint)
_NOT_IN_FINGERPRINT = {"input", "out_dir", "overwrite", "progress", "debug", "workers", "device",
                       "trust_model", "limit"}


def _listing(folder: str, files: list[Path]) -> dict:
    entries = []
    for f in files:
        st = f.stat()
        entries.append({"name": f.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return {"folder": folder, "files": entries}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _cli_fingerprint(args, listing: dict) -> dict:
    """The command's own account of what its maps depend on: every argument that changes a map
    (files by their content), and the folder's files by name, size and modification time."""
    out = {}
    for key, value in sorted(vars(args).items()):
        if key in _NOT_IN_FINGERPRINT:
            continue
        if key in ("model", "weights") and value is not None and Path(value).is_file():
            value = f"a file with sha256 {_file_sha256(Path(value))}"
        out["--" + key.replace("_", "-")] = value if value is None or isinstance(value, (bool, int, float, str)) \
            else str(value)
    files = listing["files"]
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
    out["FOLDER"] = f"{len(files)} files (names, sizes and modification times: sha256 {digest})"
    return out


def _inputs_difference(folder: Path, listing: dict) -> str | None:
    """What changed in the folder of inputs since the run being resumed (from its inputs.json)."""
    try:
        old = rf.read_json(folder / _INPUTS)["files"]
        old = [(e["name"], e["size"], e["mtime_ns"]) for e in old]
    except (OSError, GradattrError, KeyError, TypeError):
        return None
    new = [(e["name"], e["size"], e["mtime_ns"]) for e in listing["files"]]
    i = next((k for k, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    if i < min(len(old), len(new)):
        (a, sa, _), (b, sb, _) = old[i], new[i]
        what = (f"{b!r} where the earlier run had {a!r}" if a != b else
                f"{a!r} of {sb} bytes, {sa} then" if sa != sb else f"{a!r} modified since")
    elif len(new) > len(old):
        what = f"{new[i][0]!r} added"
    else:
        what = f"{old[i][0]!r} gone"
    return f"{len(old)} -> {len(new)} files, the first difference at position {i}: {what}"


def _input_files(folder: str) -> list[Path]:
    path = Path(folder)
    if not path.is_dir():
        raise CliError(f"FOLDER: expected a folder of images or .npy files, got {folder!r}")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and (p.suffix.lower() == ".npy" or p.suffix.lower() in IMAGE_SUFFIXES))
    if not files:
        raise CliError(f"FOLDER: expected images or .npy files in {folder}, got none")
    return files


class _Files(torch.utils.data.Dataset):
    """The files of a folder, read one at a time (images as the ``explain`` command reads them)."""

    def __init__(self, files: list[Path], args):
        self.files, self.args = files, args
        self.shape = tuple(self[0].shape)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        f = self.files[i]
        if f.suffix.lower() == ".npy":
            arr = load_npy(f, "FOLDER")
            if arr.dtype.kind not in "biuf" or arr.ndim < 2:
                raise CliError(f"FOLDER: expected one numeric sample (C, *spatial) per .npy file, "
                                        f"got shape {arr.shape} and dtype {arr.dtype} in {f}")
            x = arr.astype(np.float32)
        else:
            x = read_image(f, self.args).x
        if i and tuple(x.shape) != self.shape:
            raise CliError(f"FOLDER: expected every sample of shape {self.shape} (as "
                                    f"{self.files[0].name}; --size resizes images), got {x.shape} in {f}")
        return torch.from_numpy(np.ascontiguousarray(x))
