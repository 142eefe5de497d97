"""Does memory stay flat over many calls? (issue 10: the 10,000-call leak check, as a benchmark)

Runs ``--calls`` calls (default 10,000) of each case on a small CNN and prints the resident set size
(RSS, from ``/proc/self/status``) after a warm-up of ``--warmup`` calls and then every ``--calls / 10``
calls, with the growth from the warm-up mark to the end. Cases:

* ``grad_cam``: the same model and input, the automatic layer (the plan cache is hit every time).
* ``grad_cam_layers``: alternating between two explicit layers and two targets.
* ``score_cam``: the masked-input path (fewer channels, so it stays quick).
* ``new_models``: a fresh model for every call, each holding a reference back to itself (the case that
  kept every model alive in 0.1's plan cache); also counts the models still alive afterwards.
* ``errors``: calls that fail with ``GradattrError`` (a bad target), which must not leave hooks or
  borrowed state behind.

Linux only (reads ``/proc``). Run: ``python benchmarks/bench_leak.py`` (about 3 minutes on a 2-core
CPU), ``--calls 1000`` for a quick look. Memory is not timed in the tests: CI machines are too noisy for
a byte threshold, so the figure goes in the issue's closing note instead.
"""
from __future__ import annotations

import argparse
import gc
import time
import weakref

import torch
from torch import nn

import gradattr
from gradattr.errors import GradattrError


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def small_cnn() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    return net.eval()


class SelfReferencing(nn.Module):
    """A model whose submodule keeps a plain reference to the root (e.g. a callback owner)."""

    def __init__(self):
        super().__init__()
        self.body = small_cnn()
        self.body.__dict__["owner"] = self  # not a registered submodule: a plain attribute


    def forward(self, x):
        return self.body(x)


def run_case(name: str, step, calls: int, warmup: int) -> dict:
    for i in range(warmup):
        step(i)
    gc.collect()
    start = rss_kib()
    marks = []
    t0 = time.perf_counter()
    every = max(1, calls // 10)
    for i in range(calls):
        step(warmup + i)
        if (i + 1) % every == 0:
            gc.collect()
            marks.append(rss_kib())
    seconds = time.perf_counter() - t0
    end = marks[-1]
    print(f"{name:16s} {calls:6d} calls in {seconds:6.1f} s; RSS after warm-up {start / 1024:7.1f} MiB, "
          f"end {end / 1024:7.1f} MiB, growth {end - start:+6d} KiB "
          f"(max over the 10 marks {max(marks) - start:+d} KiB)", flush=True)
    return {"case": name, "calls": calls, "start_kib": start, "end_kib": end, "marks_kib": marks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--cases", default="grad_cam,grad_cam_layers,score_cam,new_models,errors")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = small_cnn()
    x = torch.rand(1, 3, 16, 16)
    x_before = x.clone()
    state_before = {k: v.clone() for k, v in net.state_dict().items()}
    print(f"torch {torch.__version__}, gradattr {gradattr.__version__}; small CNN on 1 x 3 x 16 x 16")

    alive: list[weakref.ref] = []

    def new_model(i):
        m = SelfReferencing()
        alive.append(weakref.ref(m))
        gradattr.grad_cam(m, x, i % 5)

    def bad_target(i):
        try:
            gradattr.grad_cam(net, x, 99)
        except GradattrError:
            pass
        else:
            raise AssertionError("target 99 of 5 classes was accepted")

    steps = {
        "grad_cam": lambda i: gradattr.grad_cam(net, x, i % 5),
        "grad_cam_layers": lambda i: gradattr.grad_cam(net, x, [i % 5, (i + 1) % 5],
                                                       feature_layer="2" if i % 2 else "4"),
        "score_cam": lambda i: gradattr.score_cam(net, x, i % 5, feature_layer="2"),
        "new_models": new_model,
        "errors": bad_target,
    }
    for name in args.cases.split(","):
        calls = args.calls // 10 if name == "score_cam" else args.calls
        run_case(name, steps[name], calls, args.warmup)
    gc.collect()
    still = sum(r() is not None for r in alive)
    if alive:
        print(f"new_models: {still} of {len(alive)} models still alive after gc.collect()")
    unchanged = torch.equal(x, x_before) and all(torch.equal(v, net.state_dict()[k])
                                                 for k, v in state_before.items())
    print(f"input and model state bit-identical after every case: {unchanged}")
    print(f"hooks left on the model: {sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())}")


if __name__ == "__main__":
    main()
