"""gradattr: class activation maps for PyTorch models of any rank (1-D, 2-D, 3-D).

The entry point :func:`grad_cam` mirrors MATLAB's ``gradCAM``; the rest of the
CAM family shares its arguments, and :func:`attribute` reaches any of them by
name (:func:`list_methods`).
"""
from .api import (ablation_cam, attribute, cam, eigen_cam, eigengrad_cam, grad_cam,
                  grad_cam_plus_plus, guided_backprop, guided_grad_cam, hires_cam, layer_cam,
                  list_methods, score_cam, xgrad_cam)
from . import metrics, plot
from .comparison import Table, compare
from .dataset import explain_dataset, load_maps
from .errors import GradattrError
from .resize import imresize
from .sliding import sliding_window

__all__ = ["grad_cam", "cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam",
           "score_cam", "ablation_cam", "eigen_cam", "eigengrad_cam", "guided_backprop",
           "guided_grad_cam", "attribute", "list_methods", "compare", "Table", "explain_dataset",
           "load_maps", "sliding_window",
           "metrics", "plot", "GradattrError", "imresize"]
__version__ = "0.1.0"
