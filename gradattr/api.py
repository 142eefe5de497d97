"""Public entry points. Each is a thin, explicitly-typed wrapper over :func:`gradattr.engine.run`."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import methods
from .engine import run

Layer = str | nn.Module | None


def grad_cam(net: nn.Module, x, target=None, reduction_fn: Callable | None = None,
             feature_layer: Layer | Sequence[str | nn.Module] = None, reduction_layer: Layer = None,
             upsampling: str = "bicubic", device: str | torch.device = "auto", *,
             classes: Sequence | None = None, input_format: str | None = None,
             return_layers: bool = False, normalize: bool = False, counterfactual: bool = False):
    """Grad-CAM map of ``net`` for input ``x``, mirroring MATLAB's ``gradCAM``.

    The map is ``ReLU(sum_k alpha_k A^k)`` where ``A`` is the feature layer's
    output and ``alpha_k`` the spatial mean of ``d score / d A^k`` (Selvaraju et
    al., ICCV 2017). Values are raw, as in MATLAB; ``normalize=True`` rescales each
    map to [0, 1].

    Args:
        net: any ``torch.nn.Module``. It is run in eval mode and left exactly as
            found (training flags, device, ``requires_grad``, ``.grad``, hooks).
        x: ``(N, C, T)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``, or the same
            without ``N`` for one example; a tensor or a numpy array (the map comes
            back as the same kind, a tensor on ``x``'s device).
        target: class index (0-based, unlike MATLAB's 1-based ``classIdx``), a
            sequence of indices (one map each, from one forward pass), an ``(N, K)``
            integer array of per-sample classes, a label or labels looked up in
            ``classes``, a callable (used as ``reduction_fn``), or ``None`` for each
            sample's top-scoring class. On a spatial output ``(N, C, *S)`` a class
            scores the sum over ``S`` (segmentation).
        reduction_fn: ``y -> (N,)`` scores from the reduction layer's output ``y``
            (e.g. ``lambda y: y[:, 0]`` for a regressor); ``(N, K)`` gives K maps.
        feature_layer: name (from ``net.named_modules()``) or module; ``None``
            picks the last layer whose output has the input's layout with a
            spatial/time dimension > 1. A list fuses several layers.
        reduction_layer: name or module whose output is scored; ``None`` is the
            network output.
        upsampling: ``"bicubic"`` (MATLAB ``imresize``/``imresize3`` exact),
            ``"nearest"`` or ``"none"`` (the feature map's resolution).
        device: ``"auto"`` (where the parameters are), ``"cpu"``, ``"gpu"``/``"cuda"``
            or a ``torch.device``. The model is moved back afterwards.
        classes: labels for string targets.
        input_format: MATLAB dimension letters for MATLAB-ordered arrays, e.g.
            ``"SSC"`` (H x W x C image), ``"SSCB"``, ``"CT"``, ``"TC"``.
        return_layers: also return the feature and reduction layer names.
        normalize: min-max scale each map to [0, 1].
        counterfactual: explain the evidence against the target (negated gradients).

    Returns:
        The map, shape ``(N, K, *spatial)`` with ``N`` dropped for unbatched input
        and ``K`` for a scalar target; with ``return_layers=True`` the tuple
        ``(map, feature_layer_name, reduction_layer_name)``.

    Example:
        >>> import torch, gradattr
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 3))
        >>> m, feat, red = gradattr.grad_cam(net, torch.randn(2, 16), 1, return_layers=True)
        >>> m.shape, feat, red
        (torch.Size([16]), '1', '4')
    """
    return run(methods.gradient_method(methods.grad_cam, counterfactual=counterfactual), net, x,
               target=target, reduction_fn=reduction_fn, feature_layer=feature_layer,
               reduction_layer=reduction_layer, upsampling=upsampling, device=device,
               classes=classes, input_format=input_format, return_layers=return_layers,
               normalize=normalize)
