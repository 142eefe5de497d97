"""Grad-CAM of a volume larger than the model's input, window by window (as MONAI infers).

Models for CT/MR volumes are usually trained on patches and run on a whole scan
with sliding-window inference. ``gradattr.sliding_window`` explains the scan the
same way: it cuts the windows MONAI's ``sliding_window_inference`` cuts
(``roi_size``, ``overlap``), explains each one with any method, and blends the
window maps with the same Gaussian weights.

The data are synthetic so that the answer is known: a small 3-D CNN learns, in a
few seconds, whether a 16^3 noise patch holds a bright cube. The "scan" is a
96 x 96 x 48 noise volume with three cubes. Its Grad-CAM for "cube" is computed
on 16^3 windows with overlap 0.5 and should light up the three cubes and little
else. Writes ``sliding_window_volume.png``: maximum projections of the volume and
of the map along the depth, the cubes outlined.

Run: ``python examples/sliding_window_volume.py`` (about 10 s on a 2-core CPU)
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

import gradattr
from example_utils import OUTPUT, arguments, save_path

PATCH = 16
CUBES = [((10, 14, 20), 6), ((52, 60, 8), 5), ((70, 20, 30), 6)]  # (corner h, w, d), side


def patches(n: int, rng: np.random.Generator):
    x = rng.normal(0, 0.5, (n, 1, PATCH, PATCH, PATCH)).astype(np.float32)
    y = rng.integers(0, 2, n)
    for i in np.flatnonzero(y):
        s = rng.integers(4, 8)
        h, w, d = rng.integers(0, PATCH - s + 1, 3)
        x[i, 0, h:h + s, w:w + s, d:d + s] += 1.5
    return torch.from_numpy(x), torch.from_numpy(y)


def train(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(16, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        x, y = patches(32, rng)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = patches(256, rng)
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    print(f"patch classifier: accuracy {accuracy:.3f} on 256 new patches")
    return net.eval()


def scan(rng: np.random.Generator) -> np.ndarray:
    vol = rng.normal(0, 0.5, (1, 96, 96, 48)).astype(np.float32)
    for (h, w, d), s in CUBES:
        vol[0, h:h + s, w:w + s, d:d + s] += 1.5
    return vol


def main(out_dir: str = OUTPUT) -> dict:
    """Train the patch classifier, explain the scan window by window, write the picture; return the numbers."""
    t0 = time.perf_counter()
    net = train()
    vol = scan(np.random.default_rng(1))
    t1 = time.perf_counter()
    cam = gradattr.sliding_window("grad_cam", net, vol, (PATCH, PATCH, PATCH), overlap=0.5, target=1,
                                  sw_batch_size=64).numpy()
    t2 = time.perf_counter()
    inside = np.zeros(cam.shape, bool)
    for (h, w, d), s in CUBES:
        inside[h:h + s, w:w + s, d:d + s] = True
    share = cam[inside].sum() / cam.sum()
    print(f"map {cam.shape} in {t2 - t1:.1f} s; {100 * share:.0f}% of the map's mass lies in the cubes, "
          f"which are {100 * inside.mean():.1f}% of the volume (training {t1 - t0:.1f} s)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for ax, img, title in ((axes[0], vol[0].max(axis=2), "volume, max over depth"),
                           (axes[1], cam.max(axis=2), "Grad-CAM of class 'cube', max over depth")):
        im = ax.imshow(img, cmap="gray" if ax is axes[0] else "jet")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).set_label(
            "intensity" if ax is axes[0] else "Grad-CAM (raw)", fontsize=8)
        for (h, w, _), s in CUBES:
            ax.add_patch(Rectangle((w - 0.5, h - 0.5), s, s, fill=False, edgecolor="white", lw=1.2))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"96x96x48 volume, 16^3 windows, overlap 0.5, gaussian blending "
                 f"({100 * share:.0f}% of the map in the cubes)", fontsize=10)
    fig.tight_layout()
    path = save_path(out_dir, "sliding_window_volume.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return {"share": float(share), "volume_share": float(inside.mean()), "path": path}


if __name__ == "__main__":
    main(arguments(__doc__).out)
