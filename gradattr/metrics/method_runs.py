"""What the checks that run a method share (:mod:`.randomization`, :mod:`.robustness`): the call
with each sample's target fixed on the unperturbed input, the method as ``run(net, x, target)``,
the targets of copies of samples, the maps of copies flattened, results in the form of ``x``.

Conventions: ``net`` and ``x`` as for :func:`gradattr.grad_cam` (1-D, 2-D or 3-D inputs,
batched or not, tensor or numpy, ``input_format`` for MATLAB order); the score is the raw
output for the target, or ``reduction_fn(output)`` (regressors), as captum computes it (no
softmax); ``target=None`` is each sample's top class on the unperturbed input, kept for every
perturbed or randomised copy. ``method`` is a registry name (:func:`gradattr.list_methods`) or
a callable ``(net, x, target) -> maps``, where ``x`` is a ``(B, C, *S)`` tensor of copies
and ``target`` their classes ``(B, K)`` (a LongTensor, one row per copy) or the reduction
function. The network and the input are left as they were (the randomisation check works on
deep copies and restores torch's random state). Results come back in ``x``'s form: a tensor on
``x``'s device (numpy for numpy ``x``), ``(N,)``, or a scalar for an unbatched ``x``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch
from torch import nn

from .. import api
from ..errors import expected
from ..method_arg import resolve_method
from ..prep import Call, prepare_call
from ..budget import FORWARD_FACTOR
from ..targets import Target


#: The estimate of one explained copy's memory (forward and backward pass), as a multiple of
#: the input's bytes, that sizes the chunks of copies when ``chunk_size=None``.
EXPLAIN_FACTOR = 2 * FORWARD_FACTOR


def prepared_call(net, x, target, reduction_fn, classes, input_format, device) -> tuple[Call, Target]:
    """The prepared call and its target with each sample's classes fixed on the unperturbed input."""
    call = prepare_call(net, x, target=target, reduction_fn=reduction_fn, classes=classes,
                        input_format=input_format, device=device, needs_grad=False)
    if call.target.kind == "fn":
        return call, call.target
    with call.borrowed(), torch.no_grad():
        return call, call.target.fixed(call.forward(call.x), call.n)


def rows_target(target: Target, rows: torch.Tensor):
    """What a method gets as the target of copies of samples ``rows``: ``(B, K)`` classes, or the function."""
    if target.kind == "fn":
        return target.fn
    classes = cast(torch.Tensor, target.classes)  # set whenever kind is not "fn"
    return classes[rows.to(classes.device)]


def method_runner(method, method_options: dict, device) -> Callable:
    """``method`` as ``run(net, x (B, C, *S), target) -> maps``."""
    if callable(method) and not isinstance(method, (str, nn.Module)) and method_options:
        raise expected(next(iter(method_options)), "no method options with a callable method (bind "
                       "them in the callable)", repr(sorted(method_options)))
    explain, _ = resolve_method(method)  # an unknown name or another object is refused, naming `method`
    opts = dict(method_options)
    needs_target = True
    if isinstance(method, str):
        info = api.method_info(method)
        needs_target = info.needs_target
        if "device" in info.options:
            opts.setdefault("device", device)

    def run(net, xb, target):
        return explain(net, xb, target if needs_target else None, opts)
    return run


def flat_maps(maps, rows: int, device) -> torch.Tensor:
    """A method's maps for ``rows`` copies -> ``(rows, P)`` float64, each copy's maps flattened."""
    if not isinstance(maps, torch.Tensor):
        try:
            maps = torch.as_tensor(np.asarray(maps))
        except (TypeError, ValueError):
            raise expected("method", "a method returning maps (a tensor or an array)",
                           type(maps).__name__) from None
    if maps.ndim < 2 or maps.shape[0] != rows:
        raise expected("method", f"maps with one row per input copy ({rows}, ...)", f"shape {tuple(maps.shape)}")
    m = maps.detach().to(device=device, dtype=torch.float64).reshape(rows, -1)
    if not torch.isfinite(m).all():
        raise expected("method", "finite maps", "NaN or Inf")
    return m


def per_sample(call: Call, values: torch.Tensor):
    """Per-sample ``(N,)`` values in the form of the user's ``x``."""
    return call.layout.output(values.reshape(-1, 1), scalar_target=True)
