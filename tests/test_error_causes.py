"""Errors that name their cause (issue 30, items 8-10 and 13): the argument at fault, what was
expected, and, where a default turns one bad class into a bad target, the way out."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr import GradattrError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


class NanInClass2(nn.Module):
    """Class 2 of the output is NaN for every input; classes 0 and 1 are finite."""

    def __init__(self):
        super().__init__()
        self.body = _net()

    def forward(self, x):
        y = self.body(x)
        return torch.cat([y[:, :2], y[:, 2:] * float("nan")], 1)


X = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("labels", [np.random.default_rng(0).random((8, 8)), torch.rand(8, 8),
                                    np.zeros((8, 8), bool)])
def test_lime_segmentation_of_floats_names_segmentation(labels):
    dtype = str(labels.dtype).replace("torch.", "")
    with pytest.raises(GradattrError, match=r"segmentation: expected 'superpixels', 'grid' or integer segment "
                                            rf"labels .*got an array of dtype {dtype} \(labels must be integers"):
        gradattr.image_lime(_net(), X, 0, segmentation=labels, num_samples=8)


def test_lime_integer_segmentation_still_works():
    labels = np.repeat(np.arange(4), 16).reshape(8, 8)
    m = gradattr.image_lime(_net(), X, 0, segmentation=labels, num_samples=32)
    m = torch.as_tensor(m).reshape(8, 8)
    for k in range(4):  # one coefficient per segment: constant on each
        assert torch.unique(m[torch.from_numpy(labels) == k]).numel() == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [0.0, float("nan"), 0.0]])
def test_occlusion_non_finite_mask_value_names_mask_value(value):
    with pytest.raises(GradattrError, match=r"^mask_value: expected finite values"):
        gradattr.occlusion(_net(), X, 0, mask_value=value)


@pytest.mark.parametrize("method, kwargs", [("occlusion", {}), ("image_lime", {"num_samples": 16, "segmentation": "grid"})])
def test_nan_in_another_class_under_softmax_is_explained(method, kwargs):
    f = getattr(gradattr, method)
    with pytest.raises(GradattrError, match=r"got NaN in class 2 \(sample\(s\) \[0\]\), which is not a target "
                                            r"class: the softmax over all classes is NaN .*pass softmax=False"):
        f(NanInClass2(), X, 0, **kwargs)
    m = torch.as_tensor(f(NanInClass2(), X, 0, softmax=False, **kwargs))  # the way out works
    assert torch.isfinite(m).all()


def test_nan_in_the_target_class_keeps_the_plain_message():
    with pytest.raises(GradattrError, match=r"net: expected finite outputs for the target classes, got NaN"):
        gradattr.occlusion(NanInClass2(), X, 2)


def test_unconnected_reduction_fn_is_blamed_on_reduction_fn():
    own = torch.ones(1, requires_grad=True)
    for method in ("grad_cam", "saliency"):
        with pytest.raises(GradattrError, match=r"^reduction_fn: expected a differentiable floating-point function "
                                                r"of the output y .*computed from tensors other than y"):
            getattr(gradattr, method)(_net(), X, reduction_fn=lambda y: own * 2)
    m = gradattr.saliency(_net(), X, reduction_fn=lambda y: y[:, 1] * 2)  # a connected one still works
    assert torch.as_tensor(m).abs().sum() > 0
