"""Which method should I use on my model? ``gradattr.compare`` on the pretrained EfficientNet-Lite0.

Four photos from scikit-image (cat, espresso, astronaut, rocket), each explained for the
network's top class, scored by deletion and insertion AUC (RISE), average drop and
increase in confidence (Grad-CAM++ paper) and ROAD (most- minus least-relevant first).
A ``random`` row gives the chance level. Prints the table as Markdown (the README's)
and writes ``compare_methods.md``.

Run: ``python examples/compare_methods.py``
"""
from __future__ import annotations

import os
import time

import torch

import gradattr
from imagenet_cat import OUTPUT, load_network

METHODS = ["grad_cam", "grad_cam_plus_plus", "xgrad_cam", "layer_cam", "eigen_cam", "random"]
METRICS = ["deletion", "insertion", "average_drop", "increase_in_confidence", "road"]


def photos(size: int) -> torch.Tensor:
    import numpy as np
    from skimage import data, transform

    out = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        img = transform.resize(getattr(data, name)(), (size, size), anti_aliasing=True).astype(np.float32)
        out.append(torch.from_numpy((img - 0.5) / 0.5).permute(2, 0, 1))
    return torch.stack(out)


def main(out_dir: str = OUTPUT, quick: bool = False) -> dict:
    torch.manual_seed(0)
    net, _ = load_network()
    x = photos(224)[:2] if quick else photos(224)
    steps = 10 if quick else 50
    t0 = time.perf_counter()
    table = gradattr.compare(net, x, METHODS[:2] + ["random"] if quick else METHODS, METRICS,
                             metric_options={"deletion": {"steps": steps}, "insertion": {"steps": steps}})
    md = table.to_markdown()
    print(md)
    print(f"({time.perf_counter() - t0:.0f} s)")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "compare_methods.md")
    with open(path, "w") as f:
        f.write(md + "\n")
    return {"table": table, "path": path}


if __name__ == "__main__":
    main()
