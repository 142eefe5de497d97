"""The perturbation methods against their floor: the forward passes they must run, and nothing else.

For each method the forward passes of the whole network that one call runs are
recorded (their inputs, copied by a pre-hook on the model); the floor replays the same
passes on the same inputs, under ``torch.inference_mode``: what the method cannot avoid. The method and its
floor run in alternation in one process, ``--repeats`` times each; the table gives the
medians and their ratio (goal: <= 1.1). Ablation-CAM runs the network's tail after the
feature layer, not whole passes: its floor replays the tail passes (recorded at the
layer after ``layer4``: ``avgpool``) on the same feature maps; the last column gives its floor
as whole passes (per chunk of copies one pass whose ``layer4`` output is the chunk, plus one
forward pass of the input for the capture when the capture pass did not carry the first
chunk), as a multiple of one forward pass. Ablation-CAM is called once before it is recorded
and timed: a first call per network runs the two-pass path (its check learns whether the
capture pass may carry the copies); its time is printed on its own line.

Usage: ``python benchmarks/bench_floor.py [--sizes 112 224] [--repeats 3] [--threads 2]
[--device cpu|cuda] [--methods score_cam ...] [--model resnet18|resnet50]``.
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

METHODS = {  # name: options (layer4: C = 512 on ResNet-18, 2048 on ResNet-50)
    "score_cam": {},
    "ss_cam": dict(samples=4),
    "is_cam": dict(samples=4),
    "group_cam": {},
    "rise": dict(masks=512),
    "ablation_cam": {},
}


def resnet(name, device):
    import torchvision
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=1000).eval().to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def record(module, fn) -> list[torch.Tensor]:
    """Copies of the input of every call of ``module`` while ``fn()`` runs."""
    shapes = []
    h = module.register_forward_pre_hook(lambda m, i: shapes.append(i[0].detach().clone()))
    try:
        fn()
    finally:
        h.remove()
    return shapes


def floor(module, inputs):
    """Replay the forward passes of ``module`` on the recorded ``inputs``."""
    def run():
        with torch.inference_mode():
            for t in inputs:
                module(t)
    return run


def pass_floor(net, x, chunks, capture=True):
    """Ablation-CAM's floor as whole passes: one forward pass of ``x`` (the capture, unless it
    carried the first chunk), then per recorded chunk one pass of ``x`` whose ``layer4`` output is
    replaced by the chunk (the layers after it run on the copies), under ``torch.inference_mode``."""
    def run():
        with torch.inference_mode():
            if capture:
                net(x)
            for t in chunks:
                h = net.layer4.register_forward_hook(lambda m, i, o, t=t: t)
                try:
                    net(x)
                finally:
                    h.remove()
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    net = resnet(args.model, device)
    print(f"load average at start: {os.getloadavg()}; torch {torch.__version__}, {device}, "
          f"{args.threads} thread(s), {args.model} layer4, median of {args.repeats}; 'x forward': "
          "the method's time over one forward pass of the input")
    print("\n| size | method | forward passes (images) | gradattr (s) | floor (s) | ratio | x forward | "
          "floor as passes, x forward |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        torch.manual_seed(1)
        x = torch.randn(1, 3, size, size, device=device)
        for name in args.methods:
            opts = dict(METHODS[name])
            if "feature_layer" in gradattr.method_info(name).options:
                opts["feature_layer"] = "layer4"
            call = (lambda: getattr(gradattr, name)(net, x, 281, **opts))
            fns = {}
            if name == "ablation_cam":
                t0 = time.perf_counter()
                call()  # the first call per network: the two-pass path and its check
                print(f"(first ablation_cam call at {size} px: {time.perf_counter() - t0:.2f} s)", flush=True)
                tail = net.avgpool
                shapes = record(tail, call)
                base = floor(torch.nn.Sequential(net.avgpool, torch.nn.Flatten(1), net.fc), shapes)
                fns["passes"] = pass_floor(net, x, [t for t in shapes if t.shape[0] > x.shape[0]],
                                           capture=shapes[0].shape[0] == x.shape[0])
            else:
                shapes = record(net, call)
                base = floor(net, shapes)
            times = {"gradattr": [], "floor": [], "forward": [], "passes": []}
            one = floor(net, [x])
            fns.update(gradattr=call, floor=base, forward=one)
            for _ in range(args.repeats):
                for k, f in fns.items():
                    sync(device)
                    t0 = time.perf_counter()
                    f()
                    sync(device)
                    times[k].append(time.perf_counter() - t0)
            g, fl = statistics.median(times["gradattr"]), statistics.median(times["floor"])
            fw = statistics.median(times["forward"])
            images = sum(s.shape[0] for s in shapes)
            passes = f"{statistics.median(times['passes']) / fw:.2f}" if times["passes"] else "-"
            print(f"| {size} | {name} | {len(shapes)} ({images}) | {g:.2f} | {fl:.2f} | {g / fl:.2f} | "
                  f"{g / fw:.2f} | {passes} |", flush=True)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
