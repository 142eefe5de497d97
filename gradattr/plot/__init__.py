"""Pictures of maps: images, sequences, volumes and side-by-side comparisons.

matplotlib is an optional dependency (``pip install "gradattr[plot]"``) imported
only when a function here is called. Every function returns the
``matplotlib.figure.Figure`` and writes a PNG when given ``path``. The figure
behaves like any matplotlib figure: when your program uses pyplot (``import
matplotlib.pyplot as plt``, as any script that calls ``plt.show()`` or
``plt.savefig()`` does, and every notebook), the figure is made by pyplot and is
its current figure, so ``plt.savefig("a.png")``, ``plt.show()`` and ``plt.gcf()``
work after the call, exactly as after ``plt.figure()``. A program that never
imports pyplot (the command line, a server) gets figures on the Agg canvas that
pyplot never sees: gradattr itself never imports pyplot, opens no window and
keeps no figure alive.

Pictures as arrays, for saving with any image library or logging to TensorBoard:
:func:`overlay_array` (``H x W x 3`` uint8, pytorch-grad-cam's
``show_cam_on_image``, torch-cam's ``overlay_mask``), :func:`volume_array` (three
orthogonal slices side by side), :func:`sequence_array` and :func:`figure_array`
(any figure rendered to pixels), and :func:`to_pil` (a Pillow image).

Inputs may be torch tensors (any device, with or without grad) or numpy arrays.
An input is min-max scaled for display; a map is rescaled to [0, 1] like
MATLAB's ``rescale`` (a constant map becomes 0) and drawn with ``cmap`` on top of
the input, as MATLAB's ``imshow(X); hold on; imagesc(scoreMap, AlphaData=0.5);
colormap jet`` does, with a colorbar (``colorbar=True``) that reads in the map's
own values where one map is drawn.

Input-resolution gradients ``(C, H, W)`` (guided backprop, Guided Grad-CAM) are
not heat maps: :func:`gradient` draws them as an RGB image, normalised as in the
Grad-CAM paper's figures (:func:`gradient_rgb`), and :func:`grid` does the same
for any ``(3, H, W)`` entry.

Where each function lives: ``images`` (overlay, grid, gradient, overlay_array),
``sequences``, ``volumes``, ``tabular`` (features), ``pixels`` (figure_array,
to_pil); ``canvas`` and ``values`` hold what they share (the figure, the checked
arrays).
"""
from .canvas import require_matplotlib  # noqa: F401  (the command line checks for matplotlib before any work)
from .images import gradient, gradient_rgb, grid, overlay, overlay_array
from .pixels import figure_array, to_pil
from .sequences import sequence, sequence_array
from .tabular import LOWERS, RAISES, features  # noqa: F401  (the bar colours)
from .values import rescale
from .volumes import volume, volume_array

__all__ = ["overlay", "sequence", "volume", "grid", "gradient", "gradient_rgb", "rescale",
           "overlay_array", "volume_array", "sequence_array", "figure_array", "to_pil", "features"]
