"""Grad-CAM of a semantic segmenter: why is *this region* labelled class c?

MATLAB's gradCAM sums a class over the spatial dims of a segmentation output
(Vinogradova et al. 2020: replace the class score y^c by the sum of y^c_ij over
a pixel set S), so one passes either a class index (S = the whole image) or a
reduction function that sums over a region::

    reductionFcn = @(y) sum(y(:,:,c) .* mask, "all");

The data: pairs of scikit-learn ``load_digits`` digits (each upsampled to
20 x 20 with ``scipy.ndimage.zoom``) side by side on a 20 x 40 canvas, each
stroke pixel labelled with its digit (classes 1-10 for digits 0-9, 0 for the
background). A small fully convolutional net (an encoder to 5 x 10, upsampled
and joined with the full-resolution features, per-pixel logits
``(N, 11, H, W)``) learns it in about a minute on a 2-core CPU. Writes ``segmentation.png``.

Run: ``python examples/segmentation.py``
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

import gradattr
import gradattr.plot
from example_utils import CACHE, OUTPUT, arguments, save_path, trained

H, W = 20, 40
CLASSES = ["background"] + [f"digit {d}" for d in range(10)]


def digit_images():
    """The 1797 digits upsampled to 20 x 20 in [0, 1], and their labels."""
    from scipy import ndimage
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.stack([np.clip(ndimage.zoom(np.pad(im / 16.0, 1), 2, order=1), 0, 1) for im in d.images])
    return imgs.astype(np.float32), d.target


def make_pairs(imgs, labels, pool: np.ndarray, n: int, seed: int):
    """``n`` canvases ``(n, 1, 20, 40)`` with two different digits from ``pool``, and ``(n, 20, 40)`` labels."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, H, W), np.float32)
    y = np.zeros((n, H, W), np.int64)
    for i in range(n):
        a = rng.choice(pool)
        b = rng.choice(pool[labels[pool] != labels[a]])
        for j, k in enumerate((a, b)):
            x[i, 0, :, j * 20:(j + 1) * 20] = imgs[k]
            y[i, :, j * 20:(j + 1) * 20] = np.where(imgs[k] > 0.3, labels[k] + 1, 0)
    return torch.from_numpy(x), torch.from_numpy(y)


def conv_block(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitSegmenter(nn.Module):
    """Encoder ``enc1`` (20 x 40) -> ``enc2`` (10 x 20) -> ``enc3``, ``enc4`` (5 x 10); decoder: ``enc4``
    upsampled x4, joined with ``enc1``, two 1 x 1 convolutions to per-pixel logits (``score``)."""

    def __init__(self, classes: int = len(CLASSES)):
        super().__init__()
        self.enc1, self.enc2 = conv_block(1, 16), conv_block(16, 32)
        self.enc3, self.enc4 = conv_block(32, 64), conv_block(64, 64)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)
        self.head = nn.Sequential(nn.Conv2d(16 + 64, 32, 1), nn.ReLU())
        self.score = nn.Conv2d(32, classes, 1)

    def forward(self, x):
        f1 = self.enc1(x)
        deep = self.enc4(self.enc3(self.pool(self.enc2(self.pool(f1)))))
        return self.score(self.head(torch.cat([f1, self.up(deep)], 1)))


def main(out_dir: str = OUTPUT, quick: bool = False, cache_dir: str | None = CACHE,
         retrain: bool = False) -> dict:
    """Train the segmenter (or load it from ``cache_dir``), explain a region and the whole image, write
    ``segmentation.png``. ``quick`` changes nothing (the default is already the smallest that learns)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    imgs, labels = digit_images()
    order = np.random.default_rng(0).permutation(len(imgs))
    train_pool, test_pool = order[:1400], order[1400:]  # test canvases use digits never trained on
    n_train, epochs = 1200, 4  # enough for 97 % pixel accuracy; fewer canvases fall far short (quick: the same)
    x_train, y_train = make_pairs(imgs, labels, train_pool, n_train, seed=0)
    x_test, y_test = make_pairs(imgs, labels, test_pool, 200, seed=1)

    net = DigitSegmenter()

    def train():
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        net.train()
        for _ in range(epochs):
            for idx in torch.randperm(n_train, generator=g).split(32):
                loss = nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()

    fresh = trained(net, cache_dir, "segmentation",
                    {"epochs": epochs, "canvases": n_train}, train, retrain)
    net.eval()
    with torch.no_grad():
        pred = net(x_test).argmax(1)
    pixel_acc = float((pred == y_test).float().mean())
    stroke = y_test > 0
    stroke_acc = float((pred[stroke] == y_test[stroke]).float().mean())
    train_seconds = time.perf_counter() - start
    print(f"{'trained' if fresh else 'loaded'} {epochs} epochs on {n_train} canvases in {train_seconds:.1f} s; test pixel accuracy "
          f"{pixel_acc:.1%}, on digit strokes {stroke_acc:.1%} (11 classes)")

    # The first test canvas whose two digits are both segmented as their true classes (majority vote).
    def majority(p, half):
        v = p[:, half * 20:(half + 1) * 20]
        v = v[v > 0]
        return int(v.mode().values) if v.numel() else 0

    def truth(i, half):
        v = y_test[i][:, half * 20:(half + 1) * 20]
        return int(v[v > 0].mode().values)

    i = next(j for j in range(len(x_test))
             if all(majority(pred[j], h) == truth(j, h) for h in (0, 1)))
    c_left, c_right = truth(i, 0), truth(i, 1)
    x = x_test[i]  # (1, 20, 40): one unbatched image
    halves = torch.zeros(2, H, W, dtype=torch.bool)
    halves[0, :, :20], halves[1, :, 20:] = True, True
    region_left = (pred[i] == c_left) & halves[0]  # the pixels the net labels c_left, on the left
    region_right = (pred[i] == c_right) & halves[1]

    def region_sum(c, mask):  # MATLAB's reductionFcn: class c's logits summed over the region
        return lambda y: (y[:, c] * mask.to(y)).sum((-2, -1))

    deep = "enc4"  # the 5 x 10 encoder output: deep enough to know the digit, still spatial
    m_left = gradattr.grad_cam(net, x, reduction_fn=region_sum(c_left, region_left), feature_layer=deep)
    m_right = gradattr.grad_cam(net, x, reduction_fn=region_sum(c_right, region_right), feature_layer=deep)
    m_whole, feature_layer, reduction_layer = gradattr.grad_cam(  # the class by name, looked up in CLASSES
        net, x, CLASSES[c_left], classes=CLASSES, feature_layer=deep, return_layers=True)
    # target=c on a spatial output is class c summed over every pixel: the same as this reduction_fn.
    m_sum = gradattr.grad_cam(net, x, reduction_fn=lambda y: y[:, c_left].sum((-2, -1)), feature_layer=deep)
    whole_vs_sum = float((m_whole - m_sum).abs().max() / m_whole.abs().max())

    def share(m, half):  # the share of a map's mass on one half of the canvas
        m = m.clamp(min=0)  # bicubic upsampling of a ReLU'd map can undershoot 0 a little (as in MATLAB)
        return float(m[halves[half]].sum() / m.sum())

    shares = {"left_region_on_left": share(m_left, 0), "right_region_on_right": share(m_right, 1),
              "whole_image_on_left": share(m_whole, 0)}
    print(f"test canvas {i}: {CLASSES[c_left]!r} | {CLASSES[c_right]!r}; maps at {feature_layer!r} -> "
          f"{reduction_layer!r}. Region map of the left digit: {shares['left_region_on_left']:.0%} of its "
          f"mass on the left; region map of the right digit: {shares['right_region_on_right']:.0%} on the "
          f"right; class {CLASSES[c_left]!r} over the whole image: {shares['whole_image_on_left']:.0%} on the left and "
          f"equal to the sum-over-all-pixels reduction_fn (relative difference {whole_vs_sum:.1e})")

    path = save_path(out_dir, "segmentation.png")
    names = [f"why is this region '{CLASSES[c_left]}'?", f"why is this region '{CLASSES[c_right]}'?",
             f"why is the image '{CLASSES[c_left]}'?\n(the class summed over all pixels)"]
    gradattr.plot.grid(
        x, dict(zip(names, (m_left, m_right, m_whole))), path=path, ncols=2,
        input_title=f"input: {CLASSES[c_left]} | {CLASSES[c_right]}\n(test pixel accuracy {pixel_acc:.0%})",
        contours={names[0]: region_left, names[1]: region_right},
        title=f"Grad-CAM of a segmenter at {feature_layer!r}: a class's logits summed over a region "
              f"(outlined) or over the whole image")
    print(f"wrote {path}")
    return {"pixel_accuracy": pixel_acc, "stroke_accuracy": stroke_acc, "index": i,
            "classes": (c_left, c_right), "shares": shares, "whole_vs_sum": whole_vs_sum,
            "maps": {"left": m_left, "right": m_right, "whole": m_whole}, "titles": names,
            "feature_layer": feature_layer, "reduction_layer": reduction_layer,
            "trained": fresh, "train_seconds": train_seconds, "seconds": time.perf_counter() - start, "path": path}


if __name__ == "__main__":
    args = arguments(__doc__, trains=True)
    main(args.out, args.fast, args.cache, args.retrain)
