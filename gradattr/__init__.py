"""gradattr: class activation maps for PyTorch models of any rank (1-D, 2-D, 3-D).

The entry point :func:`grad_cam` mirrors MATLAB's ``gradCAM``.
"""
from .api import grad_cam
from .errors import GradattrError
from .resize import imresize

__all__ = ["grad_cam", "GradattrError", "imresize"]
__version__ = "0.1.0"
