"""How good is a map? Faithfulness and localisation metrics for any rank.

Every function works on sequences ``(N, C, T)``, images ``(N, C, H, W)`` and
volumes ``(N, C, D, H, W)`` through one code path (``n, c, *s = x.shape``),
batched, on the device of the computation; the network is run in eval mode
under ``torch.no_grad()`` and left exactly as found (training flags, device,
``requires_grad``, ``.grad``; no hooks are used).

Faithfulness (they run the network on perturbed copies of ``x``):

* :func:`deletion` / :func:`insertion` -- RISE (Petsiuk et al., BMVC 2018):
  the target score while the most important elements are removed (replaced by
  a baseline) or inserted (into the baseline), and the area under that curve.
* :func:`confidence_change`, :func:`average_drop`, :func:`increase_in_confidence`
  -- Grad-CAM++ (Chattopadhay et al., WACV 2018): the score of ``x * map``.
* :func:`road` -- ROAD (Rong et al., ICML 2022): remove the most or least
  relevant fraction and fill it by noisy linear imputation (:func:`impute`).

Localisation (maps only, no network):

* :func:`pointing_game` (Zhang et al., ECCV 2016) and
  :func:`energy_pointing_game` (Wang et al., Score-CAM, CVPRW 2020) against a
  mask or a box;
* :func:`localize` -- the CAM paper's weakly supervised localisation (Zhou et
  al., CVPR 2016): threshold, largest connected component, bounding box, IoU.

Sanity checks, robustness and concentration (:mod:`gradattr.sanity`, exported here):
:func:`randomization_check` (Adebayo et al., NeurIPS 2018), :func:`max_sensitivity` and
:func:`infidelity` (Yeh et al., NeurIPS 2019), :func:`sparseness` (Chalasani et al., ICML
2020), :func:`relevance_mass` and :func:`relevance_rank` (Arras et al., 2022).

Conventions shared by the network metrics:

* ``maps`` come as :func:`gradattr.grad_cam` returns them for ``x``: ``(N, *s)``
  (or ``(*s)`` for an unbatched ``x``), or ``(N, K, *s)`` for K targets per
  sample. Their spatial size must be ``x``'s (use ``upsampling="bicubic"``).
* ``x`` may be a tuple of inputs run as ``net(*x)``, with ``forward_kwargs`` (keyword
  inputs) and ``explain`` (the index of the input the maps explain), as for the
  attribution methods: only ``x[explain]`` is perturbed, and the other inputs and the
  batched keyword inputs follow each perturbed copy's sample.
* ``target`` takes everything ``grad_cam`` takes (``None`` is each sample's top
  class on the unperturbed input, kept fixed for all perturbed copies).
* Scores are softmax probabilities of the target class (``softmax=True``, as in
  the papers) or raw outputs (``softmax=False``); a ``reduction_fn`` (or callable
  target) always gets the raw output.
* Results come back in ``x``'s form: tensors on ``x``'s device (numpy for numpy
  ``x``), ``N`` dropped for unbatched ``x`` and ``K`` dropped when ``maps`` had no
  ``K`` axis.

Boxes, for every rank, are ``(d, 2)`` integer arrays of half-open ``[start, stop)``
index intervals in array-axis order -- ``[[row0, row1], [col0, col1]]`` for an
image, ``[[t0, t1]]`` for a sequence, ``[[z0, z1], [row0, row1], [col0, col1]]``
for a volume -- or ``(N, d, 2)`` for one box per sample. A torchvision/Pascal
``(x1, y1, x2, y2)`` box is ``[[y1, y2], [x1, x2]]``.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .ops import minmax
from .prep import Call, prepare_call
from .options import check_explain, check_flag, check_forward_kwargs
from .errors import GradattrError, expected
from .inputs import prepare
from .sanity import (infidelity, max_sensitivity, randomizable_layers, randomization_check, relevance_mass,
                     relevance_rank, sparseness)

__all__ = [
    "Curve", "deletion", "insertion", "blur",
    "ConfidenceChange", "confidence_change", "average_drop", "increase_in_confidence",
    "Road", "road", "impute",
    "pointing_game", "energy_pointing_game", "Localization", "localize", "box_iou",
    "randomization_check", "randomizable_layers", "max_sensitivity", "infidelity", "sparseness",
    "relevance_mass", "relevance_rank",
]


# ====================================================================================
# Shared set-up of the network metrics
# ====================================================================================
@dataclass
class _Form:
    """How to give per-map results back in the user's form."""

    batched: bool
    k_axis: bool
    numpy: bool
    device: torch.device

    def __call__(self, t: torch.Tensor):
        """``(N, K, ...)`` -> user form (drop K without a K axis, N for unbatched input)."""
        if not self.k_axis:
            t = t[:, 0]
        if not self.batched:
            t = t[0]
        t = t.detach()
        return t.cpu().numpy() if self.numpy else t.to(self.device)

    def vector(self, t: torch.Tensor):
        """A vector shared by all maps (fractions), as a tensor or numpy array."""
        return t.detach().cpu().numpy() if self.numpy else t.detach().to(self.device)


class _Scorer:
    """Scores batches of perturbed copies of the samples, for fixed targets.

    ``self.x`` is the prepared input ``(N, C, *s)``, ``self.maps`` the maps
    ``(N, K, *s)``; ``self.base`` the ``(N, K)`` scores of the unperturbed input.
    """

    def __init__(self, call: Call, maps: torch.Tensor, softmax: bool, batch_size: int):
        self.call, self.x, self.maps, self.batch_size = call, call.x, maps, batch_size
        target = call.target
        self.softmax = softmax and target.kind != "fn"
        self.n, self.k = maps.shape[:2]
        y = call.forward(self.x)
        self.target = target.fixed(self._prob(y), self.n)
        base = self.target.scores(self._prob(y), self.n)
        if base.shape[1] != self.k:
            raise expected("maps", f"one map per target score: {base.shape[1]} per sample (the target "
                           f"gives {base.shape[1]} scores)", f"{self.k} maps per sample, shape "
                           f"{tuple(maps.shape)}")
        self.base = base.float()

    def _prob(self, y):
        return torch.softmax(y, 1) if self.softmax and isinstance(y, torch.Tensor) else y

    def items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample row and target column of every map, flattened in (n, k) order."""
        dev = self.x.device
        rows = torch.arange(self.n, device=dev).repeat_interleave(self.k)
        cols = torch.arange(self.k, device=dev).repeat(self.n)
        return rows, cols

    def score(self, inputs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` of ``inputs (B, C, *s)``, row ``b`` being a copy of sample ``rows[b]``
        scored for its target ``cols[b]``."""
        y = self._prob(self.call.forward(inputs, rows))  # the other inputs follow the rows
        s = self.target.scores(y, inputs.shape[0], rows)
        return s.gather(1, cols[:, None])[:, 0].float()

    def run(self, jobs: int, make: Callable[[slice], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
        """Score ``jobs`` perturbed inputs, built ``batch_size`` at a time by ``make(slice)``."""
        out = torch.empty(jobs, device=self.x.device)
        for start in range(0, jobs, self.batch_size):
            sl = slice(start, min(jobs, start + self.batch_size))
            out[sl] = self.score(*make(sl))
        return out


def _check_int(value, argument: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise expected(argument, f"an integer >= {low}", repr(value))
    return int(value)


def _as_tensor(a, argument: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach()
    try:
        arr = np.asarray(a)
    except Exception:  # noqa: BLE001 - report what was given
        raise expected(argument, "a tensor or a numpy array", type(a).__name__) from None
    if arr.dtype.kind not in "biuf":
        raise expected(argument, "a numeric or boolean array", f"{type(a).__name__} of dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _prepare_maps(maps, spatial: tuple[int, ...], batched: bool, n: int, device, dtype):
    """User maps -> ``(N, K, *s)`` float on ``device``, and whether they had a K axis."""
    m = _as_tensor(maps, "maps")
    r, lead = len(spatial), m.ndim - len(spatial)
    want = (f"({n}, *{spatial}) or ({n}, K, *{spatial})" if batched
            else f"{spatial} or (K, *{spatial}) for an unbatched x")
    if tuple(m.shape[m.ndim - r:]) != tuple(spatial) or lead not in ((1, 2) if batched else (0, 1)):
        hint = (" (maps must have the input's spatial size: compute them with upsampling='bicubic')"
                if lead in ((1, 2) if batched else (0, 1)) else "")
        raise expected("maps", want + hint, f"shape {tuple(m.shape)}")
    if batched and m.shape[0] != n:
        raise expected("maps", f"one map per sample of x ({n})", f"shape {tuple(m.shape)}")
    k_axis = lead == (2 if batched else 1)
    if not batched:
        m = m[None]
    if not k_axis:
        m = m[:, None]
    m = m.to(device=device, dtype=dtype)
    if not torch.isfinite(m).all():
        raise expected("maps", "finite values", "NaN or Inf")
    return m, k_axis


@contextmanager
def _scoring(net, x, maps, target, reduction_fn, classes, input_format, device, softmax, batch_size,
             explain=0, forward_kwargs=None):
    """Validate everything, then yield a :class:`_Scorer` and the output :class:`_Form`
    while the network is borrowed (eval mode, compute device) and gradients are off.

    With several inputs (a tuple ``x``) the maps explain ``x[explain]``: only that input is
    perturbed; the others and the batched ``forward_kwargs`` follow each perturbed copy's sample.
    """
    batch_size = _check_int(batch_size, "batch_size", 1)
    check_flag("softmax", softmax)
    # the methods' validators of the two options (the rest of explain is checked against x)
    check_forward_kwargs("forward_kwargs", forward_kwargs)
    check_explain("explain", explain)
    # The metrics run forward passes only: inputs made under inference_mode are fine.
    call = prepare_call(net, x, target=target, reduction_fn=reduction_fn, classes=classes,
                        input_format=input_format, device=device, needs_grad=False,
                        explain=explain, forward_kwargs=forward_kwargs, several=True)
    xt, layout = call.x, call.layout
    if not xt.is_floating_point():
        raise expected("explain", f"the index of a floating-point input to perturb (the metrics replace "
                       f"the explained input's elements); x[{call.explain}] holds "
                       f"{str(xt.dtype).replace('torch.', '')} values such as token ids",
                       repr(call.explain))
    m, k_axis = _prepare_maps(maps, tuple(xt.shape[2:]), layout.batched, xt.shape[0], xt.device, xt.dtype)
    form = _Form(layout.batched, k_axis, layout.numpy, layout.device)
    with call.borrowed(), torch.no_grad():
        yield _Scorer(call, m, softmax, batch_size), form, layout


def _ranks(maps: torch.Tensor) -> torch.Tensor:
    """``(I, P)`` rank of every element of each flattened map, 0 = most important.

    Ties keep their raster order (a stable sort), so a constant map removes
    elements in index order.
    """
    order = torch.argsort(maps, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(maps.shape[1], device=maps.device).expand_as(order))
    return ranks


# ====================================================================================
# Deletion and insertion (RISE)
# ====================================================================================
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

    Separable, one dimension at a time, with the half-sample symmetric border of
    ``scipy.ndimage.gaussian_filter(mode="reflect")`` (which it matches), on
    ``x``'s device.

    Args:
        x: ``(N, C, *spatial)`` tensor.
        sigma: standard deviation in elements (RISE: 5 on 224 x 224 images).
        truncate: the kernel is cut at ``truncate * sigma`` elements.

    Example:
        >>> x = torch.zeros(1, 1, 5); x[0, 0, 2] = 1.0
        >>> [round(v, 3) for v in blur(x, sigma=1.0)[0, 0].tolist()]
        [0.058, 0.242, 0.399, 0.242, 0.058]
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise expected("x", "a tensor (N, C, *spatial)", f"{type(x).__name__} of shape "
                       f"{tuple(getattr(x, 'shape', ()))}")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
        raise expected("sigma", "a number > 0", repr(sigma))
    out = x
    for dim in range(2, x.ndim):
        mat = torch.as_tensor(_gauss_matrix(x.shape[dim], float(sigma), float(truncate)),
                              dtype=x.dtype, device=x.device)
        out = torch.movedim(torch.movedim(out, dim, -1) @ mat.T, -1, dim)
    return out


def _gauss_matrix(length: int, sigma: float, truncate: float) -> np.ndarray:
    """``(L, L)`` matrix of a 1-D Gaussian filter with scipy's ``reflect`` border."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w /= w.sum()
    mirror = np.concatenate([np.arange(length), np.arange(length - 1, -1, -1)])
    idx = mirror[np.mod(np.arange(length)[:, None] + t[None, :], 2 * length)]
    mat = np.zeros((length, length))
    np.add.at(mat, (np.repeat(np.arange(length), t.size), idx.ravel()), np.tile(w, length))
    return mat


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
    steps = _check_int(steps, "steps", 1)
    with _scoring(net, x, maps, target, reduction_fn, classes, input_format, device, softmax,
                  batch_size, explain, forward_kwargs) as (sc, form, _):
        base = _baseline(baseline, sc.x, net, input_format if not sc.call.inputs
                         else "BC" + "S" * (sc.x.ndim - 2))  # several inputs: x[explain] is batch first
        rows, cols = sc.items()
        flat = sc.maps.flatten(2).flatten(0, 1)  # (I, P)
        ranks = _ranks(flat)
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


# ====================================================================================
# Average drop / increase in confidence (Grad-CAM++)
# ====================================================================================
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
        return float(100 * np.mean(_numpy(self.drop)))

    @property
    def increase_in_confidence(self) -> float:
        """``100 * mean(increase)`` over all maps, in percent (higher is better)."""
        return float(100 * np.mean(_numpy(self.increase)))


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


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
    with _scoring(net, x, maps, target, reduction_fn, classes, input_format, device, softmax,
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


# ====================================================================================
# ROAD: remove and debias (noisy linear imputation)
# ====================================================================================
def _neighbour_weights(rank: int) -> list[tuple[tuple[int, ...], float]]:
    """Offsets in ``{-1, 0, 1}^rank`` (all but 0) with weight ``2^-(nonzeros - 1)``.

    For images this is ROAD's stencil: 1/6 for the 4 edge neighbours, 1/12 for the
    4 diagonal ones (only the ratios matter); for sequences the two neighbours
    weigh the same; for volumes face : edge : corner = 4 : 2 : 1.
    """
    out = []
    for off in itertools.product((-1, 0, 1), repeat=rank):
        nz = sum(o != 0 for o in off)
        if nz:
            out.append((off, 2.0 ** -(nz - 1)))
    return out


def impute(x, missing, noise: float = 0.0, generator: torch.Generator | None = None):
    """Noisy linear imputation of the ``missing`` elements of ``x`` (Rong et al., ICML 2022).

    Every missing element is set to the weighted mean of its in-bounds
    neighbours (all ``3^d - 1`` of them, see the weights below), known or missing,
    which is the sparse linear system ``sum_j w_ij (v_j - v_i) = 0`` over the
    missing elements, solved with ``scipy.sparse.linalg.spsolve`` for all channels
    at once; then ``noise * N(0, 1)`` is added to the imputed values. On images
    it is ROAD's imputer (weights 1/6 for edge, 1/12 for diagonal neighbours);
    for sequences and volumes the weights halve for each extra non-zero offset.

    Args:
        x: ``(C, *spatial)`` tensor (channels share the mask).
        missing: boolean ``(*spatial)`` tensor, ``True`` where ``x`` is to be
            imputed; at least one element must be known.
        noise: standard deviation of the Gaussian noise added to imputed values.
        generator: a ``torch.Generator`` (CPU) for the noise.

    Returns:
        A new tensor like ``x`` (same device and dtype); ``x`` is unchanged.

    Example:
        >>> x = torch.tensor([[0.0, 5.0, 5.0, 3.0]])
        >>> impute(x, torch.tensor([False, True, True, False])).tolist()  # a line from 0 to 3
        [[0.0, 1.0, 2.0, 3.0]]
    """
    from scipy.sparse.linalg import spsolve

    c, *spatial = x.shape
    shape = tuple(spatial)
    miss = missing.detach().cpu().numpy().astype(bool)
    if miss.shape != shape:
        raise expected("missing", f"a boolean mask of x's spatial shape {shape}", f"shape {miss.shape}")
    flat_miss = miss.ravel()
    unknown = np.flatnonzero(flat_miss)
    m, p = unknown.size, flat_miss.size
    if m == 0:
        return x.clone()
    if m == p:
        raise expected("missing", "at least one known element to impute from", "every element missing")
    a, known = _imputation_system(flat_miss, unknown, shape)
    values = x.detach().reshape(c, p).cpu().double().numpy()
    rhs = -(known @ values.T)  # (m, C)
    sol = np.asarray(spsolve(a.tocsc(), rhs)).reshape(m, c)
    filled = torch.from_numpy(sol.T.copy())
    if noise:
        filled = filled + noise * torch.randn(filled.shape, generator=generator, dtype=filled.dtype)
    out = x.detach().reshape(c, p).clone()
    out[:, torch.from_numpy(unknown).to(out.device)] = filled.to(device=out.device, dtype=out.dtype)
    return out.view_as(x)


def _imputation_system(flat_miss: np.ndarray, unknown: np.ndarray, shape: tuple):
    """:func:`impute`'s sparse system over the ``m`` missing elements of a grid ``shape``:
    ``(A (m, m), K (m, P))`` with ``A v + K x = 0`` (``A`` holds ``-sum_j w_ij`` on its
    diagonal and the weights between missing neighbours, ``K`` those to known ones)."""
    from scipy.sparse import coo_matrix, diags

    m, p = unknown.size, flat_miss.size
    var = np.full(p, -1, dtype=np.int64)
    var[unknown] = np.arange(m)
    coords = np.stack(np.unravel_index(unknown, shape))  # (d, m)
    dims = np.asarray(shape)[:, None]
    diag = np.zeros(m)
    a_rows, a_cols, a_vals, k_rows, k_cols, k_vals = [], [], [], [], [], []
    for off, w in _neighbour_weights(len(shape)):
        nb = coords + np.asarray(off)[:, None]
        valid = np.all((nb >= 0) & (nb < dims), axis=0)
        eq = np.flatnonzero(valid)
        idx = np.ravel_multi_index(tuple(nb[:, valid]), shape)
        diag[eq] += w
        unk = flat_miss[idx]
        a_rows.append(eq[unk]); a_cols.append(var[idx[unk]])
        k_rows.append(eq[~unk]); k_cols.append(idx[~unk])
        a_vals.append(np.full(int(unk.sum()), w)); k_vals.append(np.full(int((~unk).sum()), w))
    cat = np.concatenate
    a = coo_matrix((cat(a_vals), (cat(a_rows), cat(a_cols))), shape=(m, m)).tocsc() - diags(diag)
    known = coo_matrix((cat(k_vals), (cat(k_rows), cat(k_cols))), shape=(m, p)).tocsr()
    return a, known


@dataclass
class Road:
    """ROAD scores after removing each fraction of the elements.

    Attributes:
        fractions: ``(P,)`` fractions of the elements removed.
        score: the score of the unperturbed input per map (``(N,)``, ``(N, K)`` or scalar).
        morf: scores with the most relevant fraction removed, ``(..., P)`` (lower is better);
            ``None`` if not computed.
        lerf: scores with the least relevant fraction removed, ``(..., P)`` (higher is better);
            ``None`` if not computed.
    """

    fractions: object
    score: object
    morf: object | None
    lerf: object | None

    @property
    def combined(self):
        """``mean_p (lerf_p - morf_p) / 2`` per map (pytorch-grad-cam's ``ROADCombined``;
        higher is better)."""
        if self.morf is None or self.lerf is None:
            raise GradattrError("order: expected 'both' to combine MoRF and LeRF, got a Road computed "
                                "for one order only")
        return (self.lerf - self.morf).mean(-1) / 2


def road(net: nn.Module, x, maps, target=None, *, order: str = "both",
         fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
         noise: float = 0.01, seed: int | None = 0, softmax: bool = True, batch_size: int = 32,
         reduction_fn: Callable | None = None, classes: Sequence | None = None,
         input_format: str | None = None, device="auto", explain: int = 0,
         forward_kwargs: dict | None = None) -> Road:
    """ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation
    Strategy for Attribution Methods", ICML 2022).

    For each fraction ``f`` the ``round(f * P)`` most relevant (MoRF) or least
    relevant (LeRF) positions, ranked by the map (ties in raster order), are
    removed and filled by noisy linear imputation (:func:`impute`), so that the
    removal itself leaks no shape information; the network scores the result.
    MoRF scores should fall fast (lower is better), LeRF scores stay high.

    Args:
        net, x, maps, target, softmax, batch_size, reduction_fn, classes,
            input_format, device, explain, forward_kwargs: as in :func:`deletion`.
        order: ``"morf"``, ``"lerf"`` or ``"both"``.
        fractions: fractions of the positions to remove, each strictly between 0
            and 1 (pytorch-grad-cam's ``percentile=p`` removes ``1 - p / 100``).
        noise: standard deviation of the imputation noise (0.01 in the paper).
        seed: seed of the imputation noise (``None``: torch's global generator).

    Returns:
        A :class:`Road`; ``.combined`` is ``mean (lerf - morf) / 2``.

    The imputation solves one sparse system per map and fraction on the CPU
    (scipy); the network runs on the compute device.
    """
    order, fr = _road_options(order, fractions, noise)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with _scoring(net, x, maps, target, reduction_fn, classes, input_format, device, softmax,
                  batch_size, explain, forward_kwargs) as (sc, form, _):
        rows, cols = sc.items()
        flat = sc.maps.flatten(2).flatten(0, 1)
        ranks = _ranks(flat)
        n_items, p = flat.shape
        counts = [int(round(f * p)) for f in fr]
        bad = [f for f, k in zip(fr, counts) if k == 0 or k == p]
        if bad:
            raise expected("fractions", f"fractions that remove at least one and keep at least one of "
                           f"the {p} positions", repr(bad))
        spatial = tuple(sc.x.shape[2:])
        results = {}
        for name in (("morf", "lerf") if order == "both" else (order,)):
            jobs = [(i, k) for i in range(n_items) for k in counts]
            # The imputed inputs are made up front (one sparse solve each) and scored in batches.
            imputed = torch.stack([
                impute(sc.x[rows[i]], (ranks[i] < k if name == "morf" else ranks[i] >= p - k)
                       .view(spatial), noise=noise, generator=gen) for i, k in jobs])
            item = torch.tensor([i for i, _ in jobs], device=sc.x.device)
            scores = sc.run(len(jobs), lambda sl: (imputed[sl], rows[item[sl]], cols[item[sl]]))
            results[name] = form(scores.view(sc.n, sc.k, len(fr)))
        return Road(fractions=form.vector(torch.tensor(fr)), score=form(sc.base),
                    morf=results.get("morf"), lerf=results.get("lerf"))


def _road_options(order, fractions, noise) -> tuple[str, list[float]]:
    """:func:`road`'s ``order`` (lower case) and ``fractions`` (floats), checked with ``noise``."""
    if not isinstance(order, str) or order.lower() not in ("morf", "lerf", "both"):
        raise expected("order", "'morf', 'lerf' or 'both'", repr(order))
    try:
        fr = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise expected("fractions", "a sequence of numbers in (0, 1)", repr(fractions)) from None
    if not fr or not all(0 < f < 1 for f in fr):
        raise expected("fractions", "a non-empty sequence of numbers strictly between 0 and 1", repr(fractions))
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise expected("noise", "a number >= 0", repr(noise))
    return order.lower(), fr


# ====================================================================================
# Localisation: pointing game, energy, CAM's bounding boxes
# ====================================================================================
def _maps_batch(maps) -> tuple[torch.Tensor, bool, torch.device]:
    m = _as_tensor(maps, "maps")
    if m.ndim < 2:
        raise expected("maps", "a batch of maps (N, *spatial) (use maps[None] for a single map)",
                       f"shape {tuple(m.shape)}")
    if not torch.isfinite(m.float()).all():
        raise expected("maps", "finite values", "NaN or Inf")
    return m.float(), not isinstance(maps, torch.Tensor), (maps.device if isinstance(maps, torch.Tensor)
                                                          else torch.device("cpu"))


def _boxes(box, n: int, spatial: tuple[int, ...], argument: str = "box") -> np.ndarray:
    """``(d, 2)`` or ``(N, d, 2)`` half-open boxes -> ``(N, d, 2)`` int64, validated."""
    b = _as_tensor(box, argument).cpu().numpy()
    d = len(spatial)
    if b.ndim == 2:
        b = np.broadcast_to(b, (n, *b.shape))
    if b.ndim != 3 or b.shape[1:] != (d, 2) or b.shape[0] != n:
        raise expected(argument, f"({d}, 2) or ({n}, {d}, 2) [start, stop) intervals, one per spatial "
                       f"dim of maps shaped (N={n}, *{spatial}) (use maps[None] for a single map)",
                       f"shape {tuple(np.shape(box))}")
    if not np.all(b == np.round(b)):
        raise expected(argument, "integer indices", "fractional values")
    b = b.astype(np.int64)
    if np.any(b[..., 0] < 0) or np.any(b[..., 1] > np.asarray(spatial)) or np.any(b[..., 0] >= b[..., 1]):
        raise expected(argument, f"0 <= start < stop <= size along each dim of {spatial}",
                       np.array2string(b[0] if n == 1 else b, separator=", ").replace("\n", ""))
    return b


def _region(m: torch.Tensor, mask, box) -> np.ndarray:
    """The reference region ``(N, *s)`` bool from exactly one of ``mask`` and ``box``."""
    n, *s = m.shape
    if (mask is None) == (box is None):
        raise GradattrError("mask: expected exactly one of mask and box, got "
                            + ("neither" if mask is None else "both"))
    if mask is not None:
        r = _as_tensor(mask, "mask").cpu().numpy().astype(bool)
        if r.shape == tuple(s):
            r = np.broadcast_to(r, (n, *s)).copy()
        if r.shape != (n, *s):
            raise expected("mask", f"a boolean array of shape {tuple(s)} or {(n, *s)} (maps are read as a "
                           f"batch (N, *spatial); use maps[None] for a single map)", f"shape {r.shape}")
    else:
        b = _boxes(box, n, tuple(s))
        r = np.zeros((n, *s), dtype=bool)
        for i in range(n):
            r[(i, *[slice(lo, hi) for lo, hi in b[i]])] = True
    empty = ~r.reshape(n, -1).any(1)
    if empty.any():
        raise expected("mask", "a reference region with at least one element per sample",
                       f"an empty region for sample(s) {np.flatnonzero(empty).tolist()}")
    return r


def _give(values: np.ndarray, as_numpy: bool, device):
    return values if as_numpy else torch.as_tensor(values).to(device)


def pointing_game(maps, mask=None, box=None, *, tolerance: float = 0.0):
    """Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016).

    A hit when the map's maximum lies on the object: within ``tolerance``
    elements (Euclidean) of the reference region. When several elements tie for
    the maximum, any of them on the object counts (as in Quantus).

    Args:
        maps: a batch of maps ``(N, *spatial)`` (any rank; ``maps[None]`` for one).
        mask: boolean ``(N, *spatial)`` or ``(*spatial)`` object mask; or
        box: ``(d, 2)`` / ``(N, d, 2)`` half-open ``[start, stop)`` boxes (see
            :mod:`gradattr.metrics`).
        tolerance: distance in elements (15 pixels in the paper's protocol).

    Returns:
        ``(N,)`` booleans (a tensor on the maps' device, or numpy for numpy maps);
        their mean is the pointing accuracy.

    Example:
        >>> m = torch.zeros(1, 6, 6); m[0, 2, 3] = 1.0
        >>> pointing_game(m, box=[[1, 4], [2, 5]]).tolist(), pointing_game(m, box=[[4, 6], [0, 6]]).tolist()
        ([True], [False])
    """
    from scipy import ndimage

    m, as_numpy, dev = _maps_batch(maps)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise expected("tolerance", "a distance >= 0", repr(tolerance))
    region = _region(m, mask, box)
    mm = m.cpu().numpy()
    n = mm.shape[0]
    peak = mm == mm.reshape(n, -1).max(1).reshape(n, *([1] * (mm.ndim - 1)))
    if tolerance > 0:
        near = np.stack([ndimage.distance_transform_edt(~r) <= tolerance for r in region])
    else:
        near = region
    hits = (peak & near).reshape(n, -1).any(1)
    return _give(hits, as_numpy, dev)


def energy_pointing_game(maps, mask=None, box=None):
    """Energy-based pointing game (Wang et al., "Score-CAM", CVPR Workshops 2020).

    ``sum(map on the object) / sum(map)`` with the map clipped at 0 (CAM maps
    are non-negative); Quantus calls it *relevance mass accuracy*. ``NaN`` where a
    map has no positive value.

    Args:
        maps: a batch of maps ``(N, *spatial)`` (``maps[None]`` for one).
        mask: boolean ``(N, *spatial)`` or ``(*spatial)`` object mask; or
        box: ``(d, 2)`` / ``(N, d, 2)`` half-open boxes.

    Returns:
        ``(N,)`` proportions in [0, 1].

    Example:
        >>> m = torch.tensor([[0.0, 1.0, 3.0, 0.0]])
        >>> energy_pointing_game(m, box=[[2, 4]]).tolist()
        [0.75]
    """
    m, as_numpy, dev = _maps_batch(maps)
    region = torch.as_tensor(_region(m, mask, box)).to(m.device)
    e = torch.relu(m).flatten(1)
    inside = (e * region.flatten(1)).sum(1)
    total = e.sum(1)
    ratio = torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), torch.nan)
    return ratio.cpu().numpy() if as_numpy else ratio.to(dev)


def box_iou(a, b):
    """Intersection over union of half-open boxes ``(..., d, 2)`` of any rank (length, area, volume).

    Example:
        >>> box_iou([[0, 4], [0, 4]], [[2, 6], [0, 4]]).item()   # 8 / (16 + 16 - 8)
        0.3333333333333333
    """
    ta, tb = np.asarray(_numpy(_as_tensor(a, "a")), dtype=np.float64), np.asarray(
        _numpy(_as_tensor(b, "b")), dtype=np.float64)
    if ta.shape[-1:] != (2,) or tb.shape[-1:] != (2,) or ta.shape[-2] != tb.shape[-2]:
        raise expected("b", f"boxes (..., d, 2) with the same d as a {ta.shape}", f"shape {tb.shape}")
    inter = np.clip(np.minimum(ta[..., 1], tb[..., 1]) - np.maximum(ta[..., 0], tb[..., 0]), 0, None).prod(-1)
    union = (ta[..., 1] - ta[..., 0]).prod(-1) + (tb[..., 1] - tb[..., 0]).prod(-1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass
class Localization:
    """CAM's weakly supervised localisation of a batch of maps.

    Attributes:
        boxes: ``(N, d, 2)`` half-open ``[start, stop)`` box of the largest
            connected component of ``map >= threshold * max(map)`` (all zeros for
            a map with no positive value).
        iou: ``(N,)`` IoU with the reference box, or ``None`` without one; the CAM
            paper counts a localisation as correct at IoU >= 0.5.
    """

    boxes: object
    iou: object | None


def localize(maps, box=None, *, threshold: float = 0.2, connectivity: int | None = None) -> Localization:
    """Weakly supervised localisation (Zhou et al., "Learning Deep Features for
    Discriminative Localization", CVPR 2016).

    Keep the elements with ``map >= threshold * max(map)``, take the largest
    connected component (``scipy.ndimage.label``) and return its bounding box:
    an interval for sequences, a box for images, a cuboid for volumes.

    Args:
        maps: a batch of maps ``(N, *spatial)`` (``maps[None]`` for one).
        box: optional reference ``(d, 2)`` / ``(N, d, 2)`` half-open box(es) for the IoU.
        threshold: fraction of each map's maximum (0.2 in the CAM paper).
        connectivity: neighbours that connect, from 1 (faces only) to the rank
            (every neighbour, the default, like MATLAB's ``bwconncomp``: 8 in 2-D,
            26 in 3-D).

    Returns:
        A :class:`Localization` (boxes and IoU as tensors on the maps' device, or
        numpy for numpy maps).

    Example:
        >>> m = torch.zeros(1, 8, 8); m[0, 2:5, 3:7] = 1.0; m[0, 7, 0] = 0.9  # a blob and a speck
        >>> loc = localize(m, box=[[2, 5], [3, 6]])
        >>> loc.boxes.tolist(), round(loc.iou.item(), 4)
        ([[[2, 5], [3, 7]]], 0.75)
    """
    from scipy import ndimage

    m, as_numpy, dev = _maps_batch(maps)
    n, *s = m.shape
    d = len(s)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise expected("threshold", "a fraction of the maximum in [0, 1]", repr(threshold))
    conn = d if connectivity is None else connectivity
    if isinstance(conn, bool) or not isinstance(conn, (int, np.integer)) or not 1 <= conn <= d:
        raise expected("connectivity", f"an integer from 1 to the maps' rank {d}", repr(connectivity))
    ref = _boxes(box, n, tuple(s)) if box is not None else None
    structure = ndimage.generate_binary_structure(d, int(conn))
    mm = m.cpu().numpy()
    boxes = np.zeros((n, d, 2), dtype=np.int64)
    for i in range(n):
        peak = mm[i].max()
        if not peak > 0:
            continue
        labels, count = ndimage.label(mm[i] >= threshold * peak, structure=structure)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        biggest = int(np.argmax(sizes)) + 1  # the first of equal-sized components
        sl = ndimage.find_objects((labels == biggest).astype(np.int32))[0]
        boxes[i] = [[t.start, t.stop] for t in sl]
    iou = box_iou(boxes, ref) if ref is not None else None
    return Localization(boxes=_give(boxes, as_numpy, dev),
                        iou=None if iou is None else _give(iou, as_numpy, dev))
