"""gradattr.compare: the table equals the metrics called directly; it ranks a known-good map first."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr import GradattrError, metrics
from gradattr.comparison import Table, available_methods, channel_reduce, compare, explain
from expected_warnings import ZERO_MAPS


def cnn(rank: int = 2) -> nn.Module:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[rank]
    torch.manual_seed(2)
    return nn.Sequential(conv(2, 4, 3, padding=1), nn.ReLU(), conv(4, 4, 3, padding=1), nn.ReLU(),
                         pool(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def object_net() -> nn.Module:
    conv, lin = nn.Conv2d(1, 1, 1), nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.fill_(-1.0)
        lin.weight.copy_(torch.tensor([[-3.0], [3.0]]))
        lin.bias.copy_(torch.tensor([0.5, -0.5]))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin).eval()


def scene(n: int = 3):
    x = 0.5 * torch.rand(n, 1, 12, 12)
    x[:, :, 3:7, 4:9] = 3.0
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[3:7, 4:9] = True
    return x, mask


def test_rows_equal_direct_metric_calls():
    net = cnn()
    x = torch.randn(3, 2, 10, 10)
    t = compare(net, x, ["grad_cam", "random"], ["deletion", "insertion", "average_drop",
                                                 "increase_in_confidence", "road"],
                metric_options={"deletion": {"steps": 5}, "insertion": {"steps": 5},
                                "road": {"fractions": [0.3, 0.6]}})
    assert isinstance(t, Table) and len(t) == 2 and t.samples == 3
    assert t.columns == ["method", "deletion", "insertion", "average_drop", "increase_in_confidence", "road",
                         "seconds"]
    m = gradattr.grad_cam(net, x)
    row = t["grad_cam"]
    assert row["deletion"] == pytest.approx(metrics.deletion(net, x, m, steps=5).auc.mean().item(), rel=1e-6)
    assert row["insertion"] == pytest.approx(metrics.insertion(net, x, m, steps=5).auc.mean().item(), rel=1e-6)
    conf = metrics.confidence_change(net, x, m)
    assert row["average_drop"] == pytest.approx(conf.average_drop, rel=1e-6)
    assert row["increase_in_confidence"] == pytest.approx(conf.increase_in_confidence)
    road = metrics.road(net, x, m, fractions=[0.3, 0.6])
    assert row["road"] == pytest.approx(road.combined.mean().item(), rel=1e-5)
    assert row["seconds"] > 0 and t[1]["method"] == "random"


def test_known_good_map_ranks_first_and_localisation():
    net = object_net()
    x, mask = scene()
    oracle = ("oracle", lambda net, x, target: mask.float().expand(x.shape[0], 12, 12) + 0.01 * torch.rand(
        x.shape[0], 12, 12))
    t = compare(net, x, [oracle, "random"], ["deletion", "insertion", "pointing_game", "energy_pointing_game",
                                             "localization"],
                target=1, mask=mask, metric_options={"deletion": {"steps": 8}, "insertion": {"steps": 8,
                                                                                          "baseline": "zeros"}})
    assert t.best("deletion") == "oracle" and t.best("insertion") == "oracle"
    assert t["oracle"]["pointing_game"] == 1.0
    assert t["oracle"]["energy_pointing_game"] > 0.9 > t["random"]["energy_pointing_game"]
    assert t["oracle"]["localization"] == 1.0  # the mask's own box
    tb = compare(net, x, [oracle], ["localization"], target=1, box=[[3, 7], [4, 9]])
    assert tb["oracle"]["localization"] == 1.0


@ZERO_MAPS
def test_iterable_of_batches_weights_by_samples():
    net = cnn(1)
    x = torch.randn(5, 2, 16)
    y = net(x).argmax(1)
    whole = compare(net, x, ["grad_cam"], ["deletion", "average_drop"], target=y[:, None],
                    metric_options={"deletion": {"steps": 4}})
    parts = compare(net, [(x[:2], y[:2]), (x[2:], y[2:])], ["grad_cam"], ["deletion", "average_drop"],
                    metric_options={"deletion": {"steps": 4}})
    assert parts.samples == whole.samples == 5
    for m in ("deletion", "average_drop"):
        assert parts["grad_cam"][m] == pytest.approx(whole["grad_cam"][m], rel=1e-5)


def _deletion_rows_equal_each_methods_own_map(names):
    """Each row of a 3-D compare table equals deletion on that method's own map (each
    sample's top class), computed by gradattr.metrics directly."""
    net = cnn(3)
    torch.manual_seed(0)
    x = torch.randn(2, 2, 6, 6, 6)
    seeded = {n: {"seed": 0} for n in names if "seed" in gradattr.method_info(n).options}
    t = compare(net, x, names, ["deletion"], method_options=seeded,
                metric_options={"deletion": {"steps": 3}})
    assert [r["method"] for r in t] == names
    for row in t:
        m = explain(net, x, row["method"], **seeded.get(row["method"], {}))
        m = channel_reduce(m, 3, 1)
        want = metrics.deletion(net, x, m, steps=3).auc.mean().item()
        assert row["deletion"] == pytest.approx(want, rel=1e-5, abs=1e-6), row["method"]


def test_volumes_and_registered_methods():
    _deletion_rows_equal_each_methods_own_map(["grad_cam", "eigen_cam", "score_cam", "guided_backprop"])


@pytest.mark.slow
def test_volumes_and_all_registered_methods():
    # attention methods need a transformer (tests/test_attention_methods.py); this net is a 3-D CNN;
    # the methods that take background data (shapley, lime, gradient_shap) are tested in test_tabular.py
    _deletion_rows_equal_each_methods_own_map([n for n in available_methods() if n not in ("cam", "random_cam")
                                               and gradattr.method_info(n).captures != "attention"
                                               and "background" not in gradattr.method_info(n).options])


def test_channel_attributions_are_reduced():
    net = cnn(2)
    x = torch.randn(2, 2, 8, 8)
    t = compare(net, x, ["guided_backprop"], ["deletion"], metric_options={"deletion": {"steps": 4}})
    g = explain(net, x, "guided_backprop")
    m = g.abs().sum(1)
    assert channel_reduce(g, 2, 1).shape == (2, 8, 8)
    assert t["guided_backprop"]["deletion"] == pytest.approx(
        metrics.deletion(net, x, m, steps=4).auc.mean().item(), rel=1e-6)


def test_rendering():
    t = Table(rows=[{"method": "a", "deletion": 0.1234567, "insertion": math.nan, "seconds": 1.5},
                    {"method": "long_name", "deletion": 0.5, "insertion": 0.25, "seconds": 0.01}],
              columns=["method", "deletion", "insertion", "seconds"],
              higher_is_better={"deletion": False, "insertion": True}, samples=4)
    md = t.to_markdown().splitlines()
    assert md[0] == "| method | deletion ↓ | insertion ↑ | seconds |"
    assert md[1] == "|:---|---:|---:|---:|"
    assert md[2] == "| a | 0.1235 | nan | 1.5 |"
    text = str(t).splitlines()
    assert len({len(line) for line in text[:4]}) == 1  # aligned columns
    assert text[2].startswith("a ") and text[3].startswith("long_name")
    assert "4 samples" in text[-1]
    assert t.best("deletion") == "a" and t.best("insertion") == "long_name"


def test_errors():
    net = cnn()
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(GradattrError, match=r"metrics: expected names from deletion"):
        compare(net, x, ["grad_cam"], ["auc"])
    with pytest.raises(GradattrError, match=r"methods: expected at least one method"):
        compare(net, x, [])
    with pytest.raises(GradattrError, match=r"methods: expected distinct method names"):
        compare(net, x, ["grad_cam", "grad_cam"])
    with pytest.raises(GradattrError, match=r"method: expected one of"):
        compare(net, x, ["no_such_cam"], ["deletion"])
    with pytest.raises(GradattrError, match=r"mask: expected a mask or a box for metric 'pointing_game'"):
        compare(net, x, ["grad_cam"], ["pointing_game"])
    with pytest.raises(GradattrError, match=r"metric_options: expected keys from"):
        compare(net, x, ["grad_cam"], ["deletion"], metric_options={"delete": {}})
    with pytest.raises(GradattrError, match=r"data: expected at least one batch"):
        compare(net, [], ["grad_cam"], ["deletion"])
    with pytest.raises(GradattrError, match=r"metric: expected one of deletion"):
        Table(rows=[], columns=["method"], higher_is_better={"deletion": False}).best("auc")


def test_numpy_data():
    net = cnn()
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    t = compare(net, x, ["grad_cam", "random"], ["average_drop"])
    assert all(0 <= r["average_drop"] <= 100 for r in t)


def test_metric_option_table_is_each_metrics_keyword_parameters():
    import inspect

    from gradattr.metrics.registry import METRICS

    for name, entry in METRICS.items():
        params = inspect.signature(entry.function).parameters.values()
        assert set(entry.options) == {p.name for p in params if p.kind is p.KEYWORD_ONLY}, name
    assert {e.function.__name__ for e in METRICS.values()} >= {"deletion", "confidence_change", "road", "localize",
                                                               "randomization_check", "infidelity"}