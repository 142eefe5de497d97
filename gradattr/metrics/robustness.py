"""Robustness and fidelity of maps (Yeh et al., "On the (in)fidelity and sensitivity of
explanations", NeurIPS 2019): max-sensitivity, the largest relative change of the map under
uniform noise of a small radius, and infidelity, how badly ``map . I`` predicts the score's drop
``f(x) - f(x - I)`` under Gaussian perturbations ``I`` (lower is better for both). Conventions:
:mod:`gradattr.metrics.method_runs`."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import expected
from ..inputs import prepare
from ..options import check_flag, check_seed
from ..prep import Call, prepare_call
from ..budget import FORWARD_FACTOR
from ..budget import chunk_size as budget_chunk
from ..targets import Target
from .arguments import check_int, check_positive
from .method_runs import EXPLAIN_FACTOR, flat_maps, method_runner, per_sample, prepared_call, rows_target


def max_sensitivity(net: nn.Module, x, target=None, *, method="grad_cam", radius: float = 0.02,
                    samples: int = 10, seed: int | None = 0, chunk_size: int | None = None,
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
        seed: the seed of the noise (``None``: torch's global random state).
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
    radius = check_positive(radius, "radius")
    samples = check_int(samples, "samples", 1)
    seed = check_seed("seed", seed)
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    call, fixed = prepared_call(net, x, target, reduction_fn, classes, input_format, device)
    run = method_runner(method, method_options, device)
    xs, n = call.x, call.n
    u = torch.rand((samples, *xs.shape), generator=_generator(seed))
    d = ((2 * u - 1) * radius).to(device=xs.device, dtype=xs.dtype)
    base = flat_maps(run(net, xs, rows_target(fixed, torch.arange(n))), n, xs.device)
    norm = base.norm(dim=1)
    norm = torch.where(norm == 0, 1.0, norm)
    per_copy = xs[0].numel() * xs.element_size() * EXPLAIN_FACTOR
    step = budget_chunk(chunk_size, per_copy, xs.device)
    worst = torch.zeros(n, dtype=torch.float64, device=xs.device)
    jobs = samples * n
    for start in range(0, jobs, step):
        r = torch.arange(start, min(jobs, start + step), device=xs.device)
        j, i = r // n, r % n
        m = flat_maps(run(net, xs[i] + d[j, i], rows_target(fixed, i.cpu())), len(r), xs.device)
        s = (m - base[i]).norm(dim=1) / norm[i]
        worst.scatter_reduce_(0, i, s, "amax")
    return per_sample(call, worst)


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


def infidelity(net: nn.Module, x, maps, target=None, *, samples: int = 50, std: float = 0.1, seed: int | None = 0,
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
        seed: the seed of the perturbations (``None``: torch's global random state).
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
    samples = check_int(samples, "samples", 1)
    std = check_positive(std, "std")
    seed = check_seed("seed", seed)
    check_flag("normalize", normalize)
    if batch_size is not None:
        check_int(batch_size, "batch_size", 1)
    call = prepare_call(net, x, target=target, reduction_fn=reduction_fn, classes=classes,
                        input_format=input_format, device=device, needs_grad=False)
    xs, n = call.x, call.n
    a = _infidelity_maps(maps, call, x, input_format)
    pert = (std * torch.randn((samples, *xs.shape), generator=_generator(seed))).to(
        device=xs.device, dtype=xs.dtype)
    with call.borrowed(), torch.no_grad():
        dots, drops = _infidelity_terms(call, a, pert, batch_size)
    if normalize:
        aa = (dots * dots).sum(0)
        beta = (dots * drops).sum(0) / torch.where(aa != 0, aa, 1.0)
        dots = beta * dots
    return per_sample(call, ((dots - drops) ** 2).mean(0))


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


def _generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded ``seed`` (the draws are the same on every device), or ``None``."""
    return None if seed is None else torch.Generator().manual_seed(seed)
