"""Attention probabilities, observed for the one forward pass that asks for them.

Fused attention (``F.scaled_dot_product_attention``, and ``nn.MultiheadAttention``,
which calls it) never materialises the probabilities ``A = softmax(Q K^T / sqrt(d) + M)``
that attention rollout and Chefer et al.'s relevance need. :class:`AttentionCapture`
is a :class:`torch.overrides.TorchFunctionMode`: while it is active (in the thread that
entered it, for one forward pass), every ``F.scaled_dot_product_attention`` call is
computed explicitly, with the same scale, mask, causal and grouped-query semantics,
and its ``A`` (``(N, H, L, S)``) is recorded inside the autograd graph, so
``d score / d A`` is available; ``nn.MultiheadAttention`` runs its explicit path
(per-head weights) whatever its ``need_weights``. Nothing is patched: when the ``with`` block ends,
the next forward pass uses the fused kernel again.

The token grid is read in the same pass from the patch embedding: the first
convolution whose output has the input's batch size and spatial rank gives
``(N, C, *grid)``; the extra tokens (class, distillation, register tokens) are
``L - prod(grid)`` and are taken to lead the sequence, as in timm, torchvision
and Hugging Face ViTs. No grid is guessed from ``sqrt(L)`` or the input size.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import GradattrError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
_SDPA_NAMES = (("query", None), ("key", None), ("value", None), ("attn_mask", None),
               ("dropout_p", 0.0), ("is_causal", False), ("scale", None), ("enable_gqa", False))


def explicit_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                       scale=None, enable_gqa=False):
    """``(softmax(Q K^T scale + M) V, A)``: ``F.scaled_dot_product_attention`` spelled out.

    ``scale`` defaults to ``1 / sqrt(E)``; a boolean ``attn_mask`` keeps the ``True``
    positions, a float one is added; ``is_causal`` keeps the lower triangle (top-left
    aligned, as PyTorch); ``enable_gqa`` repeats key/value heads to the query heads.
    ``dropout_p > 0`` drops probabilities as the fused kernel would (the model asked for it).
    """
    length, source = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(rep, -3)
        value = value.repeat_interleave(rep, -3)
    logits = (query @ key.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    probs = torch.softmax(logits, -1)
    used = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
    return used @ value, probs


def _arg(args, kwargs, i, name, default):
    return args[i] if len(args) > i else kwargs.get(name, default)


class AttentionCapture(TorchFunctionMode):
    """Within ``with AttentionCapture() as cap:`` every attention call records its probabilities.

    ``cap.probs`` lists the ``(N, H, L, S)`` probability tensors in call order;
    ``cap.nodes`` the tensors of the autograd graph they are (views of), so that
    :meth:`gradients` gives ``d score / d A`` for each. A fused
    ``F.scaled_dot_product_attention`` call is computed by :func:`explicit_attention`;
    ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) runs its own explicit
    path (``need_weights=True``, per head), whose probabilities are the very tensor its
    output is computed from; the caller still gets what it asked for.
    """

    def __init__(self):
        super().__init__()
        self.probs: list[torch.Tensor] = []
        self.nodes: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            bound = _SDPA_NAMES
            a = [_arg(args, kwargs, i, n, d) for i, (n, d) in enumerate(bound)]
            out, probs = explicit_attention(*a)
            self.probs.append(probs)
            self.nodes.append(probs)
            return out
        if func is F.multi_head_attention_forward:
            bound = _MHA_SIGNATURE.bind(*args, **kwargs)
            bound.apply_defaults()
            need, average = bound.arguments["need_weights"], bound.arguments["average_attn_weights"]
            bound.arguments["need_weights"] = True
            bound.arguments["average_attn_weights"] = False
            out, w = func(**bound.arguments)  # this mode is off inside: the explicit path runs
            base = w._base if w._base is not None else w  # (N * H, L, S), what the output used
            heads = bound.arguments["num_heads"]
            self.probs.append(base.view(-1, heads, *base.shape[-2:]))
            self.nodes.append(base)
            if not need:
                return out, None
            return out, (w.mean(-3) if average else w)
        return func(*args, **kwargs)

    def gradients(self, s: torch.Tensor, counterfactual: bool = False, reduction_name: str = "output"):
        """``d s[:, k] / d A`` for every recorded call: ``(N, K, H, L, S)`` each."""
        from .capture import per_target_grads

        names = [f"attention call {i}" for i in range(len(self.nodes))]
        grads = per_target_grads(s, self.nodes, counterfactual, names, reduction_name)
        out = []
        for g, p in zip(grads, self.probs):
            if g.shape[0] != p.shape[0]:  # (N * H, K, L, S) from a MultiheadAttention node
                g = g.unflatten(0, p.shape[:2]).transpose(1, 2)
            out.append(g)
        return out


class TokenGrid:
    """Forward hooks that record the patch embedding's grid: the first convolution whose
    output is ``(N, C, *grid)`` with the input's batch size and spatial rank."""

    def __init__(self, net: nn.Module, n: int, rank: int, mine):
        self.grid: tuple[int, ...] | None = None
        self.name: str | None = None
        self.handles = []

        def hook_for(name):
            def hook(m, i, o):
                if self.grid is None and mine() and isinstance(o, torch.Tensor) \
                        and o.ndim == rank + 2 and o.shape[0] == n:
                    self.grid, self.name = tuple(o.shape[2:]), name
            return hook
        self.handles = [m.register_forward_hook(hook_for(nm)) for nm, m in net.named_modules()
                        if isinstance(m, _CONVS)]


def grid_of(grid: tuple[int, ...] | None, probs: list[torch.Tensor], spatial) -> tuple[tuple[int, ...], int]:
    """``(grid, extra)`` from the observed patch grid and the attention's token count."""
    if not probs:
        raise GradattrError(
            "net: expected a model whose attention runs through F.scaled_dot_product_attention or "
            "nn.MultiheadAttention (timm with fused attention, torchvision ViT, Hugging Face with "
            "attn_implementation='sdpa'), but no attention call was observed in its forward pass; "
            "a model that computes softmax(QK^T) by hand needs that path")
    if grid is None:
        raise GradattrError(
            f"net: expected a patch embedding that is a convolution with output (N, C, *grid) of "
            f"{len(spatial)} spatial dims, to read the token grid from, but none ran in the forward "
            "pass; the grid is not guessed from the token count")
    tokens = probs[0].shape[-1]
    cells = math.prod(grid)
    if any(p.shape[-1] != tokens or p.shape[-2] != tokens for p in probs):
        shapes = sorted({tuple(p.shape[-2:]) for p in probs})
        raise GradattrError(f"net: expected self-attention over one token sequence in every block, "
                            f"got attention maps of shapes {shapes} (token merging or cross-attention)")
    if tokens < cells:
        raise GradattrError(f"net: expected at least {cells} tokens (the patch grid {grid} observed "
                            f"at the patch embedding), got attention over {tokens} tokens")
    return grid, tokens - cells


def observe(call, reduction: str | None = None, grad: bool = True):
    """One forward pass of ``call`` with attention captured and the token grid read.

    Returns ``(capture, grid, extra, y, reduction_name)``: the :class:`AttentionCapture`,
    the patch grid ``(*grid)``, the number of leading extra tokens, the scored output
    and its name. Hooks act only in this thread and are removed in ``finally``; the
    mode is active only for this pass.
    """
    from .capture import _mine, _Output, run_hooked

    mine = _mine()
    x = call.x
    out = _Output(call.net, reduction, False, mine)
    tokens = TokenGrid(call.net, x.shape[0], x.ndim - 2, mine)
    cap = AttentionCapture()
    with cap:
        output = run_hooked(call, x, lambda: out.handles + tokens.handles, grad=grad)
    y, rname = out.finish(output)
    grid, extra = grid_of(tokens.grid, cap.probs, tuple(x.shape[2:]))
    return cap, grid, extra, y, rname
