"""Grad-CAM of a 1-D CNN on sequences: which time steps identify the speaker?

A port of MATLAB's gradCAM sequence example (``JapaneseVowelsConvNet``)::

    map = gradCAM(net, testSequence, label);
    subplot(2,1,1); plot(testSequence'); subplot(2,1,2); plot(map)

The data set (Kudo et al. 1999: 9 speakers saying "ae", 12 LPC cepstrum
channels, 7 to 29 time steps; 270 training and 370 test sequences) ships with
``sktime``. The CNN copies JapaneseVowelsConvNet's layers and names: causal
``conv1d_1`` (32 filters of width 3), ``relu_1``, ``layernorm_1`` (over the
channels), ``conv1d_2`` (64), ``relu_2``, ``layernorm_2``, global average
pooling over time and ``fc`` (9 speakers).

Variable lengths: the sequences are not padded. Training batches are buckets of
sequences of the same length, so global average pooling never averages padding
and a causal convolution never sees anything but the sequence; the test
sequences go through the network one at a time (MATLAB's batch of one).
Writes ``japanese_vowels.png``.

Run: ``python examples/japanese_vowels.py``
"""
from __future__ import annotations

import time
from collections import OrderedDict, defaultdict

import numpy as np
import torch
from torch import nn

import gradattr
import gradattr.plot
from example_utils import CACHE, OUTPUT, arguments, save_path, trained

SPEAKERS = [str(i) for i in range(1, 10)]  # MATLAB's categories "1" ... "9"


def load(split: str) -> tuple[list[torch.Tensor], list[str]]:
    """The ``split`` sequences as ``C x T`` float tensors (C = 12) and their speaker labels."""
    from sktime.datasets import load_japanese_vowels

    frame, y = load_japanese_vowels(split=split)
    seqs = [torch.tensor(np.stack([frame.iloc[i, c].to_numpy() for c in range(frame.shape[1])]),
                         dtype=torch.float32) for i in range(len(frame))]
    return seqs, [str(v) for v in y]


class CausalConv1d(nn.Conv1d):
    """``Conv1d`` with MATLAB's ``Padding="causal"``: zeros on the left only, output length = input length."""

    def forward(self, x):
        return super().forward(nn.functional.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))


class ChannelLayerNorm(nn.LayerNorm):
    """Layer normalisation over the channels of ``(N, C, T)``, each time step on its own."""

    def forward(self, x):
        return super().forward(x.transpose(1, -1)).transpose(1, -1)


class Standardize(nn.Module):
    """Fixed per-channel ``(x - mean) / std`` (MATLAB's sequence input normalisation)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean[:, None])
        self.register_buffer("std", std[:, None])

    def forward(self, x):
        return (x - self.mean) / self.std


class GlobalAvgPool1d(nn.Module):
    """Mean over time: ``(N, C, T) -> (N, C)``."""

    def forward(self, x):
        return x.mean(-1)


def vowels_net(mean: torch.Tensor, std: torch.Tensor, channels: int = 12, classes: int = 9) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("sequenceinput", Standardize(mean, std)),
        ("conv1d_1", CausalConv1d(channels, 32, 3)),
        ("relu_1", nn.ReLU()),
        ("layernorm_1", ChannelLayerNorm(32)),
        ("conv1d_2", CausalConv1d(32, 64, 3)),
        ("relu_2", nn.ReLU()),
        ("layernorm_2", ChannelLayerNorm(64)),
        ("globalavgpool1d", GlobalAvgPool1d()),
        ("fc", nn.Linear(64, classes)),
    ]))


def buckets(seqs: list[torch.Tensor], labels: torch.Tensor, batch: int, rng: np.random.Generator):
    """Shuffled mini-batches of sequences of one length each: ``[(x (B, C, T), y (B,)), ...]``."""
    by_len = defaultdict(list)
    for i, s in enumerate(seqs):
        by_len[s.shape[-1]].append(i)
    out = []
    for idx in by_len.values():
        idx = rng.permutation(idx)
        out += [idx[j:j + batch] for j in range(0, len(idx), batch)]
    return [(torch.stack([seqs[i] for i in b]), labels[b]) for b in (out[k] for k in rng.permutation(len(out)))]


def main(out_dir: str = OUTPUT, quick: bool = False, cache_dir: str | None = CACHE,
         retrain: bool = False) -> dict:
    """Train the 1-D CNN, explain the first test sequence, write ``japanese_vowels.png``; return the numbers."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    x_train, y_train = load("train")
    x_test, y_test = load("test")
    t_train = torch.tensor([SPEAKERS.index(v) for v in y_train])
    t_test = torch.tensor([SPEAKERS.index(v) for v in y_test])
    allsteps = torch.cat(x_train, dim=1)
    net = vowels_net(allsteps.mean(1), allsteps.std(1))

    epochs = 15 if quick else 30

    def train():
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        net.train()
        for _ in range(epochs):
            for xb, yb in buckets(x_train, t_train, 16, rng):
                loss = nn.functional.cross_entropy(net(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()

    fresh = trained(net, cache_dir, "japanese_vowels" + ("_fast" if quick else ""), {"epochs": epochs},
                    train, retrain)
    net.eval()
    with torch.no_grad():
        pred = torch.stack([net(s[None])[0] for s in x_test]).argmax(1)
    accuracy = float((pred == t_test).float().mean())
    train_seconds = time.perf_counter() - start
    print(f"{'trained' if fresh else 'loaded'} {epochs} epochs in {train_seconds:.1f} s; test accuracy {accuracy:.1%} "
          f"({len(x_test)} sequences, chance 1/9 = 11.1%)")

    test_sequence = x_test[0]  # 12 x 19, MATLAB's XTest{1}
    label = SPEAKERS[int(pred[0])]
    score_map, feature_layer, reduction_layer = gradattr.grad_cam(
        net, test_sequence, label, classes=SPEAKERS, return_layers=True)  # a (T,) vector, MATLAB's 1 x T
    peak = int(score_map.argmax())
    print(f"test sequence 1: {tuple(test_sequence.shape)}, true speaker {y_test[0]}, predicted {label}; "
          f"map {tuple(score_map.shape)} at {feature_layer!r} -> {reduction_layer!r}, "
          f"most important time step {peak}")

    path = save_path(out_dir, "japanese_vowels.png")
    gradattr.plot.sequence(test_sequence, score_map, path=path, ylabel="Grad-CAM importance",
                           title=f"Test Observation 1: speaker {y_test[0]}, predicted {label} "
                                 f"(test accuracy {accuracy:.1%})")
    print(f"wrote {path}")
    return {"accuracy": accuracy, "label": label, "true_label": y_test[0], "peak": peak,
            "map": score_map, "length": int(test_sequence.shape[-1]), "feature_layer": feature_layer,
            "reduction_layer": reduction_layer, "trained": fresh, "train_seconds": train_seconds,
            "seconds": time.perf_counter() - start, "path": path}


if __name__ == "__main__":
    args = arguments(__doc__, fast="15 epochs instead of 30", trains=True)
    main(args.out, args.fast, args.cache, args.retrain)
