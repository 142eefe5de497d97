"""Public entry points. Each is a thin, explicitly-typed wrapper over :func:`gradattr.engine.run`.

The maths of every method is in :mod:`gradattr.methods`; this module only maps
arguments to a driver. :func:`attribute` reaches every method by name.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from . import methods
from .engine import run
from .errors import GradattrError, expected

Layer = str | nn.Module | None
Layers = Layer | Sequence[str | nn.Module]

_COMMON_ARGS = """net: any ``torch.nn.Module``. It is run in eval mode and left exactly as
            found (training flags, device, ``requires_grad``, ``.grad``, hooks).
        x: ``(N, C, T)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``, or the same
            without ``N`` for one example; a tensor or a numpy array (the map comes
            back as the same kind, a tensor on ``x``'s device).
        target: class index (0-based), a sequence of indices (one map each), an
            ``(N, K)`` integer array of per-sample classes, a label or labels looked
            up in ``classes``, a callable (used as ``reduction_fn``), or ``None``
            for each sample's top-scoring class.
        reduction_fn: ``y -> (N,)`` (or ``(N, K)``) scores from the reduction
            layer's output ``y``, for regression or segmentation.
        feature_layer: name or module; ``None`` picks the last layer with the
            input's layout (as :func:`grad_cam`); a list of layers gives one map per
            layer, fused (each min-max normalised, resized, averaged, normalised).
        reduction_layer: name or module whose output is scored; ``None`` is the
            network output.
        upsampling: ``"bicubic"`` (MATLAB ``imresize`` exact), ``"nearest"`` or
            ``"none"`` (the feature map's resolution).
        device: ``"auto"``, ``"cpu"``, ``"gpu"``/``"cuda"`` or a ``torch.device``.
        classes: labels for string targets.
        input_format: MATLAB dimension letters for MATLAB-ordered arrays (``"SSC"``, ``"CT"``...).
        return_layers: also return the feature and reduction layer names.
        normalize: min-max scale each map to [0, 1]."""

_SMOOTH_ARGS = """eigen_smooth: replace the channel sum by the projection on the first
            principal component of the channel terms (pytorch-grad-cam's
            ``eigen_smooth``; the sign is fixed so that it correlates positively
            with the plain map).
        aug_smooth: average the normalised maps of six augmented inputs
            (horizontal flip x multiply by 0.9, 1, 1.1; pytorch-grad-cam's
            ``aug_smooth``); the result lies in [0, 1]."""

_RETURNS = """The map, shape ``(N, K, *spatial)`` with ``N`` dropped for unbatched input
        and ``K`` for a scalar target; with ``return_layers=True`` the tuple
        ``(map, feature_layer_name, reduction_layer_name)``."""

_TOY = """>>> import torch, gradattr
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 3))"""


def _doc(fn):
    fn.__doc__ = (fn.__doc__.replace("{common}", _COMMON_ARGS).replace("{smooth}", _SMOOTH_ARGS)
                  .replace("{returns}", _RETURNS).replace("{toy}", _TOY))
    return fn


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise expected(name, "True or False", repr(value))


def _run(driver, net, x, *, aug_smooth=False, eigen_smooth=False, **kw):
    _check_flag("aug_smooth", aug_smooth)
    _check_flag("eigen_smooth", eigen_smooth)
    if aug_smooth:
        driver = methods.augmented(driver, fix_target=kw.get("needs_target", True))
    return run(driver, net, x, **kw)


def _gradient(fn, net, x, target, counterfactual, eigen_smooth, aug_smooth, **kw):
    _check_flag("counterfactual", counterfactual)
    _check_flag("eigen_smooth", eigen_smooth)
    pure = partial(fn, eigen_smooth=eigen_smooth) if eigen_smooth else fn
    return _run(methods.gradient_method(pure, counterfactual=counterfactual), net, x,
                aug_smooth=aug_smooth, target=target, **kw)


@_doc
def grad_cam(net: nn.Module, x, target=None, reduction_fn: Callable | None = None,
             feature_layer: Layers = None, reduction_layer: Layer = None,
             upsampling: str = "bicubic", device: str | torch.device = "auto", *,
             classes: Sequence | None = None, input_format: str | None = None,
             return_layers: bool = False, normalize: bool = False, counterfactual: bool = False,
             eigen_smooth: bool = False, aug_smooth: bool = False):
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
        {smooth}

    Returns:
        {returns}

    Example:
        >>> import torch, gradattr
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 3))
        >>> m, feat, red = gradattr.grad_cam(net, torch.randn(2, 16), 1, return_layers=True)
        >>> m.shape, feat, red
        (torch.Size([16]), '1', '4')
    """
    return _gradient(methods.grad_cam, net, x, target, counterfactual, eigen_smooth, aug_smooth,
                     reduction_fn=reduction_fn, feature_layer=feature_layer,
                     reduction_layer=reduction_layer, upsampling=upsampling, device=device,
                     classes=classes, input_format=input_format, return_layers=return_layers,
                     normalize=normalize)


@_doc
def grad_cam_plus_plus(net: nn.Module, x, target=None, *, reduction_fn: Callable | None = None,
                       feature_layer: Layers = None, reduction_layer: Layer = None,
                       upsampling: str = "bicubic", device: str | torch.device = "auto",
                       classes: Sequence | None = None, input_format: str | None = None,
                       return_layers: bool = False, normalize: bool = False,
                       counterfactual: bool = False, eigen_smooth: bool = False,
                       aug_smooth: bool = False):
    """Grad-CAM++ map (Chattopadhay et al., WACV 2018).

    ``ReLU(sum_k w_k A^k)`` with ``w_k = sum_ij ReLU(g_ij) g_ij^2 / (2 g_ij^2 +
    sum_ab A_ab g_ij^3)``, ``g = d score / d A`` (see
    :func:`gradattr.methods.grad_cam_plus_plus` for the choices).

    Args:
        {common}
        counterfactual: explain the evidence against the target (negated gradients).
        {smooth}

    Returns:
        {returns}

    Example:
        {toy}
        >>> gradattr.grad_cam_plus_plus(net, torch.randn(2, 16), [0, 2]).shape
        torch.Size([2, 16])
    """
    return _gradient(methods.grad_cam_plus_plus, net, x, target, counterfactual, eigen_smooth,
                     aug_smooth, reduction_fn=reduction_fn, feature_layer=feature_layer,
                     reduction_layer=reduction_layer, upsampling=upsampling, device=device,
                     classes=classes, input_format=input_format, return_layers=return_layers,
                     normalize=normalize)


@_doc
def xgrad_cam(net: nn.Module, x, target=None, *, reduction_fn: Callable | None = None,
              feature_layer: Layers = None, reduction_layer: Layer = None,
              upsampling: str = "bicubic", device: str | torch.device = "auto",
              classes: Sequence | None = None, input_format: str | None = None,
              return_layers: bool = False, normalize: bool = False,
              counterfactual: bool = False, eigen_smooth: bool = False, aug_smooth: bool = False):
    """XGrad-CAM map (Fu et al., BMVC 2020): ``w_k = sum_ij (A_ij / sum_ab A_ab) d score / d A_ij``.

    Args:
        {common}
        counterfactual: explain the evidence against the target (negated gradients).
        {smooth}

    Returns:
        {returns}

    Example:
        {toy}
        >>> gradattr.xgrad_cam(net, torch.randn(2, 16), 1, upsampling="none").shape
        torch.Size([16])
    """
    return _gradient(methods.xgrad_cam, net, x, target, counterfactual, eigen_smooth, aug_smooth,
                     reduction_fn=reduction_fn, feature_layer=feature_layer,
                     reduction_layer=reduction_layer, upsampling=upsampling, device=device,
                     classes=classes, input_format=input_format, return_layers=return_layers,
                     normalize=normalize)


@_doc
def hires_cam(net: nn.Module, x, target=None, *, reduction_fn: Callable | None = None,
              feature_layer: Layers = None, reduction_layer: Layer = None,
              upsampling: str = "bicubic", device: str | torch.device = "auto",
              classes: Sequence | None = None, input_format: str | None = None,
              return_layers: bool = False, normalize: bool = False,
              counterfactual: bool = False, eigen_smooth: bool = False, aug_smooth: bool = False):
    """HiResCAM map (Draelos & Carin, 2020): ``ReLU(sum_k (d score / d A^k) * A^k)``, element-wise.

    Args:
        {common}
        counterfactual: explain the evidence against the target (negated gradients).
        {smooth}

    Returns:
        {returns}

    Example:
        {toy}
        >>> gradattr.hires_cam(net, torch.randn(16, 2), input_format="TC").shape
        torch.Size([16])
    """
    return _gradient(methods.hires_cam, net, x, target, counterfactual, eigen_smooth, aug_smooth,
                     reduction_fn=reduction_fn, feature_layer=feature_layer,
                     reduction_layer=reduction_layer, upsampling=upsampling, device=device,
                     classes=classes, input_format=input_format, return_layers=return_layers,
                     normalize=normalize)


@_doc
def layer_cam(net: nn.Module, x, target=None, *, reduction_fn: Callable | None = None,
              feature_layer: Layers = None, reduction_layer: Layer = None,
              upsampling: str = "bicubic", device: str | torch.device = "auto",
              classes: Sequence | None = None, input_format: str | None = None,
              return_layers: bool = False, normalize: bool = False,
              counterfactual: bool = False, eigen_smooth: bool = False, aug_smooth: bool = False):
    """Layer-CAM map (Jiang et al., IEEE TIP 2021): ``ReLU(sum_k ReLU(d score / d A^k) * A^k)``.

    Made for several layers at once: pass a list as ``feature_layer`` and the
    per-layer maps are fused.

    Args:
        {common}
        counterfactual: explain the evidence against the target (negated gradients).
        {smooth}

    Returns:
        {returns}

    Example:
        {toy}
        >>> gradattr.layer_cam(net, torch.randn(2, 16), 0, feature_layer=["0", "1"]).shape
        torch.Size([16])
    """
    return _gradient(methods.layer_cam, net, x, target, counterfactual, eigen_smooth, aug_smooth,
                     reduction_fn=reduction_fn, feature_layer=feature_layer,
                     reduction_layer=reduction_layer, upsampling=upsampling, device=device,
                     classes=classes, input_format=input_format, return_layers=return_layers,
                     normalize=normalize)


@_doc
def eigengrad_cam(net: nn.Module, x, target=None, *, reduction_fn: Callable | None = None,
                  feature_layer: Layers = None, reduction_layer: Layer = None,
                  upsampling: str = "bicubic", device: str | torch.device = "auto",
                  classes: Sequence | None = None, input_format: str | None = None,
                  return_layers: bool = False, normalize: bool = False,
                  counterfactual: bool = False, aug_smooth: bool = False):
    """EigenGrad-CAM map: first principal component of ``(d score / d A) * A`` (pytorch-grad-cam's).

    The sign is fixed so that the map correlates positively with HiResCAM's
    ``sum_k (d score / d A^k) * A^k`` (pytorch-grad-cam leaves it to the SVD).

    Args:
        {common}
        counterfactual: explain the evidence against the target (negated gradients).
        aug_smooth: average the normalised maps of six augmented inputs
            (pytorch-grad-cam's ``aug_smooth``).

    Returns:
        {returns}

    Example:
        {toy}
        >>> gradattr.eigengrad_cam(net, torch.randn(2, 16), 2).shape
        torch.Size([16])
    """
    return _gradient(methods.eigengrad_cam, net, x, target, counterfactual, False, aug_smooth,
                     reduction_fn=reduction_fn, feature_layer=feature_layer,
                     reduction_layer=reduction_layer, upsampling=upsampling, device=device,
                     classes=classes, input_format=input_format, return_layers=return_layers,
                     normalize=normalize)


@_doc
def cam(net: nn.Module, x, target=None, *, reduction_fn: Callable | None = None,
        feature_layer: Layer = None, reduction_layer: Layer = None, upsampling: str = "bicubic",
        device: str | torch.device = "auto", classes: Sequence | None = None,
        input_format: str | None = None, return_layers: bool = False, normalize: bool = False,
        eigen_smooth: bool = False, aug_smooth: bool = False):
    """CAM (Zhou et al., CVPR 2016): ``ReLU(sum_k w_k^c A^k)`` with ``w^c`` the head's row for class ``c``.

    Needs a network whose scored output is ``nn.Linear(global average pool of
    the feature layer)``; that linear layer is found automatically (by checking
    that it reproduces the output), and a :class:`~gradattr.GradattrError` says
    so when the network has no such head. On such a network CAM is Grad-CAM
    times the number of feature-map positions. No gradients are computed.

    Args:
        {common}
        {smooth}

    Returns:
        {returns}

    Example:
        {toy}
        >>> x = torch.randn(2, 16)
        >>> torch.allclose(gradattr.cam(net, x, 1), 16 * gradattr.grad_cam(net, x, 1), atol=1e-5)
        True
    """
    return _run(methods.cam_method(eigen_smooth=eigen_smooth), net, x, aug_smooth=aug_smooth,
                eigen_smooth=eigen_smooth, target=target, reduction_fn=reduction_fn,
                feature_layer=feature_layer, reduction_layer=reduction_layer, upsampling=upsampling,
                device=device, classes=classes, input_format=input_format,
                return_layers=return_layers, normalize=normalize)


@_doc
def score_cam(net: nn.Module, x, target=None, *, reduction_fn: Callable | None = None,
              feature_layer: Layers = None, reduction_layer: Layer = None,
              upsampling: str = "bicubic", device: str | torch.device = "auto",
              classes: Sequence | None = None, input_format: str | None = None,
              return_layers: bool = False, normalize: bool = False,
              batch_size: int | None = None, progress: bool = False,
              eigen_smooth: bool = False, aug_smooth: bool = False):
    """Score-CAM map (Wang et al., CVPR-W 2020): ``ReLU(sum_k softmax_k(f(x * H^k)) A^k)``.

    ``H^k`` is channel ``k`` upsampled to the input (multi-linear,
    ``align_corners=True``, as pytorch-grad-cam) and min-max scaled; ``f`` the
    target score. One forward pass per channel (the all-zero masks of constant
    channels share one), run in chunks. See :func:`gradattr.methods.score_cam_method`.

    Args:
        {common}
        batch_size: masked inputs per forward pass; ``None`` sizes chunks from a
            512 MB budget.
        progress: show a progress bar (tqdm).
        {smooth}

    Returns:
        {returns}

    Example:
        {toy}
        >>> gradattr.score_cam(net, torch.randn(2, 16), 1, batch_size=3).shape
        torch.Size([16])
    """
    _check_flag("progress", progress)
    driver = methods.score_cam_method(batch_size=batch_size, progress=progress,
                                      eigen_smooth=eigen_smooth)
    return _run(driver, net, x, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, target=target,
                reduction_fn=reduction_fn, feature_layer=feature_layer,
                reduction_layer=reduction_layer, upsampling=upsampling, device=device,
                classes=classes, input_format=input_format, return_layers=return_layers,
                normalize=normalize)


@_doc
def ablation_cam(net: nn.Module, x, target=None, *, reduction_fn: Callable | None = None,
                 feature_layer: Layers = None, reduction_layer: Layer = None,
                 upsampling: str = "bicubic", device: str | torch.device = "auto",
                 classes: Sequence | None = None, input_format: str | None = None,
                 return_layers: bool = False, normalize: bool = False,
                 batch_size: int | None = None, progress: bool = False,
                 eigen_smooth: bool = False, aug_smooth: bool = False):
    """Ablation-CAM map (Ramaswamy, WACV 2020): ``ReLU(sum_k (y - y_k) / y A^k)``.

    ``y_k`` is the target score with channel ``k`` of the feature map set to
    zero. Where the network allows it only the layers after the feature layer
    run on the ablated copies; see :func:`gradattr.methods.ablation_cam_method`.

    Args:
        {common}
        batch_size: ablated copies per forward pass; ``None`` sizes chunks from a
            512 MB budget.
        progress: show a progress bar (tqdm).
        {smooth}

    Returns:
        {returns}

    Example:
        {toy}
        >>> gradattr.ablation_cam(net, torch.randn(2, 16), 1, upsampling="none").shape
        torch.Size([16])
    """
    _check_flag("progress", progress)
    driver = methods.ablation_cam_method(batch_size=batch_size, progress=progress,
                                         eigen_smooth=eigen_smooth)
    return _run(driver, net, x, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, target=target,
                reduction_fn=reduction_fn, feature_layer=feature_layer,
                reduction_layer=reduction_layer, upsampling=upsampling, device=device,
                classes=classes, input_format=input_format, return_layers=return_layers,
                normalize=normalize)


@_doc
def eigen_cam(net: nn.Module, x, *, feature_layer: Layers = None, reduction_layer: Layer = None,
              upsampling: str = "bicubic", device: str | torch.device = "auto",
              input_format: str | None = None, return_layers: bool = False,
              normalize: bool = False, aug_smooth: bool = False):
    """Eigen-CAM map (Muhammad & Yeasin, IJCNN 2020): the activations' first principal component.

    ``ReLU(A_c v1)``: the centred activations projected on their first right
    singular vector. No target and no gradients: one map per sample, class
    agnostic. The SVD's sign is fixed so the map correlates positively with the
    activations' channel sum (pytorch-grad-cam keeps LAPACK's arbitrary sign,
    which sometimes gives the inverted map); see :func:`gradattr.methods.eigen_projection`.

    Args:
        net: any ``torch.nn.Module``, left exactly as found.
        x: as for :func:`grad_cam`.
        feature_layer: name, module or list (fused); ``None`` as for :func:`grad_cam`.
        reduction_layer: the automatic feature layer is searched before this layer.
        upsampling: ``"bicubic"``, ``"nearest"`` or ``"none"``.
        device: ``"auto"``, ``"cpu"``, ``"gpu"``/``"cuda"`` or a ``torch.device``.
        input_format: MATLAB dimension letters for MATLAB-ordered arrays.
        return_layers: also return the feature and reduction layer names.
        normalize: min-max scale each map to [0, 1].
        aug_smooth: average the normalised maps of six augmented inputs.

    Returns:
        The map ``(N, *spatial)`` (``N`` dropped for unbatched input); with
        ``return_layers=True`` also the layer names.

    Example:
        {toy}
        >>> gradattr.eigen_cam(net, torch.randn(3, 2, 16), upsampling="none").shape
        torch.Size([3, 16])
    """
    return _run(methods.eigen_cam_method, net, x, aug_smooth=aug_smooth, target=None,
                needs_target=False, feature_layer=feature_layer, reduction_layer=reduction_layer,
                upsampling=upsampling, device=device, input_format=input_format,
                return_layers=return_layers, normalize=normalize)


@_doc
def guided_backprop(net: nn.Module, x, target=None, *, reduction_fn: Callable | None = None,
                    reduction_layer: Layer = None, device: str | torch.device = "auto",
                    classes: Sequence | None = None, input_format: str | None = None,
                    normalize: bool = False, counterfactual: bool = False):
    """Guided backpropagation (Springenberg et al., ICLR-W 2015): input gradients through guided rectifiers.

    Every rectifier (``nn.ReLU``/``nn.ReLU6`` modules and functional ``relu``,
    ``relu6``, ``hardtanh(., 0, m)``, in place or not) passes back only positive
    gradients at positive inputs: ``R_in = (x > 0) max(R_out, 0)``. Done with a
    :class:`torch.overrides.TorchFunctionMode` for the one forward pass; no
    module is swapped and nothing is patched.

    Args:
        net: any ``torch.nn.Module``, left exactly as found.
        x: as for :func:`grad_cam`.
        target: as for :func:`grad_cam`.
        reduction_fn: as for :func:`grad_cam`.
        reduction_layer: name or module whose output is scored.
        device: ``"auto"``, ``"cpu"``, ``"gpu"``/``"cuda"`` or a ``torch.device``.
        classes: labels for string targets.
        input_format: MATLAB dimension letters for MATLAB-ordered arrays.
        normalize: min-max scale each attribution (over channels and positions) to [0, 1].
        counterfactual: guided gradients of the negated score.

    Returns:
        ``(N, K, C, *spatial)`` at the input's resolution, ``N`` dropped for
        unbatched input and ``K`` for a scalar target.

    Example:
        {toy}
        >>> gradattr.guided_backprop(net, torch.randn(2, 2, 16), 1).shape
        torch.Size([2, 2, 16])
    """
    _check_flag("counterfactual", counterfactual)
    return run(methods.guided_backprop_method(counterfactual=counterfactual), net, x,
               target=target, reduction_fn=reduction_fn, reduction_layer=reduction_layer,
               upsampling="none", device=device, classes=classes, input_format=input_format,
               normalize=normalize)


@_doc
def guided_grad_cam(net: nn.Module, x, target=None, *, reduction_fn: Callable | None = None,
                    feature_layer: Layers = None, reduction_layer: Layer = None,
                    upsampling: str = "bicubic", device: str | torch.device = "auto",
                    classes: Sequence | None = None, input_format: str | None = None,
                    return_layers: bool = False, normalize: bool = False,
                    counterfactual: bool = False):
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017): guided backprop times the upsampled Grad-CAM.

    ``G(x)[c] * up(GradCAM)`` for every input channel ``c``; the Grad-CAM map is
    resized to the input with ``upsampling`` (``"bicubic"`` or ``"nearest"``;
    captum's ``GuidedGradCam`` uses nearest) and clamped at 0.

    Args:
        {common}
        counterfactual: use the negated score for both factors.

    Returns:
        ``(N, K, C, *spatial)`` at the input's resolution, ``N`` dropped for
        unbatched input and ``K`` for a scalar target; with ``return_layers=True``
        also the layer names.

    Example:
        {toy}
        >>> gradattr.guided_grad_cam(net, torch.randn(2, 16), 1, upsampling="nearest").shape
        torch.Size([2, 16])
    """
    _check_flag("counterfactual", counterfactual)
    if not isinstance(upsampling, str) or upsampling.lower() not in ("bicubic", "nearest"):
        raise expected("upsampling", "'bicubic' or 'nearest' (Guided Grad-CAM needs the map at "
                       "the input's resolution)", repr(upsampling))
    driver = methods.guided_grad_cam_method(cam_upsampling=upsampling.lower(),
                                            counterfactual=counterfactual)
    return run(driver, net, x, target=target, reduction_fn=reduction_fn,
               feature_layer=feature_layer, reduction_layer=reduction_layer, upsampling="none",
               device=device, classes=classes, input_format=input_format,
               return_layers=return_layers, normalize=normalize)


_METHODS: dict[str, Callable] = {
    "cam": cam,
    "grad_cam": grad_cam,
    "grad_cam_plus_plus": grad_cam_plus_plus,
    "xgrad_cam": xgrad_cam,
    "hires_cam": hires_cam,
    "layer_cam": layer_cam,
    "score_cam": score_cam,
    "ablation_cam": ablation_cam,
    "eigen_cam": eigen_cam,
    "eigengrad_cam": eigengrad_cam,
    "guided_backprop": guided_backprop,
    "guided_grad_cam": guided_grad_cam,
}


def list_methods() -> list[str]:
    """The names :func:`attribute` accepts, in the order of the methods table.

    >>> import gradattr
    >>> gradattr.list_methods()[:3]
    ['cam', 'grad_cam', 'grad_cam_plus_plus']
    """
    return list(_METHODS)


def attribute(net: nn.Module, x, target=None, method: str = "grad_cam", **options):
    """Any method by name: ``attribute(net, x, target, method="score_cam", batch_size=64)``.

    ``options`` are the keyword arguments of the method's own function (see
    :func:`list_methods`); an option the method does not take is an error, as is
    a ``target`` for :func:`eigen_cam`, which takes none.

    Example:
        >>> import torch, gradattr
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 2))
        >>> gradattr.attribute(net, torch.randn(3, 8, 8), 1, method="layer_cam").shape
        torch.Size([8, 8])
    """
    if not isinstance(method, str) or method not in _METHODS:
        close = difflib.get_close_matches(str(method), list(_METHODS), n=3) if isinstance(method, str) else []
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise expected("method", "one of " + ", ".join(map(repr, _METHODS)), f"{method!r}{hint}")
    fn = _METHODS[method]
    params = inspect.signature(fn).parameters
    for name in options:
        if name not in params or name in ("net", "x", "target"):
            allowed = [p for p in params if p not in ("net", "x", "target")]
            close = difflib.get_close_matches(name, allowed, n=2)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise GradattrError(f"{name}: expected an option of {method} (one of "
                                f"{', '.join(allowed)}), got {name!r}{hint}")
    if "target" not in params:
        if target is not None:
            raise expected("target", f"None for {method}, which explains no particular class",
                           repr(target))
        return fn(net, x, **options)
    return fn(net, x, target, **options)
