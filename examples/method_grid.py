"""Every method of the CAM family on the same photo and the same network, in one picture.

The pretrained EfficientNet-Lite0 on scikit-image's ``chelsea`` (center-cropped to
224 x 224), explaining the top class ('Egyptian cat', class 285) with each method at
the automatically chosen layer. The heat maps are each rescaled to [0, 1] and drawn in
jet over the photo. Guided backprop and Guided Grad-CAM are input-resolution gradients
``(3, H, W)``: they are drawn as RGB gradient images, normalised as in the Grad-CAM
paper's figures (``gradattr.plot.gradient_rgb``: mid-grey is zero). Writes
``methods_grid.png`` and prints each method's time.

Score-CAM (one forward pass per channel: 1280 on this layer) and Ablation-CAM take
minutes on a CPU, so they run only with ``--full``.

Run: ``python examples/method_grid.py`` (``--full`` for every method, ``--fast`` for a
112 x 112 photo).
"""
from __future__ import annotations

import time

import torch

import gradattr
import gradattr.plot
from example_utils import OUTPUT, arguments, save_path
from imagenet_cat import load_network, load_photo

TITLES = {"grad_cam": "Grad-CAM", "grad_cam_plus_plus": "Grad-CAM++", "xgrad_cam": "XGrad-CAM",
          "hires_cam": "HiResCAM", "layer_cam": "Layer-CAM", "score_cam": "Score-CAM",
          "ablation_cam": "Ablation-CAM", "eigen_cam": "Eigen-CAM (no target)",
          "eigengrad_cam": "EigenGrad-CAM", "cam": "CAM", "guided_backprop": "Guided backprop (RGB)",
          "guided_grad_cam": "Guided Grad-CAM (RGB)"}
SLOW = ("score_cam", "ablation_cam")


def main(out_dir: str = OUTPUT, quick: bool = False, methods: list[str] | None = None,
         full: bool = False) -> dict:
    """Run every method (or ``methods``; Score-CAM and Ablation-CAM only when ``full``), write
    ``methods_grid.png``; return the maps and times."""
    torch.manual_seed(0)
    net, classes = load_network()
    img, x = load_photo(112 if quick else 224)  # 112: the same methods at a quarter of the pixels
    with torch.no_grad():
        top = int(net(x[None]).argmax())
    if methods is None:
        methods = [m for m in gradattr.list_methods() if full or m not in SLOW]
        skipped = [m for m in gradattr.list_methods() if m not in methods]
        if skipped:
            print(f"left out (minutes on a CPU; --full runs them): {', '.join(skipped)}")
    results = {}
    for method in methods:
        t0 = time.perf_counter()
        target = None if method == "eigen_cam" else top  # Eigen-CAM has no target
        m = gradattr.attribute(net, x, target, method=method)  # (H, W), or (3, H, W) for the guided ones
        results[method] = (m, time.perf_counter() - t0)
        print(f"{method:20s} {results[method][1]:7.2f} s", flush=True)
    path = save_path(out_dir, "methods_grid.png")
    gradattr.plot.grid(img, {TITLES.get(k, k): v[0] for k, v in results.items()}, path=path,
                       ncols=min(7, -(-(len(results) + 1) // 2)),
                       title=f"EfficientNet-Lite0 explaining class {top} '{classes[top]}' "
                             f"({img.shape[0]} x {img.shape[1]} center crop) with each method")
    print(f"wrote {path}")
    return {"results": results, "path": path, "top": top}


if __name__ == "__main__":
    args = arguments(__doc__, fast="a 112 x 112 photo instead of 224 x 224",
                     full="also Score-CAM and Ablation-CAM (minutes on a CPU)")
    main(args.out, args.fast, full=args.full)
