"""Which layers a call captures (the :class:`Plan`), what one pass captured (:class:`Capture`),
and the plans remembered per model (:data:`PLANS`).

A :class:`Plan` says which call of which module is each feature layer, how its
tensor is read (:mod:`gradattr.layouts`) and which layer is scored. It is
immutable, resolved once per call and remembered per (model, input signature,
layer options), weakly: the cache never keeps a model alive.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import cast

import torch
from torch import nn

from .. import layouts
from ..errors import warn
from ..layouts import Reading
from ..prep import Call
from .hooks import lookup
from .replay import Replay


@dataclass(frozen=True)
class LayerPlan:
    name: str
    call: int | None  # which call of the module (0-based); None: the last, counted on the first pass
    reading: Reading | None  # None: read from the first captured tensor


@dataclass(frozen=True)
class Plan:
    """Which tensors a call captures: feature layers (empty: automatic) and the reduction layer."""

    layers: tuple[LayerPlan, ...]
    reduction: str | None

    @cached_property  # (in the instance's __dict__: no field, so equality and hashing ignore it)
    def known(self) -> bool:
        """Every layer's call and reading resolved (asked on every call: computed once)."""
        return bool(self.layers) and all(lp.call is not None and lp.reading is not None
                                         for lp in self.layers)

    @property
    def names(self) -> list[str]:
        return [lp.name for lp in self.layers]


@dataclass
class Capture:
    """What one forward pass captured: per feature layer the raw tensor and its reading."""

    raw: list[torch.Tensor]  # as the network produced them (leaves when the tail was recorded)
    plan: Plan
    output: object  # the reduction layer's output (None when the pass stopped early)
    reduction_name: str
    #: what a pass that carried a method's copies past the feature layer gave besides (``swap=``
    #: of :func:`gradattr.capture.capture`; Ablation-CAM's scores of its first chunk), else ``None``
    carried: object = None
    #: the modules before the feature layer as this pass recorded them, for the call's later
    #: passes of the same sample (:class:`gradattr.capture.replay.Replay`; N = 1), else ``None``
    replay: Replay | None = None

    @property
    def acts(self) -> list[torch.Tensor]:
        """Every feature layer as ``(N, C, *S)``, detached."""
        return [cast(Reading, lp.reading).to_ncs(r.detach()) for r, lp in zip(self.raw, self.plan.layers)]


def warn_guess(lp: LayerPlan) -> None:
    """A warning when ``lp``'s reading is a guess (another reading fits its shape too)."""
    r = lp.reading
    if r is not None and r.guessed:
        other = f" ({r.alternatives})" if r.alternatives else ""
        warn(f"gradattr: feature layer {lp.name!r} read as {layouts.describe(r)}, a guess (another "
             f"reading fits its shape too{other}); pass feature_layout= to say how to read it")


def plan_from_options(net: nn.Module, feature_layer, reduction_layer, feature_layout,
                      feature_call) -> Plan:
    """The plan the user asked for: explicit layers (or none: automatic) and the reduction layer."""
    from ..layers import resolve_layer, resolve_layers

    features = resolve_layers(net, feature_layer, "feature_layer") or []
    reduction = resolve_layer(net, reduction_layer, "reduction_layer")
    reading = layouts.resolve_layout(feature_layout)  # checked by its Option; here made a Reading
    if feature_call is not None and not features:  # (feature_call itself is checked by its Option)
        from ..errors import expected
        raise expected("feature_layer", "an explicit layer when feature_call is given", "None")
    call = None if feature_call is None or feature_call < 0 else feature_call
    layers = tuple(LayerPlan(name, call, reading) for _, name in features)
    return Plan(layers, None if reduction is None else reduction[1])


# -- the remembered plans -----------------------------------------------------------------
class PlanCache:
    """Plans resolved by a first pass, per model (weakly) and (input signature, plan asked for).

    An entry holds layer names and weak references to their modules only, so it
    never keeps a model alive (a submodule that refers back to its model would
    otherwise keep both alive through the cache), and it is used only while the
    names still resolve to the same modules: replacing a submodule invalidates it.
    """

    def __init__(self):
        self._store: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @staticmethod
    def key(call: Call, asked: Plan):
        x = call.x
        return (tuple(x.shape[1:]), x.dtype, x.device, asked)

    def get(self, call: Call, asked: Plan) -> Plan | None:
        entry = self._store.get(call.net, {}).get(self.key(call, asked))
        if entry is None:
            return None
        plan, refs = entry
        return plan if all(lookup(call.net, lp.name) is r() for lp, r in zip(plan.layers, refs)) else None

    def put(self, call: Call, asked: Plan, plan: Plan) -> None:
        refs = tuple(weakref.ref(call.net.get_submodule(lp.name)) for lp in plan.layers)
        with self._lock:
            self._store.setdefault(call.net, {})[self.key(call, asked)] = (plan, refs)


PLANS = PlanCache()
