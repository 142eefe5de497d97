"""Cost of the masked-input methods (Score-CAM, Group-CAM, SS-CAM, IS-CAM, RISE).

1. Score-CAM on a seeded ResNet-18 (random weights, ``layer4``, 224 px): gradattr
   (forward passes under ``torch.inference_mode``, chunks from the memory budget or a
   given ``batch_size``, optionally a channels_last model) against pytorch-grad-cam's
   ``ScoreCAM`` (batches of 16 under ``no_grad``), timed in alternating repeats so
   that load on a shared machine hits both alike; the ratio is of medians.
2. Group-CAM against Score-CAM on the four photos of ``examples/compare_methods.py``
   with EfficientNet-Lite0: seconds and insertion/deletion (``gradattr.compare``).

Usage: ``python benchmarks/bench_perturbation.py [--device cuda] [--repeats 3]``.
``BENCH_DATA=file.pt`` (a dict with ``photos`` (4, 3, 224, 224)) replaces scikit-image.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path[:0] = [os.path.join(os.path.dirname(__file__), ".."), os.path.join(os.path.dirname(__file__), "..", "examples")]

import gradattr  # noqa: E402


def resnet18(device):
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=1000).eval().to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def pgc_score_cam(net, x, target, batch_size=16):
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    cam = ScoreCAM(net, [net.layer4])
    cam.batch_size = batch_size
    import tqdm
    import functools
    orig = tqdm.tqdm
    tqdm.tqdm = functools.partial(orig, disable=True)
    try:
        return cam(x, [ClassifierOutputTarget(target)])
    finally:
        tqdm.tqdm = orig


def channels_last_input(fn):
    import gradattr.scorer as probe

    def run():
        probe.CHANNELS_LAST = True
        try:
            return fn()
        finally:
            probe.CHANNELS_LAST = False
    return run


def bench_score_cam(device, repeats, size):
    net = resnet18(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, size, size, generator=g).to(device)
    net_cl = resnet18(device).to(memory_format=torch.channels_last)
    variants = {
        "pytorch-grad-cam ScoreCAM (bs 16)": lambda: pgc_score_cam(net, x, 3),
        "gradattr score_cam (bs 16)": lambda: gradattr.score_cam(net, x, 3, feature_layer="layer4", batch_size=16),
        "gradattr score_cam (bs 64)": lambda: gradattr.score_cam(net, x, 3, feature_layer="layer4", batch_size=64),
        "gradattr score_cam (channels_last input, bs 16)": channels_last_input(
            lambda: gradattr.score_cam(net, x, 3, feature_layer="layer4", batch_size=16)),
        "gradattr group_cam": lambda: gradattr.group_cam(net, x, 3, feature_layer="layer4"),
    }
    if device.type == "cuda":
        for fn in variants.values():  # warm-up (cuDNN autotune, allocator)
            fn()
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            times[k].append(timed(fn, device)[0])
    base = statistics.median(times["pytorch-grad-cam ScoreCAM (bs 16)"])
    print(f"\nScore-CAM, ResNet-18 layer4, {size} px, {device}, {repeats} alternating repeats (median s):")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"  {k:52s} {med:8.3f} s  (x{base / med:5.2f} vs pytorch-grad-cam)  all: "
              + " ".join(f"{t:.3f}" for t in v))
    a = gradattr.score_cam(net, x, 3, feature_layer="layer4", batch_size=16, upsampling="none")
    b = gradattr.score_cam(net_cl, x.contiguous(memory_format=torch.channels_last), 3,
                           feature_layer="layer4", batch_size=16, upsampling="none")
    print(f"  channels_last vs plain map: max abs diff {float((a - b).abs().max()):.2e} "
          f"(map max {float(a.abs().max()):.2e})")
    return times


def photos():
    data = os.environ.get("BENCH_DATA")
    if data:
        return torch.load(data)["photos"]
    from compare_methods import photos as ph
    return ph(224)


def bench_group_vs_score(device, size, layer, masks=2000, steps=None):
    from imagenet_cat import load_effnet
    import torch.nn.functional as F
    net = load_effnet().to(device)
    x = photos().to(device)
    if size != 224:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    methods = ["score_cam", "group_cam", "rise", "grad_cam", "random"]
    opts = {"rise": {"masks": masks}}
    if layer:
        opts.update({m: {"feature_layer": layer} for m in ("score_cam", "group_cam", "grad_cam")})
    metric_options = {} if steps is None else {"deletion": {"steps": steps}, "insertion": {"steps": steps}}
    t = gradattr.compare(net, x, methods, ["deletion", "insertion"], method_options=opts, device=device,
                         metric_options=metric_options)
    print(f"\nEfficientNet-Lite0, the 4 photos of compare_methods.py at {size} px, layer "
          f"{layer or 'automatic'}, {device}:")
    print(t)
    rows = {r["method"]: r for r in t.rows}
    print(f"  group_cam / score_cam time: {rows['group_cam']['seconds'] / rows['score_cam']['seconds']:.3f}")
    return t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--skip-score", action="store_true")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--masks", type=int, default=2000, help="RISE masks in the comparison")
    ap.add_argument("--steps", type=int, default=None, help="deletion/insertion steps")
    ap.add_argument("--compare-size", type=int, default=224)
    ap.add_argument("--layer", default=None, help="EfficientNet feature layer for the comparison")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if not a.skip_score:
        bench_score_cam(device, a.repeats, a.size)
    if not a.skip_compare:
        bench_group_vs_score(device, a.compare_size, a.layer, a.masks, a.steps)


if __name__ == "__main__":
    main()
