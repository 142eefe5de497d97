"""What every command shares: the program name, one-line errors, the model arguments, start-up."""
from __future__ import annotations

import argparse
import os
import re
import sys

from ..errors import GradattrError
from ..options import SHARED, UPSAMPLING_MODES, Option
from ..loading.cli_error import CliError, one_line

PROG = "gradattr"


DEFAULT_MAX_MEMORY = "2G"


#: Input layouts in MATLAB letters, the same examples as the README.
FORMAT_EXAMPLES = "'SSC' (H x W x C), 'SSCB', 'SSSC', 'CT', 'TC', 'CBT'"


#: Names ``gradattr methods`` lists besides :func:`gradattr.list_methods`, with their line.
EXTRA_METHODS = {"random": "uniform random maps: the chance level gradattr.compare scores every "
                           "method against (compare only)"}


#: ``--upsampling``'s help: the modes and the default of the registry's ``upsampling`` option.
UPSAMPLING_HELP = (f"{', '.join(UPSAMPLING_MODES)}; default {SHARED['upsampling'].default} (bicubic: MATLAB "
                   "imresize; none: the feature map's size)")


MODEL_HELP = (
    "the network: a torch.export program (.pt2, saved with torch.export.save), or a factory "
    "'package.module:function' called with no arguments (e.g. torchvision.models:resnet50) with "
    "--weights FILE for its state_dict; the working folder is searched for that module only. "
    "No code from the file runs: a .pt2 (recognised by its content, whatever its suffix) is checked "
    "first and its pickled parts are read only as plain tensors; a file holding anything else that "
    "would run code (a module saved whole with torch.save(model), a .pt2 with pickled objects) loads "
    "only with --trust-model. TorchScript files cannot take hooks and are refused. "
    "`python -m gradattr.demo export-effnet DIR` writes an example model.")


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


# -- inputs ---------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_bytes(text: str, argument: str) -> float:
    """``"2G"``, ``"500M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (1K = 1024); ``"none"`` -> inf."""
    if text.strip().lower() in ("none", "off", "inf"):
        return float("inf")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if m is None or float(m.group(1)) <= 0:
        raise CliError(f"{argument}: expected a size such as 2G, 500M or 1.5GB (or none), got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


# -- method options -------------------------------------------------------------------
def shared_option(name: str) -> Option:
    """The shared :class:`~gradattr.options.Option` ``name`` (:data:`gradattr.options.SHARED`):
    its default and validator are the ones a command's argument uses."""
    return SHARED[name]


def check_option(name: str, value):
    """``value`` of the method option ``name`` checked (and normalised) by the registry's own
    validator, before anything is loaded; its error names the argument (``--name``)."""
    return shared_option(name).check("--" + name.replace("_", "-"), value)


# -- parser ---------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message):  # noqa: D102
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def model_args(p):
    """The model arguments every command that loads a model takes (``--model``, ``--weights``, ...)."""
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--weights", metavar="FILE", help="state_dict for a factory --model (loaded with "
                   "weights_only=True: no code from the file runs)")
    p.add_argument("--random-weights", action="store_true", help="use a factory --model without --weights "
                   "(its own initial weights, usually random) on purpose")
    p.add_argument("--trust-model", action="store_true", help="load a module saved whole with "
                   "torch.save(model) (torch.load with weights_only=False), which runs code from the file: "
                   "only for files you trust. Off by default")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def package_version() -> str:
    """gradattr's version, for ``--version``."""
    from .. import __version__

    return __version__


def reporting_errors(run, debug: bool, interrupted: str = "interrupted") -> int:
    """``run()``'s exit status, every failure reported as one line on stderr (exit 1; 130 on
    Ctrl-C, with ``interrupted`` said); ``debug`` re-raises for the traceback."""
    try:
        return run()
    except (CliError, GradattrError) as err:
        if debug:
            raise
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"{PROG}: {str(err) or interrupted}", file=sys.stderr)
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
        print(f"{PROG}: error: {type(err).__name__}: {one_line(err)} (--debug shows the traceback)",
              file=sys.stderr)
        return 1
