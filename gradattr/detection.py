"""Explaining torchvision detectors: a score from the detections, as a ``reduction_fn``.

A detector's output is a list of dicts (``boxes``, ``labels``, ``scores``), one per
image, not class scores. :func:`box_score` builds the ``reduction_fn`` that
pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` computes: for every reference box
(usually detections of the unperturbed image), the score of the detection of the
same class that overlaps it most, if their IoU reaches ``iou_threshold``, summed
over the reference boxes. The automatic feature layer of a torchvision detector is
its backbone's last feature map (``backbone.body.<last>``).

Example (random weights, so possibly no detection)::

    det = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        found = det(x)[0]
    keep = found["scores"] > 0.5
    cam = gradattr.grad_cam(det, x, reduction_fn=gradattr.detection.box_score(
        found["labels"][keep], found["boxes"][keep]))
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import expected


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU ``(A, B)`` of boxes ``a (A, 4)`` and ``b (B, 4)`` in ``(x1, y1, x2, y2)`` form.

    >>> box_iou(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]])).tolist()
    [[0.3333333432674408]]
    """
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def box_score(labels, boxes, iou_threshold: float = 0.5) -> Callable:
    """A ``reduction_fn`` for torchvision detectors: the summed scores of the detections that
    match ``labels (B,)``/``boxes (B, 4)`` (same class, IoU >= ``iou_threshold``).

    The same references are used for every image of the batch. A reference box that
    no detection matches adds 0; the score is then constant (a zero map), as in
    pytorch-grad-cam.
    """
    labels = torch.as_tensor(labels).reshape(-1).long()
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if labels.shape[0] != boxes.shape[0]:
        raise expected("boxes", f"one box per label ({labels.shape[0]} labels)", f"{boxes.shape[0]} boxes")
    if not 0 <= iou_threshold <= 1:
        raise expected("iou_threshold", "a number in [0, 1]", repr(iou_threshold))

    def score(y) -> torch.Tensor:
        if not (isinstance(y, (list, tuple)) and all(isinstance(d, dict) and {"boxes", "labels", "scores"} <= set(d)
                                                     for d in y)):
            raise expected("net", "a detector whose output is a list of dicts with 'boxes', 'labels' and "
                           "'scores' (torchvision detection models in eval mode)", type(y).__name__)
        out = []
        for d in y:
            total = d["scores"].sum() * 0  # keeps the graph when nothing matches
            if len(d["boxes"]) and len(boxes):
                iou = box_iou(boxes.to(d["boxes"].device), d["boxes"])
                same = labels.to(d["labels"].device)[:, None] == d["labels"][None, :]
                iou = torch.where(same, iou, torch.zeros_like(iou))
                best, idx = iou.max(1)
                hit = best >= iou_threshold
                total = total + (d["scores"][idx] * hit).sum()
            out.append(total)
        return torch.stack(out)

    return score


__all__ = ["box_score", "box_iou"]
