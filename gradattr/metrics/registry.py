"""The metric registry: one :class:`Metric` entry per metric :func:`gradattr.compare` can put in
a column, as :mod:`gradattr.registry` has one entry per method.

An entry declares the public function that computes the metric, whether higher is better,
what the function is given (``needs``), the keyword options ``metric_options`` may set, which
metrics share one call (and its options), and how the call's result becomes one value per map.
``compare`` reads only this table.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .complexity import sparseness
from .faithfulness import confidence_change, deletion, insertion
from .localisation import energy_pointing_game, localize, pointing_game, relevance_mass, relevance_rank
from .randomization import randomization_check
from .road_metric import road
from .robustness import infidelity, max_sensitivity

#: What a metric's function is given (``Metric.needs``), in the order of its positional arguments:
#: ``net``: the network and the batch ``x`` (then the maps if it needs them, then the target);
#: ``maps``: the method's maps (without ``net``: as a batch ``(N*K, *s)``, first);
#: ``method``: the row's method as ``(net, x, target) -> maps`` (keyword ``method``), which the
#: check runs on copies of ``x`` or of the network itself;
#: ``region``: the reference region, a mask or a box (whichever the batch has); ``mask``: a mask
#: (a box becomes the mask of its elements); ``box``: a box (a mask becomes its bounding box).
NEEDS = ("net", "maps", "method", "region", "mask", "box")


def _same(result):
    return result


@dataclass(frozen=True)
class Metric:
    """A metric :func:`gradattr.compare` computes.

    ``function`` is the public function of :mod:`gradattr.metrics`; ``options`` are its
    keyword-only parameters, the ones ``metric_options[name]`` may set (``compare`` itself
    gives those of its shared options the function takes: ``softmax``, ``batch_size``,
    ``classes``, ``input_format``, ``device``, ``explain``, ``forward_kwargs``). Metrics with
    the same ``shares`` name are computed by one call, made with that name's options
    (``average_drop`` and ``increase_in_confidence`` share ``"confidence"``, the ROAD columns
    ``"road"``). ``value`` turns the call's result into one value per map.
    """

    name: str
    function: Callable
    higher_is_better: bool
    needs: tuple[str, ...]
    options: tuple[str, ...]
    summary: str
    shares: str | None = None
    value: Callable = _same

    def __post_init__(self):
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"{self.name}: needs must come from {NEEDS}, got {sorted(unknown)}")

    @property
    def key(self) -> str:
        """The name of the call (and of its options) this metric's value comes from."""
        return self.shares or self.name

    @property
    def needs_reference(self) -> bool:
        """Whether the metric needs a mask or a box."""
        return bool({"region", "mask", "box"} & set(self.needs))


#: Options of the metrics that run the network on perturbed inputs, besides their own.
_CURVE = ("softmax", "batch_size", "reduction_fn", "classes", "input_format", "device", "explain",
          "forward_kwargs")
_CONFIDENCE = ("normalize",) + _CURVE
_ROAD = ("order", "fractions", "noise", "seed") + _CURVE
_NET_MAPS = ("net", "maps")

#: The metrics, by name, in the order :func:`gradattr.compare` lists them.
METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("deletion", deletion, False, _NET_MAPS, ("baseline", "steps") + _CURVE,
           "deletion AUC (RISE), baseline zeros", value=lambda r: r.auc),
    Metric("insertion", insertion, True, _NET_MAPS, ("baseline", "steps") + _CURVE,
           "insertion AUC (RISE), baseline blurred input", value=lambda r: r.auc),
    Metric("average_drop", confidence_change, False, _NET_MAPS, _CONFIDENCE,
           "average drop in confidence, % (Grad-CAM++)", shares="confidence",
           value=lambda r: 100 * torch.as_tensor(r.drop)),
    Metric("increase_in_confidence", confidence_change, True, _NET_MAPS, _CONFIDENCE,
           "increase in confidence, % of samples (Grad-CAM++)", shares="confidence",
           value=lambda r: 100 * torch.as_tensor(r.increase).float()),
    Metric("road", road, True, _NET_MAPS, _ROAD, "ROAD, mean (LeRF - MoRF) / 2 over fractions 0.1..0.9",
           shares="road", value=lambda r: torch.as_tensor(r.combined)),
    Metric("road_morf", road, False, _NET_MAPS, _ROAD, "ROAD most-relevant-first score, mean over fractions",
           shares="road", value=lambda r: torch.as_tensor(r.morf).mean(-1)),
    Metric("road_lerf", road, True, _NET_MAPS, _ROAD, "ROAD least-relevant-first score, mean over fractions",
           shares="road", value=lambda r: torch.as_tensor(r.lerf).mean(-1)),
    Metric("pointing_game", pointing_game, True, ("maps", "region"), ("tolerance",),
           "pointing game hit rate", value=lambda r: r.float()),
    Metric("energy_pointing_game", energy_pointing_game, True, ("maps", "region"), (),
           "energy inside the reference"),
    Metric("localization", localize, True, ("maps", "box"), ("threshold", "connectivity"),
           "IoU of the CAM box (20% threshold) with the reference box",
           value=lambda r: torch.as_tensor(r.iou)),
    Metric("randomization_check", randomization_check, False, ("net", "method"),
           ("method", "mode", "similarity", "seed", "reduction_fn", "classes", "input_format", "device"),
           "similarity of the maps to those of the cascade-randomised models, mean over the layers",
           value=lambda r: torch.nanmean(torch.stack([torch.as_tensor(v, dtype=torch.float64)
                                                      for v in r.values()]), 0)),
    Metric("max_sensitivity", max_sensitivity, False, ("net", "method"),
           ("method", "radius", "samples", "seed", "chunk_size", "reduction_fn", "classes", "input_format",
            "device"),
           "largest relative change of the map under uniform noise (Yeh et al.)"),
    Metric("infidelity", infidelity, False, _NET_MAPS,
           ("samples", "std", "seed", "normalize", "batch_size", "reduction_fn", "classes", "input_format",
            "device"),
           "error of the map in predicting the score's drop under Gaussian noise (Yeh et al.)"),
    Metric("sparseness", sparseness, True, ("maps",), (), "Gini index of |map| (Chalasani et al.)"),
    Metric("relevance_mass", relevance_mass, True, ("maps", "mask"), (),
           "share of the positive relevance inside the reference (Arras et al.)"),
    Metric("relevance_rank", relevance_rank, True, ("maps", "mask"), (),
           "share of the top-|reference| positions inside it (Arras et al.)"),
]}

#: The columns :func:`gradattr.compare` computes when none are named.
DEFAULT_METRICS = ("deletion", "insertion", "average_drop", "increase_in_confidence")

#: The names ``metric_options`` accepts besides the metrics': the calls several metrics share.
SHARED_CALLS = tuple(dict.fromkeys(m.shares for m in METRICS.values() if m.shares and m.shares not in METRICS))


def metric_for(name: str) -> Metric:
    """The entry for ``name``: a metric's, or a shared call's first metric (``"confidence"``)."""
    if name in METRICS:
        return METRICS[name]
    return next(m for m in METRICS.values() if m.shares == name)
