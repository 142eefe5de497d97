"""Memory: masked-input chunks sized from what a forward pass really holds; many targets without
a K x K matrix, chunked, and refused with the estimate when their gradients cannot fit.

Peak memory is the process's resident high-water mark (``VmHWM``), reset before the call by
writing 5 to ``/proc/self/clear_refs``: torch's CPU allocations are invisible to tracemalloc.
"""
from __future__ import annotations

import re
import sys

import pytest
import torch
from torch import nn

import gradattr
from gradattr import budget, capture, scorer
from gradattr.capture import gradients
from expected_warnings import ZERO_MAPS

MiB = 2**20


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def _peak_mib(fn):
    """``(result, peak resident memory of fn() above the resident memory before it, in MiB)``."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the high-water mark restarts from the current resident size
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    base = _rss_mib("VmRSS")
    out = fn()
    return out, _rss_mib("VmHWM") - base


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


def wide_first_layer() -> nn.Module:
    """The report's case: a feature layer 64 times the input's size (a 1 x 1 convolution)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 64, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10)).eval()


@linux_only
def test_score_cam_chunks_fit_the_budget_when_the_feature_map_dwarfs_the_input(monkeypatch):
    # 1 x 1 x 64 x 64 input, 64 x 64 x 64 feature map: 16x the input's bytes allowed 64 copies per
    # pass here (64 x 2 x 1 MiB of convolution and ReLU outputs = 128 MiB for a 16 MiB budget);
    # the observed forward pass allows 7.
    monkeypatch.setattr(budget, "MEMORY_BUDGET", 16 * MiB)
    net, x = wide_first_layer(), torch.randn(1, 1, 64, 64)
    gradattr.grad_cam(net, x[..., :8, :8], 3, feature_layer="0")  # imports and allocator warm
    want = gradattr.score_cam(net, x, 3, feature_layer="0", batch_size=8)
    got, peak = _peak_mib(lambda: gradattr.score_cam(net, x, 3, feature_layer="0"))
    assert peak < 16 + 24, f"peak {peak:.0f} MiB for a 16 MiB budget"  # margin: masks, scores, allocator
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_chunks_come_from_the_observed_forward_pass():
    net, x = wide_first_layer(), torch.randn(1, 1, 224, 224)
    call = gradattr.prep.prepare_call(net, x, target=3)
    plan = capture.plan_from_options(net, "0", None, None, None)
    with call.borrowed():
        cap = capture.capture(call, plan, grad=False)
        p = scorer.Scorer(call, cap.plan, cap)
        # the convolution's and the ReLU's outputs are alive together: 2 x 64 x 224 x 224 floats
        assert p.budget.forward_bytes() == 2 * 64 * 224 * 224 * 4
        assert p.budget.forward_bytes(tail=True) == 2 * 64 * 224 * 224 * 4  # the feature layer is first
        per_copy = p.budget.masked_bytes()
        assert per_copy >= budget.FORWARD_MARGIN * 2 * 64 * 224 * 224 * 4
        assert budget.chunk_size(None, per_copy, x.device) == budget.MEMORY_BUDGET // per_copy == 10
        # Ablation-CAM's copies of the 64 x 224 x 224 map (one each: the chunk's buffer, handed
        # over as it is) and the layers after it (the ReLU's output, with the margin)
        assert p.budget.copy_bytes(tail=True) == 64 * 224 * 224 * 4 * (1 + budget.FORWARD_MARGIN)
        assert p.activation_chunk(None) == budget.MEMORY_BUDGET // p.budget.copy_bytes(tail=True) == 13


def test_small_inputs_keep_their_chunks_and_their_maps():
    """Maps of small inputs are bit-identical to before: their chunk is still CPU_CHUNK."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 70, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(70, 5)).eval()
    x = torch.randn(2, 3, 16, 16)
    seen = []
    original = scorer.Scorer.score_inputs

    def spy(self, xb, rows, softmax=False):
        seen.append(len(xb))
        return original(self, xb, rows, softmax)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scorer.Scorer, "score_inputs", spy)
        got = gradattr.score_cam(net, x, [1, 3])
    assert seen[:3] == [64, 64, 12]  # 140 masked inputs: the chunks 16x the input's bytes gave
    assert torch.equal(got, gradattr.score_cam(net, x, [1, 3], batch_size=budget.CPU_CHUNK))


# -- many targets ----------------------------------------------------------------------------
def many_classes(k: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(8, k)).eval()


@ZERO_MAPS
def test_targets_run_in_chunks_without_a_k_by_k_matrix(monkeypatch):
    k = 3000
    net, x = many_classes(k), torch.randn(2, 1, 8, 8)
    # a row: 3 x 2 x 3000 floats of one-hot rows + 2 x 2 x 8 x 8 floats of gradients = 73,024 bytes
    monkeypatch.setattr(gradients, "GRADS_BUDGET", 2 * MiB)  # 28 rows
    shapes = []
    grad = torch.autograd.grad

    def spy(outputs, inputs, grad_outputs=None, **kw):
        if kw.get("is_grads_batched"):
            shapes.append(tuple(grad_outputs.shape))
        return grad(outputs, inputs, grad_outputs=grad_outputs, **kw)
    monkeypatch.setattr(torch.autograd, "grad", spy)
    maps = gradattr.grad_cam(net, x, list(range(k)), feature_layer="1", upsampling="none")
    monkeypatch.setattr(torch.autograd, "grad", grad)
    assert maps.shape == (2, k, 8, 8)
    assert shapes[0] == (28, 2, k) and len(shapes) == -(-k // 28)  # never (k, 2, k)
    for c in (0, 1, 1234, 2999):
        one = gradattr.grad_cam(net, x, c, feature_layer="1", upsampling="none")
        torch.testing.assert_close(maps[:, c], one, rtol=1e-5, atol=1e-7)


@ZERO_MAPS
def test_a_reduction_fn_with_many_scores_is_chunked_too(monkeypatch):
    k = 500
    net, x = many_classes(k), torch.randn(1, 1, 8, 8)
    monkeypatch.setattr(gradients, "GRADS_BUDGET", 64 * 1024)  # 3 x 500 floats a row: 10 rows
    maps = gradattr.grad_cam(net, x, reduction_fn=lambda y: y * 2, feature_layer="1",
                             upsampling="none")
    assert maps.shape == (1, k, 8, 8)
    for c in (0, 7, 499):
        one = gradattr.grad_cam(net, x, reduction_fn=lambda y, c=c: 2 * y[:, c], feature_layer="1",
                                upsampling="none")
        torch.testing.assert_close(maps[0, c], one[0], rtol=1e-5, atol=1e-7)


def test_targets_whose_gradients_cannot_fit_are_refused_with_the_estimate(monkeypatch):
    net, x = many_classes(1000), torch.randn(1, 1, 8, 8)
    monkeypatch.setattr(gradients, "_available_bytes", lambda device: 100_000)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # 1000 targets x (1 x 2 x 8 x 8 floats = 512 bytes) = 0.49 MiB of gradients, 0.1 MB free
    with pytest.raises(gradattr.GradattrError, match=r"target: .*1000 targets need 0 MiB of gradients "
                       r"\(1000 x 0.00 MiB .*\) and 0 MiB are free on cpu; explain fewer targets"):
        gradattr.grad_cam(net, x, list(range(1000)), feature_layer="1")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in net.modules())


@pytest.mark.slow
@linux_only
def test_thirty_thousand_targets_stay_within_a_bounded_peak():
    k = 30000  # one K x K float32 matrix would be 3,433 MiB
    net, x = many_classes(k), torch.randn(1, 1, 8, 8)
    gradattr.grad_cam(net, x, 3, feature_layer="1")
    maps, peak = _peak_mib(lambda: gradattr.grad_cam(net, x, list(range(k)), feature_layer="1",
                                                    upsampling="none"))
    assert maps.shape == (1, k, 8, 8)
    assert peak < gradients.GRADS_BUDGET / MiB + 100, f"peak {peak:.0f} MiB"  # 10 GiB before
    for c in (0, 17, 29999):
        one = gradattr.grad_cam(net, x, c, feature_layer="1", upsampling="none")
        torch.testing.assert_close(maps[:, c], one, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_score_cam_gpu_peak_within_the_budget():
    net, x = wide_first_layer().cuda(), torch.randn(1, 1, 224, 224, device="cuda")
    gradattr.grad_cam(net, x, 3, feature_layer="0")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gradattr.score_cam(net, x, 3, feature_layer="0")
    peak = (torch.cuda.max_memory_allocated() - base) / MiB
    assert peak < budget.MEMORY_BUDGET / MiB + 64, f"peak {peak:.0f} MiB"
