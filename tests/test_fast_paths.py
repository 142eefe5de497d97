"""Fast paths give bit-identical results to the slow ones they replace (issue 27).

Ablation-CAM's tail-only path (the layers after the feature layer run on a buffer of
ablated copies, the memory learnt in the capture pass) against the whole-pass fallback;
the options bound once per network against a fresh bind; the memory observed in the
capture pass against the scorer's own observing pass; the one read of the checks
against its tensor form; the layer look-ups through ``_modules``, the output form and the maps'
peaks against ``get_submodule``, the full conversion and ``vector_norm``; the hooks' guard under
``torch.compile``; the one-layer capture pass against the general one. No timing here: speed is measured in benchmarks/.
"""
from __future__ import annotations

import dataclasses
import gc
import weakref
from collections import OrderedDict

import pytest
import torch
from torch import nn

import gradattr
from gradattr import borrow, budget, capture, engine, prep, registry
from gradattr.scorer import Scorer

from references import toy, toy_input


class BatchFromInput(nn.Module):
    """Reads its batch size from the input, as EfficientNet-Lite's ``x.view(bs, -1)`` does."""

    def __init__(self):
        super().__init__()
        self.body = toy(2)[:4]
        self.fc = toy(2)[6]

    def forward(self, x):
        bs = x.size(0)
        return self.fc(self.body(x).flatten(2).mean(-1).view(bs, -1))


class TwoStage(nn.Module):
    """A tail with a convolution and an in-place ReLU after the feature layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 7, 3, padding=1))
        self.tail = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(7, 4, 1), nn.ReLU(inplace=True),
                                  nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    def forward(self, x):
        return self.tail(self.body(x))


def passes(net, module):
    sizes = []
    h = module.register_forward_pre_hook(lambda m, i: sizes.append(i[0].shape[0]))
    return sizes, h


def slow(fn):
    """``fn()`` with Ablation-CAM's tail-only path refused: every copy runs the whole network."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Scorer, "_tail_scores", lambda self, copies, i, check, replay=None: (None, False))
        return fn()


NETS = [("toy 2-D", lambda: toy(2), "3", 2), ("toy 1-D", lambda: toy(1), "3", 1),
        ("in-place tail", lambda: TwoStage().double().eval(), "body.2", 2)]


@pytest.mark.parametrize("name,make,layer,rank", NETS, ids=[n[0] for n in NETS])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_ablation_fast_path_equals_the_whole_pass_fallback(name, make, layer, rank, batch_size):
    net, x = make(), toy_input(rank, n=3)
    fast = gradattr.ablation_cam(net, x, [1, 3], feature_layer=layer, upsampling="none",
                                 batch_size=batch_size, relu=False)
    want = slow(lambda: gradattr.ablation_cam(net, x, [1, 3], feature_layer=layer, upsampling="none",
                                              batch_size=batch_size, relu=False))
    assert torch.equal(fast, want)
    assert fast.abs().amax() > 0


def test_ablation_on_a_network_that_reads_its_batch_size_from_the_input():
    """The check refuses the tail-only path (the output has the wrong shape); the map is the
    whole-pass fallback's, bit for bit."""
    net, x = BatchFromInput().double().eval(), toy_input(2)
    sizes, h = passes(net, net.body[0])
    try:
        got = gradattr.ablation_cam(net, x, 2, feature_layer="body.3", upsampling="none", batch_size=3)
    finally:
        h.remove()
    assert sizes == [2, 1, 3, 2, 3, 2]  # capture, the failed check, whole passes on the copies
    want = slow(lambda: gradattr.ablation_cam(net, x, 2, feature_layer="body.3", upsampling="none",
                                              batch_size=3))
    assert torch.equal(got, want)


def test_ablation_runs_two_passes_with_the_memory_learnt_in_the_capture():
    """One sample, all channels in one chunk: the capture pass and one pass whose layers after
    the feature layer run on 1 + C copies; no pass that only observes memory."""
    net, x = toy(2), toy_input(2, n=1)
    sizes, h = passes(net, net[0])
    tails, h2 = passes(net, net[4])
    try:
        got = gradattr.ablation_cam(net, x, 1, feature_layer="3", upsampling="none")
    finally:
        h.remove()
        h2.remove()
    assert sizes == [1, 1]
    assert tails == [1, 1 + 5]  # the captured score; the unmodified copy and the 5 ablated ones
    want = slow(lambda: gradattr.ablation_cam(net, x, 1, feature_layer="3", upsampling="none"))
    assert torch.equal(got, want)


@pytest.mark.parametrize("layer", ["3", "2"])
def test_memory_observed_in_the_capture_matches_the_scorers_own_pass(layer):
    net, x = TwoStage().eval(), torch.randn(3, 2, 12, 10)
    layer = {"3": "body.2", "2": "body.1"}[layer]
    call = prep.prepare_call(net, x, target=1)
    plan = capture.plan_from_options(net, layer, None, None, None)
    watch = budget.MemoryWatch(net, call.n)
    with call.borrowed():
        cap = capture.capture(call, plan, grad=False, watch=watch)
        seen = Scorer(call, cap.plan, cap, watched=watch)
        own = Scorer(call, cap.plan, cap)
        held = cap.acts[0][0].numel() * cap.acts[0].element_size()  # the captured map, per sample
        for tail in (False, True):
            # the capture pass holds what it captured on top of what a pass of its own holds
            assert own.budget.forward_bytes(tail) <= seen.budget.forward_bytes(tail) <= own.budget.forward_bytes(tail) + held
            assert own.budget.forward_bytes(tail) > 0
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0


def test_options_bound_once_per_network_equal_a_fresh_bind():
    net, x = toy(2), toy_input(2)
    first = gradattr.grad_cam(net, x, 1, feature_layer="3", upsampling="none")
    again = gradattr.grad_cam(net, x, 1, feature_layer="3", upsampling="none")
    fresh = engine.run(engine.bind(registry.get("grad_cam"), net,
                                   dict(feature_layer="3", upsampling="none")), net, x, 1)
    assert torch.equal(first, again) and torch.equal(again, fresh)
    # the layer replaced: the remembered options bind again (the new module is explained)
    net[3] = nn.LeakyReLU(0.5)
    replaced = gradattr.grad_cam(net, x, 1, feature_layer="3", upsampling="none", relu=False)
    want = engine.run(engine.bind(registry.get("grad_cam"), net,
                                  dict(feature_layer="3", upsampling="none", relu=False)), net, x, 1)
    assert torch.equal(replaced, want)
    assert not torch.equal(replaced, gradattr.grad_cam(toy(2), x, 1, feature_layer="3", upsampling="none",
                                                       relu=False))
    # 1 and True are different options: True is refused as a feature layer, not taken as "1"
    with pytest.raises(gradattr.GradattrError, match="feature_layer"):
        gradattr.grad_cam(net, x, 1, feature_layer=True)
    # the remembered options never keep a network alive
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None


def test_one_read_returns_what_the_tensor_form_returns():
    net, x = toy(2), toy_input(2)
    call = prep.prepare_call(net, x, target=1, defer_checks=True)
    peaks = torch.tensor([[0.5, 2.0], [float("inf"), 0.0]], dtype=torch.float64)
    want = peaks.clone()
    call.deferred.checks.append((torch.tensor(3.0), lambda: None))
    got = prep.read_values(call, peaks)
    assert got == [0.5, 2.0, float("inf"), 0.0] and not call.deferred.checks
    call.deferred.checks.append((torch.tensor(float("nan")), lambda: (_ for _ in ()).throw(ValueError("ran"))))
    with pytest.raises(ValueError, match="ran"):
        prep.read_checks(call, peaks)
    assert torch.equal(prep.read_checks(call, peaks), want)


def test_a_known_plan_is_returned_as_planned():
    net, x = toy(2), toy_input(2)
    call = prep.prepare_call(net, x, target=1)
    asked = capture.plan_from_options(net, "3", None, None, None)
    with call.borrowed():
        first = capture.capture(call, asked, grad=False)
        second = capture.capture(call, first.plan, grad=False)
    assert second.plan is first.plan and first.plan.known
    assert torch.equal(first.acts[0], second.acts[0])


@pytest.mark.parametrize("n", [3, 1])
@pytest.mark.parametrize("counterfactual", [False, True])
def test_one_targets_gradient_equals_the_gradient_of_its_sum(counterfactual, n):
    """One target's gradient is taken with ``ones`` as the output's gradient (no select and sum
    recorded; one score: autograd's own ones): bit-identical to differentiating the sum of its
    column."""
    net, x = toy(2), toy_input(2, n=n)
    a = net[:4](x).detach().requires_grad_(True)
    s = net[4:](a)[:, 2:3]
    (want,) = torch.autograd.grad((-s if counterfactual else s)[:, 0].sum(), a, retain_graph=True)
    got = capture.per_target_grads(s, [a], counterfactual, ["feature layer '3'"], "output")[0]
    assert got.shape == (n, 1, *a.shape[1:]) and torch.equal(got[:, 0], want)


# -- the capture pass carrying Ablation-CAM's copies (issue 27, goal 1) ----------------------

def _perturbation():
    import sys
    return sys.modules["gradattr.methods.ablation"]


def whole_passes_only(fn):
    """``fn()`` without the carrying capture pass (the capture pass, then the two-pass path)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_perturbation(), "CARRY", False)
        return fn()


@pytest.mark.parametrize("name,make,layer,rank", NETS, ids=[n[0] for n in NETS])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_ablation_capture_pass_carries_the_copies(name, make, layer, rank, batch_size):
    """From the second call on one sample runs one pass: the layers before the feature layer
    once, those after it on the unmodified map, the ablated copies and the unmodified map
    again; the map is the two-pass path's, bit for bit."""
    net, x = make(), toy_input(rank, n=1)
    first_module = next(m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d)))
    sizes, h = passes(net, first_module)
    call = lambda: gradattr.ablation_cam(net, x, [1, 3], feature_layer=layer, upsampling="none",  # noqa: E731
                                         batch_size=batch_size, relu=False)
    try:
        first = call()
        n_first = len(sizes)
        second = call()
        carried = sizes[n_first:]
    finally:
        h.remove()
    want = whole_passes_only(call)
    # batch_size=None: one pass in all; batch_size=2: the capture's 3 rows carry 1 copy, the
    # other channels take two-pass chunks of 2 (one pass fewer than the first call's, or as many)
    assert carried == [1] if batch_size is None else (set(carried) == {1} and len(carried) <= n_first)
    assert n_first >= 2
    assert torch.equal(first, want) and torch.equal(second, want)
    assert want.abs().amax() > 0


class AddsFromInput(nn.Module):
    """A head that adds a term computed from the input (N rows) to the features' rows."""

    def __init__(self):
        super().__init__()
        self.body = toy(2)[:4]
        self.head = toy(2)[4:]
        torch.manual_seed(5)
        self.skip = nn.Linear(2, 4).double()

    def forward(self, x):
        return self.head(self.body(x)) + self.skip(x.mean((2, 3)))


def test_ablation_carries_one_sample_only_and_batches_fall_back():
    """N = 2 after a remembered N = 1: the input's rows would not pair with the copies' rows
    (here a broadcast error); the batch takes the two-pass path, as without carrying."""
    net = AddsFromInput().eval()
    one, two = toy_input(2, n=1), toy_input(2, n=2)
    call = lambda x: gradattr.ablation_cam(net, x, 2, feature_layer="body.3", upsampling="none")  # noqa: E731
    call(one)
    sizes, h = passes(net, net.body[0])
    try:
        got = call(two)
    finally:
        h.remove()
    assert sizes == [2, 1, 1]  # capture, then per sample one pass carrying 1 + 5 copies
    assert torch.equal(got, whole_passes_only(lambda: call(two)))


class MixesRows(nn.Module):
    """A tail that subtracts the batch mean of its features (a row-mixing layer) when ``mix``."""

    def __init__(self):
        super().__init__()
        self.body = toy(2)[:4]
        self.head = toy(2)[4:]
        self.mix = True

    def forward(self, x):
        f = self.body(x)
        if self.mix:
            f = f - 0.5 * f.mean(0, keepdim=True)
        return self.head(f)


def test_ablation_never_carries_copies_through_a_tail_that_mixes_rows():
    """The first call's two-pass check refuses the tail (row 0 of the copies does not reproduce
    the captured score), so no later call carries copies: every map is the whole passes'."""
    net, x = MixesRows().eval(), toy_input(2, n=1)
    call = lambda: gradattr.ablation_cam(net, x, 2, feature_layer="body.3", upsampling="none")  # noqa: E731
    first, second = call(), call()
    want = slow(call)
    assert torch.equal(first, want) and torch.equal(second, want)
    net.mix = False
    clean = call()
    assert not torch.allclose(clean, want)  # the mixing changes the map: the test can fail


class PositionDependent(nn.Module):
    """A tail that adds a term to its last row only once ``skew`` is set (after a first call
    whose check passed): rows are no longer independent of their position in the batch."""

    def __init__(self):
        super().__init__()
        self.body = toy(2)[:4]
        self.head = toy(2)[4:]
        self.skew = False

    def forward(self, x):
        y = self.head(self.body(x))
        if self.skew:
            y = torch.cat([y[:-1], y[-1:] + 1.0])
        return y


def test_ablation_carrying_pass_is_refused_when_its_duplicate_row_differs():
    """The carrying pass's own check (its last row, the unmodified map again, equals its first
    bit for bit) catches a tail that treats rows by position; the map falls back to the
    two-pass path's."""
    net, x = PositionDependent().eval(), toy_input(2, n=1)
    call = lambda: gradattr.ablation_cam(net, x, 2, feature_layer="body.3", upsampling="none")  # noqa: E731
    call()  # remembered: the tail passed the two-pass check
    net.skew = True
    got = call()
    want = whole_passes_only(call)
    assert torch.equal(got, want)
    assert got.abs().amax() > 0


def test_grad_cam_capture_pass_is_unchanged_by_carrying():
    """Grad-CAM's capture pass runs once, on the input's rows, with or without a remembered
    carrying tail for the same network."""
    net, x = toy(2), toy_input(2, n=1)
    gradattr.ablation_cam(net, x, 1, feature_layer="3")
    sizes, h = passes(net, net[4])
    try:
        gradattr.grad_cam(net, x, 1, feature_layer="3")
    finally:
        h.remove()
    assert sizes == [1]


def test_a_prepared_call_is_frozen_and_its_copies_share_what_it_defers():
    net, x = toy(2), toy_input(2)
    call = prep.prepare_call(net, x, target=1, defer_checks=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.x = x  # type: ignore[misc]
    copy = call.with_input(x * 2)
    assert copy.deferred is call.deferred and copy.target is call.target and torch.equal(copy.x, x * 2)
    assert len(call.deferred.checks) == 1  # the input's NaN/Inf check, not read yet
    prep.read_checks(copy)
    assert call.deferred.checks == []


@pytest.mark.parametrize("make", [lambda: toy(2), lambda: nn.Sequential(nn.ReLU(), nn.Sequential(), nn.Linear(2, 3)),
                                  lambda: nn.Sequential(nn.ReLU()), lambda: nn.Linear(2, 2)],
                         ids=["toy", "nested", "none", "own"])
def test_the_first_parameter_is_the_one_parameters_gives(make):
    net = make()
    assert prep.first_parameter(net) is next(net.parameters(), None)
    shared = nn.Sequential(net, net)  # a module twice: still the first one
    assert prep.first_parameter(shared) is next(shared.parameters(), None)


def test_a_model_changed_between_calls_is_seen_by_the_next_call():
    """Nothing of the model is remembered between calls but the plan and the options: a mode,
    a dtype or a hook changed between two calls is what the second call sees and restores."""
    net, x = toy(2), toy_input(2)
    first = gradattr.grad_cam(net, x, 1, feature_layer="3")
    net.train()  # flipped between calls: the call runs in eval mode and puts it back
    assert torch.equal(gradattr.grad_cam(net, x, 1, feature_layer="3"), first)
    assert all(m.training for m in net.modules())
    net.eval()
    seen = []
    handle = net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))  # a hook added
    net.double()  # parameters changed dtype: the input is copied in the new one
    got = gradattr.grad_cam(net, x, 1, feature_layer="3")
    handle.remove()
    assert seen == [torch.float64] and got.dtype == first.dtype
    torch.testing.assert_close(got, first, rtol=1e-5, atol=1e-6)


def test_gradients_of_a_channels_first_layer_are_the_read_ones():
    """``_gradients`` hands a channels-first layer's gradients on as autograd gave them: the
    same values as reading them through the layer's reading."""
    net, x = toy(2), toy_input(2)
    call = prep.prepare_call(net, x, target=[0, 1], defer_checks=True)
    plan = capture.plan_from_options(net, "3", None, None, None)
    with call.borrowed(), torch.enable_grad():
        cap = capture.capture(call, plan, grad=True)
        (fast,) = engine._gradients(call, cap, False)
        s = call.target.scores(cap.output, call.n)
        (raw,) = capture.per_target_grads(s, cap.raw, False, ["3"], "output")
    lp = cap.plan.layers[0]
    assert lp.reading.kind == "channels_first"
    assert torch.equal(fast, lp.reading.to_ncs(raw.flatten(0, 1)).unflatten(0, raw.shape[:2]))


def test_a_layer_looked_up_by_its_path_is_the_one_get_submodule_gives():
    """``module_named`` walks ``_modules`` (the hot path looks its layers up on every call):
    every name of a ResNet, a replaced module and a missing one as ``get_submodule`` says."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=3)
    for name, _ in net.named_modules():
        assert capture.module_named(net, name) is net.get_submodule(name), name
    net.layer1[0].conv1 = nn.Conv2d(64, 64, 3, padding=1, bias=False)  # replaced: the new one
    assert capture.module_named(net, "layer1.0.conv1") is net.layer1[0].conv1
    for missing in ("layer9", "layer1.7", "layer1.0.conv1.weight", "fc.nothing"):
        with pytest.raises(AttributeError):
            net.get_submodule(missing)
        with pytest.raises(AttributeError):
            capture.module_named(net, missing)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("scalar", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_the_output_form_equals_the_full_conversion(batched, scalar, dtype, as_numpy):
    """``Layout.output`` drops N and K in one indexing op and skips a detach, a cast and a move
    that would change nothing: the same values, dtype, shape and device as the full conversion."""
    from gradattr.inputs import Layout

    torch.manual_seed(0)
    maps = torch.rand(1 if not batched else 3, 1 if scalar else 2, 5, 4, dtype=dtype, requires_grad=dtype == torch.float64)
    layout = Layout(batched, as_numpy, torch.device("cpu"), (5, 4))
    full = maps[:, 0] if scalar else maps
    full = (full if batched else full[0]).detach().float()
    got = layout.output(maps, scalar)
    if as_numpy:
        assert got.dtype == full.numpy().dtype and (got == full.numpy()).all()
    else:
        assert not got.requires_grad and got.dtype == torch.float32 and torch.equal(got, full)


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 7), (2, 1, 5, 6), (1, 2, 3, 4, 5)])
def test_the_maps_peaks_are_the_inf_norms(shape):
    """The peaks read with the checks (``abs().amax``) equal ``vector_norm(ord=inf)``'s, NaN and
    Inf included."""
    torch.manual_seed(0)
    maps = torch.randn(shape)
    flat = maps.view(-1)
    flat[0], flat[-1], flat[len(flat) // 2] = float("nan"), float("-inf"), 0.0
    if maps.ndim > 2:
        maps[-1, -1] = 0  # an all-zero map
        want = torch.linalg.vector_norm(maps.flatten(2), float("inf"), -1)
    else:
        want = maps.abs()
    torch.testing.assert_close(engine.map_peaks(maps), want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.slow  # Dynamo traces the model (seconds)
def test_hooks_run_eagerly_in_a_compiled_model_and_the_maps_are_the_eager_ones():
    """``eager`` and the thread guard call no disabled function outside ``torch.compile``; in a
    compiled model Dynamo sees ``is_compiling()`` and runs them eagerly at a graph break: every
    forward pass calls the hook, outside Dynamo, in the thread that installed it."""
    import torch._dynamo

    net, x = toy(2), toy_input(2)
    want = gradattr.grad_cam(net, x, 1, feature_layer="3")
    seen, mine = [], capture.thread_guard()
    hook = capture.eager(lambda m, i, o: seen.append((torch.compiler.is_compiling(), mine())))
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager")
    try:
        handle = net[3].register_forward_hook(hook)
        for _ in range(2):
            compiled(x)
        handle.remove()
        got = gradattr.grad_cam(compiled, x, 1, feature_layer="_orig_mod.3")
    finally:
        torch._dynamo.reset()
    assert seen == [(False, True), (False, True)]
    assert torch.equal(got, want)


# -- the fourth pass: the read on the CPU, the lone borrow, the input's copy, the target ------------
def _pending(sums):
    """Deferred checks of ``sums``, each check raising when its own sum is not finite (what the
    real checks find: NaN or Inf in the data) and recording that it ran."""
    ran: list = []

    def check(i, t):
        def run():
            ran.append(i)
            if not torch.isfinite(t).all():
                raise ValueError(f"check {i}")
        return run
    return [(t, check(i, t)) for i, t in enumerate(sums)], ran


@pytest.mark.parametrize("shape", [(4,), (2, 2), (1, 2, 2)])
@pytest.mark.parametrize("more_dtype", [torch.float32, torch.float64, torch.float16, torch.int64, None])
def test_the_read_on_the_cpu_equals_the_one_copy(more_dtype, shape):
    """``_read`` on the CPU reads each sum by ``float`` and the peaks by ``tolist``: the same
    values as the one copy, and the same checks raise (a finite sum that only overflows the
    copy's dtype made its check run there, which passes)."""
    sums = [torch.tensor(3.5), torch.tensor(1e300, dtype=torch.float64), torch.tensor(7),
            torch.tensor(-2.0, dtype=torch.float16), torch.tensor(float("nan"))]
    more = None if more_dtype is None else torch.tensor([[0.5, 2.0], [0.0, 1000.0]]).to(more_dtype).reshape(shape)
    for bad in (False, True):
        use = sums if bad else sums[:-1]
        outcomes = []
        for path in (prep._read_on_cpu, prep._read_once):
            pending, ran = _pending(use)
            call = prep.prepare_call(toy(2), toy_input(2), target=1, defer_checks=True)
            call.deferred.checks[:] = pending
            original = prep._read_on_cpu
            prep._read_on_cpu = path
            try:
                got = prep._read(call, more)
                raised = None
            except ValueError as e:
                got, raised = None, str(e)
            finally:
                prep._read_on_cpu = original
            outcomes.append((got, raised, [i for i in ran if i != 1]))  # (1: the overflow's check)
        assert outcomes[0] == outcomes[1]
        assert (outcomes[0][1] == "check 4") == bad
    if more is not None:
        pending, _ = _pending(sums[:1])
        want = more.double().reshape(-1).tolist()
        assert prep._read_on_cpu(pending, more) == [3.5] + want == prep._read_once(pending, more)


def _state(net):
    return ([m.training for m in net.modules()],
            [(k, id(b), b._version, b.clone()) for k, b in net.named_buffers()])


def _same_state(a, b):
    """The same modes, and the same buffers (names, identities, values)."""
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(
        x[:2] == y[:2] and torch.equal(x[3], y[3]) for x, y in zip(a[1], b[1]))


class _Counts(nn.Module):
    """Writes its buffer in every pass, even in eval mode, and replaces another."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("last", torch.zeros(2))

    def forward(self, t):
        self.calls += 1
        self.last = t.detach().flatten()[:2].clone()
        return t


def _borrow_scenario(other_borrow):
    """One borrow of a model whose modules write and replace buffers in eval mode, with a mode
    flipped and a module added while it runs; ``other_borrow`` held meanwhile (forcing the
    per-module records) or not (the lone borrow's two lists)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), _Counts(), nn.Dropout(0.5),
                        nn.Sequential(nn.ReLU(), _Counts()), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    net.train()
    net[4].eval()  # mixed modes
    before = _state(net)
    other = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    held = borrow.borrowed(other) if other_borrow else None
    if held is not None:
        held.__enter__()
    with borrow.borrowed(net):
        assert not any(m.training for m in net.modules())
        net(torch.randn(2, 3, 6, 6))
        net[3].train()  # a mode flipped during the call
        net.add_module("late", nn.Dropout())  # a module added during the call
    after_inner = _state(net)
    if held is not None:
        held.__exit__(None, None, None)
        assert all(m.training for m in other.modules())
    del net.late
    return before, _state(net), after_inner


def test_a_lone_borrow_restores_what_per_module_records_restore():
    """The lone borrow (flags and buffers in two lists) leaves the model as the per-module
    records do: modes, buffers' values and identities as they were (the same writes: the same
    version counters); and with nothing left borrowed."""
    alone_before, alone_after, alone_inner = _borrow_scenario(False)
    held_before, held_after, held_inner = _borrow_scenario(True)
    assert _same_state(alone_before, alone_after) and _same_state(held_before, held_after)
    assert [b[2] for b in alone_after[1]] == [b[2] for b in held_after[1]]
    assert alone_inner[0] == held_inner[0] and len(alone_inner[0]) == len(alone_after[0]) + 1
    assert borrow._SOLO == [None] and borrow._MODULES == {} and borrow._BORROWS == {}


def test_a_lone_borrow_joined_by_a_second_one_is_counted_per_module():
    """A second borrow (nested, or of a model sharing a submodule) turns the lone borrow into
    per-module records: the shared modules stay in eval mode until the last borrow ends."""
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Linear(3, 3), nn.Dropout())
    a, b = nn.Sequential(shared, nn.Dropout()).train(), nn.Sequential(shared, nn.BatchNorm1d(3)).train()
    first = borrow.borrowed(a)
    first.__enter__()
    assert first.borrows is None  # alone: no records
    with borrow.borrowed(a):  # nested: the same model again
        assert first.borrows is not None
    assert not any(m.training for m in a.modules())  # the outer borrow still runs
    second = borrow.borrowed(b)
    second.__enter__()
    first.__exit__(None, None, None)
    assert a[1].training and not shared.training and not shared[1].training and not b[1].training
    second.__exit__(None, None, None)
    assert all(m.training for m in a.modules()) and all(m.training for m in b.modules())
    assert borrow._SOLO == [None] and borrow._MODULES == {}


@pytest.mark.parametrize("form", ["contiguous", "transposed", "expanded", "channels_last", "grad",
                                  "double", "half", "numpy"])
def test_the_private_copy_is_what_to_copy_makes(form):
    """The input's private copy by ``clone`` (same dtype and device) is what
    ``to(copy=True)`` makes: values, dtype, strides; never the user's storage; its deferred
    NaN/Inf sum is the sum of the copy."""
    from gradattr import inputs

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4)
    given = {"contiguous": x, "transposed": x.transpose(2, 3), "expanded": x[:1].expand(2, 3, 5, 4),
             "channels_last": x.contiguous(memory_format=torch.channels_last),
             "grad": x.clone().requires_grad_(True), "double": x.double(), "half": x.half(),
             "numpy": x.numpy()}[form]
    net = nn.Sequential(nn.Conv2d(3, 2, 1))
    checks: list = []
    t, layout = inputs.prepare(given, net, None, torch.device("cpu"), torch.float32, checks=checks)
    ref = torch.as_tensor(given).detach().to(device="cpu", dtype=torch.float32, copy=True)
    assert torch.equal(t, ref) and t.dtype == ref.dtype and t.stride() == ref.stride()
    assert not t.requires_grad and t.untyped_storage().data_ptr() != torch.as_tensor(given).untyped_storage().data_ptr()
    assert torch.equal(checks[0][0], t.sum(dtype=torch.float32))
    assert layout == inputs.Layout(True, form == "numpy", torch.device("cpu"), (5, 4) if form != "transposed" else (4, 5))


@pytest.mark.parametrize("k", [0, 2])
def test_a_class_targets_score_is_the_slice_of_its_class(k):
    """One class index: the remembered ``Target``, its class read without the device, and its
    score the view ``y[:, k:k + 1]`` (``narrow``), with the same gradient."""
    from gradattr import targets

    t = targets.resolve_target(k, None, None, 2)
    assert t is targets.resolve_target(k, None, None, 2) and t.kind == "index" and t.scalar
    assert t.top_class == k and torch.equal(t.classes, torch.tensor([k]))
    y = torch.randn(2, 4, requires_grad=True)
    checks: list = []
    s = t.scores(y, 2, checks=checks)
    want = y[:, k:k + 1]
    assert torch.equal(s, want) and type(s.grad_fn) is type(want.grad_fn)
    assert torch.equal(torch.autograd.grad(s.sum(), y)[0], torch.autograd.grad(want.sum(), y)[0])
    assert torch.equal(checks[0][0], want.detach().sum())


@pytest.mark.parametrize("fill,expect", [(0.5, None), (-0.0, "warn"), (float("inf"), "raise"),
                                         (float("nan"), "raise")])
def test_maps_that_are_fine_return_before_the_search_for_what_is_wrong(fill, expect):
    """``_check_maps`` returns at once when every peak is finite and none is zero (-0.0 counts
    as zero, NaN and Inf as not finite): what the search for the bad and the zero maps says."""
    import warnings

    net, x = toy(2), toy_input(2)
    call = prep.prepare_call(net, x, target=[0, 1], defer_checks=True)
    plan = capture.plan_from_options(net, "3", None, None, None)
    maps = torch.rand(2, 2, 4, 4) + 0.1
    maps[1, 0] = fill
    acts, grads = [torch.ones(2, 3, 4, 4)], [torch.zeros(2, 2, 3, 4, 4)]
    opts = registry.get("grad_cam").validate({})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if expect == "raise":
            with pytest.raises(gradattr.GradattrError, match="sample 1, target 0 .* NaN or Inf"):
                engine._check_maps(registry.get("grad_cam"), maps, ["3"], call, plan, opts, (acts, grads))
        else:
            engine._check_maps(registry.get("grad_cam"), maps, ["3"], call, plan, opts, (acts, grads))
    said = [str(w.message) for w in caught]
    assert (said == []) == (expect != "warn")
    if expect == "warn":
        assert "1 of 4 maps are all zero (first: sample 1, target 0)" in said[0]


# -- the fifth pass: the one-layer capture pass -----------------------------------------------
def _one_layer_nets():
    """(name, network, input, feature layer, feature_call): a layer followed by an in-place
    ReLU (the clone protects the capture), a module called twice (its first or second call),
    a reentrant checkpoint in the tail (the pass falls back to recording it all)."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    inplace = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=True),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    relu = nn.ReLU()
    twice = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), relu, nn.Conv1d(4, 4, 3, padding=1), relu,
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))

    class Reentrant(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = toy(2)[:4], toy(2)[4:]

        def forward(self, x):
            return checkpoint(self.head, self.body(x), use_reentrant=True)

    return [("in-place ReLU after the layer", inplace, torch.randn(2, 2, 6, 6), "0", None),
            ("a module's first call", twice, torch.randn(2, 2, 9), "1", 0),
            ("a module's second call", twice, torch.randn(2, 2, 9), "1", 1),
            ("reentrant checkpoint in the tail", Reentrant(), toy_input(2), "body.3", None)]


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")  # (the reentrant net)
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("name,net,x,layer,call_index", _one_layer_nets(), ids=[c[0] for c in _one_layer_nets()])
def test_the_one_layer_pass_equals_the_general_pass(name, net, x, layer, call_index, grad):
    """A known plan of one layer, the output scored: ``capture_one`` (taken: counted) captures
    the same tensor, leaf or not, and the same output as the general pass, and the gradients
    through it are the same, bit for bit (through a reentrant segment, the same refusal)."""
    import gradattr.capture.passes as capture_passes

    net.eval()
    call = prep.prepare_call(net, x, target=1)
    asked = capture.plan_from_options(net, layer, None, None, call_index)
    taken: list = []
    fast = capture_passes.capture_one

    def counted(*a):
        taken.append(1)
        return fast(*a)

    def general(c, plan, g, xx):
        return capture_passes._capture_planned(c, plan, g, False, False, xx)

    def run(one):
        with call.borrowed(), torch.enable_grad(), pytest.MonkeyPatch.context() as mp:
            mp.setattr(capture_passes, "capture_one", one)
            cap = capture.capture(call, plan, grad=grad)
            try:
                g = engine._gradients(call, cap, False)[0] if grad else None
            except gradattr.GradattrError as e:  # (autograd.grad through a reentrant segment)
                g = str(e)
        return cap, g

    with call.borrowed(), torch.enable_grad():
        plan = capture.capture(call, asked, grad=grad).plan  # the first pass resolves the plan
    assert plan.known
    (got, g_got), (want, g_want) = run(counted), run(general)
    assert taken == [1]
    assert got.plan is want.plan and got.reduction_name == want.reduction_name == "output"
    assert got.raw[0].requires_grad == want.raw[0].requires_grad == grad
    assert torch.equal(got.raw[0], want.raw[0]) and torch.equal(got.output, want.output)
    assert (got.raw[0] < 0).any() == (want.raw[0] < 0).any()
    if isinstance(g_want, str):
        assert g_got == g_want and "reentrant" in g_want
    elif grad:
        assert torch.equal(g_got, g_want)


def test_the_one_layer_pass_refuses_a_layer_that_did_not_run():
    """A remembered layer that this input does not reach: the same error as the general pass."""
    import gradattr.capture.passes as capture_passes

    net, x = toy(2), toy_input(2)
    call = prep.prepare_call(net, x, target=1)
    with call.borrowed(), torch.enable_grad():
        plan = capture.capture(call, capture.plan_from_options(net, "3", None, None, None), grad=True).plan
    skip = capture.Plan((dataclasses.replace(plan.layers[0], call=1),), None)  # "3" runs once
    with call.borrowed(), torch.enable_grad():
        with pytest.raises(gradattr.GradattrError, match="ran 1 times"):
            capture_passes.capture_one(call, skip, True, call.x)
        with pytest.raises(gradattr.GradattrError, match="ran 1 times"):
            capture_passes._capture_planned(call, skip, True, False, False, call.x)


class _WritesUnderNoGrad(nn.Module):
    """Doubles its input in place where autograd does not see it (the version counter does)."""

    def forward(self, t):
        with torch.no_grad():
            t.mul_(2)
        return t


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("writer", ["in-place ReLU", "in-place under no_grad"])
def test_a_tail_that_writes_the_captured_tensor_gets_a_clone_from_then_on(writer, grad):
    """The one-layer pass gives the network the captured tensor itself; a tail that writes it
    (refused by autograd on the leaf, or seen by its version counter) makes the pass run again
    as the general one, which clones, and the plan is remembered: the next call clones at once.
    Captures, outputs and gradients equal the general pass's, and the captured tensor is the
    layer's output, not what the tail wrote."""
    import gradattr.capture.passes as capture_passes

    torch.manual_seed(0)
    tail = nn.ReLU(inplace=True) if writer == "in-place ReLU" else _WritesUnderNoGrad()
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), tail, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()
    x = torch.randn(2, 2, 6, 6)
    call = prep.prepare_call(net, x, target=1)
    want_acts = net[0](x).detach()
    with call.borrowed(), torch.enable_grad():
        plan = capture.capture(call, capture.plan_from_options(net, "0", None, None, None), grad=grad).plan
        general = capture_passes._capture_planned(call, plan, grad, False, False, call.x)
        g_want = engine._gradients(call, general, False)[0] if grad else None
        assert net not in capture_passes.TAIL_WRITES
        passes_run: list = []
        with pytest.MonkeyPatch.context() as mp:
            real = capture_passes._capture_planned
            mp.setattr(capture_passes, "_capture_planned", lambda *a, **k: passes_run.append(1) or real(*a, **k))
            caps = [capture.capture(call, plan, grad=grad) for _ in range(2)]
    assert passes_run == [1]  # the first call ran again as the general pass; the second cloned at once
    assert plan in capture_passes.TAIL_WRITES[net]
    for cap in caps:
        assert torch.equal(cap.raw[0], want_acts) and torch.equal(cap.raw[0], general.raw[0])
        assert torch.equal(cap.output, general.output)
        if grad:
            assert torch.equal(engine._gradients(call, cap, False)[0], g_want)


def test_a_tail_without_writes_gets_the_captured_tensor_and_fails_as_it_would():
    """A tail that reads the captured tensor only: no clone, nothing remembered; a tail that
    fails for another reason fails with its own error, nothing remembered either."""
    import gradattr.capture.passes as capture_passes

    net, x = toy(2), toy_input(2)
    call = prep.prepare_call(net, x, target=1)
    given: list = []
    h = net[4].register_forward_pre_hook(lambda m, i: given.append(i[0]))
    with call.borrowed(), torch.enable_grad():
        plan = capture.capture(call, capture.plan_from_options(net, "3", None, None, None), grad=True).plan
        given.clear()
        cap = capture.capture(call, plan, grad=True)
    h.remove()
    assert given[0] is cap.raw[0] and net not in capture_passes.TAIL_WRITES

    def fail(m, i):
        raise RuntimeError("the tail's own failure")
    h = net[4].register_forward_pre_hook(fail)
    try:
        with call.borrowed(), torch.enable_grad(), pytest.raises(RuntimeError, match="own failure"):
            capture.capture(call, plan, grad=True)
    finally:
        h.remove()
    assert net not in capture_passes.TAIL_WRITES


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 7), (2, 1, 5, 6)])
def test_the_peaks_of_rectified_maps_skip_the_absolute_value(shape):
    """Maps that passed a ReLU (NaN, +Inf, -0.0 and all-zero maps among them): ``amax`` alone
    gives the peaks ``abs().amax`` gives, bit for bit (-0.0 is a zero either way)."""
    torch.manual_seed(0)
    maps = torch.randn(shape)
    flat = maps.view(-1)
    flat[0], flat[-1], flat[len(flat) // 2], flat[1] = float("nan"), float("inf"), -0.0, float("-inf")
    if maps.ndim > 2:
        maps[-1, -1] = -1.0  # all zero after the ReLU
    maps = torch.relu(maps)
    got, want = engine.map_peaks(maps, rectified=True), engine.map_peaks(maps)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert [v == 0 for v in got.flatten().tolist()] == [v == 0 for v in want.flatten().tolist()]


@pytest.mark.parametrize("opts", [{"relu": False}, {"aug_smooth": True}])
def test_maps_not_rectified_keep_the_absolute_value_in_their_peaks(opts):
    """Signed maps (``relu=False``) or maps averaged over augmented copies: a map at -Inf is
    refused as not finite (its peak read through ``abs``), as before the rectified shortcut."""
    net, x = toy(2), toy_input(2)
    call = prep.prepare_call(net, x, target=[0, 1], defer_checks=True)
    plan = capture.plan_from_options(net, "3", None, None, None)
    maps = torch.rand(2, 2, 4, 4) + 0.1
    maps[1, 0, 0, 0] = float("-inf")
    valid = registry.get("grad_cam").validate(opts)
    acts, grads = [torch.ones(2, 3, 4, 4)], [torch.zeros(2, 2, 3, 4, 4)]
    with pytest.raises(gradattr.GradattrError, match="sample 1, target 0 .* NaN or Inf"):
        engine._check_maps(registry.get("grad_cam"), maps, ["3"], call, plan, valid, (acts, grads))


@pytest.mark.parametrize("layer", ["layer4.1.bn2", "layer3.0.bn1", "layer4"])
def test_a_resnets_maps_through_the_one_layer_pass_equal_the_general_passs(layer):
    """A torchvision ResNet-18, whose blocks write a batch norm's output in place (``out +=
    identity``, ``ReLU(inplace=True)``): the maps of two calls through the one-layer pass (the
    first seeing the write and running again with a clone) equal the general pass's (signed maps,
    ``relu=False``: nothing hidden by the ReLU)."""
    import torchvision

    import gradattr.capture.passes as capture_passes

    torch.manual_seed(0)
    net, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(capture_passes, "capture_one",
                   lambda c, plan, g, xx: capture_passes._capture_planned(c, plan, g, False, False, xx))
        want = gradattr.grad_cam(net, x, 1, feature_layer=layer, relu=False)
    got = [gradattr.grad_cam(net, x, 1, feature_layer=layer, relu=False) for _ in range(2)]
    assert all(torch.equal(g, want) for g in got)
    assert (net in capture_passes.TAIL_WRITES) == (layer != "layer4")
