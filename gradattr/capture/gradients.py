"""Gradients of several targets' scores at once: ``d s[:, k] / d inputs`` for every target ``k``,
through vectorised backwards over one-hot rows in chunks that fit a memory budget, or one
backward per target where an op cannot be vectorised."""
from __future__ import annotations

import warnings

import torch

from ..errors import GradattrError


#: Memory the one-hot rows of one vectorised backward (and the gradients it returns) may use:
#: ``K`` targets run in chunks of as many rows as fit, so ``K x K`` is never built.
GRADS_BUDGET = 128 * 2**20


def _available_bytes(device: torch.device) -> int | None:
    """Free memory where the gradients will live: the GPU's free memory, or the host's
    ``MemAvailable``; ``None`` where it cannot be read."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError):
        return None
    return None


def target_chunk(s: torch.Tensor, inputs: list[torch.Tensor]) -> int:
    """Targets per vectorised backward for scores ``s (N, K)``; refuses gradients that cannot fit.

    The gradients of all ``K`` targets, ``N x K x`` every input, are the result and must be
    held at once: when they exceed the free memory (:func:`_available_bytes`) the call is
    refused with the estimate. A chunk's one-hot rows ``(k, N, K)`` and its gradients
    ``(k, N, *input)`` fit :data:`GRADS_BUDGET` (a row counts three times: itself and the
    gradient of the output it becomes on the way back).
    """
    n, k_count = s.shape
    per_target = sum(t.numel() * t.element_size() for t in inputs)
    total = per_target * k_count
    free = _available_bytes(s.device)
    if free is not None and total > free:
        raise GradattrError(
            f"target: expected targets whose gradients fit in memory, but {k_count} targets need "
            f"{total / 2**20:,.0f} MiB of gradients ({k_count} x {per_target / 2**20:,.2f} MiB for "
            f"inputs {[tuple(t.shape) for t in inputs]}) and {free / 2**20:,.0f} MiB are free on "
            f"{s.device}; explain fewer targets per call (split the target list)")
    per_row = 3 * n * k_count * s.element_size() + per_target  # the row, the output's gradient, a copy
    return max(1, min(k_count, GRADS_BUDGET // max(per_row, 1)))


def _batched_grads(s: torch.Tensor, inputs: list[torch.Tensor], step: int):
    """``d s[:, k] / d inputs`` as ``(N, K, *input)`` (``None`` where unused), ``step`` targets
    per vectorised backward; one-hot rows built per chunk (one chunk: exactly ``eye(K)``)."""
    k_count = s.shape[1]
    grads: list = [None] * len(inputs)
    for k0 in range(0, k_count, step):
        k1 = min(k_count, k0 + step)
        rows = torch.zeros(k1 - k0, k_count, dtype=s.dtype, device=s.device)
        rows[torch.arange(k1 - k0, device=s.device), torch.arange(k0, k1, device=s.device)] = 1
        hot = rows[:, None, :].expand(k1 - k0, *s.shape)
        g = torch.autograd.grad(s, inputs, grad_outputs=hot, is_grads_batched=True,
                                retain_graph=True, allow_unused=True)
        if k0 == 0 and k1 == k_count:
            return [None if gi is None else gi.transpose(0, 1) for gi in g]
        for i, gi in enumerate(g):
            if gi is None:
                continue
            if grads[i] is None:
                grads[i] = gi.new_empty(gi.shape[1], k_count, *gi.shape[2:])
            grads[i][:, k0:k1] = gi.transpose(0, 1)
    return grads


def per_target_grads(s: torch.Tensor, inputs: list[torch.Tensor], counterfactual: bool,
                     names: list[str], reduction_name: str) -> list[torch.Tensor]:
    """``d s[:, k] / d inputs[i]`` for every target ``k``: one ``(N, K, *input)`` tensor per input.

    Samples are independent in eval mode, so the gradient of the batch sum is each
    sample's own. Several targets share one vectorised backward
    (``is_grads_batched``), or one backward each where an op cannot be vectorised.
    """
    if not s.requires_grad:
        raise GradattrError(
            f"target: expected a score that depends on {names[0]}, but the score computed from "
            f"reduction layer {reduction_name!r} does not depend on it (is the reduction layer "
            "before the feature layer?)")
    if counterfactual:
        s = -s
    k_count = s.shape[1]
    grads = None
    if k_count > 1:  # targets share vectorised backwards (vmap over one-hot rows), chunk by chunk
        step = target_chunk(s, inputs)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # vmap's "performance drop" notes
                grads = _batched_grads(s, inputs, step)
        except RuntimeError:  # an op without a batching rule: one backward per target
            grads = None
    if grads is None:
        try:
            # one target: the sum's gradient given directly (ones), no select and sum recorded;
            # one score (N = K = 1): those ones made by autograd (no shape check of given ones)
            per_k = [torch.autograd.grad(s, inputs, None if s.numel() == 1 else torch.ones_like(s),
                                         allow_unused=True)] if k_count == 1 \
                else [torch.autograd.grad(s[:, k].sum(), inputs, retain_graph=k < k_count - 1,
                                          allow_unused=True) for k in range(k_count)]
        except RuntimeError as e:
            if "use_reentrant" not in str(e):
                raise
            raise GradattrError(
                "net: expected a network whose layers after the feature layer autograd can "
                "differentiate with torch.autograd.grad, but they run in a reentrant "
                "torch.utils.checkpoint segment (use_reentrant=True), which allows only "
                ".backward(); checkpoint with use_reentrant=False, or choose a feature layer "
                "after the segment") from None
        grads = [None if per_k[0][i] is None else per_k[0][i].unsqueeze(1) if k_count == 1
                 else torch.stack([g[i] for g in per_k], 1) for i in range(len(inputs))]
    for gi, name in zip(grads, names):
        if gi is None:
            raise GradattrError(f"target: expected a score that depends on {name}, but the score "
                                f"from reduction layer {reduction_name!r} does not depend on it")
    return grads
