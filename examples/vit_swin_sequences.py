"""Grad-CAM on a ViT, a Swin and a batch-first LSTM, with nothing but ``grad_cam(net, x, c)``.

The data: pairs of scikit-learn ``load_digits`` zeros and ones side by side
(16 x 32 px); the label is the *left* digit, the right one is a distractor. A
tiny timm ViT (class token, 4 x 4 patches) and a tiny timm Swin (channels-last
stages, average pooled) learn it in seconds. gradattr reads the ViT's tokens
(1 class token + a 4 x 8 grid, from the patch embedding's stride) at
``blocks[-1].norm1`` and the Swin's ``(N, H, W, C)`` output channels-last, with
no ``reshape_transform``. A batch-first LSTM learns a series whose class is
carried by samples 20-29 only; its map is over time.

Writes ``transformers.png``. Run: ``python examples/transformers.py``
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

import gradattr


def digit_pairs(m: int, gen: torch.Generator):
    from sklearn.datasets import load_digits

    d = load_digits(n_class=2)
    images = torch.tensor(d.images, dtype=torch.float32) / 16
    labels = torch.tensor(d.target)
    i = torch.randint(0, len(images), (m,), generator=gen)
    j = torch.randint(0, len(images), (m,), generator=gen)
    x = torch.cat([images[i], images[j]], -1)[:, None]
    return nn.functional.interpolate(x, scale_factor=2), labels[i]


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 3e-3, batch: int = 50):
    opt = torch.optim.Adam(net.parameters(), lr)
    for _ in range(epochs):
        for b in range(0, len(x), batch):
            loss = nn.functional.cross_entropy(net(x[b:b + batch]), y[b:b + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


class SeriesLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 12, batch_first=True)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):  # x: (N, C, T)
        out, _ = self.rnn(x.transpose(1, 2))
        return self.fc(out[:, -1])


def main(out_dir: str = os.path.join(os.path.dirname(__file__), "output")):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import timm

    gen = torch.Generator().manual_seed(0)
    x, y = digit_pairs(600, gen)
    xt, yt = digit_pairs(8, gen)
    torch.manual_seed(0)
    vit = fit(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(16, 32), patch_size=4,
                                in_chans=1, num_classes=2, embed_dim=32, depth=2, num_heads=2), x, y, 4)
    torch.manual_seed(0)
    swin = fit(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=(16, 32),
                                 patch_size=2, window_size=4, in_chans=1, num_classes=2, embed_dim=16,
                                 depths=(1, 1), num_heads=(2, 2)), x, y, 4)
    vit_cam, vit_layer, _ = gradattr.grad_cam(vit, xt, yt[:, None].numpy(), return_layers=True)
    swin_cam, swin_layer, _ = gradattr.grad_cam(swin, xt, yt[:, None].numpy(), return_layers=True)

    g = torch.Generator().manual_seed(1)
    ys = torch.randint(0, 2, (400,), generator=g)
    xs = 0.3 * torch.randn(400, 3, 50, generator=g)
    xs[:, 0, 20:30] += (2 * ys - 1)[:, None].float() * 1.5
    torch.manual_seed(0)
    lstm = fit(SeriesLSTM(), xs, ys, 15, lr=1e-2, batch=100)
    lstm_cam = gradattr.grad_cam(lstm, xs[:4], ys[:4, None].numpy())[:, 0]

    fig, axes = plt.subplots(3, 4, figsize=(12, 6))
    for k in range(4):
        for row, (cam, name) in enumerate(((vit_cam, f"ViT {vit_layer}"), (swin_cam, f"Swin {swin_layer}"))):
            ax = axes[row, k]
            ax.imshow(xt[k, 0], cmap="gray")
            ax.imshow(cam[k, 0], cmap="jet", alpha=0.5)
            ax.set_title(f"{name}: class {int(yt[k])}", fontsize=8)
            ax.axis("off")
        ax = axes[2, k]
        ax.plot(xs[k, 0].numpy(), color="gray")
        ax.fill_between(np.arange(50), 0, lstm_cam[k].numpy() / max(float(lstm_cam[k].max()), 1e-12) * 2,
                        alpha=0.4, color="red")
        ax.axvspan(20, 29, color="green", alpha=0.1)
        ax.set_title(f"LSTM: class {int(ys[k])} (window 20-29)", fontsize=8)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "transformers.png")
    fig.savefig(path, dpi=100)
    print(f"ViT layer {vit_layer}, Swin layer {swin_layer}; wrote {path}")
    return path


if __name__ == "__main__":
    main()
