"""Cost of integrated_gradients' Gauss-Legendre nodes before the model runs (issue 30, item 7).

numpy's ``leggauss`` (what gradattr used for every step count, and captum uses) against
:func:`gradattr.methods.quadrature.gauss_legendre` (leggauss up to 100 points, Bogaert's O(n)
formulas beyond), side by side in one process: wall time and the peak of Python-tracked
memory (``tracemalloc``; numpy reports its arrays to it) of computing the nodes and weights.
``leggauss`` builds an n x n matrix, so its larger counts take minutes and gigabytes:
``--old-up-to`` says up to which count it is run (default 8000).

    python benchmarks/bench_ig_nodes.py --steps 4000,8000,20000 --old-up-to 8000
"""
from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from gradattr.methods.quadrature import gauss_legendre


def measure(f, n: int):
    """(seconds, peak MiB, result) of one call ``f(n)``."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        result = f(n)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()
    return seconds, peak, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="4000,8000,20000")
    ap.add_argument("--old-up-to", type=int, default=8000)
    args = ap.parse_args()
    gauss_legendre(101)  # imports scipy.special once, as the first call in a process does
    np.polynomial.legendre.leggauss(101)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    print("| steps | leggauss s | leggauss peak MiB | gauss_legendre s | gauss_legendre peak MiB | max node diff |")
    print("|---|---|---|---|---|---|")
    for n in (int(v) for v in args.steps.split(",")):
        new = measure(gauss_legendre, n)
        if n <= args.old_up_to:
            old = measure(np.polynomial.legendre.leggauss, n)
            dx = float(np.abs(old[2][0] - new[2][0]).max())
            print(f"| {n} | {old[0]:.2f} | {old[1]:.0f} | {new[0]:.4f} | {new[1]:.2f} | {dx:.1e} |", flush=True)
        else:
            print(f"| {n} | not run | not run | {new[0]:.4f} | {new[1]:.2f} | - |", flush=True)
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
