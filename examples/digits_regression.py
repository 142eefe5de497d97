"""Grad-CAM of a regression CNN: which pixels made the net predict this rotation angle?

A port of MATLAB's gradCAM regression example (``digitsRegressionNet``)::

    reductionFcn = @(x)x;
    scoreMap = gradCAM(net, testDigit, reductionFcn, ...
        'ReductionLayer', 'fc', 'FeatureLayer', 'relu_4');

MATLAB ships a pretrained network and 28 x 28 rotated digits; here both are made
in a few seconds from scikit-learn's bundled ``load_digits`` (1797 8 x 8 digits):
each digit gets a one-pixel margin, is upsampled to 28 x 28 with
``scipy.ndimage.zoom`` and rotated with ``scipy.ndimage.rotate`` by a seeded
random angle in [-45, 45] degrees. The CNN copies digitsRegressionNet's layers
and names (conv/batchnorm/relu/avgpool blocks, ``relu_4``, ``dropout``, ``fc``)
and outputs the angle in degrees. Writes ``digits_regression.png``.

Run: ``python examples/digits_regression.py``
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

import gradattr
import gradattr.plot

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output")  # examples/output

SIZE = 28


def make_data(seed: int = 0, copies: int = 1):
    """Rotated 28 x 28 digits ``(N, 1, 28, 28)`` in [0, 1], their angles ``(N,)`` and digit labels."""
    from scipy import ndimage
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images, angles, labels = [], [], []
    for img, lab in zip(digits.images, digits.target):
        big = ndimage.zoom(np.pad(img / 16.0, 1), SIZE / 10, order=1)  # 10 x 10 -> 28 x 28
        for _ in range(copies):
            angle = float(rng.uniform(-45, 45))
            # scipy rotates counter-clockwise for a positive angle, as MATLAB's imrotate.
            images.append(np.clip(ndimage.rotate(big, angle, reshape=False, order=1), 0, 1))
            angles.append(angle)
            labels.append(int(lab))
    x = torch.tensor(np.stack(images), dtype=torch.float32)[:, None]
    return x, torch.tensor(angles, dtype=torch.float32), np.array(labels)


def digits_regression_net() -> nn.Sequential:
    """digitsRegressionNet's layers, with MATLAB's names (the input layer's zero-centring is done on the data)."""
    def block(i, c_in, c_out, pool):
        layers = [(f"conv_{i}", nn.Conv2d(c_in, c_out, 3, padding=1)),
                  (f"batchnorm_{i}", nn.BatchNorm2d(c_out)),
                  (f"relu_{i}", nn.ReLU())]
        return layers + ([(f"avgpool2d_{i}", nn.AvgPool2d(2))] if pool else [])

    return nn.Sequential(OrderedDict(
        block(1, 1, 8, True) + block(2, 8, 16, True) + block(3, 16, 32, False) + block(4, 32, 32, False)
        + [("dropout", nn.Dropout(0.2)), ("flatten", nn.Flatten()), ("fc", nn.Linear(32 * 7 * 7, 1))]))


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> list[float]:
    """Adam on the mean squared error of the angle (in units of 45 degrees), mini-batches of 32."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (-(-len(x) // 32)))
    losses = []
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for idx in perm.split(32):
            loss = ((net(x[idx]).squeeze(1) - y[idx]) / 45).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(x))
    return losses


def main(out_dir: str = OUTPUT, quick: bool = False) -> dict:
    """Train the regressor, explain one test digit, write ``digits_regression.png``; return the numbers."""
    torch.manual_seed(0)
    start = time.perf_counter()
    x, angles, labels = make_data(seed=0)
    mean = x.mean()
    x = x - mean  # MATLAB's 'zerocenter' input normalisation
    n_test = 500
    x_train, y_train, x_test, y_test = x[:-n_test], angles[:-n_test], x[-n_test:], angles[-n_test:]

    net = digits_regression_net()
    epochs = 8 if quick else 20
    losses = train(net, x_train, y_train, epochs)
    net.eval()
    with torch.no_grad():
        pred = net(x_test).squeeze(1)
    rmse = float((pred - y_test).pow(2).mean().sqrt())
    baseline = float((y_train.mean() - y_test).pow(2).mean().sqrt())  # always predict the mean angle
    train_seconds = time.perf_counter() - start
    print(f"trained {epochs} epochs in {train_seconds:.1f} s; test RMSE {rmse:.2f} degrees "
          f"(predicting the mean angle: {baseline:.2f})")

    # MATLAB explains test digit 501 (rotated +29 degrees); take the first test 7 rotated by more than
    # +20 degrees. The map explains what raises the score y, the angle: for a digit rotated the other
    # way (negative angle) it would show what argues *against* the prediction; explain -y there
    # (reduction_fn=lambda y: -y).
    test_idx = int(np.flatnonzero((labels[-n_test:] == 7) & (y_test.numpy() > 20))[0])
    test_digit = x_test[test_idx]  # (1, 28, 28): one unbatched image, as MATLAB's testDigit
    true_rot, pred_rot = float(y_test[test_idx]), float(pred[test_idx])
    score_map, feature_layer, reduction_layer = gradattr.grad_cam(
        net, test_digit, reduction_fn=lambda y: y,  # MATLAB's @(x)x: fc already gives one score
        feature_layer="relu_4", reduction_layer="fc", return_layers=True)
    peak = tuple(int(i) for i in np.unravel_index(int(score_map.argmax()), score_map.shape))
    digit = test_digit[0] + mean
    # The share of the map (rescaled to [0, 1]) that lies on the digit's strokes.
    m = gradattr.plot.rescale(score_map.numpy())
    on_digit = float((m * (digit.numpy() > 0.25)).sum() / m.sum())
    print(f"test digit {test_idx} (a {labels[-n_test:][test_idx]}): true rotation {true_rot:.1f}, "
          f"predicted {pred_rot:.1f}; map {tuple(score_map.shape)} at {feature_layer!r} -> "
          f"{reduction_layer!r}, peak at {peak}, {on_digit:.0%} of the map on the strokes")

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "digits_regression.png")
    gradattr.plot.grid(digit, {"Grad-CAM": score_map}, path=path,
                       input_title=f"True Rotation = {true_rot:.0f}\nPred Rotation = {pred_rot:.0f}",
                       title=f"test RMSE {rmse:.1f}° (mean-angle baseline {baseline:.1f}°)")
    print(f"wrote {path}")
    return {"rmse": rmse, "baseline_rmse": baseline, "true_rotation": true_rot, "pred_rotation": pred_rot,
            "peak": peak, "map": score_map, "on_digit": on_digit, "losses": losses,
            "feature_layer": feature_layer, "reduction_layer": reduction_layer,
            "train_seconds": train_seconds, "seconds": time.perf_counter() - start, "path": path}


if __name__ == "__main__":
    main()
