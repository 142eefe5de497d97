"""Explaining a regressor on tabular data: Shapley values, LIME, integrated gradients and DeepLIFT.

The data are scikit-learn's bundled diabetes set (442 patients, 10 standardised features:
age, sex, body-mass index, blood pressure and six blood serum measurements; the target is a
measure of disease progression one year later). A small MLP regressor is trained on 342
patients in a second; one held-out patient is then explained four ways, each against the
training data as background (MATLAB's ``shapley(blackbox, X)`` and ``lime(blackbox, X)``):

* ``gradattr.shapley``: exact interventional Shapley values (2^10 coalitions x 100 background
  rows); they add up to the prediction minus the mean prediction on the background;
* ``gradattr.lime``: the coefficients of a weighted linear model around the patient (per unit of
  each feature), times the patient's distance from the background mean, so all four panels are
  contributions in the target's units;
* ``gradattr.integrated_gradients`` and ``gradattr.deep_lift``: from the background mean as the
  baseline (their sums: the prediction minus the prediction at the mean).

Writes ``tabular_regression.png``: the four explanations side by side, features sorted by the
size of their Shapley value, red raising the prediction and blue lowering it.

Run: ``python examples/tabular_regression.py``
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import gradattr
import gradattr.plot
from example_utils import OUTPUT, arguments, save_path

NAMES = ["age", "sex", "body-mass index", "blood pressure", "total cholesterol", "LDL", "HDL",
         "cholesterol / HDL", "triglycerides (log)", "blood sugar"]


def make_data():
    """Standardised features ``(442, 10)`` and the target in its own units, split 342 / 100."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = (d.data - d.data.mean(0)) / d.data.std(0)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = torch.tensor(x[perm], dtype=torch.float32), torch.tensor(d.target[perm], dtype=torch.float32)
    return x[:342], y[:342], x[342:], y[342:]


def train(x, y, epochs: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
    mean, sd = float(y.mean()), float(y.std())
    for _ in range(epochs):  # full batch: 342 rows
        opt.zero_grad()
        loss = ((net(x)[:, 0] - (y - mean) / sd) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():  # predict in the target's own units
        net[-1].weight.mul_(sd)
        net[-1].bias.mul_(sd).add_(mean)
    return net.eval()


def main(out_dir: str = OUTPUT, quick: bool = False) -> dict:
    x_train, y_train, x_test, y_test = make_data()
    net = train(x_train, y_train, epochs=60)  # early stopped: longer training overfits 342 patients
    with torch.no_grad():
        rmse = float(((net(x_test)[:, 0] - y_test) ** 2).mean().sqrt())
    baseline_rmse = float(((y_train.mean() - y_test) ** 2).mean().sqrt())
    background = x_train[:100]
    mean = background.mean(0, keepdim=True)
    with torch.no_grad():
        i = int((net(x_test)[:, 0] - net(background)[:, 0].mean()).abs().argmax())  # a patient far from average
    row = x_test[i:i + 1]
    fit = dict(reduction_fn=lambda y: y[:, 0])
    phi = gradattr.shapley(net, row, background=background, **fit)[0]
    beta = gradattr.lime(net, row, background=background, num_samples=2000 if quick else 5000, **fit)[0]
    ig = gradattr.integrated_gradients(net, row, baseline=mean, **fit)[0]
    dl = gradattr.deep_lift(net, row, baseline=mean, **fit)[0]
    with torch.no_grad():
        pred, avg = float(net(row)[0, 0]), float(net(background)[:, 0].mean())
        at_mean = float(net(mean)[0, 0])
    panels = {f"Shapley values (sum {float(phi.sum()):+.1f})": phi,
              "LIME coefficient x (x - mean)": beta * (row[0] - mean[0]),
              f"integrated gradients (sum {float(ig.sum()):+.1f})": ig,
              f"DeepLIFT (sum {float(dl.sum()):+.1f})": dl}
    path = save_path(out_dir, "tabular_regression.png")
    gradattr.plot.features(panels, names=NAMES, path=path, xlabel="contribution to the prediction",
                           title=f"Why the model predicts {pred:.0f} for this patient (average prediction "
                                 f"{avg:.0f}; at the mean patient {at_mean:.0f})")
    print(f"test RMSE {rmse:.1f} (predicting the mean: {baseline_rmse:.1f}); wrote {path}")
    return {"path": path, "rmse": rmse, "baseline_rmse": baseline_rmse, "prediction": pred, "average": avg,
            "at_mean": at_mean, "shapley": phi.numpy(), "lime": beta.numpy(), "integrated_gradients": ig.numpy(),
            "deep_lift": dl.numpy(), "names": NAMES}


if __name__ == "__main__":
    args = arguments(__doc__)
    main(out_dir=args.out)
