"""gradattr against pytorch-grad-cam and captum: time, peak memory and the issue's targets.

Every library runs on the same model, input, feature layer, target class and
method, in ONE process; within each repeat the libraries run one after the
other in an order that rotates from repeat to repeat, after a warm-up, and the
table shows medians. ``fwd`` is the floor: one forward pass with autograd
enabled, the model's parameters requiring grad as users have them.

Run from the repository root (dependencies: ``pip install -e ".[bench]"``)::

    python benchmarks/bench.py --quick          # about 2 minutes on a 2-core CPU; writes benchmarks/output/
    python benchmarks/bench.py                  # full sizes (224 x 224, batches 1..64), writes RESULTS.md
    python benchmarks/bench.py --device cuda --out benchmarks/RESULTS.md

Methods gradattr does not have yet are skipped with a "not available yet" line.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score/Ablation-CAM progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the working tree's gradattr, even without pip install -e

import gradattr  # noqa: E402

GRADIENT_METHODS = ["grad_cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam"]
PLAIN_METHODS = GRADIENT_METHODS + ["eigen_cam"]
#: The line from which RESULTS.md holds the figures of the other scripts, kept when this one rewrites it.
KEEP = "<!-- from here on: the other benchmark scripts' figures, written by hand; bench.py keeps them -->"

PGC_CLASSES = {"grad_cam": "GradCAM", "grad_cam_plus_plus": "GradCAMPlusPlus", "xgrad_cam": "XGradCAM",
               "hires_cam": "HiResCAM", "layer_cam": "LayerCAM", "eigen_cam": "EigenCAM",
               "ablation_cam": "AblationCAM", "score_cam": "ScoreCAM"}
LIBS = ["fwd", "gradattr", "pytorch-grad-cam", "captum"]
TEN = "10 classes"


# ----------------------------------------------------------------------------- models
def small_cnn(rank: int, channels: int, widths=(16, 32, 64), classes: int = 10) -> nn.Sequential:
    """Three conv/BN/ReLU blocks (the first two followed by 2x max pooling), global pooling, linear."""
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[rank]
    bn = {1: nn.BatchNorm1d, 3: nn.BatchNorm3d}[rank]
    pool = {1: nn.MaxPool1d, 3: nn.MaxPool3d}[rank]
    gap = {1: nn.AdaptiveAvgPool1d, 3: nn.AdaptiveAvgPool3d}[rank]
    k = 7 if rank == 1 else 3
    layers, c = OrderedDict(), channels
    for i, w in enumerate(widths, 1):
        layers[f"conv{i}"] = conv(c, w, k, padding=k // 2)
        layers[f"bn{i}"] = bn(w)
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
        if i < len(widths):
            layers[f"pool{i}"] = pool(2)
        c = w
    layers.update(gap=gap(1), flat=nn.Flatten(), fc=nn.Linear(c, classes))
    return nn.Sequential(layers)


def effnet() -> nn.Module:
    """The pretrained EfficientNet-Lite0, loaded as the examples load it."""
    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    from imagenet_cat import load_effnet

    return load_effnet()


class EffnetSplitHead(nn.Module):
    """EfficientNet-Lite0 computing exactly the same, with its last ReLU6 as a module of its own.

    The original applies one shared ``_swish`` module ~30 times, so its head
    activation cannot be a feature layer for pytorch-grad-cam (whose hook keeps
    the first call). With the head activation as ``head_act`` every library can
    use it; post-ReLU6 maps on a real photo have the sparsity Score-CAM exploits.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.head_act = net, nn.ReLU6()

    def forward(self, x):
        n, bs = self.net, x.size(0)
        x = n._swish(n._bn0(n._conv_stem(x)))
        for idx, block in enumerate(n._blocks):
            rate = n._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * float(idx) / len(n._blocks) if rate else rate)
        x = self.head_act(n._bn1(n._conv_head(x)))
        return n._fc(n._dropout(n._avg_pooling(x).view(bs, -1)))


def photo(size: int) -> torch.Tensor:
    """scikit-image's cat (local, no download), resized and normalised as EfficientNet-Lite expects."""
    from skimage import data, transform

    img = transform.resize(data.chelsea(), (size, size), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy((img - 0.5) / 0.5).permute(2, 0, 1).contiguous()


def torchvision_model(name: str) -> Callable[[], nn.Module]:
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None)  # seeded random weights, no download
    return build


@dataclass(frozen=True)
class Model:
    name: str
    build: Callable[[], nn.Module]
    layer: str  # the feature layer, the same for every library
    rank: int
    channels: int
    target: int = 1  # the explained class, the same for every library
    input: str = "random"  # or "photo": the cat image


MODELS = {
    "resnet18": Model("resnet18", torchvision_model("resnet18"), "layer4", 2, 3),
    "resnet50": Model("resnet50", torchvision_model("resnet50"), "layer4", 2, 3),
    # The last activation is the shared ReLU6 module `_swish` (called ~30 times), which
    # pytorch-grad-cam cannot hook correctly; `_bn1` (the head before it) works everywhere.
    "effnet-lite0": Model("effnet-lite0", effnet, "_bn1", 2, 3),
    "effnet-lite0-photo": Model("effnet-lite0-photo", lambda: EffnetSplitHead(effnet()), "head_act", 2, 3,
                                target=285, input="photo"),
    "cnn3d": Model("cnn3d", lambda: small_cnn(3, 1, (8, 16, 32)), "relu3", 3, 1),
    "cnn1d": Model("cnn1d", lambda: small_cnn(1, 12, (32, 64, 128)), "relu3", 1, 12),
}


@dataclass
class Config:
    quick: bool
    device: torch.device
    threads: int
    size2d: int
    size3d: int
    length1d: int
    batches: tuple
    sweep: tuple
    repeats: int  # at least this many timed rounds per case ...
    warmup: int
    slow_repeats: int  # ... except for calls slower than slow_seconds (Score/Ablation-CAM): this many
    slow_seconds: float
    case_seconds: float  # fast cases get more rounds, up to max_repeats, to fill about this time
    max_repeats: int
    perturbation: tuple  # (model, method, 2-D size): pytorch-grad-cam takes seconds per call
    mem_batch: int
    mem_model: str  # the model of the grad_cam memory case
    sweep_model: str
    dataset: tuple  # (images, batch size)
    groups: tuple
    models: tuple = ("resnet18", "resnet50", "effnet-lite0", "cnn3d", "cnn1d")

    def spatial(self, m: Model, size2d: int | None = None) -> tuple:
        return {1: (self.length1d,), 2: (size2d or self.size2d,) * 2, 3: (self.size3d,) * 3}[m.rank]


def build(m: Model, cfg: Config, batch: int, size2d: int | None = None):
    """The model (seeded, eval, parameters requiring grad, on the device) and a seeded input."""
    torch.manual_seed(0)
    net = m.build().eval().to(cfg.device)
    for p in net.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    shape = cfg.spatial(m, size2d)
    if m.input == "photo":
        x = photo(shape[0])[None].expand(batch, -1, -1, -1).contiguous()
    else:
        x = torch.randn((batch, m.channels, *shape), generator=g)
    return net, x.to(cfg.device)


def describe_input(x: torch.Tensor) -> str:
    return "x".join(map(str, x.shape[1:]))


# ----------------------------------------------------------------------------- runners
def make_fn(lib: str, method: str, variant: str, net: nn.Module, x: torch.Tensor, m: Model):
    """A no-argument callable running one library's method, or a string saying why there is none."""
    if lib == "fwd":
        return lambda: net(x)
    if lib == "gradattr":
        return gradattr_fn(method, variant, net, x, m)
    if lib == "pytorch-grad-cam":
        return pgc_fn(method, net, x, m)
    if lib == "captum":
        return captum_fn(method, net, x, m)
    raise ValueError(lib)


def gradattr_fn(method: str, variant: str, net, x, m: Model):
    if method not in gradattr.list_methods():
        return f"not available yet (gradattr has no {method})"
    info = gradattr.method_info(method)  # what the method takes, from the registry
    kw = {}
    if info.needs_target:
        kw["target"] = list(range(10)) if variant == TEN else m.target
    if "feature_layer" in info.options:
        kw["feature_layer"] = m.layer
    return lambda: gradattr.attribute(net, x, method=method, **kw)


def pgc_fn(method: str, net, x, m: Model):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if m.rank == 1:
        return "n/a (pytorch-grad-cam supports 2-D and 3-D inputs only)"
    if m.rank == 3 and method in ("score_cam", "ablation_cam"):
        return "n/a (pytorch-grad-cam's ScoreCAM/AblationCAM are 2-D only)"
    cls = getattr(pytorch_grad_cam, PGC_CLASSES[method])
    layer = dict(net.named_modules())[m.layer]
    targets = [ClassifierOutputTarget(m.target) for _ in range(x.shape[0])]

    def run():
        with cls(model=net, target_layers=[layer]) as cam:  # default settings
            return cam(input_tensor=x, targets=targets)
    return run


def captum_fn(method: str, net, x, m: Model):
    if method != "grad_cam":
        return "n/a"
    from captum.attr import LayerAttribution, LayerGradCam

    layer = dict(net.named_modules())[m.layer]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[m.rank]

    def run():
        a = LayerGradCam(net, layer).attribute(x, target=m.target, relu_attributions=True)
        return LayerAttribution.interpolate(a, tuple(x.shape[2:]), mode)
    return run


# ----------------------------------------------------------------------------- timing
def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Runner:
    lib: str
    method: str
    variant: str
    fn: Callable
    slow: bool = False
    times: list = field(default_factory=list)
    warm: float | None = None  # the warm-up call's time
    first: object = None  # the first result (for agreement), kept as numpy
    error: str | None = None

    @property
    def key(self):
        return self.lib, self.method, self.variant

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


def as_numpy(out):
    if isinstance(out, torch.Tensor):
        return out.detach().float().cpu().numpy()
    return np.asarray(out) if isinstance(out, np.ndarray) else None


def time_runners(runners: list[Runner], cfg: Config, net: nn.Module):
    """Warm up each runner, then time them in a rotating order; medians end up in runner.times."""
    def call(r: Runner, timed: bool):
        if r.error is not None:
            return
        gc.collect()  # cheap: what existed before the case is frozen below
        sync(cfg.device)
        t0 = time.perf_counter()
        try:
            out = r.fn()
            sync(cfg.device)
        except Exception as e:  # noqa: BLE001 - a library failing here is reported, not fatal
            r.error = f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
            return
        finally:
            net.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward fills param.grad
        if timed:
            r.times.append(time.perf_counter() - t0)
        else:
            r.warm = time.perf_counter() - t0
        if r.first is None and r.lib in ("gradattr", "pytorch-grad-cam"):
            r.first = as_numpy(out)
        del out

    gc.collect()
    gc.freeze()  # a full collection over torch & co. takes ~0.2 s; keep it out of every call
    try:
        rounds_of(runners, cfg, call)
    finally:
        gc.unfreeze()


def rounds_of(runners: list[Runner], cfg: Config, call):
    for _ in range(cfg.warmup):
        for r in runners:
            if not r.slow:  # a call known to take seconds needs no warm-up
                call(r, timed=False)
    for r in runners:
        r.slow = r.slow or (r.warm or 0) > cfg.slow_seconds
    round_s = sum(r.warm or 0 for r in runners if not r.slow)
    rounds = cfg.repeats if round_s <= 0 else \
        max(cfg.repeats, min(cfg.max_repeats, int(cfg.case_seconds / round_s)))
    for i in range(rounds):
        order = runners[i % len(runners):] + runners[:i % len(runners)]
        for r in order:
            if not (r.slow and len(r.times) >= cfg.slow_repeats):
                call(r, timed=True)


def agreement(a, b) -> float | None:
    """Mean over samples of the Pearson r between two libraries' maps.

    r ignores scale and offset, so pytorch-grad-cam's per-image min-max scaling
    does not count; samples whose map is constant in either library are left out.
    """
    if a is None or b is None or a.shape != b.shape or a.ndim < 2:
        return None
    rs = []
    for u, v in zip(a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)):
        if u.std() > 0 and v.std() > 0:
            rs.append(np.corrcoef(u, v)[0, 1])
    return float(np.mean(rs)) if rs else None


# ----------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak RSS: ``VmHWM``, the high-water mark that ``ru_maxrss`` reports.

    Read from ``/proc/self/status`` rather than ``getrusage``: after ``exec`` (how
    a spawned process starts) ``ru_maxrss`` also keeps the parent's RSS at the
    fork, which would hide the child's own peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0): VmHWM then counts from here."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_peak(spec: dict) -> tuple[int, bool]:
    """In a fresh process: load the model and input, then the peak RSS increase of ONE call."""
    torch.set_num_threads(spec["threads"])
    cfg = Config(**{**spec["cfg"], "device": torch.device("cpu")})
    m = MODELS[spec["model"]]
    net, x = build(m, cfg, spec["batch"], spec["size2d"])
    fn = make_fn(spec["lib"], spec["method"], spec["variant"], net, x, m)
    gc.collect()
    was_reset = reset_peak_rss()
    before = rss_bytes()
    out = fn()
    peak = peak_rss_bytes()
    del out
    return max(peak - before, 0), was_reset


def peak_memory(spec: dict, cfg: Config, net=None, x=None) -> int | None:
    """Peak bytes above the baseline for one call: CUDA allocator stats, or a spawned CPU process."""
    m = MODELS[spec["model"]]
    if cfg.device.type == "cuda":
        fn = make_fn(spec["lib"], spec["method"], spec["variant"], net, x, m)
        if isinstance(fn, str):
            return None
        gc.collect()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        net.zero_grad(set_to_none=True)
        return peak
    import multiprocessing

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        peak, was_reset = ex.submit(child_peak, spec).result()
    if not was_reset:
        MEMORY_NOTES.add("the peak-RSS mark could not be reset (/proc/self/clear_refs), so a "
                         "peak below the model-loading peak reads as 0")
    return peak


MEMORY_NOTES: set = set()


# ----------------------------------------------------------------------------- results
@dataclass
class Row:
    group: str
    model: str
    input: str
    batch: int
    method: str
    variant: str
    ms: dict  # lib -> median ms (or None)
    notes: list
    agree: float | None = None


ROWS: list[Row] = []
MEMORY: dict = {}  # (model, batch, method, lib) -> bytes
MEMORY_INPUT: dict = {}  # (model, batch, method) -> input description
SKIPPED: list[str] = []
DATASET: list = []
TARGETS: list = []  # (target, case, measured, limit, result)


def say(*a):
    print(*a, flush=True)


def fmt_ms(v):
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def fmt_ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def run_case(group: str, m: Model, batch: int, cfg: Config, plan: list, size2d=None, ten=False):
    """Time every (lib, method, variant) of ``plan`` on one model and batch, record rows."""
    net, x = build(m, cfg, batch, size2d)
    runners = [Runner("fwd", "fwd", "", make_fn("fwd", "", "", net, x, m))]
    for lib, method, variant in plan:
        fn = make_fn(lib, method, variant, net, x, m)
        r = Runner(lib, method, variant, fn if callable(fn) else None,
                   slow=lib == "pytorch-grad-cam" and method in ("score_cam", "ablation_cam"))
        if isinstance(fn, str):
            r.error = fn
            if lib == "gradattr":
                line = f"{m.name} b{batch}: gradattr {method}{' ' + variant if variant else ''}: {fn}"
                SKIPPED.append(line)
                say("  skip", line)
        runners.append(r)
    t0 = time.perf_counter()
    time_runners(runners, cfg, net)
    by = {r.key: r for r in runners}
    fwd = by[("fwd", "fwd", "")].median
    methods = list(OrderedDict.fromkeys((mt, v) for _, mt, v in plan))
    for method, variant in methods:
        ms, notes = {"fwd": fwd * 1e3}, []
        for lib in LIBS[1:]:
            r = by.get((lib, method, variant))
            ms[lib] = r.median * 1e3 if r is not None and r.median is not None else None
            if r is not None and r.error and not r.error.startswith("n/a") and lib != "gradattr":
                notes.append(f"{lib}: {r.error}")
            elif r is not None and r.error and r.error.startswith("n/a") and lib == "pytorch-grad-cam":
                notes.append(r.error.replace("n/a ", "pytorch-grad-cam "))
        ga, pg = by.get(("gradattr", method, variant)), by.get(("pytorch-grad-cam", method, variant))
        if ga is not None and ga.error and not ga.error.startswith("not available"):
            notes.append(f"gradattr: {ga.error}")
        agree = agreement(ga.first, pg.first) if ga is not None and pg is not None else None
        row = Row(group, m.name, describe_input(x), batch, method, variant, ms, notes, agree)
        ROWS.append(row)
        say(f"  {m.name:12s} {describe_input(x):>12s} b{batch:<3d} {method + (' ' + variant if variant else ''):24s}"
            f" fwd {fmt_ms(ms['fwd']):>7s} ms  gradattr {fmt_ms(ms['gradattr']):>7s} ms"
            f"  pgc {fmt_ms(ms['pytorch-grad-cam']):>8s} ms  captum {fmt_ms(ms['captum']):>7s} ms"
            f"  gradattr/fwd {fmt_ratio(ms['gradattr'], ms['fwd']):>5s}x"
            f"  gradattr/pgc {fmt_ratio(ms['gradattr'], ms['pytorch-grad-cam']):>5s}x")
    say(f"  (case took {time.perf_counter() - t0:.1f} s)")
    del runners, by
    return net, x


def find(group=None, model=None, batch=None, method=None, variant="") -> Row | None:
    for r in ROWS:
        if ((group is None or r.group == group) and (model is None or r.model == model)
                and (batch is None or r.batch == batch) and (method is None or r.method == method)
                and r.variant == variant):
            return r
    return None


# ----------------------------------------------------------------------------- groups
def group_methods(cfg: Config):
    say("\n== gradient methods and Eigen-CAM (alternating fwd / gradattr / pytorch-grad-cam / captum)")
    for m in (MODELS[name] for name in cfg.models):
        for batch in cfg.batches:
            plan = []
            for method in PLAIN_METHODS:
                plan += [("gradattr", method, ""), ("pytorch-grad-cam", method, "")]
                if method == "grad_cam":
                    plan.append(("captum", method, ""))
            if batch == 1:
                plan.append(("gradattr", "grad_cam", TEN))
            run_case("methods", m, batch, cfg, plan)
            gc.collect()


def group_perturbation(cfg: Config):
    say("\n== perturbation methods, batch 1 (pytorch-grad-cam: default batch sizes, AblationCAM 32, ScoreCAM 16)")
    for name, method, size in cfg.perturbation:
        m = MODELS[name]
        if isinstance(gradattr_fn(method, "", None, None, m), str):
            line = f"{name} b1: gradattr {method}: not available yet (gradattr has no {method})"
            SKIPPED.append(line)
            say("  skip", line, "- pytorch-grad-cam not timed either (seconds per call)")
            continue
        run_case("perturbation", m, 1, cfg, [("gradattr", method, ""), ("pytorch-grad-cam", method, "")],
                 size2d=size)


def group_sweep(cfg: Config):
    m = MODELS[cfg.sweep_model]
    say(f"\n== batch sweep, grad_cam, {m.name}: {cfg.sweep}")
    for batch in cfg.sweep:
        run_case("sweep", m, batch, cfg, [("gradattr", "grad_cam", ""), ("pytorch-grad-cam", "grad_cam", ""),
                                           ("captum", "grad_cam", "")])
        gc.collect()


def group_dataset(cfg: Config):
    from torch.utils.data import DataLoader, TensorDataset

    from gradattr.dataset import explain_dataset
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = MODELS["resnet18"]
    n, bs = cfg.dataset
    say(f"\n== dataset scale: {m.name}, {n} images in batches of {bs}, target = each image's label")
    torch.manual_seed(0)
    net = m.build().eval().to(cfg.device)
    g = torch.Generator().manual_seed(2)
    data = TensorDataset(torch.randn((n, 3, cfg.size2d, cfg.size2d), generator=g),
                         torch.randint(0, 1000, (n,), generator=g))
    loader = DataLoader(data, batch_size=bs, shuffle=False)
    layer = dict(net.named_modules())[m.layer]
    tmp = tempfile.TemporaryDirectory()
    sink = []

    def fwd_loop():
        for xb, _ in loader:
            net(xb.to(cfg.device))

    def explain_callback():
        explain_dataset(net, loader, "grad_cam", target="label", feature_layer=m.layer,
                        on_batch=lambda b: sink.append(float(b.maps.mean())))
        sink.clear()

    def explain_shards():
        explain_dataset(net, loader, "grad_cam", target="label", feature_layer=m.layer,
                        out_dir=tmp.name, overwrite=True)

    def pgc_loop():
        with GradCAM(model=net, target_layers=[layer]) as cam:
            for xb, yb in loader:
                cam(input_tensor=xb, targets=[ClassifierOutputTarget(int(t)) for t in yb])

    runners = [Runner("fwd", "fwd loop", "", fwd_loop),
               Runner("gradattr", "explain_dataset (callback)", "", explain_callback),
               Runner("gradattr", "explain_dataset (.npy shards)", "", explain_shards),
               Runner("pytorch-grad-cam", "GradCAM loop", "", pgc_loop)]
    time_runners(runners, cfg, net)
    fwd = runners[0].median
    for r in runners:
        ips = n / r.median
        DATASET.append((r.lib, r.method, ips, r.median / fwd))
        say(f"  {r.lib:18s} {r.method:30s} {ips:8.1f} images/s  ({r.median / fwd:.2f} x fwd loop time)")
    tmp.cleanup()


def group_memory(cfg: Config):
    how = ("torch.cuda.max_memory_allocated above the allocation before the call" if cfg.device.type == "cuda"
           else "increase of the peak RSS (VmHWM, i.e. ru_maxrss) over the RSS just before the call, one "
                "fresh spawned process per (library, case)")
    say(f"\n== peak memory ({how})")
    base_cfg = {k: v for k, v in vars(cfg).items() if k != "device"}
    cases = [(cfg.mem_model, cfg.mem_batch, "grad_cam", ["fwd", "gradattr", "pytorch-grad-cam", "captum"], None)]
    for name, method, size in cfg.perturbation if not cfg.quick else ():  # --quick: Grad-CAM's only
        if method == "score_cam" and name in ("resnet18", "resnet50"):
            cases.append((name, 1, "score_cam", ["gradattr", "pytorch-grad-cam"], size))
    if cfg.device.type == "cuda" or not cfg.quick:
        for name in MODELS:
            for batch in cfg.batches:
                cases.append((name, batch, "grad_cam", ["fwd", "gradattr", "pytorch-grad-cam", "captum"], None))
    for name, batch, method, libs, size2d in cases:
        m = MODELS[name]
        if isinstance(gradattr_fn(method, "", None, None, m), str):
            say(f"  skip {name} b{batch} {method}: not available yet in gradattr")
            continue
        net = x = None
        MEMORY_INPUT[(name, batch, method)] = "x".join(map(str, (m.channels, *cfg.spatial(m, size2d))))
        if cfg.device.type == "cuda":
            net, x = build(m, cfg, batch, size2d)
        line = []
        for lib in libs:
            spec = dict(model=name, batch=batch, lib=lib, method=method if lib != "fwd" else "fwd", variant="",
                        threads=cfg.threads, size2d=size2d, cfg=base_cfg)
            if isinstance(make_fn_probe(lib, method, m), str):
                continue
            try:
                peak = peak_memory(spec, cfg, net, x)
            except Exception as e:  # noqa: BLE001
                say(f"  {name} b{batch} {lib} {method}: failed: {type(e).__name__}: {e}")
                continue
            MEMORY[(name, batch, method, lib)] = peak
            line.append(f"{lib} {peak / 2**20:.0f} MiB")
        say(f"  {name:12s} b{batch:<3d} {method:10s} " + ", ".join(line))
        del net, x
        gc.collect()


def make_fn_probe(lib: str, method: str, m: Model):
    """Whether a library has the method for this model's rank, without building anything."""
    if lib == "pytorch-grad-cam" and (m.rank == 1 or (m.rank == 3 and method in ("score_cam", "ablation_cam"))):
        return "n/a"
    if lib == "captum" and method != "grad_cam":
        return "n/a"
    return None


# ----------------------------------------------------------------------------- targets
def check(target: str, case: str, measured: float | None, limit: float, op: str):
    if measured is None:
        TARGETS.append((target, case, "-", f"{op} {limit:g}", "SKIP"))
        return
    ok = measured <= limit if op == "<=" else measured >= limit
    TARGETS.append((target, case, f"{measured:.2f}", f"{op} {limit:g}", "PASS" if ok else "FAIL"))


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def evaluate_targets(cfg: Config):
    for r in ROWS:
        case = f"{r.model} {r.input} b{r.batch}"
        if r.group == "methods" and r.method in GRADIENT_METHODS and not r.variant:
            check(f"{r.method} <= 1.15 x fwd", case, ratio(r.ms["gradattr"], r.ms["fwd"]), 1.15, "<=")
            if r.ms["pytorch-grad-cam"] is not None:
                check(f"{r.method} <= 0.5 x pytorch-grad-cam", case,
                      ratio(r.ms["gradattr"], r.ms["pytorch-grad-cam"]), 0.5, "<=")
        if r.group == "methods" and r.variant == TEN:
            one = find("methods", r.model, r.batch, "grad_cam")
            check("10 classes <= 1.3 x one class", case,
                  ratio(r.ms["gradattr"], one.ms["gradattr"] if one else None), 1.3, "<=")
        if r.group == "methods" and r.method == "eigen_cam":
            check("eigen_cam <= 1.0 x fwd", case, ratio(r.ms["gradattr"], r.ms["fwd"]), 1.0, "<=")
        if r.group == "perturbation" and r.method == "ablation_cam" and r.model == "resnet50":
            check("ablation_cam >= 50 x faster than pytorch-grad-cam", case + " layer4",
                  ratio(r.ms["pytorch-grad-cam"], r.ms["gradattr"]), 50, ">=")
            check("ablation_cam <= 3 x fwd", case + " layer4", ratio(r.ms["gradattr"], r.ms["fwd"]), 3, "<=")
        if r.group == "perturbation" and r.method == "score_cam":
            check("score_cam >= 2 x faster than pytorch-grad-cam" + (
                  " (pretrained, photo: extra case)" if r.model == "effnet-lite0-photo" else ""), case,
                  ratio(r.ms["pytorch-grad-cam"], r.ms["gradattr"]), 2, ">=")
    for name in ("resnet18", "resnet50"):
        ga, pg = MEMORY.get((name, 1, "score_cam", "gradattr")), MEMORY.get((name, 1, "score_cam", "pytorch-grad-cam"))
        if ga is not None or pg is not None or "memory" in cfg.groups:
            check("score_cam peak memory <= 0.5 x pytorch-grad-cam", f"{name} b1", ratio(ga, pg), 0.5, "<=")
    ga, fw = MEMORY.get((cfg.mem_model, cfg.mem_batch, "grad_cam", "gradattr")), \
        MEMORY.get((cfg.mem_model, cfg.mem_batch, "grad_cam", "fwd"))
    check("grad_cam peak memory <= 1.2 x fwd", f"{cfg.mem_model} b{cfg.mem_batch}", ratio(ga, fw), 1.2, "<=")


# ----------------------------------------------------------------------------- report
def machine(cfg: Config) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"
    info = {
        "CPU": f"{cpu}, {os.cpu_count()} cores, torch uses {cfg.threads} threads",
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "device used": str(cfg.device),
        "load average (1 min) at start": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "gradattr": getattr(gradattr, "__version__", "?") + f" ({git_rev()})",
        "grad-cam (pytorch_grad_cam)": version("grad-cam"),
        "captum": version("captum"),
        "numpy": np.__version__,
    }
    return info


def load_average() -> str:
    """Other jobs on the machine make timings noisy; the report says how busy it was."""
    try:
        one = os.getloadavg()[0]
    except OSError:
        return "unknown"
    busy = " (busy: other work shares the cores, expect noise)" if one > 0.5 * (os.cpu_count() or 1) else ""
    return f"{one:.2f} on {os.cpu_count()} cores{busy}"


def git_rev() -> str:
    try:
        import subprocess

        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"git {rev}{' + local changes' if dirty else ''}" if rev else "no git"
    except Exception:  # noqa: BLE001
        return "no git"


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(out)


def case_table(group: str) -> str:
    rows = []
    for r in ROWS:
        if r.group != group:
            continue
        ms = r.ms
        rows.append([r.model, r.input, r.batch, r.method + (f" ({r.variant})" if r.variant else ""),
                     fmt_ms(ms["fwd"]), fmt_ms(ms["gradattr"]), fmt_ms(ms["pytorch-grad-cam"]),
                     fmt_ms(ms["captum"]), fmt_ratio(ms["gradattr"], ms["fwd"]),
                     fmt_ratio(ms["gradattr"], ms["pytorch-grad-cam"]),
                     fmt_ratio(ms["gradattr"], ms["captum"]),
                     "-" if r.agree is None else f"{r.agree:.3f}", "; ".join(r.notes)])
    return table(["model", "input (C x spatial)", "batch", "method", "fwd ms", "gradattr ms",
                  "pytorch-grad-cam ms", "captum ms", "gradattr / fwd", "gradattr / pgc",
                  "gradattr / captum", "r (gradattr, pgc)", "notes"], rows)


def sweep_table() -> str:
    rows = []
    for r in ROWS:
        if r.group != "sweep":
            continue
        per = {k: (None if v is None else v / r.batch) for k, v in r.ms.items()}
        rows.append([r.batch, fmt_ms(per["fwd"]), fmt_ms(per["gradattr"]), fmt_ms(per["pytorch-grad-cam"]),
                     fmt_ms(per["captum"]), fmt_ratio(per["gradattr"], per["fwd"]),
                     fmt_ratio(per["gradattr"], per["pytorch-grad-cam"])])
    return table(["batch", "fwd ms/image", "gradattr ms/image", "pytorch-grad-cam ms/image",
                  "captum ms/image", "gradattr / fwd", "gradattr / pgc"], rows)


def write_report(cfg: Config, args, seconds: float, out: Path, info: dict):
    info = {**info, "load average (1 min) at end": load_average()}
    sizes = (f"2-D {cfg.size2d}x{cfg.size2d} (Score/Ablation-CAM: the size in their table), "
             f"3-D {cfg.size3d}^3, 1-D 12x{cfg.length1d}")
    mem_how = ("`torch.cuda.reset_peak_memory_stats()` before the call, then `max_memory_allocated()` minus "
               "the memory allocated before it (model and input excluded)" if cfg.device.type == "cuda" else
               "each (library, case) in a fresh process (multiprocessing spawn): build the model and input, "
               "nothing warmed up, reset the peak-RSS mark (`/proc/self/clear_refs`), read the RSS, call once, "
               "and report the peak RSS minus that RSS (model and input excluded; the first call includes "
               "one-time allocations that every library pays alike). The peak RSS is read as `VmHWM` from "
               "`/proc/self/status`, the value `ru_maxrss` reports, because in a spawned (fork + exec) "
               "process `getrusage().ru_maxrss` also keeps the parent's RSS at the fork and would hide the "
               "child's own peak")
    lines = [
        "# Benchmark results", "",
        f"Generated by `python benchmarks/bench.py {' '.join(sys.argv[1:])}` on "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} in {seconds / 60:.1f} min"
        f"{' (--quick: small inputs, few repeats)' if cfg.quick else ''}.", "",
        "## Machine and versions", "",
        table(["", ""], [[k, v] for k, v in info.items()]), "",
        "## How it was measured", "",
        f"* Inputs: {sizes}; seeded random weights for ResNet-18/50 and the small CNNs, the pretrained "
        "EfficientNet-Lite0; random inputs; one explained class (index 1) for every library; the same "
        "feature layer for every library (`layer4`, EfficientNet `_bn1`, small CNNs `relu3`). "
        "`effnet-lite0-photo` is the pretrained EfficientNet-Lite0 with its head ReLU6 as a module of its "
        "own (`head_act`, the same function) on scikit-image's cat photo, class 285: random weights leave "
        "few Score-CAM channels constant, a trained network on a real image many.",
        f"* Time: median of at least {cfg.repeats} rounds after {cfg.warmup} warm-up call(s) per library "
        f"(fast cases get more rounds, up to {cfg.max_repeats}, to fill about {cfg.case_seconds:g} s), all "
        "libraries in one process, their order rotating from round to round. Calls slower than "
        f"{cfg.slow_seconds:g} s (pytorch-grad-cam's ScoreCAM/AblationCAM, which are never warmed up, and "
        f"any other) are timed {cfg.slow_repeats} time(s).",
        "* `fwd`: one forward pass with autograd enabled, parameters requiring grad (what users have).",
        "* gradattr: its default options (MATLAB-exact bicubic upsampling, raw values) and the explicit "
        "feature layer. pytorch-grad-cam: default settings (the CAM object built and released inside each "
        "call, `ClassifierOutputTarget` per sample, ScoreCAM batch 16 and AblationCAM batch 32 as "
        "default), its own bilinear upsampling and min-max scaling. captum: `LayerGradCam(..., "
        "relu_attributions=True)` + `LayerAttribution.interpolate` (linear/bilinear/trilinear).",
        "* `r (gradattr, pgc)`: Pearson correlation of the two libraries' maps, averaged over the batch (a "
        "check that they compute the same thing; '-' where shapes differ or the maps are constant). The two "
        "upsample differently (MATLAB bicubic vs OpenCV bilinear / scipy spline zoom), so r < 1 even for "
        "the same map; Eigen-CAM's sign is arbitrary in pytorch-grad-cam, so r may be negative.",
        f"* Peak memory: {mem_how}.",
    ]
    lines += [f"* Note: {n}." for n in sorted(MEMORY_NOTES)]
    lines += ["", "## Targets (issue 4)", "",
              table(["target", "case", "measured (x)", "limit (x)", "result"], [list(t) for t in TARGETS]), ""]
    if any(r.group == "methods" for r in ROWS):
        lines += ["## Gradient methods and Eigen-CAM", "", case_table("methods"), ""]
    if any(r.group == "perturbation" for r in ROWS):
        lines += ["## Score-CAM and Ablation-CAM (batch 1)", "", case_table("perturbation"), ""]
    if any(r.group == "sweep" for r in ROWS):
        lines += [f"## Batch sweep (grad_cam, {cfg.sweep_model}, per image)", "", sweep_table(), ""]
    if DATASET:
        n, bs = cfg.dataset
        lines += [f"## Dataset scale (resnet18, {n} images {cfg.size2d}x{cfg.size2d}, batches of {bs}, "
                  "each image's label)", "",
                  table(["library", "run", "images/s", "time / fwd loop (x)"],
                        [[lib, what, f"{ips:.1f}", f"{rel:.2f}"] for lib, what, ips, rel in DATASET]), ""]
    if MEMORY:
        rows = []
        for (name, batch, method), libs in group_by_case(MEMORY).items():
            fw = libs.get("fwd")
            rows.append([name, MEMORY_INPUT.get((name, batch, method), "?"), batch, method] + [
                "-" if libs.get(lib) is None else f"{libs[lib] / 2**20:.0f}" for lib in LIBS] +
                [fmt_ratio(libs.get("gradattr"), fw), fmt_ratio(libs.get("gradattr"), libs.get("pytorch-grad-cam"))])
        lines += ["## Peak memory (MiB above model + input)", "",
                  table(["model", "input", "batch", "method", "fwd", "gradattr", "pytorch-grad-cam", "captum",
                         "gradattr / fwd", "gradattr / pgc"], rows), ""]
    if SKIPPED:
        lines += ["## Skipped", ""] + [f"* {s}" for s in SKIPPED] + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = ""  # the hand-run section (bench_overhead, bench_floor, bench_attribution) stays as it is
    if out.exists() and KEEP in out.read_text():
        old = out.read_text()
        kept = "\n" + old[old.index(KEEP):]
    out.write_text("\n".join(lines) + kept)


def group_by_case(mem: dict) -> dict:
    out: dict = OrderedDict()
    for (name, batch, method, lib), v in mem.items():
        out.setdefault((name, batch, method), {})[lib] = v
    return out


# ----------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small inputs, the small models, few repeats (about 2 "
                   "minutes on 2 CPU cores; writes benchmarks/output/RESULTS-quick.md, untracked)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=None, help="the markdown report (default: benchmarks/RESULTS.md, with "
                   "--quick benchmarks/output/RESULTS-quick.md)")
    p.add_argument("--groups", default="methods,perturbation,sweep,dataset,memory",
                   help="comma-separated subset of: methods, perturbation, sweep, dataset, memory")
    p.add_argument("--models", default=None,
                   help="comma-separated subset of: " + ", ".join(MODELS) + " (for the methods group; default "
                   "resnet18,resnet50,effnet-lite0,cnn3d,cnn1d, with --quick resnet18,cnn3d,cnn1d)")
    p.add_argument("--repeats", type=int, default=None, help="override the number of timed repeats")
    p.add_argument("--batches", default=None, help="batch sizes of the methods group, e.g. 1 or 1,16 "
                   "(default 1,16; --quick 1,8)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is available")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    unknown = set(groups) - {"methods", "perturbation", "sweep", "dataset", "memory"}
    if unknown:
        sys.exit(f"--groups: unknown group(s) {sorted(unknown)}")
    q = args.quick
    models = tuple(m.strip() for m in (args.models or ("resnet18,cnn3d,cnn1d" if q else
                                                        "resnet18,resnet50,effnet-lite0,cnn3d,cnn1d")).split(",")
                   if m.strip())
    if set(models) - set(MODELS):
        sys.exit(f"--models: unknown model(s) {sorted(set(models) - set(MODELS))}")
    cfg = Config(quick=q, device=device, threads=torch.get_num_threads(),
                 size2d=96 if q else 224, size3d=24 if q else 64, length1d=2048 if q else 4096,
                 batches=tuple(int(b) for b in args.batches.split(",")) if args.batches else (1, 8) if q else (1, 16),
                 sweep=(1, 8) if q else (1, 2, 4, 8, 16, 32, 64),
                 repeats=args.repeats or (3 if q else 7), warmup=1 if q else 2,
                 slow_repeats=1 if q else 3, slow_seconds=1.0 if q else 10.0,
                 case_seconds=0.5 if q else 10.0, max_repeats=10 if q else 50,
                 perturbation=(("resnet18", "ablation_cam", 32), ("resnet18", "score_cam", 32)) if q else
                 (("resnet50", "ablation_cam", 224), ("effnet-lite0", "ablation_cam", 224),
                  ("resnet18", "score_cam", 224), ("resnet50", "score_cam", 224),
                  ("effnet-lite0-photo", "score_cam", 224)), mem_batch=8 if q else 32,
                 mem_model="resnet18" if q else "resnet50", sweep_model="resnet18" if q else "resnet50",
                 dataset=(32, 8) if q else (512, 32),
                 groups=groups, models=models)
    info = machine(cfg)
    say("gradattr benchmark", "(quick)" if q else "")
    for k, v in info.items():
        say(f"  {k}: {v}")
    t0 = time.perf_counter()
    for name in groups:
        {"methods": group_methods, "perturbation": group_perturbation, "sweep": group_sweep,
         "dataset": group_dataset, "memory": group_memory}[name](cfg)
    evaluate_targets(cfg)
    seconds = time.perf_counter() - t0
    say("\n== targets")
    for t, case, measured, limit, result in TARGETS:
        unit = "" if measured == "-" else "x"
        say(f"  {result:4s}  {t:52s} {case:28s} measured {measured:>7s}{unit} (limit {limit}x)")
    for s in SKIPPED:
        say(f"  SKIP  {s}")
    out = Path(args.out or (ROOT / "benchmarks" / ("output/RESULTS-quick.md" if q else "RESULTS.md")))
    write_report(cfg, args, seconds, out, info)
    say(f"\nwrote {out} (the benchmark took {seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()

