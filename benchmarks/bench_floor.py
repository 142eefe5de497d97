"""The perturbation methods against their floor: the forward passes they must run, and nothing else.

For each method the forward passes of the whole network that one call runs are
recorded (their inputs, copied by a pre-hook on the model); the floor replays the same
passes on the same inputs, under ``torch.inference_mode``: what the method cannot avoid. The method and its
floor run in alternation in one process, ``--repeats`` times each; the table gives the
medians and their ratio (goal: <= 1.1). Ablation-CAM runs the network's tail after the
feature layer, not whole passes: its floor replays the tail passes (recorded at the layer after
``layer4``: ``avgpool``) on the same feature maps. Three more columns for it, as multiples of one
forward pass: ``capture + tail`` (one forward pass plus that floor: issue 27's floor, a capture
pass and the layers after the feature layer on the 1 + C copies, made beforehand), the same
chunks as whole passes (per chunk one pass whose ``layer4`` output is the chunk, plus one
forward pass for the capture when the capture pass did not carry the first chunk: what each
chunk would cost if the layers before ``layer4`` ran in every pass), and gradattr with the
replaying of the layers before the feature layer off (``gradattr.capture.replay.ENABLED``), in
the same rounds. Ablation-CAM is called once before it is recorded
and timed: a first call per network runs the two-pass path (its check learns whether the
capture pass may carry the copies); its time is printed on its own line.

``--tail-chunks 2049 257 65 ...`` times, instead, only what Ablation-CAM's copies cost after
the capture: per chunk of at most that many rows (the unmodified map and the copies with one
channel zeroed) the buffer filled and the layers after ``layer4`` (average pool, fc) run on it,
over all C channels, as a multiple of one forward pass; and says whether every copy's score is
bit-identical to the one-chunk scores (a chunk's size can change a matrix product's rounding).
It runs the tail as a function of its own, which a hooked pass of a general network cannot do:
there each chunk after the one the capture pass carries costs a pass of the layers before the
feature layer.

Usage: ``python benchmarks/bench_floor.py [--sizes 112 224] [--repeats 3] [--threads 2]
[--device cpu|cuda] [--methods score_cam ...] [--model resnet18|resnet50] [--tail-chunks N ...]``.
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


def without_replay(call):
    """``call()`` with the replaying of the layers before the feature layer off
    (``gradattr.capture.replay.ENABLED``): every pass runs them, as before it existed."""
    from gradattr.capture import replay

    def run():
        replay.ENABLED = False
        try:
            call()
        finally:
            replay.ENABLED = True
    return run


def tail_chunks(net, x, sizes, repeats, device):
    """The copies' tail of Ablation-CAM (fill, average pool, fc) in chunks of each of ``sizes``
    rows, against one forward pass; whether each copy's score is the one-chunk score bit for bit."""
    store = {}
    h = net.layer4.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    with torch.inference_mode():
        net(x)
    h.remove()
    a = store["a"]
    c = a.shape[1]
    head = torch.nn.Sequential(net.avgpool, torch.nn.Flatten(1), net.fc)

    def run(size):
        out = torch.empty(c, 1000, device=device)
        with torch.inference_mode():
            buf, start = None, 0
            while start < c:
                b = min(c - start, size - 1)
                if buf is None or buf.shape[0] < 1 + b:
                    buf = a.new_empty(1 + b, *a.shape[1:])  # fresh per call, as Ablation-CAM's
                copies = buf[:1 + b]
                copies.copy_(a.expand_as(copies))
                rows = torch.arange(1, 1 + b, device=device)
                copies[rows, rows + (start - 1)] = 0
                out[start:start + b] = head(copies)[1:]
                start += b
        return out
    ref = run(c + 1)
    same = {n: torch.equal(run(n), ref) for n in sizes}
    times = {n: [] for n in sizes}
    fw = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            net(x)
        sync(device)
        fw.append(time.perf_counter() - t0)
        for n in sizes:
            t0 = time.perf_counter()
            run(n)
            sync(device)
            times[n].append(time.perf_counter() - t0)
    f = statistics.median(fw)
    print(f"forward pass: {f * 1e3:.1f} ms\n\n| rows per chunk | chunks | copies' tail (s) | x forward | "
          "scores bit-identical to one chunk |\n|---:|---:|---:|---:|---|")
    for n in sizes:
        m = statistics.median(times[n])
        print(f"| {n} | {-(-c // (n - 1))} | {m:.3f} | {m / f:.2f} | {'yes' if same[n] else 'no'} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50"])
    p.add_argument("--tail-chunks", type=int, nargs="+", metavar="ROWS",
                   help="time Ablation-CAM's copies' tail in chunks of these many rows instead")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    net = resnet(args.model, device)
    if args.tail_chunks:
        print(f"load average at start: {os.getloadavg()}; torch {torch.__version__}, {device}, "
              f"{args.threads} thread(s), {args.model} layer4, {args.sizes[0]} px, median of {args.repeats}")
        torch.manual_seed(1)
        tail_chunks(net, torch.randn(1, 3, args.sizes[0], args.sizes[0], device=device),
                    args.tail_chunks, args.repeats, device)
        print(f"\nload average at end: {os.getloadavg()}")
        return
    print(f"load average at start: {os.getloadavg()}; torch {torch.__version__}, {device}, "
          f"{args.threads} thread(s), {args.model} layer4, median of {args.repeats}; 'x forward': "
          "the method's time over one forward pass of the input")
    print("\n| size | method | forward passes (images) | gradattr (s) | floor (s) | ratio | x forward | "
          "capture + tail, x forward | floor as passes, x forward | without replaying, x forward |"
          "\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
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
                fns["no replay"] = without_replay(call)
            else:
                shapes = record(net, call)
                base = floor(net, shapes)
            times = {"gradattr": [], "floor": [], "forward": [], "passes": [], "no replay": []}
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
            issue = f"{(fw + fl) / fw:.2f}" if name == "ablation_cam" else "-"
            off = f"{statistics.median(times['no replay']) / fw:.2f}" if times["no replay"] else "-"
            print(f"| {size} | {name} | {len(shapes)} ({images}) | {g:.2f} | {fl:.2f} | {g / fl:.2f} | "
                  f"{g / fw:.2f} | {issue} | {passes} | {off} |", flush=True)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
