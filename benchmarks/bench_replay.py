"""Ablation-CAM with and without replaying the layers before the feature layer, on several networks.

A call of Ablation-CAM scores its copies in chunks, one pass each; from a sample's second pass
on, the modules before the feature layer are replayed (``gradattr.capture.replay``) instead of
run. This script times the same call with replaying on and off (``replay.ENABLED``), alternating
in one process, and compares the maps (``torch.equal``, else the largest difference over the
map's peak: with ``batch_size`` given both score the same copies per pass, but a replayed pass
also carries the unmodified copy for its check, and a matrix product over one more row can
round otherwise). Networks: timm's (random weights, built offline)
at 96 px with ``batch_size=32`` (many chunks), and torchvision's ResNet-50 at 224 px with the
default chunks (there replaying also lets the copies come in small chunks), and
EfficientNet-Lite0 at 224 px (its head reads the batch size from the input: whole passes; one
round, a call takes about a minute without replaying). Maps without the ReLU (``relu=False``:
random weights often give an all-zero map after it).

Usage: ``python benchmarks/bench_replay.py [--rounds 5] [--threads 1]``.
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
from gradattr.capture import replay  # noqa: E402

CASES = [  # (name, builder, input shape, options)
    ("timm vit_tiny_patch16_224, 96 px", lambda: _timm("vit_tiny_patch16_224", img_size=96), (1, 3, 96, 96),
     dict(feature_layer="blocks.11", batch_size=32)),
    ("timm resnet18, 96 px", lambda: _timm("resnet18"), (1, 3, 96, 96), dict(batch_size=32)),
    ("timm efficientnet_b0, 96 px", lambda: _timm("efficientnet_b0"), (1, 3, 96, 96), dict(batch_size=32)),
    ("timm convnext_atto, 96 px", lambda: _timm("convnext_atto"), (1, 3, 96, 96), dict(batch_size=32)),
    ("torchvision resnet50, 224 px, default chunks", lambda: _resnet50(), (1, 3, 224, 224),
     dict(feature_layer="layer4")),
    ("efficientnet-lite0, 224 px, default chunks (whole passes: its head reads the batch size)",
     lambda: _lite0(), (1, 3, 224, 224), dict(rounds=1)),
]


def _lite0():
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name("efficientnet-lite0")


def _timm(name, **kw):
    import timm
    return timm.create_model(name, pretrained=False, num_classes=10, **kw)


def _resnet50():
    import torchvision
    return torchvision.models.resnet50(num_classes=1000)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}; torch {torch.__version__}, {args.threads} thread(s), "
          f"median of {args.rounds} calls each, replaying on and off alternating")
    print("\n| network | replaying (s) | off (s) | off / replaying | forward (s) | replaying, x forward | "
          "maps |\n|---|---:|---:|---:|---:|---:|---|")
    for name, build, shape, opts in CASES:
        torch.manual_seed(0)
        net = build().eval()
        x = torch.randn(shape)
        opts = dict(opts)
        rounds = min(args.rounds, opts.pop("rounds", args.rounds))  # (a case of a minute per call: fewer)
        call = lambda: gradattr.ablation_cam(net, x, 1, upsampling="none", relu=False, **opts)  # noqa: E731
        times: dict = {True: [], False: [], "forward": []}
        maps = {}
        for enabled in (True, False):  # first calls (the two-pass path's check, the reading)
            replay.ENABLED = enabled
            call()
        for _ in range(rounds):
            for enabled in (True, False):
                replay.ENABLED = enabled
                t0 = time.perf_counter()
                maps[enabled] = call()
                times[enabled].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                net(x)
            times["forward"].append(time.perf_counter() - t0)
        replay.ENABLED = True
        on, off, fw = (statistics.median(times[k]) for k in (True, False, "forward"))
        same = torch.equal(maps[True], maps[False])
        diff = float((maps[True] - maps[False]).abs().max() / maps[False].abs().max())
        print(f"| {name} | {on:.3f} | {off:.3f} | {off / on:.2f} | {fw:.3f} | {on / fw:.2f} | "
              f"{'bit-identical' if same else f'differ by {diff:.1e} of the peak'} |", flush=True)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
