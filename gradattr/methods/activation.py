"""Activation methods: maps from the activations alone (and, for CAM, the network's head)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from ..errors import GradattrError, expected
from ..registry import Method, register
from ..targets import Target
from .common import TOY as _TOY, eigen_projection


def eigen_cam_map(acts: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): ``ReLU(A_c v1)``, one map ``(N, 1, *s)``.

    No gradients and no target: the first principal component of the activations
    (see :func:`eigen_projection` for the centring and the sign).

    >>> a = torch.tensor([[[0.0, 1.0, 4.0], [0.0, 2.0, 8.0]]])
    >>> [round(v, 4) for v in eigen_cam_map(a).flatten().tolist()]  # (35 / 3) / sqrt(5) where they peak
    [0.0, 0.0, 5.2175]
    """
    return torch.relu(eigen_projection(acts[:, None]))


register(Method(
    "eigen_cam", "Eigen-CAM", lambda v: eigen_cam_map(v.acts), "activation", combine="map",
    needs_target=False, stop_early=True,
    summary="Eigen-CAM map (Muhammad & Yeasin, IJCNN 2020): the activations' first principal component.",
    doc="""``ReLU(A_c v1)``: the centred activations projected on their first right singular
vector. No target and no gradients: one map per sample, class agnostic, and the forward
pass stops at the feature layer. The SVD's sign is fixed so the map correlates positively
with the activations' channel sum (pytorch-grad-cam keeps LAPACK's arbitrary sign, which
sometimes gives the inverted map); see :func:`gradattr.methods.eigen_projection`.""",
    example=_TOY + """>>> gradattr.eigen_cam(net, torch.randn(3, 2, 16), upsampling="none").shape
torch.Size([3, 16])
""",
    use_when="no target or no gradient available (detectors, embeddings): first principal component "
             "of the activations"))


def _target_weights(target: Target, y: torch.Tensor, n: int) -> torch.Tensor:
    """``d score_k / d y`` ``(N, K, classes)`` for an output ``y (N, classes)``: one-hot rows for classes."""
    leaf = y.detach().requires_grad_(True)
    with torch.enable_grad():
        s = target.scores(leaf, n)
        if not s.requires_grad:
            raise GradattrError("reduction_fn: expected a score computed from the network output, "
                                "but it does not depend on it")
        rows = [torch.autograd.grad(s[:, k].sum(), leaf, retain_graph=True, allow_unused=True)[0]
                for k in range(s.shape[1])]
    return torch.stack([torch.zeros_like(leaf) if r is None else r for r in rows], 1)


def find_cam_head(net: nn.Module, acts: torch.Tensor, output) -> tuple[str, nn.Linear]:
    """The final ``nn.Linear`` that maps the global average pool of ``acts`` to ``output``.

    Found by value, not by position: the candidate linear layers take ``C`` inputs,
    and the one whose ``W mean(A) + b`` reproduces the scored output is the head.
    """
    n, c, *s = acts.shape
    pooled = reduce(acts.detach(), "n c ... -> n c", "mean")
    linears = [(nm, m) for nm, m in net.named_modules() if isinstance(m, nn.Linear)]
    candidates = [(nm, m) for nm, m in linears if m.in_features == c]
    if isinstance(output, torch.Tensor) and output.ndim == 2:
        for nm, m in reversed(candidates):
            y = F.linear(pooled.to(m.weight.dtype), m.weight, m.bias)
            scale = float(output.detach().abs().max().clamp(min=1))
            if y.shape == output.shape and torch.allclose(y, output.detach(), rtol=1e-4,
                                                          atol=1e-4 * scale):
                return nm, m
    what = (f"no nn.Linear with in_features={c}" if not candidates else
            f"nn.Linear {', '.join(repr(nm) for nm, _ in candidates)} with in_features={c}, but the "
            "output is none of them applied to the global average pool of the feature layer")
    got = f"output {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
    raise GradattrError(
        f"net: CAM expected a network whose scored output is nn.Linear(global average pool of the "
        f"feature layer, {c} channels) (Zhou et al.'s GAP + linear head); found {what}; got {got}. "
        "Pass the feature layer that the head pools, or use grad_cam, which equals CAM up to a "
        "constant factor on such networks and works on any network")


def cam_weights(view) -> torch.Tensor:
    """CAM (Zhou et al., CVPR 2016, eq. 2): the head's rows ``w^c`` for the targets, ``(N, K, C)``.

    For a class target the weight vector is the final linear layer's row ``W[c]``
    (found by :func:`find_cam_head`); for a ``reduction_fn`` it is
    ``W^T d score / d y`` (the same rows combined as the function combines the
    outputs; exact for the usual linear reductions). The bias is not part of the map.
    """
    if view.layers > 1:
        raise expected("feature_layer", "one layer for CAM (the layer its linear head pools)",
                       f"{view.layers} layers")
    a, probe = view.acts, view.probe
    _, head = find_cam_head(probe.net, a, probe.output)
    dy = _target_weights(probe.call.target, probe.output, a.shape[0])  # (N, K, classes)
    return torch.einsum("nko,oc->nkc", dy, head.weight.detach().to(dy.dtype)).to(a.dtype)


register(Method(
    "cam", "CAM", cam_weights, "activation",
    summary="CAM (Zhou et al., CVPR 2016): ``ReLU(sum_k w_k^c A^k)`` with ``w^c`` the head's row for class ``c``.",
    doc="""Needs a network whose scored output is ``nn.Linear(global average pool of the feature
layer)``; that linear layer is found automatically (by checking that it reproduces the
output), and a :class:`~gradattr.GradattrError` says so when the network has no such
head. On such a network CAM is Grad-CAM times the number of feature-map positions. No
gradients are computed.""",
    example=_TOY + """>>> x = torch.randn(2, 16)
>>> torch.allclose(gradattr.cam(net, x, 1), 16 * gradattr.grad_cam(net, x, 1), atol=1e-5)
True
""",
    use_when="the network ends in global average pooling + one linear layer: exact, no gradients"))


