"""Cost of the tabular attributions: exact Shapley values against shap, DeepLIFT against captum.

1. ``shapley`` exact on F = 10 features with 100 background rows (every one of the 2^10
   coalitions against every background row: 102,400 rows through the network per explained
   row) on a 3-layer MLP (10 -> 64 -> 64 -> 1, ReLU), one row, against
   ``shap.KernelExplainer`` on the same coalitions (``nsamples=2^10 - 2``: it then enumerates
   every coalition; the empty and the full one are its two fixed values), the model wrapped for
   shap as a numpy function (one ``net(torch.from_numpy(...))`` per call, as its users write it).
   The two results are checked equal before they are timed; the floor is one forward pass of
   the 102,400 rows in one batch, which both need.
2. ``deep_lift`` against captum's ``DeepLift`` on the same MLP and on a small conv net with
   max pooling, a batch of rows (images), one target, baseline 0; checked equal first.

The contenders alternate within each repeat, so load on a shared machine hits both alike; a
ratio is of medians. The load average (1 min) is printed at the start and the end.

Usage: ``python benchmarks/bench_tabular.py [--repeats 5] [--threads 1]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..")]

import gradattr  # noqa: E402


def mlp(f=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(f, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)).eval()


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def bench_shapley(repeats: int) -> list[tuple]:
    import shap

    net = mlp()
    g = torch.Generator().manual_seed(1)
    x, bg = torch.randn(1, 10, generator=g), torch.randn(100, 10, generator=g)

    def f(a):
        with torch.no_grad():
            return net(torch.from_numpy(np.asarray(a, dtype=np.float32))).numpy()[:, 0]

    explainer = shap.KernelExplainer(f, bg.numpy())
    ours = lambda: gradattr.shapley(net, x, 0, background=bg, max_subsets=1024)  # noqa: E731
    theirs = lambda: explainer.shap_values(x.numpy(), nsamples=2 ** 10 - 2, silent=True)  # noqa: E731
    diff = float(np.abs(ours().numpy() - np.asarray(theirs()).reshape(1, 10)).max())
    z = torch.randn(1024 * 100, 10, generator=g)

    def floor():  # the forward pass every contender needs: the 102,400 rows in one batch
        with torch.inference_mode():
            return net(z)
    a, b, c = [], [], []
    for _ in range(repeats):
        a.append(timed(ours)[0])
        b.append(timed(theirs)[0])
        c.append(timed(floor)[0])
    return [("shapley exact, F=10, 100 background rows, 3-layer MLP", statistics.median(a),
             statistics.median(b), "shap.KernelExplainer", diff),
            ("shapley exact (as above)", statistics.median(a), statistics.median(c),
             "one forward pass of the 102,400 rows", 0.0)]


def bench_deep_lift(repeats: int) -> list[tuple]:
    from captum.attr import DeepLift

    out = []
    g = torch.Generator().manual_seed(2)
    for label, net, x in (("deep_lift, 3-layer MLP, 256 rows", mlp(), torch.randn(256, 10, generator=g)),
                          ("deep_lift, conv net with max pooling, 16 x 3x32x32",
                           conv_net(), torch.randn(16, 3, 32, 32, generator=g))):
        ours = lambda: gradattr.deep_lift(net, x, 0)  # noqa: E731
        theirs = lambda: DeepLift(net).attribute(x.clone().requires_grad_(True), target=0).detach()  # noqa: E731
        diff = float((ours() - theirs()).abs().max())
        a, b = [], []
        for _ in range(repeats):
            a.append(timed(ours)[0])
            b.append(timed(theirs)[0])
        out.append((label, statistics.median(a), statistics.median(b), "captum DeepLift", diff))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s), load {load()} at the start")
    rows = bench_shapley(args.repeats) + bench_deep_lift(args.repeats)
    print("| case | gradattr (ms) | other (ms) | other | gradattr / other | largest difference |")
    print("|---|---:|---:|---|---:|---:|")
    for label, a, b, who, diff in rows:
        print(f"| {label} | {1e3 * a:.1f} | {1e3 * b:.1f} | {who} | {a / b:.3f} | {diff:.2g} |")
    print(f"# load {load()} at the end")


if __name__ == "__main__":
    main()
