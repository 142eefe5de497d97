"""Checks a reviewer asks for: randomisation, sensitivity, infidelity, sparseness, relevance mass and rank.

Exported by :mod:`gradattr.metrics`, and usable as columns of :func:`gradattr.compare`.

Checks that run a method (they compute maps themselves):

* :func:`randomization_check` -- Adebayo et al., "Sanity checks for saliency maps"
  (NeurIPS 2018): re-initialise the layers from the output back and measure how much of
  the map survives (rank correlation with the original map; lower is better: a map
  that does not change does not explain the model).
* :func:`max_sensitivity` -- Yeh et al., "On the (in)fidelity and sensitivity of
  explanations" (NeurIPS 2019): the largest relative change of the map under uniform
  noise of a small radius (lower is better).

Checks of given maps:

* :func:`infidelity` -- Yeh et al. (NeurIPS 2019): how badly ``map . I`` predicts the
  score's drop ``f(x) - f(x - I)`` under Gaussian perturbations ``I`` (lower is better).
* :func:`sparseness` -- Chalasani et al. (ICML 2020): the Gini index of ``|map|``
  (higher is more concentrated).
* :func:`relevance_mass`, :func:`relevance_rank` -- Arras et al., "CLEVR-XAI" (Information
  Fusion 2022): the share of positive relevance inside a ground-truth mask, and the share
  of the mask's size of top-ranked positions that fall inside it (higher is better).

Conventions: ``net`` and ``x`` as for :func:`gradattr.grad_cam` (1-D, 2-D or 3-D inputs,
batched or not, tensor or numpy, ``input_format`` for MATLAB order); the score is the raw
output for the target, or ``reduction_fn(output)`` (regressors), as captum computes it (no
softmax); ``target=None`` is each sample's top class on the unperturbed input, kept for every
perturbed or randomised copy. ``method`` is a registry name (:func:`gradattr.list_methods`) or
a callable ``(net, x, target) -> maps``, where ``x`` is a ``(B, C, *S)`` tensor of copies
and ``target`` their classes ``(B, K)`` (a LongTensor, one row per copy) or the reduction
function. The network and the input are left as they were (the randomisation check works on
deep copies and restores torch's random state). Results come back in ``x``'s form: a tensor on
``x``'s device (numpy for numpy ``x``), ``(N,)``, or a scalar for an unbatched ``x``.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import torch
from torch import nn

from . import api
from .errors import GradattrWarning, expected
from .inputs import prepare
from .options import check_flag
from .prep import Call, prepare_call
from .scorer import FORWARD_FACTOR
from .scorer import chunk_size as budget_chunk
from .targets import Target

__all__ = ["randomization_check", "randomizable_layers", "max_sensitivity", "infidelity", "sparseness",
           "relevance_mass", "relevance_rank"]

#: The estimate of one explained copy's memory (forward and backward pass), as a multiple of
#: the input's bytes, that sizes the chunks of copies when ``chunk_size=None``.
EXPLAIN_FACTOR = 2 * FORWARD_FACTOR


# ====================================================================================
# Argument checks and shared set-up
# ====================================================================================
def _integer(value, argument: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise expected(argument, f"an integer >= {low}", repr(value))
    return int(value)


def _positive(value, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
            math.isfinite(float(value)) and value > 0):
        raise expected(argument, "a finite number > 0", repr(value))
    return float(value)


def _choice(value, argument: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise expected(argument, " or ".join(repr(a) for a in allowed), repr(value))
    return value.lower()


def _prepared(net, x, target, reduction_fn, classes, input_format, device) -> tuple[Call, Target]:
    """The prepared call and its target with each sample's classes fixed on the unperturbed input."""
    call = prepare_call(net, x, target=target, reduction_fn=reduction_fn, classes=classes,
                        input_format=input_format, device=device, needs_grad=False)
    if call.target.kind == "fn":
        return call, call.target
    with call.borrowed(), torch.no_grad():
        return call, call.target.fixed(call.forward(call.x), call.n)


def _rows_target(target: Target, rows: torch.Tensor):
    """What a method gets as the target of copies of samples ``rows``: ``(B, K)`` classes, or the function."""
    if target.kind == "fn":
        return target.fn
    classes = cast(torch.Tensor, target.classes)  # set whenever kind is not "fn"
    return classes[rows.to(classes.device)]


def _runner(method, method_options: dict, device) -> Callable:
    """``method`` as ``run(net, x (B, C, *S), target) -> maps``."""
    if isinstance(method, str):
        info = api.method_info(method)  # an unknown name is refused here, naming `method`
        opts = dict(method_options)
        if "device" in info.options:
            opts.setdefault("device", device)

        def run(net, xb, target):
            return api.attribute(net, xb, target if info.needs_target else None, method=method, **opts)
        return run
    if callable(method) and not isinstance(method, nn.Module):
        if method_options:
            raise expected(next(iter(method_options)), "no method options with a callable method (bind "
                           "them in the callable)", repr(sorted(method_options)))
        return method
    raise expected("method", "a method name (gradattr.list_methods()) or a callable (net, x, target) -> maps",
                   type(method).__name__)


def _flat(maps, rows: int, device) -> torch.Tensor:
    """A method's maps for ``rows`` copies -> ``(rows, P)`` float64, each copy's maps flattened."""
    if not isinstance(maps, torch.Tensor):
        try:
            maps = torch.as_tensor(np.asarray(maps))
        except (TypeError, ValueError):
            raise expected("method", "a method returning maps (a tensor or an array)",
                           type(maps).__name__) from None
    if maps.ndim < 2 or maps.shape[0] != rows:
        raise expected("method", f"maps with one row per input copy ({rows}, ...)", f"shape {tuple(maps.shape)}")
    m = maps.detach().to(device=device, dtype=torch.float64).reshape(rows, -1)
    if not torch.isfinite(m).all():
        raise expected("method", "finite maps", "NaN or Inf")
    return m


def _out(call: Call, values: torch.Tensor):
    """Per-sample ``(N,)`` values in the form of the user's ``x``."""
    return call.layout.output(values.reshape(-1, 1), scalar_target=True)


# ====================================================================================
# Randomisation check (Adebayo et al. 2018)
# ====================================================================================
def randomizable_layers(net: nn.Module) -> list[str]:
    """The layers :func:`randomization_check` re-initialises, from the output back to the input.

    The modules that own parameters directly and have ``reset_parameters``, in the reverse
    of ``net.named_modules()`` order.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        ...                           torch.nn.Linear(12, 2))
        >>> randomizable_layers(net)
        ['3', '0']
    """
    found = [name for name, m in net.named_modules()
             if next(m.parameters(recurse=False), None) is not None
             and callable(getattr(m, "reset_parameters", None))]
    return found[::-1]


def _on_copy(value, names: dict[int, str], modules: dict[str, nn.Module]):
    """A method option naming a module of the original network, pointed at the copy's module."""
    if isinstance(value, nn.Module) and id(value) in names:
        return modules[names[id(value)]]
    if isinstance(value, (list, tuple)) and any(isinstance(v, nn.Module) for v in value):
        return type(value)(_on_copy(v, names, modules) for v in value)
    return value


def _similarity(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Row-wise Spearman (average ranks for ties) or Pearson correlation; NaN for a constant row."""
    constant = (a == a[:, :1]).all(1) | (b == b[:, :1]).all(1)
    if kind == "spearman":
        a, b = _average_ranks(a), _average_ranks(b)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = torch.sqrt((a * a).sum(1) * (b * b).sum(1))
    r = ((a * b).sum(1) / torch.where(den > 0, den, 1.0)).clamp(-1.0, 1.0)
    return torch.where(constant | (den == 0), torch.nan, r)


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each row, tied values getting the mean of their ranks (scipy's ``rankdata``)."""
    out = torch.empty_like(v)
    for i, row in enumerate(v):
        _, inverse, counts = torch.unique(row, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).to(v.dtype)
        out[i] = (ends - (counts.to(v.dtype) - 1) / 2)[inverse]
    return out


def randomization_check(net: nn.Module, x, target=None, *, method="grad_cam", mode: str = "cascade",
                        similarity: str = "spearman", seed: int = 0, reduction_fn: Callable | None = None,
                        classes: Sequence | None = None, input_format: str | None = None,
                        device="auto", **method_options) -> dict:
    """Model parameter randomisation test (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

    The layers (:func:`randomizable_layers`: modules that own parameters and have
    ``reset_parameters``) are counted from the output, ``j = 0, 1, ...``. Cascade step ``i``
    re-initialises layers ``0..i`` on a deep copy of ``net``, layer ``j`` by
    ``torch.manual_seed(seed + j); layer.reset_parameters()``; ``mode="independent"``
    re-initialises layer ``i`` alone. Each step computes the maps of all samples on its copy
    and compares them with the original network's maps, sample by sample (the maps of a
    sample flattened). A method that explains the model gives similarities well below 1 once
    the top layers are random; Guided Backprop famously stays near 1.

    Args:
        net: the network; never changed (the steps run on deep copies; torch's random state
            is restored afterwards).
        x: the input, as for :func:`gradattr.grad_cam`.
        target: as for :func:`gradattr.grad_cam`; ``None`` is each sample's top class on the
            original network, explained on every randomised copy too.
        method: a method name or a callable ``(net, x, target) -> maps`` (see :mod:`gradattr.sanity`).
        mode: ``"cascade"`` or ``"independent"``.
        similarity: ``"spearman"`` (rank correlation, ties averaged) or ``"pearson"``; a
            constant map gives NaN (as scipy does).
        seed: the seed of layer ``j`` is ``seed + j``.
        reduction_fn, classes, input_format, device: as for :func:`gradattr.grad_cam`.
        **method_options: options of the method (e.g. ``feature_layer="layer4"``; a module of
            ``net`` given as an option is replaced by the copy's module).

    Returns:
        ``{layer name: similarity}``, in the order of the steps, each ``(N,)`` (or a scalar
        for an unbatched ``x``).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3, padding=1), torch.nn.ReLU(),
        ...     torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> r = randomization_check(net, torch.randn(2, 1, 16), method="saliency")
        >>> list(r), tuple(r["4"].shape)
        (['4', '0'], (2,))
    """
    mode = _choice(mode, "mode", ("cascade", "independent"))
    kind = _choice(similarity, "similarity", ("spearman", "pearson"))
    seed = _integer(seed, "seed", 0)
    layers = randomizable_layers(net)
    if not layers:
        raise expected("net", "a network with layers to randomise (modules that own parameters and have "
                       "reset_parameters)", "none")
    call, fixed = _prepared(net, x, target, reduction_fn, classes, input_format, device)
    run = _runner(method, method_options, device)
    n, dev = call.n, call.x.device
    tgt = _rows_target(fixed, torch.arange(n))
    original = _flat(run(net, call.x, tgt), n, dev)
    return {name: _out(call, _similarity(original, maps, kind)) for name, maps in _randomised_maps(
        net, layers, mode, seed, call, tgt, method, method_options, device)}


def _randomised_maps(net, layers, mode, seed, call: Call, tgt, method, method_options, device):
    """``(layer name, (N, P) maps)`` of each step of :func:`randomization_check`, computed on
    its copy of ``net`` (one copy for the cascade, re-initialised further at each step)."""
    run = _runner(method, method_options, device)
    names = {id(m): name for name, m in net.named_modules()}
    # CUDA's generators are seeded (and kept) only when CUDA is in use: torch.manual_seed would
    # otherwise queue a seed for CUDA's lazy start, changing the user's later CUDA random numbers
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    net_copy = None
    with torch.random.fork_rng(devices=cuda):  # the user's random state is left as it was
        for j, name in enumerate(layers):
            if net_copy is None or mode == "independent":
                net_copy = _deep_copy(net)
            modules = dict(net_copy.named_modules())
            if cuda:
                torch.manual_seed(seed + j)
            else:
                torch.default_generator.manual_seed(seed + j)  # what torch.manual_seed does on a CPU
            modules[name].reset_parameters()
            opts = {k: _on_copy(v, names, modules) for k, v in method_options.items()}
            step = run if not opts else _runner(method, opts, device)
            with warnings.catch_warnings():  # an empty map of a random model is expected: its NaN says so
                warnings.simplefilter("ignore", GradattrWarning)
                maps = _flat(step(net_copy, call.x, tgt), call.n, call.x.device)
            yield name, maps


def _deep_copy(net: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(net)
    except Exception as e:  # noqa: BLE001 - say what failed
        raise expected("net", "a network that copy.deepcopy can copy (the randomisation check "
                       "re-initialises a copy, never the network itself)", f"{type(e).__name__}: {e}") from e


# ====================================================================================
# Max-sensitivity and infidelity (Yeh et al. 2019)
# ====================================================================================
def max_sensitivity(net: nn.Module, x, target=None, *, method="grad_cam", radius: float = 0.02,
                    samples: int = 10, seed: int = 0, chunk_size: int | None = None,
                    reduction_fn: Callable | None = None, classes: Sequence | None = None,
                    input_format: str | None = None, device="auto", **method_options):
    """Max-sensitivity (Yeh et al., "On the (in)fidelity and sensitivity of explanations",
    NeurIPS 2019). Lower is better.

    ``max_j ||map(x + d_j) - map(x)|| / ||map(x)||`` per sample (Frobenius norms of the
    sample's maps; a zero map divides by 1, as captum does), over ``d = (2u - 1) * radius``
    with ``u = torch.rand((samples, *x.shape), generator=torch.Generator().manual_seed(seed))``
    for the prepared ``x`` ``(N, C, *S)``. Equals captum's ``sensitivity_max`` given the same
    perturbations. The target stays the one of the unperturbed input.

    Args:
        net, x, target, reduction_fn, classes, input_format, device: as in
            :func:`randomization_check`.
        method: a method name or a callable ``(net, x, target) -> maps``.
        radius: the half-width of the uniform noise (in input units), > 0.
        samples: perturbations per sample, >= 1.
        seed: the seed of the noise.
        chunk_size: perturbed copies explained per method call (``None``: what fits the
            memory budget of :mod:`gradattr.scorer`).
        **method_options: options of the method.

    Returns:
        ``(N,)`` sensitivities (a scalar for an unbatched ``x``).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
        >>> x = torch.ones(3, 1, 4)  # the saliency of a linear net does not depend on x
        >>> max_sensitivity(net, x, 0, method="saliency").tolist()
        [0.0, 0.0, 0.0]
    """
    radius = _positive(radius, "radius")
    samples = _integer(samples, "samples", 1)
    seed = _integer(seed, "seed", 0)
    if chunk_size is not None:
        _integer(chunk_size, "chunk_size", 1)
    call, fixed = _prepared(net, x, target, reduction_fn, classes, input_format, device)
    run = _runner(method, method_options, device)
    xs, n = call.x, call.n
    u = torch.rand((samples, *xs.shape), generator=torch.Generator().manual_seed(seed))
    d = ((2 * u - 1) * radius).to(device=xs.device, dtype=xs.dtype)
    base = _flat(run(net, xs, _rows_target(fixed, torch.arange(n))), n, xs.device)
    norm = base.norm(dim=1)
    norm = torch.where(norm == 0, 1.0, norm)
    per_copy = xs[0].numel() * xs.element_size() * EXPLAIN_FACTOR
    step = budget_chunk(chunk_size, per_copy, xs.device)
    worst = torch.zeros(n, dtype=torch.float64, device=xs.device)
    jobs = samples * n
    for start in range(0, jobs, step):
        r = torch.arange(start, min(jobs, start + step), device=xs.device)
        j, i = r // n, r % n
        m = _flat(run(net, xs[i] + d[j, i], _rows_target(fixed, i.cpu())), len(r), xs.device)
        s = (m - base[i]).norm(dim=1) / norm[i]
        worst.scatter_reduce_(0, i, s, "amax")
    return _out(call, worst)


def _infidelity_maps(maps, call: Call, x, input_format) -> torch.Tensor:
    """``maps`` shaped like ``x``, or ``(N, *S)`` (``(*S)`` unbatched) repeated over channels -> ``(N, C, *S)``."""
    xs = call.x
    n, c, *s = xs.shape
    if isinstance(maps, (torch.Tensor, np.ndarray)) and tuple(maps.shape) == tuple(np.shape(x)):
        m, _ = prepare(maps, call.net, input_format, xs.device, xs.dtype, needs_grad=False, name="maps")
    else:
        try:
            m = torch.as_tensor(maps.detach() if isinstance(maps, torch.Tensor) else np.asarray(maps))
        except (TypeError, ValueError):
            raise expected("maps", "a tensor or an array", type(maps).__name__) from None
        want = (n, *s) if call.layout.batched else tuple(s)
        if tuple(m.shape) != want:
            raise expected("maps", f"maps shaped like x {tuple(np.shape(x))} or {want} (repeated over "
                           f"the {c} channels)", f"shape {tuple(m.shape)}")
        m = m.reshape(n, 1, *s).expand(n, c, *s)
    m = m.to(device=xs.device, dtype=xs.dtype)
    if not torch.isfinite(m).all():
        raise expected("maps", "finite values", "NaN or Inf")
    return m


def infidelity(net: nn.Module, x, maps, target=None, *, samples: int = 50, std: float = 0.1, seed: int = 0,
               normalize: bool = True, batch_size: int | None = None, reduction_fn: Callable | None = None,
               classes: Sequence | None = None, input_format: str | None = None, device="auto"):
    """Infidelity (Yeh et al., "On the (in)fidelity and sensitivity of explanations", NeurIPS 2019).
    Lower is better.

    ``mean_j (beta * sum(map * I_j) - (f(x) - f(x - I_j)))^2`` per sample, over Gaussian
    perturbations ``I = std * torch.randn((samples, *x.shape), generator=torch.Generator()
    .manual_seed(seed))`` of the prepared ``x`` ``(N, C, *S)``; ``f`` is the raw output for the
    target (or ``reduction_fn``'s score). ``beta = 1``, or with ``normalize=True`` the least-squares
    scale ``sum_j a_j b_j / sum_j a_j^2`` (``a = sum(map * I)``, ``b`` the score's drop),
    which makes the value independent of the map's scale. Equals captum's ``infidelity`` with
    the same perturbations (and ``normalize``).

    Args:
        net, x, target, reduction_fn, classes, input_format, device: as in :func:`randomization_check`;
            the target gives one score per sample.
        maps: the maps, shaped like ``x`` (input attributions), or ``(N, *S)`` (``(*S)`` for an
            unbatched ``x``): a map of positions, repeated over the channels.
        samples: perturbations per sample, >= 1.
        std: standard deviation of the perturbations, > 0.
        seed: the seed of the perturbations.
        normalize: scale the map by ``beta`` first (captum's ``normalize``).
        batch_size: perturbed inputs per forward pass (``None``: what fits the memory budget).

    Returns:
        ``(N,)`` infidelities (a scalar for an unbatched ``x``).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 1, 1, bias=False), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 1, bias=False))
        >>> grad = (net[0].weight[0, 0] * net[2].weight).detach()  # d score / d x, the same everywhere
        >>> x = torch.randn(2, 1, 4)   # the gradient predicts the drop of a linear net exactly
        >>> infidelity(net, x, grad.expand(2, 4), 0, normalize=False).abs().max().item() < 1e-10
        True
    """
    samples = _integer(samples, "samples", 1)
    std = _positive(std, "std")
    seed = _integer(seed, "seed", 0)
    check_flag("normalize", normalize)
    if batch_size is not None:
        _integer(batch_size, "batch_size", 1)
    call = prepare_call(net, x, target=target, reduction_fn=reduction_fn, classes=classes,
                        input_format=input_format, device=device, needs_grad=False)
    xs, n = call.x, call.n
    a = _infidelity_maps(maps, call, x, input_format)
    pert = (std * torch.randn((samples, *xs.shape), generator=torch.Generator().manual_seed(seed))).to(
        device=xs.device, dtype=xs.dtype)
    with call.borrowed(), torch.no_grad():
        dots, drops = _infidelity_terms(call, a, pert, batch_size)
    if normalize:
        aa = (dots * dots).sum(0)
        beta = (dots * drops).sum(0) / torch.where(aa != 0, aa, 1.0)
        dots = beta * dots
    return _out(call, ((dots - drops) ** 2).mean(0))


def _infidelity_terms(call: Call, a: torch.Tensor, pert: torch.Tensor, batch_size) -> tuple:
    """``(samples, N)`` float64 terms of :func:`infidelity`: ``sum(map * I)`` and ``f(x) - f(x - I)``."""
    xs, n, samples = call.x, call.n, pert.shape[0]
    y = call.forward(xs)
    target = call.target.fixed(y, n)
    f0 = _one_score(target, y, n)
    step = budget_chunk(batch_size, xs[0].numel() * xs.element_size() * FORWARD_FACTOR, xs.device)
    dots = torch.empty(samples, n, dtype=torch.float64, device=xs.device)
    drops = torch.empty_like(dots)
    jobs = samples * n
    for start in range(0, jobs, step):
        r = torch.arange(start, min(jobs, start + step), device=xs.device)
        j, i = r // n, r % n
        f = _one_score(target, call.forward(xs[i] - pert[j, i], i), len(r), i)
        drops[j, i] = (f0[i] - f).double()
        dots[j, i] = (a[i] * pert[j, i]).flatten(1).double().sum(1)
    return dots, drops


def _one_score(target: Target, y, n: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    s = target.scores(y, n, rows)
    if s.shape[1] != 1:
        raise expected("target", "one score per sample (infidelity compares one map with one score)",
                       f"{s.shape[1]} scores per sample")
    return s[:, 0]


# ====================================================================================
# Sparseness, relevance mass and rank (maps only)
# ====================================================================================
def _batch(maps) -> tuple[torch.Tensor, bool, torch.device]:
    """A batch of maps ``(N, ...)`` -> float64 tensor, whether it was numpy, its device."""
    if isinstance(maps, torch.Tensor):
        m, as_numpy, dev = maps.detach(), False, maps.device
    else:
        try:
            arr = np.asarray(maps)
        except Exception:  # noqa: BLE001 - report what was given
            raise expected("maps", "a tensor or a numpy array", type(maps).__name__) from None
        if arr.dtype.kind not in "biuf":
            raise expected("maps", "a numeric array", f"dtype {arr.dtype}")
        m, as_numpy, dev = torch.from_numpy(np.ascontiguousarray(arr)), True, torch.device("cpu")
    if m.ndim < 2:
        raise expected("maps", "a batch of maps (N, *spatial) (use maps[None] for a single map)",
                       f"shape {tuple(m.shape)}")
    m = m.double()
    if not torch.isfinite(m).all():
        raise expected("maps", "finite values", "NaN or Inf")
    return m, as_numpy, dev


def _give(values: torch.Tensor, as_numpy: bool, device):
    return values.cpu().numpy() if as_numpy else values.to(device)


def sparseness(maps):
    """Sparseness: the Gini index of ``|map|`` per sample (Chalasani et al., "Concise explanations
    of neural networks using adversarial training", ICML 2020). Higher is more concentrated.

    Each sample's map is flattened to ``d`` values ``a``, sorted ascending:
    ``G = sum_k (2k - d - 1) a_(k) / (d sum_k a_(k))``: 0 for a uniform map, ``1 - 1/d`` for a
    single non-zero value; NaN for an all-zero map.

    Args:
        maps: a batch of maps ``(N, ...)`` (``maps[None]`` for one), any rank, channels included.

    Returns:
        ``(N,)`` Gini indices (a tensor on the maps' device, numpy for numpy maps).

    Example:
        >>> sparseness(torch.tensor([[0.0, 0.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, -3.0]])).tolist()
        [0.75, 0.0, 0.625]
    """
    m, as_numpy, dev = _batch(maps)
    a = m.abs().flatten(1).sort(1).values
    d = a.shape[1]
    k = torch.arange(1, d + 1, dtype=a.dtype, device=a.device)
    total = a.sum(1)
    g = ((2 * k - d - 1) * a).sum(1) / (d * torch.where(total > 0, total, 1.0))
    return _give(torch.where(total > 0, g, torch.nan).float(), as_numpy, dev)


def _mask(mask, m: torch.Tensor) -> torch.Tensor:
    """``(N, *S)`` or ``(*S)`` mask -> ``(N, *S)`` bool on the maps' device, checked non-empty."""
    n, *s = m.shape
    if isinstance(mask, torch.Tensor):
        r = mask.detach()
    else:
        try:
            r = torch.from_numpy(np.ascontiguousarray(np.asarray(mask)))
        except (TypeError, ValueError):
            raise expected("mask", "a boolean tensor or array", type(mask).__name__) from None
    if r.dtype.is_complex or (r.dtype != torch.bool and not r.is_floating_point()
                              and r.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise expected("mask", "a boolean tensor or array", f"dtype {r.dtype}")
    if tuple(r.shape) == tuple(s):
        r = r.expand(n, *s)
    if tuple(r.shape) != (n, *s):
        raise expected("mask", f"a mask of shape {tuple(s)} or {(n, *s)}, the maps' (maps are read as a "
                       "batch (N, *spatial); use maps[None] for a single map)", f"shape {tuple(r.shape)}")
    r = r.to(m.device) != 0
    empty = ~r.flatten(1).any(1)
    if empty.any():
        raise expected("mask", "a region with at least one element per sample",
                       f"an empty mask for sample(s) {torch.nonzero(empty)[:, 0].tolist()}")
    return r


def relevance_mass(maps, mask):
    """Relevance mass accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022). Higher is better.

    ``sum(positive relevance inside the mask) / sum(positive relevance)`` per sample (negative
    values count as 0); NaN for a map without positive values.

    Args:
        maps: a batch of maps ``(N, *S)`` (``maps[None]`` for one).
        mask: the ground truth, boolean ``(N, *S)`` or ``(*S)``.

    Returns:
        ``(N,)`` shares in [0, 1] (a tensor on the maps' device, numpy for numpy maps).

    Example:
        >>> relevance_mass(torch.tensor([[3.0, 1.0, -2.0, 4.0]]), torch.tensor([True, True, True, False])).tolist()
        [0.5]
    """
    m, as_numpy, dev = _batch(maps)
    inside = _mask(mask, m)
    pos = m.clamp(min=0).flatten(1)
    total = pos.sum(1)
    within = (pos * inside.flatten(1)).sum(1)
    share = torch.where(total > 0, within / torch.where(total > 0, total, 1.0), torch.nan)
    return _give(share.float(), as_numpy, dev)


def relevance_rank(maps, mask):
    """Relevance rank accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022). Higher is better.

    With ``K`` the mask's size (per sample), the share of the ``K`` highest-ranked positions
    (raw values, ties in raster order) that lie inside the mask.

    Args:
        maps: a batch of maps ``(N, *S)`` (``maps[None]`` for one).
        mask: the ground truth, boolean ``(N, *S)`` or ``(*S)``.

    Returns:
        ``(N,)`` shares in [0, 1] (a tensor on the maps' device, numpy for numpy maps).

    Example:
        >>> relevance_rank(torch.tensor([[3.0, 1.0, -2.0, 4.0]]), torch.tensor([True, True, False, False])).tolist()
        [0.5]
    """
    m, as_numpy, dev = _batch(maps)
    inside = _mask(mask, m).flatten(1)
    flat = m.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    k = inside.sum(1, keepdim=True)
    hits = ((ranks < k) & inside).sum(1)
    return _give((hits.double() / k[:, 0]).float(), as_numpy, dev)
