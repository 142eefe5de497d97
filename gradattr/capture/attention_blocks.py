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

The token grid is the one :class:`gradattr.geometry.Observer` observes in the same pass
at the stage of the first attention call, read from the positions of its query tokens
followed back to the input (:mod:`gradattr.provenance`: the patch embedding's grid, which
token holds which cell, and where the class, distillation, register or detection tokens
sit, leading or trailing; for token ids ``(N, L)``, one cell per token). Where the pass
could not follow them, the grid is the one observed at that stage (a patch embedding's
``(N, C, *grid)`` before it is flattened, a reshape or an unfold) and the extra tokens,
``L - prod(grid)``, are taken to lead the sequence. No grid is guessed from ``sqrt(L)``
or the input size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import GradattrError
from ..geometry import Observer
from .gradients import per_target_grads
from .hooks import Output, run_hooked, thread_guard

#: ``F.multi_head_attention_forward``'s parameters in order, with their defaults
#: (``_REQUIRED``: none); a test keeps them equal to the installed torch's.
_REQUIRED = object()
_MHA_NAMES = (("query", _REQUIRED), ("key", _REQUIRED), ("value", _REQUIRED),
              ("embed_dim_to_check", _REQUIRED), ("num_heads", _REQUIRED),
              ("in_proj_weight", _REQUIRED), ("in_proj_bias", _REQUIRED), ("bias_k", _REQUIRED),
              ("bias_v", _REQUIRED), ("add_zero_attn", _REQUIRED), ("dropout_p", _REQUIRED),
              ("out_proj_weight", _REQUIRED), ("out_proj_bias", _REQUIRED), ("training", True),
              ("key_padding_mask", None), ("need_weights", True), ("attn_mask", None),
              ("use_separate_proj_weight", False), ("q_proj_weight", None), ("k_proj_weight", None),
              ("v_proj_weight", None), ("static_k", None), ("static_v", None),
              ("average_attn_weights", True), ("is_causal", False))
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


def _bind(names, args, kwargs, func) -> dict:
    """The arguments of a call of ``func`` by name, from ``names`` (its parameters in order, with
    their defaults); refuses arguments it does not know rather than dropping them."""
    known = {n for n, _ in names}
    unknown = [k for k in kwargs if k not in known]
    if len(args) > len(names) or unknown:
        raise GradattrError(f"net: expected a call of {func.__name__} with the parameters of torch "
                            f"{torch.__version__}, got {len(args)} positional arguments and "
                            f"{sorted(kwargs)} (gradattr does not know this torch's signature)")
    bound = {n: _arg(args, kwargs, i, n, d) for i, (n, d) in enumerate(names)}
    missing = [n for n, v in bound.items() if v is _REQUIRED]
    if missing:
        raise TypeError(f"{func.__name__}() missing required arguments: {missing}")
    return bound


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

    def __init__(self, clock=None):
        super().__init__()
        self.probs: list[torch.Tensor] = []
        self.nodes: list[torch.Tensor] = []
        self.orders: list[int] = []  # when each call ran, on ``clock()`` (an Observer's tick)
        self.clock = clock
        # the first call's queries, with their token and batch dims: whose positions say which
        # grid cell each token holds (gradattr.provenance)
        self.query: tuple[torch.Tensor, int, int] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            bound = _SDPA_NAMES
            a = [_arg(args, kwargs, i, n, d) for i, (n, d) in enumerate(bound)]
            if self.query is None and isinstance(a[0], torch.Tensor) and a[0].ndim >= 3:
                self.query = (a[0], a[0].ndim - 2, 0)
            out, probs = explicit_attention(*a)
            self._record(probs, probs)
            return out
        if func is F.multi_head_attention_forward:
            bound = _bind(_MHA_NAMES, args, kwargs, func)
            q = bound["query"]
            if self.query is None and isinstance(q, torch.Tensor) and q.ndim == 3:
                self.query = (q, 0, 1)  # (L, N, E)
            need, average = bound["need_weights"], bound["average_attn_weights"]
            bound["need_weights"] = True
            bound["average_attn_weights"] = False
            out, w = func(**bound)  # this mode is off inside: the explicit path runs
            base = w._base if w._base is not None else w  # (N * H, L, S), what the output used
            self._record(base.view(-1, bound["num_heads"], *base.shape[-2:]), base)
            if not need:
                return out, None
            return out, (w.mean(-3) if average else w)
        return func(*args, **kwargs)

    def _record(self, probs: torch.Tensor, node: torch.Tensor) -> None:
        self.probs.append(probs)
        self.nodes.append(node)
        if self.clock is not None:
            self.orders.append(self.clock())

    def gradients(self, s: torch.Tensor, counterfactual: bool = False, reduction_name: str = "output"):
        """``d s[:, k] / d A`` for every recorded call: ``(N, K, H, L, S)`` each."""
        names = [f"attention call {i}" for i in range(len(self.nodes))]
        grads = per_target_grads(s, self.nodes, counterfactual, names, reduction_name)
        out = []
        for g, p in zip(grads, self.probs):
            if g.shape[0] != p.shape[0]:  # (N * H, K, L, S) from a MultiheadAttention node
                g = g.unflatten(0, p.shape[:2]).transpose(1, 2)
            out.append(g)
        return out


def grid_of(obs: Observer, cap: AttentionCapture):
    """``(grid, extra)``: the token grid of the first attention call and its other tokens.

    Where the pass followed the first call's query tokens back to the input
    (:mod:`gradattr.provenance`), ``extra`` is their :class:`gradattr.provenance.Order` (which
    token holds which cell, class and detection tokens wherever they sit; for token ids, one
    cell per token); else the grid observed at that stage and the number of leading extra
    tokens, ``L - prod(grid)``."""
    probs = cap.probs
    if not probs:
        raise GradattrError(
            "net: expected a model whose attention runs through F.scaled_dot_product_attention or "
            "nn.MultiheadAttention (timm with fused attention, torchvision ViT, Hugging Face with "
            "attn_implementation='sdpa'), but no attention call was observed in its forward pass; "
            "a model that computes softmax(QK^T) by hand needs that path")
    tokens = probs[0].shape[-1]
    if any(p.shape[-1] != tokens or p.shape[-2] != tokens for p in probs):
        shapes = sorted({tuple(p.shape[-2:]) for p in probs})
        raise GradattrError(f"net: expected self-attention over one token sequence in every block, "
                            f"got attention maps of shapes {shapes} (token merging or cross-attention)")
    found = _query_order(obs, cap, tokens)
    if found is not None:
        return found
    g = obs.stage_grid(cap.orders[0])
    if g is None or math.prod(g.cells) > tokens or not g.cells:
        seen = "none" if g is None else f"{' x '.join(map(str, g.cells)) or 'no'} ({g.source})"
        raise GradattrError(
            f"net: expected attention over the tokens of a grid observed in the forward pass before "
            f"it (a patch embedding's (N, C, *grid) before it is flattened, a reshape or an unfold "
            f"making {len(obs.spatial)}-D patches, or token ids (N, L)) and at most {tokens} cells, "
            f"got attention over {tokens} tokens and the grid {seen}; the grid is not guessed from "
            "the token count")
    return g.cells, tokens - math.prod(g.cells)


def _query_order(obs: Observer, cap: AttentionCapture, tokens: int):
    """``(grid, order)`` from the first call's queries followed back to the input, or None."""
    if cap.query is None:
        return None
    q, dim, batch = cap.query
    tracked, order = obs.order(q, dim, batch)
    if not tracked or order is None or order.length != tokens:
        return None
    rank = len(obs.spatial) or 1  # token ids (N, L): one cell per token
    if len(order.grid) != rank:
        return None
    return order.grid, (order.extra if order.leading else order)


def observe(call, reduction: str | None = None, grad: bool = True):
    """One forward pass of ``call`` with attention captured and the token grid observed.

    Returns ``(capture, grid, extra, y, reduction_name)``: the :class:`AttentionCapture`,
    the token grid ``(*grid)`` (:func:`grid_of`), the number of leading extra tokens, the
    scored output and its name. Hooks act only in this thread and are removed in
    ``finally``; the modes are active only for this pass.
    """
    mine = thread_guard()
    x = call.x
    out = Output(call.net, reduction, False, mine)
    watched: list = []  # the observer's module hooks

    def clock() -> int:
        if not cap.orders:  # only what runs before the first attention call decides the grid
            for h in watched:
                h.remove()
        return obs.tick()

    def install():
        watched.extend(obs.handles())
        return out.handles + watched

    cap = AttentionCapture(clock=clock)
    obs = Observer(call.net, x.shape[0], tuple(x.shape[2:]), lambda: not cap.orders and mine())
    with obs.watching(x), cap:
        output = run_hooked(call, x, install, grad=grad)
    y, rname = out.finish(output)
    grid, extra = grid_of(obs, cap)
    return cap, grid, extra, y, rname
