"""gradattr's warnings: where they point, and what an all-zero map's warning suggests."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

import gradattr
from gradattr.errors import GradattrWarning, warn


def flatten_head(pooled: bool = False) -> nn.Sequential:
    """Conv1d(1 -> 2) + ReLU over 8 steps, then a Linear head reading every step (Flatten) or
    the channel means (pooled). Class 1 weighs the steps +1, -3, +1, -3, ...: averaged over the
    steps each channel's weight is -1, so Grad-CAM's map is all zero; per step it is not."""
    torch.manual_seed(0)
    conv = nn.Conv1d(1, 2, 3, padding=1)
    head = nn.Linear(2 if pooled else 16, 2)
    with torch.no_grad():
        conv.weight.fill_(0.5)
        conv.bias.fill_(1.0)  # positive inputs: every activation > 0
        head.weight.zero_()
        head.weight[1] = -1.0 if pooled else torch.tensor([1.0, -3.0] * 8)
        head.bias.zero_()
    body = [nn.AdaptiveAvgPool1d(1), nn.Flatten()] if pooled else [nn.Flatten()]
    return nn.Sequential(conv, nn.ReLU(), *body, head).eval()


def series() -> torch.Tensor:
    return torch.rand(1, 1, 8) + 0.1


def test_a_warning_points_at_the_callers_line():
    net = flatten_head(pooled=True)
    with pytest.warns(GradattrWarning) as record:
        gradattr.grad_cam(net, series(), 1, feature_layer="1")
    assert [w.filename for w in record] == [__file__]
    with pytest.warns(GradattrWarning) as record:  # the same through the explainer object
        gradattr.explainer(net, "grad_cam", feature_layer="1")(series(), 1)
    assert [w.filename for w in record] == [__file__]


def test_warn_called_from_outside_the_package_points_at_its_caller():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warn("gradattr: a test")
    assert record[0].filename == __file__ and record[0].category is GradattrWarning
    assert record[0].lineno == test_warn_called_from_outside_the_package_points_at_its_caller.__code__.co_firstlineno + 3


@pytest.mark.parametrize("layer", ["0", "1"])
def test_an_all_zero_map_before_a_flattening_head_suggests_hires_cam(layer):
    net, x = flatten_head(), series()
    with pytest.warns(GradattrWarning, match=r"try hires_cam \(the layer feeds a flattening head, "
                                             r"nn.Linear '3', .*counterfactual=True"):
        assert float(gradattr.grad_cam(net, x, 1, feature_layer=layer).abs().max()) == 0
    assert float(gradattr.hires_cam(net, x, 1, feature_layer=layer).abs().max()) > 0  # the suggestion works


def test_a_pooled_head_is_not_told_to_try_hires_cam():
    net, x = flatten_head(pooled=True), series()
    with pytest.warns(GradattrWarning, match="every weighted sum was <= 0") as record:
        gradattr.grad_cam(net, x, 1, feature_layer="1")
    assert "hires_cam" not in str(record[0].message)
    with pytest.warns(GradattrWarning, match="hires_cam at feature layer '1': the map is all zero"):
        assert float(gradattr.hires_cam(net, x, 1, feature_layer="1").abs().max()) == 0  # nor would it help


@pytest.mark.parametrize("layer", [None, "3"])
def test_a_guessed_reading_warns_a_gradattr_warning_at_the_callers_line(monkeypatch, layer):
    """The automatic layer (layer_choice) and an explicit one (passes) each warn a guessed reading
    once, as a GradattrWarning (a UserWarning, so filters on UserWarning still match) pointing at
    the line that called gradattr. No network is read ambiguously today (readings are observed), so
    the inference is made to say that another reading fits as well."""
    from dataclasses import replace

    from gradattr import layout_inference

    def guessed(fn):
        def read(*a, **k):
            r = fn(*a, **k)
            return r and replace(r, guessed=True, alternatives="channels last (N, *S, C)")
        return read

    monkeypatch.setattr(layout_inference, "infer_reading", guessed(layout_inference.infer_reading))
    monkeypatch.setattr(layout_inference, "check_reading", guessed(layout_inference.check_reading))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv1d(2, 2, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2, 2)).eval()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1  # the call below
        gradattr.grad_cam(net, series(), 1, feature_layer=layer, relu=False)
    guesses = [w for w in record if "a guess" in str(w.message)]
    assert len(guesses) == 1, [str(w.message) for w in record]
    w = guesses[0]
    assert w.category is GradattrWarning and issubclass(w.category, UserWarning)
    assert (w.filename, w.lineno) == (__file__, line)
    assert str(w.message) == ("gradattr: feature layer '3' read as channels first (N, C, *S), a guess (another "
                              "reading fits its shape too (channels last (N, *S, C))); pass feature_layout= "
                              "to say how to read it")
