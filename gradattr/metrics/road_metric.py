"""ROAD: RemOve And Debias (Rong et al., ICML 2022): the most or least relevant fraction of
the input removed and filled by noisy linear imputation (:func:`impute`, a sparse linear system
solved with scipy), then scored."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..options import check_seed
from ..errors import GradattrError, expected
from .scoring import element_ranks, scoring


def _neighbour_weights(rank: int) -> list[tuple[tuple[int, ...], float]]:
    """Offsets in ``{-1, 0, 1}^rank`` (all but 0) with weight ``2^-(nonzeros - 1)``.

    For images this is ROAD's stencil: 1/6 for the 4 edge neighbours, 1/12 for the
    4 diagonal ones (only the ratios matter); for sequences the two neighbours
    weigh the same; for volumes face : edge : corner = 4 : 2 : 1.
    """
    out = []
    for off in itertools.product((-1, 0, 1), repeat=rank):
        nz = sum(o != 0 for o in off)
        if nz:
            out.append((off, 2.0 ** -(nz - 1)))
    return out


def impute(x, missing, noise: float = 0.0, generator: torch.Generator | None = None):
    """Noisy linear imputation of the ``missing`` elements of ``x`` (Rong et al., ICML 2022).

    Every missing element is set to the weighted mean of its in-bounds
    neighbours (all ``3^d - 1`` of them, see the weights below), known or missing,
    which is the sparse linear system ``sum_j w_ij (v_j - v_i) = 0`` over the
    missing elements, solved with ``scipy.sparse.linalg.spsolve`` for all channels
    at once; then ``noise * N(0, 1)`` is added to the imputed values. On images
    it is ROAD's imputer (weights 1/6 for edge, 1/12 for diagonal neighbours);
    for sequences and volumes the weights halve for each extra non-zero offset.

    Args:
        x: ``(C, *spatial)`` tensor (channels share the mask).
        missing: boolean ``(*spatial)`` tensor, ``True`` where ``x`` is to be
            imputed; at least one element must be known.
        noise: standard deviation of the Gaussian noise added to imputed values.
        generator: a ``torch.Generator`` (CPU) for the noise.

    Returns:
        A new tensor like ``x`` (same device and dtype); ``x`` is unchanged.

    Example:
        >>> x = torch.tensor([[0.0, 5.0, 5.0, 3.0]])
        >>> impute(x, torch.tensor([False, True, True, False])).tolist()  # a line from 0 to 3
        [[0.0, 1.0, 2.0, 3.0]]
    """
    from scipy.sparse.linalg import spsolve

    c, *spatial = x.shape
    shape = tuple(spatial)
    miss = missing.detach().cpu().numpy().astype(bool)
    if miss.shape != shape:
        raise expected("missing", f"a boolean mask of x's spatial shape {shape}", f"shape {miss.shape}")
    flat_miss = miss.ravel()
    unknown = np.flatnonzero(flat_miss)
    m, p = unknown.size, flat_miss.size
    if m == 0:
        return x.clone()
    if m == p:
        raise expected("missing", "at least one known element to impute from", "every element missing")
    a, known = _imputation_system(flat_miss, unknown, shape)
    values = x.detach().reshape(c, p).cpu().double().numpy()
    rhs = -(known @ values.T)  # (m, C)
    sol = np.asarray(spsolve(a.tocsc(), rhs)).reshape(m, c)
    filled = torch.from_numpy(sol.T.copy())
    if noise:
        filled = filled + noise * torch.randn(filled.shape, generator=generator, dtype=filled.dtype)
    out = x.detach().reshape(c, p).clone()
    out[:, torch.from_numpy(unknown).to(out.device)] = filled.to(device=out.device, dtype=out.dtype)
    return out.view_as(x)


def _imputation_system(flat_miss: np.ndarray, unknown: np.ndarray, shape: tuple):
    """:func:`impute`'s sparse system over the ``m`` missing elements of a grid ``shape``:
    ``(A (m, m), K (m, P))`` with ``A v + K x = 0`` (``A`` holds ``-sum_j w_ij`` on its
    diagonal and the weights between missing neighbours, ``K`` those to known ones)."""
    from scipy.sparse import coo_matrix, diags

    m, p = unknown.size, flat_miss.size
    var = np.full(p, -1, dtype=np.int64)
    var[unknown] = np.arange(m)
    coords = np.stack(np.unravel_index(unknown, shape))  # (d, m)
    dims = np.asarray(shape)[:, None]
    diag = np.zeros(m)
    a_rows, a_cols, a_vals, k_rows, k_cols, k_vals = [], [], [], [], [], []
    for off, w in _neighbour_weights(len(shape)):
        nb = coords + np.asarray(off)[:, None]
        valid = np.all((nb >= 0) & (nb < dims), axis=0)
        eq = np.flatnonzero(valid)
        idx = np.ravel_multi_index(tuple(nb[:, valid]), shape)
        diag[eq] += w
        unk = flat_miss[idx]
        a_rows.append(eq[unk]); a_cols.append(var[idx[unk]])
        k_rows.append(eq[~unk]); k_cols.append(idx[~unk])
        a_vals.append(np.full(int(unk.sum()), w)); k_vals.append(np.full(int((~unk).sum()), w))
    cat = np.concatenate
    a = coo_matrix((cat(a_vals), (cat(a_rows), cat(a_cols))), shape=(m, m)).tocsc() - diags(diag)
    known = coo_matrix((cat(k_vals), (cat(k_rows), cat(k_cols))), shape=(m, p)).tocsr()
    return a, known


@dataclass
class Road:
    """ROAD scores after removing each fraction of the elements.

    Attributes:
        fractions: ``(P,)`` fractions of the elements removed.
        score: the score of the unperturbed input per map (``(N,)``, ``(N, K)`` or scalar).
        morf: scores with the most relevant fraction removed, ``(..., P)`` (lower is better);
            ``None`` if not computed.
        lerf: scores with the least relevant fraction removed, ``(..., P)`` (higher is better);
            ``None`` if not computed.
    """

    fractions: object
    score: object
    morf: object | None
    lerf: object | None

    @property
    def combined(self):
        """``mean_p (lerf_p - morf_p) / 2`` per map (pytorch-grad-cam's ``ROADCombined``;
        higher is better)."""
        if self.morf is None or self.lerf is None:
            raise GradattrError("order: expected 'both' to combine MoRF and LeRF, got a Road computed "
                                "for one order only")
        return (self.lerf - self.morf).mean(-1) / 2


def road(net: nn.Module, x, maps, target=None, *, order: str = "both",
         fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
         noise: float = 0.01, seed: int | None = 0, softmax: bool = True, batch_size: int = 32,
         reduction_fn: Callable | None = None, classes: Sequence | None = None,
         input_format: str | None = None, device="auto", explain: int = 0,
         forward_kwargs: dict | None = None) -> Road:
    """ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation
    Strategy for Attribution Methods", ICML 2022).

    For each fraction ``f`` the ``round(f * P)`` most relevant (MoRF) or least
    relevant (LeRF) positions, ranked by the map (ties in raster order), are
    removed and filled by noisy linear imputation (:func:`impute`), so that the
    removal itself leaks no shape information; the network scores the result.
    MoRF scores should fall fast (lower is better), LeRF scores stay high.

    Args:
        net, x, maps, target, softmax, batch_size, reduction_fn, classes,
            input_format, device, explain, forward_kwargs: as in :func:`deletion`.
        order: ``"morf"``, ``"lerf"`` or ``"both"``.
        fractions: fractions of the positions to remove, each strictly between 0
            and 1 (pytorch-grad-cam's ``percentile=p`` removes ``1 - p / 100``).
        noise: standard deviation of the imputation noise (0.01 in the paper).
        seed: seed of the imputation noise (``None``: torch's global generator).

    Returns:
        A :class:`Road`; ``.combined`` is ``mean (lerf - morf) / 2``.

    The imputation solves one sparse system per map and fraction on the CPU
    (scipy); the network runs on the compute device.
    """
    order, fr = _road_options(order, fractions, noise)
    seed = check_seed("seed", seed)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with scoring(net, x, maps, target, reduction_fn, classes, input_format, device, softmax,
                  batch_size, explain, forward_kwargs) as (sc, form, _):
        rows, cols = sc.items()
        flat = sc.maps.flatten(2).flatten(0, 1)
        ranks = element_ranks(flat)
        n_items, p = flat.shape
        counts = [int(round(f * p)) for f in fr]
        bad = [f for f, k in zip(fr, counts) if k == 0 or k == p]
        if bad:
            raise expected("fractions", f"fractions that remove at least one and keep at least one of "
                           f"the {p} positions", repr(bad))
        spatial = tuple(sc.x.shape[2:])
        results = {}
        for name in (("morf", "lerf") if order == "both" else (order,)):
            jobs = [(i, k) for i in range(n_items) for k in counts]
            # The imputed inputs are made up front (one sparse solve each) and scored in batches.
            imputed = torch.stack([
                impute(sc.x[rows[i]], (ranks[i] < k if name == "morf" else ranks[i] >= p - k)
                       .view(spatial), noise=noise, generator=gen) for i, k in jobs])
            item = torch.tensor([i for i, _ in jobs], device=sc.x.device)
            scores = sc.run(len(jobs), lambda sl: (imputed[sl], rows[item[sl]], cols[item[sl]]))
            results[name] = form(scores.view(sc.n, sc.k, len(fr)))
        return Road(fractions=form.vector(torch.tensor(fr)), score=form(sc.base),
                    morf=results.get("morf"), lerf=results.get("lerf"))


def _road_options(order, fractions, noise) -> tuple[str, list[float]]:
    """:func:`road`'s ``order`` (lower case) and ``fractions`` (floats), checked with ``noise``."""
    if not isinstance(order, str) or order.lower() not in ("morf", "lerf", "both"):
        raise expected("order", "'morf', 'lerf' or 'both'", repr(order))
    try:
        fr = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise expected("fractions", "a sequence of numbers in (0, 1)", repr(fractions)) from None
    if not fr or not all(0 < f < 1 for f in fr):
        raise expected("fractions", "a non-empty sequence of numbers strictly between 0 and 1", repr(fractions))
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise expected("noise", "a number >= 0", repr(noise))
    return order.lower(), fr
