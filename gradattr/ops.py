"""Small tensor maths that several parts of gradattr share: one home each.

``minmax`` (every min-max scaling: MATLAB's ``rescale``, pytorch-grad-cam's
``scale_cam_image``, torch-cam's masks, FullGrad's channel scaling), ``gaussian_blur``
(SESS's OpenCV blur and Group-CAM's baseline) and ``eigen_projection`` (Eigen-CAM,
Eigen-Grad-CAM and ``eigen_smooth``). The epsilons are parameters because the
reference libraries differ in them and parity needs each one's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def minmax(t: torch.Tensor, start_dim: int = 2, eps: float | None = None) -> torch.Tensor:
    """``t`` min-max scaled over its dims from ``start_dim`` on (one scaling per leading index).

    ``eps=None``: MATLAB's ``rescale``, ``(t - min) / (max - min)``, a constant map
    becoming 0. ``eps`` a number: ``(t - min) / (max - min + eps)`` (pytorch-grad-cam
    1e-7, torch-cam 1e-8).

    >>> minmax(torch.tensor([[[1.0, 3.0, 2.0]], [[4.0, 4.0, 4.0]]]), 1).tolist()
    [[[0.0, 1.0, 0.5]], [[0.0, 0.0, 0.0]]]
    """
    flat = t.flatten(start_dim)
    shifted = flat - flat.amin(-1, keepdim=True)
    span = shifted.amax(-1, keepdim=True)
    span = torch.where(span > 0, span, torch.ones_like(span)) if eps is None else span + eps
    return (shifted / span).view_as(t)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float, short_axes: str = "shorten") -> torch.Tensor:
    """``x (N, C, *S)`` blurred by a separable Gaussian of ``kernel`` taps (odd) along every axis.

    The border rule, the one for every blur of gradattr: reflect-101, each axis continued as
    its mirror image about its first and last elements, which are not repeated
    (``x2 x1 | x0 x1 x2 ... | x[L-2] x[L-3]``): OpenCV's ``BORDER_REFLECT_101`` (the default of
    ``cv2.GaussianBlur``, which SESS uses), ``"reflect"`` in torch, torchvision and kornia
    (Group-CAM's blur) and ``mode="mirror"`` in ``scipy.ndimage``. One reflection reaches
    ``L - 1`` elements beyond each end; an axis too short for the kernel's half-width is, by
    ``short_axes``: ``"shorten"``: blurred with the kernel shortened to ``2 L - 1`` taps
    (Group-CAM); ``"skip"``: left as it is when ``L <= kernel // 2`` (SESS, as OpenCV-like
    code does); ``"repeat"``: reflected again as often as the kernel needs (the axis extended
    periodically with period ``2 (L - 1)``, as scipy does; insertion's baseline). An axis of
    length 1 is left as it is (its reflection is constant).

    >>> x = torch.tensor([[[0.0, 0.0, 3.0]]])
    >>> gaussian_blur(x, 3, 1.0).tolist() == gaussian_blur(x, 3, 1.0, short_axes="repeat").tolist()
    True
    >>> [round(v, 4) for v in gaussian_blur(x, 3, 1.0)[0, 0].tolist()]  # after the 3 comes x[1] = 0
    [0.0, 0.8222, 1.3556]
    """
    out = x
    for d in range(x.ndim - 2):
        length = x.shape[2 + d]
        if short_axes == "skip":
            if length <= kernel // 2:
                continue
            k = kernel
        elif short_axes == "repeat":
            k = kernel
        else:
            k = min(kernel, 2 * length - 1)
            k -= 1 - k % 2  # odd
        if k <= 1 or length == 1:
            continue
        t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
        w = torch.exp(-0.5 * (t / sigma) ** 2)
        w = (w / w.sum()).to(x.dtype).to(x.device)
        moved = out.movedim(2 + d, -1)
        shape = moved.shape
        period = 2 * (length - 1)  # reflect-101 indices of the padded axis, as often as needed
        idx = torch.arange(-(k // 2), length + k // 2, device=x.device).remainder(period)
        idx = torch.where(idx < length, idx, period - idx)
        flat = F.conv1d(moved.reshape(-1, 1, length)[..., idx], w.view(1, 1, -1))
        out = flat.reshape(shape).movedim(-1, 2 + d)
    return out


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



