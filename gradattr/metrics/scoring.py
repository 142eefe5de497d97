"""The set-up every network metric shares: the call validated and prepared, the maps as
``(N, K, *s)``, the targets fixed on the unperturbed input, and a :class:`PerturbationScorer` that
scores batches of perturbed copies of the samples; :class:`OutputForm` gives results back in
the user's form, :func:`element_ranks` orders each map's elements."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..options import check_flag
from ..prep import Call, prepare_call
from ..options import check_explain, check_forward_kwargs
from ..errors import expected
from .arguments import as_tensor, check_int


@dataclass
class OutputForm:
    """How to give per-map results back in the user's form."""

    batched: bool
    k_axis: bool
    numpy: bool
    device: torch.device

    def __call__(self, t: torch.Tensor):
        """``(N, K, ...)`` -> user form (drop K without a K axis, N for unbatched input)."""
        if not self.k_axis:
            t = t[:, 0]
        if not self.batched:
            t = t[0]
        t = t.detach()
        return t.cpu().numpy() if self.numpy else t.to(self.device)

    def vector(self, t: torch.Tensor):
        """A vector shared by all maps (fractions), as a tensor or numpy array."""
        return t.detach().cpu().numpy() if self.numpy else t.detach().to(self.device)


class PerturbationScorer:
    """Scores batches of perturbed copies of the samples, for fixed targets.

    ``self.x`` is the prepared input ``(N, C, *s)``, ``self.maps`` the maps
    ``(N, K, *s)``; ``self.base`` the ``(N, K)`` scores of the unperturbed input.
    """

    def __init__(self, call: Call, maps: torch.Tensor, softmax: bool, batch_size: int):
        self.call, self.x, self.maps, self.batch_size = call, call.x, maps, batch_size
        target = call.target
        self.softmax = softmax and target.kind != "fn"
        self.n, self.k = maps.shape[:2]
        y = call.forward(self.x)
        self.target = target.fixed(self._prob(y), self.n)
        base = self.target.scores(self._prob(y), self.n)
        if base.shape[1] != self.k:
            raise expected("maps", f"one map per target score: {base.shape[1]} per sample (the target "
                           f"gives {base.shape[1]} scores)", f"{self.k} maps per sample, shape "
                           f"{tuple(maps.shape)}")
        self.base = base.float()

    def _prob(self, y):
        return torch.softmax(y, 1) if self.softmax and isinstance(y, torch.Tensor) else y

    def items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample row and target column of every map, flattened in (n, k) order."""
        dev = self.x.device
        rows = torch.arange(self.n, device=dev).repeat_interleave(self.k)
        cols = torch.arange(self.k, device=dev).repeat(self.n)
        return rows, cols

    def score(self, inputs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` of ``inputs (B, C, *s)``, row ``b`` being a copy of sample ``rows[b]``
        scored for its target ``cols[b]``."""
        y = self._prob(self.call.forward(inputs, rows))  # the other inputs follow the rows
        s = self.target.scores(y, inputs.shape[0], rows)
        return s.gather(1, cols[:, None])[:, 0].float()

    def run(self, jobs: int, make: Callable[[slice], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
        """Score ``jobs`` perturbed inputs, built ``batch_size`` at a time by ``make(slice)``."""
        out = torch.empty(jobs, device=self.x.device)
        for start in range(0, jobs, self.batch_size):
            sl = slice(start, min(jobs, start + self.batch_size))
            out[sl] = self.score(*make(sl))
        return out


def prepare_maps(maps, spatial: tuple[int, ...], batched: bool, n: int, device, dtype):
    """User maps -> ``(N, K, *s)`` float on ``device``, and whether they had a K axis."""
    m = as_tensor(maps, "maps")
    r, lead = len(spatial), m.ndim - len(spatial)
    want = (f"({n}, *{spatial}) or ({n}, K, *{spatial})" if batched
            else f"{spatial} or (K, *{spatial}) for an unbatched x")
    if tuple(m.shape[m.ndim - r:]) != tuple(spatial) or lead not in ((1, 2) if batched else (0, 1)):
        hint = (" (maps must have the input's spatial size: compute them with upsampling='bicubic')"
                if lead in ((1, 2) if batched else (0, 1)) else "")
        raise expected("maps", want + hint, f"shape {tuple(m.shape)}")
    if batched and m.shape[0] != n:
        raise expected("maps", f"one map per sample of x ({n})", f"shape {tuple(m.shape)}")
    k_axis = lead == (2 if batched else 1)
    if not batched:
        m = m[None]
    if not k_axis:
        m = m[:, None]
    m = m.to(device=device, dtype=dtype)
    if not torch.isfinite(m).all():
        raise expected("maps", "finite values", "NaN or Inf")
    return m, k_axis


@contextmanager
def scoring(net, x, maps, target, reduction_fn, classes, input_format, device, softmax, batch_size,
             explain=0, forward_kwargs=None):
    """Validate everything, then yield a :class:`PerturbationScorer` and the output :class:`OutputForm`
    while the network is borrowed (eval mode, compute device) and gradients are off.

    With several inputs (a tuple ``x``) the maps explain ``x[explain]``: only that input is
    perturbed; the others and the batched ``forward_kwargs`` follow each perturbed copy's sample.
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    check_flag("softmax", softmax)
    # the methods' validators of the two options (the rest of explain is checked against x)
    check_forward_kwargs("forward_kwargs", forward_kwargs)
    check_explain("explain", explain)
    # The metrics run forward passes only: inputs made under inference_mode are fine.
    call = prepare_call(net, x, target=target, reduction_fn=reduction_fn, classes=classes,
                        input_format=input_format, device=device, needs_grad=False,
                        explain=explain, forward_kwargs=forward_kwargs, several=True)
    xt, layout = call.x, call.layout
    if not xt.is_floating_point():
        raise expected("explain", f"the index of a floating-point input to perturb (the metrics replace "
                       f"the explained input's elements); x[{call.explain}] holds "
                       f"{str(xt.dtype).replace('torch.', '')} values such as token ids",
                       repr(call.explain))
    m, k_axis = prepare_maps(maps, tuple(xt.shape[2:]), layout.batched, xt.shape[0], xt.device, xt.dtype)
    form = OutputForm(layout.batched, k_axis, layout.numpy, layout.device)
    with call.borrowed(), torch.no_grad():
        yield PerturbationScorer(call, m, softmax, batch_size), form, layout


def element_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``(I, P)`` rank of every element of each flattened map, 0 = most important.

    Ties keep their raster order (a stable sort), so a constant map removes
    elements in index order.
    """
    order = torch.argsort(maps, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(maps.shape[1], device=maps.device).expand_as(order))
    return ranks
