"""gradattr: class activation maps for PyTorch models of any rank (1-D, 2-D, 3-D).

The entry point :func:`grad_cam` mirrors MATLAB's ``gradCAM``; the rest of the
CAM family shares its arguments, and :func:`attribute` reaches any of them by
name (:func:`list_methods`).
"""
from .api import (ablation_cam, attribute, cam, eigen_cam, eigengrad_cam, grad_cam,  # noqa: F401
                  grad_cam_plus_plus, guided_backprop, guided_grad_cam, hires_cam, layer_cam,
                  list_methods, method_info, score_cam, xgrad_cam)
from . import metrics, plot
from .comparison import Table, compare
from .dataset import explain_dataset
from .errors import GradattrError
from .resize import imresize

__all__ = ["grad_cam", "cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam",
           "score_cam", "ablation_cam", "eigen_cam", "eigengrad_cam", "guided_backprop",
           "guided_grad_cam", "attribute", "list_methods", "method_info", "compare", "Table", "explain_dataset",
           "metrics", "plot", "GradattrError", "imresize"]
__version__ = "0.1.0"

# Every registered method, including those not named above (methods-b: ss_cam, is_cam, group_cam,
# rise, random_cam).
from . import api as _api  # noqa: E402
globals().update({_n: getattr(_api, _n) for _n in _api.__all__})
__all__ += [_n for _n in _api.__all__ if _n not in __all__]
