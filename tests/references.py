"""Naive references for every registered method, written from the papers.

Each reference works one sample, one target and one channel at a time, with its
own hooks and its own autograd calls; nothing in it comes from gradattr except
``imresize`` (tested in test_resize.py) for the Guided Grad-CAM upsampling. The
toy networks are float64 so the comparisons can be tight (gradattr returns
float32 maps). ``REFERENCES`` maps a method name to its reference; the sweep in
``test_registry.py`` runs every registered method against it.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import gradattr
from gradattr.resize import imresize

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
SIZE = {1: (12,), 2: (8, 7), 3: (5, 6, 4)}
LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}
CLASSES = 4


def toy(rank: int, seed: int = 0) -> nn.Sequential:
    """conv -> ReLU -> strided conv -> ReLU ("3", the feature layer) -> global average pool -> linear.

    The feature maps are about half the input's size, so every upsampling step is exercised.
    """
    torch.manual_seed(seed)
    net = nn.Sequential(OrderedDict([
        ("0", CONV[rank](2, 6, 3, padding=1)), ("1", nn.ReLU()),
        ("2", CONV[rank](6, 5, 3, padding=1, stride=2)), ("3", nn.ReLU()),
        ("4", POOL[rank](1)), ("5", nn.Flatten()), ("6", nn.Linear(5, CLASSES))]))
    with torch.no_grad():
        net[2].bias.add_(0.3)  # keep most feature channels alive
    return net.double().eval()


def toy_input(rank: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, *SIZE[rank], generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- naive references
def activation(net, x1, layer):
    """Feature layer output ``(C, *s)`` and the network output for one sample ``x1 (1, C, *s)``."""
    store = {}
    h = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        y = net(x1)
    finally:
        h.remove()
    return store["a"], y


def acts_and_grads(net, x1, layer, score):
    with torch.enable_grad():
        a, y = activation(net, x1, layer)
        (g,) = torch.autograd.grad(score(y)[0], a)
    return a[0].detach(), g[0]


# Each reference returns the channel terms T (C, *s), built one channel at a time; the map is
# ReLU(sum_c T_c), or with eigen_smooth ReLU(first principal component projection of T).
def grad_cam_terms(a, g):
    return torch.stack([g[c].mean() * a[c] for c in range(a.shape[0])])


def grad_cam_pp_terms(a, g):
    out = []
    for c in range(a.shape[0]):
        s = a[c].sum()
        w = 0.0
        for gij in g[c].flatten().tolist():
            if gij != 0:  # eq. 19 with pytorch-grad-cam's 1e-6
                w += max(gij, 0.0) * gij**2 / (2 * gij**2 + s * gij**3 + 1e-6)
        out.append(w * a[c])
    return torch.stack(out)


def xgrad_cam_terms(a, g):
    return torch.stack([(g[c] * a[c]).sum() / (a[c].sum() + 1e-7) * a[c] for c in range(a.shape[0])])


def hires_cam_terms(a, g):
    return torch.stack([g[c] * a[c] for c in range(a.shape[0])])


def layer_cam_terms(a, g):
    return torch.stack([torch.relu(g[c]) * a[c] for c in range(a.shape[0])])


def numpy_pc_projection(t):
    """``t (C, *s)``: projection on the first principal component by numpy's SVD, sign by correlation."""
    c = t.shape[0]
    m = t.reshape(c, -1).T.numpy()
    mc = m - m.mean(0)
    _, _, vt = np.linalg.svd(mc, full_matrices=True)
    p = mc @ vt[0]
    plain = mc.sum(1)  # the channel sum, centred
    if np.dot(p, plain) < 0:
        p = -p
    return torch.from_numpy(p.reshape(t.shape[1:]).copy())


def combine(terms, smooth):
    return torch.relu(numpy_pc_projection(terms) if smooth else terms.sum(0))


def naive_grad_cam(a, g):
    return combine(grad_cam_terms(a, g), False)


def naive_eigen_cam(a):
    return combine(a, True)


GRADIENT = {"grad_cam": grad_cam_terms, "grad_cam_plus_plus": grad_cam_pp_terms,
            "xgrad_cam": xgrad_cam_terms, "hires_cam": hires_cam_terms, "layer_cam": layer_cam_terms,
            "eigengrad_cam": hires_cam_terms}


def score_cam_terms(net, x1, layer, score):
    """One masked input per channel; weights = softmax over channels of the scores."""
    with torch.no_grad():
        a, _ = activation(net, x1, layer)
        a = a[0]
        scores = []
        for c in range(a.shape[0]):
            up = F.interpolate(a[c][None, None], size=x1.shape[2:], mode=LINEAR_MODE[x1.ndim - 2],
                               align_corners=True)[0, 0]
            lo, hi = up.min(), up.max()
            # a constant channel has no location: the zero mask (its upsampled copy may differ from
            # a constant by rounding, which would otherwise be scaled up to a noise mask)
            constant = bool(a[c].max() == a[c].min())
            mask = torch.zeros_like(up) if constant else (up - lo) / (hi - lo)
            scores.append(score(net(x1 * mask))[0])
        w = torch.softmax(torch.stack(scores), 0)
        return torch.stack([w[c] * a[c] for c in range(a.shape[0])])


def ablation_cam_terms(net, x1, layer, score):
    """One forward pass per channel with that channel of the feature layer set to 0."""
    module = dict(net.named_modules())[layer]
    with torch.no_grad():
        a, y = activation(net, x1, layer)
        a, y0 = a[0], score(y)[0]
        out = []
        for c in range(a.shape[0]):
            def zero(m, i, o, c=c):
                o = o.clone()
                o[:, c] = 0
                return o
            h = module.register_forward_hook(zero)
            try:
                yc = score(net(x1))[0]
            finally:
                h.remove()
            out.append((y0 - yc) / y0 * a[c])
        return torch.stack(out)


def cam_terms(net, x1, layer, coef):
    """``w_k A^k`` with ``w = coef @ W`` (the head's rows combined as the target combines classes)."""
    with torch.no_grad():
        a, _ = activation(net, x1, layer)
        w = coef @ net[6].weight
        return torch.stack([w[c] * a[0, c] for c in range(a.shape[1])])


def naive_guided_backprop(net, x1, score):
    """Springenberg et al.: walk the Sequential backwards; at each ReLU keep max(grad, 0) where input > 0."""
    inputs, h = [], x1.clone().requires_grad_(True)
    with torch.enable_grad():
        for m in net:
            inputs.append(h)
            h = m(h)
        g = torch.autograd.grad(score(h)[0], h)[0]  # d score / d output
        for m, inp in zip(reversed(list(net)), reversed(inputs)):
            if isinstance(m, nn.ReLU):
                g = torch.clamp(g, min=0) * (inp > 0)
            else:  # a linear map: its vector-Jacobian product
                i0 = inp.detach().requires_grad_(True)
                g = torch.autograd.grad(m(i0), i0, g)[0]
    return g[0]


# ---------------------------------------------------------------- targets
def score_fns(target, n_samples, outputs):
    """Per sample, the list of score functions (one per map) that ``target`` means."""
    if callable(target):
        return [[target] for _ in range(n_samples)]
    if isinstance(target, list) and all(callable(t) for t in target):
        return [list(target) for _ in range(n_samples)]
    if target is None:
        return [[lambda y, c=int(outputs[i].argmax()): y[:, c]] for i in range(n_samples)]
    arr = np.asarray(target)
    if arr.ndim == 0:
        return [[lambda y, c=int(arr): y[:, c]] for _ in range(n_samples)]
    if arr.ndim == 1:
        return [[lambda y, c=int(c): y[:, c] for c in arr] for _ in range(n_samples)]
    return [[lambda y, c=int(c): y[:, c] for c in arr[i]] for i in range(n_samples)]


def coef_of(fn, classes=CLASSES):
    """The linear target as a coefficient vector over classes (exact for the linear targets used here)."""
    eye = torch.eye(classes, dtype=torch.float64)
    return torch.stack([fn(eye[j:j + 1])[0] for j in range(classes)])


def linear_target(y):
    return y[:, 1] - 0.5 * y[:, 0]


TARGETS = {"scalar": 2, "vector": [1, 3], "per_sample": "per_sample", "callable": linear_target}
SCALAR = {"scalar": True, "vector": False, "per_sample": False, "callable": True}


def resolve(kind, n):
    if kind == "per_sample":
        return np.array([[0, 2], [3, 1]])[:n]
    return TARGETS[kind]


#: One naive reference per registered method: ``fn(net, x1, layer, score, smooth) -> (K=1 map)``
#: for one sample ``x1 (1, C, *s)`` and one score function. The sweep in test_registry.py
#: refuses a registered method that has no entry here.
REFERENCES: dict = {}


def replicates(name):
    """Register the decorated naive function as the reference of method ``name`` (zennit's idea)."""
    def deco(fn):
        REFERENCES[name] = fn
        return fn
    return deco


for _name, _terms in GRADIENT.items():
    replicates(_name)(lambda net, x1, layer, fn, smooth, _t=_terms, _n=_name:
                      combine(_t(*acts_and_grads(net, x1, layer, fn)), smooth or _n == "eigengrad_cam"))
replicates("score_cam")(lambda net, x1, layer, fn, smooth: combine(score_cam_terms(net, x1, layer, fn), smooth))
replicates("ablation_cam")(lambda net, x1, layer, fn, smooth:
                           combine(ablation_cam_terms(net, x1, layer, fn), smooth))
replicates("cam")(lambda net, x1, layer, fn, smooth: combine(cam_terms(net, x1, layer, coef_of(fn)), smooth))
replicates("eigen_cam")(lambda net, x1, layer, fn, smooth: naive_eigen_cam(activation(net, x1, layer)[0][0].detach()))
replicates("guided_backprop")(lambda net, x1, layer, fn, smooth: naive_guided_backprop(net, x1, fn))


@replicates("guided_grad_cam")
def naive_guided_grad_cam(net, x1, layer, fn, smooth, upsampling_mode="nearest"):
    gc = naive_grad_cam(*acts_and_grads(net, x1, layer, fn))
    up = torch.relu(imresize(gc[None, None], tuple(x1.shape[2:]), upsampling_mode)[0, 0])
    return naive_guided_backprop(net, x1, fn) * up


def naive_maps(method, net, x, target, layer="3", upsampling_mode="nearest", smooth=False):
    """``(N, K, *s)`` maps computed sample by sample, target by target, channel by channel."""
    with torch.no_grad():
        outputs = net(x)
    fns = score_fns(target, x.shape[0], outputs)
    ref = REFERENCES[method]
    kw = {"upsampling_mode": upsampling_mode} if method == "guided_grad_cam" else {}
    return torch.stack([torch.stack([ref(net, x[i:i + 1], layer, fn, smooth, **kw) for fn in fns[i]])
                        for i in range(x.shape[0])])


def call(method, net, x, target, **kw):
    fn = getattr(gradattr, method)
    if method == "guided_backprop":
        return fn(net, x, target, **kw)
    if method == "guided_grad_cam":
        return fn(net, x, target, feature_layer="3", upsampling="nearest", **kw)
    return fn(net, x, target, feature_layer="3", upsampling="none", **kw)




# ---------------------------------------------------------------- the methods of issue 11 (gradient, activation)
def _grad(net, x1, layer, fn, create_graph=False):
    """Feature map ``a (1, C, *s)`` (in the graph) and ``d fn / d a`` of one sample."""
    a, y = activation(net, x1, layer)
    (g,) = torch.autograd.grad(fn(y)[0], a, create_graph=create_graph)
    return a, g


def naive_grad_cam_elementwise(net, x1, layer, fns):
    out = []
    for fn in fns:
        with torch.enable_grad():
            a, g = _grad(net, x1, layer, fn)
        a, g = a[0].detach(), g[0]
        terms = [torch.relu(g[c] * a[c]) for c in range(a.shape[0])]
        out.append(torch.relu(sum(terms)))
    return torch.stack(out)


def naive_fem(net, x1, layer, k=2.0):
    a = activation(net, x1, layer)[0][0].detach().numpy()
    total = np.zeros(a.shape[1:])
    for c in range(a.shape[0]):
        ch = a[c]
        th = ch.mean() + k * ch.std()  # population std, the k-sigma rule
        total += np.mean(ch > th) * ch
    return torch.from_numpy(np.maximum(total, 0))[None]


def naive_kpca_cam(net, x1, layer, kernel="sigmoid", gamma=None):
    """scikit-learn's KernelPCA on the positions x channels matrix, sign: + correlation with the sum."""
    from sklearn.decomposition import KernelPCA

    a = activation(net, x1, layer)[0][0].detach().numpy().astype(np.float64)
    m = a.reshape(a.shape[0], -1).T
    m = m - m.mean(0)
    proj = KernelPCA(n_components=1, kernel=kernel, gamma=gamma).fit_transform(m)[:, 0]
    if np.sum((proj - proj.mean()) * m.sum(1)) < 0:
        proj = -proj
    return torch.from_numpy(np.maximum(proj, 0).reshape(a.shape[1:]))[None]


def naive_deep_feature_factorization(net, x, layer, n_components=3, seed=0):
    """The whole batch at once (the factorisation is joint), ``(N, n_components, *s)``."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    acts = [activation(net, x[i:i + 1], layer)[0][0].detach().numpy() for i in range(x.shape[0])]
    c = acts[0].shape[0]
    rows = np.array([np.concatenate([a[ch].ravel() for a in acts]) for ch in range(c)])
    rows = rows - rows.min(1, keepdims=True)
    with warnings.catch_warnings():  # as gradattr's dff_maps: NMF's "maximum number of iterations" note
        warnings.filterwarnings("ignore", "Maximum number of iterations", ConvergenceWarning)
        h = NMF(n_components=n_components, init="random", random_state=seed).fit(rows).components_
    p = acts[0][0].size
    return torch.from_numpy(np.stack([[h[j, i * p:(i + 1) * p].reshape(acts[0].shape[1:])
                                       for j in range(n_components)] for i in range(len(acts))]))


def naive_finer_cam(net, x1, layer, classes, alpha=1.0, ranks=(1, 2, 3)):
    """Finer-CAM: Grad-CAM of sum_j p_j (y_t - alpha y_j) / (sum_j p_j + 1e-9), j the most similar classes."""
    with torch.no_grad():
        y0 = net(x1)[0]
    out = []
    for t in classes:
        others = sorted((c for c in range(len(y0)) if c != t), key=lambda c: abs(float(y0[c] - y0[t])))
        similar = [others[r - 1] for r in ranks if r - 1 < len(others)]

        def fn(y, t=t, similar=similar):
            p = torch.softmax(y, -1)
            num = sum(p[:, j] * (y[:, t] - alpha * y[:, j]) for j in similar)
            return num / (sum(p[:, j] for j in similar) + 1e-9)
        with torch.enable_grad():
            a, g = _grad(net, x1, layer, fn)
        a, g = a[0].detach(), g[0]
        out.append(torch.relu(sum(g[c].mean() * a[c] for c in range(a.shape[0]))))
    return torch.stack(out)


def naive_shapley_cam(net, x1, layer, fns, tail):
    """w_c = mean(g_c - H A / 2), with H A from torch.autograd.functional.hvp of score(tail(A))."""
    a = activation(net, x1, layer)[0].detach()
    out = []
    for fn in fns:
        def f(t):
            return fn(tail(t))[0]
        with torch.enable_grad():
            _, hv = torch.autograd.functional.hvp(f, a, a)
            g = torch.autograd.functional.jacobian(f, a)
        w = [(g[0, c] - 0.5 * hv[0, c]).mean() for c in range(a.shape[1])]
        out.append(torch.relu(sum(w[c] * a[0, c] for c in range(a.shape[1]))))
    return torch.stack(out)


def naive_smooth_grad_cam_plus_plus(net, x1, layer, fns, noises, std):
    """The paper's Smooth Grad-CAM++ with the given noise draws ``noises (M, 1, C, *S)``."""
    a = activation(net, x1, layer)[0][0].detach()
    out = []
    for fn in fns:
        gs = []
        for z in noises:
            with torch.enable_grad():
                gs.append(_grad(net, x1 + std * z, layer, fn)[1][0])
        w = []
        for c in range(a.shape[0]):
            d1 = sum(g[c] for g in gs) / len(gs)
            d2 = sum(g[c] ** 2 for g in gs) / len(gs)
            d3 = sum(g[c] ** 3 for g in gs) / len(gs)
            alpha = d2 / (2 * d2 + a[c].sum() * d3 + 1e-8)
            w.append((alpha * torch.relu(d1)).sum())
        out.append(torch.relu(sum(w[c] * a[c] for c in range(a.shape[0]))))
    return torch.stack(out)


def _scaled(t):
    t = t.abs()
    t = t - t.min()
    return t / (t.max() + 1e-7)


def naive_full_grad(net, x1, fns):
    """|x g_x| per input channel, |b g_z| per channel of every conv (the toys have no batch norm)."""
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    size = tuple(x1.shape[2:])
    out = []
    for fn in fns:
        store = []
        hs = [m.register_forward_hook(lambda m, i, o: store.append((m, o))) for m in convs]
        try:
            with torch.enable_grad():
                xl = x1.clone().requires_grad_(True)
                s = fn(net(xl))[0]
                grads = torch.autograd.grad(s, [xl] + [o for _, o in store])
        finally:
            for h in hs:
                h.remove()
        total = sum(_scaled(grads[0][0, c] * x1[0, c]) for c in range(x1.shape[1]))
        for (m, _), g in zip(store, grads[1:]):
            for c in range(g.shape[1]):
                ch = _scaled(m.bias[c].detach() * g[0, c])
                total = total + F.interpolate(ch[None, None], size=size, mode=LINEAR_MODE[len(size)],
                                              align_corners=False)[0, 0]
        out.append(total)
    return torch.stack(out)


def tail_of(net):
    """The toy's layers after its feature layer "3": pool, flatten, linear."""
    return nn.Sequential(*list(net.children())[4:])


def draws(seed, shape, m):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(m)]



# ---------------------------------------------------------------- whole-batch references for the sweep
#: ``fn(net, x, target, layer) -> (N, K, *s)``: references that need the whole batch (a joint
#: factorisation, noise drawn for the batch) or several score functions at once.
BATCH_REFERENCES: dict = {}
#: Target forms a method refuses by design (class targets only).
CLASS_TARGETS_ONLY = {"finer_cam"}


def _per_sample(one):
    """``one(net, x1, layer, score) -> map (*s)`` -> a whole-batch reference."""
    def ref(net, x, target, layer):
        with torch.no_grad():
            outputs = net(x)
        fns = score_fns(target, x.shape[0], outputs)
        return torch.stack([torch.stack([one(net, x[i:i + 1], layer, fn) for fn in fns[i]])
                            for i in range(x.shape[0])])
    return ref


BATCH_REFERENCES["grad_cam_elementwise"] = _per_sample(
    lambda net, x1, layer, fn: naive_grad_cam_elementwise(net, x1, layer, [fn])[0])
BATCH_REFERENCES["shapley_cam"] = _per_sample(
    lambda net, x1, layer, fn: naive_shapley_cam(net, x1, layer, [fn], tail_of(net))[0])
BATCH_REFERENCES["full_grad"] = _per_sample(lambda net, x1, layer, fn: naive_full_grad(net, x1, [fn])[0])
BATCH_REFERENCES["fem"] = lambda net, x, target, layer: torch.stack(
    [naive_fem(net, x[i:i + 1], layer) for i in range(x.shape[0])])
BATCH_REFERENCES["kpca_cam"] = lambda net, x, target, layer: torch.stack(
    [naive_kpca_cam(net, x[i:i + 1], layer) for i in range(x.shape[0])])
BATCH_REFERENCES["deep_feature_factorization"] = lambda net, x, target, layer: \
    naive_deep_feature_factorization(net, x, layer, n_components=5)


def _finer(net, x, target, layer):
    with torch.no_grad():
        outputs = net(x)
    classes = [[int(outputs[i].argmax())] if target is None else
               list(np.atleast_1d(np.asarray(target)[i] if np.asarray(target).ndim == 2 else target))
               for i in range(x.shape[0])]
    return torch.stack([naive_finer_cam(net, x[i:i + 1], layer, classes[i]) for i in range(x.shape[0])])


BATCH_REFERENCES["finer_cam"] = _finer


def _smooth_pp(net, x, target, layer, seed=0, num_samples=4, std=0.3):
    with torch.no_grad():
        outputs = net(x)
    fns = score_fns(target, x.shape[0], outputs)
    noise = draws(seed, x.shape, num_samples)  # one draw of the whole batch per noisy pass
    return torch.stack([naive_smooth_grad_cam_plus_plus(net, x[i:i + 1], layer, fns[i],
                                                        [z[i:i + 1] for z in noise], std)
                        for i in range(x.shape[0])])


BATCH_REFERENCES["smooth_grad_cam_plus_plus"] = _smooth_pp


def reference_maps(method, net, x, target, layer="3"):
    """``(N, K, *s)`` of ``method``'s naive reference (per-sample or whole-batch)."""
    if method in BATCH_REFERENCES:
        return BATCH_REFERENCES[method](net, x, target, layer)
    return naive_maps(method, net, x, target, layer)


#: Options the sweep passes to a method (small mask and sample counts, so the naive loops stay quick).
SWEEP_OPTIONS: dict = {}
#: Methods without a naive reference, and why.
NO_REFERENCE = {"random_cam": "a random baseline: tests/test_perturbation.py checks its seed, range and shape"}


# ------------------------------------- masked-input methods (SS-CAM, IS-CAM, Group-CAM, RISE)
def features(net, x1, layer="3"):
    """:func:`activation` at the toy network's last convolution by default."""
    return activation(net, x1, layer)


def score(net, x1, fn, softmax=False):
    with torch.no_grad():
        y = net(x1)
        return float(fn(torch.softmax(y, 1) if softmax else y)[0])


def channel_mask(a_c, size):
    """torch-cam's mask of one channel ``a_c (*s)``: min-max on the feature map, then upsampled."""
    m = (a_c - a_c.min()) / (a_c.max() - a_c.min() + 1e-8)
    return F.interpolate(m[None, None], size=size, mode=LINEAR_MODE[len(size)], align_corners=False)[0, 0]


def weighted_map(a, w):
    return torch.relu(sum(w[c] * a[c] for c in range(a.shape[0])))


def naive_ss_cam(net, x, target, samples, std, seed):
    """Noise fields drawn one at a time in torch-cam's order: draw, then sample, then channel."""
    g = torch.Generator().manual_seed(seed)
    size = tuple(x.shape[2:])
    acts = [features(net, x[i:i + 1])[0][0].detach() for i in range(len(x))]
    fns = score_fns(target, len(x), net(x).detach())
    c = acts[0].shape[0]
    noise = [[[torch.randn((1, 1, *size), generator=g, dtype=torch.float32)[0, 0].double()
               for _ in range(c)] for _ in range(len(x))] for _ in range(samples)]
    out = []
    for i in range(len(x)):
        per_k = []
        for fn in fns[i]:
            s = [np.mean([score(net, x[i:i + 1] * (channel_mask(acts[i][ch], size) + std * noise[j][i][ch]), fn)
                          for j in range(samples)]) for ch in range(c)]
            per_k.append(weighted_map(acts[i], torch.softmax(torch.tensor(s), 0)))
        out.append(torch.stack(per_k))
    return torch.stack(out)


def naive_is_cam(net, x, target, samples):
    size = tuple(x.shape[2:])
    fns = score_fns(target, len(x), net(x).detach())
    out = []
    for i in range(len(x)):
        a = features(net, x[i:i + 1])[0][0].detach()
        per_k = []
        for fn in fns[i]:
            s = []
            for ch in range(a.shape[0]):
                m, coeff, total = channel_mask(a[ch], size), 0.0, 0.0
                for step in range(1, samples + 1):
                    coeff += step / samples
                    total += score(net, x[i:i + 1] * coeff * m, fn)
                s.append(total / samples)
            per_k.append(weighted_map(a, torch.softmax(torch.tensor(s), 0)))
        out.append(torch.stack(per_k))
    return torch.stack(out)


def naive_blur(x1, kernel=51, sigma=50.0):
    """Gaussian blur of ``x1 (C, *S)`` with reflected borders, one axis and one line at a time (numpy)."""
    out = x1.numpy().copy()
    for d in range(1, out.ndim):
        length = out.shape[d]
        k = min(kernel, 2 * length - 1)
        k = k if k % 2 else k - 1
        if k <= 1:
            continue
        t = np.arange(k) - (k - 1) / 2
        w = np.exp(-0.5 * (t / sigma) ** 2)
        w /= w.sum()
        moved = np.moveaxis(out, d, -1)
        res = np.empty_like(moved)
        for idx in np.ndindex(*moved.shape[:-1]):
            line = np.pad(moved[idx], k // 2, mode="reflect")
            res[idx] = np.convolve(line, w[::-1], mode="valid")
        out = np.moveaxis(res, -1, d)
    return torch.from_numpy(np.ascontiguousarray(out))


def naive_group_cam(net, x, target, groups, threshold=70.0):
    size = tuple(x.shape[2:])
    fns = score_fns(target, len(x), net(x).detach())
    out = []
    for i in range(len(x)):
        x1 = x[i:i + 1]
        blurred = naive_blur(x1[0])[None]
        per_k = []
        for fn in fns[i]:
            with torch.enable_grad():
                a, y = features(net, x1)
                (g,) = torch.autograd.grad(fn(y)[0], a)
            a, g = a[0].detach(), g[0]
            c = a.shape[0]
            per = -(-c // groups)
            base = score(net, blurred, fn, softmax=True)
            total = torch.zeros(a.shape[1:], dtype=a.dtype)
            for start in range(0, c, per):
                m = torch.relu(sum(g[ch].mean() * a[ch] for ch in range(start, min(c, start + per))))
                m = torch.where(m > float(np.percentile(m.numpy(), threshold)), m, 0.0)
                up = F.interpolate(m[None, None], size=size, mode=LINEAR_MODE[len(size)], align_corners=False)[0, 0]
                if up.max() == up.min():
                    continue
                h = (up - up.min()) / (up.max() - up.min())
                w = score(net, x1 * h + blurred * (1 - h), fn, softmax=True) - base
                total = total + w * m
            per_k.append(torch.relu(total))
        out.append(torch.stack(per_k))
    return torch.stack(out)


def naive_rise(net, x, target, masks, cells, p, seed):
    """The paper's Algorithm: draw every grid, then every shift; one mask at a time."""
    size = tuple(x.shape[2:])
    d = len(size)
    g = torch.Generator().manual_seed(seed)
    grids = (torch.rand((masks,) + (cells,) * d, generator=g) < p).double()
    cell = [int(np.ceil(s / cells)) for s in size]
    shifts = [torch.randint(0, c, (masks,), generator=g) for c in cell]
    fns = score_fns(target, len(x), net(x).detach())
    out = [[torch.zeros(size, dtype=torch.float64) for _ in fns[i]] for i in range(len(x))]
    for m in range(masks):
        up = F.interpolate(grids[m][None, None], size=tuple((cells + 1) * c for c in cell), mode=LINEAR_MODE[d],
                           align_corners=False)[0, 0]
        crop = up[tuple(slice(int(shifts[k][m]), int(shifts[k][m]) + size[k]) for k in range(d))]
        for i in range(len(x)):
            for k, fn in enumerate(fns[i]):
                out[i][k] += score(net, x[i:i + 1] * crop, fn, softmax=True) * crop
    return torch.stack([torch.stack(o) for o in out]) / (masks * p)


NAIVE_PERTURBATION = {
    "ss_cam": (lambda net, x, t: naive_ss_cam(net, x, t, 2, 0.5, 4), dict(samples=2, std=0.5, seed=4)),
    "is_cam": (lambda net, x, t: naive_is_cam(net, x, t, 3), dict(samples=3)),
    "group_cam": (lambda net, x, t: naive_group_cam(net, x, t, 2), dict(groups=2)),
    "rise": (lambda net, x, t: naive_rise(net, x, t, 12, 3, 0.5, 7), dict(masks=12, cells=3, seed=7)),
}


def _perturbation_references():
    """SS-CAM, IS-CAM, Group-CAM and RISE: their one-mask-at-a-time references."""
    for name, (fn, opts) in NAIVE_PERTURBATION.items():
        BATCH_REFERENCES[name] = lambda net, x, target, layer, fn=fn: fn(net, x, target)
        SWEEP_OPTIONS[name] = opts


_perturbation_references()


# ---------------------------------------------------------------- attention maps (issue 21)
# They need a transformer, not the toy convnets of the sweep: tests/test_attention_methods.py
# compares them with the methods on un-fused timm ViTs, whose attention probabilities these
# references read at the input of each block's ``attn_drop`` (a plain forward pre-hook).
NO_REFERENCE["attention_rollout"] = "needs a transformer: tests/test_attention_methods.py (naive_rollout)"
NO_REFERENCE["transformer_attribution"] = ("needs a transformer: tests/test_attention_methods.py "
                                           "(naive_chefer)")


def unfused_attention(net, x1, drops):
    """``(output, [A_b (1, H, L, L)])`` of one sample, ``A_b`` read at each ``attn_drop``'s input."""
    store = []
    hs = [d.register_forward_pre_hook(lambda m, i: store.append(i[0])) for d in drops]
    try:
        y = net(x1)
    finally:
        for h in hs:
            h.remove()
    return y, store


def naive_rollout(probs, extra=1):
    """Abnar & Zuidema: per block the head mean plus the identity, rows renormalised, multiplied
    from the first block on; the class token's row (or the mean row) over the patch tokens."""
    n_tok = probs[0].shape[-1]
    r = torch.eye(n_tok, dtype=probs[0].dtype)
    for a in probs:
        fused = torch.zeros(n_tok, n_tok, dtype=a.dtype)
        for h in range(a.shape[1]):
            fused += a[0, h].detach() / a.shape[1]
        step = 0.5 * fused + 0.5 * torch.eye(n_tok, dtype=a.dtype)
        for i in range(n_tok):
            step[i] = step[i] / step[i].sum()
        r = step @ r
    return r[0, extra:] if extra else r[:, extra:].mean(0)


def naive_chefer(net, x1, drops, fn, extra=1):
    """Chefer, Gur & Wolf (ICCV 2021), from the paper's eq. 13, one sample and one score."""
    with torch.enable_grad():
        y, probs = unfused_attention(net, x1, drops)
        grads = torch.autograd.grad(fn(y)[0], probs)
    n_tok = probs[0].shape[-1]
    r = torch.eye(n_tok, dtype=probs[0].dtype)
    for a, g in zip(probs, grads):
        heads = [torch.clamp(g[0, h] * a[0, h].detach(), min=0) for h in range(a.shape[1])]
        cam = sum(heads) / len(heads)
        r = r + cam @ r
    return r[0, extra:] if extra else r[:, extra:].mean(0)


# ---------------------------------------------------------------- occlusion and LIME (issue 21)
def _softmax_score(net, fn, x1):
    with torch.no_grad():
        return float(fn(torch.softmax(net(x1), 1))[0])


def naive_occlusion(net, x, target, mask_size=3, stride=2):
    """MATLAB's occlusionSensitivity with MaskClipping "on", one sample, target and position at a time:
    masks centred at 0, stride, 2 stride, ... on every axis, clipped at the borders, filled with
    the sample's per-channel mean; the map is p(x) - p(x occluded) on the grid of positions."""
    import itertools

    with torch.no_grad():
        outputs = net(x)
    fns = score_fns(target, x.shape[0], outputs)
    spatial = x.shape[2:]
    starts = [list(range(0, s, stride)) for s in spatial]
    out = []
    for i in range(x.shape[0]):
        x1 = x[i:i + 1]
        mean = x1.mean(dim=tuple(range(2, x1.ndim)), keepdim=True)
        per_target = []
        for fn in fns[i]:
            base = _softmax_score(net, fn, x1)
            grid = torch.zeros([len(s) for s in starts], dtype=torch.float64)
            for pos in itertools.product(*[range(len(s)) for s in starts]):
                occluded = x1.clone()
                sl = [slice(None), slice(None)]
                for d, k in enumerate(pos):
                    lo = starts[d][k] - (mask_size - 1) // 2
                    sl.append(slice(max(lo, 0), min(lo + mask_size, spatial[d])))
                occluded[tuple(sl)] = mean.expand_as(occluded)[tuple(sl)]
                grid[pos] = base - _softmax_score(net, fn, occluded)
            per_target.append(grid)
        out.append(torch.stack(per_target))
    return torch.stack(out)


def naive_grid_labels(spatial, num_features):
    """A regular grid of about ``num_features`` cells, element by element."""
    import itertools

    d = len(spatial)
    total = 1
    for s in spatial:
        total *= s
    cells = [min(s, max(1, round(s * (num_features / total) ** (1 / d)))) for s in spatial]
    labels = torch.zeros(tuple(spatial), dtype=torch.long)
    for idx in itertools.product(*[range(s) for s in spatial]):
        lab = 0
        for i, s, g in zip(idx, spatial, cells):
            lab = lab * g + (i * g) // s
        labels[idx] = lab
    return labels


def naive_lime(net, x, target, num_features=6, num_samples=40, seed=0, kernel_width=0.25):
    """LIME on a grid: the same draws as the method (one generator, sample after sample), each
    pattern scored separately, weights exp(-d^2/w^2) on the cosine distance to all-on, and the
    weighted least squares solved by numpy through its normal equations."""
    with torch.no_grad():
        outputs = net(x)
    fns = score_fns(target, x.shape[0], outputs)
    labels = naive_grid_labels(tuple(x.shape[2:]), num_features)
    f = int(labels.max()) + 1
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(x.shape[0]):
        z = (torch.rand(num_samples, f, generator=g) < 0.5).double().numpy()
        x1 = x[i:i + 1]
        mean = x1.mean(dim=tuple(range(2, x1.ndim)), keepdim=True)
        w = []
        for row in z:
            cos = row.sum() / (np.linalg.norm(row) * np.sqrt(f)) if row.any() else 0.0
            w.append(np.exp(-(1 - cos) ** 2 / kernel_width ** 2))
        w = np.array(w)
        per_target = []
        for fn in fns[i]:
            scores = []
            for row in z:
                keep = torch.from_numpy(row)[labels].bool()
                scores.append(_softmax_score(net, fn, torch.where(keep, x1, mean)))
            a = np.concatenate([np.ones((num_samples, 1)), z], 1)
            coef = np.linalg.pinv(a.T @ (w[:, None] * a)) @ (a.T @ (w * np.array(scores)))
            per_target.append(torch.from_numpy(coef[1:])[labels])
        out.append(torch.stack(per_target))
    return torch.stack(out)


BATCH_REFERENCES["occlusion"] = lambda net, x, target, layer: naive_occlusion(net, x, target)
SWEEP_OPTIONS["occlusion"] = {"mask_size": 3, "stride": 2}
BATCH_REFERENCES["image_lime"] = lambda net, x, target, layer: naive_lime(net, x, target)
SWEEP_OPTIONS["image_lime"] = {"num_features": 6, "num_samples": 40, "segmentation": "grid"}
# ---------------------------------------------------------------- input-level attributions (issue 21)
def input_grad(net, x1, fn):
    """``d fn(net(x1)) / d x1`` for one sample ``x1 (1, C, *S)``, its own leaf and autograd call."""
    with torch.enable_grad():
        xl = x1.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(net(xl))[0], xl)
    return g


def naive_integrated_gradients(net, x1, fn, baseline=None, steps=8):
    """Sundararajan et al. eq. 3 with Gauss-Legendre nodes on [0, 1], one point at a time."""
    b = torch.zeros_like(x1) if baseline is None else baseline
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    total = torch.zeros_like(x1)
    for t, w in zip(nodes, weights):
        a = 0.5 * (t + 1)
        total = total + 0.5 * w * input_grad(net, b + a * (x1 - b), fn)
    return ((x1 - b) * total)[0]


def naive_smooth_grad(net, x1, fn, noises, noise_level, var=False):
    """Smilkov et al.: mean (VarGrad: variance) of |grad| over x + sigma z, sigma = level (max - min)."""
    sigma = noise_level * float(x1.max() - x1.min())
    maps = [input_grad(net, x1 + sigma * z, fn).abs()[0] for z in noises]
    mean = sum(maps) / len(maps)
    if var:
        return sum(m * m for m in maps) / len(maps) - mean * mean
    return mean


replicates("saliency")(lambda net, x1, layer, fn, smooth: input_grad(net, x1, fn).abs()[0])
replicates("input_x_gradient")(lambda net, x1, layer, fn, smooth: (x1 * input_grad(net, x1, fn))[0])
replicates("integrated_gradients")(lambda net, x1, layer, fn, smooth: naive_integrated_gradients(net, x1, fn))
SWEEP_OPTIONS["integrated_gradients"] = {"feature_layer": None, "steps": 8}


def _smooth_grad(net, x, target, layer, seed=0, samples=3, noise=0.15):
    with torch.no_grad():
        outputs = net(x)
    fns = score_fns(target, x.shape[0], outputs)
    draws_ = draws(seed, x.shape, samples)  # one draw of the whole batch per noisy copy
    return torch.stack([torch.stack([naive_smooth_grad(net, x[i:i + 1], fn, [z[i:i + 1] for z in draws_], noise)
                                     for fn in fns[i]]) for i in range(x.shape[0])])


BATCH_REFERENCES["smooth_grad"] = _smooth_grad
SWEEP_OPTIONS["smooth_grad"] = {"feature_layer": None, "samples": 3}


class VQA(nn.Module):
    """A VQA-like model of two inputs: an image branch (convolutions) and a question branch
    (token ids -> embedding, mean over tokens; an optional mask of the tokens)."""

    def __init__(self, vocab: int = 20, dim: int = 6, classes: int = 4):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, dim, 3, padding=1))
        self.act = nn.ReLU()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, image, ids, mask=None):
        v = self.act(self.conv(image)).mean((2, 3))  # (N, D)
        e = self.emb(ids)  # (N or 1, L, D)
        if mask is not None:
            e = e * mask[..., None]
        q = torch.tanh(e).mean(1)
        return self.head(v * q + 0.1 * q)


# ---------------------------------------------------------------- tabular attributions (issue 26)
# Feature ablation, DeepLIFT and expected gradients run on the sweep's toy networks (every
# element of (C, *S) a feature). Shapley values and tabular LIME need background rows of the
# input's own shape and 2^F coalitions: tests/test_tabular.py compares them with these references
# (brute-force enumeration, LIME one synthetic row at a time) on MLPs over (N, F) rows.
NO_REFERENCE["shapley"] = ("needs background rows shaped like the input and 2^F coalitions (the sweep's "
                           "toys have 24-240 elements): tests/test_tabular.py (naive_shapley)")
NO_REFERENCE["lime"] = ("needs background rows shaped like the input: tests/test_tabular.py "
                        "(naive_tabular_lime)")
RESCALE_MODULES = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.Softplus)


def naive_feature_ablation(net, x, target, baseline=0.0, groups=None):
    """captum's FeatureAblation written out: per sample, per group of elements, the score drop when the
    group is set to ``baseline``; every element of the group gets the group's drop."""
    with torch.no_grad():
        outputs = net(x)
        fns = score_fns(target, x.shape[0], outputs)
        element = x.shape[1:]
        labels = torch.arange(x[0].numel()).view(element) if groups is None else torch.as_tensor(groups).view(element)
        out = []
        for i in range(x.shape[0]):
            x1 = x[i:i + 1]
            maps = [torch.zeros(element, dtype=torch.float64) for _ in fns[i]]
            for g in torch.unique(labels):
                ablated = x1.clone()
                ablated[0][labels == g] = baseline
                y, y0 = net(ablated), net(x1)
                for k, fn in enumerate(fns[i]):
                    maps[k][labels == g] = float(fn(y0)[0] - fn(y)[0])
            out.append(torch.stack(maps))
    return torch.stack(out)


def naive_deep_lift(net, x1, fn, baseline=None):
    """DeepLIFT Rescale (Shrikumar et al. 2017, sec. 3.5) on an ``nn.Sequential``, layer by layer:
    run ``x`` and the reference through each layer, then carry the multipliers back: through a
    nonlinearity multiply by ``Delta out / Delta in`` (its derivative where ``|Delta in| < 1e-10``),
    through any other (affine) layer by its Jacobian; the result is ``m * (x - b)``."""
    b = torch.zeros_like(x1) if baseline is None else baseline
    ins_x, ins_b, hx, hb = [], [], x1, b
    with torch.no_grad():
        for layer in net:
            ins_x.append(hx)
            ins_b.append(hb)
            hx, hb = layer(hx), layer(hb)
    with torch.enable_grad():
        yl = hx.detach().requires_grad_(True)
        (m,) = torch.autograd.grad(fn(yl)[0], yl)
        for layer, ux, ub in reversed(list(zip(net, ins_x, ins_b))):
            leaf = ux.detach().requires_grad_(True)
            if isinstance(layer, RESCALE_MODULES):
                (deriv,) = torch.autograd.grad(layer(leaf).sum(), leaf)
                din, dout = ux - ub, layer(ux).detach() - layer(ub).detach()
                ratio = torch.where(din.abs() < 1e-10, deriv, dout / torch.where(din.abs() < 1e-10, 1.0, din))
                m = m * ratio
            else:
                (m,) = torch.autograd.grad(layer(leaf), leaf, m)
    return (m * (x1 - b))[0]


def naive_gradient_shap(net, x, target, background, samples, seed=0):
    """Expected gradients one draw at a time, from the method's stated draws (one CPU generator:
    the background row of every (sample, draw), then every ``a``)."""
    with torch.no_grad():
        outputs = net(x)
    fns = score_fns(target, x.shape[0], outputs)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(background.shape[0], (x.shape[0], samples), generator=g)
    alpha = torch.rand(x.shape[0], samples, generator=g, dtype=torch.float64)
    out = []
    for i in range(x.shape[0]):
        maps = []
        for fn in fns[i]:
            total = torch.zeros_like(x[i])
            for j in range(samples):
                b = background[int(pick[i, j])][None]
                total = total + input_grad(net, b + float(alpha[i, j]) * (x[i:i + 1] - b), fn)[0] * (x[i] - b[0])
            maps.append(total / samples)
        out.append(torch.stack(maps))
    return torch.stack(out)


def naive_shapley(f, x1, background):
    """Interventional Shapley values of ``f`` (rows ``(M, F)`` -> ``(M,)``) at ``x1 (F,)`` by brute
    force: every subset ``S`` of the other features, ``v(S)`` the mean over background rows with
    the features of ``S`` taken from ``x1``."""
    import itertools
    import math

    d = x1.shape[0]

    def v(s):
        z = background.clone()
        z[:, list(s)] = x1[list(s)]
        with torch.no_grad():
            return float(f(z).mean())

    phi = torch.zeros(d, dtype=torch.float64)
    for j in range(d):
        others = [i for i in range(d) if i != j]
        for size in range(d):
            w = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
            for s in itertools.combinations(others, size):
                phi[j] += w * (v(s + (j,)) - v(s))
    return phi


def naive_tabular_lime(f, x1, background, num_samples, kernel_width=0.75, seed=0):
    """Tabular LIME written out: synthetic rows from the background's per-column normal distribution
    (mean, sample standard deviation; the same draws as the method), each scored alone, weighted by
    exp(-d^2 / (kernel_width^2 F)) on the distance in background-standard-deviation units, and the
    weighted least squares with an intercept solved by numpy's normal equations (original units)."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = background.double().mean(0), background.double().std(0)
    z = mu + sd * torch.randn(num_samples, background.shape[1], generator=g, dtype=torch.float64)
    with torch.no_grad():
        scores = np.array([float(f(row[None])[0]) for row in z])
    d2 = (((z - x1.double()) / sd) ** 2).sum(1).numpy()
    w = np.exp(-d2 / (kernel_width ** 2 * background.shape[1]))
    a = np.concatenate([np.ones((num_samples, 1)), z.numpy()], 1)
    coef = np.linalg.solve(a.T @ (w[:, None] * a), a.T @ (w * scores))
    return torch.from_numpy(coef[1:])


BATCH_REFERENCES["feature_ablation"] = lambda net, x, target, layer: naive_feature_ablation(net, x, target)
replicates("deep_lift")(lambda net, x1, layer, fn, smooth: naive_deep_lift(net, x1, fn))
BATCH_REFERENCES["gradient_shap"] = lambda net, x, target, layer: naive_gradient_shap(
    net, x, target, torch.zeros(1, *x.shape[1:], dtype=x.dtype), 3)
SWEEP_OPTIONS["gradient_shap"] = {"background": 0.0, "samples": 3}
