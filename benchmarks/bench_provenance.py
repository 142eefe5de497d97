"""Cost of token provenance (gradattr.provenance) on the first, automatic-layer call.

A known plan (every call after the first) runs no observer, so provenance costs it nothing.
The first call of a model and input shape observes the pass (grids, attention, and the
positions each token holds); this script times that call side by side, in one process, with
provenance on and with its per-operation step switched off (``Shadows.step`` a no-op), round
after round in alternation, the plan cache cleared before each call. It prints each case's
median and the ratio, with the 1-minute load average at the start and the end.

Usage: ``python benchmarks/bench_provenance.py [--rounds 30]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import gradattr  # noqa: E402
from gradattr import capture, provenance  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_overhead import resnet18, tiny  # noqa: E402  (the same models as the per-call benchmark)


def vit():
    import timm
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64)


CASES = {"tiny conv 1x3x16x16": (tiny, (1, 3, 16, 16)), "ResNet-18 1x3x64x64": (resnet18, (1, 3, 64, 64)),
         "ViT-Ti/16 1x3x64x64": (vit, (1, 3, 64, 64))}


def first_call(net, x) -> float:
    capture.PLANS._store.clear()
    t0 = time.perf_counter()
    gradattr.grad_cam(net, x, 1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    step = provenance.Shadows.step
    for name, (make, shape) in CASES.items():
        torch.manual_seed(0)
        net, x = make().eval(), torch.randn(*shape)
        on, off = [], []
        first_call(net, x)
        for _ in range(args.rounds):
            provenance.Shadows.step = step
            on.append(first_call(net, x))
            provenance.Shadows.step = lambda *a, **k: None
            off.append(first_call(net, x))
        provenance.Shadows.step = step
        a, b = statistics.median(on), statistics.median(off)
        print(f"{name:24s} first call: provenance on {a * 1e3:7.2f} ms, off {b * 1e3:7.2f} ms, ratio {a / b:.2f}")
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
