"""Grad-CAM of a 3-D CNN on volumes: where in the volume is the evidence?

MATLAB's gradCAM takes ``h x w x d x c`` volumes (``image3dInputLayer``) and
upsamples the map with ``imresize3(..., "cubic")``; gradattr takes PyTorch's
``(C, D, H, W)`` and does the same. The task here is synthetic so that it trains
in about a minute and the right answer is known: each 32^3 volume is Gaussian noise
with one bright object at a random place, a ball or a cube of about the same
volume, and a small 3-D CNN says which. Writes ``volume_3d.png``: three
orthogonal slices of a cube volume through the map's maximum, the cube's
outline in white.

What the maps show: for "cube" the map peaks inside the cube in every test
volume. For "ball" it does not: with two classes the net learns to detect
cubes (their corners and flat faces) and calls everything without that
evidence a ball, so the evidence *for* "ball" is everywhere the cube detector
is silent, the background included. Grad-CAM explains the model, not the
task; the printed per-class rates show it.

Run: ``python examples/volume_3d.py``
"""
from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

import gradattr
import gradattr.plot
from example_utils import CACHE, OUTPUT, arguments, save_path, trained

SIZE = 32
CLASSES = ["ball", "cube"]


def make_volumes(n: int, seed: int, noise: float = 0.4):
    """``n`` volumes ``(n, 1, 32, 32, 32)``, labels (0 ball, 1 cube) and the objects' boolean masks."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"), -1).astype(np.float32)
    x = rng.normal(0, noise, (n, 1, SIZE, SIZE, SIZE)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    masks = np.zeros((n, SIZE, SIZE, SIZE), dtype=bool)
    for i in range(n):
        r = rng.uniform(4.0, 6.0)  # ball radius; the cube has the ball's volume: half side 0.806 r
        centre = rng.uniform(r + 1, SIZE - 2 - r, 3)
        d = grid - centre
        if labels[i] == 0:
            masks[i] = (d ** 2).sum(-1) <= r ** 2
        else:
            masks[i] = np.abs(d).max(-1) <= r * (np.pi / 6) ** (1 / 3)
        x[i, 0][masks[i]] += 1.0
    return torch.from_numpy(x), torch.from_numpy(labels), masks


def volume_net() -> nn.Sequential:
    """Three conv/batchnorm/relu blocks (32^3 -> 16^3 -> 8^3), global max pooling, a linear classifier.

    Global *max* pooling: the object is small and anywhere, so the strongest
    response wherever it is decides (with average pooling the net learns far
    slower on this task).
    """
    def block(i, c_in, c_out, pool):
        layers = [(f"conv_{i}", nn.Conv3d(c_in, c_out, 3, padding=1)), (f"batchnorm_{i}", nn.BatchNorm3d(c_out)),
                  (f"relu_{i}", nn.ReLU())]
        return layers + ([(f"maxpool_{i}", nn.MaxPool3d(2))] if pool else [])

    return nn.Sequential(OrderedDict(
        block(1, 1, 8, True) + block(2, 8, 16, True) + block(3, 16, 32, False)
        + [("globalmaxpool", nn.AdaptiveMaxPool3d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(32, 2))]))


def main(out_dir: str = OUTPUT, quick: bool = False, cache_dir: str | None = CACHE,
         retrain: bool = False) -> dict:
    """Train the 3-D CNN, explain one test volume, write ``volume_3d.png``; return the numbers."""
    torch.manual_seed(0)
    start = time.perf_counter()
    n_train, epochs = 320, 3  # 97 % test accuracy already (quick: the same)
    x_train, y_train, _ = make_volumes(n_train, seed=0)
    x_test, y_test, masks = make_volumes(100, seed=1)

    net = volume_net()

    def train():
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        net.train()
        for _ in range(epochs):
            for idx in torch.randperm(n_train, generator=g).split(16):
                loss = nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()

    fresh = trained(net, cache_dir, "volume_3d",
                    {"epochs": epochs, "volumes": n_train}, train, retrain)
    net.eval()
    with torch.no_grad():
        pred = net(x_test).argmax(1)
    accuracy = float((pred == y_test).float().mean())
    train_seconds = time.perf_counter() - start
    print(f"{'trained' if fresh else 'loaded'} {epochs} epochs on {n_train} volumes in {train_seconds:.1f} s; "
          f"test accuracy {accuracy:.0%} (chance 50%)")

    # Explain every test volume in one batched call (target None: each volume's predicted class),
    # then picture the first correctly classified cube.
    maps = gradattr.grad_cam(net, x_test)
    peaks = np.stack(np.unravel_index(maps.flatten(1).argmax(1).numpy(), maps.shape[1:]), 1)
    inside = np.array([masks[j][tuple(p)] for j, p in enumerate(peaks)])
    rates = {name: float(inside[y_test.numpy() == k].mean()) for k, name in enumerate(CLASSES)}
    print("the map's maximum is inside the object in " + ", ".join(
        f"{r:.0%} of the {name} volumes" for name, r in rates.items()))
    i = int(np.flatnonzero((pred == y_test).numpy() & (y_test.numpy() == CLASSES.index("cube")))[0])
    score_map, feature_layer, reduction_layer = gradattr.grad_cam(
        net, x_test[i], "cube", classes=CLASSES, return_layers=True)  # (1, D, H, W) -> (D, H, W)
    peak = tuple(int(v) for v in np.unravel_index(int(score_map.argmax()), score_map.shape))
    centre = tuple(round(float(c), 1) for c in np.argwhere(masks[i]).mean(0))
    print(f"volume {i} (a {CLASSES[int(y_test[i])]}): map {tuple(score_map.shape)} at {feature_layer!r} -> "
          f"{reduction_layer!r}, peak {peak}, object centre {centre}, inside: {bool(masks[i][peak])}")

    path = save_path(out_dir, "volume_3d.png")
    gradattr.plot.volume(x_test[i], score_map, path=path, at="max", contour=masks[i],
                         colorbar_label=f"Grad-CAM map of '{CLASSES[int(pred[i])]}'",
                         title=f"A {CLASSES[int(y_test[i])]} in noise (outline), predicted "
                               f"{CLASSES[int(pred[i])]}: Grad-CAM slices through the map's maximum (+)")
    print(f"wrote {path}")
    return {"accuracy": accuracy, "index": i, "label": CLASSES[int(pred[i])], "peak": peak,
            "peak_inside": bool(masks[i][peak]), "inside_rate": rates,
            "object_centre": centre, "map": score_map, "mask": masks[i],
            "feature_layer": feature_layer, "reduction_layer": reduction_layer,
            "trained": fresh, "train_seconds": train_seconds, "seconds": time.perf_counter() - start, "path": path}


if __name__ == "__main__":
    args = arguments(__doc__, trains=True)
    main(args.out, args.fast, args.cache, args.retrain)
