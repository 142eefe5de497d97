"""Compare attribution methods on your own model and data: one table row per method.

:func:`compare` computes each method's maps on the data and scores them with
the metrics of :mod:`gradattr.metrics`; the :class:`Table` it returns prints as
aligned text and renders as Markdown. Methods are run through
:func:`gradattr.attribute` by name.
"""
from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from torch import nn

from . import api
from .errors import GradattrError, expected
from .method_arg import resolve_method
from .metrics.registry import DEFAULT_METRICS, METRICS, SHARED_CALLS, Metric, metric_for
from .inputs import prepare_inputs
from .targets import resolve_target

__all__ = ["compare", "Table", "explain", "available_methods", "method_options", "channel_reduce",
           "METRICS"]


# -- method dispatch ------------------------------------------------------------------
def available_methods() -> dict[str, str]:
    """``{name: one-line description}`` of the methods (:func:`gradattr.list_methods`)."""
    return {name: api.method_info(name).summary for name in api.list_methods()}


def method_options(method: str) -> set[str] | None:
    """The keyword options ``method`` takes (``None`` for an unknown name)."""
    if not isinstance(method, str) or method not in api.list_methods():
        return None
    return set(api.method_info(method).options)


def channel_reduce(maps, rank: int, lead: int):
    """``(*lead, C, *s)`` input-space attributions (guided backprop) -> ``(*lead, *s)`` maps.

    A map with one more dimension than ``lead + rank`` has a channel axis before
    the spatial ones; it becomes the sum of absolute values over channels (how
    pixel-attribution metrics and Quantus reduce channels). Other maps are returned as they are.
    """
    m = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    if m.ndim != lead + rank + 1:
        return maps
    out = m.abs().sum(lead)
    return out if isinstance(maps, torch.Tensor) else out.numpy()


def explain(net: nn.Module, x, method: str = "grad_cam", target=None, **options):
    """Maps of ``method`` for ``x``: :func:`gradattr.attribute`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten())
        >>> explain(net, torch.randn(1, 1, 8), "grad_cam", 0).shape
        torch.Size([1, 8])
    """
    if not isinstance(method, str):
        raise expected("method", "a method name (str)", type(method).__name__)
    return api.attribute(net, x, target, method=method, **options)


# -- the metrics' inputs: the maps as a batch, the reference as a mask or a box ----------
def _ref_maps(ctx):
    """Maps as a batch ``(N*K, *s)`` and the reference repeated to match."""
    m = torch.as_tensor(ctx.maps).float()
    s = ctx.spatial
    m = m.reshape(-1, *s)
    reps = m.shape[0] // ctx.n
    mask, box = ctx.mask, ctx.box
    if mask is not None:
        mk = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, torch.Tensor) else mask
        mask = mk if mk.ndim == len(s) else mk.repeat_interleave(reps, 0)
    if box is not None:
        bx = torch.as_tensor(np.asarray(box)) if not isinstance(box, torch.Tensor) else box
        box = bx if bx.ndim == 2 else bx.repeat_interleave(reps, 0)
    return m, mask, box


def _mask_box(mask, n: int) -> np.ndarray:
    mk = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
    if mk.ndim == 0:
        raise expected("mask", "a boolean array", "a scalar")
    masks = mk[None].repeat(n, 0) if mk.shape[0] != n else mk
    out = []
    for one in masks:
        idx = np.nonzero(one)
        if not idx[0].size:
            raise expected("mask", "at least one True element per sample", "an empty mask")
        out.append([[int(i.min()), int(i.max()) + 1] for i in idx])
    return np.asarray(out)


def _region_mask(ctx):
    """Maps ``(N*K, *s)`` and the reference as a mask (a box becomes the mask of its elements)."""
    m, mask, box = _ref_maps(ctx)
    if mask is None:
        b = np.asarray(box.cpu() if isinstance(box, torch.Tensor) else box)
        b = np.broadcast_to(b, (m.shape[0], *b.shape)) if b.ndim == 2 else b
        if b.shape != (m.shape[0], len(ctx.spatial), 2):
            raise expected("box", f"({len(ctx.spatial)}, 2) or (N, {len(ctx.spatial)}, 2) [start, stop) "
                           "intervals", f"shape {tuple(np.shape(box))}")
        mask = torch.zeros(m.shape, dtype=torch.bool)
        for i, one in enumerate(b):
            mask[(i, *[slice(int(lo), int(hi)) for lo, hi in one])] = True
    return m, mask


class _Context:
    """One batch and one method's maps, with a cache shared by metrics that share work."""

    def __init__(self, net, x, maps, target, common, metric_options, mask, box, n, spatial, method=None):
        self.net, self.x, self.maps, self.target = net, x, maps, target
        self.common, self.metric_options = common, metric_options
        self.mask, self.box, self.n, self.spatial = mask, box, n, spatial
        self.method = method  # the row's method (net, x, target) -> maps
        self._cache: dict = {}

    def cached(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def opts(self, name: str) -> dict:
        return dict(self.metric_options.get(name, {}))


def _value(metric: Metric, ctx: _Context):
    """One value per map of ``metric`` on the context's batch and maps (metrics that share a call
    share its result)."""
    return metric.value(ctx.cached(metric.key, lambda: _call(metric, ctx)))


def _call(metric: Metric, ctx: _Context):
    """``metric.function`` given what it needs, the shared options it takes and its own options."""
    opts = ctx.opts(metric.key)
    if "method" in metric.needs and "method" in opts:
        raise expected(f"metric_options[{metric.name!r}]", "options other than method (compare runs "
                       "each row's method)", "'method'")
    kw = {**{k: v for k, v in ctx.common.items() if k in metric.options}, **opts}
    fn = metric.function
    if "net" in metric.needs:
        if "method" in metric.needs:
            return fn(ctx.net, ctx.x, ctx.target, method=ctx.method, **kw)
        return fn(ctx.net, ctx.x, ctx.maps, ctx.target, **kw)
    if "mask" in metric.needs:
        return fn(*_region_mask(ctx), **kw)
    m, mask, box = _ref_maps(ctx)
    if "box" in metric.needs:
        return fn(m, box if box is not None else _mask_box(mask, m.shape[0]), **kw)
    if "region" in metric.needs:
        return fn(m, mask, box, **kw)
    return fn(m, **kw)


# -- the table ------------------------------------------------------------------------
@dataclass
class Table:
    """Rows of a comparison: one dict per method, ``{"method": name, metric: value, ...}``.

    ``str(table)`` is aligned plain text; :meth:`to_markdown` a Markdown table.
    Values are means over all samples (NaN-free ones for localisation metrics);
    ``seconds`` is the time to compute that method's maps.
    """

    rows: list[dict]
    columns: list[str]
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    samples: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, key):
        """A row by position or by method name."""
        if isinstance(key, str):
            for row in self.rows:
                if row["method"] == key:
                    return row
            raise KeyError(key)
        return self.rows[key]

    def best(self, metric: str) -> str:
        """The method with the best value of ``metric``."""
        if metric not in self.higher_is_better:
            raise expected("metric", "one of " + ", ".join(self.higher_is_better), repr(metric))
        sign = 1 if self.higher_is_better[metric] else -1
        return max(self.rows, key=lambda r: -math.inf if math.isnan(r[metric]) else sign * r[metric])[
            "method"]

    def _cells(self) -> list[list[str]]:
        def fmt(v):
            if isinstance(v, str):
                return v
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return [[fmt(r[c]) for c in self.columns] for r in self.rows]

    def _headers(self, up: str, down: str) -> list[str]:
        return [c + (f" {up}" if self.higher_is_better.get(c) else f" {down}" if c in self.higher_is_better
                     else "") for c in self.columns]

    def to_markdown(self) -> str:
        """A Markdown table; arrows say whether higher or lower is better."""
        head = self._headers("↑", "↓")
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self._cells()]
        return "\n".join(lines)

    def __str__(self) -> str:
        head = self._headers("(+)", "(-)")
        cells = self._cells()
        widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(head)]
        line = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                                   for i, (v, w) in enumerate(zip(r, widths)))
        out = [line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in cells]
        out.append(f"({self.samples} samples; (+) higher is better, (-) lower is better)")
        return "\n".join(out)

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:  # notebooks
        return self.to_markdown()


# -- compare --------------------------------------------------------------------------
def _inputs(x) -> bool:
    """``x`` is several inputs of one batch: a tuple or list of tensors/arrays (and other values)."""
    return isinstance(x, (tuple, list)) and any(isinstance(v, (torch.Tensor, np.ndarray)) for v in x)


def _batches(data, target, mask, box):
    """``data`` -> iterable of ``(x, target, mask, box)``; ``x`` a tuple for several inputs."""
    if isinstance(data, (torch.Tensor, np.ndarray)) or (isinstance(data, tuple) and _inputs(data)):
        yield data, target, mask, box  # one batch (a tuple: the inputs of net(*x), as for grad_cam)
        return
    if mask is not None or box is not None or target is not None:
        raise GradattrError("data: expected a single batch (tensor or array) when target, mask or box "
                            "is given; with an iterable of batches, put them in each batch as "
                            "(x, target) or (x, target, reference)")
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise expected("data", "a tensor, a numpy array, or an iterable of batches x, (x, target) or "
                       "(x, target, reference)", type(data).__name__)
    for i, item in enumerate(data):
        if isinstance(item, (torch.Tensor, np.ndarray)):
            yield item, None, None, None
        elif isinstance(item, (tuple, list)) and 1 <= len(item) <= 3:
            x, *rest = item
            if isinstance(x, (tuple, list)):  # (inputs, target, ...): several inputs, run as net(*x)
                if not _inputs(x):
                    raise expected(f"data[{i}][0]", "a tensor, an array, or a tuple/list of the "
                                   "network's inputs", f"a {type(x).__name__} without tensors or arrays")
                x = tuple(x)
            tgt = rest[0] if rest else None
            if tgt is not None and isinstance(tgt, (torch.Tensor, np.ndarray)) and np.ndim(tgt) == 1:
                tgt = tgt.reshape(-1, 1)  # labels of a batch: one class per sample
            ref = rest[1] if len(rest) > 1 else None
            is_mask = ref is not None and np.asarray(ref.cpu() if isinstance(ref, torch.Tensor)
                                                     else ref).dtype == bool
            yield x, tgt, (ref if is_mask else None), (None if is_mask else ref)
        else:
            raise expected(f"data[{i}]", "x, (x, target) or (x, target, reference), x a tensor, an "
                           "array or a tuple of inputs", type(item).__name__)


def _label(method) -> str:
    if isinstance(method, str):
        return method
    if isinstance(method, tuple) and len(method) == 2 and isinstance(method[0], str):
        return method[0]
    return getattr(method, "__name__", type(method).__name__)


def compare(net: nn.Module, data, methods: Sequence = ("grad_cam",), metrics: Sequence[str] = DEFAULT_METRICS,
            *, target=None, mask=None, box=None, method_options: Mapping | None = None,
            metric_options: Mapping | None = None, softmax: bool = True, batch_size: int = 32,
            classes: Sequence | None = None, input_format: str | None = None, device="auto",
            explain: int = 0, forward_kwargs: dict | None = None) -> Table:
    """Score several attribution methods on the same data: one row per method.

    Args:
        net: the network, left as found.
        data: one batch (``x``, a tensor or array as for :func:`gradattr.grad_cam`, or a
            tuple of the network's inputs run as ``net(*x)``) or an iterable of batches (a
            list, a ``DataLoader``): each ``x``, ``(x, target)`` (a 1-D target is one class
            per sample) or ``(x, target, reference)`` (a boolean mask or an integer box for
            the localisation metrics), where ``x`` may be a tuple or list of inputs (what a
            ``DataLoader`` over items ``((image, question), label)`` yields). A tuple
            ``data`` of tensors is one batch of several inputs, not a sequence of batches.
        methods: method names (see :func:`available_methods`), ``"random"`` (uniform
            noise maps: the chance level to beat), callables ``(net, x, target) ->
            maps``, or ``(label, callable)`` pairs.
        metrics: names from :data:`METRICS`: ``"deletion"``, ``"insertion"``, ``"average_drop"``,
            ``"increase_in_confidence"``, ``"road"``, ``"road_morf"``, ``"road_lerf"``, the checks
            of :mod:`gradattr.metrics` (``"randomization_check"``, ``"max_sensitivity"``...), and
            with a mask or box the localisation metrics (:data:`METRICS` says which).
        target: the classes to explain for a single batch (``None``: top class).
        mask, box: the object's reference region for a single batch (see
            :mod:`gradattr.metrics` for the box format).
        method_options: keyword arguments for every method (e.g.
            ``{"feature_layer": "layer4"}``), or ``{method: {...}}`` per method.
        metric_options: ``{metric: {...}}`` keyword arguments, e.g.
            ``{"deletion": {"steps": 20}, "road": {"fractions": [0.2, 0.5]}}``
            (``average_drop`` and ``increase_in_confidence`` share ``"confidence"``,
            the ROAD variants ``"road"``).
        softmax, batch_size: passed to every network metric.
        classes, input_format, device: as in :func:`gradattr.grad_cam`.
        explain: with several inputs, the index of the input the maps explain (given to
            every method, see :func:`gradattr.grad_cam`); the metrics perturb that input
            only (it must be floating point: an image, a series, embeddings), the others
            follow each perturbed copy's sample.
        forward_kwargs: keyword inputs of the network for every batch (e.g.
            ``{"attention_mask": m}``); tensors batch first follow the samples, so
            batched ones fit one batch (or batches of one size).

    Returns:
        A :class:`Table`, one row per method: the mean of each metric over the
        samples and ``seconds`` to compute the maps.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> t = compare(net, torch.randn(4, 2, 16), ["grad_cam", "random"], ["deletion", "insertion"])
        >>> [row["method"] for row in t], t.columns
        (['grad_cam', 'random'], ['method', 'deletion', 'insertion', 'seconds'])
    """
    methods, labels, metrics = _methods_and_metrics(methods, metrics)
    metric_options = _checked_metric_options(metric_options)
    common = dict(softmax=softmax, batch_size=batch_size, classes=classes, input_format=input_format,
                  device=device, explain=explain, forward_kwargs=forward_kwargs)
    return _scored(net, _batches(data, target, mask, box), methods, labels, metrics,
                   _options_per_method(method_options, labels), common, metric_options)


def _methods_and_metrics(methods, metrics) -> tuple[list, list[str], list[str]]:
    """``compare``'s ``methods`` (one method or several) and ``metrics`` as lists, checked, and the labels."""
    if isinstance(methods, str) or callable(methods) or (
            isinstance(methods, tuple) and len(methods) == 2 and isinstance(methods[0], str)
            and callable(methods[1])):
        methods = [methods]
    methods = list(methods)
    if not methods:
        raise expected("methods", "at least one method", "an empty list")
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise expected("metrics", "names from " + ", ".join(METRICS), repr(unknown[0]))
    labels = [_label(m) for m in methods]
    if len(set(labels)) != len(labels):
        raise expected("methods", "distinct method names", repr(labels))
    return methods, labels, metrics


def _checked_metric_options(metric_options: Mapping | None) -> dict:
    """``compare``'s ``metric_options``, checked, with each grouped key also under its group's name."""
    metric_options = dict(metric_options or {})
    for k in metric_options:
        if k not in METRICS and k not in SHARED_CALLS:
            raise expected("metric_options", "keys from " + ", ".join([*METRICS, *SHARED_CALLS]), repr(k))
    for k, opts in metric_options.items():
        _check_metric_options(k, opts)
    for m in METRICS.values():  # a shared call takes the options given under one of its metrics' names
        if m.shares and m.shares != m.name and m.name in metric_options:
            metric_options.setdefault(m.shares, metric_options[m.name])
    return metric_options


def _options_per_method(method_options: Mapping | None, labels: list[str]) -> dict[str, dict]:
    """``{label: options}``: the shared ``method_options`` under each method's own ``{label: {...}}``."""
    method_options = dict(method_options or {})
    per_method = {lab: dict(method_options[lab]) for lab in labels
                  if isinstance(method_options.get(lab), Mapping)}
    shared = {k: v for k, v in method_options.items() if k not in per_method}
    return {lab: {**shared, **per_method.get(lab, {})} for lab in labels}


def _scored(net, batches, methods, labels, metrics, options, common, metric_options) -> Table:
    """Each method's maps on every batch, scored by every metric: the :class:`Table` of ``compare``."""
    values: dict[str, dict[str, list]] = {lab: {m: [] for m in metrics} for lab in labels}
    seconds = {lab: 0.0 for lab in labels}
    samples = 0
    gen = torch.Generator().manual_seed(0)
    for x, tgt, bmask, bbox in batches:
        needs_ref = [m for m in metrics if METRICS[m].needs_reference]
        if needs_ref and bmask is None and bbox is None:
            raise expected("mask", f"a mask or a box for metric {needs_ref[0]!r}", "neither")
        n, spatial, _, _ = _shape_info(net, x, tgt, common)
        for method, lab in zip(methods, labels):
            t0 = time.perf_counter()
            maps = _maps(net, x, method, lab, tgt, options[lab], common, gen)
            seconds[lab] += time.perf_counter() - t0
            ctx = _Context(net, x, maps, tgt, common, metric_options, bmask, bbox, n, spatial,
                           _method_on_copies(method, lab, options[lab], common, gen))
            for m in metrics:
                v = _value(METRICS[m], ctx)
                values[lab][m].append(torch.as_tensor(np.asarray(v.cpu() if isinstance(v, torch.Tensor)
                                                                 else v), dtype=torch.float64).flatten())
        samples += n
    if samples == 0:
        raise expected("data", "at least one batch", "an empty iterable")
    rows = []
    for lab in labels:
        row = {"method": lab}
        for m in metrics:
            v = torch.cat(values[lab][m])
            row[m] = float(torch.nanmean(v)) if v.numel() else math.nan
        row["seconds"] = seconds[lab]
        rows.append(row)
    return Table(rows=rows, columns=["method", *metrics, "seconds"],
                 higher_is_better={m: METRICS[m].higher_is_better for m in metrics}, samples=samples)


def _check_metric_options(metric: str, opts) -> None:
    """``metric_options[metric]`` must be a mapping of options that metric's function takes."""
    if not isinstance(opts, Mapping):
        raise expected(f"metric_options[{metric!r}]", "a dict of keyword options", type(opts).__name__)
    entry = metric_for(metric)
    fn_name, allowed = entry.function.__name__, sorted(entry.options)
    for key in opts:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise expected(f"metric_options[{metric!r}]",
                           f"options of gradattr.metrics.{fn_name}: " + ", ".join(allowed)
                           if allowed else f"no options (gradattr.metrics.{fn_name} takes none)",
                           f"{key!r}{hint}")


def _shape_info(net, x, target, common) -> tuple[int, tuple[int, ...], int, bool]:
    """``(N, spatial, K, batched)`` of the maps a method returns for ``x`` and ``target``."""
    xt, layout, _ = prepare_inputs(x, net, common["explain"], common["input_format"], torch.device("cpu"),
                                   torch.float32)
    tgt = resolve_target(target, None, common["classes"], xt.shape[0])
    if tgt.scalar:
        k = 1
    else:
        k = cast(torch.Tensor, tgt.classes).shape[-1]  # set for every per-class target
    return xt.shape[0], layout.spatial, k, layout.batched


def _method_on_copies(method, label, options, common, gen) -> Callable:
    """The row's method as ``(net, x, target) -> maps`` for copies of the prepared input
    (``x`` in torch order: no ``input_format``), reduced over channels as the row's maps are."""
    on_copies = {**common, "input_format": None}
    return lambda net, x, target: _maps(net, x, method, label, target, options, on_copies, gen)


def _maps(net, x, method, label, target, options, common, gen):
    accepted = method_options(method) if isinstance(method, str) else None
    dev = {k: common[k] for k in ("device", "classes", "input_format", "explain", "forward_kwargs")
           if common[k] is not None and (accepted is None or k in accepted)}
    if isinstance(method, str) and method in ("random", "random_cam"):
        # "random" is the registry's random_cam, drawing from compare's generator (seeded 0)
        method, options = "random_cam", {"generator": gen, **options}
    if isinstance(method, str):
        if method in api.list_methods() and not api.method_info(method).needs_target:
            target = None  # a method that explains no class (Eigen-CAM); the metrics still score one
        n, spatial, k, batched = _shape_info(net, x, target, common)
        lead = int(batched) + (0 if resolve_target(target, None, common["classes"], n).scalar else 1)
        return channel_reduce(explain(net, x, method, target, **dev, **options), len(spatial), lead)
    fn = method[1] if isinstance(method, tuple) else method
    if not callable(fn) or isinstance(fn, nn.Module):
        raise expected("methods", "names, callables (net, x, target) -> maps, or (label, callable) pairs",
                       type(fn).__name__)
    explain_with, _ = resolve_method(fn)
    return explain_with(net, x, target, {})
