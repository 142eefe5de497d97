"""The method registry: one :class:`Method` entry per method, and the options they share.

An entry declares everything the rest of the package needs to know about a
method: its computation, what the engine captures for it, its family, the shared options
it takes, whether it explains a target, what it returns, its own options with their
validators, its documentation and its naive reference. The public functions
(:mod:`gradattr.api`), :func:`gradattr.attribute`, :func:`gradattr.list_methods`,
``compare``, ``explain_dataset``, the command line and the benchmark all read
this registry; nothing inspects function signatures.

Adding a method is one pure function and one :func:`register` call in
:mod:`gradattr.methods`, and one naive reference in ``tests/references.py``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from .ensembles import check_sess
from .errors import GradattrError, expected
from .resize import UPSAMPLING_MODES

#: What the engine captures before it calls a method (``Method.captures``):
#: ``nothing``: no feature layer; the method works through the scorer or the gradient oracle
#: alone (RISE, FullGrad);
#: ``activations``: each feature layer's output (no backward; perturbation CAMs also score
#: masked inputs or modified activations through the scorer);
#: ``activations+gradients``: the outputs and ``d score / d A`` of each feature layer;
#: ``input_gradients``: gradients with respect to the input (guided backpropagation and the
#: input-level attributions, which run their own gradient passes through the gradient oracle);
#: ``attention``: every attention block's probabilities and their gradients, observed for the
#: call that asks (:mod:`gradattr.attention`), with the token grid of the patch embedding.
CAPTURES = ("nothing", "activations", "activations+gradients", "input_gradients", "attention")

#: Which family a method belongs to (``Method.family``): for the docs and ``method_info``.
FAMILIES = ("gradient CAM", "activation CAM", "perturbation CAM", "perturbation", "input attribution",
            "attention", "baseline")


# -- validators -------------------------------------------------------------------------
def flag(name: str, value):
    from .inputs import check_flag

    return check_flag(name, value)


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
    """``None``, a layout name (``"tokens:1"``...) or a callable; bound to a reading later."""
    from .layouts import resolve_layout

    resolve_layout(value)  # raises the error naming feature_layout
    return value


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


@dataclass(frozen=True)
class Option:
    """One keyword option: name, default, annotation (for the signature), doc line, validator."""

    name: str
    default: object
    annotation: str
    doc: str
    check: Callable[[str, object], object] = any_value


#: Options every method may share, in signature order. Each entry lists the ones it takes
#: (``Method.shared``).
SHARED: dict[str, Option] = {o.name: o for o in (
    Option("reduction_fn", None, "Callable | None",
           "``y -> (N,)`` (or ``(N, K)``) scores from the reduction layer's output ``y`` "
           "(e.g. ``lambda y: y[:, 0]`` for a regressor)."),
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
           "also return the feature and reduction layer names (MATLAB's three outputs).", flag),
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


@dataclass(frozen=True)
class Method:
    """A registered method.

    ``compute(view, **options)`` gets a :class:`~gradattr.engine.LayerView` (what the
    engine captured for one feature layer) and returns, by ``combine``:
    ``"weights"`` ``(N, K, C)`` channel weights, ``"terms"`` ``(N, K, C, *s)`` channel
    terms (the engine forms ``ReLU(sum_c)`` or, with ``eigen_smooth``, the ReLU of
    their principal projection), or ``"map"`` ``(N, K, *s)`` maps as they are.
    ``returns`` is ``"map"`` (one map per target) or ``"pixels"`` (``(N, K, C, *S)``
    at the input's resolution, guided backpropagation).
    """

    name: str
    title: str
    compute: Callable
    captures: str
    family: str = "gradient CAM"
    shared: tuple[str, ...] = COMMON
    combine: str = "weights"
    needs_target: bool = True
    returns: str = "map"
    options: tuple[Option, ...] = ()
    summary: str = ""
    doc: str = ""
    example: str = ""
    use_when: str = ""
    stop_early: bool = False  # the forward pass may end at the feature layer (no score needed)
    finish: Callable | None = None  # (last layer's view, fused maps (N, K, *s)) -> the result (Guided Grad-CAM)
    # (call, plan, options) -> a Capture whose pass also carried the method's work past the feature
    # layer, or None (then the plain capture pass runs): Ablation-CAM's first chunk of copies
    capture_with: Callable | None = None

    def __post_init__(self):
        if self.captures not in CAPTURES:
            raise ValueError(f"{self.name}: captures must be one of {CAPTURES}, got {self.captures!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family must be one of {FAMILIES}, got {self.family!r}")
        unknown = set(self.shared) - set(SHARED)
        if unknown:
            raise ValueError(f"{self.name}: shared options must come from SHARED, got {sorted(unknown)}")
        if self.combine not in ("weights", "terms", "map"):
            raise ValueError(f"{self.name}: combine must be 'weights', 'terms' or 'map'")

    @property
    def layered(self) -> bool:
        """Whether the method reads a feature layer."""
        return self.captures in ("activations", "activations+gradients")

    def shared_options(self) -> list[str]:
        """The shared options this method takes, in signature order."""
        return [name for name in SHARED if name in self.shared]

    def option_names(self) -> list[str]:
        """Every keyword option, shared and own (what :func:`gradattr.attribute` accepts)."""
        return self.shared_options() + [o.name for o in self.options]

    def defaults(self) -> dict[str, object]:
        return {o.name: o.default for o in self.all_options()}

    def all_options(self) -> list[Option]:
        return [SHARED[n] for n in self.shared_options()] + list(self.options)

    def validate(self, options: dict) -> dict:
        """Check every option given (unknown names included) and return them with the defaults
        filled in (checked once per method: they are constants)."""
        known, out = self._checked_defaults
        out = dict(out)
        for name, value in options.items():
            o = known.get(name)
            if o is None:
                raise unknown_option(self, name)
            out[name] = o.check(name, value)
        return out

    @cached_property
    def _checked_defaults(self) -> tuple[dict[str, Option], dict[str, object]]:
        known = {o.name: o for o in self.all_options()}
        return known, {name: o.check(name, o.default) for name, o in known.items()}

    def signature(self) -> inspect.Signature:
        """The public function's signature: ``(net, x, target=None, *, options...)``.

        ``grad_cam`` keeps MATLAB's positional order for its first eight arguments.
        """
        P = inspect.Parameter
        params = [P("net", P.POSITIONAL_OR_KEYWORD, annotation="nn.Module"),
                  P("x", P.POSITIONAL_OR_KEYWORD)]
        if self.needs_target:
            params.append(P("target", P.POSITIONAL_OR_KEYWORD, default=None))
        positional = ("reduction_fn", "feature_layer", "reduction_layer", "upsampling", "device") \
            if self.name == "grad_cam" else ()
        for o in self.all_options():
            kind = P.POSITIONAL_OR_KEYWORD if o.name in positional else P.KEYWORD_ONLY
            params.append(P(o.name, kind, default=o.default, annotation=o.annotation))
        return inspect.Signature(params)

    def docstring(self) -> str:
        """Summary, formula, every argument, what is returned, and the example."""
        args = ["net: any ``torch.nn.Module``; run in eval mode and left exactly as found "
                "(training flags, device, ``requires_grad``, ``.grad``, hooks).",
                "x: ``(N, C, T)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``, or the same without "
                "``N``; a tensor or a numpy array (the map comes back as the same kind); or a tuple "
                "of inputs, each with its batch dimension, run as ``net(*x)`` (see ``explain``)."]
        if self.needs_target:
            args.append("target: class index (0-based), a sequence of indices (one map each), an "
                        "``(N, K)`` integer array of per-sample classes, a label or labels looked "
                        "up in ``classes``, a callable (used as ``reduction_fn``), or ``None`` for "
                        "each sample's top class. On a spatial output a class scores the sum over "
                        "space (segmentation).")
        args += [f"{o.name}: {o.doc}" for o in self.all_options()]
        if self.returns == "pixels" and any(o.name == "feature_layer" for o in self.options):
            ret = ("``(N, K, C, *spatial)``, one signed value per element of the explained input "
                   "(with ``feature_layer``: per element of that layer's output, ``(N, K, *layer)``), "
                   "``N`` dropped for unbatched input and ``K`` for a scalar target.")
        elif self.returns == "pixels":
            ret = ("``(N, K, C, *spatial)`` at the input's resolution, ``N`` dropped for unbatched "
                   "input and ``K`` for a scalar target.")
        else:
            ret = ("The map ``(N, K, *spatial)``, ``N`` dropped for unbatched input and ``K`` for a "
                   "scalar target (or a method without target); with ``return_layers=True`` the "
                   "tuple ``(map, feature_layer_name, reduction_layer_name)``.")
        indent = "\n" + " " * 12
        text = [self.summary, "", self.doc.strip(), "", "Args:"]
        text += ["    " + _wrap(a, indent) for a in args]
        text += ["", "Returns:", "    " + ret]
        if self.example:
            text += ["", "Example:", _indent(self.example.strip("\n"), 4)]
        return "\n".join(text)


def _wrap(text: str, indent: str, width: int = 88) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    return indent.join(lines)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line if line else line for line in text.splitlines())


def unknown_option(method: Method, name: str) -> GradattrError:
    import difflib

    allowed = method.option_names()
    close = difflib.get_close_matches(name, allowed, n=2)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return GradattrError(f"{name}: expected an option of {method.name} (one of "
                         f"{', '.join(allowed)}), got {name!r}{hint}")


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (its name must be new)."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def get(name) -> Method:
    """The entry for ``name``, or a :class:`GradattrError` suggesting close names."""
    if isinstance(name, str) and name in REGISTRY:
        return REGISTRY[name]
    import difflib

    close = difflib.get_close_matches(str(name), list(REGISTRY), n=3) if isinstance(name, str) else []
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise expected("method", "one of " + ", ".join(map(repr, REGISTRY)), f"{name!r}{hint}")


@dataclass(frozen=True)
class Info:
    """What :func:`gradattr.method_info` tells of a method (for tools and tables)."""

    name: str
    title: str
    captures: str
    family: str
    needs_target: bool
    returns: str
    options: tuple[str, ...] = field(default=())
    summary: str = ""
    use_when: str = ""
