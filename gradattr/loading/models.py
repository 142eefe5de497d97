"""Loading ``--model``: a model file (a ``torch.export`` archive, a module saved with ``torch.save``)
or a factory ``package.module:function`` with its ``--weights``.

The model-file rule: no code from a model file runs unless ``--trust-model`` is
given. A ``torch.export`` archive (recognised by its content, whatever its
suffix) is checked and rebuilt by :mod:`gradattr.loading.pt2_archive` before torch reads it:
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

from . import pt2_archive
from .cli_error import CliError, one_line

if TYPE_CHECKING:
    from torch import nn


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
        missing = pt2_archive.missing_operators(data)
    except Exception:  # noqa: BLE001 - only a better message for a failure already reported
        return None
    if not missing:
        return None
    more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])})" if len(missing) > 1 else ""
    return CliError(f"--model: {spec} calls the operator {missing[0]}{more}, which is not registered in this "
                    f"Python; {CUSTOM_OPS}")


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
    members' declared sizes are checked first (:func:`gradattr.loading.pt2_archive.check_sizes`: a zip bomb is
    refused before anything is read) and each is read up to its declared size only."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        return [], None
    pt2_archive.check_sizes(z.infolist(), len(data))
    return z.namelist(), pt2_archive.member_reader(z)


def _load_exported(data: bytes, spec: str, trust: bool):
    """The ``ExportedProgram`` of a ``.pt2`` archive's bytes; checked by :mod:`gradattr.loading.pt2_archive` unless trusted."""
    import torch

    if trust:  # --trust-model: torch.export.load as it is, pickled members included
        try:
            with pt2_archive.quiet_torch():
                return torch.export.load(io.BytesIO(data))
        except Exception as err:  # noqa: BLE001
            raise _missing_operator(data, spec) or CliError(
                f"--model: could not load {spec} (trusted) with torch.export.load: {one_line(err)}") from None
    try:
        clean = pt2_archive.checked_archive(data)
    except pt2_archive.Unsafe as err:
        raise CliError(f"--model: {spec} {err}; {TRUST}") from None
    except pt2_archive.TooLarge as err:
        raise CliError(f"--model: {spec} {err}") from None
    except pt2_archive.NotAnArchive as err:
        raise CliError(f"--model: {spec} is not a torch.export archive gradattr can read: {err}; re-save it "
                       f"with torch.export.save under this torch, or pass --trust-model to let torch.export.load "
                       "try (it may run code from the file)") from None
    except Exception as err:  # noqa: BLE001 - a damaged zip (bad CRC, cut short)
        raise CliError(f"--model: could not read {spec} as a torch.export archive: {one_line(err)}") from None
    missing = _missing_operator(clean, spec)
    if missing is not None:
        raise missing
    try:
        with pt2_archive.quiet_torch():
            ep = torch.export.load(io.BytesIO(clean))
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--model: could not load {spec} with torch.export.load: {one_line(err)}") from None
    try:
        pt2_archive.check_graphs(ep)
    except pt2_archive.Unsafe as err:
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
        with pt2_archive.quiet_torch():
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
        with pt2_archive.quiet_torch():
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
    except pt2_archive.TooLarge as err:
        raise CliError(f"--model: {spec} {err}") from None
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        raise _torchscript_error(spec)
    try:
        archive = bool(names) and pt2_archive.is_archive(names, read)
    except Exception:  # noqa: BLE001 - a damaged zip: torch.load reports it below
        archive = False
    if archive or pt2_archive.is_legacy(names):  # by content: a .pt2 renamed model.bin is one too
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
