"""The CAM family: the maths of each method and its registry entry, side by side.

Each method is a small pure function over what the engine captured for one
feature layer, followed by its :func:`~gradattr.registry.register` call. The
functions return one of three things, and the entry's ``combine`` says which:

* channel **weights** ``(N, K, C)``: the engine forms ``ReLU(sum_c w A^c)``;
* channel **terms** ``(N, K, C, *s)``: the engine forms ``ReLU(sum_c T)``;
* **maps** ``(N, K, *s)`` as they are.

With ``eigen_smooth=True`` the channel sum becomes the projection on the first
principal component of the channel terms (:func:`eigen_projection`). The ReLU
is Grad-CAM's and MATLAB's and what pytorch-grad-cam applies to every method
before scaling, so every method's raw map is non-negative.

Shapes: ``acts (N, C, *s)``, ``grads (N, K, C, *s)``, weights ``(N, K, C)``,
maps ``(N, K, *s)``, for any number of spatial/time dims ``s``. Extra passes go
through the view's two interfaces: ``view.scorer`` (:class:`~gradattr.scorer.Scorer`,
forward only: masked inputs, modified activations, attention probabilities) and
``view.score_gradients`` (:class:`~gradattr.score_gradients.ScoreGradients`: gradients with respect to
the input, points, the feature layer, biases and attention, Hessian-vector products).

The methods live by kind, each module holding the pure functions and their
``register(Method(...))`` entries side by side:

* :mod:`.gradient`: Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, Layer-CAM, EigenGrad-CAM, ...
* :mod:`.activation`: Eigen-CAM, CAM, ...
* :mod:`.score_cam`: Score-CAM; :mod:`.ablation`: Ablation-CAM and its carrying capture pass
* :mod:`.perturbation`: SS-CAM, IS-CAM, Group-CAM, RISE, random maps
* :mod:`.pixel`: guided backpropagation, Guided Grad-CAM
* :mod:`.input_attribution`: saliency, input x gradient, integrated gradients, SmoothGrad
  (input-level), with the integration rules in :mod:`.integrated_gradients`

Adding a method: a pure function and a ``register(Method(...))`` entry in the
module of its kind, and a naive reference in ``tests/references.py`` (the
registry-driven tests refuse a method without one). The order of the imports
below is the order of :func:`gradattr.list_methods`.
"""
from __future__ import annotations

from . import gradient, activation, score_cam, ablation, perturbation  # noqa: F401  (registration order)
from . import pixel, input_attribution  # noqa: F401
from ..ops import eigen_projection
from . import occlusion, lime, attention  # noqa: F401
from . import tabular, deeplift  # noqa: F401

__all__ = ["eigen_projection", "gradient", "activation", "score_cam", "ablation", "perturbation", "pixel",
           "input_attribution", "occlusion", "lime", "attention", "tabular", "deeplift"]
