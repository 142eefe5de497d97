"""The per-call path: one host read per call, the explainer equals the functions, fast
argument binding behaves like a plain ``def``, and borrowing a model is exact and cheap."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gradattr
from gradattr.errors import GradattrError


def tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(16, 4)).eval()


READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")


def record_reads(monkeypatch) -> list:
    """Every read of a tensor's values by the host: (method, storage pointer, result's storage)."""
    log = []
    for name in READS:
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, _orig=orig, _name=name, **k):
            out = _orig(self, *a, **k)
            ptr = self.untyped_storage().data_ptr() if self.device.type != "meta" else None
            log.append((_name, ptr, out.untyped_storage().data_ptr() if isinstance(out, torch.Tensor) else None))
            return out
        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return log


@pytest.mark.parametrize("kw", [dict(feature_layer="3"), dict(feature_layer="3", upsampling="nearest"), {}],
                         ids=["explicit", "nearest", "automatic"])
def test_one_host_read_per_call(monkeypatch, kw):
    """The NaN/Inf checks of the input and the scores and the maps' own check are read
    together, once: every other read of a tensor's values is of that one copy. (The read off
    the CPU, forced here: on the CPU, where there is no synchronisation to save, the same
    values are read one by one, next test.)"""
    net, x = tiny(), torch.randn(2, 3, 16, 16)
    gradattr.grad_cam(net, x, 1, **kw)  # the automatic layer is chosen (and remembered) here
    monkeypatch.setattr(gradattr.prep, "_read_on_cpu", gradattr.prep._read_once)
    log = record_reads(monkeypatch)
    gradattr.grad_cam(net, x, 1, **kw)
    monkeypatch.undo()
    copies = [entry for entry in log if entry[0] in ("cpu", "numpy")]
    assert len(copies) == 1, log
    read = copies[0][2]
    assert all(ptr == read for _, ptr, _ in log), log


@pytest.mark.parametrize("kw", [dict(feature_layer="3"), {}], ids=["explicit", "automatic"])
def test_on_the_cpu_only_the_checks_and_the_peaks_are_read(monkeypatch, kw):
    """On the CPU the deferred sums (the input's, the score's) are read by ``float`` and the
    maps' peaks by one ``tolist``: nothing else of the call is read, and nothing is copied."""
    net, x = tiny(), torch.randn(2, 3, 16, 16)
    gradattr.grad_cam(net, x, 1, **kw)
    log = record_reads(monkeypatch)
    gradattr.grad_cam(net, x, 1, **kw)
    monkeypatch.undo()
    assert [name for name, _, _ in log] == ["__float__", "__float__", "tolist"], log
    assert len({ptr for _, ptr, _ in log}) == 3


def test_deferred_checks_keep_their_errors():
    """Deferring the checks changes when they are read, not what they say."""
    net = tiny()
    x = torch.randn(1, 3, 16, 16)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(GradattrError, match=r"^x: expected finite values, got NaN or Inf \(1 NaN, 0 Inf"):
        gradattr.grad_cam(net, x, 1, feature_layer="3")
    with pytest.raises(GradattrError, match="overflows float16"):
        gradattr.grad_cam(net.half(), torch.full((1, 3, 16, 16), 1e6), 1, feature_layer="3")
    net = tiny()
    big = torch.full((1, 3, 16, 16), 1e36)  # finite, but its sum overflows: no error
    assert torch.isinf(big.sum())
    assert torch.isfinite(gradattr.grad_cam(net, big, 1, feature_layer="3", relu=False)).all()
    with torch.no_grad():
        net[6].bias[2] = float("nan")  # a NaN score for class 2 only
    with pytest.raises(GradattrError, match=r"^net: expected finite outputs for the target classes, got NaN"):
        gradattr.grad_cam(net, torch.randn(1, 3, 16, 16), 2, feature_layer="3")
    assert torch.isfinite(gradattr.grad_cam(net, torch.randn(1, 3, 16, 16), 1, feature_layer="3",
                                            relu=False)).all()


METHODS = [("grad_cam", dict(feature_layer="3"), 1), ("grad_cam", {}, 1), ("layer_cam", {}, [0, 2]),
           ("score_cam", dict(batch_size=8), 1), ("eigen_cam", {}, None), ("saliency", {}, 3),
           ("grad_cam", dict(feature_layer="3", normalize=True, upsampling="none"), 1)]


@pytest.mark.parametrize("method,kw,target", METHODS, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(METHODS)])
def test_explainer_equals_the_function(method, kw, target):
    net, x = tiny(), torch.randn(2, 3, 16, 16)
    ex = gradattr.explainer(net, method, **kw)
    for xi in (x, x.numpy(), x[0]):
        want = getattr(gradattr, method)(net, xi, target, **kw) if target is not None else \
            getattr(gradattr, method)(net, xi, **kw)
        got = ex(xi, target)
        assert type(got) is type(want)
        assert got.shape == want.shape and (np.array_equal(got, want) if isinstance(got, np.ndarray)
                                            else torch.equal(got, want))


def test_explainer_leaves_the_model_as_found_and_refuses_bad_options():
    net = tiny().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ex = gradattr.explainer(net, "grad_cam", feature_layer="3")
    ex(torch.randn(1, 3, 16, 16), 0)
    assert all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with pytest.raises(GradattrError, match="feature_layer: expected the name of a submodule"):
        gradattr.explainer(net, "grad_cam", feature_layer="nope")
    with pytest.raises(GradattrError, match="upsampling: expected one of"):
        gradattr.explainer(net, "grad_cam", upsampling="cubic")
    with pytest.raises(GradattrError, match="target: give it to each call"):
        gradattr.explainer(net, "grad_cam", target=1)
    with pytest.raises(GradattrError, match="batch_size: expected an option of grad_cam"):
        gradattr.explainer(net, "grad_cam", batch_size=3)
    with pytest.raises(GradattrError, match="target: expected None for eigen_cam"):
        gradattr.explainer(net, "eigen_cam")(torch.randn(1, 3, 16, 16), 1)


def test_fast_binding_is_a_def():
    net, x = tiny(), torch.randn(1, 3, 16, 16)
    a = gradattr.grad_cam(net, x, 1, None, "3", None, "nearest", "cpu")  # MATLAB's positional order
    b = gradattr.grad_cam(net=net, x=x, target=1, feature_layer="3", upsampling="nearest", device="cpu")
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="multiple values for argument 'target'"):
        gradattr.grad_cam(net, x, 1, target=1)
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        gradattr.grad_cam(net)
    with pytest.raises(TypeError, match="too many positional arguments"):
        gradattr.score_cam(net, x, 1, None)
    with pytest.raises(GradattrError, match="target_layers: grad_cam does not take"):
        gradattr.grad_cam(net, x, 1, target_layers=[net[2]])


def test_borrowing_skips_no_module_and_restores_written_buffers():
    """Eval mode reaches a module added since the last call; a buffer a module writes in eval
    mode is restored, and BatchNorm's running statistics are left as they were."""
    class Counter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, t):
            self.calls += 1  # written even in eval mode
            return t

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    x = torch.randn(2, 3, 8, 8)
    gradattr.grad_cam(net, x, 1, feature_layer="2")
    net.insert(3, Counter())
    net.insert(4, torch.nn.Dropout(0.9))
    net.train()
    stats = net[1].running_mean.clone()
    want = gradattr.grad_cam(net.eval(), x, 1, feature_layer="2")
    net.train()
    assert torch.equal(gradattr.grad_cam(net, x, 1, feature_layer="2"), want)  # dropout was off
    assert float(net[3].calls) == 0 and torch.equal(net[1].running_mean, stats)
    assert all(m.training for m in net.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("upsampling", ["bicubic", "nearest"])
def test_no_host_synchronisation_on_a_gpu(upsampling):
    """With torch's sync debug mode set to "error", a Grad-CAM call on a known layer runs
    through: its one read (the checks and the maps' peaks together) is the only sync."""
    net, x = tiny().cuda(), torch.randn(2, 3, 16, 16, device="cuda")
    want = gradattr.grad_cam(net, x, 1, feature_layer="3", upsampling=upsampling)  # warm: caches on the GPU
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = gradattr.grad_cam(net, x, 1, feature_layer="3", upsampling=upsampling)
        ex = gradattr.explainer(net, "grad_cam", feature_layer="3", upsampling=upsampling)
        again = ex(x, 1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(got, want) and torch.equal(again, want)


def test_an_all_zero_map_is_explained_from_the_pass_that_made_it():
    """Why a Grad-CAM map is all zero is read from the activations and gradients already
    captured: no pass of its own, and the warning says the same as before. Only when the score
    depends on the layer (the weighted sums are all <= 0) does one more pass without gradients
    look at what the layer feeds (a flattening head: try hires_cam)."""
    net, x = tiny(), torch.randn(1, 3, 16, 16)
    calls = []
    net.register_forward_pre_hook(lambda m, i: calls.append(1))
    with torch.no_grad():
        net[6].weight.zero_()  # the score no longer depends on the features
    with pytest.warns(gradattr.GradattrWarning, match="the score does not depend on this layer"):
        gradattr.grad_cam(net, x, 1, feature_layer="3")
    assert len(calls) == 1
    with torch.no_grad():
        net[6].weight.fill_(-1.0)  # every feature now counts against class 1
    calls.clear()
    with pytest.warns(gradattr.GradattrWarning, match=r"every weighted sum was <= 0 before the ReLU") as record:
        gradattr.grad_cam(net, x, 1, feature_layer="3")
    assert len(calls) == 2 and "hires_cam" not in str(record[0].message)  # a pooled head
