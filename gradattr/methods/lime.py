"""LIME for images, sequences and volumes (MATLAB's ``imageLIME``; Ribeiro et al., KDD 2016).

The input is cut into segments (SLIC superpixels for 2-D images when scikit-image
is installed, a regular grid otherwise and for 1-D/3-D inputs). ``num_samples``
random on/off patterns ``z`` switch segments off (replaced by each sample's
per-channel mean); the target score of each perturbed input is fitted by a linear
model of ``z`` with an intercept, each pattern weighted by an exponential kernel on
its cosine distance to the all-on pattern, ``exp(-d^2 / kernel_width^2)``. The map
holds each segment's coefficient, constant on the segment, at the input's resolution.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import GradattrError, expected
from ..ops import minmax
from ..options import COMMON, GENERATOR, TARGET, Option, positive_int
from ..registry import Method, register
from .common import BATCH_SIZE, PROGRESS, TOY as _TOY, make_generator
from .occlusion import fill_value, softmax_cause
from .perturbation import SEED, SOFTMAX, positive_float


def grid_segments(spatial: tuple[int, ...], num_features: int) -> torch.Tensor:
    """Labels ``(*S)`` of a regular grid of about ``num_features`` cells, cells as square as the
    input allows (per axis ``round(S_d * (F / prod S)^(1/d))`` cells, at least 1, at most ``S_d``)."""
    d = len(spatial)
    scale = (num_features / math.prod(spatial)) ** (1 / d)
    cells = [min(s, max(1, round(s * scale))) for s in spatial]
    labels = torch.zeros(spatial, dtype=torch.long)
    for axis, (s, g) in enumerate(zip(spatial, cells)):
        idx = torch.arange(s) * g // s
        shape = [1] * d
        shape[axis] = s
        labels = labels * g + idx.view(shape)
    return labels


def superpixel_segments(image: torch.Tensor, num_features: int) -> torch.Tensor | None:
    """SLIC labels ``(H, W)`` of ``image (C, H, W)`` (min-max scaled), or ``None`` without scikit-image."""
    try:
        from skimage.segmentation import slic
    except ImportError:
        return None
    img = minmax(image.detach().double().cpu(), 0)  # one scaling over the whole image
    arr = img.permute(1, 2, 0).numpy()
    labels = slic(arr, n_segments=num_features, channel_axis=-1, convert2lab=False, start_label=0)
    _, labels = np.unique(labels, return_inverse=True)
    return torch.from_numpy(labels.reshape(arr.shape[:2]).astype(np.int64))


def segments_of(x: torch.Tensor, num_features: int, segmentation) -> list[torch.Tensor]:
    """Per sample, labels ``(*S)`` in ``0..F_i - 1``."""
    n, c, *spatial = x.shape
    if isinstance(segmentation, torch.Tensor) and tuple(segmentation.shape) not in (tuple(spatial), (n, *spatial)):
        raise expected("segmentation", f"integer labels of shape {tuple(spatial)} or {(n, *spatial)}",
                       f"shape {tuple(segmentation.shape)}")
    out = []
    for i in range(n):
        lab: torch.Tensor | None  # None: no superpixels for this sample
        if isinstance(segmentation, torch.Tensor):
            lab = segmentation if segmentation.ndim == len(spatial) else segmentation[i]
            _, lab = torch.unique(lab.cpu(), return_inverse=True)
        elif segmentation == "superpixels" and len(spatial) == 2:
            lab = superpixel_segments(x[i], num_features)
            lab = grid_segments(tuple(spatial), num_features) if lab is None else lab
        else:
            lab = grid_segments(tuple(spatial), num_features)
        out.append(lab.to(x.device))
    return out


def lime_weights(z: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """``exp(-d^2 / w^2)`` with ``d`` the cosine distance of each pattern ``z (M, F)`` to all-on."""
    z = z.double()
    norm = z.norm(dim=1) * math.sqrt(z.shape[1])
    d = 1 - torch.where(norm > 0, z.sum(1) / norm.clamp(min=1e-12), torch.zeros_like(norm))
    return torch.exp(-d ** 2 / kernel_width ** 2)


def weighted_linear_fit(z: torch.Tensor, f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Coefficients ``(F, K)`` of ``f (M, K) ~ b + z (M, F) beta``, least squares weighted by ``w``
    (minimum-norm where patterns do not determine them)."""
    design = torch.cat([torch.ones(len(z), 1, dtype=torch.float64, device=z.device), z.double()], 1)
    sw = w.double().sqrt()[:, None]
    sol = torch.linalg.lstsq((design * sw).cpu(), (f.double() * sw).cpu(), driver="gelsd").solution
    return sol[1:].to(z.device)


def image_lime_map(view, num_features=49, num_samples=2048, segmentation="superpixels", model="linear",
                   kernel_width=0.25, softmax=True, seed=0, generator=None, batch_size=None,
                   progress=False) -> torch.Tensor:
    """``(N, K, *S)``: each segment's coefficient of the weighted linear surrogate."""
    scorer = view.scorer
    x = scorer.x
    n = x.shape[0]
    labels = segments_of(x, num_features, segmentation)
    counts = [int(lab.max()) + 1 for lab in labels]
    gen = make_generator(seed, generator, x.device)
    dev = gen.device if gen is not None else x.device
    z = [(torch.rand(num_samples, f, generator=gen, device=dev) < 0.5).to(x.device) for f in counts]
    value = fill_value(x, "auto", None)
    rows = torch.arange(n, device=x.device).repeat_interleave(num_samples)

    def make(i, j):
        t = torch.arange(i, j, device=x.device)
        r, k = t // num_samples, t % num_samples
        keep = torch.stack([z[int(ri)][int(ki)][labels[int(ri)]] for ri, ki in zip(r, k)])[:, None]
        return torch.where(keep, x[r], value[r])

    try:
        s = scorer.score_masked(n * num_samples, make, rows, batch_size=batch_size, progress=progress,
                               desc="LIME", softmax=softmax).view(n, num_samples, -1)
    except GradattrError as err:
        raise softmax_cause(scorer, softmax, err) from None
    maps = []
    for i in range(n):
        beta = weighted_linear_fit(z[i], s[i], lime_weights(z[i], kernel_width))  # (F, K)
        maps.append(beta.T[:, labels[i]])  # (K, *S)
    return torch.stack(maps).to(x.dtype)


def _segmentation(name, value):
    wanted = "'superpixels', 'grid' or integer segment labels (*S) or (N, *S) (an int array or tensor)"
    if isinstance(value, (torch.Tensor, np.ndarray)):  # arrays first: never compared with strings
        kind = str(value.dtype).replace("torch.", "")
        integer = (not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool) \
            if isinstance(value, torch.Tensor) else value.dtype.kind in "iu"
        if integer:
            return value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
        raise expected(name, wanted, f"an array of dtype {kind} (labels must be integers: "
                       "segmentation=labels.astype(int))")
    if isinstance(value, str) and value in ("superpixels", "grid"):
        return value
    raise expected(name, wanted, repr(value) if isinstance(value, (str, int, float)) else type(value).__name__)


def _model(name, value):
    if value != "linear":
        raise expected(name, "'linear' (the weighted linear surrogate; MATLAB's 'tree' is not "
                       "implemented)", repr(value))
    return value


register(Method(
    "image_lime", "LIME", image_lime_map, "nothing", changes_input=True, family="perturbation",
    shared=COMMON + TARGET, combine="map",
    options=(Option("num_features", 49, "int", "segments to cut the input into (MATLAB's "
                    "``NumFeatures``; SLIC may return a few more or fewer).", positive_int),
             Option("num_samples", 2048, "int", "random on/off patterns (MATLAB's ``NumSamples``).",
                    positive_int),
             Option("segmentation", "superpixels", "str | np.ndarray | torch.Tensor",
                    "``\"superpixels\"`` (SLIC via scikit-image for 2-D inputs; a grid where it is "
                    "not installed and for 1-D/3-D), ``\"grid\"``, or integer labels ``(*S)`` / "
                    "``(N, *S)`` (MATLAB's ``Segmentation``).", _segmentation),
             Option("model", "linear", "str", "the surrogate: ``\"linear\"`` (weighted least squares "
                    "with an intercept).", _model),
             Option("kernel_width", 0.25, "float", "width ``w`` of the kernel "
                    "``exp(-d^2 / w^2)`` on the cosine distance to the all-on pattern (MATLAB's and "
                    "LIME's ``KernelWidth``).", positive_float),
             SOFTMAX, SEED, GENERATOR, BATCH_SIZE, PROGRESS),
    summary="LIME (Ribeiro et al., KDD 2016; MATLAB ``imageLIME``): a weighted linear surrogate "
            "of the target score over random on/off patterns of input segments.",
    doc="""Segments are switched off (set to each sample's per-channel mean) at random with
probability 1/2 in ``num_samples`` patterns ``z``; the target's softmax probability ``f(z)``
(``softmax=False``: the raw score) is fitted by ``b + z beta`` in least squares weighted by
``exp(-d(z, 1)^2 / kernel_width^2)``, ``d`` the cosine distance. The map is ``beta_j`` on
segment ``j``, at the input's resolution; the same seed gives the same map. See
:mod:`gradattr.methods.lime`.""",
    example=_TOY + """>>> gradattr.image_lime(net, torch.randn(2, 16), 1, num_features=4, num_samples=64).shape
torch.Size([16])
""",
    use_when="a model-agnostic explanation by segments (MATLAB's imageLIME); thousands of forward "
             "passes"))
