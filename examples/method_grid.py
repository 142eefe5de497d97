"""Every method of the CAM family on the same photo and the same network, in one picture.

The pretrained EfficientNet-Lite0 on scikit-image's ``chelsea``, explaining the top
class ('Egyptian cat') with each method at the automatically chosen layer. Guided
backprop and Guided Grad-CAM are input-resolution gradients ``(3, H, W)``; they are
shown as the largest absolute value over the colour channels, clipped at its 99th
percentile so that more than a few pixels stay visible. Writes
``methods_grid.png`` and prints each method's time.

Run: ``python examples/method_grid.py``
"""
from __future__ import annotations

import os
import time

import torch

import gradattr
import gradattr.plot
from imagenet_cat import OUTPUT, load_network, load_photo

TITLES = {"grad_cam": "Grad-CAM", "grad_cam_plus_plus": "Grad-CAM++", "xgrad_cam": "XGrad-CAM",
          "hires_cam": "HiResCAM", "layer_cam": "Layer-CAM", "score_cam": "Score-CAM",
          "ablation_cam": "Ablation-CAM", "eigen_cam": "Eigen-CAM", "eigengrad_cam": "EigenGrad-CAM",
          "cam": "CAM", "guided_backprop": "Guided backprop", "guided_grad_cam": "Guided Grad-CAM"}


def main(out_dir: str = OUTPUT, quick: bool = False, methods: list[str] | None = None) -> dict:
    """Run every method (or ``methods``), write ``methods_grid.png``; return the maps and times."""
    torch.manual_seed(0)
    net, classes = load_network()
    img, x = load_photo(112 if quick else 224)
    if quick:  # a smaller photo: the same methods, a fraction of Score-CAM's forward passes
        from skimage import transform
        img = transform.resize(img, (112, 112), anti_aliasing=True)
    with torch.no_grad():
        top = int(net(x[None]).argmax())
    results = {}
    for method in methods or gradattr.list_methods():
        t0 = time.perf_counter()
        target = None if method == "eigen_cam" else top
        m = gradattr.attribute(net, x, target, method=method)
        if m.ndim == 3:  # (3, H, W) input-resolution gradients
            m = m.abs().amax(0)
            m = m.clamp(max=float(torch.quantile(m.flatten(), 0.99)))
        results[method] = (m, time.perf_counter() - t0)
        print(f"{method:20s} {results[method][1]:7.2f} s")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "methods_grid.png")
    gradattr.plot.grid(img, {TITLES.get(k, k): v[0] for k, v in results.items()}, path=path, ncols=7,
                       title=f"EfficientNet-Lite0, class '{classes[top]}': every method")
    print(f"wrote {path}")
    return {"results": results, "path": path, "top": top}


if __name__ == "__main__":
    main()
