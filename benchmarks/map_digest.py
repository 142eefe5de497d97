"""A digest of what gradattr computes, for checking that a refactoring is a pure move.

Runs every registered method on fixed seeded networks (a 1-D, a 2-D and a 3-D conv net, a
tabular MLP, a small vision transformer), the faithfulness, localisation and sanity metrics,
``compare`` and ``explain_dataset``, and prints one SHA-256 line per result (of the result's
bytes, or of the error's type and message when a method refuses an input). Two commits compute
the same things exactly when their outputs are equal:

    python benchmarks/map_digest.py > before.txt   # on the old commit
    python benchmarks/map_digest.py > after.txt    # on the new one
    diff before.txt after.txt && echo identical

Single-threaded (OMP_NUM_THREADS=1 is set here) so that reductions run in one order.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's gradattr

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import gradattr  # noqa: E402

torch.set_num_threads(1)
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
SIZE = {1: (24,), 2: (12, 10), 3: (6, 8, 6)}


def conv_net(rank: int) -> nn.Module:
    torch.manual_seed(rank)
    net = nn.Sequential(OrderedDict([
        ("0", CONV[rank](2, 6, 3, padding=1)), ("1", nn.ReLU()),
        ("2", CONV[rank](6, 5, 3, padding=1, stride=2)), ("3", nn.ReLU()),
        ("4", POOL[rank](1)), ("5", nn.Flatten()), ("6", nn.Linear(5, 4))]))
    with torch.no_grad():
        net[2].bias.add_(0.3)
    return net.eval()


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16) * 0.1)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
                                    for _ in range(2))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        for b in self.blocks:
            t = b(t)
        return self.head(self.norm(t)[:, 0])


def mlp() -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).eval()


def digest(obj) -> str:
    h = hashlib.sha256()

    def feed(o):
        if isinstance(o, torch.Tensor):
            o = o.detach().cpu()
            h.update(f"T{tuple(o.shape)}{o.dtype}".encode())
            h.update(o.contiguous().view(torch.uint8).numpy().tobytes() if o.numel() else b"")
        elif isinstance(o, np.ndarray):
            h.update(f"A{o.shape}{o.dtype}".encode())
            h.update(np.ascontiguousarray(o).tobytes())
        elif isinstance(o, (list, tuple)):
            h.update(f"L{len(o)}".encode())
            for e in o:
                feed(e)
        elif isinstance(o, dict):
            for k in o:
                h.update(repr(k).encode())
                feed(o[k])
        elif hasattr(o, "__dataclass_fields__"):
            h.update(type(o).__name__.encode())
            feed({k: getattr(o, k) for k in o.__dataclass_fields__})
        else:
            h.update(repr(o).encode())
    feed(obj)
    return h.hexdigest()[:16]


def line(label: str, fn, drop=()) -> None:
    """One result's digest; ``drop``: keys of dict rows that vary run to run (timings)."""
    torch.manual_seed(0)
    try:
        result = fn()
        if drop:
            result = [{k: v for k, v in row.items() if k not in drop} for row in result]
        out = digest(result)
    except Exception as e:  # noqa: BLE001 (a refusal is a result too)
        out = "error " + digest((type(e).__name__, str(e)))
    print(f"{label:60s} {out}", flush=True)


def methods() -> None:
    cases = {f"conv{r}d": (conv_net(r), torch.randn(2, 2, *SIZE[r], generator=torch.Generator().manual_seed(r)), 1)
             for r in (1, 2, 3)}
    cases["vit"] = (TinyViT().eval(), torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5)), 2)
    cases["mlp"] = (mlp(), torch.randn(6, 5, generator=torch.Generator().manual_seed(6)), None)
    background = torch.randn(8, 5, generator=torch.Generator().manual_seed(9))
    for name in gradattr.list_methods():
        info = gradattr.method_info(name)
        for case, (net, x, target) in cases.items():
            options = {}
            if "background" in info.options:
                options["background"] = background if case == "mlp" else torch.zeros_like(x[:2])
            if "num_samples" in info.options:
                options["num_samples"] = 64
            if "steps" in info.options:
                options["steps"] = 8
            if "n_samples" in info.options:
                options["n_samples"] = 8
            tgt = (lambda y: y[:, 0]) if target is None else target
            args = (net, x, tgt) if info.needs_target else (net, x)
            line(f"{name}/{case}", lambda: gradattr.attribute(*args, method=name, **options))


def metrics() -> None:
    net = conv_net(2)
    x = torch.randn(2, 2, *SIZE[2], generator=torch.Generator().manual_seed(2))
    maps = gradattr.grad_cam(net, x, 1)
    m = gradattr.metrics
    mask = torch.zeros(2, *SIZE[2], dtype=torch.bool)
    mask[:, 2:7, 3:8] = True
    line("metrics/deletion", lambda: m.deletion(net, x, maps, 1, steps=10))
    line("metrics/insertion", lambda: m.insertion(net, x, maps, 1, steps=10))
    line("metrics/confidence_change", lambda: m.confidence_change(net, x, maps, 1))
    line("metrics/average_drop", lambda: m.average_drop(net, x, maps, 1))
    line("metrics/increase_in_confidence", lambda: m.increase_in_confidence(net, x, maps, 1))
    line("metrics/road", lambda: m.road(net, x, maps, 1))
    line("metrics/pointing_game", lambda: m.pointing_game(maps, mask))
    line("metrics/energy_pointing_game", lambda: m.energy_pointing_game(maps, mask))
    line("metrics/localize", lambda: m.localize(maps))
    line("metrics/blur", lambda: m.blur(x))
    line("metrics/impute", lambda: m.impute(x, mask[:, None].expand_as(x)))
    line("metrics/infidelity", lambda: m.infidelity(net, x, maps, 1, samples=6))
    line("metrics/max_sensitivity", lambda: m.max_sensitivity(net, x, 1, samples=3))
    line("metrics/randomization_check", lambda: m.randomization_check(net, x, 1))
    line("metrics/sparseness", lambda: m.sparseness(maps))
    line("metrics/relevance_mass", lambda: m.relevance_mass(maps, mask))
    line("metrics/relevance_rank", lambda: m.relevance_rank(maps, mask))
    line("compare", lambda: gradattr.compare(net, [(x, torch.tensor([1, 2]))], methods=("grad_cam", "score_cam"),
                                             metrics=("deletion", "insertion")).rows,
         drop=("seconds",))


def dataset() -> None:
    net = conv_net(1)
    data = [torch.randn(4, 2, 24, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with tempfile.TemporaryDirectory() as d:
        def run():
            gradattr.explain_dataset(net, data, method="grad_cam", target=1, out_dir=d + "/run", progress=False)
            return gradattr.load_maps(d + "/run")
        line("explain_dataset", run)


if __name__ == "__main__":
    parts = sys.argv[1:] or ["methods", "metrics", "dataset"]
    for part in parts:
        globals()[part]()
