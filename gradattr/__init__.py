"""gradattr: class activation maps for PyTorch models of any rank (1-D, 2-D, 3-D).

The entry point :func:`grad_cam` mirrors MATLAB's ``gradCAM``; the rest of the
CAM family shares its arguments, and :func:`attribute` reaches any of them by
name (:func:`list_methods`). Every registered method is a public function here.
"""
from . import api as _api
from .api import *  # noqa: F401,F403  (one function per registered method, attribute, list_methods)
from . import detection, metrics, plot  # plot imports matplotlib (an extra) only when it draws
from .comparison import Table, compare
from .dataset import explain_dataset, load_maps
from .errors import GradattrError, GradattrWarning
from .report import report
from .resize import imresize
from .sliding import sliding_window

__all__ = [*_api.__all__, "compare", "Table", "explain_dataset", "load_maps", "sliding_window",
           "metrics", "plot", "detection", "GradattrError", "GradattrWarning", "imresize", "report"]
__version__ = "0.5.0"
