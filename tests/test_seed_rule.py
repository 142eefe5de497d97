"""One rule for ``seed`` everywhere: ``None`` or an integer >= 0 (numpy integers too), checked
before any work; every method and metric that takes a seed refuses the same values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr import metrics
from gradattr.errors import GradattrError

SEEDED = [name for name in gradattr.list_methods() if "seed" in gradattr.method_info(name).options]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def test_the_seeded_methods_are_the_expected_ones():
    assert set(SEEDED) >= {"rise", "ss_cam", "image_lime", "lime", "smooth_grad", "smooth_grad_cam_plus_plus",
                           "deep_feature_factorization", "random_cam", "shapley", "gradient_shap"}


@pytest.mark.parametrize("name", SEEDED)
@pytest.mark.parametrize("bad", [-1, True, 1.5, "0", 2**64])
def test_every_seeded_method_refuses_the_same_values(name, bad):
    entry = gradattr.registry.get(name)
    with pytest.raises(GradattrError, match=r"seed: expected None \(torch's global random state\) or an int >= 0"):
        entry.validate({"seed": bad})


@pytest.mark.parametrize("name", SEEDED)
def test_every_seeded_method_takes_none_and_numpy_integers(name):
    entry = gradattr.registry.get(name)
    assert entry.validate({"seed": np.int64(3)})["seed"] == 3
    assert type(entry.validate({"seed": np.int64(3)})["seed"]) is int
    assert entry.validate({"seed": None})["seed"] is None


def test_seeded_methods_share_one_validator():
    checks = {gradattr.registry.get(n).all_options()[[o.name for o in gradattr.registry.get(n).all_options()]
                                                      .index("seed")].check for n in SEEDED}
    assert checks == {gradattr.options.check_seed}


@pytest.mark.parametrize("metric, call", [
    ("road", lambda net, x, m, **kw: metrics.road(net, x, m, 0, **kw)),
    ("max_sensitivity", lambda net, x, m, **kw: metrics.max_sensitivity(net, x, 0, samples=2, method="saliency", **kw)),
    ("infidelity", lambda net, x, m, **kw: metrics.infidelity(net, x, m, 0, samples=2, **kw)),
    ("randomization_check", lambda net, x, m, **kw: metrics.randomization_check(net, x, 0, method="saliency", **kw)),
])
def test_the_metrics_follow_the_same_rule(metric, call):
    net, x = _net(), torch.randn(2, 2, 16, generator=torch.Generator().manual_seed(1))
    maps = gradattr.grad_cam(net, x, 0, relu=False)
    with pytest.raises(GradattrError, match=r"seed: expected None \(torch's global random state\) or an int >= 0"):
        call(net, x, maps, seed=-1)
    a = call(net, x, maps, seed=np.int64(4))
    b = call(net, x, maps, seed=4)
    assert str(a) == str(b)  # a numpy integer is the same seed
    call(net, x, maps, seed=None)  # torch's global random state: runs
