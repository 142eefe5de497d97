"""Peak memory (RSS high-water mark) of the two cases the memory budget is about.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_memory.py score_cam
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_memory.py targets

Each case runs in a fresh process: the number printed is that process's peak resident
memory minus the peak before the call (model, input and imports), in MiB.
"""
from __future__ import annotations

import resource
import sys
import time

import torch
from torch import nn

import gradattr


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_cam():
    """Score-CAM with a Conv2d(1, 64, 1) feature layer on 1 x 1 x 224 x 224."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 64, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(64, 10)).eval()
    x = torch.randn(1, 1, 224, 224)
    gradattr.grad_cam(net, x[..., :8, :8], 3, feature_layer="0")  # warm-up: imports
    return lambda: gradattr.score_cam(net, x, 3, feature_layer="0")


def targets():
    """Grad-CAM for 30,000 targets at once on a tiny network (a 30,000-class output)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(8, 30000)).eval()
    x = torch.randn(1, 1, 8, 8)
    gradattr.grad_cam(net, x, 3, feature_layer="1")
    return lambda: gradattr.grad_cam(net, x, list(range(30000)), feature_layer="1",
                                     upsampling="none")


if __name__ == "__main__":
    run = {"score_cam": score_cam, "targets": targets}[sys.argv[1]]()
    base = peak_mib()
    t = time.perf_counter()
    out = run()
    dt = time.perf_counter() - t
    print(f"{sys.argv[1]}: peak +{peak_mib() - base:.0f} MiB over {base:.0f} MiB before the call, "
          f"{dt:.2f} s, maps {tuple(out.shape)}")
