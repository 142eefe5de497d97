"""Gradient methods: weights or terms from the activations and ``d score / d A``."""
from __future__ import annotations

import torch
from einops import reduce

from ..registry import Method, register
from .common import TOY as _TOY, eigen_projection

#: pytorch-grad-cam's stabilisers, kept so that the maps agree with it.
GRAD_CAM_PP_EPS = 1e-6
XGRAD_CAM_EPS = 1e-7


def grad_cam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``alpha_k``, the spatial mean of ``d score / d A^k``.

    >>> g = torch.tensor([[[[1.0, 1, 1], [-3, -3, -3]]]])
    >>> grad_cam_weights(torch.ones(1, 2, 3), g).tolist()
    [[[1.0, -3.0]]]
    """
    return reduce(grads, "n k c ... -> n k c", "mean")


register(Method(
    "grad_cam", "Grad-CAM", lambda v: grad_cam_weights(v.acts, v.grads), "gradient",
    summary="Grad-CAM map of ``net`` for input ``x``, mirroring MATLAB's ``gradCAM``.",
    doc="""The map is ``ReLU(sum_k alpha_k A^k)`` where ``A`` is the feature layer's output and
``alpha_k`` the spatial mean of ``d score / d A^k`` (Selvaraju et al., ICCV 2017). Values
are raw, as in MATLAB; ``normalize=True`` rescales each map to [0, 1]. Class indices are
0-based, unlike MATLAB's 1-based ``classIdx``.""",
    example=""">>> import torch, gradattr
>>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
...                           torch.nn.Linear(4, 3))
>>> m, feat, red = gradattr.grad_cam(net, torch.randn(2, 16), 1, return_layers=True)
>>> m.shape, feat, red
(torch.Size([16]), '1', '4')
""",
    use_when="the default: one forward and a short backward, any differentiable score"))


def grad_cam_plus_plus_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018): ``w_k = sum_ij ReLU(g_ij) a_ij``.

    ``a_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)`` (the paper's eq. 19, its closed
    form for an exponential score, evaluated with the plain gradients
    ``g = d score / d A`` as pytorch-grad-cam does), ``a_ij = 0`` where ``g_ij = 0``. As in
    pytorch-grad-cam, ``1e-6`` is added to the denominator; it is not in the paper but
    it changes the weights of channels whose gradients are of order ``1e-3``, so it is
    kept for agreement.

    >>> a = torch.tensor([[[1.0, 3.0]]]); g = torch.tensor([[[[0.5, 0.0]]]])
    >>> # a = .25 / (2 * .25 + 4 * .125) = .25 at the first position; w = .5 * .25 = .125
    >>> [round(v, 4) for v in grad_cam_plus_plus_weights(a, g).flatten().tolist()]
    [0.125]
    """
    g2 = grads**2
    total = reduce(acts, "n c ... -> n 1 c", "sum")[(...,) + (None,) * (acts.ndim - 2)]
    alpha = torch.where(grads != 0, g2 / (2 * g2 + total * g2 * grads + GRAD_CAM_PP_EPS), 0.0)
    return reduce(torch.relu(grads) * alpha, "n k c ... -> n k c", "sum")


register(Method(
    "grad_cam_plus_plus", "Grad-CAM++", lambda v: grad_cam_plus_plus_weights(v.acts, v.grads),
    "gradient",
    summary="Grad-CAM++ map (Chattopadhay et al., WACV 2018).",
    doc="""``ReLU(sum_k w_k A^k)`` with ``w_k = sum_ij ReLU(g_ij) g_ij^2 / (2 g_ij^2 + sum_ab A_ab
g_ij^3)``, ``g = d score / d A`` (see :func:`gradattr.methods.grad_cam_plus_plus_weights`).""",
    example=_TOY + """>>> gradattr.grad_cam_plus_plus(net, torch.randn(2, 16), [0, 2]).shape
torch.Size([2, 16])
""",
    use_when="several instances of the class in one input: it weights positive gradients per position"))


def xgrad_cam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020, eq. 14): ``w_k = sum_ij (A_ij / sum_ab A_ab) g_ij``.

    The activation-weighted average of the gradient, with pytorch-grad-cam's ``1e-7``
    added to ``sum_ab A_ab``.

    >>> a = torch.tensor([[[1.0, 3.0]]]); g = torch.tensor([[[[2.0, 6.0]]]])
    >>> xgrad_cam_weights(a, g).flatten().tolist()  # (1*2 + 3*6) / 4 = 5
    [5.0]
    """
    total = reduce(acts, "n c ... -> n 1 c", "sum")
    return reduce(grads * acts[:, None], "n k c ... -> n k c", "sum") / (total + XGRAD_CAM_EPS)


register(Method(
    "xgrad_cam", "XGrad-CAM", lambda v: xgrad_cam_weights(v.acts, v.grads), "gradient",
    summary="XGrad-CAM map (Fu et al., BMVC 2020): ``w_k = sum_ij (A_ij / sum_ab A_ab) d score / d A_ij``.",
    example=_TOY + """>>> gradattr.xgrad_cam(net, torch.randn(2, 16), 1, upsampling="none").shape
torch.Size([16])
""",
    use_when="you want Grad-CAM with weights that satisfy its sensitivity/conservation axioms"))


def hires_cam_terms(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin, 2020): terms ``g^k * A^k``, element-wise (no spatial averaging).

    >>> hires_cam_terms(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[[2.0, -1.0]]]])).tolist()
    [[[[2.0, -3.0]]]]
    """
    return grads * acts[:, None]


register(Method(
    "hires_cam", "HiResCAM", lambda v: hires_cam_terms(v.acts, v.grads), "gradient", combine="terms",
    summary="HiResCAM map (Draelos & Carin, 2020): ``ReLU(sum_k (d score / d A^k) * A^k)``, element-wise.",
    example=_TOY + """>>> gradattr.hires_cam(net, torch.randn(16, 2), input_format="TC").shape
torch.Size([16])
""",
    use_when="you need a map that provably reflects the locations the score used (no gradient averaging)"))


def layer_cam_terms(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Layer-CAM (Jiang et al., IEEE TIP 2021, eq. 5): terms ``ReLU(g^k) * A^k``.

    >>> a = torch.tensor([[[1.0, 3.0], [1.0, 1.0]]]); g = torch.tensor([[[[2.0, -1.0], [1.0, 1.0]]]])
    >>> layer_cam_terms(a, g).sum(2).tolist()
    [[[3.0, 1.0]]]
    """
    return torch.relu(grads) * acts[:, None]


register(Method(
    "layer_cam", "Layer-CAM", lambda v: layer_cam_terms(v.acts, v.grads), "gradient", combine="terms",
    summary="Layer-CAM map (Jiang et al., IEEE TIP 2021): ``ReLU(sum_k ReLU(d score / d A^k) * A^k)``.",
    doc="Made for several layers at once: pass a list as ``feature_layer`` and the per-layer maps are fused.",
    example=_TOY + """>>> gradattr.layer_cam(net, torch.randn(2, 16), 0, feature_layer=["0", "1"]).shape
torch.Size([16])
""",
    use_when="finer maps from earlier layers; pass a list of layers to fuse them"))


def eigengrad_cam_map(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """EigenGrad-CAM (pytorch-grad-cam): ReLU of the first principal component of ``g * A``.

    The sign is fixed as in :func:`eigen_projection` (positive correlation with
    ``sum_c g A``, HiResCAM's map).
    """
    return torch.relu(eigen_projection(grads * acts[:, None]))


register(Method(
    "eigengrad_cam", "EigenGrad-CAM", lambda v: eigengrad_cam_map(v.acts, v.grads), "gradient",
    combine="map",
    summary="EigenGrad-CAM map: first principal component of ``(d score / d A) * A`` (pytorch-grad-cam's).",
    doc="""The sign is fixed so that the map correlates positively with HiResCAM's
``sum_k (d score / d A^k) * A^k`` (pytorch-grad-cam leaves it to the SVD).""",
    example=_TOY + """>>> gradattr.eigengrad_cam(net, torch.randn(2, 16), 2).shape
torch.Size([16])
""",
    use_when="a class-specific, less noisy Eigen-CAM (principal component of gradient x activation)"))


