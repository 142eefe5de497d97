"""The examples run on real data, write their picture, and get real results.

Each example's ``main(out_dir, quick=True)`` trains its small model with fewer
epochs; the numbers it returns are checked against chance or a naive baseline
and the PNG is checked to show a jet overlay (both its hot and cold ends).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module", autouse=True)
def _examples_on_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def run(name: str, tmp_path) -> dict:
    module = importlib.import_module(name)
    result = module.main(out_dir=str(tmp_path), quick=True)
    assert Path(result["path"]).parent == tmp_path
    return result


def check_png(path, expected_name: str, min_size=(300, 300)):
    """The file exists, is a PNG of a sensible size and shows jet's red and blue ends."""
    path = Path(path)
    assert path.name == expected_name and path.exists()
    img = Image.open(path)
    assert img.format == "PNG" and img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
    px = np.asarray(img.convert("RGB"), dtype=np.int16)
    red = ((px[..., 0] - px[..., 2]) > 60).mean()
    blue = ((px[..., 2] - px[..., 0]) > 60).mean()
    assert red > 0.005 and blue > 0.02, (red, blue)


def peak_of(m) -> tuple[int, ...]:
    m = np.asarray(m)
    return tuple(int(i) for i in np.unravel_index(int(m.argmax()), m.shape))


def test_imagenet_cat(tmp_path, capsys):
    r = run("imagenet_cat", tmp_path)
    check_png(r["path"], "cat_gradcam.png")
    assert r["label"] == "Egyptian cat" and r["index"] == 285
    assert 0.5 < r["probability"] <= 1.0
    assert "Egyptian cat" in capsys.readouterr().out  # the prediction is printed
    m = np.asarray(r["map"])
    assert m.shape == (224, 224) and m.max() > 0 and peak_of(m) == r["peak"]
    assert r["reduction_layer"] == "_fc"
    # The cat fills the photo's centre: the map's mass is there, not at the borders.
    inner = m[32:-32, 32:-32].clip(0).sum() / m.clip(0).sum()
    assert inner > 160 ** 2 / 224 ** 2


def test_digits_regression(tmp_path):
    r = run("digits_regression", tmp_path)
    check_png(r["path"], "digits_regression.png")
    assert r["rmse"] < 0.3 * r["baseline_rmse"]  # far better than always predicting the mean angle
    assert r["baseline_rmse"] > 20  # angles uniform in [-45, 45]: sd 26 degrees
    assert abs(r["pred_rotation"] - r["true_rotation"]) < 10 and r["true_rotation"] > 20
    assert r["feature_layer"] == "relu_4" and r["reduction_layer"] == "fc"
    m = np.asarray(r["map"])
    assert m.shape == (28, 28) and m.max() > 0 and peak_of(m) == r["peak"]


def test_japanese_vowels(tmp_path):
    r = run("japanese_vowels", tmp_path)
    check_png(r["path"], "japanese_vowels.png", min_size=(500, 300))
    assert r["accuracy"] > 0.8  # chance is 1/9
    assert r["label"] in [str(i) for i in range(1, 10)]
    assert r["length"] == 19  # the first test sequence, as in MATLAB
    m = np.asarray(r["map"])
    assert m.shape == (19,) and m.max() > 0 and int(m.argmax()) == r["peak"]
    assert r["feature_layer"] == "layernorm_2" and r["reduction_layer"] == "fc"


def test_volume_3d(tmp_path):
    r = run("volume_3d", tmp_path)
    check_png(r["path"], "volume_3d.png", min_size=(800, 300))
    assert r["accuracy"] > 0.85  # chance is 1/2
    m, mask = np.asarray(r["map"]), r["mask"]
    assert m.shape == mask.shape == (32, 32, 32)
    assert peak_of(m) == r["peak"] and mask[r["peak"]] and r["peak_inside"]
    assert r["inside_rate"]["cube"] > 0.8
    assert r["feature_layer"] == "relu_3" and r["reduction_layer"] == "fc"


def test_segmentation(tmp_path):
    r = run("segmentation", tmp_path)
    check_png(r["path"], "segmentation.png", min_size=(600, 400))
    assert r["pixel_accuracy"] > 0.9 and r["stroke_accuracy"] > 0.75  # 11 classes
    s = r["shares"]
    # A region's map lies on that region's digit: class-discriminative *and* region-discriminative.
    assert s["left_region_on_left"] > 0.7 and s["right_region_on_right"] > 0.5
    assert s["left_region_on_left"] > 1 - s["right_region_on_right"] + 0.2
    # target=c on a (N, K, H, W) output is class c summed over all pixels.
    assert r["whole_vs_sum"] < 1e-6
    for m in r["maps"].values():
        assert np.asarray(m).shape == (20, 40) and np.asarray(m).max() > 0
    assert r["feature_layer"] == "enc4" and r["reduction_layer"] == "score"


def test_method_grid_fast_methods(tmp_path):
    """The README's method picture; Score-CAM and Ablation-CAM (minutes on a CPU) are left out here."""
    module = importlib.import_module("method_grid")
    fast = ["grad_cam", "grad_cam_plus_plus", "eigen_cam", "guided_backprop"]
    r = module.main(out_dir=str(tmp_path), quick=True, methods=fast)
    assert Path(r["path"]).name == "methods_grid.png" and Path(r["path"]).exists()
    assert set(r["results"]) == set(fast) and r["top"] == 285
    for name, (m, _) in r["results"].items():
        assert tuple(m.shape) == (112, 112) and float(m.max()) > 0, name
