"""Structured network outputs: which tensor of a dict, ``ModelOutput`` or tuple is scored.

Segmenters (torchvision's ``fcn_resnet50(x)["out"]``), Hugging Face models
(``ModelOutput.logits``) and many research models return several tensors. A
class target scores one of them: ``output_key`` when given, else the
``"logits"`` entry, else the ``"out"`` entry, else the only tensor. Anything else
is a clear error that lists what the output holds.

>>> import torch
>>> select({"out": torch.zeros(1, 3), "aux": torch.ones(1, 3)}, None).sum().item()
0.0
>>> select((torch.ones(2, 5),), None).shape
torch.Size([2, 5])
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import GradattrError

#: The entries scored by default, in order of preference.
DEFAULT_KEYS = ("logits", "out")


def _entries(y) -> list[tuple[object, object]] | None:
    """``(key, value)`` pairs of a structured output, or None for anything else."""
    if isinstance(y, Mapping):  # dict, OrderedDict, transformers' ModelOutput
        return list(y.items())
    if isinstance(y, (tuple, list)):
        return list(enumerate(y))
    return None


def _describe(entries) -> str:
    parts = []
    for k, v in entries:
        what = f"tensor {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        parts.append(f"{k!r}: {what}")
    return "{" + ", ".join(parts) + "}"


def select(y, key=None):
    """The tensor of the network output ``y`` that a class target scores.

    ``y`` itself when it is a tensor (and ``key`` is None); ``y[key]`` for a
    given ``key`` (a name, or an index of a tuple/list); else ``"logits"``,
    ``"out"`` or the only tensor entry.
    """
    if isinstance(y, torch.Tensor):
        if key is None:
            return y
        raise GradattrError(f"output_key: expected None for a network whose output is one tensor "
                            f"(shape {tuple(y.shape)}), got {key!r}")
    entries = _entries(y)
    if entries is None:
        if key is not None:
            raise GradattrError(f"output_key: expected a network output that has entries (dict, "
                                f"ModelOutput, tuple), got a {type(y).__name__}")
        return y  # let the target say what it expected
    found = dict(entries)
    if key is not None:
        if key in found:
            value = found[key]
            if not isinstance(value, torch.Tensor):
                raise GradattrError(f"output_key: expected the key of a tensor entry of the output "
                                    f"{_describe(entries)}, got {key!r} (a {type(value).__name__})")
            return value
        raise GradattrError(f"output_key: expected one of the output's keys "
                            f"{[k for k, _ in entries]} (output {_describe(entries)}), got {key!r}")
    for k in DEFAULT_KEYS:
        if isinstance(found.get(k), torch.Tensor):
            return found[k]
    tensors = [v for _, v in entries if isinstance(v, torch.Tensor)]
    if len(tensors) == 1:
        return tensors[0]
    raise GradattrError(f"output_key: expected an output with a 'logits' or 'out' entry or a single "
                        f"tensor to score, got {type(y).__name__} {_describe(entries)}; pass "
                        f"output_key= to choose one (or reduction_fn= to score it yourself)")


__all__ = ["select", "DEFAULT_KEYS"]
