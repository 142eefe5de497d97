"""The model parameter randomisation test (Adebayo et al., "Sanity checks for saliency maps",
NeurIPS 2018): re-initialise the layers from the output back and measure how much of the map
survives (rank correlation with the original map; lower is better: a map that does not change
does not explain the model). Conventions: :mod:`gradattr.metrics.method_runs`."""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import GradattrWarning, expected
from ..prep import Call
from ..options import check_seed
from .arguments import check_choice, check_int
from .method_runs import flat_maps, method_runner, per_sample, prepared_call, rows_target


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
                        similarity: str = "spearman", seed: int | None = 0, reduction_fn: Callable | None = None,
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
        method: a method name or a callable ``(net, x, target) -> maps`` (see :mod:`gradattr.metrics.method_runs`).
        mode: ``"cascade"`` or ``"independent"``.
        similarity: ``"spearman"`` (rank correlation, ties averaged) or ``"pearson"``; a
            constant map gives NaN (as scipy does).
        seed: the seed of layer ``j`` is ``seed + j`` (``None``: torch's global random state).
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
    mode = check_choice(mode, "mode", ("cascade", "independent"))
    kind = check_choice(similarity, "similarity", ("spearman", "pearson"))
    seed = check_seed("seed", seed)
    layers = randomizable_layers(net)
    if not layers:
        raise expected("net", "a network with layers to randomise (modules that own parameters and have "
                       "reset_parameters)", "none")
    call, fixed = prepared_call(net, x, target, reduction_fn, classes, input_format, device)
    run = method_runner(method, method_options, device)
    n, dev = call.n, call.x.device
    tgt = rows_target(fixed, torch.arange(n))
    original = flat_maps(run(net, call.x, tgt), n, dev)
    return {name: per_sample(call, _similarity(original, maps, kind)) for name, maps in _randomised_maps(
        net, layers, mode, seed, call, tgt, method, method_options, device)}


def _randomised_maps(net, layers, mode, seed, call: Call, tgt, method, method_options, device):
    """``(layer name, (N, P) maps)`` of each step of :func:`randomization_check`, computed on
    its copy of ``net`` (one copy for the cascade, re-initialised further at each step)."""
    run = method_runner(method, method_options, device)
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
            if seed is None:
                pass  # torch's global random state, restored afterwards by fork_rng
            elif cuda:
                torch.manual_seed(seed + j)
            else:
                torch.default_generator.manual_seed(seed + j)  # what torch.manual_seed does on a CPU
            modules[name].reset_parameters()
            opts = {k: _on_copy(v, names, modules) for k, v in method_options.items()}
            step = run if not opts else method_runner(method, opts, device)
            with warnings.catch_warnings():  # an empty map of a random model is expected: its NaN says so
                warnings.simplefilter("ignore", GradattrWarning)
                maps = flat_maps(step(net_copy, call.x, tgt), call.n, call.x.device)
            yield name, maps


def _deep_copy(net: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(net)
    except Exception as e:  # noqa: BLE001 - say what failed
        raise expected("net", "a network that copy.deepcopy can copy (the randomisation check "
                       "re-initialises a copy, never the network itself)", f"{type(e).__name__}: {e}") from e
