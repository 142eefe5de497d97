"""The ``gradattr`` command line: explain inputs, list layers, list methods.

::

    python -m gradattr.demo export-effnet demo/      # effnet.pt2, effnet.pth, imagenet.txt, chelsea.png
    gradattr explain demo/chelsea.png --model demo/effnet.pt2 --size 224 --mean 0.5 --std 0.5 \
        --classes demo/imagenet.txt --out cat.png --save-map cat.npy
    gradattr explain frames/ --model mypkg.nets:build --weights net.pth --out overlays/
    gradattr layers --model demo/effnet.pt2 --input-shape 1,3,224,224 --filter swish
    gradattr methods

What it loads (``--model``, by :mod:`gradattr.loading`): a ``torch.export``
program (``.pt2``, recognised by its content whatever its suffix; checked and
rebuilt by :mod:`gradattr.loading.pt2_archive` first, so its pickles are read only with
``torch.load(weights_only=True)`` and anything else that could run code is
refused) or a factory ``package.module:function`` with ``--weights`` (a
state_dict read with ``torch.load(weights_only=True)``). Neither runs code from
a file. A module pickled whole with ``torch.save(model)``, or a ``.pt2`` that
holds more than the checks accept, is loaded only with ``--trust-model``:
unpickling it runs whatever code the file names. The working folder is searched
only for the factory's module, during that one import; ``python -m gradattr``
takes the working folder off ``sys.path`` first (Python puts it there), so a
``PIL.py`` or ``matplotlib.py`` lying there is not run. (Modules that
``import gradattr`` itself needs, torch and numpy, are imported before that; run
``python -P -m gradattr`` or the ``gradattr`` console script to rule those out too.)

What it writes: nothing when reading the inputs or checking the output names
fails (every input is read and every name checked before any work), and no
existing file unless ``--overwrite`` is given. Each input's outputs are written
when that input is done, all or none of them (each under a temporary name in
its folder, all renamed once all are written; the temporaries are removed on
failure), so a failure or Ctrl-C in a folder run keeps the outputs of the
inputs finished before it, and the message says how many. For a folder INPUT
each output is named after its input's stem and the method (``a.png`` ->
``a_grad_cam.npy`` and ``a_grad_cam.png``); inputs that share a stem (``a.png``
and ``a.jpg``) keep their whole names (``a.png_grad_cam.png``), so no two inputs
share an output. Every path written is printed.

Images reach ``--size`` as torchvision's ImageNet transforms do (``--crop
center``, the default: scaled with the aspect kept until they cover it, then the
middle cut out) or squashed (``--crop none``); the picture's title says which.

Memory: before any work the request is estimated as
``MEMORY_FACTOR x (bytes of the largest float32 network input)`` plus the maps
kept until writing, and refused above ``--max-memory`` (default 2G).

Errors are one line on stderr (``gradattr: error: ...``) with a non-zero exit
status.
"""
from __future__ import annotations

import argparse
import sys

from ..loading.cli_error import CliError  # noqa: F401
from ..loading.input_files import MEMORY_FACTOR  # noqa: F401
from .common import (DEFAULT_MAX_MEMORY, FORMAT_EXAMPLES, MODEL_HELP, PROG, UPSAMPLING_HELP,  # noqa: F401
                     model_args, Parser, package_version, drop_working_folder, reporting_errors, shared_option)
from .explain import cmd_explain
from .layers import cmd_layers
from .methods import cmd_methods


__all__ = ["main", "build_parser", "CliError", "reporting_errors", "PROG", "MODEL_HELP", "MEMORY_FACTOR",
           "drop_working_folder"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``gradattr`` and its commands (``explain-dataset`` and ``report`` parse their own)."""
    parser = Parser(prog=PROG, description="Class activation maps (Grad-CAM and family) from the "
                     "command line.")
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    _add_explain(sub)
    _add_layers(sub)
    sub.add_parser("explain-dataset", help="explain a folder into .npy shards, on one or several "
                   "processes (torchrun); see gradattr.cli.explain_dataset")
    sub.add_parser("report", help="write OUT_DIR/report/index.html, a static page of an explain-dataset "
                   "run's maps; see gradattr.cli.report")
    p = sub.add_parser("methods", help="list the attribution methods")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_methods)
    return parser


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="compute the map of an input (image, .npy array or folder)",
                       description="Compute the map of INPUT (the one input of a one-input model; "
                       "models of several inputs are explained from Python) and save it and/or draw it. Images are "
                       "read with PIL as RGB (or --gray), scaled to [0, 1], optionally resized "
                       "(--size, bilinear, center-cropped unless --crop none) and normalised as (x - mean) / std "
                       "per channel. Defaults: no resize, mean 0, std 1 -- pass your model's preprocessing, "
                       "e.g. --size 224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for torchvision "
                       "ImageNet models. Every input is read and every output name checked before any work; "
                       "each input's outputs are written together when it is done (all or none of them), "
                       "a failure or Ctrl-C keeps those of the inputs finished before it; no existing file "
                       "is replaced without --overwrite.")
    p.add_argument("input", metavar="INPUT", help="an image file, a .npy array (PyTorch layout (N, C, ...) "
                   "or (C, ...), or MATLAB layout with --input-format), or a folder (every file in it)")
    model_args(p)
    p.add_argument("--method", default="grad_cam", help="attribution method (see `gradattr methods`); "
                   "default grad_cam")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--target", type=int, metavar="CLASS", help="class index to explain (0-based); "
                   "default: the top class of each input")
    t.add_argument("--label", metavar="NAME", help="class name to explain, looked up in --classes")
    p.add_argument("--classes", metavar="FILE", help="text file of class names, one per line")
    p.add_argument("--feature-layer", metavar="NAME", help="layer name (see `gradattr layers`); default: "
                   "picked automatically as MATLAB does")
    p.add_argument("--upsampling", metavar="MODE", help=UPSAMPLING_HELP)
    p.add_argument("--device", default=shared_option("device").default, help="auto (default: where the model "
                   "is), cpu, cuda or cuda:K")
    p.add_argument("--size", metavar="H[,W]", help="resize images to H x W (one number: square); "
                   "default: no resize")
    p.add_argument("--crop", choices=("center", "none"), default="center", help="how --size is reached: "
                   "center (default, as torchvision's ImageNet transforms: scale the image, aspect kept, until "
                   "it covers H x W, then cut the middle) or none (resize to H x W, squashing the aspect); "
                   "the picture's title says which")
    p.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean subtracted from images in [0, 1]; "
                   "default 0")
    p.add_argument("--std", metavar="S[,S,S]", help="per-channel std dividing images; default 1")
    p.add_argument("--gray", action="store_true", help="read images as one grey channel instead of RGB")
    p.add_argument("--input-format", metavar="LETTERS", help="layout of a .npy array in MATLAB letters, "
                   f"e.g. {FORMAT_EXAMPLES}; default: PyTorch's (N, C, ...) or (C, ...). Only for "
                   ".npy inputs (images are always read as H x W x C)")
    p.add_argument("--out", metavar="PNG", help="write the map drawn over the input (.png added when "
                   "missing; a folder for a folder INPUT, outputs named STEM_METHOD.png, e.g. a_grad_cam.png)")
    p.add_argument("--save-map", metavar="NPY", help="save the map as a .npy array (.npy added when "
                   "missing; a folder for a folder INPUT, outputs named STEM_METHOD.npy, e.g. a_grad_cam.npy)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (default: "
                   "refuse, writing nothing)")
    p.add_argument("--max-memory", default=DEFAULT_MAX_MEMORY, metavar="SIZE", help="refuse requests "
                   f"estimated above SIZE (default {DEFAULT_MAX_MEMORY}; e.g. 500M, 8G, none). The estimate "
                   f"is {MEMORY_FACTOR} x the bytes of the largest float32 network input, plus the maps")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress on stderr (files of a folder, Score-CAM and Ablation-CAM passes); "
                   "default: only when stderr is a terminal")
    p.set_defaults(func=cmd_explain)


def _add_layers(sub) -> None:
    p = sub.add_parser("layers", help="list the candidate feature layers and their output shapes",
                       description="Run the model on zeros of --input-shape and list the layers whose "
                       "output has the input's layout (N, C, spatial...), with a header (name, type, "
                       "output shape, reading); the automatic choice is named on the first line and "
                       "marked '*' in the table.")
    model_args(p)
    p.add_argument("--input-shape", required=True, metavar="N,C,...", help="input shape, e.g. 1,3,224,224")
    p.add_argument("--all", action="store_true", help="list every layer, not only the candidates")
    p.add_argument("--filter", metavar="TEXT", help="only layers whose name or type contains TEXT "
                   "(case-insensitive; a glob with * ? [ ])")
    p.set_defaults(func=cmd_layers)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["explain-dataset"]:  # its own parser: gradattr.cli.explain_dataset
        from .explain_dataset import cli_explain_dataset

        return cli_explain_dataset(argv[1:])
    if argv[:1] == ["report"]:  # its own parser: gradattr.cli.report
        from .report import cli_report

        return cli_report(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    return reporting_errors(lambda: args.func(args), args.debug)


if __name__ == "__main__":  # pragma: no cover
    drop_working_folder()
    raise SystemExit(main())
