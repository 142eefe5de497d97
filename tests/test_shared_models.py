"""Models that share a submodule, route inputs, write buffers in every pass, or change mode mid-call.

Eval mode and buffers are borrowed per module (gradattr.borrow.borrowed): a backbone shared by
two models stays in eval mode until the last call through either ends, and its buffers come
back as they were. A remembered automatic layer that an input does not reach is chosen again.
"""
from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

import gradattr


def state(net: nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- a backbone shared by two models -------------------------------------------------------
class Gate(nn.Module):
    """Once armed: signals ``arrived`` and waits for ``go`` in its next forward pass."""

    def __init__(self):
        super().__init__()
        self.arrived, self.go, self.armed = threading.Event(), threading.Event(), False

    def forward(self, x):
        if self.armed:
            self.armed = False
            self.arrived.set()
            assert self.go.wait(20), "the other call never came"
        return x


def two_models_one_backbone():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                             nn.Dropout(0.5), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        backbone[1].running_mean.uniform_(-0.5, 0.5)
        backbone[1].running_var.uniform_(0.5, 2.0)
    first = nn.Sequential(Gate(), backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
    second = nn.Sequential(Gate(), backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    return backbone, first, second


@pytest.mark.parametrize("method", ["grad_cam", "score_cam"])
def test_a_backbone_shared_by_two_models_stays_in_eval_mode_while_either_call_runs(method):
    backbone, first, second = two_models_one_backbone()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    first.train()
    second.train()
    explain = getattr(gradattr, method)
    want_first = explain(first, x, [1, 2], feature_layer="1.5")
    want_second = explain(second, x, [0, 2], feature_layer="1.5")
    before = state(backbone)

    # Forced overlap: the first model's call begins, then waits inside its forward pass until
    # the second model's call is inside its own; the first call then ends while the second
    # waits for it, and the second goes on. Borrowed per top-level model, the end of the first
    # call put the shared backbone back in train mode under the running second call (dropout
    # and batch statistics in its map, its running statistics updated).
    g1, g2 = first[0], second[0]
    g1.armed = g2.armed = True
    g1.go = g2.arrived  # the first call goes on once the second is inside
    got, errors = {}, []

    def run(name, net, classes):
        try:
            got[name] = explain(net, x, classes, feature_layer="1.5")
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        finally:
            if name == "first":
                g2.go.set()  # the second call goes on once the first has ended

    threads = [threading.Thread(target=run, args=("first", first, [1, 2])),
               threading.Thread(target=run, args=("second", second, [0, 2]))]
    threads[0].start()
    assert g1.arrived.wait(20)
    threads[1].start()
    for t in threads:
        t.join()
    assert errors == []
    assert torch.equal(got["first"], want_first) and torch.equal(got["second"], want_second)
    assert same_state(before, state(backbone))  # BatchNorm statistics bit-identical
    assert all(m.training for m in first.modules()) and all(m.training for m in second.modules())
    assert not any(m._forward_hooks for m in second.modules())


def test_borrowing_is_counted_per_submodule():
    backbone, first, second = two_models_one_backbone()
    first.train()
    second.train()
    a, b = gradattr.borrow.borrowed(first), gradattr.borrow.borrowed(second)
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)  # the first call ends while the second runs
    assert first[4].training  # the first model's own head is back in train mode...
    assert not any(m.training for m in second.modules())  # ...the shared backbone is not
    b.__exit__(None, None, None)
    assert all(m.training for m in first.modules()) and all(m.training for m in second.modules())


# -- a remembered automatic layer and a routed network -------------------------------------
class Routed(nn.Module):
    """Branch ``a`` for inputs with a positive mean, branch ``b`` otherwise."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)

        def branch():
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.a, self.b = branch(), branch()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))

    def forward(self, x):
        return self.head(self.a(x) if x.mean() > 0 else self.b(x))


def test_a_remembered_automatic_layer_is_chosen_again_when_the_input_takes_another_branch():
    net = Routed().eval()
    xa = torch.rand(1, 3, 8, 8) + 0.5
    xb = -torch.rand(1, 3, 8, 8) - 0.5
    _, layer_a, _ = gradattr.grad_cam(net, xa, 1, return_layers=True)
    assert layer_a == "a"
    # Before: "feature_layer: ... 'a.3' was never called for this input".
    map_b, layer_b, _ = gradattr.grad_cam(net, xb, 1, return_layers=True)
    assert layer_b == "b"
    assert torch.equal(map_b, gradattr.grad_cam(net, xb, 1, feature_layer="b"))
    assert torch.equal(gradattr.score_cam(net, xb, 1), gradattr.score_cam(net, xb, 1, feature_layer="b"))
    # and back: each input gets the layer on its own branch
    assert gradattr.grad_cam(net, xa, 1, return_layers=True)[1] == "a"
    assert not any(m._forward_hooks for m in net.modules())


def test_a_layer_the_user_chose_is_still_an_error_when_the_input_does_not_reach_it():
    net = Routed().eval()
    xb = -torch.rand(1, 3, 8, 8) - 0.5
    with pytest.raises(gradattr.GradattrError, match="'a.3' was never called for this input"):
        gradattr.grad_cam(net, xb, 1, feature_layer="a.3")


# -- buffers written by every forward pass -------------------------------------------------
class Counting(nn.Module):
    """Counts its calls (an int buffer, in place) and keeps an EMA of its input's mean (a float
    buffer, replaced), in eval mode too; its output depends on both."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema", torch.zeros(channels))

    def forward(self, x):
        self.calls += 1
        self.ema = 0.9 * self.ema + 0.1 * x.detach().mean((0, 2, 3))
        return x + 0.01 * self.calls * self.ema[:, None, None]


def counting_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), Counting(6), nn.ReLU(),
                         nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(5, 4))


@pytest.mark.parametrize("method", ["grad_cam", "score_cam"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_buffers_written_by_the_forward_pass_are_put_back(method, mode):
    net = counting_net()
    with torch.no_grad():
        net[2].calls.fill_(7)
        net[2].ema.uniform_(0, 1)
        net[1].running_mean.uniform_(-0.5, 0.5)
    net.train(mode == "train")
    before = state(net)
    ema, calls = net[2].ema, net[2].calls
    x = torch.randn(2, 3, 8, 8)
    first = getattr(gradattr, method)(net, x, 1, feature_layer="4")
    assert same_state(before, state(net))  # the counter, the EMA and BatchNorm's statistics
    assert net[2].ema is ema and net[2].calls is calls  # the buffers themselves, not copies
    assert [m.training for m in net.modules()] == [mode == "train"] * len(list(net.modules()))
    # each call starts from the same buffers, so it gives the same map
    assert torch.equal(getattr(gradattr, method)(net, x, 1, feature_layer="4"), first)


def test_buffers_are_put_back_after_an_error():
    net = counting_net().eval()
    before = state(net)
    with pytest.raises(gradattr.GradattrError, match="class indices in 0..3"):  # found after a pass
        gradattr.grad_cam(net, torch.randn(1, 3, 8, 8), 10, feature_layer="4")
    assert same_state(before, state(net))


# -- a mode change made during a call ------------------------------------------------------
def test_a_mode_change_during_a_call_is_undone_when_it_ends():
    """Documented in README "Guarantees": the flags come back as they were when the call began."""
    net = counting_net().train()

    def reduction_fn(y):
        net.eval()  # the user's net.eval() while the call runs
        return y[:, 1]
    gradattr.grad_cam(net, torch.randn(2, 3, 8, 8), reduction_fn=reduction_fn, feature_layer="4")
    assert all(m.training for m in net.modules())

    net.eval()

    def to_train(y):
        net.train()
        return y[:, 1]
    gradattr.grad_cam(net, torch.randn(2, 3, 8, 8), reduction_fn=to_train, feature_layer="4")
    assert not any(m.training for m in net.modules())


class RefusesEval(nn.Sequential):
    """``eval()`` raises (a model that refuses to leave training mode) until ``allow`` is set."""

    allow = False

    def train(self, mode: bool = True):
        if not mode and not self.allow:
            raise RuntimeError("this model stays in training mode")
        return super().train(mode)


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "another borrow running"])
def test_a_borrow_that_fails_to_begin_leaves_nothing_behind(shared):
    """``net.eval()`` raising inside the borrow: the error reaches the caller, the model keeps
    its mode, and the next call borrows and restores the model as usual (a borrow left counted
    would keep its modules in eval mode after every later call)."""
    from gradattr import borrow
    net = RefusesEval(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    other = nn.Sequential(nn.Linear(2, 2)).train()
    held = borrow.borrowed(other)
    if shared:
        held.__enter__()
    try:
        with pytest.raises(RuntimeError, match="stays in training mode"):
            gradattr.grad_cam(net, torch.randn(1, 2, 8, 8), 1)
        assert net.training and all(m.training for m in net.modules())
        assert all(id(m) not in borrow._MODULES for m in net.modules()) and id(net) not in borrow._BORROWS
        RefusesEval.allow = True
        gradattr.grad_cam(net, torch.randn(1, 2, 8, 8), 1)
        assert net.training and all(m.training for m in net.modules())  # (put back in training mode)
    finally:
        RefusesEval.allow = False
        if shared:
            held.__exit__(None, None, None)
    assert borrow._SOLO == [None] and borrow._MODULES == {} and borrow._BORROWS == {}
