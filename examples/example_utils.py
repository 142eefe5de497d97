"""What the example scripts share: where they write, their command line, and cached training.

Pictures go to ``examples/output/`` (untracked, in ``.gitignore``) unless ``--out``
says otherwise; the README's pictures are regenerated on purpose with
``--out docs/images``. Examples that train a model keep its weights in
``examples/output/cache/`` (whatever ``--out`` is), so a second run skips the
training; ``--retrain`` trains again.

The small tasks and models that several examples train (``vit_swin_sequences.py``,
``where_cams_fail.py``) live here too: the digit pairs, the series with a class window, the
training loop, the batch-first LSTM and the tiny timm ViT.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
from torch import nn

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


# ---------------------------------------------------------------- tasks and models several examples train
def digit_pairs(m: int, gen: torch.Generator):
    """``m`` images 1 x 16 x 32: two 8 x 8 digits (0 or 1) side by side, upsampled x2; label = left digit."""
    from sklearn.datasets import load_digits

    d = load_digits(n_class=2)
    images = torch.tensor(d.images, dtype=torch.float32) / 16
    labels = torch.tensor(d.target)
    i = torch.randint(0, len(images), (m,), generator=gen)
    j = torch.randint(0, len(images), (m,), generator=gen)
    x = torch.cat([images[i], images[j]], -1)[:, None]
    return nn.functional.interpolate(x, scale_factor=2), labels[i]


def series(m: int, gen: torch.Generator, steps: int):
    """``m`` series 3 x ``steps``: noise, plus a bump of sign +-1 (the class) on channel 0 at steps 20-29."""
    y = torch.randint(0, 2, (m,), generator=gen)
    x = 0.3 * torch.randn(m, 3, steps, generator=gen)
    x[:, 0, 20:30] += (2 * y - 1)[:, None].float() * 1.5
    return x, y


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch: int) -> None:
    """Adam on the cross-entropy, mini-batches in order; ``net`` is left in eval mode."""
    opt = torch.optim.Adam(net.parameters(), lr)
    net.train()
    for _ in range(epochs):
        for b in range(0, len(x), batch):
            loss = nn.functional.cross_entropy(net(x[b:b + batch]), y[b:b + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()


class SeriesLSTM(nn.Module):
    """Reads ``(N, C, T)``; a batch-first LSTM over time; classifies from the last step."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 12, batch_first=True)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        out, _ = self.rnn(x.transpose(1, 2))
        return self.fc(out[:, -1])


def tiny_vit(**options) -> nn.Module:
    """A timm ViT for the 1 x 16 x 32 digit pairs: 4 x 4 patches, width 32, 2 blocks of 2 heads
    (random weights); ``options`` go to ``timm.create_model`` (e.g. ``global_pool="avg"``)."""
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(16, 32), patch_size=4,
                             in_chans=1, num_classes=2, embed_dim=32, depth=2, num_heads=2, **options)
