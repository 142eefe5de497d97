"""The maths of each CAM method, one small function per method.

A gradient method is a pure function ``(acts (N, C, *s), grads (N, K, C, *s))
-> maps (N, K, *s)``. :func:`gradient_method` turns it into a driver method
that captures, differentiates and fuses layers through the engine's
:class:`~gradattr.engine.Session`. Nothing here touches hooks or the model.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from einops import reduce

from .engine import Session

Maps = torch.Tensor


def weighted_sum(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """``sum_c weights[n, k, c] * acts[n, c, *s]`` -> ``(N, K, *s)`` for any number of spatial dims."""
    return torch.einsum("nkc,nc...->nk...", weights, acts)


def grad_cam(acts: torch.Tensor, grads: torch.Tensor) -> Maps:
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``ReLU(sum_k alpha_k A^k)``.

    ``alpha_k`` is the spatial mean of ``d score / d A^k``; the map keeps raw values
    (MATLAB's behaviour).

    >>> a = torch.ones(1, 2, 3); g = torch.tensor([[[[1.0, 1, 1], [-3, -3, -3]]]])
    >>> grad_cam(a, g).tolist()  # 1*1 + (-3)*1 < 0 everywhere, so ReLU gives 0
    [[[0.0, 0.0, 0.0]]]
    """
    alpha = reduce(grads, "n k c ... -> n k c", "mean")
    return torch.relu(weighted_sum(alpha, acts))


def gradient_method(fn: Callable[[torch.Tensor, torch.Tensor], Maps], *, counterfactual: bool = False):
    """Drive a pure ``fn(acts, grads)`` through one forward pass and the tail's backward."""

    def method(session: Session):
        cap = session.capture(grad=True)
        grads = session.gradients(cap, counterfactual=counterfactual)
        maps = [fn(a.detach(), g) for a, g in zip(cap.acts, grads)]
        return session.fuse(maps), cap.feature_names, cap.reduction_name

    return method
