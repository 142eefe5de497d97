"""What a run's maps depend on (its fingerprint, kept in the folder's marker), the stable
descriptions and sha256 digests it is made of, and the account of what differs between two runs."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .context import RunContext


def run_fingerprint(net, name: str, target, options: dict, source, ctx: RunContext) -> dict[str, object]:
    """What a run's maps depend on: the model's digest and the method, target, options and data
    (or, from the command line, its own account of its arguments)."""
    fingerprint: dict[str, object] = {"model": _model_digest(net)}
    if ctx.describe is not None:
        fingerprint.update(ctx.describe)
    else:
        fingerprint.update(method=name, target=stable_value(target, net))
        for k, v in sorted(options.items()):
            fingerprint[k if k not in fingerprint else f"option {k}"] = stable_value(v, net)
        fingerprint.update(source.description)
    return fingerprint


def stable_value(value, net=None) -> object:
    """A JSON-able description of an option that is the same from one run to the next.

    Numbers, strings, lists and dicts are themselves; tensors and arrays are their shape and a
    sha256 of their bytes; a submodule of ``net`` is its name there; any other callable is its
    qualified name (its code is not hashed), a ``functools.partial`` that and its arguments.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [stable_value(v, net) for v in value]
    if isinstance(value, dict):
        return {str(k): stable_value(v, net) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"array{tuple(value.shape)}:{digest_tree(value)[:16]}"
    if isinstance(value, torch.nn.Module):
        names = [n for n, m in net.named_modules() if m is value] if net is not None else []
        return f"layer {names[0]!r}" if names else f"module {qualname(value)} {_model_digest(value)}"
    if isinstance(value, functools.partial):
        return {"partial": stable_value(value.func, net), "args": stable_value(list(value.args), net),
                "keywords": stable_value(value.keywords, net)}
    if callable(value):
        return f"callable {qualname(value)}"
    return f"{type(value).__name__}:{value!s}"


def qualname(obj) -> str:
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(obj).__name__)}"


def _tensor_bytes(t) -> bytes:
    if isinstance(t, torch.Tensor):
        t = t.detach()
        try:
            return t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        except (RuntimeError, TypeError):  # a dtype numpy cannot view (quantized, ...): its values
            return repr(t.cpu().tolist()).encode()
    return np.ascontiguousarray(t).tobytes()


def digest_tree(obj, h=None) -> str:
    """sha256 (hex) of the tensors, arrays, numbers and strings in a (nested) sample, with their
    shapes and dtypes; any other object counts by its type only."""
    top = h is None
    h = hashlib.sha256() if top else h
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        h.update(f"{type(obj).__name__}{tuple(obj.shape)}{obj.dtype};".encode())
        h.update(_tensor_bytes(obj))
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}[{len(obj)}](".encode())
        for v in obj:
            digest_tree(v, h)
        h.update(b")")
    elif isinstance(obj, dict):
        h.update(f"dict[{len(obj)}](".encode())
        for k in sorted(obj, key=str):
            h.update(f"{k!s}=".encode())
            digest_tree(obj[k], h)
        h.update(b")")
    else:
        h.update(f"<{qualname(obj)}>;".encode())
    return h.hexdigest() if top else ""


def _model_digest(net) -> str:
    """The model's class and a sha256 of every parameter and buffer (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for kind, items in (("p", net.named_parameters(remove_duplicate=False)),
                        ("b", net.named_buffers(remove_duplicate=False))):
        for key, t in items:
            h.update(f"{kind}:{key}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(_tensor_bytes(t))
    return f"{qualname(net)}, weights sha256 {h.hexdigest()[:16]}"


def _show(value, none: str) -> str:
    if value is None:
        return none
    if none != "None" and isinstance(value, (str, int, float)):  # the command line: as typed
        return str(value)
    return repr(value) if isinstance(value, (str, bool, int, float)) else json.dumps(value)


#: what a difference may mean where it is not plain
_NOTES = {"samples": "the first, middle and last samples as the data set returns them: one whose samples change "
                     "from one read to the next (random augmentation) cannot be resumed",
          "sample order": "a shuffling DataLoader resumes only with the same seed"}


def differences(old: dict, new: dict, folder: Path, ctx: RunContext) -> list[str]:
    out = []
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key) != new.get(key):
            detail = (ctx.details or {}).get(key)
            text = detail(folder, old.get(key), new.get(key)) if detail is not None else None
            text = text or f"{_show(old.get(key), ctx.none)} -> {_show(new.get(key), ctx.none)}"
            out.append(f"{key}: {text}" + (f" ({_NOTES[key]})" if key in _NOTES else ""))
    return out


__all__ = ["run_fingerprint", "stable_value", "qualname", "digest_tree", "differences"]
