"""Targets: what score a map explains.

Every accepted form (class index, several indices, per-sample indices, labels,
a reduction function, ``None`` for the top class) is resolved once into a
:class:`Target`, whose :meth:`Target.scores` turns the reduction layer's output
``y`` into a score matrix ``(N, K)``: one score per sample and per map.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np
import torch

from .errors import GradattrError, expected
from .outputs import select


@dataclass(frozen=True)
class Target:
    """A resolved target.

    ``kind`` is ``"top"`` (each sample's best class), ``"index"`` (``classes`` of
    shape ``(K,)``, the same for every sample), ``"per_sample"`` (``classes`` of
    shape ``(N, K)``) or ``"fn"`` (a reduction function). ``scalar`` says the user
    asked for one map per sample, so the K axis is dropped on output.
    """

    kind: str
    scalar: bool
    classes: torch.Tensor | None = None
    fn: Callable | None = None
    output_key: object = None  # the entry of a structured output a class scores (gradattr.outputs)

    def with_output_key(self, key) -> Target:
        """This target scoring entry ``key`` of a dict/tuple/ModelOutput output."""
        from dataclasses import replace

        return replace(self, output_key=key)

    def fixed(self, y, n: int) -> Target:
        """This target with each sample's classes made explicit from the output ``y``.

        Perturbation methods score modified inputs; they must keep explaining the
        class chosen on the original input, not re-pick the top class.
        """
        if self.kind == "fn":
            return self
        y = select(y, self.output_key)
        per_class = y.flatten(2).sum(-1) if y.ndim > 2 else y
        if self.kind == "top":
            idx = per_class.detach().argmax(1, keepdim=True)
        else:
            idx = cast(torch.Tensor, self.classes).to(y.device)  # set for kinds "index", "per_sample"
            idx = idx.expand(n, -1) if idx.ndim == 1 else idx
        return Target("per_sample", self.scalar, classes=idx, output_key=self.output_key)

    def scores(self, y, n: int, rows: torch.Tensor | None = None, checks: list | None = None) -> torch.Tensor:
        """The ``(N, K)`` scores of the reduction layer's output ``y`` for ``n`` samples.

        ``rows`` maps each of the ``n`` outputs to the sample whose per-sample
        classes it uses (for batches of perturbed copies of the samples). With a
        ``checks`` list the NaN/Inf check is deferred onto it (see :func:`check_finite`).
        """
        if self.kind == "fn":
            if self.output_key is not None:
                y = select(y, self.output_key)
            s = cast(Callable, self.fn)(y)  # set for kind "fn"
            if not isinstance(s, torch.Tensor):
                raise expected("reduction_fn", f"a tensor with one score per sample (shape ({n},))",
                               f"a {type(s).__name__}")
            if s.ndim == 0 and n == 1:
                s = s.reshape(1)
            if s.ndim == 1 and s.shape[0] == n:
                s = s[:, None]
            elif not (s.ndim == 2 and s.shape[0] == n):
                raise expected("reduction_fn", f"one score per sample: shape ({n},) (or ({n}, K) for K "
                               "maps, or a scalar when N == 1)", f"shape {tuple(s.shape)}")
            return check_scores(s, y, "reduction_fn", checks)
        if self.output_key is not None or not isinstance(y, torch.Tensor):
            y = select(y, self.output_key)
        if not isinstance(y, torch.Tensor) or y.ndim < 2 or y.shape[0] != n:
            got = f"shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise expected("target", f"a reduction layer output of shape ({n}, classes, ...) to pick "
                           "a class from; for other outputs pass reduction_fn", got)
        # A class of a spatial output (N, C, *S) scores the sum over S (MATLAB's segmentation rule).
        per_class = y.flatten(2).sum(-1) if y.ndim > 2 else y
        c = per_class.shape[1]
        if self.kind == "top":
            idx = per_class.detach().argmax(1, keepdim=True)
        else:
            top = self.top_class  # read on the host: the classes stay on the CPU until used
            if top >= c:
                raise expected("target", f"class indices in 0..{c - 1} (0-based; MATLAB's classIdx "
                               "is 1-based, so subtract 1)", f"{top}")
            classes = cast(torch.Tensor, self.classes)  # set for kinds "index", "per_sample"
            if self.kind == "index" and classes.numel() == 1:  # one class: a view, no index copy
                return check_finite(per_class.narrow(1, top, 1), "net", "finite outputs for the target "
                                    "classes", checks)
            idx = classes.to(y.device)
            idx = idx.expand(n, -1) if idx.ndim == 1 else idx[rows] if rows is not None else idx
        return check_finite(per_class.gather(1, idx), "net", "finite outputs for the target classes", checks)

    @property
    def top_class(self) -> int:
        """The largest class index (``classes`` live on the CPU: no device read)."""
        top = _TOP.get(id(self.classes))
        return int(cast(torch.Tensor, self.classes).max()) if top is None else top


def tensors_of(y) -> list[torch.Tensor]:
    """The tensors in an output: a tensor, or the values of a tuple/list/dict of them."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        return [t for item in y for t in tensors_of(item)]
    return []


def check_scores(s: torch.Tensor, y=None, what: str = "reduction_fn", checks: list | None = None) -> torch.Tensor:
    """Refuse scores no map can be computed from, naming ``what`` produced them.

    A score must be a real floating-point tensor, finite, and, when the output
    ``y`` it was computed from is recorded by autograd, a differentiable function
    of it (not detached, not an ``argmax``, not a constant). Returns ``s``.

    >>> y = torch.ones(2, 3, requires_grad=True)
    >>> check_scores(y.argmax(1), y)
    Traceback (most recent call last):
    ...
    gradattr.errors.GradattrError: reduction_fn: expected a differentiable floating-point function of the output y (the score's gradient makes the map), got scores of dtype torch.int64
    """
    fix = "a differentiable floating-point function of the output y (the score's gradient makes the map)"
    if s.is_complex() or not s.is_floating_point():
        raise expected(what, fix, f"scores of dtype {s.dtype}")
    recorded = [t for t in tensors_of(y) if t.requires_grad]
    if recorded and not (s.requires_grad and _reaches(s, recorded)):
        raise expected(what, fix, "scores that do not depend on y (detached, constant, computed from "
                       "tensors other than y, or through argmax/round/.item())")
    return check_finite(s, what, "finite scores", checks)


def _reaches(s: torch.Tensor, ys: list[torch.Tensor]) -> bool:
    """Whether autograd's graph of ``s`` reaches one of the tensors ``ys`` (a score computed from the
    output, not from a tensor of its own that merely requires grad). Walks back from ``s`` and stops at
    the first of ``ys``: a few nodes for a score of the output; a tensor without a graph counts as
    reached (nothing to tell)."""
    targets = {t.grad_fn for t in ys if t.grad_fn is not None}
    if len(targets) < len(ys) or s.grad_fn is None:
        return True
    seen: set = set()
    stack: list = [s.grad_fn]  # next_functions hold None for inputs without a graph
    while stack:
        node = stack.pop()
        if node in targets:
            return True
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False


def check_finite(s: torch.Tensor, what: str, wanted: str, checks: list | None = None) -> torch.Tensor:
    """Refuse NaN or Inf scores (they would give an all-NaN map or AUC), saying for which rows.

    With a ``checks`` list nothing is read now: ``(sum of s, check)`` is appended, and
    whoever reads the sums (once, with everything else: :func:`gradattr.engine.explain`)
    runs ``check`` for a sum that is not finite (the sum of finite values may overflow:
    ``check`` decides). No host synchronisation on a GPU.
    """
    if checks is not None:
        checks.append((s.detach().sum(), lambda: check_finite(s, what, wanted)))
        return s
    finite = torch.isfinite(s.detach())
    if not bool(finite.all()):
        rows = sorted({int(r) for r in (~finite).nonzero()[:, 0].tolist()})
        kind = " and ".join(k for k, bad in (("NaN", torch.isnan(s).any()), ("Inf", torch.isinf(s).any()))
                            if bool(bad))
        raise expected(what, wanted, f"{kind} for sample(s) {rows[:10]}{' ...' if len(rows) > 10 else ''}")
    return s


def _as_int_array(target) -> np.ndarray | None:
    if isinstance(target, torch.Tensor):
        target = target.detach().cpu().numpy()
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return np.asarray(target)
    if isinstance(target, np.ndarray) or (isinstance(target, Sequence) and not isinstance(target, str)):
        arr = np.asarray(target)
        if arr.size and arr.dtype.kind in "iu":
            return arr
        if arr.size and arr.dtype == object and all(isinstance(v, int) and not isinstance(v, bool)
                                                    for v in arr.flat):
            return arr  # Python ints beyond int64: refused by the caller with their value
        if arr.size and arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
    return None


def _label_index(label: str, classes) -> int:
    """The index of ``label`` in ``classes``: an exact match, else the one case-insensitive match.

    A label that names two classes (ImageNet has two "crane"s) is refused with both
    indices; an unknown one with the closest labels.

    >>> _label_index("DOG", ["cat", "dog", "bird"])
    1
    """
    if classes is None:
        raise expected("classes", f"the list of class labels to look up target {label!r} in",
                       "classes=None")
    labels = [str(c) for c in classes]
    for same in (lambda c: c == label, lambda c: c.casefold() == label.casefold()):
        found = [i for i, c in enumerate(labels) if same(c)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(f"{i} {labels[i]!r}" for i in found[:5])
            raise expected("target", "a label that names one class (or pass its 0-based index)",
                           f"{label!r}, which names classes {names}")
    folded: dict[str, str] = {}
    for c in labels:
        folded.setdefault(c.casefold(), c)
    close = [folded[c] for c in difflib.get_close_matches(label.casefold(), list(folded), n=3)]
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise expected("target", f"a label from classes ({len(labels)} labels)", f"{label!r}{hint}")


def _pgc_targets(target) -> list | None:
    """The categories of a list of pytorch-grad-cam ``ClassifierOutputTarget`` objects, else None.

    pytorch-grad-cam's ``targets`` list holds one target per sample; other target
    objects (softmax, segmentation, boxes) score something else and are refused
    with the gradattr spelling of each.
    """
    if not isinstance(target, (list, tuple)) or not target:
        return None
    kinds = {type(t).__name__ for t in target}
    if not any(type(t).__module__.startswith("pytorch_grad_cam") for t in target):
        return None
    if kinds != {"ClassifierOutputTarget"}:
        other = sorted(kinds - {"ClassifierOutputTarget"})
        raise expected("target", "class indices, or a list of pytorch-grad-cam ClassifierOutputTarget "
                       "(one per sample); for other scores pass reduction_fn=lambda y: ... (the "
                       "score per sample, shape (N,)), for detectors gradattr.detection.box_score",
                       f"a list holding {', '.join(other)}")
    return [int(t.category) for t in target]


#: the class of each :func:`_index` tensor, by its id (they live as long as the module)
_TOP: dict[int, int] = {}


@lru_cache(maxsize=None)
def _index(k: int) -> torch.Tensor:
    """``tensor([k])``, made once per class (never written: targets only read their classes)."""
    t = torch.tensor([k])
    _TOP[id(t)] = k
    return t


@lru_cache(maxsize=1024)
def _class_target(k: int) -> Target:
    """``Target("index", scalar=True)`` of class ``k``, made once per class (frozen: shared)."""
    return Target("index", scalar=True, classes=_index(k))


def resolve_target(target, reduction_fn, classes, n: int) -> Target:
    """Resolve ``target``/``reduction_fn``/``classes`` into a :class:`Target` for ``n`` samples."""
    if callable(target) and not isinstance(target, (torch.Tensor, np.ndarray)):
        if reduction_fn is not None:
            raise GradattrError("target: got a callable and also reduction_fn; pass one of them")
        reduction_fn, target = target, None
    if reduction_fn is not None:
        if target is not None:
            raise GradattrError(f"target: expected None when reduction_fn is given (the function "
                                f"defines the score), got {target!r}")
        if not callable(reduction_fn):
            raise expected("reduction_fn", "a callable y -> scores of shape (N,)", type(reduction_fn).__name__)
        return Target("fn", scalar=True, fn=reduction_fn)
    if target is None:
        return Target("top", scalar=True)
    if type(target) is int and 0 <= target < 2**63:  # the common case, without numpy
        return _class_target(target)
    categories = _pgc_targets(target)
    if categories is not None:  # pytorch-grad-cam's targets: one ClassifierOutputTarget per sample
        if len(categories) != n:
            raise expected("target", f"one ClassifierOutputTarget per sample ({n}), as pytorch-grad-cam "
                           "takes them", f"{len(categories)}")
        target = np.asarray(categories, dtype=np.int64)[:, None]
        if (target < 0).any():
            raise expected("target", "class indices >= 0 (0-based)", f"{target.min()}")
        return Target("per_sample", scalar=True, classes=torch.as_tensor(target))
    if isinstance(target, str):
        return Target("index", scalar=True, classes=torch.tensor([_label_index(target, classes)]))
    if isinstance(target, Sequence) and target and all(isinstance(t, str) for t in target):
        ids = [_label_index(t, classes) for t in target]
        return Target("index", scalar=False, classes=torch.tensor(ids))
    arr = _as_int_array(target)
    if arr is not None and (arr.dtype.kind not in "iu" or (arr.size and arr.max() > np.iinfo(np.int64).max)):
        big = max(int(v) for v in arr.flat)
        raise expected("target", "class indices (0-based) that fit in int64", f"{big}")
    if arr is None or arr.ndim > 2:
        raise expected("target", "an int class index (0-based), a sequence of indices, an (N, K) "
                       "integer array, a label or labels, a callable, or None",
                       repr(target) if not hasattr(target, "shape") else f"shape {tuple(target.shape)}")
    if (arr < 0).any():
        raise expected("target", "class indices >= 0 (0-based)", f"{arr.min()}")
    idx = torch.as_tensor(arr, dtype=torch.long)
    if arr.ndim == 0:
        return Target("index", scalar=True, classes=idx.reshape(1))
    if arr.ndim == 1:
        return Target("index", scalar=False, classes=idx)
    if arr.shape[0] != n:
        raise expected("target", f"per-sample classes of shape ({n}, K) for a batch of {n}",
                       f"shape {arr.shape}")
    return Target("per_sample", scalar=False, classes=idx)
