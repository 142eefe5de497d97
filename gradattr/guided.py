"""Guided backpropagation's rectifier rule, applied for the duration of one forward pass.

Guided backpropagation (Springenberg et al., "Striving for Simplicity: The All
Convolutional Net", ICLR workshop 2015, eq. in Fig. 1) changes the backward
pass of every rectifier: the gradient reaching a ReLU's input is

    R_in = (x > 0) * max(R_out, 0)

the usual ReLU gate *and* the gate of the gradient's own sign. A clipped
rectifier (``ReLU6``, ``hardtanh(x, 0, m)``) gets the same rule with its own
gate ``0 < x < m``.

:class:`GuidedRectifiers` is a :class:`torch.overrides.TorchFunctionMode`: while
it is active, every call of a rectifier, however it is written (``nn.ReLU`` and
``nn.ReLU6`` modules, ``torch.relu``, ``F.relu``, ``x.relu()``, their in-place
forms, ``F.relu6``, ``F.hardtanh`` with ``min_val == 0``), goes through an
autograd function with the same forward value and the guided backward. Nothing
is swapped or patched: modules, ``torch.relu`` and ``F.relu`` are untouched, and
the rule ends when the ``with`` block ends. Other activations (leaky ReLU, GELU,
SiLU, ...) are not rectifiers with a 0/1 gate and keep their usual gradient.

Example:
    >>> import torch
    >>> x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    >>> with GuidedRectifiers():
    ...     y = torch.relu(x)
    >>> torch.autograd.grad(y, x, torch.tensor([5.0, 5.0, -5.0]))[0].tolist()
    [0.0, 5.0, 0.0]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _GuidedRectifier(torch.autograd.Function):
    """``clamp(x, lo, hi)`` forward; ``max(grad, 0) * (lo < x < hi)`` backward."""

    @staticmethod
    def forward(ctx, x, lo, hi, inplace):
        gate = (x > lo) if math.isinf(hi) else (x > lo) & (x < hi)
        ctx.save_for_backward(gate)
        if inplace:
            ctx.mark_dirty(x)
            return x.clamp_(min=lo, max=None if math.isinf(hi) else hi)
        return x.clamp(min=lo, max=None if math.isinf(hi) else hi)

    @staticmethod
    def backward(ctx, grad):
        (gate,) = ctx.saved_tensors
        return grad.clamp(min=0) * gate, None, None, None


def _arg(args, kwargs, i, name, default):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _relu(args, kwargs, inplace):
    return args[0], 0.0, math.inf, inplace


def _relu_fn(args, kwargs, inplace):
    return args[0], 0.0, math.inf, bool(_arg(args, kwargs, 1, "inplace", False))


def _relu6_fn(args, kwargs, inplace):
    return args[0], 0.0, 6.0, bool(_arg(args, kwargs, 1, "inplace", False))


def _hardtanh_fn(args, kwargs, inplace):
    lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
    hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
    if lo != 0.0:  # hardtanh(-1, 1) and the like are not rectifiers
        return None
    return args[0], lo, hi, inplace or bool(_arg(args, kwargs, 3, "inplace", False))


# func -> (args, kwargs, inplace) -> (x, lo, hi, inplace) or None (not a rectifier call)
_RECTIFIERS = {
    torch.relu: lambda a, k: _relu(a, k, False),
    torch.relu_: lambda a, k: _relu(a, k, True),
    torch.Tensor.relu: lambda a, k: _relu(a, k, False),
    torch.Tensor.relu_: lambda a, k: _relu(a, k, True),
    F.relu: lambda a, k: _relu_fn(a, k, False),
    F.relu6: lambda a, k: _relu6_fn(a, k, False),
    F.hardtanh: lambda a, k: _hardtanh_fn(a, k, False),
    F.hardtanh_: lambda a, k: _hardtanh_fn(a, k, True),
}


class GuidedRectifiers(TorchFunctionMode):
    """Within ``with GuidedRectifiers():`` rectifiers backpropagate by guided backpropagation.

    Only calls on tensors that take part in autograd are changed; everything else
    runs as usual. The forward values are exactly those of the original calls.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parse = _RECTIFIERS.get(func)
        if parse is not None and torch.is_grad_enabled():
            parsed = parse(args, kwargs)
            if parsed is not None and isinstance(parsed[0], torch.Tensor) and parsed[0].requires_grad:
                x, lo, hi, inplace = parsed
                return _GuidedRectifier.apply(x, lo, hi, inplace)
        return func(*args, **kwargs)


__all__ = ["GuidedRectifiers"]
