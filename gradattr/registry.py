"""The method registry: one :class:`Method` entry per method, as plain data.

An entry declares everything the rest of the package needs to know about a
method: its computation, what the engine captures for it, its family, the shared options
(:data:`gradattr.options.SHARED`) it takes, whether it explains a target, what it returns,
its own options with their validators, its documentation and its naive reference. The
public functions (:mod:`gradattr.api`, which renders their signatures and docstrings from
these fields), :func:`gradattr.attribute`, :func:`gradattr.list_methods`, ``compare``,
``explain_dataset``, the command line and the benchmark all read this registry; nothing
inspects function signatures.

Adding a method is one pure function and one :func:`register` call in
:mod:`gradattr.methods`, and one naive reference in ``tests/references.py``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from .errors import GradattrError, expected
from .options import COMMON, SHARED, Option

#: What the engine captures before it calls a method (``Method.captures``):
#: ``nothing``: no feature layer; the method works through the scorer or the score gradients
#: alone (RISE, FullGrad);
#: ``activations``: each feature layer's output (no backward; perturbation CAMs also score
#: masked inputs or modified activations through the scorer);
#: ``activations+gradients``: the outputs and ``d score / d A`` of each feature layer;
#: ``input_gradients``: gradients with respect to the input (guided backpropagation and the
#: input-level attributions, which run their own gradient passes through the score gradients (:mod:`gradattr.score_gradients`));
#: ``attention``: every attention block's probabilities and their gradients, observed for the
#: call that asks (:mod:`gradattr.capture.attention_blocks`), with the token grid of the patch embedding.
CAPTURES = ("nothing", "activations", "activations+gradients", "input_gradients", "attention")

#: Which family a method belongs to (``Method.family``): for the docs and ``method_info``.
FAMILIES = ("gradient CAM", "activation CAM", "perturbation CAM", "perturbation", "input attribution",
            "attention", "baseline")


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
    # the method scales, blurs, adds noise to or differentiates the input's values: refused on
    # integer inputs (token ids), where a changed id is another token or no id at all
    changes_input: bool = False
    stop_early: bool = False  # the forward pass may end at the feature layer (no score needed)
    finish: Callable | None = None  # (last layer's view, fused maps (N, K, *s)) -> the result (Guided Grad-CAM)
    # (call, plan, options) -> a Capture whose pass also carried the method's work past the feature
    # layer, or None (then the plain capture pass runs): Ablation-CAM's first chunk of copies
    capture_with: Callable | None = None
    # the leading options the public function also takes by position, in signature order
    # (grad_cam: MATLAB's reduction_fn, feature_layer, reduction_layer, upsampling, device)
    positional: tuple[str, ...] = ()

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
        if list(self.positional) != self.option_names()[:len(self.positional)]:
            raise ValueError(f"{self.name}: positional must be the first options in signature order "
                             f"{self.option_names()[:len(self.positional)]}, got {list(self.positional)}")

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
