"""Bad input, across the API, the metrics, explain_dataset and compare (issue 10, section 3).

Every row gives one kind of bad input and the message it must produce. Each row
also checks that the call changed nothing: the model's parameters, buffers,
``.grad``, ``requires_grad``, training flags and hooks, and the input, compared
bit for bit (NaN included) with a snapshot taken before the call.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr import metrics as M
from gradattr.comparison import compare
from gradattr.dataset import explain_dataset
from gradattr.errors import GradattrError


def make_net(rank: int = 2) -> nn.Module:
    """A small CNN in a mixed state: training mode except one layer, batch-norm statistics,
    a frozen parameter and a stored ``.grad``, so any change the call makes shows."""
    conv, bn, pool = {1: (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d),
                      2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)}[rank]
    torch.manual_seed(0)
    net = nn.Sequential(conv(3, 4, 3, padding=1), bn(4), nn.ReLU(), conv(4, 6, 3, padding=1), nn.ReLU(),
                        pool(1), nn.Flatten(), nn.Linear(6, 5))
    net.train()
    net[4].eval()
    net[0].bias.requires_grad_(False)
    net[7].weight.grad = torch.full_like(net[7].weight, 0.25)
    return net


def x2(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _bits(a) -> tuple:
    """Everything that identifies an array's contents bit for bit (NaN-safe)."""
    if isinstance(a, torch.Tensor):
        if a.device.type == "meta":
            return ("meta", tuple(a.shape), a.dtype)
        if a.layout != torch.strided:
            a = a.to_dense()
        return ("tensor", tuple(a.shape), a.dtype, a.device, a.requires_grad,
                a.detach().cpu().contiguous().numpy().tobytes() if not a.is_complex() else
                torch.view_as_real(a.detach().cpu()).contiguous().numpy().tobytes())
    if isinstance(a, np.ndarray):
        return ("ndarray", a.shape, a.dtype, a.tobytes() if a.dtype != object else repr(a.tolist()))
    return ("other", repr(a))


def snapshot(net) -> dict:
    if not isinstance(net, nn.Module):
        return {"net": repr(net)}
    state = {f"{k}": _bits(v) for k, v in net.state_dict(keep_vars=True).items()}
    for name, p in net.named_parameters():
        state[f"{name}.grad"] = None if p.grad is None else _bits(p.grad)
        state[f"{name}.requires_grad"] = p.requires_grad
    for name, m in net.named_modules():
        state[f"{name}.training"] = m.training
        state[f"{name}.hooks"] = (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
    return state


# -- the table: (id, call(net, x, tmp_path), message pattern[, make x[, make net[, xfail reason]]]) ----------
def gc(**kw):
    return lambda net, x, tmp: gradattr.grad_cam(net, x, **kw)


def _nan(x):
    x = x.clone()
    x[0, 1, 2, 3] = float("nan")
    return x


def _inf(x):
    x = x.clone()
    x[1, 0, 0, 0] = float("inf")
    return x


def _inference_x():
    with torch.inference_mode():
        return x2()


def _scripted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(make_net())


class _InfOutput(nn.Module):
    """A network whose class 1 scores +Inf (an overflow in the user's head)."""

    def __init__(self):
        super().__init__()
        self.body = make_net()

    def forward(self, x):
        return self.body(x) + torch.tensor([0.0, float("inf"), 0.0, 0.0, 0.0])


MAPS = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(2))

CASES = [
    # -- x -----------------------------------------------------------------------------------------
    ("x-str", gc(), r"x: expected a torch.Tensor or a numpy array, got str", lambda: "image.png"),
    ("x-list", gc(), r"x: expected a torch.Tensor or a numpy array, got list", lambda: [[1.0, 2.0]]),
    ("x-complex", gc(), r"x: expected a real-valued array, got dtype torch.complex64",
     lambda: x2().to(torch.complex64)),
    ("x-bool", gc(), r"x: expected a real-valued array, got dtype torch.bool", lambda: x2() > 0),
    ("x-object-array", gc(), r"x: expected a numeric array, got an array of dtype object",
     lambda: np.array([object()] * 4, dtype=object)),
    ("x-nan", gc(), r"x: expected finite values, got NaN or Inf \(1 NaN, 0 Inf of 384 elements\) in an "
     r"input of shape \(2, 3, 8, 8\)", lambda: _nan(x2())),
    ("x-inf", gc(), r"x: expected finite values, got NaN or Inf \(0 NaN, 1 Inf", lambda: _inf(x2())),
    ("x-float64-overflow", gc(), r"x: expected values that fit in the network's float32 .* got a maximum "
     r"\|x\| of 1e\+300, which overflows float32", lambda: np.full((3, 8, 8), 1e300)),
    ("x-0d-numpy", gc(), r"x: expected an array with channel and spatial/time dimensions, got shape \(\)$",
     lambda: np.array(3.0)),
    ("x-0d-tensor", gc(), r"x: expected \(N, C, S, S\) or \(C, S, S\) .* got shape \(\)$", lambda: torch.tensor(3.0)),
    ("x-2d-for-2d-net", gc(), r"x: expected \(N, C, S, S\) or \(C, S, S\) .* pass input_format .* got "
     r"shape \(8, 8\)", lambda: torch.randn(8, 8)),
    ("x-5d-for-2d-net", gc(), r"x: expected \(N, C, S, S\) .* got shape \(1, 2, 3, 8, 8\)",
     lambda: torch.randn(1, 2, 3, 8, 8)),
    ("x-empty-batch", gc(), r"x: expected at least one sample, got shape \(0, 3, 8, 8\)", lambda: x2(0)),
    ("x-empty-batch-score_cam", lambda net, x, tmp: gradattr.score_cam(net, x),
     r"x: expected at least one sample, got shape \(0, 3, 8, 8\)", lambda: x2(0)),
    ("x-empty-batch-cam", lambda net, x, tmp: gradattr.cam(net, x),
     r"x: expected at least one sample, got shape \(0, 3, 8, 8\)", lambda: x2(0)),
    ("x-empty-height", gc(), r"x: expected non-empty channel and spatial/time dimensions, got shape "
     r"\(2, 3, 0, 8\)", lambda: torch.zeros(2, 3, 0, 8)),
    ("x-empty-channels", gc(), r"x: expected non-empty channel .* got shape \(3, 0, 8\)",
     lambda: torch.zeros(3, 0, 8), lambda: make_net(1)),
    ("x-empty-time", gc(), r"x: expected non-empty channel .* got shape \(3, 0\)",
     lambda: torch.zeros(3, 0), lambda: make_net(1)),
    ("x-sparse", gc(), r"x: expected a dense \(strided\) tensor, got a tensor with layout torch.sparse_coo",
     lambda: x2().to_sparse()),
    ("x-meta", gc(), r"x: expected a tensor with data, got a tensor on the 'meta' device",
     lambda: torch.empty(2, 3, 8, 8, device="meta")),
    ("x-hwc-image", gc(), r"x: expected channels first, 3 channels .* pass input_format='SSC' .* got "
     r"shape \(8, 10, 3\)", lambda: np.random.default_rng(0).random((8, 10, 3), dtype=np.float32)),
    ("x-nhwc-batch", gc(), r"x: expected channels first.* input_format='BSSC' .* got shape \(2, 8, 10, 3\)",
     lambda: np.random.default_rng(0).random((2, 8, 10, 3), dtype=np.float32)),
    ("x-inference-tensor", gc(), r"x: expected a normal tensor \(gradients need autograd\), got a tensor "
     r"created under torch.inference_mode\(\)", _inference_x),
    # -- input_format --------------------------------------------------------------------------------
    ("input_format-letters", gc(input_format="SSXC"), r"input_format: expected a string of MATLAB "
     r"dimension letters .* got 'SSXC'"),
    ("input_format-count", gc(input_format="SSC"), r"input_format: expected one letter per dimension of x "
     r"\(4 letters\), got 'SSC' \(3 letters\)"),
    ("input_format-two-C", gc(input_format="SCCB"), r"input_format: expected exactly one 'C'"),
    ("input_format-not-str", gc(input_format=3), r"input_format: expected a string .* got 3"),
    # -- target --------------------------------------------------------------------------------------
    ("target-2**70", gc(target=2**70), r"target: expected class indices \(0-based\) that fit in int64, "
     r"got 1180591620717411303424"),
    ("target-list-2**70", gc(target=[1, 2**70]), r"target: expected class indices .* fit in int64"),
    ("target-negative", gc(target=-1), r"target: expected class indices >= 0 \(0-based\), got -1"),
    ("target-too-large", gc(target=5), r"target: expected class indices in 0..4 \(0-based; MATLAB's "
     r"classIdx is 1-based, so subtract 1\), got 5"),
    ("target-float", gc(target=1.5), r"target: expected an int class index \(0-based\).* got 1.5"),
    ("target-3d", gc(target=np.zeros((2, 1, 1), dtype=int)), r"target: expected an int class index .* "
     r"got shape \(2, 1, 1\)"),
    ("target-per-sample-rows", gc(target=np.zeros((3, 1), dtype=int)), r"target: expected per-sample "
     r"classes of shape \(2, K\) for a batch of 2, got shape \(3, 1\)"),
    ("target-label-no-classes", gc(target="cat"), r"classes: expected the list of class labels to look up "
     r"target 'cat' in, got classes=None"),
    ("target-unknown-label", gc(target="cta", classes=["cat", "dog", "a", "b", "c"]),
     r"target: expected a label from classes \(5 labels\), got 'cta'; did you mean 'cat'\?"),
    ("target-and-reduction_fn", gc(target=1, reduction_fn=lambda y: y[:, 0]),
     r"target: expected None when reduction_fn is given .* got 1"),
    # -- reduction_fn --------------------------------------------------------------------------------
    ("reduction_fn-not-callable", gc(reduction_fn=3), r"reduction_fn: expected a callable y -> scores "
     r"of shape \(N,\), got int"),
    ("reduction_fn-nan", gc(reduction_fn=lambda y: y[:, 0] * float("nan")),
     r"reduction_fn: expected finite scores, got NaN for sample\(s\) \[0, 1\]"),
    ("reduction_fn-inf", gc(reduction_fn=lambda y: torch.where(torch.arange(2) == 1, y[:, 0] / 0, y[:, 0])),
     r"reduction_fn: expected finite scores, got Inf for sample\(s\) \[1\]"),
    ("reduction_fn-argmax", gc(reduction_fn=lambda y: y.argmax(1)), r"reduction_fn: expected a "
     r"differentiable floating-point function of the output y .* got scores of dtype torch.int64"),
    ("reduction_fn-detached", gc(reduction_fn=lambda y: y[:, 0].detach()), r"reduction_fn: expected a "
     r"differentiable .* got scores that do not depend on y"),
    ("reduction_fn-constant", gc(reduction_fn=lambda y: torch.ones(y.shape[0])),
     r"reduction_fn: expected a differentiable .* got scores that do not depend on y"),
    ("reduction_fn-complex", gc(reduction_fn=lambda y: y[:, 0] * 1j), r"reduction_fn: expected a "
     r"differentiable floating-point .* got scores of dtype torch.complex64"),
    ("reduction_fn-shape", gc(reduction_fn=lambda y: y[:1, 0]), r"reduction_fn: expected one score per "
     r"sample: shape \(2,\) .* got shape \(1,\)"),
    ("reduction_fn-list", gc(reduction_fn=lambda y: [1.0, 2.0]), r"reduction_fn: expected a tensor with one "
     r"score per sample \(shape \(2,\)\), got a list"),
    ("reduction_fn-nan-score_cam", lambda net, x, tmp: gradattr.score_cam(
        net, x, reduction_fn=lambda y: y[:, 0] + float("nan")), r"reduction_fn: expected finite scores, got NaN"),
    ("net-inf-output", gc(target=1), r"net: expected finite outputs for the target classes, got Inf for "
     r"sample\(s\) \[0, 1\]", None, _InfOutput),
    ("net-inf-output-ablation_cam", lambda net, x, tmp: gradattr.ablation_cam(net, x, 1),
     r"net: expected finite outputs for the target classes, got Inf", None, _InfOutput),
    # -- other options -------------------------------------------------------------------------------
    ("upsampling", gc(upsampling="bilinear"), r"upsampling: expected one of 'bicubic', 'nearest', "
     r"'none', got 'bilinear'"),
    ("device-unknown", gc(device="tpu"), r"device: expected 'auto', 'cpu', 'gpu'/'cuda' or a torch.device, "
     r"got 'tpu'"),
    ("device-meta", gc(device="meta"), r"device: expected a device that computes .* got 'meta'"),
    ("net-not-module", lambda net, x, tmp: gradattr.grad_cam(lambda t: t, x),
     r"net: expected a torch.nn.Module, got function"),
    ("net-torchscript", gc(), r"net: expected an eager torch.nn.Module .* got a TorchScript "
     r"RecursiveScriptModule", None, _scripted),
    ("feature_layer-unknown", gc(feature_layer="layer4"), r"feature_layer: .*'layer4'"),
    ("feature_layer-none-in-list", gc(feature_layer=["0", None]), r"feature_layer: expected a list of layers "
     r".*each given, got \['0', None\] \(None picks the layer automatically, alone\)"),
    ("reduction_layer-unknown", gc(reduction_layer="fc"), r"reduction_layer: .*'fc'"),
    ("aug_smooth-int", gc(aug_smooth=1), r"aug_smooth: expected True or False, got 1"),
    ("counterfactual-str", gc(counterfactual="yes"), r"counterfactual: expected True or False, got 'yes'"),
    ("eigen_smooth-none", gc(eigen_smooth=None), r"eigen_smooth: expected True or False, got None"),
    ("return_layers-str", gc(return_layers="no"), r"return_layers: expected True or False, got 'no'"),
    ("normalize-str", gc(normalize="yes"), r"normalize: expected True or False, got 'yes'"),
    ("progress-str", lambda net, x, tmp: gradattr.score_cam(net, x, progress="yes"),
     r"progress: expected True or False, got 'yes'"),
    ("attribute-method", lambda net, x, tmp: gradattr.attribute(net, x, method="gradcam"), r"method: .*'gradcam'"),
    # -- metrics -------------------------------------------------------------------------------------
    ("deletion-steps", lambda net, x, tmp: M.deletion(net, x, MAPS, steps=0), r"steps: expected an integer >= 1, got 0"),
    ("deletion-batch_size", lambda net, x, tmp: M.deletion(net, x, MAPS, batch_size=0),
     r"batch_size: expected an integer >= 1, got 0"),
    ("deletion-nan-baseline", lambda net, x, tmp: M.deletion(net, x, MAPS, baseline=float("nan"), steps=4),
     r"baseline: expected a finite number, got nan"),
    ("insertion-nan-baseline-array", lambda net, x, tmp: M.insertion(net, x, MAPS, baseline=_nan(x), steps=4),
     r"baseline: expected finite values, got NaN or Inf \(1 NaN"),
    ("insertion-inf-baseline-callable", lambda net, x, tmp: M.insertion(
        net, x, MAPS, baseline=lambda t: t / 0, steps=4), r"baseline: expected a callable returning finite values"),
    ("deletion-baseline-name", lambda net, x, tmp: M.deletion(net, x, MAPS, baseline="zero"),
     r"baseline: expected 'zeros', 'mean', 'blur', a number, .* got 'zero'"),
    ("deletion-baseline-shape", lambda net, x, tmp: M.deletion(net, x, MAPS, baseline=torch.zeros(1, 3, 8, 8)),
     r"baseline: expected an array of x's shape \(prepared: \(2, 3, 8, 8\)\), got shape \(1, 3, 8, 8\)"),
    ("deletion-maps-shape", lambda net, x, tmp: M.deletion(net, x, MAPS[:, :4]),
     r"maps: expected \(2, \*\(8, 8\)\) or \(2, K, \*\(8, 8\)\).* got shape \(2, 4, 8\)"),
    ("deletion-maps-nan", lambda net, x, tmp: M.deletion(net, x, MAPS * float("nan")),
     r"maps: expected finite values, got NaN or Inf"),
    ("deletion-softmax-str", lambda net, x, tmp: M.deletion(net, x, MAPS, softmax="yes"),
     r"softmax: expected True or False, got 'yes'"),
    ("deletion-empty-batch", lambda net, x, tmp: M.deletion(net, x, MAPS[:0]),
     r"x: expected at least one sample, got shape \(0, 3, 8, 8\)", lambda: x2(0)),
    ("deletion-nan-x", lambda net, x, tmp: M.deletion(net, x, MAPS), r"x: expected finite values",
     lambda: _nan(x2())),
    ("deletion-inf-output", lambda net, x, tmp: M.deletion(net, x, MAPS, target=1, steps=4),
     r"net: expected finite outputs for the target classes, got NaN", None, _InfOutput),
    ("deletion-reduction_fn-nan", lambda net, x, tmp: M.deletion(
        net, x, MAPS, reduction_fn=lambda y: y[:, 0] * float("nan"), steps=4),
     r"reduction_fn: expected finite scores, got NaN"),
    ("confidence-normalize-int", lambda net, x, tmp: M.confidence_change(net, x, MAPS, normalize=1),
     r"normalize: expected True or False, got 1"),
    ("average_drop-target", lambda net, x, tmp: M.average_drop(net, x, MAPS, target=9),
     r"target: expected class indices in 0..4"),
    ("road-order", lambda net, x, tmp: M.road(net, x, MAPS, order="up"), r"order: expected 'morf', 'lerf' "
     r"or 'both', got 'up'"),
    ("road-fractions", lambda net, x, tmp: M.road(net, x, MAPS, fractions=[0.0, 1.5]),
     r"fractions: expected a non-empty sequence of numbers strictly between 0 and 1"),
    ("road-noise", lambda net, x, tmp: M.road(net, x, MAPS, noise=-1), r"noise: expected a number >= 0, got -1"),
    ("pointing-mask-and-box", lambda net, x, tmp: M.pointing_game(MAPS, np.ones((8, 8), bool), [[0, 2], [0, 2]]),
     r"mask: expected exactly one of mask and box"),
    ("localize-threshold", lambda net, x, tmp: M.localize(MAPS, threshold=2),
     r"threshold: expected a fraction of the maximum in \[0, 1\], got 2"),
    ("box_iou-dims", lambda net, x, tmp: M.box_iou(np.array([[0, 2], [0, 2]]), np.array([[0, 2]])),
     r"b: expected boxes \(\.\.\., d, 2\) with the same d"),
    # -- explain_dataset -----------------------------------------------------------------------------
    ("dataset-progress", lambda net, x, tmp: explain_dataset(net, [x], progress="yes"),
     r"progress: expected True or False, got 'yes'"),
    ("dataset-overwrite", lambda net, x, tmp: explain_dataset(net, [x], overwrite=1),
     r"overwrite: expected True or False, got 1"),
    ("dataset-total", lambda net, x, tmp: explain_dataset(net, [x], total=-1),
     r"total: expected None or a number of batches >= 0, got -1"),
    ("dataset-on_batch", lambda net, x, tmp: explain_dataset(net, [x], on_batch=3),
     r"on_batch: expected a callable taking a BatchMaps, or None, got int"),
    ("dataset-single-tensor", lambda net, x, tmp: explain_dataset(net, x),
     r"batches: expected an iterable of batches .* for a single batch pass \[x\], got Tensor"),
    ("dataset-method", lambda net, x, tmp: explain_dataset(net, [x], "grad_came"),
     r"method: expected one of .* got 'grad_came'; did you mean 'grad_cam'"),
    ("dataset-option", lambda net, x, tmp: explain_dataset(net, [x], feature_layr="3"),
     r"feature_layr: expected an option of grad_cam \(one of .*\), got 'feature_layr'; did you mean "
     r"'feature_layer'"),
    ("dataset-unbatched", lambda net, x, tmp: explain_dataset(net, [x[0, 0]]),
     r"batches: expected batched inputs \(B, C, \*spatial\) \(batch 0\), got shape \(8, 8\)"),
    ("dataset-label-without-y", lambda net, x, tmp: explain_dataset(net, [x], target="label"),
     r"target: expected 'label' only for batches \(x, y\) that carry labels, got batch 0 without labels"),
    ("dataset-nan-batch", lambda net, x, tmp: explain_dataset(net, [x]), r"x: expected finite values",
     lambda: _nan(x2())),
    ("dataset-out_dir-file", lambda net, x, tmp: explain_dataset(
        net, [x], out_dir=(tmp / "f.txt", (tmp / "f.txt").write_text("x"))[0]),
     r"out_dir: expected a folder, got '.*f.txt', which is a file"),
    # -- compare -------------------------------------------------------------------------------------
    ("compare-metric-option", lambda net, x, tmp: compare(net, x, metric_options={"deletion": {"stepz": 3}}),
     r"metric_options\['deletion'\]: expected options of gradattr.metrics.deletion: .*steps.* got 'stepz'; "
     r"did you mean 'steps'\?"),
    ("compare-metric-options-not-dict", lambda net, x, tmp: compare(net, x, metric_options={"road": 3}),
     r"metric_options\['road'\]: expected a dict of keyword options, got int"),
    ("compare-metric-options-key", lambda net, x, tmp: compare(net, x, metric_options={"delete": {}}),
     r"metric_options: expected keys from deletion, .* got 'delete'"),
    ("compare-metric", lambda net, x, tmp: compare(net, x, metrics=["auc"]),
     r"metrics: expected names from .* got 'auc'"),
    ("compare-no-methods", lambda net, x, tmp: compare(net, x, methods=[]),
     r"methods: expected at least one method, got an empty list"),
    ("compare-empty-data", lambda net, x, tmp: compare(net, []), r"data: expected at least one batch, got an "
     r"empty iterable"),
    ("compare-duplicate-methods", lambda net, x, tmp: compare(net, x, methods=["grad_cam", "grad_cam"]),
     r"methods: expected distinct method names"),
    ("compare-localization-no-mask", lambda net, x, tmp: compare(net, x, metrics=["localization"]),
     r"mask: expected a mask or a box for metric 'localization', got neither"),
    ("compare-empty-batch", lambda net, x, tmp: compare(net, x), r"x: expected at least one sample",
     lambda: x2(0)),
]


def _param(case):
    name, call, pattern, *rest = case
    make_x = rest[0] if len(rest) > 0 and rest[0] is not None else x2
    net_fn = rest[1] if len(rest) > 1 and rest[1] is not None else make_net
    marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=rest[2])] if len(rest) > 2 else []
    return pytest.param(call, pattern, make_x, net_fn, id=name, marks=marks)


def test_the_table_is_wide():
    """At least 60 kinds of bad input, spread over every entry point."""
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)
    for prefix in ("x-", "target-", "reduction_fn-", "deletion-", "road-", "dataset-", "compare-"):
        assert sum(c[0].startswith(prefix) for c in CASES) >= 3, prefix


@pytest.mark.parametrize("call, pattern, make_x, make_model", [_param(c) for c in CASES])
def test_bad_input(call, pattern, make_x, make_model, tmp_path):
    net, x = make_model(), make_x()
    before_net, before_x = snapshot(net), _bits(x)
    try:
        with pytest.raises(GradattrError, match=pattern):
            call(net, x, tmp_path)
    except pytest.fail.Exception as err:  # no error at all: the xfail rows expect this
        raise AssertionError(str(err)) from None
    assert snapshot(net) == before_net
    assert _bits(x) == before_x


def test_snapshot_sees_every_kind_of_change():
    """The table's check is not vacuous: each kind of change to the model or input shows."""
    changes = [
        lambda net, x: net(x),  # batch-norm statistics in training mode
        lambda net, x: net.eval(),
        lambda net, x: net[0].weight.requires_grad_(False),
        lambda net, x: setattr(net[7].weight, "grad", None),
        lambda net, x: net[3].register_forward_hook(lambda *a: None),
        lambda net, x: net[3].weight.data.view(-1)[0].add_(1e-7),
    ]
    for change in changes:
        net, x = make_net(), x2()
        before = snapshot(net)
        change(net, x)
        assert snapshot(net) != before
    x = x2()
    before = _bits(x)
    x[0, 0, 0, 0] += 1e-6
    assert _bits(x) != before


def test_metrics_accept_inference_mode_inputs():
    """Metrics need no gradients: an input made under inference_mode, or a call inside it, works
    and gives the same numbers as a normal input."""
    net, x = make_net().eval(), x2()
    want = M.deletion(net, x, MAPS, steps=4, softmax=False)
    with torch.inference_mode():
        xi = x.clone()
        inside = M.deletion(net, xi, MAPS, steps=4, softmax=False)
    outside = M.deletion(net, xi, MAPS, steps=4, softmax=False)
    torch.testing.assert_close(inside.scores, want.scores)
    torch.testing.assert_close(outside.auc, want.auc)
    # The scores really come from the network: the unperturbed point is its output for the top class.
    torch.testing.assert_close(want.scores[:, 0], net(x).max(1).values.detach())


def test_a_channels_first_image_with_matching_trailing_dim_is_not_refused():
    """Only a mismatch is refused: (3, 8, 3) is channels first for a 3-channel network."""
    net = make_net().eval()
    m = gradattr.grad_cam(net, torch.randn(3, 8, 3), 1)
    assert m.shape == (8, 3)
    img = np.random.default_rng(0).random((8, 10, 3), dtype=np.float32)
    hwc = gradattr.grad_cam(net, img, 1, input_format="SSC")
    chw = gradattr.grad_cam(net, np.ascontiguousarray(img.transpose(2, 0, 1)), 1)
    np.testing.assert_allclose(hwc, chw, rtol=1e-5, atol=1e-6)
