"""Options at the foundation: :class:`Option`, the validators, and the options methods share.

An :class:`Option` is one keyword option of a public function: its name, default,
annotation (for the signature), documentation line and validator. A validator
``check(name, value)`` returns the value as the engine uses it, or raises a
:class:`~gradattr.errors.GradattrError` naming the argument. :data:`SHARED` holds the
options every method may take, in signature order; :data:`COMMON`, :data:`TARGET` and
:data:`LAYER` are the groups a registry entry lists (:mod:`gradattr.registry`).

The method registry, the metrics, ``compare`` and the command line validate their
options with these; this module imports nothing of gradattr but :mod:`gradattr.errors`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import expected

#: The upsampling choices ``grad_cam`` accepts, mirroring MATLAB's ``OutputUpsampling``.
UPSAMPLING_MODES = ("bicubic", "nearest", "none")

#: The names ``feature_layout`` accepts (``"tokens:k"``: k leading extra tokens, e.g. ``"tokens:1"``);
#: :func:`gradattr.layouts.resolve_layout` turns one into a reading.
LAYOUT_NAMES = ("channels_first", "channels_last", "tokens", "tokens:k", "time_major", "time_first")

#: SESS's settings (pytorch-grad-cam's defaults); ``sess=dict(...)`` overrides any of them.
SESS_DEFAULTS = {"num_scales": 12, "scale_step_ratio": 2 / 7, "window_size": None, "step_size": None,
                 "pre_filter_ratio": 0.0, "theta": 0.0, "pool": "mean", "smooth": True, "batch_size": 32}


# -- validators -------------------------------------------------------------------------
def check_flag(name: str, value) -> bool:
    """Refuse anything but a real ``bool`` for an on/off option (``"no"`` is truthy).

    >>> check_flag("normalize", True)
    True
    """
    if isinstance(value, bool):
        return value
    import numpy as np

    if not isinstance(value, np.bool_):
        raise expected(name, "True or False", repr(value))
    return bool(value)


#: The validator of an on/off :class:`Option` (:func:`check_flag`).
flag = check_flag


def check_seed(name: str, value) -> int | None:
    """The one rule for a ``seed``, of every method and metric: ``None`` (draw from torch's global
    random state) or an integer >= 0 (a numpy integer too), returned as an ``int``.

    >>> check_seed("seed", 3), check_seed("seed", None)
    (3, None)
    """
    import numbers

    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                              or not 0 <= int(value) < 2**64):
        raise expected(name, "None (torch's global random state) or an int >= 0 (below 2**64, torch's "
                       "range)", repr(value))
    return None if value is None else int(value)


def check_generator(name: str, value):
    """``None`` or a ``torch.Generator`` (what a method draws from instead of seeding its own)."""
    import torch

    if value is not None and not isinstance(value, torch.Generator):
        raise expected(name, "None or a torch.Generator", repr(value))
    return value



def optional_positive_int(name: str, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise expected(name, "None (sized from a 512 MB budget) or a positive int", repr(value))
    return value


def positive_int(name: str, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise expected(name, "a positive int", repr(value))
    return value


def any_value(name: str, value):
    return value


def check_forward_kwargs(name: str, value):
    if value is not None and (not isinstance(value, dict) or not all(isinstance(k, str) for k in value)):
        raise expected(name, "None or a dict of keyword inputs of net (str keys), e.g. "
                       "{'attention_mask': mask}", repr(value) if not isinstance(value, dict)
                       else "a dict with non-str keys")
    return value


def check_upsampling(name: str, value) -> str:
    if not isinstance(value, str) or value.lower() not in UPSAMPLING_MODES:
        raise expected(name, "one of " + ", ".join(map(repr, UPSAMPLING_MODES)), repr(value))
    return value.lower()


def check_device(name: str, value):
    """A device as :func:`gradattr.prep.resolve_device` reads it: ``"auto"``, ``"cpu"``,
    ``"gpu"``/``"cuda"``, any name ``torch.device`` accepts (``"cuda:1"``) or a ``torch.device``,
    one that computes (not ``meta``). Whether a GPU is there is checked when the call runs."""
    if isinstance(value, str) and value.lower() in ("auto", "gpu", "cuda"):
        return value
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise expected(name, "'auto', 'cpu', 'gpu'/'cuda' or a torch.device", repr(value)) from None
    if dev.type == "meta":
        raise expected(name, "a device that computes ('auto', 'cpu', 'cuda')", "'meta' (a device without data)")
    return value


def check_feature_layout(name: str, value):
    """``None``, a layout name of :data:`LAYOUT_NAMES` (``"tokens:1"``...) or a callable
    ``tensor -> (N, C, *S)``; :func:`gradattr.layouts.resolve_layout` makes it a reading later."""
    if value is None or (callable(value) and not isinstance(value, str)):
        return value
    if isinstance(value, str):
        s = value.strip().lower()
        if s in LAYOUT_NAMES and s != "tokens:k" or (s.startswith("tokens:") and s[len("tokens:"):].isdigit()):
            return value
    raise expected(name, "None, one of " + ", ".join(map(repr, LAYOUT_NAMES))
                   + " (k: the number of leading extra tokens, e.g. 'tokens:1') or a callable "
                   "tensor -> (N, C, *S)", repr(value))


def check_feature_call(name: str, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise expected(name, "None or an int (0-based call index)", repr(value))
    if value is not None and value < -1:
        raise expected(name, "a call index >= 0, or -1 for the last call", repr(value))
    return value


def check_output_key(name: str, value):
    if value is not None and not isinstance(value, (str, int)):
        raise expected(name, "None, a key (str) or an index (int) of the network's output", repr(value))
    return value


def check_autocast(name: str, value):
    """``None``, ``"bf16"``/``"bfloat16"`` or ``"fp16"``/``"float16"`` (any case), as given."""
    if value is not None and (not isinstance(value, str)
                              or value.lower() not in ("bf16", "bfloat16", "fp16", "float16")):
        raise expected(name, "None, 'bf16' or 'fp16'", repr(value))
    return value


def check_explain(name: str, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise expected(name, "the index (int >= 0) of the input in x to explain", repr(value))
    return value


def check_sess(name: str, value):
    """``sess``: ``False``, ``True`` (the defaults) or a dict overriding :data:`SESS_DEFAULTS`."""
    if isinstance(value, bool):
        return dict(SESS_DEFAULTS) if value else False
    if not isinstance(value, dict) or set(value) - set(SESS_DEFAULTS):
        raise expected(name, "True, False or a dict with keys among " + ", ".join(SESS_DEFAULTS),
                       repr(value))
    out = {**SESS_DEFAULTS, **value}
    if out["pool"] not in ("mean", "max") or not 0 <= out["pre_filter_ratio"] < 1 or out["num_scales"] < 1:
        raise expected(name, "pool 'mean' or 'max', 0 <= pre_filter_ratio < 1, num_scales >= 1",
                       repr(value))
    return out


@dataclass(frozen=True)
class Option:
    """One keyword option: name, default, annotation (for the signature), doc line, validator.

    ``result_type``, for a flag whose ``True`` makes the call return a tuple instead of the
    map: that tuple's type, ``{map}`` standing for the map's (``"tuple[{map}, {map}]"``); the
    typed signatures (``gradattr/api.pyi``, the functions' annotations) are made from it.
    """

    name: str
    default: object
    annotation: str
    doc: str
    check: Callable[[str, object], object] = any_value
    result_type: str = ""


def seed_option(default: int | None, doc: str) -> Option:
    """A method's ``seed`` option: its default and its text are the method's, the rule is :func:`check_seed`."""
    return Option("seed", default, "int | None", doc, check_seed)


#: The ``generator`` option of the methods that draw random numbers.
GENERATOR = Option("generator", None, "torch.Generator | None",
                   "a ``torch.Generator`` to draw from (overrides ``seed``; advanced by the call).",
                   check_generator)


#: Options every method may share, in signature order. Each entry lists the ones it takes
#: (``Method.shared``).
SHARED: dict[str, Option] = {o.name: o for o in (
    Option("reduction_fn", None, "Callable | None",
           "``y -> (N,)`` (or ``(N, K)``) scores from the reduction layer's output ``y`` "
           "(e.g. ``lambda y: y[:, 0]`` for a regressor). ``y`` is that output as the layer "
           "returns it (a dict, tuple or ``ModelOutput`` stays whole: a torchvision segmenter's "
           "``{\"out\": ..., \"aux\": ...}``), or the entry ``output_key`` names when it is given; "
           "class targets instead score ``output_key``'s entry or, without it, ``\"logits\"``, "
           "``\"out\"`` or the only tensor."),
    Option("feature_layer", None, "str | nn.Module | Sequence | None",
           "name (from ``net.named_modules()``) or module; ``None`` picks the last layer whose "
           "output has the input's layout with a spatial/time dimension > 1 (MATLAB's rule); "
           "a list gives one map per layer, fused (each min-max normalised, resized, averaged, "
           "normalised)."),
    Option("reduction_layer", None, "str | nn.Module | None",
           "name or module whose output is scored; ``None`` is the network output."),
    Option("upsampling", "bicubic", "str",
           "``\"bicubic\"`` (MATLAB ``imresize``/``imresize3`` exact), ``\"nearest\"`` or "
           "``\"none\"`` (the feature map's resolution).", check_upsampling),
    Option("device", "auto", "str | torch.device",
           "``\"auto\"`` (where the parameters are), ``\"cpu\"``, ``\"gpu\"``/``\"cuda\"`` or a "
           "``torch.device``; a model moved for the call is moved back.", check_device),
    Option("classes", None, "Sequence | None", "labels for string targets."),
    Option("input_format", None, "str | None",
           "MATLAB dimension letters for MATLAB-ordered arrays: ``\"SSC\"`` (H x W x C image), "
           "``\"SSCB\"``, ``\"SSSC\"``, ``\"CT\"``, ``\"TC\"``, ``\"CBT\"``, ``\"BC\"`` (a batch "
           "of feature vectors), ``\"C\"`` (one vector); ``None``: the batch axis and rank are "
           "observed from what the network does with ``x`` (refused when two readings fit)."),
    Option("feature_layout", None, "str | Callable | None",
           "how to read the feature tensor: ``None`` (read it from its shape and the input), "
           "``\"channels_first\"``, ``\"channels_last\"``, ``\"tokens\"``, ``\"tokens:k\"`` (k "
           "leading extra tokens), ``\"time_major\"`` (N, T, C), ``\"time_first\"`` (T, N, C), or a callable ``tensor -> (N, C, *S)`` "
           "(a pytorch-grad-cam ``reshape_transform``).", check_feature_layout),
    Option("feature_call", None, "int | None",
           "which call of a feature module the network runs several times (0-based; negative "
           "counts from the end); ``None``: its last call.", check_feature_call),
    Option("output_key", None, "str | int | None",
           "the entry of a dict/tuple/ModelOutput network output to score; ``None``: "
           "``\"logits\"``, ``\"out\"`` or the only tensor.", check_output_key),
    Option("return_layers", False, "bool",
           "also return the feature and reduction layer names (MATLAB's three outputs).", flag,
           result_type="tuple[{map}, str | list[str], str]"),
    Option("normalize", False, "bool", "min-max scale each map to [0, 1] (MATLAB's ``rescale``).", flag),
    Option("counterfactual", False, "bool",
           "explain the evidence against the target (negated gradients).", flag),
    Option("eigen_smooth", False, "bool",
           "replace the channel sum by the projection on the first principal component of the "
           "channel terms (pytorch-grad-cam's ``eigen_smooth``; the sign is fixed so the map "
           "correlates positively with the plain one).", flag),
    Option("aug_smooth", False, "bool",
           "average the normalised maps of six augmented inputs (horizontal flip x multiply by "
           "0.9, 1, 1.1; pytorch-grad-cam's ``aug_smooth``); the result lies in [0, 1].", flag),
    Option("sess", False, "bool | dict",
           "SESS (Tyagi et al., 2022; pytorch-grad-cam's ``SESS``): the method on sliding windows "
           "of the input at several scales, weighted by each window's target probability and fused; "
           "``True`` or a dict of settings (``num_scales``, ``scale_step_ratio``, ``window_size``, "
           "``step_size``, ``pre_filter_ratio``, ``theta``, ``pool``, ``smooth``, ``batch_size``); "
           "the result lies in [0, 1] at the input's resolution.",
           check_sess),
    Option("autocast", None, "str | None",
           "``\"bf16\"`` or ``\"fp16\"``: run the forward passes under ``torch.autocast``; the "
           "map is accumulated in float32. ``None``: the model's own precision.", check_autocast),
    Option("relu", True, "bool",
           "``False``: signed maps, the channel sum without the final ReLU (captum's "
           "``relu_attributions=False``); ``True`` (default): ``ReLU(sum_c ...)``.", flag),
    Option("forward_kwargs", None, "dict | None",
           "keyword inputs of ``net`` (e.g. a Hugging Face ``attention_mask``), passed to every "
           "forward pass; tensor entries whose first dimension is N follow the batch.",
           check_forward_kwargs),
    Option("explain", 0, "int",
           "with several inputs (``x`` a tuple, run as ``net(*x)``): the index of the input that "
           "an input-level method attributes and whose grid a map is upsampled to.", check_explain),
)}

#: Groups of shared options an entry lists in its ``shared`` (in any order; signatures follow
#: :data:`SHARED`'s order): every method's, a target's, a feature layer's.
COMMON = ("reduction_layer", "device", "input_format", "normalize", "autocast", "forward_kwargs",
          "explain")
TARGET = ("reduction_fn", "classes", "output_key")
LAYER = ("feature_layer", "feature_layout", "feature_call", "upsampling", "return_layers", "aug_smooth",
         "sess")
