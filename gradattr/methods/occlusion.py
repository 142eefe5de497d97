"""Occlusion sensitivity (MATLAB's ``occlusionSensitivity``; Zeiler & Fergus, ECCV 2014).

A mask of ``mask_size`` elements is moved over the input with ``stride``; at each
position the masked elements (all channels) are replaced by ``mask_value`` and the
target score is taken again. The map holds, per mask position, the drop of the
score ``f(x) - f(x occluded there)``, on the grid of mask positions, which the
engine resizes to the input's size like any CAM (``upsampling``; ``"none"`` keeps
the grid). Positive values mark regions whose occlusion lowers the score.

Mask positions, as MATLAB's ``MaskClipping``: with ``mask_clipping=True`` ("on",
MATLAB's default) the centre of the first mask sits on the first element and masks
are clipped at the borders (``ceil(S / stride)`` positions per axis); with ``False``
("off") the first mask's corner sits on the first element and only whole masks are
used (``floor((S - m) / stride) + 1`` positions). ``mask_size="auto"`` is 20 % of
each spatial size (rounded), ``stride="auto"`` 10 % (rounded up), and
``mask_value="auto"`` each sample's per-channel mean, as MATLAB defines them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import GradattrError, expected
from ..options import COMMON, TARGET, Option, flag
from ..registry import Method, register
from .common import BATCH_SIZE, PROGRESS, TOY as _TOY
from .perturbation import SOFTMAX


def _sizes(name: str, value, spatial: tuple[int, ...], fraction: float, rounding) -> tuple[int, ...]:
    if isinstance(value, str) and value == "auto":
        return tuple(max(1, int(rounding(fraction * s))) for s in spatial)
    vals = (value,) * len(spatial) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(vals, (tuple, list)) or len(vals) != len(spatial) or \
            any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
        raise expected(name, f"'auto', a positive int or {len(spatial)} positive ints (one per "
                       "spatial/time dim)", repr(value))
    return tuple(vals)


def _round_half_up(v: float) -> float:
    return math.floor(v + 0.5)


def mask_positions(spatial: tuple[int, ...], size: tuple[int, ...], stride: tuple[int, ...],
                   clipping: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per axis, the ``(start, stop)`` of every mask position (stop exclusive, clipped)."""
    out = []
    for s, m, st in zip(spatial, size, stride):
        if m > s:
            raise expected("mask_size", f"a mask no larger than the input ({spatial})", repr(size))
        if clipping:
            centres = torch.arange(0, s, st)
            start = centres - (m - 1) // 2
        else:
            start = torch.arange(0, s - m + 1, st)
        out.append((start.clamp(min=0), (start + m).clamp(max=s)))
    return out


def occlusion_masks(bounds, index: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Boolean masks ``(B, *S)`` of the flat mask positions ``index`` (C order over the grid)."""
    grid = [len(b[0]) for b in bounds]
    mask = torch.ones(len(index), *spatial, dtype=torch.bool)
    rest = index.clone()
    for d in reversed(range(len(spatial))):
        k = rest % grid[d]
        rest = rest // grid[d]
        ar = torch.arange(spatial[d])
        m_d = (ar >= bounds[d][0][k, None]) & (ar < bounds[d][1][k, None])  # (B, S_d)
        shape = [len(index)] + [1] * len(spatial)
        shape[1 + d] = spatial[d]
        mask = mask & m_d.view(shape)
    return mask


def fill_value(x: torch.Tensor, mask_value, name: str | None = "mask_value") -> torch.Tensor:
    """The occluding value as ``(N, C, 1, ..., 1)`` or broadcastable: ``"auto"`` is each sample's
    per-channel mean; a number; or one value per channel. Integer ids (token ids) are occluded
    by an id given as a number (``name``: the option that gives it, or None when none does)."""
    n, c, *s = x.shape
    if not x.is_floating_point() and (isinstance(mask_value, str) or float(np.asarray(mask_value).sum())
                                      != int(np.asarray(mask_value).sum())):
        if name is None:
            raise expected("x", "a floating-point input for this method (a mean of token ids is no "
                           "id); for token ids use occlusion with mask_value=<an id, e.g. the "
                           "padding id>", f"dtype {x.dtype}")
        raise expected(name, "a token id (an integer, e.g. the padding id) for integer ids x: a "
                       "mean of ids is no id", repr(mask_value))
    if isinstance(mask_value, str):
        return x.mean(tuple(range(2, x.ndim)), keepdim=True)
    v = torch.as_tensor(mask_value, dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        return v.view([1] * x.ndim)
    if v.ndim == 1 and v.numel() == c:
        return v.view(1, c, *[1] * len(s))
    raise expected("mask_value", f"'auto', a number or {c} numbers (one per channel)",
                   f"shape {tuple(v.shape)}")


def occlusion_map(view, mask_size="auto", stride="auto", mask_value="auto", mask_clipping=True,
                  softmax=True, batch_size=None, progress=False) -> torch.Tensor:
    """``(N, K, *grid)``: ``f(x) - f(x occluded at p)`` for every mask position ``p``."""
    scorer = view.scorer
    x = scorer.x
    n, c, *spatial = x.shape
    spatial = tuple(spatial)
    size = _sizes("mask_size", mask_size, spatial, 0.2, _round_half_up)
    step = _sizes("stride", stride, spatial, 0.1, math.ceil)
    bounds = mask_positions(spatial, size, step, mask_clipping)
    grid = tuple(len(b[0]) for b in bounds)
    positions = math.prod(grid)
    value = fill_value(x, mask_value)
    if value.shape[0] != n:
        value = value.expand(n, *value.shape[1:])
    rows = torch.arange(n, device=x.device).repeat_interleave(positions)

    def make(i, j):
        t = torch.arange(i, j)
        m = occlusion_masks(bounds, t % positions, spatial).to(x.device)[:, None]
        r = rows[i:j]
        return torch.where(m, value[r], x[r])

    try:
        base = scorer.score_inputs(x, torch.arange(n, device=x.device), softmax)  # (N, K)
        s = scorer.score_masked(n * positions, make, rows, batch_size=batch_size, progress=progress,
                               desc="occlusion", softmax=softmax)
    except GradattrError as err:
        raise softmax_cause(scorer, softmax, err) from None
    drop = base[rows] - s  # (N * P, K)
    return drop.view(n, positions, -1).transpose(1, 2).reshape(n, -1, *grid)


def softmax_cause(scorer, softmax: bool, err: GradattrError) -> GradattrError:
    """``err`` (scores that are not finite), or, when ``softmax=True`` and the raw output of the
    unperturbed input is finite in the target classes but not in another class, an error saying so:
    the softmax over all classes is NaN wherever one class is, and ``softmax=False`` avoids it."""
    if not softmax:
        return err
    try:
        with torch.no_grad():
            y = scorer.output_of(scorer.x)
            scorer.target.scores(y, scorer.n)  # raises when the target classes themselves are not finite
    except Exception:  # noqa: BLE001 - only a clearer message for the error already raised
        return err
    if not isinstance(y, torch.Tensor) or y.ndim < 2:
        return err
    per_class = (y.flatten(2).sum(-1) if y.ndim > 2 else y).detach()
    bad = ~torch.isfinite(per_class)
    if not bool(bad.any()):
        return err
    rows, cols = bad.nonzero(as_tuple=True)
    k, kind = int(cols[0]), "NaN" if bool(torch.isnan(per_class[rows[0], cols[0]])) else "Inf"
    samples = sorted({int(r) for r in rows[cols == k].tolist()})
    return GradattrError(
        f"net: expected finite outputs in every class under softmax=True, got {kind} in class {k} (sample(s) "
        f"{samples[:10]}{' ...' if len(samples) > 10 else ''}), which is not a target class: the softmax over "
        f"all classes is NaN wherever one class is; pass softmax=False to score the target classes' raw "
        "outputs, which do not involve the other classes")


def _mask_value(name, value):
    if isinstance(value, str) and value != "auto":
        raise expected(name, "'auto' (per-channel mean), a number or one number per channel", repr(value))
    if isinstance(value, bool):
        raise expected(name, "'auto' (per-channel mean), a number or one number per channel", repr(value))
    if not isinstance(value, str):
        try:
            v = torch.as_tensor(value, dtype=torch.float64, device="cpu") if not isinstance(value, torch.Tensor) \
                else value.detach().double().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise expected(name, "'auto' (per-channel mean), a number or one number per channel",
                           repr(value)) from None
        if not bool(torch.isfinite(v).all()):
            raise expected(name, "finite values ('auto', a number or one number per channel): occluded "
                           "elements become this value", repr(value))
    return value


def _size_option(name, value):
    if isinstance(value, str) and value != "auto":
        raise expected(name, "'auto', a positive int or one positive int per spatial/time dim", repr(value))
    if isinstance(value, (int, tuple, list)) and not isinstance(value, bool) or value == "auto":
        return value
    raise expected(name, "'auto', a positive int or one positive int per spatial/time dim", repr(value))


register(Method(
    "occlusion", "occlusion sensitivity", occlusion_map, "nothing", family="perturbation",
    shared=COMMON + TARGET + ("upsampling",), combine="map",
    options=(Option("mask_size", "auto", "str | int | Sequence[int]",
                    "size of the occluding mask per spatial/time dim; ``\"auto\"``: 20 % of the "
                    "input's size (MATLAB's ``MaskSize``).", _size_option),
             Option("stride", "auto", "str | int | Sequence[int]",
                    "step between mask positions; ``\"auto\"``: 10 % of the input's size, rounded "
                    "up (MATLAB's ``Stride``).", _size_option),
             Option("mask_value", "auto", "str | float | Sequence[float]",
                    "what occluded elements become: ``\"auto\"`` each sample's per-channel mean, a "
                    "number, or one number per channel (MATLAB's ``MaskValue``).", _mask_value),
             Option("mask_clipping", True, "bool",
                    "``True`` (MATLAB's ``MaskClipping=\"on\"``): masks centred from the first "
                    "element, clipped at the borders; ``False``: whole masks from the first "
                    "element only.", flag),
             SOFTMAX, BATCH_SIZE, PROGRESS),
    summary="Occlusion sensitivity (MATLAB ``occlusionSensitivity``; Zeiler & Fergus 2014): the "
            "drop of the target score when a patch of the input is occluded, per mask position.",
    doc="""``M(p) = f(x) - f(x with the mask at p set to mask_value)``, ``f`` the target's softmax
probability (``softmax=False``: the raw score), on the grid of mask positions, resized to the
input like a CAM (``upsampling="none"`` keeps the grid). One forward pass per mask position and
sample, in chunks. With ``stride == mask_size`` tiling the input (``mask_clipping=False``) and
``upsampling="nearest"`` every element holds the drop of the one patch covering it, which is
captum's ``Occlusion`` averaged over channels. See :mod:`gradattr.methods.occlusion`.""",
    example=_TOY + """>>> gradattr.occlusion(net, torch.randn(2, 16), 1, mask_size=4, stride=4).shape
torch.Size([16])
""",
    use_when="a model-agnostic check of which regions the score needs (MATLAB's "
             "occlusionSensitivity); one forward pass per mask position"))
