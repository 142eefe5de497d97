"""What several methods share: principal components, the toy network of the examples, options."""
from __future__ import annotations

import torch
from einops import rearrange

from ..registry import Option, flag, optional_positive_int

TOY = """>>> import torch, gradattr
>>> _ = torch.manual_seed(0)
>>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
...                           torch.nn.Linear(4, 3))
"""

#: Options of the methods that run chunks of perturbed copies.
BATCH_SIZE = Option("batch_size", None, "int | None",
                    "perturbed copies per forward pass; ``None`` sizes chunks from a 512 MB budget.",
                    optional_positive_int)
PROGRESS = Option("progress", False, "bool", "show a progress bar (tqdm).", flag)


def eigen_projection(terms: torch.Tensor) -> torch.Tensor:
    """Projection of ``terms (N, K, C, *s)`` on their first principal component -> ``(N, K, *s)``.

    For each ``(n, k)`` the ``C`` channels are the variables and the ``P``
    positions the observations: ``M`` is ``P x C``, centred per channel, and the
    map is ``M_c v1`` with ``v1`` the first right singular vector (Eigen-CAM,
    Muhammad & Yeasin, IJCNN 2020, eq. 5; the centring is pytorch-grad-cam's).

    An SVD fixes ``v1`` only up to its sign, and pytorch-grad-cam keeps whatever
    sign LAPACK returns, so its map can come out inverted (then mostly zero after
    the ReLU). Here the sign is chosen so that the map correlates positively with
    the plain channel sum ``sum_c T`` (the activations for Eigen-CAM, the
    un-smoothed CAM for ``eigen_smooth``): ``cov(M_c v1, M_c 1) = lambda_1 sum(v1)``,
    so this is ``sum_c v1[c] >= 0``. NaNs count as 0, as in pytorch-grad-cam.

    >>> t = torch.tensor([[[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]]])  # one rank-1 pair of channels
    >>> eigen_projection(t).squeeze().tolist()  # centred sum along v1 = (1, 2)/sqrt(5)
    [-2.2360680103302, 0.0, 2.2360680103302]
    """
    n, k, c, *s = terms.shape
    m = rearrange(torch.nan_to_num(terms.detach()).double(), "n k c ... -> (n k) (...) c")
    m = m - m.mean(1, keepdim=True)
    p = m.shape[1]
    # The first singular pair from the eigen-decomposition of the smaller Gram matrix: the
    # same projection as an SVD of the P x C matrix (a test checks it against numpy's svd),
    # several times faster when P and C differ a lot (7 x 7 = 49 positions, 2048 channels).
    if c <= p:
        _, vecs = torch.linalg.eigh(m.transpose(1, 2) @ m)  # (B, C, C), ascending eigenvalues
        v = vecs[..., -1]  # (B, C)
        proj = torch.einsum("bpc,bc->bp", m, v)
        v_sum = v.sum(-1)
    else:
        vals, vecs = torch.linalg.eigh(m @ m.transpose(1, 2))  # (B, P, P)
        u = vecs[..., -1]  # (B, P): M v1 = sigma_1 u1
        proj = u * vals[..., -1:].clamp(min=0).sqrt()
        v_sum = torch.einsum("bpc,bp->b", m, u)  # sum(v1) up to the positive factor sigma_1
    proj = torch.where(v_sum[:, None] < 0, -proj, proj)
    return proj.reshape(n, k, *s).to(terms.dtype)



