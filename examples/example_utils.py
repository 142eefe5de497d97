"""What the example scripts share: where they write, their command line, and cached training.

Pictures go to ``examples/output/`` (untracked, in ``.gitignore``) unless ``--out``
says otherwise; the README's pictures are regenerated on purpose with
``--out docs/images``. Examples that train a model keep its weights in
``examples/output/cache/`` (whatever ``--out`` is), so a second run skips the
training; ``--retrain`` trains again.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(HERE, "output")  # examples/output: untracked
CACHE = os.path.join(OUTPUT, "cache")  # trained weights of the examples that train


def arguments(doc: str | None, *, fast: str | None = None, trains: bool = False,
              full: str | None = None) -> argparse.Namespace:
    """The example's command line: ``--out``, and ``--fast``/``--full``/``--retrain`` where they apply."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    parser.add_argument("--out", default=OUTPUT, metavar="DIR",
                        help="folder for the picture (default: examples/output, untracked; "
                             "docs/images refreshes the README's)")
    if fast:
        parser.add_argument("--fast", action="store_true", help=fast)
    if full:
        parser.add_argument("--full", action="store_true", help=full)
    if trains:
        parser.add_argument("--cache", default=CACHE, metavar="DIR",
                            help="folder of the trained weights (default: examples/output/cache)")
        parser.add_argument("--retrain", action="store_true", help="train again even when weights are cached")
    args = parser.parse_args()
    args.fast = getattr(args, "fast", False)
    return args


def trained(net: torch.nn.Module, cache_dir: str | None, name: str, config: dict,
            train: Callable[[], object], retrain: bool = False) -> bool:
    """Give ``net`` its trained weights: from ``cache_dir/name.pt`` when it holds weights trained with
    the same ``config`` (and not ``retrain``), else by calling ``train()`` and saving them there
    (``cache_dir=None``: always train, save nothing). Returns True when it trained now, False when the
    weights came from the cache."""
    path = None if cache_dir is None else os.path.join(cache_dir, name + ".pt")
    if path is not None and not retrain and os.path.exists(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
        if saved.get("config") == config:
            net.load_state_dict(saved["state"])
            print(f"loaded the trained weights from {path} (--retrain to train again)")
            return False
    train()
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        torch.save({"config": config, "state": net.state_dict()}, path)
    return True


def save_path(out_dir: str, filename: str) -> str:
    """``out_dir/filename``, creating ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, filename)
