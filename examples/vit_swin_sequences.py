"""Grad-CAM on a ViT, a Swin, a batch-first LSTM and a Transformer encoder, with nothing but ``grad_cam(net, x, c)``.

Images: pairs of scikit-learn ``load_digits`` zeros and ones side by side (16 x 32 px); the label is
the *left* digit, the right one is a distractor of either class. A tiny timm ViT (4 x 4 patches,
average-pooled tokens) and a tiny timm Swin (channels-last stages, average pooled) learn it in
seconds. gradattr reads the ViT's ``(N, 32, C)`` tokens as a 4 x 8 grid (from the patch embedding's
stride) and the Swin's ``(N, H, W, C)`` output channels-last, at layers it picks itself: no
``reshape_transform``, no grid to guess. Each title gives the share of the map's mass on the left
half (0.5 is chance).

Series: 3 channels x 50 time steps of noise whose class (the sign of a bump) is carried by channel 0
at steps 20-29 only. A batch-first LSTM's output sequence and a batch-first ``nn.TransformerEncoder``'s
``(N, T, d_model)`` tokens are read over time (``input_format="BCT"`` tells gradattr the input is a
series: nothing in a Transformer says so). Each title gives the share of the map's mass in steps
20-29 (0.2 is chance).

What the maps show, measured on 200 held-out inputs (medians): the Swin puts 0.67 of its map on the
left digit, the ViT 0.56 (chance 0.5): after self-attention every token carries the whole input, so
the last token layer localises weakly on a network this small. The LSTM classifies from its last
step only, so Grad-CAM's channel weights come from that step's gradient and the map shows where the
hidden state resembles it (the same few steps for every input), not the window (0.00). The
Transformer encoder's map is nearly flat (0.20) for the ViT's reason. These are what Grad-CAM gives
at these layers, not reading errors: each map equals the naive Grad-CAM with the hand-written
transpose (``tests/test_architectures.py``).

The panel titles give each shown input's own share; the figure's title, the printed lines and
``vit_swin_sequences.json`` (written beside the picture) give the medians over the 200 inputs, the
numbers the README quotes (``tests/test_new_user.py`` compares the README with
``docs/images/vit_swin_sequences.json``).

Writes ``vit_swin_sequences.png`` and ``vit_swin_sequences.json``. Run: ``python examples/vit_swin_sequences.py`` (about 20 s on a 2-core CPU,
less once the weights are cached).
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
from torch import nn

import gradattr
from example_utils import (CACHE, OUTPUT, SeriesLSTM, arguments, digit_pairs, fit, save_path, series, tiny_vit,
                           trained)


class SeriesTransformer(nn.Module):
    """Reads ``(N, C, T)``; a batch-first Transformer encoder with learned positions; mean over time."""

    def __init__(self, d: int = 16, steps: int = 50):
        super().__init__()
        self.embed = nn.Linear(3, d)
        self.pos = nn.Parameter(0.1 * torch.randn(1, steps, d))
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc = nn.Linear(d, 2)

    def forward(self, x):
        return self.fc(self.encoder(self.embed(x.transpose(1, 2)) + self.pos).mean(1))


def swin_net() -> nn.Module:
    import timm

    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=(16, 32),
                             patch_size=2, window_size=4, in_chans=1, num_classes=2, embed_dim=16,
                             depths=(1, 1), num_heads=(2, 2))


def share(cam: torch.Tensor, cols: slice) -> torch.Tensor:
    """Share of each map's non-negative mass in the columns (or time steps) ``cols``: (N, H, W) or (N, T)."""
    cam = cam.clamp(min=0)
    return cam[..., cols].flatten(1).sum(1) / cam.flatten(1).sum(1).clamp(min=1e-12)


def main(out_dir: str = OUTPUT, cache_dir: str | None = CACHE, retrain: bool = False) -> dict:
    """Train the four networks (or load them from the cache), explain 4 held-out inputs each, write
    ``vit_swin_sequences.png``; return the layers and the mass shares."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    x, y = digit_pairs(600, gen)
    xt, yt = digit_pairs(200, gen)
    xs, ys = series(400, gen, 50)
    xst, yst = series(200, gen, 50)

    nets, cams, layers, accuracy = {}, {}, {}, {}
    for name, make, data, options in (
            ("ViT", lambda: tiny_vit(global_pool="avg"), (x, y), {"epochs": 6, "lr": 3e-3, "batch": 50}),
            ("Swin", swin_net, (x, y), {"epochs": 6, "lr": 3e-3, "batch": 50}),
            ("LSTM", SeriesLSTM, (xs, ys), {"epochs": 30, "lr": 1e-2, "batch": 50}),
            ("Transformer encoder", SeriesTransformer, (xs, ys), {"epochs": 15, "lr": 3e-3, "batch": 50})):
        torch.manual_seed(0)
        net = make()
        trained(net, cache_dir, "transformers_" + name.split()[0].lower(), options,
                lambda: fit(net, *data, **options), retrain)
        net.eval()
        nets[name] = net

    for name, net in nets.items():
        images = name in ("ViT", "Swin")
        xe, ye = (xt, yt) if images else (xst, yst)
        with torch.no_grad():
            accuracy[name] = float((net(xe).argmax(1) == ye).float().mean())
        # the true class of each sample ((N, 1) targets); the layer and its reading are found, not given
        fmt = {"input_format": "BCT"} if name == "Transformer encoder" else {}
        cam, layers[name], _ = gradattr.grad_cam(net, xe, ye[:, None], return_layers=True, **fmt)
        cams[name] = cam[:, 0]  # (N, H, W) or (N, T)

    left = share(cams["ViT"], slice(0, 16)), share(cams["Swin"], slice(0, 16))
    window = share(cams["LSTM"], slice(20, 30)), share(cams["Transformer encoder"], slice(20, 30))
    shares = {"ViT": left[0], "Swin": left[1], "LSTM": window[0], "Transformer encoder": window[1]}
    for name in nets:
        what = "left half" if name in ("ViT", "Swin") else "steps 20-29"
        print(f"{name:20s} layer {layers[name]!r:28s} test accuracy {accuracy[name]:.1%}; "
              f"mass on the {what}: median {float(shares[name].median()):.2f} over {len(shares[name])} inputs")

    fig, axes = plt.subplots(4, 4, figsize=(13, 9.5))
    for row, name in enumerate(nets):
        for k in range(4):
            ax = axes[row, k]
            cam = cams[name][k]
            scaled = (cam / cam.max().clamp(min=1e-12)).clamp(min=0).numpy()
            if name in ("ViT", "Swin"):
                ax.imshow(xt[k, 0], cmap="gray")
                im = ax.imshow(scaled, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                ax.axvline(15.5, color="white", lw=0.8, ls="--")
                ax.set_title(f"{name} @ {layers[name]}\nclass {int(yt[k])} (left digit); "
                             f"this input's left share {float(shares[name][k]):.2f}", fontsize=8)
                ax.axis("off")
            else:
                ax.plot(xst[k, 0].numpy(), color="0.3", lw=1, label="channel 0")
                ax.fill_between(np.arange(50), 0, scaled * 2, alpha=0.4, color="red", label="Grad-CAM (scaled)")
                ax.axvspan(19.5, 29.5, color="green", alpha=0.12, label="class window")
                ax.set_title(f"{name} @ {layers[name]}\nclass {int(yst[k])}; "
                             f"this input's window share {float(shares[name][k]):.2f}", fontsize=8)
                ax.set_xlabel("time step", fontsize=7)
                ax.tick_params(labelsize=7)
                if k == 0:
                    ax.legend(fontsize=6, loc="lower left")
    medians = {k: round(float(v.median()), 2) for k, v in shares.items()}
    fig.suptitle("Grad-CAM of the true class with the automatic layer and reading (no reshape_transform); "
                 "maps scaled to [0, 1] per input\nmedian share of the map's mass over "
                 f"{len(shares['ViT'])} held-out inputs: on the left digit ViT {medians['ViT']:.2f}, Swin "
                 f"{medians['Swin']:.2f} (chance 0.5); in the class window LSTM {medians['LSTM']:.2f}, "
                 f"Transformer encoder {medians['Transformer encoder']:.2f} (chance 0.2)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 0.95))
    bar = fig.add_axes((0.945, 0.55, 0.012, 0.35))
    fig.colorbar(im, cax=bar).set_label("Grad-CAM / its maximum", fontsize=8)
    path = save_path(out_dir, "vit_swin_sequences.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    numbers = save_path(out_dir, "vit_swin_sequences.json")
    with open(numbers, "w") as f:
        json.dump({"median_share": medians, "inputs": len(shares["ViT"]),
                   "accuracy": {k: round(v, 3) for k, v in accuracy.items()}, "layers": layers}, f, indent=1)
    print(f"wrote {numbers}")
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return {"layers": layers, "accuracy": accuracy,
            "shares": {k: float(v.median()) for k, v in shares.items()}, "path": path}


if __name__ == "__main__":
    args = arguments(__doc__, trains=True)
    main(args.out, args.cache, args.retrain)
