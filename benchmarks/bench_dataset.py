"""Throughput of explain_dataset on 1, 2, ... processes (torch.distributed, gloo on CPU) and on one GPU.

    python benchmarks/bench_dataset.py                      # CPU: 1 and 2 processes
    python benchmarks/bench_dataset.py --procs 1,2,4 --device cpu
    python benchmarks/bench_dataset.py --procs 1 --device cuda

Each configuration explains the same synthetic data set (``--samples`` random
images, ``--size`` pixels, batches of ``--batch-size``) with Grad-CAM of a
randomly initialised torchvision ResNet-18 and writes the shards to a temporary
folder. Several processes split the CPU cores evenly (``torch.set_num_threads``),
as ``torchrun`` does with OMP_NUM_THREADS, so on a 2-core machine 2 processes can
gain little: the one process already uses both cores. The time is the slowest
rank's, from a barrier before its first batch to one after its last (process
start-up and imports excluded). The maps of every configuration are checked equal
to the first one's.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gradattr

GPU_COMMAND = ("torchrun --nproc-per-node N -m gradattr explain-dataset IMAGES/ --model MODEL "
               "--size 224 --batch-size 32 --out-dir maps/")


def _setup(samples: int, size: int):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(samples, 3, size, size)
    return net, torch.utils.data.TensorDataset(x)


def _run(rank: int, world: int, port: int, args, out: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world) if args.threads == 0 else args.threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    net, ds = _setup(args.samples, args.size)
    if args.device == "cuda":
        net = net.to(f"cuda:{rank}")
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size)
    if world > 1:
        dist.barrier()
    if args.device == "cuda":
        gradattr.grad_cam(net, ds.tensors[0][:2], 0)  # CUDA context and kernels, not timed
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    gradattr.explain_dataset(net, loader, "grad_cam", target=0, out_dir=out)
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        Path(out, "seconds.txt").write_text(repr(seconds))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=96)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--procs", default="1,2", help="process counts, comma-separated")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="threads per process (0: cores / processes)")
    args = p.parse_args(argv)
    procs = [int(v) for v in args.procs.split(",")]
    print(f"explain_dataset, grad_cam of ResNet-18 (random weights), {args.samples} images "
          f"3x{args.size}x{args.size}, batch {args.batch_size}, device {args.device}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
    print(f"{'processes':>9}  {'seconds':>8}  {'images/s':>9}  {'speed-up':>8}")
    first = base = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in procs:
            out = str(Path(tmp, f"p{n}"))
            if n == 1:
                _run(0, 1, 0, args, out)
            else:
                mp.spawn(_run, args=(n, _free_port(), args, out), nprocs=n, join=True)
            seconds = float(Path(out, "seconds.txt").read_text())
            maps = gradattr.load_maps(out)
            if first is None:
                first, base = maps, seconds
            same = "same maps" if np.array_equal(maps, first) else \
                f"max difference {np.abs(maps - first).max():.2e}"
            print(f"{n:>9}  {seconds:>8.2f}  {args.samples / seconds:>9.1f}  {base / seconds:>7.2f}x  {same}")
    print(f"\nOn N GPUs (one process each, nccl):\n  {GPU_COMMAND}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
