"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018): does the map change when the model is randomised?

A small CNN is trained in seconds to tell scikit-learn's digits 0 and 1 apart (8 x 8 px, upsampled
to 16 x 16; weights cached in ``examples/output/cache``). Then
``gradattr.metrics.randomization_check`` re-initialises its layers from the output back (a cascade:
``fc``, then ``conv3``, ``conv2``, ``conv1``, each by ``torch.manual_seed(seed + j);
layer.reset_parameters()`` on a copy) and measures the Spearman rank correlation of each method's map
with the trained model's, per held-out input. A method that explains the model should lose its
picture as soon as the top layer is random; Guided Backprop is the paper's counter-example, and
integrated gradients (like gradient x input) keeps the shape of the input itself. The numbers move
with the seed of the re-initialisation (``seed=``): after ``fc``, over seeds 0, 1 and 2, Grad-CAM
0.05, -0.06, 0.01; saliency 0.28, 0.81, 0.70; integrated gradients 0.88, 0.97, 0.94; guided
backprop 0.63, 0.51, 0.80.

Maps: Grad-CAM signed (``relu=False``: a random top layer often turns all the evidence negative,
and the ReLU would leave an empty map, whose similarity is NaN), the input attributions (saliency,
integrated gradients, guided backprop) summed in absolute value over the channel (as in the
paper's figures).

Prints the mean similarity after each step and writes ``sanity_checks.png`` (the curves, and one
input's maps along the cascade). Run: ``python examples/sanity_checks.py`` (a few seconds on a CPU;
``--fast``: 16 inputs).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

import gradattr
from example_utils import CACHE, OUTPUT, arguments, digit_pairs, fit, save_path, trained

METHODS = ("grad_cam", "saliency", "integrated_gradients", "guided_backprop")
LABELS = {"grad_cam": "Grad-CAM\n(signed)", "saliency": "saliency", "integrated_gradients": "integrated\ngradients",
          "guided_backprop": "guided\nbackprop"}


def digits_cnn() -> nn.Module:
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 8, 3, padding=1)), ("relu1", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(8, 16, 3, padding=1)), ("relu2", nn.ReLU()),
        ("conv3", nn.Conv2d(16, 16, 3, padding=1)), ("relu3", nn.ReLU()),
        ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(16, 2))]))


def recorder(method: str, seen: list):
    """``method`` as a callable ``(net, x, target) -> (N, H, W)`` maps that also keeps each map it makes
    (the check calls it on the trained network first, then on each step's copy)."""
    def run(net, x, target):
        options = {"relu": False} if method == "grad_cam" else {}
        m = gradattr.attribute(net, x, target, method=method, **options)[:, 0]  # target: one class per row
        m = m.abs().sum(1) if m.ndim == 4 else m  # input attributions: |.| summed over the channel
        seen.append(m.detach())
        return m
    return run


def main(out_dir: str = OUTPUT, quick: bool = False, cache_dir: str | None = CACHE, retrain: bool = False) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(0)
    x, y = digit_pairs(600, gen)  # the left digit of each pair is the class: keep it alone
    xt, yt = digit_pairs(16 if quick else 64, gen)
    x, xt = x[..., :16], xt[..., :16]
    torch.manual_seed(0)
    net = digits_cnn()
    options = {"epochs": 10, "lr": 3e-3, "batch": 50}
    config = {**options, "net": "3 convs, GAP, one digit"}  # a cached model of another architecture is not reused
    trained(net, cache_dir, "sanity_checks_cnn", config, lambda: fit(net, x, y, **options), retrain)
    net.eval()
    with torch.no_grad():
        accuracy = float((net(xt).argmax(1) == yt).float().mean())
    print(f"held-out accuracy {accuracy:.2f} on {len(xt)} digits")
    similarity, maps = {}, {}
    for method in METHODS:
        seen: list = []
        steps = gradattr.metrics.randomization_check(net, xt, yt[:, None], method=recorder(method, seen))
        similarity[method] = {layer: float(np.nanmean(v.numpy())) for layer, v in steps.items()}
        maps[method] = [m[0] for m in seen]  # the first input: trained, then after each step
    layers = list(similarity[METHODS[0]])
    header = "method".ljust(22) + "".join(f"{'+ ' + name:>10}" for name in layers)
    print("mean Spearman similarity to the trained model's map, cascade from the output:")
    print(header)
    for method in METHODS:
        print(method.ljust(22) + "".join(f"{similarity[method][k]:>10.2f}" for k in layers))
    path = save_path(out_dir, "sanity_checks.png")
    figure(plt, similarity, maps, xt[0, 0], int(yt[0]), layers).savefig(path, dpi=110)
    plt.close("all")
    return {"path": path, "similarity": similarity, "accuracy": accuracy, "layers": layers}


def figure(plt, similarity, maps, image, label, layers):
    """The curves (left) and one input's maps along the cascade (right, one row per method)."""
    fig = plt.figure(figsize=(15, 6.6), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 2.1])
    ax = left.subplots()
    steps = ["trained"] + [f"+ {k}" for k in layers]
    for method, marker in zip(METHODS, "osD^"):
        ax.plot(range(len(steps)), [1.0] + list(similarity[method].values()), marker=marker,
                label=LABELS[method].replace("\n", " "))
    ax.set_xticks(range(len(steps)), steps)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylim(-0.3, 1.05)
    ax.set_xlabel("layers re-initialised (cascade from the output)")
    ax.set_ylabel("Spearman similarity to the trained map (mean)")
    ax.set_title("Cascading randomisation")
    ax.legend(loc="lower left")
    grid = right.subplots(len(METHODS), len(steps) + 1)
    for r, method in enumerate(METHODS):
        grid[r, 0].imshow(image, cmap="gray")
        grid[r, 0].set_ylabel(LABELS[method], fontsize=11)
        for c, m in enumerate(maps[method]):
            grid[r, c + 1].imshow(m.numpy(), cmap="jet")
            if r == 0:
                grid[r, c + 1].set_title(steps[c], fontsize=11)
        for a in grid[r]:
            a.set_xticks([])
            a.set_yticks([])
    grid[0, 0].set_title(f"input (class {label})", fontsize=11)
    right.suptitle("Maps of one input as the layers are randomised (each map scaled to its own range)")
    return fig


if __name__ == "__main__":
    args = arguments(__doc__, fast="16 held-out inputs", trains=True)
    main(args.out, args.fast, args.cache, args.retrain)
