"""The timed parts of ``benchmarks/gpu_check.sh`` (issue 27, goal 4): ratios on one GPU, side by side.

* ``grad_cam`` against a forward pass with autograd on (parameters requiring grad, what
  users have) on ResNet-50 at 224 px, batch 1 and 16 (goal: <= 1.15x);
* ``explain_dataset`` (Grad-CAM, maps to a callback) against a plain forward loop over
  the same batches at 112 px (goal: throughput >= 0.8x the loop's);
* ``integrated_gradients`` (50 steps) against captum's ``IntegratedGradients`` (goal: <= 1.0x).

Every contender runs in alternation, round after round, with ``torch.cuda.synchronize()``
around each call; medians. ``--small`` runs the same code with tiny sizes (ResNet-18 at
32 px, batches of 2, 2 rounds), on the CPU if there is no GPU: a check that the script runs,
not a measurement.

Usage: ``python benchmarks/gpu_check.py [--device cuda] [--rounds 10] [--small]``.
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


def timed(fns: dict, rounds: int, device: torch.device) -> dict:
    """Median seconds of each call, alternating, after one warm-up call each."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def model(name: str, device: torch.device):
    import torchvision
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=1000).eval().to(device)


def grad_cam_vs_forward(args, device, report):
    name, size = ("resnet18", 32) if args.small else ("resnet50", 224)
    net = model(name, device)
    for batch in ((1, 2) if args.small else (1, 16)):
        x = torch.randn(batch, 3, size, size, device=device)
        med = timed({"fwd": lambda: net(x),
                     "grad_cam": lambda: gradattr.grad_cam(net, x, 1, feature_layer="layer4")},
                    args.rounds, device)
        report(f"grad_cam / forward, {name} {size} px b{batch}", med["grad_cam"], med["fwd"], "<= 1.15")


def dataset_vs_loop(args, device, report):
    size, batch, count = (32, 2, 4) if args.small else (112, 32, 16)
    net = model("resnet18", device)
    torch.manual_seed(1)
    batches = [torch.randn(batch, 3, size, size, device=device) for _ in range(count)]

    def loop():
        for b in batches:
            net(b)

    def dataset():
        gradattr.explain_dataset(net, batches, "grad_cam", target=1, on_batch=lambda maps: None)
    med = timed({"loop": loop, "explain_dataset": dataset}, args.rounds, device)
    # throughput ratio: the loop's time over explain_dataset's (goal >= 0.8)
    report(f"explain_dataset throughput / forward loop, resnet18 {size} px, {count} x b{batch}",
           med["loop"], med["explain_dataset"], ">= 0.8")


def ig_vs_captum(args, device, report):
    from captum.attr import IntegratedGradients

    size = 32 if args.small else 224
    net = model("resnet18", device)
    x = torch.randn(1, 3, size, size, device=device)
    ig = IntegratedGradients(net)
    med = timed({"captum": lambda: ig.attribute(x, target=1, n_steps=50),
                 "gradattr": lambda: gradattr.integrated_gradients(net, x, 1, steps=50)},
                args.rounds, device)
    report(f"integrated_gradients (50 steps) / captum, resnet18 {size} px b1", med["gradattr"],
           med["captum"], "<= 1.0")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--small", action="store_true", help="tiny sizes (a check that it runs, not a measurement)")
    args = p.parse_args(argv)
    if args.small:
        args.rounds = min(args.rounds, 2)
        if args.device == "cuda" and not torch.cuda.is_available():
            args.device = "cpu"
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"load average at start: {os.getloadavg()}; torch {torch.__version__}, {where}, "
          f"{args.rounds} rounds{', --small: tiny sizes, not a measurement' if args.small else ''}")
    print("\n| check | ratio | goal |\n|---|---:|---|")

    def report(what, a, b, goal):
        print(f"| {what} | {a / b:.2f} | {goal} |", flush=True)
    for part in (grad_cam_vs_forward, dataset_vs_loop, ig_vs_captum):
        part(args, device, report)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
