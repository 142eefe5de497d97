"""Ensembles around any method: ``aug_smooth`` (test-time augmentation) and SESS.

Both run the method several times through the engine's ``run`` (one prepared call ->
``(maps, feature names, reduction name)``) on modified inputs and fuse the maps; the
engine picks them by the shared options ``aug_smooth`` and ``sess``.
"""
from __future__ import annotations

from typing import cast

import torch

from . import ops, resize
from .capture import Plan, capture
from .prep import Call


#: pytorch-grad-cam's default test-time augmentations (ttach): flip x multiply.
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


def augmented(run, call: Call, plan: Plan, fix_target: bool):
    """``aug_smooth``: the mean of the maps of six augmented inputs, as pytorch-grad-cam does.

    Horizontal flip (the last axis: width, or time for sequences) x multiplication
    by 0.9, 1 and 1.1. Each augmented input's map is un-flipped and min-max
    normalised, then the six are averaged (so the result lies in [0, 1]). The
    top-class target is fixed on the original input first (one more forward
    pass), so every augmentation explains the same class.
    """
    target = call.target
    if fix_target and target.kind == "top":
        target = target.fixed(capture(call, plan, grad=False).output, call.n)
    acc = None
    for flip, factor in AUGMENTATIONS:
        x = call.x.flip(-1) if flip else call.x
        maps, names, rname = run(call.with_input(x * factor, target))
        maps = ops.minmax(maps.flip(-1) if flip else maps)
        acc = maps if acc is None else acc + maps
    return cast(torch.Tensor, acc) / len(AUGMENTATIONS), names, rname  # AUGMENTATIONS is not empty


def _window_starts(length: int, step: int, window: int) -> list[int]:
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def _linear(t: torch.Tensor, size, antialias: bool = False) -> torch.Tensor:
    """``(B, C, *s)`` resized (multi-)linearly, half-pixel centres (OpenCV's ``INTER_LINEAR``)."""
    if tuple(t.shape[2:]) == tuple(size):
        return t
    return resize.linear(t, tuple(size), antialias=antialias and len(size) == 2)


def sess(run, call: Call, plan: Plan, cfg: dict):
    """SESS (Tyagi et al., 2022; pytorch-grad-cam's ``SESS``): scales x sliding windows, fused.

    Each sample is resized so its shorter side takes ``num_scales`` sizes (the window
    size, then steps of ``scale_step_ratio`` windows); windows of the shorter side's
    size slide over every scale (``step_size``, windows past the border shifted back).
    Each patch's map (the method's, at the window's size, min-max scaled, as
    pytorch-grad-cam's base CAM returns it) is weighted by the patch's target
    probability (softmax of a class output; the ReLU of a ``reduction_fn`` score)
    over the best patch's, pasted back where the patch came from, resized to the
    input, and fused: the mean over the patches whose value exceeds ``theta``
    (``pool="mean"``) or the maximum; then an 11-tap Gaussian blur (sigma 5) and a
    min-max scaling. The result lies in [0, 1] at the input's resolution. The target
    classes are fixed on the whole input first.
    """
    x = call.x
    n, spatial = x.shape[0], tuple(x.shape[2:])
    target = call.target
    if target.kind != "fn":
        target = target.fixed(capture(call, plan, grad=False).output, n)
    window = cfg["window_size"] or min(spatial)
    step = cfg["step_size"] or window
    inc = int(round(window * cfg["scale_step_ratio"]))
    scales = [window + inc * i for i in range(cfg["num_scales"])]
    out, names, rname = [], [], "output"
    for i in range(n):
        patches, where = _sess_patches(x[i:i + 1], scales, step, window)
        scores, maps, names, rname = _sess_patch_maps(run, call, plan, target, i, patches, window, cfg)
        out.append(torch.stack([_sess_fuse(scores[:, kk], maps[:, kk], where, window, x.device, cfg, spatial)
                                for kk in range(maps.shape[1])]))
    maps = torch.stack(out)
    if cfg["smooth"]:
        maps = ops.gaussian_blur(maps, 11, 5.0, short_axes="skip")
    return ops.minmax(maps, eps=1e-7), names, rname


def _sess_patches(xi: torch.Tensor, scales: list[int], step: int, window: int) -> tuple[list, list]:
    """One sample ``(1, C, *s)`` at every scale, cut into windows: the patches and ``(size, corner)`` of each."""
    spatial = tuple(xi.shape[2:])
    patches, where = [], []
    for s in scales:
        short = spatial.index(min(spatial))  # torchvision's resize(x, s): the shorter side to s
        size = tuple(s if j == short else int(s * d / spatial[short]) for j, d in enumerate(spatial))
        scaled = _linear(xi, size, antialias=True)
        grids = [_window_starts(d, step, window) for d in size]
        for corner in torch.cartesian_prod(*[torch.tensor(g) for g in grids]).reshape(-1, len(size)).tolist():
            sl = tuple(slice(c, c + window) for c in corner)
            patches.append(scaled[(slice(None), slice(None)) + sl])
            where.append((size, corner))
    return patches, where


def _sess_patch_maps(run, call: Call, plan: Plan, target, i: int, patches: list, window: int, cfg: dict):
    """Sample ``i``'s patches scored (target probability) and explained, in batches of ``batch_size``.

    Returns ``(scores (P, K), maps (P, K, *window), names, rname)``; each map is the
    method's, min-max scaled, resized to the window, min-max scaled again.
    """
    from .targets import Target

    rows_t = None if target.kind == "fn" else target.classes[i:i + 1]
    scores, maps, names, rname = [], [], [], "output"
    for start in range(0, len(patches), cfg["batch_size"]):
        batch = torch.cat(patches[start:start + cfg["batch_size"]])
        b = batch.shape[0]
        t_b = target if rows_t is None else Target("per_sample", target.scalar,
                                                  classes=rows_t.expand(b, -1))
        sub = call.with_input(batch, t_b)
        with torch.no_grad():
            y = cast(torch.Tensor, capture(sub, plan, grad=False).output)  # (N, K) for class targets
        if target.kind == "fn":
            sc = torch.relu(t_b.scores(y, b))
        else:
            per_class = y.flatten(2).sum(-1) if y.ndim > 2 else y
            sc = torch.softmax(per_class.float(), 1).gather(1, cast(torch.Tensor, rows_t).expand(b, -1).to(y.device))
        scores.append(sc.detach())
        m, names, rname = run(sub)
        m = ops.minmax(_linear(ops.minmax(torch.relu(m.float()), eps=1e-7), (window,) * (batch.ndim - 2)),
                       eps=1e-7)
        maps.append(m)
    return torch.cat(scores), torch.cat(maps), names, rname


def _sess_fuse(sc: torch.Tensor, maps: torch.Tensor, where: list, window: int, device: torch.device,
               cfg: dict, spatial: tuple) -> torch.Tensor:
    """One class's patch maps ``(P, *window)`` weighted by their scores ``(P,)``, pasted back at
    ``spatial`` (the sample's size, on ``device``) and fused."""
    order = torch.argsort(sc, stable=True)[int(len(sc) * cfg["pre_filter_ratio"]):]
    best = sc[order[-1]]
    w = sc[order] / best if best > 0 else torch.ones(len(order), device=sc.device)
    total = torch.zeros(spatial, device=device)
    counts = torch.zeros(spatial, device=device)
    for wj, j in zip(w.tolist(), order.tolist()):
        size, corner = where[j]
        full = torch.zeros(size, device=device)
        full[tuple(slice(c, c + window) for c in corner)] = maps[j] * wj
        full = _linear(full[None, None], spatial)[0, 0]
        if cfg["pool"] == "max":
            total = torch.maximum(total, full)
        else:
            mask = full > cfg["theta"]
            total = total + torch.where(mask, full, 0.0)
            counts = counts + mask
    if cfg["pool"] == "mean":
        total = torch.where(counts > 0, total / counts.clamp(min=1), 0.0)
    return total
