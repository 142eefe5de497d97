"""Cost of the input-level attributions against captum, and of K targets against one.

On the same model, input and target: saliency, integrated gradients (50 Gauss-Legendre
steps, baseline 0), SmoothGrad (50 noisy copies of saliency) and occlusion, gradattr against
captum (``Saliency``, ``IntegratedGradients``, ``NoiseTunnel(Saliency)``, their defaults: every
step / copy in one batch; ``Occlusion`` with the same patches, ``perturbations_per_eval`` set so
that every occluded copy is in one batch as in gradattr), on a seeded ResNet-18 (random
weights) at 64 x 64 and on a tiny
conv net at 32 x 32, one image, on the CPU with one thread. The libraries alternate within
each repeat, so load on a shared machine hits both alike; a ratio is of medians
(gradattr / captum: below 1 is faster). Then K = 10 targets in one call against one
target (captum needs one call per target: its cost is K times its single-target cost).
The load average is printed at the start and at the end.

Occlusion computes the same thing in both: patches of 1/8 of the side tiling the input
(``mask_size = stride``, whole patches only: ``mask_clipping=False``; captum's window and
stride span all channels), occluded with each channel's mean, the drop of the target's
softmax probability, every element given its one patch's drop (``upsampling="nearest"``;
captum's map averaged over channels, part of its timing). The script checks the two maps
agree (to 1e-4 of the largest drop) before timing them.

Usage: ``python benchmarks/bench_attribution.py [--repeats 5] [--threads 1]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..")]

import gradattr  # noqa: E402


def resnet18():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=1000).eval()


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def cases(net, x, target, targets):
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    n, c, *size = x.shape
    patch = [s // 8 for s in size]  # 8 patches a side, tiling the input: 64 occluded copies
    copies = 64
    mean = x.mean((2, 3), keepdim=True).expand_as(x).contiguous()

    def cap_sal(t):
        return Saliency(net).attribute(x.clone().requires_grad_(), target=t, abs=True)

    def cap_ig(t):
        return IntegratedGradients(net).attribute(x, target=t, n_steps=50)

    def cap_sg(t):
        return NoiseTunnel(Saliency(net)).attribute(x.clone().requires_grad_(), target=t, nt_type="smoothgrad",
                                                    nt_samples=50, stdevs=0.15 * float(x.max() - x.min()))
    def cap_occ(t):
        return Occlusion(lambda v: torch.softmax(net(v), 1)).attribute(
            x, sliding_window_shapes=(c, *patch), strides=(c, *patch), baselines=mean, target=t,
            perturbations_per_eval=copies).mean(1)

    def ga_occ(t):
        return gradattr.occlusion(net, x, t, mask_size=patch, stride=patch, mask_clipping=False,
                                  upsampling="nearest")

    return {
        "saliency": (lambda t: gradattr.saliency(net, x, t), cap_sal),
        "integrated_gradients (50 steps)": (lambda t: gradattr.integrated_gradients(net, x, t, steps=50), cap_ig),
        "smooth_grad (50 samples)": (lambda t: gradattr.smooth_grad(net, x, t, samples=50, seed=0), cap_sg),
        "occlusion (8 x 8 patches)": (ga_occ, cap_occ),
    }


def check_same(method, ga, cap, target):
    """The cases that compute the same thing must agree before they are timed (occlusion)."""
    if not method.startswith("occlusion"):
        return
    got, want = ga(target).detach().float(), cap(target).detach().float()
    scale = float(want.abs().max())
    if got.shape != want.shape or not scale > 0 or not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * scale):
        raise SystemExit(f"{method}: gradattr and captum disagree (shapes {tuple(got.shape)} / "
                         f"{tuple(want.shape)}, largest difference {float((got - want).abs().max()):.3g} "
                         f"of {scale:.3g})")
    print(f"{method}: gradattr equals captum (largest difference {float((got - want).abs().max()):.2g}, "
          f"largest drop {scale:.2g})", flush=True)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}  (torch {torch.__version__}, {args.threads} thread(s))")
    rows = []
    for model_name, net, size in (("ResNet-18", resnet18(), 64), ("tiny conv net", tiny(), 32)):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1, 3, size, size, generator=g)
        target, targets = 3, list(range(10))
        for method, (ga, cap) in cases(net, x, target, targets).items():
            check_same(method, ga, cap, target)
            ga(target), cap(target)  # warm-up
            t_ga, t_cap, t_ga10 = [], [], []
            for _ in range(args.repeats):
                t_ga.append(timed(lambda: ga(target)))
                t_cap.append(timed(lambda: cap(target)))
                t_ga10.append(timed(lambda: ga(targets)))
            m_ga, m_cap, m_ga10 = (statistics.median(t) for t in (t_ga, t_cap, t_ga10))
            rows.append((model_name, method, m_ga, m_cap, m_ga / m_cap, m_ga10, m_ga10 / m_ga))
            print(f"{model_name:14s} {method:32s} gradattr {m_ga * 1e3:8.1f} ms  captum {m_cap * 1e3:8.1f} ms  "
                  f"ratio {m_ga / m_cap:5.2f}  | K=10 {m_ga10 * 1e3:8.1f} ms = {m_ga10 / m_ga:5.2f} x one target "
                  f"(captum: 10 x)", flush=True)
    print()
    print("| model | method | gradattr (ms) | captum (ms) | gradattr / captum | gradattr K=10 (ms) | K=10 / K=1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2] * 1e3:.1f} | {r[3] * 1e3:.1f} | {r[4]:.2f} | {r[5] * 1e3:.1f} | {r[6]:.2f} |")
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
