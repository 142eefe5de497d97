"""Complexity of a map: how concentrated it is (sparseness, the Gini index of ``|map|``,
Chalasani et al., ICML 2020)."""
from __future__ import annotations

import torch

from .arguments import give, maps_float64


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
    m, as_numpy, dev = maps_float64(maps)
    a = m.abs().flatten(1).sort(1).values
    d = a.shape[1]
    k = torch.arange(1, d + 1, dtype=a.dtype, device=a.device)
    total = a.sum(1)
    g = ((2 * k - d - 1) * a).sum(1) / (d * torch.where(total > 0, total, 1.0))
    return give(torch.where(total > 0, g, torch.nan).float(), as_numpy, dev)
