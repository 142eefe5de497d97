"""The zoo: Grad-CAM on every architecture family in ``zoo_models``, checked against an oracle.

The oracle is a naive Grad-CAM written here: a forward hook on the expected layer, the
gradient of the score with ``torch.autograd.grad``, and the hand-written reading of that
layer's output that the zoo entry gives (its grid comes from the configuration the network
was built with). Nothing of gradattr's layout or layer code is used by the oracle.

For every entry gradattr must

* read the expected layer, named explicitly, as the oracle does (same map);
* choose an expected layer automatically and give the oracle's map for it;
* refuse, with an error that says which ``feature_layout=`` would settle it, a layer whose
  output is no grid of the input (``Case.refuse``); where the right reading is out of reach
  (``Case.may_refuse``: Hiera's unrolled inner stages) such a refusal is also accepted;
* not call an observable reading "a guess".

A handful of representative entries run in the default suite; the rest are marked slow
(``python -m pytest -q -m slow tests/test_zoo.py``).
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from zoo_models import CASES, Case

import gradattr
from gradattr.errors import GradattrError

#: A map equals the oracle's to float32 noise relative to its largest value, or (where the
#: two sum in another order through a deep tail) correlates with it at r >= 0.999.
RTOL, ATOL, MIN_R = 1e-4, 1e-4, 0.999


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def naive_grad_cam(net, x, layer: str, read, score) -> torch.Tensor:
    """Grad-CAM at ``layer`` (its last call) read by ``read``: ReLU(sum_c mean(dS/dA_c) A_c)."""
    module = dict(net.named_modules())[layer]
    kept = []

    def hook(m, inputs, out):
        t = out[0] if isinstance(out, (tuple, list)) else out
        kept.append(t)
        clone = t.clone()  # a later in-place op must not change what was kept
        return (clone, *out[1:]) if isinstance(out, tuple) else clone

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            y = net(x.detach().clone().requires_grad_(True))
            s = score(y)
            assert s.shape == (x.shape[0],), s.shape
            (g,) = torch.autograd.grad(s.sum(), kept[-1])
    finally:
        handle.remove()
    a, g = read(kept[-1].detach()), read(g)
    n, c, *grid = a.shape
    w = g.reshape(n, c, -1).mean(-1)
    return torch.relu((w.reshape(n, c, *[1] * len(grid)) * a).sum(1))


def _same_map(ours, ref) -> str | None:
    """None when ``ours`` is the oracle's map ``ref``, else what differs."""
    ours = torch.as_tensor(ours).detach().float()
    ref = ref.detach().float()
    if ours.shape != ref.shape:
        return f"shape {tuple(ours.shape)}, oracle {tuple(ref.shape)}"
    if not torch.isfinite(ours).all():
        return "non-finite values"
    scale = float(ref.abs().max())
    if torch.allclose(ours, ref, rtol=RTOL, atol=ATOL * scale):
        return None
    a, b = ours.double().ravel().numpy(), ref.double().ravel().numpy()
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    if r >= MIN_R:
        return None
    return (f"max |diff| {float((ours - ref).abs().max()):.3g} of max {scale:.3g}, Pearson r {r:.4f}, "
            f"max {float(ours.abs().max()):.3g}")


def _grad_cam(net, x, c: Case, score_fn, **kw):
    """gradattr.grad_cam with the entry's target; the guesses it warns about, returned."""
    target = ({"reduction_fn": score_fn} if c.fn is not None or c.fn_from is not None
              else {"target": c.target})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = gradattr.grad_cam(net, x, upsampling="none", **target, **c.kwargs, **kw)
    guesses = [str(w.message) for w in caught if "guess" in str(w.message)]
    return out, guesses


def _params():
    for c in CASES:
        marks = [] if c.fast else [pytest.mark.slow]
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("c", list(_params()))
def test_zoo(c: Case):
    try:
        net, x = c.build()
    except ModuleNotFoundError as e:  # timm, torchvision, transformers, monai: the test extra
        pytest.skip(f"{e.name} is not installed")
    if c.fn is not None:
        score = c.fn
    elif c.fn_from is not None:
        score = c.fn_from(net, x)
    else:
        from zoo_models import class_score
        score = class_score(c.target)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    problems = []
    layers = c.layers(net) if callable(c.layers) else c.layers

    explicit, read = next(iter(layers.items()))
    ref = naive_grad_cam(net, x, explicit, read, score)
    assert c.zero_ok or float(ref.max()) > 0, f"the oracle's map at {explicit!r} is zero: fix the zoo entry"

    # 1. the expected layer named explicitly: its reading
    try:
        cam, guesses = _grad_cam(net, x, c, score, feature_layer=explicit, **c.explicit_kwargs)
        diff = _same_map(cam, ref)
        if diff:
            problems.append(f"explicit {explicit!r}: wrong map ({diff})")
        if guesses:
            problems.append(f"explicit {explicit!r}: warned a guess: {guesses[0]}")
    except GradattrError as e:
        if not (c.may_refuse and "feature_layout" in str(e)):
            problems.append(f"explicit {explicit!r}: GradattrError: {e}")
    except Exception as e:  # noqa: BLE001 - every failure of this entry is reported together
        problems.append(f"explicit {explicit!r}: {type(e).__name__}: {e}")

    # 2. the automatic choice: one of the expected layers, with the oracle's map for it
    if c.auto:
        try:
            (cam, layer, _), guesses = _grad_cam(net, x, c, score, return_layers=True)
            if layer not in layers:
                problems.append(f"automatic: chose {layer!r}, expected {' or '.join(map(repr, layers))}")
            else:
                want = ref if layer == explicit else naive_grad_cam(net, x, layer, layers[layer], score)
                diff = _same_map(cam, want)
                if diff:
                    problems.append(f"automatic {layer!r}: wrong map ({diff})")
            if guesses:
                problems.append(f"automatic {layer!r}: warned a guess: {guesses[0]}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"automatic: {type(e).__name__}: {e}")

    # 3. a layer that is no grid of the input: a clear refusal
    if c.refuse:
        try:
            cam, _ = _grad_cam(net, x, c, score, feature_layer=c.refuse)
            problems.append(f"refuse {c.refuse!r}: returned a map of shape {tuple(cam.shape)}")
        except GradattrError as e:
            if "feature_layout" not in str(e):
                problems.append(f"refuse {c.refuse!r}: the error does not mention feature_layout: {e}")

    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in state.items()), "the model's weights changed"
    assert not problems, "\n".join(problems)


def test_the_zoo_is_large_and_every_entry_is_well_formed():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 80
    families = {c.family for c in CASES}
    assert {"timm", "torchvision", "huggingface", "monai", "1-D"} <= families
    assert 3 <= sum(c.fast for c in CASES) <= 10
    for c in CASES:
        assert c.layers and c.rule and (callable(c.layers) or c.layers), c.id
        assert re.fullmatch(r"[a-z0-9_]+", c.id), c.id


# ==================================================================== inputs: (N, F), (N, L), ids, vectors
from zoo_models import INPUT_CASES, InputCase, logits  # noqa: E402 - the second zoo, issue 25

captum_attr = pytest.importorskip("captum.attr")


def _score(c: InputCase):
    return c.fn if c.fn is not None else (lambda y: logits(y)[:, c.target])


def _target(c: InputCase) -> dict:
    return {"reduction_fn": c.fn} if c.fn is not None else {"target": c.target}


def _run(net, x, c: InputCase):
    return net(*x) if isinstance(x, tuple) else net(x)


def per_sample_gradients(net, x, c: InputCase) -> torch.Tensor:
    """d score / d x_i of each sample alone (a batch of one): the oracle of saliency."""
    score, n = _score(c), (x[0] if isinstance(x, tuple) else x).shape[0]
    out = []
    for i in range(n):
        if isinstance(x, tuple):
            xi = [v[i:i + 1].clone() for v in x]
            xi[c.explain].requires_grad_(True)
            y, leaf = net(*xi), xi[c.explain]
        else:
            leaf = x[i:i + 1].clone().requires_grad_(True)
            y = net(leaf)
        out.append(torch.autograd.grad(score(y).sum(), leaf)[0][0])
    return torch.stack(out)


def naive_cam_any_input(net, x, layer: str, read, score) -> torch.Tensor:
    """Grad-CAM at ``layer`` without a gradient of the input (token ids have none)."""
    kept = []
    module = dict(net.named_modules())[layer]

    def hook(m, inputs, out):
        t = out[0] if isinstance(out, (tuple, list)) else out
        kept.append(t)

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            y = net(x)
            (g,) = torch.autograd.grad(score(y).sum(), kept[-1])
    finally:
        handle.remove()
    a, g = read(kept[-1].detach()), read(g)
    n, ch, *grid = a.shape
    w = g.reshape(n, ch, -1).mean(-1)
    return torch.relu((w.reshape(n, ch, *[1] * len(grid)) * a).sum(1))


def _explained(x, c: InputCase) -> torch.Tensor:
    return x[c.explain] if isinstance(x, tuple) else x


def _with_other_rows(x, c: InputCase):
    """x with every sample but the first replaced (the explained input only)."""
    xe = _explained(x, c).clone()
    g = torch.Generator().manual_seed(99)
    if c.ids:
        xe[1:] = torch.randint(0, 40, xe[1:].shape, generator=g)
    else:
        xe[1:] = torch.randn(xe[1:].shape, generator=g)
    if isinstance(x, tuple):
        return tuple(xe if i == c.explain else v for i, v in enumerate(x))
    return xe


def _input_checks(net, x, c: InputCase, kw: dict) -> list[str]:
    """Saliency, integrated gradients (vs captum) and rows independent, on a float input."""
    problems = []
    xe = _explained(x, c)
    sal = gradattr.saliency(net, x, abs=False, **kw)
    want = per_sample_gradients(net, x, c)
    if tuple(sal.shape) != tuple(xe.shape) or not torch.allclose(sal, want.float(), rtol=1e-4, atol=1e-6):
        problems.append(f"saliency: shape {tuple(sal.shape)} vs {tuple(xe.shape)}, or not the per-sample gradient")
    if c.fn is None:  # captum on the whole batch (a target index)
        if isinstance(x, tuple):
            others = tuple(v for i, v in enumerate(x) if i != c.explain)

            def fwd(v, *rest):
                args = list(rest)
                args.insert(c.explain, v)
                return net(*args)
            ig_ref = captum_attr.IntegratedGradients(fwd).attribute(xe, target=c.target, n_steps=8,
                                                                   additional_forward_args=others)
        else:
            ig_ref = captum_attr.IntegratedGradients(net).attribute(xe, target=c.target, n_steps=8)
        ig = gradattr.integrated_gradients(net, x, steps=8, **kw)
        if not torch.allclose(ig, ig_ref.detach().float(), rtol=1e-3, atol=1e-5):
            problems.append(f"integrated_gradients differs from captum by {float((ig - ig_ref).abs().max()):.3g}")
    again = gradattr.saliency(net, _with_other_rows(x, c), abs=False, **kw)
    if not torch.allclose(again[0], sal[0], rtol=1e-5, atol=1e-7):
        problems.append("saliency of sample 0 changed when the other samples did")
    return problems


def _ids_checks(net, x, c: InputCase, kw: dict) -> list[str]:
    """Token ids: integrated gradients at the embedding, as captum's LayerIntegratedGradients."""
    module = dict(net.named_modules())[c.embedding]
    ig = gradattr.integrated_gradients(net, x, feature_layer=c.embedding, baseline=0, steps=8, **kw)
    ref = captum_attr.LayerIntegratedGradients(net, module).attribute(
        x, baselines=torch.zeros_like(x), target=c.target, n_steps=8)
    if tuple(ig.shape) != tuple(ref.shape) or not torch.allclose(ig, ref.detach().float(), rtol=1e-3, atol=1e-5):
        return [f"integrated_gradients at {c.embedding!r}: shape {tuple(ig.shape)} vs captum {tuple(ref.shape)}"]
    return []


def _cam_checks(net, x, c: InputCase, kw: dict) -> list[str]:
    problems = []
    explicit, read = next(iter(c.layers.items()))
    ref = naive_cam_any_input(net, x, explicit, read, _score(c))
    cam = gradattr.grad_cam(net, x, upsampling="none", feature_layer=explicit, **kw)
    diff = _same_map(cam, ref)
    if diff:
        problems.append(f"grad_cam at {explicit!r}: {diff}")
    cam, layer, _ = gradattr.grad_cam(net, x, upsampling="none", return_layers=True, **kw)
    if layer not in c.layers:
        problems.append(f"automatic: chose {layer!r}, expected one of {list(c.layers)}")
    else:
        diff = _same_map(cam, naive_cam_any_input(net, x, layer, c.layers[layer], _score(c)))
        if diff:
            problems.append(f"automatic {layer!r}: {diff}")
    full = gradattr.grad_cam(net, x, **kw)
    if tuple(full.shape) != tuple(_explained(x, c).shape):
        problems.append(f"grad_cam at the input's size: shape {tuple(full.shape)}")
    return problems


def _input_params():
    for c in INPUT_CASES:
        yield pytest.param(c, id=c.id, marks=[] if c.fast else [pytest.mark.slow])


@pytest.mark.parametrize("c", list(_input_params()))
def test_input_zoo(c: InputCase):
    """Each input kind read as its samples: per-sample gradients, captum's integrated gradients,
    rows independent, Grad-CAM per frame or token where there is a time axis, and a clear
    refusal of map methods on feature vectors."""
    net, x = c.build()
    kw = {**_target(c), **({"explain": c.explain} if isinstance(x, tuple) else {})}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = _ids_checks(net, x, c, kw) if c.ids else _input_checks(net, x, c, kw)
        if c.layers:
            problems += _cam_checks(net, x, c, kw)
        elif not isinstance(x, tuple):  # feature vectors: a map has no grid
            with pytest.raises(GradattrError, match=r"no grid; per-feature methods work on vectors: .*saliency"):
                gradattr.occlusion(net, x, **kw)
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in state.items()), "the model's weights changed"
    assert not problems, "\n".join(problems)


def test_the_input_zoo_is_wide():
    families = {c.family for c in INPUT_CASES}
    assert {"tabular", "raw waveform", "token ids", "several inputs"} <= families
    assert len(INPUT_CASES) >= 20 and 3 <= sum(c.fast for c in INPUT_CASES) <= 4
    assert len({c.id for c in INPUT_CASES}) == len(INPUT_CASES)
