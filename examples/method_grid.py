"""Every method of the CAM family on the same photo and the same network, in one picture.

The pretrained EfficientNet-Lite0 on scikit-image's ``chelsea`` (center-cropped to
224 x 224), explaining the top class ('Egyptian cat', class 285) with each method at
the automatically chosen layer. The heat maps are each rescaled to [0, 1] and drawn in
jet over the photo. Guided backprop and Guided Grad-CAM are input-resolution gradients
``(3, H, W)``: they are drawn as RGB gradient images, normalised as in the Grad-CAM
paper's figures (``gradattr.plot.gradient_rgb``: mid-grey is zero). Writes
``methods_grid.png`` and prints each method's time.

The perturbation methods (Score-CAM: one forward pass per channel, 1280 on this layer;
Ablation-CAM, SS-CAM, IS-CAM, Group-CAM), RISE (4000 masked passes) and FullGrad take
minutes on a CPU, so they run only with ``--full`` (on a GPU when there is one).

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



def title(method: str) -> str:
    """The method's name from the registry, with what the panel shows when it is not a class map."""
    info = gradattr.method_info(method)
    if info.returns == "pixels":
        return f"{info.title} (RGB)"
    if method == "deep_feature_factorization":
        return f"{info.title} (concept 1)"
    return info.title if info.needs_target else f"{info.title} (no target)"


def slow(method: str) -> bool:
    """Perturbation methods (one forward pass per channel or mask) take minutes on a CPU."""
    return gradattr.method_info(method).family == "perturbation CAM" or method in ("rise", "full_grad")


def main(out_dir: str = OUTPUT, quick: bool = False, methods: list[str] | None = None,
         full: bool = False, device: str = "auto") -> dict:
    """Run every method (or ``methods``; Score-CAM and Ablation-CAM only when ``full``), write
    ``methods_grid.png``; return the maps and times."""
    torch.manual_seed(0)
    net, classes = load_network()
    img, x = load_photo(112 if quick else 224)  # 112: the same methods at a quarter of the pixels
    with torch.no_grad():
        top = int(net(x[None]).argmax())
    if methods is None:
        methods = [m for m in gradattr.list_methods() if full or not slow(m)]
        skipped = [m for m in gradattr.list_methods() if m not in methods]
        if skipped:
            print(f"left out (minutes on a CPU; --full runs them): {', '.join(skipped)}")
    results = {}
    for method in methods:
        t0 = time.perf_counter()
        target = top if gradattr.method_info(method).needs_target else None  # Eigen-CAM has none
        m = gradattr.attribute(net, x, target, method=method, device=device)  # (H, W); (3, H, W) guided
        if method == "deep_feature_factorization":
            m = m[0]  # (concepts, H, W): the first concept
        m = m.cpu()
        results[method] = (m, time.perf_counter() - t0)
        print(f"{method:20s} {results[method][1]:7.2f} s", flush=True)
    path = save_path(out_dir, "methods_grid.png")
    gradattr.plot.grid(img, {title(k): v[0] for k, v in results.items()}, path=path,
                       ncols=min(7, -(-(len(results) + 1) // 2)),
                       title=f"EfficientNet-Lite0 explaining class {top} '{classes[top]}' "
                             f"({img.shape[0]} x {img.shape[1]} center crop) with each method")
    print(f"wrote {path}")
    return {"results": results, "path": path, "top": top}


if __name__ == "__main__":
    args = arguments(__doc__, fast="a 112 x 112 photo instead of 224 x 224",
                     full="also the perturbation methods, RISE and FullGrad (minutes on a CPU)")
    main(args.out, args.fast, full=args.full, device="cuda" if torch.cuda.is_available() else "auto")
