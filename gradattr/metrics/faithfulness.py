"""Faithfulness of maps by perturbing the input: deletion and insertion (RISE, Petsiuk et al.,
BMVC 2018) and the confidence of the input masked by its map (average drop and increase in
confidence, Grad-CAM++, Chattopadhay et al., WACV 2018). The conventions are those of
:mod:`gradattr.metrics`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import expected
from ..inputs import prepare
from ..options import check_flag
from ..ops import gaussian_blur, minmax
from .arguments import as_numpy, check_int
from .scoring import element_ranks, scoring


@dataclass
class Curve:
    """A deletion or insertion curve.

    Attributes:
        auc: area under the curve per map, ``(N,)`` (or ``(N, K)``, or a scalar
            for an unbatched ``x``).
        scores: the score after each step, ``(N, steps + 1)`` (same leading dims
            as ``auc``); ``scores[..., 0]`` is for nothing perturbed.
        fractions: ``(steps + 1,)`` fraction of elements perturbed at each step,
            from 0 to 1 (the x axis of the curve).
    """

    auc: object
    scores: object
    fractions: object


def blur(x, sigma: float = 5.0, truncate: float = 4.0):
    """Gaussian blur of ``x (N, C, *s)`` over its spatial dims (the RISE insertion baseline).

    :func:`gradattr.ops.gaussian_blur` with the kernel cut at ``truncate * sigma`` elements
    (``2 * int(truncate * sigma + 0.5) + 1`` taps) and its reflect-101 border, reflected again
    on axes shorter than the kernel's half-width: ``scipy.ndimage.gaussian_filter(mode="mirror")``,
    which it matches, on ``x``'s device. (RISE's own code pads with zeros, which darkens the
    border; the blur of gradattr has one border rule, the reflected one of OpenCV and torchvision.)

    Args:
        x: ``(N, C, *spatial)`` tensor.
        sigma: standard deviation in elements (RISE: 5 on 224 x 224 images).
        truncate: the kernel is cut at ``truncate * sigma`` elements.

    Example:
        >>> x = torch.zeros(1, 1, 5); x[0, 0, 2] = 1.0
        >>> [round(v, 3) for v in blur(x, sigma=1.0)[0, 0].tolist()]
        [0.108, 0.246, 0.399, 0.246, 0.108]
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise expected("x", "a tensor (N, C, *spatial)", f"{type(x).__name__} of shape "
                       f"{tuple(getattr(x, 'shape', ()))}")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
        raise expected("sigma", "a number > 0", repr(sigma))
    radius = int(float(truncate) * float(sigma) + 0.5)
    return gaussian_blur(x, 2 * radius + 1, float(sigma), short_axes="repeat")


def _baseline(baseline, x: torch.Tensor, net, input_format) -> torch.Tensor:
    """``"zeros" | "mean" | "blur" | number | array shaped like x | callable`` -> ``(N, C, *s)``."""
    if isinstance(baseline, str):
        b = baseline.lower()
        if b == "zeros":
            return torch.zeros_like(x)
        if b == "mean":
            n, c, *s = x.shape
            return x.flatten(2).mean(-1).view(n, c, *([1] * len(s))).expand_as(x)
        if b == "blur":
            return blur(x)
    elif isinstance(baseline, (int, float, np.number)) and not isinstance(baseline, (bool, np.bool_)):
        if not np.isfinite(float(baseline)):
            raise expected("baseline", "a finite number", repr(baseline))
        return torch.full_like(x, float(baseline))
    elif callable(baseline) and not isinstance(baseline, (torch.Tensor, np.ndarray)):
        out = baseline(x.clone())
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
            raise expected("baseline", f"a callable returning a tensor of the prepared input's shape "
                           f"{tuple(x.shape)}", f"{type(out).__name__} of shape "
                           f"{tuple(getattr(out, 'shape', ()))}")
        out = out.to(device=x.device, dtype=x.dtype)
        if not torch.isfinite(out).all():
            raise expected("baseline", "a callable returning finite values", "NaN or Inf in its result")
        return out
    elif isinstance(baseline, (torch.Tensor, np.ndarray)):
        b, _ = prepare(baseline, net, input_format, x.device, x.dtype, needs_grad=False, name="baseline")
        if b.shape != x.shape:
            raise expected("baseline", f"an array of x's shape (prepared: {tuple(x.shape)})",
                           f"shape {tuple(baseline.shape)}")
        return b
    raise expected("baseline", "'zeros', 'mean', 'blur', a number, an array shaped like x, or a "
                   "callable x (N, C, *s) -> baseline", repr(baseline))


def _curve(kind: str, net, x, maps, target, *, baseline, steps, softmax, batch_size, reduction_fn,
           classes, input_format, device, explain, forward_kwargs) -> Curve:
    steps = check_int(steps, "steps", 1)
    with scoring(net, x, maps, target, reduction_fn, classes, input_format, device, softmax,
                  batch_size, explain, forward_kwargs) as (sc, form, _):
        base = _baseline(baseline, sc.x, net, input_format if not sc.call.inputs
                         else "BC" + "S" * (sc.x.ndim - 2))  # several inputs: x[explain] is batch first
        rows, cols = sc.items()
        flat = sc.maps.flatten(2).flatten(0, 1)  # (I, P)
        ranks = element_ranks(flat)
        n_items, p = flat.shape
        counts = torch.div(torch.arange(steps + 1, device=sc.x.device) * p, steps, rounding_mode="floor")
        spatial = sc.x.shape[2:]

        def make(sl: slice):
            job = torch.arange(sl.start, sl.stop, device=sc.x.device)
            item, step = job // (steps + 1), job % (steps + 1)
            done = ranks[item] < counts[step][:, None]  # (B, P): already removed / inserted
            keep = ~done if kind == "deletion" else done
            keep = keep.view(len(job), 1, *spatial)
            r = rows[item]
            return torch.where(keep, sc.x[r], base[r]), r, cols[item]

        curve = sc.run(n_items * (steps + 1), make).view(sc.n, sc.k, steps + 1)
        fractions = counts.float() / p
        auc = torch.trapezoid(curve, fractions, dim=-1)
        return Curve(auc=form(auc), scores=form(curve), fractions=form.vector(fractions))


def deletion(net: nn.Module, x, maps, target=None, *, baseline="zeros", steps: int = 100,
             softmax: bool = True, batch_size: int = 32, reduction_fn: Callable | None = None,
             classes: Sequence | None = None, input_format: str | None = None,
             device="auto", explain: int = 0, forward_kwargs: dict | None = None) -> Curve:
    """Deletion curve and AUC (Petsiuk et al., "RISE", BMVC 2018). Lower is better.

    The elements of ``x`` are ranked by the map (all channels of a position
    together, ties in raster order); after step ``i`` of ``steps`` the first
    ``floor(i * P / steps)`` of the ``P`` positions are replaced by the baseline,
    and ``AUC = trapz(score_i, fraction_i)``. A faithful map makes the score fall
    fast.

    Args:
        net: the network (``torch.nn.Module``), left as found.
        x: the input, as for :func:`gradattr.grad_cam` (tensor or numpy; batched or
            not; ``input_format`` for MATLAB order).
        maps: the maps to evaluate, ``(N, *s)``, ``(N, K, *s)``, or ``(*s)`` for one
            sample, at ``x``'s spatial size.
        target: as in :func:`gradattr.grad_cam`; ``None`` is each sample's top class.
        baseline: what removed elements become: ``"zeros"`` (RISE's deletion),
            ``"mean"`` (each sample's per-channel mean), ``"blur"`` (:func:`blur`,
            sigma 5), a number, an array shaped like ``x``, or a callable mapping
            the prepared ``(N, C, *s)`` input to a baseline of the same shape.
        steps: number of steps of the curve (it has ``steps + 1`` points).
        softmax: score the softmax probability of the class (``False``: the raw output).
        batch_size: perturbed inputs per forward pass.
        reduction_fn, classes, input_format, device: as in :func:`gradattr.grad_cam`.
        explain: with several inputs (``x`` a tuple, run as ``net(*x)``), the index of the
            input the maps explain: only that input (floating point, batch first) is
            perturbed; the other inputs stay as given, each copy with its own sample's.
        forward_kwargs: keyword inputs of the network (e.g. ``{"attention_mask": m}``);
            tensors whose first dimension is the batch size follow each copy's sample.

    Returns:
        A :class:`Curve` (``auc``, ``scores``, ``fractions``).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 1, 1, bias=False), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 1, bias=False))
        >>> _ = [torch.nn.init.ones_(m.weight) for m in (net[0], net[2])]
        >>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])           # score = sum(x) = 10
        >>> c = deletion(net, x, x[0], softmax=False, steps=4)  # remove 4, then 3, 2, 1
        >>> c.scores.tolist(), c.auc.item()
        ([10.0, 6.0, 3.0, 1.0, 0.0], 3.75)
    """
    return _curve("deletion", net, x, maps, target, baseline=baseline, steps=steps, softmax=softmax,
                  batch_size=batch_size, reduction_fn=reduction_fn, classes=classes,
                  input_format=input_format, device=device, explain=explain,
                  forward_kwargs=forward_kwargs)


def insertion(net: nn.Module, x, maps, target=None, *, baseline="blur", steps: int = 100,
              softmax: bool = True, batch_size: int = 32, reduction_fn: Callable | None = None,
              classes: Sequence | None = None, input_format: str | None = None,
              device="auto", explain: int = 0, forward_kwargs: dict | None = None) -> Curve:
    """Insertion curve and AUC (Petsiuk et al., "RISE", BMVC 2018). Higher is better.

    Starts from the baseline (a blurred copy of ``x`` by default, as in RISE) and
    puts the elements of ``x`` back in the map's order: after step ``i`` the
    first ``floor(i * P / steps)`` positions are ``x``'s; ``AUC = trapz(score_i,
    fraction_i)``. A faithful map makes the score rise fast.

    Args:
        net, x, maps, target, steps, softmax, batch_size, reduction_fn, classes,
            input_format, device, explain, forward_kwargs: as in :func:`deletion`.
        baseline: the starting point: ``"blur"`` (default), ``"zeros"``, ``"mean"``,
            a number, an array shaped like ``x`` or a callable (see :func:`deletion`).

    Returns:
        A :class:`Curve` (``auc``, ``scores``, ``fractions``).
    """
    return _curve("insertion", net, x, maps, target, baseline=baseline, steps=steps, softmax=softmax,
                  batch_size=batch_size, reduction_fn=reduction_fn, classes=classes,
                  input_format=input_format, device=device, explain=explain,
                  forward_kwargs=forward_kwargs)


@dataclass
class ConfidenceChange:
    """Scores of ``x`` and of ``x * map`` per map (each ``(N,)``, ``(N, K)`` or scalar).

    Attributes:
        score: ``Y``, the score of the unperturbed input.
        masked: ``O``, the score of the input multiplied by the (normalised) map.
        drop: ``max(0, Y - O) / Y``.
        increase: ``O > Y`` (bool).
    """

    score: object
    masked: object
    drop: object
    increase: object

    @property
    def average_drop(self) -> float:
        """``100 * mean(drop)`` over all maps, in percent (lower is better)."""
        return float(100 * np.mean(as_numpy(self.drop)))

    @property
    def increase_in_confidence(self) -> float:
        """``100 * mean(increase)`` over all maps, in percent (higher is better)."""
        return float(100 * np.mean(as_numpy(self.increase)))


def confidence_change(net: nn.Module, x, maps, target=None, *, normalize: bool = True,
                      softmax: bool = True, batch_size: int = 32, reduction_fn: Callable | None = None,
                      classes: Sequence | None = None, input_format: str | None = None,
                      device="auto", explain: int = 0,
                      forward_kwargs: dict | None = None) -> ConfidenceChange:
    """Score of ``x`` masked by its map (Chattopadhay et al., "Grad-CAM++", WACV 2018).

    ``O = score(x * E)`` with ``E`` the map min-max scaled to [0, 1] (broadcast
    over channels); ``drop = max(0, Y - O) / Y`` and ``increase = O > Y``, where
    ``Y = score(x)``. Averaged over a data set they give the paper's *average
    drop* (lower is better) and *increase in confidence* (higher is better): see
    :attr:`ConfidenceChange.average_drop`.

    Args:
        net, x, maps, target, softmax, batch_size, reduction_fn, classes,
            input_format, device, explain, forward_kwargs: as in :func:`deletion`.
        normalize: min-max scale each map to [0, 1] first (``False``: use the maps
            as they are, e.g. already in [0, 1]).

    Returns:
        A :class:`ConfidenceChange`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 1, 1, bias=False), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 1, bias=False))
        >>> _ = [torch.nn.init.ones_(m.weight) for m in (net[0], net[2])]
        >>> x = torch.tensor([[2.0, 2.0, 2.0, 2.0]])                      # score 8
        >>> c = confidence_change(net, x, torch.tensor([0.0, 1, 1, 2]), softmax=False)
        >>> c.masked.item(), c.drop.item(), c.average_drop                # 2 * (0 + .5 + .5 + 1)
        (4.0, 0.5, 50.0)
    """
    check_flag("normalize", normalize)
    with scoring(net, x, maps, target, reduction_fn, classes, input_format, device, softmax,
                  batch_size, explain, forward_kwargs) as (sc, form, _):
        e = minmax(sc.maps) if normalize else sc.maps
        rows, cols = sc.items()
        em = e.flatten(0, 1)  # (I, *s)

        def make(sl: slice):
            r = rows[sl]
            return sc.x[r] * em[sl][:, None], r, cols[sl]

        masked = sc.run(len(rows), make).view(sc.n, sc.k)
        drop = torch.relu(sc.base - masked) / sc.base
        return ConfidenceChange(score=form(sc.base), masked=form(masked), drop=form(drop),
                                increase=form(masked > sc.base))


def average_drop(net: nn.Module, x, maps, target=None, *, normalize: bool = True, softmax: bool = True,
                 batch_size: int = 32, reduction_fn: Callable | None = None, classes: Sequence | None = None,
                 input_format: str | None = None, device="auto", explain: int = 0,
                 forward_kwargs: dict | None = None) -> float:
    """Average drop in percent, ``100 * mean(max(0, Y - O) / Y)`` (Grad-CAM++). Lower is better.

    The arguments are those of :func:`confidence_change`, which gives the per-map values.
    """
    return confidence_change(net, x, maps, target, normalize=normalize, softmax=softmax,
                             batch_size=batch_size, reduction_fn=reduction_fn, classes=classes,
                             input_format=input_format, device=device, explain=explain,
                  forward_kwargs=forward_kwargs).average_drop


def increase_in_confidence(net: nn.Module, x, maps, target=None, *, normalize: bool = True,
                           softmax: bool = True, batch_size: int = 32, reduction_fn: Callable | None = None,
                           classes: Sequence | None = None, input_format: str | None = None,
                           device="auto", explain: int = 0, forward_kwargs: dict | None = None) -> float:
    """Increase in confidence in percent, ``100 * mean(O > Y)`` (Grad-CAM++). Higher is better.

    The arguments are those of :func:`confidence_change`, which gives the per-map values.
    """
    return confidence_change(net, x, maps, target, normalize=normalize, softmax=softmax,
                             batch_size=batch_size, reduction_fn=reduction_fn, classes=classes,
                             input_format=input_format, device=device, explain=explain,
                  forward_kwargs=forward_kwargs).increase_in_confidence
