"""Which method should I use on my model? ``gradattr.compare`` on the pretrained EfficientNet-Lite0.

Four photos from scikit-image (cat, espresso, astronaut, rocket), center-cropped to
224 x 224, each explained for the network's top class, scored by deletion and
insertion AUC (RISE), average drop and increase in confidence (Grad-CAM++ paper) and
ROAD (most- minus least-relevant first). A ``random`` row gives the chance level.
Prints the table as Markdown (the README's) and writes ``compare_methods.md``.

Run: ``python examples/compare_methods.py`` (``--fast``: two photos, three methods,
10 deletion/insertion steps; ``--full``: also Score-CAM, Group-CAM, RISE and FullGrad, minutes
on a CPU, seconds on a GPU, which is used when there is one).
"""
from __future__ import annotations

import time

import torch

import gradattr
from example_utils import OUTPUT, arguments, save_path
from imagenet_cat import load_network, load_photo

METHODS = ["grad_cam", "grad_cam_plus_plus", "xgrad_cam", "layer_cam", "eigen_cam", "random"]
SLOW = ["score_cam", "group_cam", "rise", "full_grad"]  # --full
METRICS = ["deletion", "insertion", "average_drop", "increase_in_confidence", "road"]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def photos(size: int = 224, names=PHOTOS) -> torch.Tensor:
    """The photos center-cropped to ``size`` x ``size``, as one ``(N, 3, size, size)`` batch in [-1, 1]."""
    return torch.stack([load_photo(size, name)[1] for name in names])


def main(out_dir: str = OUTPUT, quick: bool = False, full: bool = False, device: str = "auto") -> dict:
    torch.manual_seed(0)
    net, _ = load_network()
    x = photos(224, PHOTOS[:2] if quick else PHOTOS)
    steps = 10 if quick else 50
    methods = METHODS[:2] + ["random"] if quick else METHODS[:-1] + (SLOW if full else []) + METHODS[-1:]
    print(f"scoring {len(methods)} methods x {len(METRICS)} metrics on {len(x)} photos ...", flush=True)
    t0 = time.perf_counter()
    table = gradattr.compare(net, x, methods, METRICS, device=device,
                             metric_options={"deletion": {"steps": steps}, "insertion": {"steps": steps}})
    md = table.to_markdown()
    print(md)
    print(f"({time.perf_counter() - t0:.0f} s)")
    path = save_path(out_dir, "compare_methods.md")
    with open(path, "w") as f:
        f.write(md + "\n")
    return {"table": table, "path": path}


if __name__ == "__main__":
    args = arguments(__doc__, fast="two photos, three methods, 10 deletion/insertion steps",
                     full="also Score-CAM, Group-CAM, RISE and FullGrad (minutes on a CPU)")
    main(args.out, args.fast, args.full, device="cuda" if torch.cuda.is_available() else "auto")
