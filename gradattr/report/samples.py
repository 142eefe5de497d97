"""The run's samples for the report: :class:`Inputs` (given as an array or data set, or read from the
files of ``inputs.json``) and each sample's class, score, probability and metrics by forward passes
of the network (:func:`score_samples`).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import GradattrError, expected
from .run_files import input_paths, read_input


class Inputs:
    """The run's samples: given (array or data set), from ``inputs.json`` (image files read as
    ``reading`` says, see :func:`report`), or none."""

    def __init__(self, inputs, folder: Path, n: int, reading=None):
        self.reading = reading
        self.files: list[Path] | None = None
        self.data: Any = None  # an array or a data set (kind "data"), else None
        self.kind = None
        self.rank = None
        if inputs is not None:
            if hasattr(inputs, "detach"):
                inputs = inputs.detach().cpu().numpy()
            if not hasattr(inputs, "__getitem__") or not hasattr(inputs, "__len__"):
                raise expected("inputs", "an array (N, C, *S) or a data set with len() and indexing",
                               type(inputs).__name__)
            self.data, self.kind = inputs, "data"
        else:
            self.files = input_paths(folder)
            self.kind = None if self.files is None else "files"
        if self.kind is not None:
            count = len(self.data) if self.kind == "data" else len(cast(list, self.files))
            if count < n:
                raise expected("inputs", f"at least the run's {n} samples", f"{count}")
            x, _ = self.sample(0)
            self.rank = x.ndim - 1

    def name(self, i: int) -> str:
        return self.files[i].name if self.files is not None else f"sample {i}"

    def sample(self, i: int):
        """``(x (C, *S) float32, label or None)`` as the network sees it."""
        if self.kind == "data":
            item = self.data[i]
            x, y = (item[0], item[1] if len(item) > 1 else None) if isinstance(item, (tuple, list)) else (item, None)
        else:
            x, y = self._file(cast(list, self.files)[i], self.reading), None  # kind "files"
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        if y is not None and hasattr(y, "item"):
            y = y.item()
        return x.astype(np.float32), y

    def _file(self, path: Path, args):
        from ..loading.cli_error import CliError
        from ..loading.input_files import load_npy, read_image

        data = read_input(path)
        try:
            if path.suffix.lower() == ".npy":
                return load_npy(path, "inputs", data)
            if args is None:
                from types import SimpleNamespace

                args = SimpleNamespace(size=None, mean=None, std=None, gray=False, crop="center",
                                       limit=float("inf"))
            return read_image(path, args, data).x
        except CliError as err:
            raise GradattrError(str(err)) from None

    def picture(self, i: int, spatial: tuple) -> np.ndarray:
        """What to draw under the map: an image file as it looks (resized to the map, its values
        scaled from its own bit depth), else the sample."""
        files = cast(list, self.files)  # read only for kind "files"
        if self.kind == "files" and files[i].suffix.lower() != ".npy":
            from PIL import Image

            from ..loading.input_files import DEEP_MODES, image_array

            with Image.open(io.BytesIO(read_input(files[i]))) as im:
                rgb = im.convert("RGB") if im.mode not in DEEP_MODES else im
                rgb = rgb.resize((spatial[1], spatial[0]), Image.Resampling.BILINEAR)
                return np.moveaxis(image_array(rgb, gray=False), -1, 0)
        x, _ = self.sample(i)
        if tuple(x.shape[1:]) != tuple(spatial):
            raise expected("inputs", f"samples of the maps' size {tuple(spatial)} (C, *S)",
                           f"sample {i} of shape {x.shape}")
        return x


def score_samples(net, source: Inputs, maps, order, target, metrics, batch_size: int, samples: dict,
           input_format: str | None = None) -> None:
    """Class, score, probability (and metrics) of every sample, by forward passes of ``net``."""
    import torch

    from .. import metrics as metric_fns

    was = net.training
    params = list(net.parameters())
    device = params[0].device if params else torch.device("cpu")
    net.eval()
    try:
        for s in range(0, len(order), batch_size):
            rows = list(range(s, min(s + batch_size, len(order))))
            got = [source.sample(int(order[r])) for r in rows]
            x = torch.from_numpy(np.stack([g[0] for g in got])).to(device)
            with torch.no_grad():
                y = net(x)
            if isinstance(y, dict):
                y = y.get("logits", y.get("out", next(iter(y.values()))))
            if isinstance(y, (tuple, list)):
                y = y[0]
            if not isinstance(y, torch.Tensor) or y.ndim < 2:
                raise expected("net", "a classifier with an (N, classes, ...) output to score",
                               f"an output of type {type(y).__name__}")
            y = y.flatten(2).sum(-1) if y.ndim > 2 else y
            if isinstance(target, int) and not isinstance(target, bool):
                cls = torch.full((len(rows),), target, dtype=torch.long)
            elif target == "label" and all(g[1] is not None for g in got):
                cls = torch.tensor([int(g[1]) for g in got])
            else:
                cls = y.argmax(1).cpu()
            prob = torch.softmax(y.float(), 1).cpu()
            for k, r in enumerate(rows):
                i, c = int(order[r]), int(cls[k])
                facts = samples.setdefault(i, {})
                facts.update({"class": c, "score": float(y[k, c]), "probability": float(prob[k, c])})
                if got[k][1] is not None:
                    facts.setdefault("label", got[k][1])
            if "deletion" in metrics:
                m = torch.from_numpy(np.ascontiguousarray(maps[rows]))
                auc = metric_fns.deletion(net, x, m, cls[:, None].to(device), steps=20, batch_size=batch_size,
                                          input_format=input_format or "BC" + "S" * (x.ndim - 2)).auc
                auc = np.asarray(auc.detach().cpu() if hasattr(auc, "detach") else auc).reshape(len(rows), -1)[:, 0]
                for k, r in enumerate(rows):
                    samples[int(order[r])].setdefault("metrics", {})["deletion"] = float(auc[k])
    finally:
        net.train(was)
