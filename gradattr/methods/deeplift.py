"""Baseline-additive gradient attributions: DeepLIFT (Rescale) and expected gradients (GradientSHAP).

DeepLIFT (Shrikumar, Greenside & Kundaje, ICML 2017) propagates multipliers
``m = Delta out / Delta in`` through every nonlinearity instead of its gradient, for
the input ``x`` and a reference ``b`` run side by side in one batch ``[x; b]``; linear
operations keep their (constant) Jacobian, so the attributions
``(x - b) * m_x`` sum to ``f(x) - f(b)`` exactly (summation-to-delta). The rules are
applied by :class:`DeepLiftRules`, a :class:`~torch.overrides.TorchFunctionMode` active for
one forward pass: it sees every operation however it is written (``nn.ReLU``,
``torch.relu``, ``x.sigmoid()``) and

* gives the Rescale rule to ReLU, ELU, leaky ReLU, sigmoid, tanh and softplus
  (captum's ``nonlinear``: the multiplier where ``|Delta in| >= 1e-10``, the gradient
  elsewhere), and captum's max-pooling rule to ``max_pool{1,2,3}d``;
* lets linear operations through (linear, convolutions, average pooling, eval-mode
  batch norm and dropout, additions, reshapes, products with something that does not
  depend on the input);
* refuses, by name, any other operation on a tensor that depends on the input
  (``gelu``, ``softmax``, ``layer_norm``, the product of two such tensors...): there is
  no rule for it, and a gradient in its place would be a silent approximation.

Expected gradients (Erion et al. 2021; captum ``GradientShap``) average
``grad f(b + a (x' - b)) * (x' - b)`` over random background rows ``b``, ``a ~ U(0, 1)``
and ``x' = x + N(0, stdevs^2)``.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import GradattrError, expected
from ..options import COMMON, TARGET, Option, positive_int
from ..registry import Method, register
from ..budget import chunk_size
from ..scorer import hooked_output
from .common import BATCH_SIZE
from .perturbation import SEED
from .baseline import baseline_like, baseline_option
from .tabular import BACKGROUND, TABULAR_TOY, background_rows

#: Below this ``|Delta in|`` a nonlinearity passes its gradient (captum's ``eps``).
EPS = 1e-10
#: Elementwise nonlinearities with the Rescale rule (captum's ``SUPPORTED_NON_LINEAR``).
RESCALE = {"relu", "relu_", "elu", "elu_", "leaky_relu", "leaky_relu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
           "softplus"}
MAX_POOL = {"max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3}
#: Operations linear (or affine) in every tensor argument.
LINEAR = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
          "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
          "adaptive_avg_pool3d", "batch_norm", "dropout", "dropout1d", "dropout2d", "dropout3d",
          "alpha_dropout", "feature_alpha_dropout", "flatten", "unflatten", "view", "reshape", "view_as",
          "reshape_as", "permute", "transpose", "t", "contiguous", "__getitem__", "squeeze", "unsqueeze",
          "expand", "expand_as", "repeat", "cat", "concat", "concatenate", "stack", "split", "chunk", "unbind",
          "narrow", "select", "clone", "to", "float", "double", "type_as", "add", "__add__", "__radd__",
          "__iadd__", "add_", "sub", "__sub__", "__rsub__", "__isub__", "sub_", "neg", "__neg__", "sum", "mean",
          "pad", "movedim", "swapaxes", "__get__", "identity"}
#: Products: linear while at most one factor depends on the input (a division: the numerator).
PRODUCTS = {"mul", "__mul__", "__rmul__", "__imul__", "mul_", "matmul", "__matmul__", "mm", "bmm", "einsum",
            "div", "__truediv__", "__itruediv__", "div_"}
DIVISIONS = {"div", "__truediv__", "__itruediv__", "div_"}


class _Tracked:
    """The tensors of one forward pass that depend on the input (weak references by id)."""

    def __init__(self, leaf: torch.Tensor):
        self.refs: dict[int, weakref.ref] = {}
        self.add(leaf)

    def add(self, t) -> None:
        for o in _tensors(t):
            self.refs[id(o)] = weakref.ref(o)

    def has(self, t) -> bool:
        r = self.refs.get(id(t))
        return r is not None and r() is t


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


class _Scaled(torch.autograd.Function):
    """The value ``out``, and ``grad * m`` for ``u`` in the backward (a multiplier per element)."""

    @staticmethod
    def forward(ctx, u, out, m):
        ctx.m = m
        return out

    @staticmethod
    def backward(ctx, g):
        return g * ctx.m, None, None


def _rescale(func, args, kwargs, half: int) -> torch.Tensor:
    """An elementwise nonlinearity of ``[x; b]`` with the Rescale rule: the value ``func(u)``, and
    ``d/du = Delta out / Delta in`` (the same for both halves; the gradient where ``|Delta in| < EPS``)."""
    u = args[0]
    ud = u.detach()
    name = func.__name__.rstrip("_")
    if name in ("relu", "sigmoid", "tanh"):  # their derivatives from their values
        out = func(ud.clone(), *args[1:], **kwargs)  # a copy: in-place forms work on it
        deriv = (ud > 0).to(u.dtype) if name == "relu" else out * (1 - out) if name == "sigmoid" else 1 - out * out
    else:
        leaf = ud.clone().requires_grad_(True)
        with torch.enable_grad():
            out = func(leaf.clone(), *args[1:], **kwargs)
            (deriv,) = torch.autograd.grad(out.sum(), leaf)
        out = out.detach()
    din = ud[:half] - ud[half:]
    small = din.abs() < EPS
    ratio = (out[:half] - out[half:]) / torch.where(small, torch.ones_like(din), din)
    m = torch.where(torch.cat([small, small]), deriv, torch.cat([ratio, ratio]))
    return _Scaled.apply(u, out, m)


class _PoolRule(torch.autograd.Function):
    """Max pooling's value, with captum's DeepLIFT backward (``rule.backward``)."""

    @staticmethod
    def forward(ctx, u, rule):
        ctx.rule = rule
        return rule.out.detach().clone()

    @staticmethod
    def backward(ctx, g):
        return ctx.rule.backward(g), None


class _MaxPool:
    """captum's ``maxpool`` rule for ``[x; b]``: the cross maximum's differences unpooled at each
    half's argmax, summed over both halves, divided by ``Delta in``."""

    def __init__(self, d: int, u: torch.Tensor, args, kwargs, half: int):
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
        p = dict(zip(names, args[1:]))
        p.update({k: v for k, v in kwargs.items() if k in names})
        if args[6:] or kwargs.get("return_indices"):
            raise GradattrError("net: deep_lift has no DeepLIFT rule for max pooling that returns indices")
        self.d, self.p, self.half, self.shape = d, p, half, u.shape
        self.u = u.detach()
        self.leaf = self.u.clone().requires_grad_(True)
        pool = getattr(F, f"max_pool{d}d")
        with torch.enable_grad():
            self.out, self.idx = pool(self.leaf, **p, return_indices=True)

    def backward(self, g: torch.Tensor) -> torch.Tensor:
        (plain,) = torch.autograd.grad(self.out, self.leaf, g, retain_graph=True)
        h, u, o = self.half, self.u, self.out.detach()
        din = torch.cat(2 * [u[:h] - u[h:]])
        xmax = torch.max(o[:h], o[h:])
        dout = torch.cat([xmax - o[h:], o[:h] - xmax])
        unpool = getattr(F, f"max_unpool{self.d}d")
        un = unpool(g * dout, self.idx, self.p["kernel_size"], self.p.get("stride"), self.p.get("padding", 0),
                    list(self.shape))
        un = torch.cat(2 * [un[:h] + un[h:]])
        safe = torch.where(din.abs() < EPS, torch.ones_like(din), din)
        return torch.where(din.abs() < EPS, plain, un / safe)


class DeepLiftRules(TorchFunctionMode):
    """DeepLIFT's rules for one forward pass of ``[x; b]`` (``half`` rows each) from ``leaf``."""

    def __init__(self, leaf: torch.Tensor, half: int):
        super().__init__()
        self.half, self.tracked = half, _Tracked(leaf)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        name = name[1:] if name.startswith("_max_pool") else name
        deps = [t for t in _tensors((args, kwargs)) if self.tracked.has(t)]
        if not deps:
            return func(*args, **kwargs)
        if name in RESCALE and self.tracked.has(args[0]) and len(deps) == 1:
            out = _rescale(func, args, {k: v for k, v in kwargs.items() if k != "inplace"}, self.half)
        elif name in MAX_POOL and self.tracked.has(args[0]):
            rule = _MaxPool(MAX_POOL[name], args[0], args, kwargs, self.half)
            out = _PoolRule.apply(args[0], rule)
        elif name in LINEAR or (name in PRODUCTS and len(deps) == 1 and (
                name not in DIVISIONS or self.tracked.has(args[0]))):
            out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
            if _tensors(out):  # sizes, dims and other non-tensor results need no rule
                raise GradattrError(
                    f"net: deep_lift has a DeepLIFT rule for ReLU, ELU, leaky ReLU, sigmoid, tanh, "
                    f"softplus and max pooling and lets linear operations through, but the network "
                    f"applies {name!r} to a tensor that depends on the input; it is refused rather than "
                    "approximated by its gradient (integrated_gradients or gradient_shap explain this "
                    "network)")
        self.tracked.add(out)
        return out


def deep_lift_map(view, baseline=0.0, batch_size=None) -> torch.Tensor:
    """``(N, K, *E)``: ``(x - b) * m``, ``m`` the DeepLIFT multipliers of every target."""
    sc = view.scorer
    x = sc.x
    if not x.is_floating_point():
        raise expected(sc.input_name, "floating-point input", f"dtype {x.dtype}")
    n = x.shape[0]
    base = baseline_like(baseline, x)
    given = sc.given_target  # the top class is fixed on x (one more pass), not re-picked on b
    target = sc.target if given.kind == "top" else given
    # rows of both halves per pass: what fits the memory budget (no per-pass cap: one backward each)
    step = max(1, chunk_size(batch_size, lambda: 2 * sc.budget.point_bytes(x[0]), x.device, cpu_cap=False) // 2)
    out = []
    for start in range(0, n, step):
        r = torch.arange(start, min(n, start + step), device=x.device)
        h = len(r)
        leaf = torch.cat([x[r], base[r]]).detach().requires_grad_(True)
        with DeepLiftRules(leaf, h):
            y, rname, _ = hooked_output(sc.call, sc.reduction, leaf.clone(), torch.cat([r, r]), grad=True)
        # both halves scored, as captum does: max pooling's rule passes the reference half's
        # gradient to the input half (the Rescale multipliers keep the halves apart)
        s = target.scores(y, 2 * h, torch.cat([r, r]))
        if not s.requires_grad:
            raise GradattrError(f"target: expected a score that depends on the input, but the score of "
                                f"{rname!r} does not")
        k = s.shape[1]
        g = torch.stack([torch.autograd.grad(s[:, j].sum(), leaf, retain_graph=j < k - 1,
                                             allow_unused=True)[0][:h] for j in range(k)], 1)
        out.append((x[r] - base[r])[:, None] * g)
    return torch.cat(out)


def gradient_shap_map(view, background=None, samples=50, stdevs=0.0, seed=0, batch_size=None) -> torch.Tensor:
    """``(N, K, *E)``: the mean of ``grad f(b + a (x' - b)) * (x' - b)`` over the draws.

    Draws from a CPU generator seeded ``seed``, in this order: the background row of every
    ``(sample, draw)`` ``(N, samples)``, then ``a`` ``(N, samples)`` in float64, then (with
    ``stdevs > 0``) the noise ``(N, samples, *E)``."""
    sc = view.scorer
    x = sc.x
    if not x.is_floating_point():
        raise expected(sc.input_name, "floating-point input", f"dtype {x.dtype}")
    n, element = x.shape[0], tuple(x.shape[1:])
    bg = background_rows(background, element, x).view(-1, *element)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    pick = torch.randint(bg.shape[0], (n, samples), generator=gen).to(x.device)
    alpha = torch.rand(n, samples, generator=gen, dtype=torch.float64).to(x.device)
    noise = (stdevs * torch.randn(n, samples, *element, generator=gen, dtype=torch.float64)).to(x.device, x.dtype) \
        if stdevs > 0 else None
    count = n * samples
    step = chunk_size(batch_size, lambda: sc.budget.point_bytes(x[0]), x.device)
    total = None
    for start in range(0, count, step):
        t = torch.arange(start, min(count, start + step), device=x.device)
        i, j = t // samples, t % samples
        xi = x[i] if noise is None else x[i] + noise[i, j]
        b = bg[pick[i, j]]
        shape = (-1,) + (1,) * len(element)
        p = b + alpha[i, j].to(x.dtype).view(shape) * (xi - b)
        g = view.score_gradients.point_gradients(p, i) * (xi - b)[:, None]
        if total is None:
            total = g.new_zeros((n,) + tuple(g.shape[1:]))
        total.index_add_(0, i, g)
    return total / samples


def _stdevs(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise expected(name, "a finite number >= 0", repr(value))
    return float(value)


register(Method(
    "deep_lift", "DeepLIFT", deep_lift_map, "input_gradients", family="input attribution",
    shared=COMMON + TARGET, combine="map", returns="pixels",
    options=(Option("baseline", 0.0, "float | torch.Tensor | np.ndarray",
                    "the reference input: a number, or values broadcastable to ``x`` (one per "
                    "feature ``(F,)``, or per sample).", baseline_option),
             BATCH_SIZE),
    summary="DeepLIFT with the Rescale rule (Shrikumar et al., ICML 2017; captum ``DeepLift``): "
            "contributions of each input element relative to a baseline that add up to the score's change.",
    doc="""``(x - b) * m``, ``m`` the multipliers propagated with ``Delta out / Delta in`` through
ReLU, ELU, leaky ReLU, sigmoid, tanh and softplus (captum's max-pooling rule for
``max_pool``), and through linear operations as they are; ``x`` and ``b`` run in one batch.
Without max pooling the attributions of each sample sum to ``f(x) - f(b)`` exactly; with it
they equal captum's, which do not sum exactly. An operation without a rule (GELU, softmax,
layer norm, a product of two input-dependent tensors) is refused by name. See
:mod:`gradattr.methods.deeplift`.""",
    example=TABULAR_TOY + """>>> a = gradattr.deep_lift(net, x, 0)
>>> bool(torch.allclose(a.sum(1), net(x)[:, 0] - net(torch.zeros(1, 4))[0, 0], atol=1e-5))
True
""",
    use_when="exact, additive contributions relative to a baseline for ReLU/sigmoid/tanh networks, at "
             "the cost of one backward"))

register(Method(
    "gradient_shap", "GradientSHAP (expected gradients)", gradient_shap_map, "input_gradients",
    family="input attribution", shared=COMMON + TARGET, combine="map", returns="pixels",
    options=(BACKGROUND,
             Option("samples", 50, "int", "random draws per sample (captum's ``n_samples``).", positive_int),
             Option("stdevs", 0.0, "float", "standard deviation of Gaussian noise added to ``x`` "
                    "(captum's ``stdevs``).", _stdevs),
             SEED, BATCH_SIZE),
    summary="Expected gradients / GradientSHAP (Erion et al. 2021; captum ``GradientShap``): input x "
            "gradient along random paths from background rows, averaged.",
    doc="""``mean over draws of grad f(b + a (x' - b)) * (x' - b)``, ``b`` a random background row,
``a ~ U(0, 1)``, ``x' = x + N(0, stdevs^2)``; all targets from the same passes, in chunks. In
expectation (``stdevs=0``) each sample's attributions sum to ``f(x) - mean_b f(b)``. See
:mod:`gradattr.methods.deeplift`.""",
    example=TABULAR_TOY + """>>> gradattr.gradient_shap(net, x, 0, background=data, samples=20).shape
torch.Size([3, 4])
""",
    use_when="SHAP-like attributions of a differentiable model at the cost of a few dozen backwards"))
