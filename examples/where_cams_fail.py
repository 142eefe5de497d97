"""Where CAMs fail to localise, measured: CAMs, input attributions, occlusion and attention maps on four small models.

Four models, trained in seconds on a CPU (weights cached in ``examples/output/cache``):

* a tiny ViT (timm, class token, fused attention) on two scikit-learn digits (0 or 1) side by side,
  16 x 32 px; the class is the *left* digit, the right one a distractor of either class;
* a batch-first LSTM, a Transformer encoder (per-step Conv1d embedding, learned positions, mean over
  time) and a 1-D CNN on 3 x 60 series of noise whose class (the sign of a bump) lives on channel 0
  at steps 20-29 only.

For each model and method the script measures the share of the map's mass (absolute values for
signed attributions) on the region that decides: the left half for the ViT (chance 0.50), steps
20-29 for the series (chance 0.17); medians over 200 held-out inputs, explaining the true class.
Methods: Grad-CAM, the best of five other gradient CAMs (picked per model by this same measure, so
the CAM row is an upper bound of the family), saliency, integrated gradients, SmoothGrad, occlusion
(MATLAB's automatic mask size and stride) and, for the two attention models, attention rollout and
Chefer et al.'s transformer attribution. Every option is the library's default: nothing is tuned to
a method.

Writes ``where_cams_fail.md`` (the table) and ``where_cams_fail.png`` (one input per model). Run:
``python examples/where_cams_fail.py`` (about a minute on a 2-core CPU; ``--fast``: 40 inputs).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

import gradattr
from example_utils import (CACHE, OUTPUT, SeriesLSTM, arguments, digit_pairs, fit, save_path, series, tiny_vit,
                           trained)

CAMS = ("grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam", "grad_cam_elementwise")
INPUT_LEVEL = ("saliency", "integrated_gradients", "smooth_grad")
ATTENTION = ("attention_rollout", "transformer_attribution")
ROWS = ("grad_cam", "best other CAM", *INPUT_LEVEL, "occlusion", *ATTENTION)
STEPS = 60


class SeriesTransformer(nn.Module):
    """Reads ``(N, C, T)``; a per-step Conv1d embedding (one token per step), learned positions,
    a batch-first Transformer encoder, the mean over time."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.embed = nn.Conv1d(3, d, 1)
        self.pos = nn.Parameter(0.1 * torch.randn(1, STEPS, d))
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc = nn.Linear(d, 2)

    def forward(self, x):
        return self.fc(self.encoder(self.embed(x).transpose(1, 2) + self.pos).mean(1))


def series_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv1d(3, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 8, 5, padding=2), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 2))


def share(maps: torch.Tensor, region: slice) -> torch.Tensor:
    """Share of each map's absolute mass in the last axis' ``region``: maps (N, *S)."""
    a = maps.abs()
    return a[..., region].flatten(1).sum(1) / a.flatten(1).sum(1).clamp(min=1e-12)


def maps_of(method: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(N, *S)`` at the input's resolution: CAMs and attention maps as they are, input-level
    attributions summed in absolute value over channels."""
    if method == "attention_rollout":
        return gradattr.attention_rollout(net, x)
    m = gradattr.attribute(net, x, y[:, None], method=method)
    if method in INPUT_LEVEL:
        m = m.abs().sum(1)
    return m[:, 0] if m.ndim == x.ndim else m


def median(t: torch.Tensor) -> float:
    return float(t.median())


def zero_share(maps: torch.Tensor) -> float:
    """Fraction of the maps that are zero everywhere (their share counts as 0)."""
    return float((maps.flatten(1).abs().amax(1) == 0).float().mean())


def table(results: dict, best: dict, models) -> str:
    head = "| method | " + " | ".join(models) + " |"
    lines = [head, "|" + "---|" * (len(models) + 1)]
    for row in ROWS:
        cells = []
        for model in models:
            v = results[model].get(row)
            cell = "n/a" if v is None else f"{v:.2f}"
            if row == "best other CAM" and v is not None:
                cell += f" ({best[model]})"
            cells.append(cell)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    chance = ["0.50" if m == "ViT" else f"{10 / STEPS:.2f}" for m in models]
    lines.append("| chance | " + " | ".join(chance) + " |")
    return "\n".join(lines)


def main(out_dir: str = OUTPUT, cache_dir: str | None = CACHE, retrain: bool = False, fast: bool = False) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    x, y = digit_pairs(600, gen)
    xt, yt = digit_pairs(200, gen)
    xs, ys = series(400, gen, STEPS)
    xst, yst = series(200, gen, STEPS)
    n_eval = 40 if fast else 200
    models = {"ViT": (tiny_vit, (x, y), (xt, yt), {"epochs": 8, "lr": 3e-3, "batch": 50}, slice(0, 16)),
              "LSTM": (SeriesLSTM, (xs, ys), (xst, yst), {"epochs": 30, "lr": 3e-3, "batch": 50}, slice(20, 30)),
              "Transformer encoder": (SeriesTransformer, (xs, ys), (xst, yst),
                                      {"epochs": 15, "lr": 3e-3, "batch": 50}, slice(20, 30)),
              "1-D CNN": (series_cnn, (xs, ys), (xst, yst), {"epochs": 15, "lr": 3e-3, "batch": 50},
                          slice(20, 30))}
    results, best, accuracy, example, zeros = {}, {}, {}, {}, {}
    for name, (make, train, test, options, region) in models.items():
        torch.manual_seed(0)
        net = make()
        trained(net, cache_dir, "where_cams_fail_" + name.split()[0].lower().replace("-", ""), options,
                lambda: fit(net, *train, **options), retrain)
        net.eval()
        xe, ye = test[0][:n_eval], test[1][:n_eval]
        with torch.no_grad():
            accuracy[name] = float((net(xe).argmax(1) == ye).float().mean())
        res, ex, zero = {}, {}, {}
        cams = {}
        for method in ("grad_cam", *CAMS):
            m = maps_of(method, net, xe, ye)
            cams[method] = (median(share(m, region)), m)
        zero["grad_cam"] = zero_share(cams["grad_cam"][1])
        res["grad_cam"] = cams["grad_cam"][0]
        ex["grad_cam"] = cams["grad_cam"][1][0]
        best[name] = max(CAMS, key=lambda k: cams[k][0])
        res["best other CAM"] = cams[best[name]][0]
        ex["best other CAM"] = cams[best[name]][1][0]
        methods = [*INPUT_LEVEL, "occlusion"] + (list(ATTENTION) if name in ("ViT", "Transformer encoder") else [])
        for method in methods:
            m = maps_of(method, net, xe, ye)
            res[method] = median(share(m, region))
            ex[method] = m[0]
            zero[method] = zero_share(m)
        results[name], example[name] = res, (xe[0], ex)
        zeros[name] = {k: v for k, v in zero.items() if v > 0.25}
        print(f"{name}: test accuracy {accuracy[name]:.1%}, {time.perf_counter() - start:.0f} s", flush=True)

    md = table(results, best, list(models))
    note = (f"Share of each map's (absolute) mass on the region that decides, median over {n_eval} held-out "
            "inputs, true class; test accuracy: "
            + ", ".join(f"{k} {v:.0%}" for k, v in accuracy.items()) + "."
            + "".join(f" {model} {method}: {v:.0%} of the maps are zero everywhere (ReLU of a negative "
                      "weighted sum), which counts as 0." for model, d in zeros.items() for method, v in d.items()))
    print(md)
    print(note)
    path_md = save_path(out_dir, "where_cams_fail.md")
    with open(path_md, "w") as f:
        f.write(md + "\n\n" + note + "\n")

    fig, axes = plt.subplots(len(models), len(ROWS), figsize=(2.1 * len(ROWS), 1.9 * len(models)))
    for r, (name, (x0, ex)) in enumerate(example.items()):
        for c, row in enumerate(ROWS):
            ax = axes[r, c]
            if row not in ex:
                ax.axis("off")
                continue
            m = ex[row].abs()
            m = (m / m.max().clamp(min=1e-12)).numpy()
            label = best[name] if row == "best other CAM" else row
            if name == "ViT":
                ax.imshow(x0[0], cmap="gray")
                ax.imshow(m, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                ax.axvline(15.5, color="white", lw=0.8, ls="--")
                ax.axis("off")
            else:
                ax.plot(x0[0].numpy() / 3 + 0.5, color="0.3", lw=0.8)
                ax.fill_between(np.arange(STEPS), 0, m, color="red", alpha=0.45)
                ax.axvspan(19.5, 29.5, color="green", alpha=0.15)
                ax.set_ylim(-0.2, 1.1)
                ax.set_xticks([0, 20, 30, 59])
                ax.set_yticks([])
                ax.tick_params(labelsize=6)
            ax.set_title(f"{name}\n{label}: {results[name][row]:.2f}", fontsize=7)
    fig.suptitle("Share of the map on the region that decides (left digit / steps 20-29, shaded); "
                 "median over held-out inputs in each title, one input shown", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path_png = save_path(out_dir, "where_cams_fail.png")
    fig.savefig(path_png, dpi=90)
    plt.close(fig)
    print(f"wrote {path_md} and {path_png} in {time.perf_counter() - start:.1f} s")
    return {"results": results, "best": best, "accuracy": accuracy, "zeros": zeros, "table": md, "md": path_md,
            "png": path_png}


if __name__ == "__main__":
    args = arguments(__doc__, fast="40 held-out inputs instead of 200", trains=True)
    main(args.out, args.cache, args.retrain, args.fast)
