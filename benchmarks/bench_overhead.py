"""Per-call overhead: gradattr's Grad-CAM against a hand-written one, captum and pytorch-grad-cam.

Where the network's arithmetic is small (a tiny conv net, a 1-D CNN, ResNet-18 at 64 px)
the fixed cost of a call shows. Every contender computes the same map (the feature
layer given explicitly, the map upsampled to the input); they run in alternation,
round after round (in a new random order each round, the same for every run), in one process (after the warm-up the heap is frozen, ``gc.freeze``, and a
garbage collection runs before each call, outside the timing: a library's leftover cycles are
not collected in the next contender's call), and the
table gives each one's median time and its
ratio to the hand-written call (forward hook, ``autograd.grad``, channel mean, ReLU,
``interpolate``). The load average is printed at the start and the end.

``--compiled`` adds a bare forward of ``torch.compile(net)`` and gradattr's call on it.
``--load`` runs a second process that keeps one core busy (a one-thread matmul loop)
while the rounds run: the case of a shared machine. ``--baseline DIR`` adds the calls of the
``gradattr`` package in ``DIR`` (an earlier checkout, e.g. ``git archive <commit> | tar -x -C DIR``),
imported under another name, so that a change's before and after share one process and its load.
``--cpu-time`` times each call by its thread's CPU time (a shared machine's other processes do not
count).

Usage: ``python benchmarks/bench_overhead.py [--rounds 300] [--device cpu|cuda] [--threads 1] [--load]``.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import gradattr  # noqa: E402


def tiny():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))


def cnn1d():
    return torch.nn.Sequential(torch.nn.Conv1d(12, 32, 5, padding=2), torch.nn.ReLU(),
                               torch.nn.Conv1d(32, 32, 5, padding=2), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(32, 5))


def resnet18():
    import torchvision
    return torchvision.models.resnet18(num_classes=10)


CASES = {  # name: (model factory, input shape, feature layer)
    "tiny conv 1x3x16x16": (tiny, (1, 3, 16, 16), "3"),
    "1-D CNN 1x12x256": (cnn1d, (1, 12, 256), "3"),
    "ResNet-18 1x3x64x64": (resnet18, (1, 3, 64, 64), "layer4"),
}


def hand_written(net, layer, x, target):
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        y = net(x)
    finally:
        h.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(y[:, target].sum(), a)
    w = g.mean(dim=tuple(range(2, g.ndim)), keepdim=True)
    cam = torch.relu((w * a).sum(1, keepdim=True))
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]
    return F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False).detach()


def load_baseline(path: str):
    """The ``gradattr`` package under ``path``, imported as ``gradattr_baseline`` (its imports
    are relative: a copy under another name is a package of its own)."""
    import importlib
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp()
    shutil.copytree(os.path.join(path, "gradattr"), os.path.join(tmp, "gradattr_baseline"))
    sys.path.insert(0, tmp)
    return importlib.import_module("gradattr_baseline")


def contenders(net, x, layer_name, device, compiled=False, baseline=None):
    layer = dict(net.named_modules())[layer_name]
    out = {
        "bare forward": lambda: net(x),
        "hand-written Grad-CAM": lambda: hand_written(net, layer, x, 1),
        "gradattr explicit layer": lambda: gradattr.grad_cam(net, x, 1, feature_layer=layer_name,
                                                             upsampling="nearest"),
        "gradattr automatic layer": lambda: gradattr.grad_cam(net, x, 1, upsampling="nearest"),
    }
    try:
        from captum.attr import LayerAttribution, LayerGradCam
        lgc = LayerGradCam(net, layer)
        out["captum LayerGradCam + interpolate"] = lambda: LayerAttribution.interpolate(
            lgc.attribute(x, 1, relu_attributions=True), tuple(x.shape[2:]))
    except ImportError:
        pass
    if x.ndim == 4:
        try:
            from pytorch_grad_cam import GradCAM
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
            def pgc_call():  # its hooks stay on the model while the object lives: one per call, as
                with GradCAM(net, [layer]) as pgc:  # its README writes it (else every other call pays them)
                    return pgc(x.cpu() if device.type == "cpu" else x, [ClassifierOutputTarget(1)])
            out["pytorch-grad-cam GradCAM"] = pgc_call
        except ImportError:
            pass
    if hasattr(gradattr, "explainer"):
        ex = gradattr.explainer(net, "grad_cam", feature_layer=layer_name, upsampling="nearest")
        out["gradattr.explainer"] = lambda: ex(x, 1)
    if baseline is not None:
        out["baseline: gradattr explicit layer"] = lambda: baseline.grad_cam(
            net, x, 1, feature_layer=layer_name, upsampling="nearest")
        bex = baseline.explainer(net, "grad_cam", feature_layer=layer_name, upsampling="nearest")
        out["baseline: gradattr.explainer"] = lambda: bex(x, 1)
    if compiled:  # the same call on torch.compile(net): its hooks run eagerly (graph breaks there)
        fast = torch.compile(net)
        out["torch.compile(net): bare forward"] = lambda: fast(x)
        out["torch.compile(net): gradattr explicit layer"] = lambda: gradattr.grad_cam(
            fast, x, 1, feature_layer="_orig_mod." + layer_name, upsampling="nearest")
    return out


def measure(fns: dict, rounds: int, device, clock=time.perf_counter) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():  # warm-up (plans, caches, allocator)
        for _ in range(5):
            f()
    gc.collect()
    gc.freeze()  # what exists now is never collected again: the collections below stay cheap
    names, shuffle = list(fns), random.Random(0).shuffle
    for r in range(rounds):
        shuffle(names)  # a new order each round: no contender always follows the same neighbour
        for k in names:
            f = fns[k]
            gc.collect()  # each call pays for its own garbage, not for another library's
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = clock()
            f()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--load", action="store_true", help="a second process keeps one core busy")
    p.add_argument("--compiled", action="store_true", help="also the calls on torch.compile(net)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--baseline", metavar="DIR", help="also time the gradattr package in DIR (an "
                   "earlier checkout), in the same process")
    p.add_argument("--cpu-time", action="store_true", help="time each call by its thread's CPU time "
                   "(time.thread_time) instead of the wall clock: what other processes take of the "
                   "core does not count (CPU only)")
    args = p.parse_args(argv)
    busy = None
    if args.load:
        busy = subprocess.Popen([sys.executable, "-c", "import torch; torch.set_num_threads(1); "
                                 "a = torch.randn(512, 512)\nwhile True: a @ a"])
        time.sleep(2)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"load average at start: {os.getloadavg()}; torch {torch.__version__}, device {device}, "
          f"{args.threads} thread(s), {args.rounds} rounds, median per call"
          f"{' (thread CPU time)' if args.cpu_time else ''}"
          f"{', a second process busy on one core' if busy else ''}")
    try:
        run_cases(args, device)
    finally:
        if busy is not None:
            busy.kill()
    print(f"\nload average at end: {os.getloadavg()}")


def run_cases(args, device):
    base = load_baseline(args.baseline) if args.baseline else None
    for case in args.cases:
        make, shape, layer = CASES[case]
        torch.manual_seed(0)
        net = make().eval().to(device)
        x = torch.randn(shape, device=device)
        med = measure(contenders(net, x, layer, device, args.compiled, base), args.rounds, device,
                      time.thread_time if args.cpu_time else time.perf_counter)
        ref = med["hand-written Grad-CAM"]
        print(f"\n{case}\n| call | median (ms) | vs hand-written |\n|---|---:|---:|")
        for k, v in med.items():
            print(f"| {k} | {v * 1e3:.3f} | {v / ref:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
