"""The two interfaces a method gets: the forward-only Scorer and the ScoreGradients.

Each is checked against autograd run by hand on a tiny network (hooks written here, not
gradattr's), and both stay as constructed while they work (frozen for the call).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import gradattr
from gradattr import capture
from gradattr.score_gradients import ScoreGradients
from gradattr.scorer import Scorer


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 3, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(3, 5)).double().eval()


def interfaces(net, x, target, layer="1"):
    call = gradattr.prep.prepare_call(net, x, target=target)
    plan = capture.plan_from_options(net, layer, None, None, None)
    cap = capture.capture(call, plan, grad=False)
    scorer = Scorer(call, cap.plan, cap)
    return call, scorer, ScoreGradients(scorer)


def by_hand(net, x, classes, layer=1):
    """``(layer output, d y[n, c_k] / d output (N, K, C, T), d y[n, c_k] / d x (N, K, C, T))``."""
    seen = []
    h = net[layer].register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        xl = x.clone().requires_grad_(True)
        y = net(xl)
    finally:
        h.remove()
    a = seen[0]
    ga, gx = [], []
    for k in range(classes.shape[1]):
        s = y.gather(1, classes[:, k:k + 1]).sum()
        g1, g2 = torch.autograd.grad(s, [a, xl], retain_graph=True)
        ga.append(g1)
        gx.append(g2)
    return a.detach(), torch.stack(ga, 1), torch.stack(gx, 1)


def test_score_gradients_give_the_gradients_autograd_gives_by_hand():
    net, x = tiny(), torch.randn(3, 2, 7, dtype=torch.float64)
    classes = torch.tensor([[1, 4], [0, 2], [3, 3]])
    with torch.no_grad():
        _, scorer, oracle = interfaces(net, x, classes)
    a, ga, gx = by_hand(net, x, classes)
    acts, grads, hv = oracle.layer_gradients()
    torch.testing.assert_close(acts, a, rtol=0, atol=0)
    torch.testing.assert_close(grads, ga, rtol=1e-12, atol=1e-12)
    assert hv is None
    torch.testing.assert_close(oracle.input_gradients(), gx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(oracle.point_gradients(x), gx, rtol=1e-12, atol=1e-12)
    # a piecewise-linear tail: the Hessian-vector product at the layer is zero
    _, g2, hv = oracle.layer_gradients(hvp=True)
    torch.testing.assert_close(g2, ga, rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(hv) == 0


def test_the_scorer_scores_what_the_network_outputs():
    net, x = tiny(), torch.randn(3, 2, 7, dtype=torch.float64)
    classes = torch.tensor([[1, 4], [0, 2], [3, 3]])
    with torch.no_grad():
        _, scorer, _ = interfaces(net, x, classes)
        y = net(x)
        want = y.gather(1, classes)
        torch.testing.assert_close(scorer.scores, want, rtol=0, atol=0)
        masked = x * torch.linspace(0, 1, 7, dtype=x.dtype)
        rows = torch.tensor([2, 0, 1])
        got = scorer.score_inputs(masked[rows], rows)
        torch.testing.assert_close(got, net(masked[rows]).gather(1, classes[rows]), rtol=0, atol=0)
        # the feature layer's output replaced: channel 1 of sample 2 zeroed, the tail run by hand
        a = net[:2](x)[2:3]
        zeroed = a.clone()
        zeroed[:, 1] = 0
        got = scorer.score_activations(torch.cat([a, zeroed]), 2)
        want = net[2:](torch.cat([a, zeroed]))[:, classes[2]]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_both_stay_as_constructed():
    net, x = tiny(), torch.randn(2, 2, 7, dtype=torch.float64)
    with torch.no_grad():
        call, scorer, oracle = interfaces(net, x, None)
    before = {f.name: getattr(scorer, f.name) for f in dataclasses.fields(scorer) if f.name != "_memo"}
    scorer.score_masked(5, lambda i, j: x[:1].expand(j - i, -1, -1), torch.zeros(5, dtype=torch.long))
    scorer.score_activations(scorer.cap.acts[0][:1].repeat(3, 1, 1), 0)
    oracle.layer_gradients()
    assert all(getattr(scorer, k) is v for k, v in before.items())
    assert oracle.scorer is scorer and oracle.counterfactual is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        scorer.cap = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        oracle.counterfactual = True
