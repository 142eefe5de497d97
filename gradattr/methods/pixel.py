"""Pixel-space methods: attributions at the input's resolution, per input channel."""
from __future__ import annotations

import torch

from ..guided import GuidedRectifiers
from ..options import COMMON, TARGET
from ..registry import Method, register
from .common import TOY as _TOY
from .gradient import grad_cam_weights


register(Method(
    "guided_backprop", "Guided backpropagation",
    lambda v: v.score_gradients.input_gradients(GuidedRectifiers()), "input_gradients",
    changes_input=True, family="input attribution", shared=COMMON + TARGET + ("counterfactual",), combine="map", returns="pixels",
    summary="Guided backpropagation (Springenberg et al., ICLR-W 2015): input gradients through "
            "guided rectifiers.",
    doc="""Every rectifier (``nn.ReLU``/``nn.ReLU6`` modules and functional ``relu``, ``relu6``,
``hardtanh(., 0, m)``, in place or not) passes back only positive gradients at positive
inputs: ``R_in = (x > 0) max(R_out, 0)``. Done with a
:class:`torch.overrides.TorchFunctionMode` for the one forward pass; no module is swapped
and nothing is patched. Not class-discriminative. ``normalize`` scales each attribution
over channels and positions.""",
    example=_TOY + """>>> gradattr.guided_backprop(net, torch.randn(2, 2, 16), 1).shape
torch.Size([2, 2, 16])
""",
    use_when="pixel-level detail (edges, texture); not class-discriminative; returns (N, C, *spatial)"))


def guided_grad_cam_pixels(view, cam: torch.Tensor) -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017, sec. 3): guided backprop x upsampled Grad-CAM.

    ``cam (N, K, *s)`` is the Grad-CAM map (fused, for several layers). The paper
    upsamples it bilinearly; here it is resized to the input with the call's
    ``upsampling`` (MATLAB bicubic or nearest, captum's default) and clamped at 0
    (bicubic overshoots slightly below 0 next to sharp edges, which would flip the
    sign of the guided gradient there), then multiplies the guided gradients of
    every input channel: ``(N, K, C, *S)``.
    """
    up = torch.relu(view.scorer.to_input(cam))
    return view.score_gradients.input_gradients(GuidedRectifiers()) * up[:, :, None]


register(Method(
    "guided_grad_cam", "Guided Grad-CAM", lambda v: grad_cam_weights(v.acts, v.grads), "activations+gradients",
    changes_input=True, family="input attribution", shared=COMMON + TARGET + ("feature_layer", "upsampling", "feature_layout", "feature_call", "return_layers", "counterfactual"),
    returns="pixels", finish=guided_grad_cam_pixels, summary="Guided Grad-CAM (Selvaraju et al., ICCV 2017): guided backprop times the upsampled Grad-CAM.",
    doc="""``G(x)[c] * up(GradCAM)`` for every input channel ``c``; the Grad-CAM map is resized
to the input with ``upsampling`` (``"bicubic"`` or ``"nearest"``; captum's ``GuidedGradCam``
uses nearest) and clamped at 0. One feature layer.""",
    example=_TOY + """>>> gradattr.guided_grad_cam(net, torch.randn(2, 16), 2, upsampling="nearest").shape
torch.Size([2, 16])
""",
    use_when="high-resolution and class-discriminative: guided backprop x Grad-CAM"))
