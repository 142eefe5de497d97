"""Attention maps of transformers: attention rollout and Chefer et al.'s relevance.

Both read the attention probabilities ``A_b (N, H, L, L)`` of every block ``b``,
observed by :func:`gradattr.capture.attention_blocks.observe` (through ``view.scorer.attention`` and
``view.score_gradients.attention_gradients``) (fused ``scaled_dot_product_attention``
and ``nn.MultiheadAttention`` included: nothing for the user to un-fuse), and
return a map over the token grid observed at the patch embedding, ``(N, K, *grid)``,
which the engine upsamples to the input like any CAM. Which token holds which cell is read
from the first attention call's queries, followed back to the input through the pass
(:mod:`gradattr.provenance`): class, distillation, register and detection tokens may lead
or trail the patches, and the patches may be in any order. With such an extra token the map
is the first one's row of the relevance over the patch tokens; without one (every token
holds a cell: token ids ``(N, L)`` give a map ``(N, L)``, one value per token) it is the
mean of all rows.
"""
from __future__ import annotations

from typing import cast

import torch

from ..errors import expected
from ..provenance import Order
from ..options import COMMON, TARGET, Option
from ..registry import Method, register


def _readout(r: torch.Tensor, grid: tuple[int, ...], extra) -> torch.Tensor:
    """Relevance ``r (..., L, L)`` -> the map over the grid ``(..., *grid)``.

    ``extra``: the number of leading extra tokens, or the observed
    :class:`gradattr.provenance.Order` (the cells' positions; the first other token, wherever it
    sits, is the class token)."""
    if isinstance(extra, Order):
        cols = torch.tensor(extra.index, dtype=torch.long, device=r.device)
        others = extra.others
        rows = r[..., others[0], :] if others else r.mean(-2)
        rows = rows.index_select(-1, cols)
    else:
        rows = r[..., 0, extra:] if extra > 0 else r[..., :, extra:].mean(-2)
    return rows.reshape(*rows.shape[:-1], *grid)


def rollout(probs: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020): ``R = prod_b (0.5 A_b + 0.5 I)`` (rows
    renormalised), with ``A_b`` fused over heads (mean, max or min) and, with
    ``discard_ratio > 0``, its lowest ``discard_ratio`` fraction per sample set to 0 (the
    class token's attention to itself is kept), as in jacobgil/vit-explain. ``(N, L, L)``.

    >>> a = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])  # one block, one head
    >>> rollout([a]).tolist()
    [[[0.75, 0.25], [0.0, 1.0]]]
    """
    r = None
    for a in probs:
        a = a.detach()
        fused = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[head_fusion]
        if discard_ratio > 0:
            flat = fused.flatten(1)
            k = int(flat.shape[1] * discard_ratio)
            if k > 0:
                low = flat.topk(k, -1, largest=False).indices
                drop = torch.zeros_like(flat, dtype=torch.bool).scatter(1, low, True)
                drop[:, 0] = False  # the class token's attention to itself is kept
                flat = flat.masked_fill(drop, 0.0)
                fused = flat.view_as(fused)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        step = (fused + eye) / 2
        step = step / step.sum(-1, keepdim=True)
        r = step if r is None else step @ r
    return cast(torch.Tensor, r)  # set by the first layer


def attention_rollout_map(view, head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """``(N, 1, *grid)``: the rollout's class-token row over the patch grid (mean row without one)."""
    probs, grid, extra = view.scorer.attention()
    return _readout(rollout(probs, head_fusion, discard_ratio), grid, extra)[:, None]


def chefer_relevance(probs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Chefer, Gur & Wolf (ICCV 2021), eq. 13: ``R = I``; per block ``R += mean_h(ReLU(dS/dA * A)) R``.

    ``probs`` ``(N, H, L, L)`` per block, ``grads`` ``(N, K, H, L, L)``; returns ``(N, K, L, L)``.
    """
    r = None
    for a, g in zip(probs, grads):
        cam = (g * a.detach()[:, None]).clamp(min=0).mean(2)  # (N, K, L, L)
        if r is None:
            eye = torch.eye(cam.shape[-1], dtype=cam.dtype, device=cam.device)
            r = eye.expand_as(cam).clone()
        r = r + cam @ r
    return cast(torch.Tensor, r)  # set by the first layer


def transformer_attribution_map(view) -> torch.Tensor:
    """``(N, K, *grid)``: Chefer et al.'s relevance, class-token row (mean row without one)."""
    probs, grads, grid, extra = view.score_gradients.attention_gradients()
    return _readout(chefer_relevance(probs, grads), grid, extra)


def _head_fusion(name, value):
    if value not in ("mean", "max", "min"):
        raise expected(name, "'mean', 'max' or 'min'", repr(value))
    return value


def _ratio(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise expected(name, "a fraction in [0, 1)", repr(value))
    return float(value)


_VIT = """>>> import torch, timm, gradattr
>>> net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
...                         num_classes=3).eval()
"""

register(Method(
    "attention_rollout", "attention rollout", attention_rollout_map, "attention", family="attention",
    shared=COMMON + ("upsampling",), combine="map", needs_target=False,
    options=(Option("head_fusion", "mean", "str", "how the heads of a block are fused: ``\"mean\"``, "
                    "``\"max\"`` or ``\"min\"``.", _head_fusion),
             Option("discard_ratio", 0.0, "float", "fraction of the lowest fused attentions set to 0 "
                    "in every block (jacobgil/vit-explain's noise filter).", _ratio)),
    summary="Attention rollout (Abnar & Zuidema, ACL 2020): the product over blocks of the "
            "head-fused attention plus identity; class-agnostic.",
    doc="""``R = prod_b norm(0.5 A_b + 0.5 I)``; the map is the class token's row of ``R`` over
the patch tokens (the mean row for models without extra tokens; for token ids ``(N, L)``, one
value per token), on the token grid observed at the patch embedding, each token read at the
cell it holds (class, register or detection tokens leading or trailing, any token order). ``A_b`` are the attention probabilities of every block, observed by
intercepting ``F.scaled_dot_product_attention`` / ``nn.MultiheadAttention`` for this call
only (timm, torchvision and Hugging Face ViT/DeiT, fused attention included). One forward
pass, no gradients. See :func:`gradattr.methods.attention.rollout`.""",
    example=_VIT + """>>> gradattr.attention_rollout(net, torch.randn(3, 32, 32)).shape
torch.Size([32, 32])
""",
    use_when="a ViT without a class to explain (where does the class token look?); cheap, "
             "class-agnostic"))

register(Method(
    "transformer_attribution", "Transformer attribution (Chefer et al.)", transformer_attribution_map,
    "attention", family="attention",
    shared=COMMON + TARGET + ("upsampling",), combine="map",
    summary="Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021, \"Generic "
            "attention-model explainability\"): ``R += mean_h(ReLU(dS/dA * A)) R`` over blocks.",
    doc="""``R`` starts as the identity; each block adds ``mean_heads(ReLU(dS/dA_b * A_b)) R``.
The map is the class token's row of ``R`` over the patch tokens, each read at the cell it holds
(extra tokens leading or trailing, any token order); for a model without extra tokens (no
class token; token ids ``(N, L)``: one value per token) it is the mean of all rows. ``A_b`` and ``dS/dA_b`` come from one
forward and one backward pass with attention intercepted for this call only (fused
``scaled_dot_product_attention`` and ``nn.MultiheadAttention`` included); the grid is the one
observed at the patch embedding. See :func:`gradattr.methods.attention.chefer_relevance`.""",
    example=_VIT + """>>> gradattr.transformer_attribution(net, torch.randn(3, 32, 32), 1).shape
torch.Size([32, 32])
""",
    use_when="a ViT/DeiT classifier: class-specific maps that localise where Grad-CAM on tokens "
             "cannot"))
