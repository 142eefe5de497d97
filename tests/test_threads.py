"""One model shared between threads: every map right, no bogus error, state untouched.

Serving code explains predictions from a thread pool with one model. Hooks act
only for the call (thread) that installed them, and eval-mode borrowing is
counted per model, so the model returns to train mode only when the last call
ends (see gradattr.borrow.borrowed).
"""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import gradattr
from expected_warnings import ZERO_MAPS


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))


def state(net: nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def run_threads(work, count: int = 4):
    errors: list = []

    def guarded(i):
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 - every failure is reported by the test
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parametrize("method,calls", [pytest.param("grad_cam", 250, marks=pytest.mark.slow),
                                          ("grad_cam", 60), ("score_cam", 60), ("ablation_cam", 60)])
def test_four_threads_on_one_model_in_train_mode_give_the_single_threaded_maps(method, calls):
    net = bn_net()
    with torch.no_grad():  # non-trivial running statistics, so using batch statistics would show
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    net.train()
    before = state(net)
    xs = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    expected = [gradattr.attribute(net, x, [1, 3], method=method) for x in xs]
    wrong: list = []

    def work(i):
        for _ in range(calls):
            got = gradattr.attribute(net, xs[i], [1, 3], method=method)
            if not torch.equal(got, expected[i]):
                wrong.append((i, float((got - expected[i]).abs().max())))

    errors = run_threads(work)
    assert errors == [] and wrong == []
    after = state(net)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics bit-identical
    assert all(m.training for m in net.modules())  # train mode back once the last call ended
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0


@pytest.mark.slow  # a few seconds: CI's second step
def test_a_plain_forward_thread_beside_explanations_never_sees_their_hooks():
    net = bn_net().eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        plain_ref = net(x)
    cam_ref = gradattr.grad_cam(net, x, 2, feature_layer="4")
    plain_bad, cam_bad = [], []
    stop = threading.Event()

    def plain():
        while not stop.is_set():
            with torch.no_grad():
                y = net(x)
            if not torch.equal(y, plain_ref):
                plain_bad.append(y)

    def explain(i):
        for _ in range(150):
            m = gradattr.grad_cam(net, x, 2, feature_layer="4" if i % 2 else None)
            if not torch.allclose(m, cam_ref, rtol=1e-5, atol=1e-6):
                cam_bad.append(m)

    t = threading.Thread(target=plain)
    t.start()
    try:
        errors = run_threads(explain, 3)
    finally:
        stop.set()
        t.join()
    assert errors == [] and plain_bad == [] and cam_bad == []


class _Interrupt(nn.Module):
    """Raises KeyboardInterrupt (Ctrl-C) in the middle of the forward pass when armed."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x):
        if self.armed:
            raise KeyboardInterrupt("Ctrl-C mid-forward")
        return x


@ZERO_MAPS
@pytest.mark.parametrize("method", ["grad_cam", "score_cam"])
def test_ctrl_c_mid_forward_leaves_train_mode_hooks_and_statistics_as_found(method):
    net = bn_net()
    stop = _Interrupt()
    net.insert(3, stop)  # after the BatchNorm and ReLU
    net.train()
    net[1].eval()  # a mixed state must come back exactly: BatchNorm in eval, the rest training
    before, modes = state(net), [m.training for m in net.modules()]
    x = torch.rand(2, 3, 12, 12)
    want = getattr(gradattr, method)(net, x, 1, feature_layer="4")  # the first call works
    stop.armed = True
    with pytest.raises(KeyboardInterrupt):
        getattr(gradattr, method)(net, x, 1, feature_layer="4")
    assert [m.training for m in net.modules()] == modes
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in net.modules())
    stop.armed = False
    assert torch.equal(getattr(gradattr, method)(net, x, 1, feature_layer="4"), want)
