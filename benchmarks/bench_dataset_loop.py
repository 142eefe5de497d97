"""``explain_dataset`` against a hand-written batched Grad-CAM loop on small inputs.

The 1-D CNN of ``bench_overhead.py`` over 2,048 series of 12 x 256 in batches of 64 (what a
time-series user explains by the thousand): each contender's time over the same batches, the
order shuffled each round, the median, one process and one thread. ``--baseline DIR`` also
times the gradattr package in ``DIR`` (an earlier checkout) in the same process.

    OMP_NUM_THREADS=1 python benchmarks/bench_dataset_loop.py --rounds 21
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's gradattr
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gradattr  # noqa: E402
from bench_overhead import cnn1d, hand_written, load_baseline  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--series", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--baseline", metavar="DIR", help="also time the gradattr package in DIR")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load average at start: {os.getloadavg()}; torch {torch.__version__}, 1 thread, "
          f"{args.series} series of 12 x 256 in batches of {args.batch_size}, {args.rounds} rounds")
    torch.manual_seed(0)
    net = cnn1d().eval()
    x = torch.randn(args.series, 12, 256, generator=torch.Generator().manual_seed(1))
    batches = [x[i:i + args.batch_size] for i in range(0, args.series, args.batch_size)]
    layer = net[3]

    def loop():
        for xb in batches:
            hand_written(net, layer, xb, 1)

    def through(pkg):
        def run():
            pkg.explain_dataset(net, batches, "grad_cam", target=1, feature_layer="3", on_batch=lambda b: None)
        return run

    runs = {"hand-written batched loop": loop, "gradattr.explain_dataset": through(gradattr)}
    if args.baseline:
        runs["baseline: explain_dataset"] = through(load_baseline(args.baseline))
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for k in order:
            t = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t)
    loop_s = statistics.median(times["hand-written batched loop"])
    print("| run | median (s) | series/s | time / loop |\n|---|---:|---:|---:|")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.3f} | {args.series / m:.0f} | {m / loop_s:.2f}x |")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
