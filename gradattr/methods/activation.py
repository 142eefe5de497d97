"""Activation methods: maps from the activations alone (and, for CAM, the network's head)."""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from ..errors import GradattrError, expected
from ..options import COMMON, LAYER, TARGET, Option, positive_int, seed_option, check_seed
from ..registry import Method, register
from ..targets import Target
from ..ops import eigen_projection
from .common import TOY as _TOY


def eigen_cam_map(acts: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): ``ReLU(A_c v1)``, one map ``(N, 1, *s)``.

    No gradients and no target: the first principal component of the activations
    (see :func:`eigen_projection` for the centring and the sign).

    >>> a = torch.tensor([[[0.0, 1.0, 4.0], [0.0, 2.0, 8.0]]])
    >>> [round(v, 4) for v in eigen_cam_map(a).flatten().tolist()]  # (35 / 3) / sqrt(5) where they peak
    [0.0, 0.0, 5.2175]
    """
    return torch.relu(eigen_projection(acts[:, None]))


register(Method(
    "eigen_cam", "Eigen-CAM", lambda v: eigen_cam_map(v.acts), "activations",
    family="activation CAM", shared=COMMON + LAYER, combine="map",
    needs_target=False, stop_early=True,
    summary="Eigen-CAM map (Muhammad & Yeasin, IJCNN 2020): the activations' first principal component.",
    doc="""``ReLU(A_c v1)``: the centred activations projected on their first right singular
vector. No target and no gradients: one map per sample, class agnostic, and the forward
pass stops at the feature layer. The SVD's sign is fixed so the map correlates positively
with the activations' channel sum (pytorch-grad-cam keeps LAPACK's arbitrary sign, which
sometimes gives the inverted map); see :func:`gradattr.methods.eigen_projection`.""",
    example=_TOY + """>>> gradattr.eigen_cam(net, torch.randn(3, 2, 16), upsampling="none").shape
torch.Size([3, 16])
""",
    use_when="no target or no gradient available (detectors, embeddings): first principal component "
             "of the activations"))


def _target_weights(target: Target, y: torch.Tensor, n: int) -> torch.Tensor:
    """``d score_k / d y`` ``(N, K, classes)`` for an output ``y (N, classes)``: one-hot rows for classes."""
    leaf = y.detach().requires_grad_(True)
    with torch.enable_grad():
        s = target.scores(leaf, n)
        if not s.requires_grad:
            raise GradattrError("reduction_fn: expected a score computed from the network output, "
                                "but it does not depend on it")
        rows = [torch.autograd.grad(s[:, k].sum(), leaf, retain_graph=True, allow_unused=True)[0]
                for k in range(s.shape[1])]
    return torch.stack([torch.zeros_like(leaf) if r is None else r for r in rows], 1)


def find_cam_head(net: nn.Module, acts: torch.Tensor, output) -> tuple[str, nn.Linear]:
    """The final ``nn.Linear`` that maps the global average pool of ``acts`` to ``output``.

    Found by value, not by position: the candidate linear layers take ``C`` inputs,
    and the one whose ``W mean(A) + b`` reproduces the scored output is the head.
    """
    n, c, *s = acts.shape
    pooled = reduce(acts.detach(), "n c ... -> n c", "mean")
    linears = [(nm, m) for nm, m in net.named_modules() if isinstance(m, nn.Linear)]
    candidates = [(nm, m) for nm, m in linears if m.in_features == c]
    if isinstance(output, torch.Tensor) and output.ndim == 2:
        for nm, m in reversed(candidates):
            y = F.linear(pooled.to(m.weight.dtype), m.weight, m.bias)
            scale = float(output.detach().abs().max().clamp(min=1))
            if y.shape == output.shape and torch.allclose(y, output.detach(), rtol=1e-4,
                                                          atol=1e-4 * scale):
                return nm, m
    what = (f"no nn.Linear with in_features={c}" if not candidates else
            f"nn.Linear {', '.join(repr(nm) for nm, _ in candidates)} with in_features={c}, but the "
            "output is none of them applied to the global average pool of the feature layer")
    got = f"output {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
    raise GradattrError(
        f"net: CAM expected a network whose scored output is nn.Linear(global average pool of the "
        f"feature layer, {c} channels) (Zhou et al.'s GAP + linear head); found {what}; got {got}. "
        "Pass the feature layer that the head pools, or use grad_cam, which equals CAM up to a "
        "constant factor on such networks and works on any network")


def cam_weights(view) -> torch.Tensor:
    """CAM (Zhou et al., CVPR 2016, eq. 2): the head's rows ``w^c`` for the targets, ``(N, K, C)``.

    For a class target the weight vector is the final linear layer's row ``W[c]``
    (found by :func:`find_cam_head`); for a ``reduction_fn`` it is
    ``W^T d score / d y`` (the same rows combined as the function combines the
    outputs; exact for the usual linear reductions). The bias is not part of the map.
    """
    if view.layers > 1:
        raise expected("feature_layer", "one layer for CAM (the layer its linear head pools)",
                       f"{view.layers} layers")
    a, scorer = view.acts, view.scorer
    _, head = find_cam_head(scorer.net, a, scorer.output)
    dy = _target_weights(scorer.given_target, scorer.output, a.shape[0])  # (N, K, classes)
    return torch.einsum("nko,oc->nkc", dy, head.weight.detach().to(dy.dtype)).to(a.dtype)


register(Method(
    "cam", "CAM", cam_weights, "activations",
    family="activation CAM", shared=COMMON + TARGET + LAYER + ("eigen_smooth", "relu"),
    summary="CAM (Zhou et al., CVPR 2016): ``ReLU(sum_k w_k^c A^k)`` with ``w^c`` the head's row for class ``c``.",
    doc="""Needs a network whose scored output is ``nn.Linear(global average pool of the feature
layer)``; that linear layer is found automatically (by checking that it reproduces the
output), and a :class:`~gradattr.GradattrError` says so when the network has no such
head. On such a network CAM is Grad-CAM times the number of feature-map positions. No
gradients are computed.""",
    example=_TOY + """>>> x = torch.randn(2, 16)
>>> torch.allclose(gradattr.cam(net, x, 2), 16 * gradattr.grad_cam(net, x, 2), atol=1e-5)
True
""",
    use_when="the network ends in global average pooling + one linear layer: exact, no gradients"))




# -- FEM ---------------------------------------------------------------------------------
def fem_weights(acts: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    """FEM (Fuad et al., IPTA 2020): ``w_c`` = the fraction of positions where ``A^c > mu_c + k sigma_c``.

    ``mu_c`` and ``sigma_c`` (population standard deviation) are taken over channel
    ``c``'s positions: the k-sigma rule keeps each channel's outstanding activations,
    and a channel weighs by how many it has. ``(N, 1, C)``: no target.

    >>> a = torch.tensor([[[0.0, 0.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]]])
    >>> fem_weights(a, k=1.0).tolist()  # mu + sigma = 1 + sqrt(3) < 4 at one position of four
    [[[0.25, 0.0]]]
    """
    flat = acts.flatten(2)
    th = flat.mean(-1, keepdim=True) + k * flat.std(-1, unbiased=False, keepdim=True)
    return (flat > th).to(acts.dtype).mean(-1)[:, None]


register(Method(
    "fem", "FEM", lambda v, k=2.0: fem_weights(v.acts, k), "activations",
    family="activation CAM", shared=COMMON + LAYER + ("eigen_smooth", "relu"), needs_target=False,
    stop_early=True,
    options=(Option("k", 2.0, "float", "the k of the k-sigma threshold.",
                    lambda name, value: _real(name, value)),),
    summary="FEM, the feature explanation method (Fuad et al., IPTA 2020): channels weighted by "
            "their share of k-sigma outliers.",
    doc="""``ReLU(sum_c w_c A^c)`` with ``w_c`` the fraction of positions where ``A^c`` exceeds
its mean by more than ``k`` standard deviations (see
:func:`gradattr.methods.activation.fem_weights`), as pytorch-grad-cam's ``FEM``. No target
and no gradients: the forward pass stops at the feature layer.""",
    example=_TOY + """>>> gradattr.fem(net, torch.randn(2, 2, 16), k=1.0).shape
torch.Size([2, 16])
""",
    use_when="class-agnostic saliency from the activations' outstanding peaks, no gradient"))


def _real(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise expected(name, "a real number", repr(value))
    return float(value)


# -- KPCA-CAM ----------------------------------------------------------------------------
KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


def kernel_matrix(m: torch.Tensor, kernel: str, gamma: float | None, coef0: float = 1.0,
                  degree: int = 3) -> torch.Tensor:
    """scikit-learn's ``pairwise_kernels`` of the rows of ``m (B, P, C)``: ``(B, P, P)``.

    ``gamma=None`` is ``1 / C`` (scikit-learn's default for ``poly``, ``rbf``, ``sigmoid``).
    """
    g = 1.0 / m.shape[-1] if gamma is None else gamma
    dot = m @ m.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (g * dot + coef0) ** degree
    if kernel == "sigmoid":
        return torch.tanh(g * dot + coef0)
    if kernel == "rbf":
        sq = (m * m).sum(-1)
        return torch.exp(-g * (sq[:, :, None] + sq[:, None, :] - 2 * dot).clamp(min=0))
    norm = m.norm(dim=-1).clamp(min=1e-300)
    return dot / (norm[:, :, None] * norm[:, None, :])


def kpca_projection(terms: torch.Tensor, kernel: str = "sigmoid", gamma: float | None = None
                    ) -> torch.Tensor:
    """First kernel principal component of ``terms (N, K, C, *s)`` -> ``(N, K, *s)``.

    As pytorch-grad-cam's ``get_2d_projection_kernel``: positions are the samples,
    channels the features, centred per channel; then scikit-learn's ``KernelPCA``
    with one component: the kernel matrix is centred in feature space and the
    projection is ``sqrt(lambda_1) u_1``. The sign of ``u_1`` is chosen as for
    Eigen-CAM (:func:`eigen_projection`): the map correlates positively with the
    centred channel sum. scikit-learn instead makes the largest ``|u_1|`` entry positive,
    which inverts the map when the strongest deviation is a trough.
    """
    n, k, c, *s = terms.shape
    m = rearrange(torch.nan_to_num(terms.detach()).double(), "n k c ... -> (n k) (...) c")
    m = m - m.mean(1, keepdim=True)
    km = kernel_matrix(m, kernel, gamma)
    p = km.shape[-1]
    one = torch.full((p, p), 1.0 / p, dtype=km.dtype, device=km.device)
    kc = km - one @ km - km @ one + one @ km @ one
    vals, vecs = torch.linalg.eigh((kc + kc.transpose(1, 2)) / 2)
    proj = vecs[..., -1] * vals[..., -1:].clamp(min=0).sqrt()  # (B, P)
    ref = m.sum(-1)
    cov = ((proj - proj.mean(1, keepdim=True)) * ref).sum(1)
    proj = torch.where(cov[:, None] < 0, -proj, proj)
    return proj.reshape(n, k, *s).to(terms.dtype)


def _kernel(name, value):
    if value not in KERNELS:
        raise expected(name, "one of " + ", ".join(map(repr, KERNELS)), repr(value))
    return value


def _gamma(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or value <= 0):
        raise expected(name, "None (1 / channels) or a positive number", repr(value))
    return value


register(Method(
    "kpca_cam", "KPCA-CAM",
    lambda v, kernel="sigmoid", gamma=None: torch.relu(kpca_projection(v.acts[:, None], kernel, gamma)),
    "activations",
    family="activation CAM", shared=COMMON + LAYER, combine="map", needs_target=False, stop_early=True,
    options=(Option("kernel", "sigmoid", "str", "the kernel: " + ", ".join(map(repr, KERNELS))
                    + " (scikit-learn's, ``coef0=1``, ``degree=3``).", _kernel),
             Option("gamma", None, "float | None", "the kernel's gamma; ``None``: 1 / channels.",
                    _gamma)),
    summary="KPCA-CAM (Karmani et al., 2024): Eigen-CAM with kernel PCA, the activations' first "
            "kernel principal component.",
    doc="""``ReLU`` of the first kernel principal component of the activations (positions as
samples, channels as features, centred per channel), as pytorch-grad-cam's ``KPCA_CAM``
(scikit-learn ``KernelPCA``, sigmoid kernel by default). No target, no gradients. The sign
is fixed as Eigen-CAM's (positive correlation with the channel sum); see
:func:`gradattr.methods.activation.kpca_projection`.""",
    example=_TOY + """>>> gradattr.kpca_cam(net, torch.randn(2, 2, 16), kernel="rbf").shape
torch.Size([2, 16])
""",
    use_when="Eigen-CAM that can follow non-linear structure in the activations"))


# -- Deep Feature Factorization ----------------------------------------------------------
def dff(acts: torch.Tensor, n_components: int = 5, seed: int | None = 0):
    """Deep Feature Factorization (Collins et al., ECCV 2018): NMF of the activations of a batch.

    ``acts (N, C, *s)`` as a ``C x (N P)`` matrix, each channel shifted by its minimum
    so it is non-negative, is factorised as ``W H`` (scikit-learn ``NMF``,
    ``init="random"``, ``random_state=seed``, as pytorch-grad-cam's ``dff``). Returns
    ``(concepts (n_components, C), maps (N, n_components, *s))``: each concept's
    channel embedding ``W + offset`` and its heat map ``H`` on every sample. The
    factorisation is joint over the batch, so the concepts are shared by its samples.
    """
    try:
        from sklearn.decomposition import NMF
    except ImportError as e:  # pragma: no cover - scikit-learn is in the examples/test extras
        raise GradattrError("deep_feature_factorization: expected scikit-learn (its NMF) to be "
                            "installed, got ImportError; pip install scikit-learn") from e
    n, c, *s = acts.shape
    a = torch.nan_to_num(acts.detach()).cpu().numpy()
    flat = np.moveaxis(a, 1, 0).reshape(c, -1)
    offset = flat.min(-1)
    model = NMF(n_components=n_components, init="random", random_state=seed)
    w = model.fit_transform(flat - offset[:, None])
    h = model.components_
    concepts = torch.from_numpy(np.ascontiguousarray((w + offset[:, None]).T)).to(acts.device)
    maps = torch.from_numpy(np.ascontiguousarray(
        np.moveaxis(h.reshape(n_components, n, *s), 0, 1))).to(acts.device, acts.dtype)
    return concepts, maps


def dff_maps(view, n_components: int = 5, seed: int | None = 0) -> torch.Tensor:
    if view.layers > 1:
        raise expected("feature_layer", "one layer for deep_feature_factorization (concepts of "
                       "different layers do not correspond)", f"{view.layers} layers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NMF's "maximum number of iterations" note
        return dff(view.acts, n_components, seed)[1]


register(Method(
    "deep_feature_factorization", "Deep Feature Factorization", dff_maps, "activations",
    family="activation CAM", shared=COMMON + LAYER,
    combine="map", needs_target=False, stop_early=True,
    options=(Option("n_components", 5, "int", "concepts (the NMF's rank): the map's K axis.",
                     positive_int),
             seed_option(0, "the NMF's ``random_state`` (its random initialisation; ``None``: "
                            "numpy's global random state).")),
    summary="Deep Feature Factorization (Collins et al., ECCV 2018): NMF of the activations into "
            "``n_components`` concept maps.",
    doc="""Returns ``(N, n_components, *spatial)``: one map per concept (the ``K`` axis holds
concepts, not targets), from a non-negative matrix factorisation of the batch's activations
(channels x positions of every sample, each channel shifted to be non-negative; scikit-learn
``NMF``, as pytorch-grad-cam's ``DeepFeatureFactorization``). The concepts are shared by the
samples of one call. Their channel embeddings and class scores come from
:func:`gradattr.methods.activation.dff_concepts`. Needs scikit-learn.""",
    example=_TOY + """>>> gradattr.deep_feature_factorization(net, torch.randn(2, 2, 16), n_components=3).shape
torch.Size([2, 3, 16])
""",
    use_when="unsupervised parts: which regions share features, and what class each part looks like"))


def dff_concepts(net, x, n_components: int = 5, *, feature_layer=None, head="auto", seed: int | None = 0,
                 input_format=None, device="auto"):
    """Deep Feature Factorization with its concepts: ``(concepts, scores)``.

    ``concepts (n_components, C)``: each concept's channel embedding (the NMF's
    ``W`` plus the channel offsets; see :func:`dff`), the same factorisation that
    ``deep_feature_factorization`` with the same arguments maps. ``scores``: the
    concepts run through ``head`` as if they were pooled features,
    ``(n_components, classes)``: ``"auto"`` finds the network's ``nn.Linear`` head
    over the global average pool of the feature layer (as CAM does), a callable or
    module is used as given (pytorch-grad-cam's ``computation_on_concepts``), ``None``
    gives ``None``.
    """
    from ..capture import capture, plan_from_options
    from ..prep import prepare_call

    seed = check_seed("seed", seed)
    call = prepare_call(net, x, target=None, input_format=input_format, device=device,
                        needs_target=False)
    plan = plan_from_options(net, feature_layer, None, None, None)
    with call.borrowed(), torch.no_grad():
        cap = capture(call, plan, grad=False)
        if len(cap.acts) != 1:
            raise expected("feature_layer", "one layer", f"{len(cap.acts)} layers")
        acts = cap.acts[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            concepts, _ = dff(acts, n_components, seed)
        if head is None:
            return concepts, None
        if isinstance(head, str) and head == "auto":
            _, head = find_cam_head(net, acts, cap.output)
        if not callable(head):
            raise expected("head", "\"auto\", None, or a callable / module taking (n, C) features",
                           repr(head))
        ref = next(iter(net.parameters()), concepts)
        scores = head(concepts.to(ref.device, ref.dtype))
    return concepts, scores
