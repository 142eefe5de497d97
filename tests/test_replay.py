"""Replaying the modules before the feature layer in Ablation-CAM's later passes (issue 27, goal 1).

Each case runs Ablation-CAM with replaying on and off (``replay.ENABLED``) on the same chunks
(``batch_size``) and asks for the same map bit for bit, and for the naive reference's (every
channel zeroed in a whole pass of its own, tests/references.py); and it counts how often the
module before the feature layer really ran (its own counter), which says whether the later
passes replayed it. No timing here: benchmarks/bench_floor.py measures the speed.
"""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import gradattr
from gradattr import budget
from gradattr.capture import replay

from references import naive_maps


class Stem(nn.Module):
    """A convolution that counts how often its forward really runs."""

    def __init__(self, c_in=2, c_out=6):
        super().__init__()
        self.conv, self.runs = nn.Conv2d(c_in, c_out, 3, padding=1), 0

    def forward(self, x):
        self.runs += 1
        return self.conv(x)


class Skip(nn.Module):
    """Stem -> in-place ReLU -> ``block`` (the feature layer) -> head that also reads the stem's
    output (a skip connection from before the feature layer into the layers after it), with
    functional ops on the input in ``forward`` (each pass makes a new tensor there)."""

    def __init__(self, c=12):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.act = Stem(2, 6), nn.ReLU(inplace=True)
        self.block = nn.Sequential(nn.Conv2d(6, c, 3, padding=1, stride=2), nn.ReLU())
        self.skip = nn.Linear(6, 4)
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        s = self.act(self.stem(x * 2 - 1))
        f = self.block(s)
        return self.fc(f.mean((2, 3))) + self.skip(s.mean((2, 3)))


class Counter(Stem):
    """A stem that writes a buffer in eval mode (a step counter): never replayed."""

    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.steps += 1
        return super().forward(x)


def x_of(n=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 10, 10, generator=g, dtype=torch.float64)


def ablation(net, x, batch_size=3, enabled=True):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(replay, "ENABLED", enabled)
        return gradattr.ablation_cam(net, x, [1, 3], feature_layer="block", upsampling="none",
                                     batch_size=batch_size, relu=False)


@pytest.mark.parametrize("n", [1, 2])
def test_replayed_passes_give_the_map_of_passes_that_run_everything(n):
    net, x = Skip().double().eval(), x_of(n)
    first = ablation(net, x)  # (a first call also observes the input's reading: more passes)
    assert torch.equal(first, ablation(net, x, enabled=False))
    net.stem.runs = 0
    got = ablation(net, x)
    replayed_runs, net.stem.runs = net.stem.runs, 0
    want = ablation(net, x, enabled=False)
    assert torch.equal(got, want)
    # 12 channels, chunks of 3 copies. Without replaying the stem runs in every pass: for
    # N = 1 the capture pass carrying 2 copies, then 4 passes; for N = 2 the capture pass and
    # 4 passes per sample. Replaying: the capture pass, plus a recording pass per sample for N = 2
    assert (replayed_runs, net.stem.runs) == ((1, 5) if n == 1 else (3, 9))
    ref = naive_maps("ablation_cam", net, x, [1, 3], layer="block").float()
    torch.testing.assert_close(got.clamp(min=0).float(), ref, rtol=1e-5, atol=1e-6)  # (ReLU)


def test_a_module_that_writes_a_buffer_is_not_replayed():
    net, x = Skip().double().eval(), x_of()
    net.stem = Counter().double()
    torch.manual_seed(0)
    ablation(net, x)
    net.stem.runs = 0
    got = ablation(net, x)
    assert net.stem.runs == 5  # the carrying capture pass and 4 more chunks: it ran every time
    assert int(net.stem.steps) == 0  # (its buffer put back by the call, as before)
    assert torch.equal(got, ablation(net, x, enabled=False))


def test_a_module_called_after_the_feature_layer_runs_there():
    """One ReLU module before and after the feature layer: its later call is not replayed."""

    class Shared(Skip):
        def forward(self, x):
            s = self.act(self.stem(x))
            return self.fc(self.act(self.block(s)).mean((2, 3)))

    net, x = Shared().double().eval(), x_of()
    for _ in range(2):
        got = ablation(net, x)
        assert torch.equal(got, ablation(net, x, enabled=False))
    ref = naive_maps("ablation_cam", net, x, [1, 3], layer="block").float()
    torch.testing.assert_close(got.clamp(min=0).float(), ref, rtol=1e-5, atol=1e-6)  # (ReLU)


def test_a_replayed_pass_that_fails_its_check_runs_again_without_replaying(monkeypatch):
    """The recorded output of the stem corrupted behind its version counter (``.data``): the
    skip connection then feeds the head wrong values, the unmodified copy's score differs from
    the captured one, and the chunk runs again with the stem."""
    net, x = Skip().double().eval(), x_of()
    want = ablation(net, x, enabled=False)
    settle = replay.Replay.settle

    def corrupt(self):
        settle(self)
        for calls in self.calls.values():
            for c in calls:
                if c.give is not None and c.out is not None and c.out.shape[1] == 6:  # the stem's
                    (c.kept if c.give == "copy" else c.out).data.mul_(3)
    monkeypatch.setattr(replay.Replay, "settle", corrupt)
    net.stem.runs = 0
    got = ablation(net, x)
    assert torch.equal(got, want)
    # the carrying capture pass (it records), the failed replayed pass's rerun and 3 more passes
    assert net.stem.runs == 5


def test_another_threads_pass_runs_the_modules_own_forward():
    """While a pass replays, another thread's forward pass of the same model computes (and
    does not count as one of the replaying thread's calls: that one still replays)."""
    net, x, other = Skip().double().eval(), x_of(), x_of(seed=5)
    with torch.no_grad():
        expected = net(other)
    ablation(net, x)
    seen, threads = [], []

    def in_another_thread(m, i):  # (before the stem's forward, replayed or not, in the main thread)
        threads.append(threading.current_thread() is threading.main_thread())
        if threads[-1]:
            t = threading.Thread(target=lambda: seen.append(net(other).detach()))
            t.start()
            t.join()
    h = net.stem.register_forward_pre_hook(in_another_thread)
    net.stem.runs = 0
    try:
        with torch.no_grad():
            ablation(net, x)
    finally:
        h.remove()
    # 5 passes in the main thread (the carrying capture pass and 4 replayed), each with one
    # other thread's pass beside it; the stem really ran once in the main thread and 5 times
    # in the others
    assert threads == [True, False] * 5 and net.stem.runs == 1 + 5
    assert len(seen) == 5 and all(torch.equal(s, expected) for s in seen)


def test_the_model_keeps_its_forward_methods():
    net, x = Skip().double().eval(), x_of()
    own = net.block.forward  # a bound method put on the instance by the user

    def instance_forward(t):
        instance_forward.calls += 1
        return own(t)
    instance_forward.calls = 0
    net.block.forward = instance_forward
    for _ in range(2):
        got = ablation(net, x)
    assert net.block.__dict__["forward"] is instance_forward
    assert all("forward" not in m.__dict__ for m in net.modules() if m is not net.block)
    del net.block.forward
    assert torch.equal(got, ablation(net, x, enabled=False))
    assert instance_forward.calls >= 2  # the user's forward is what ran where it was not replayed


def fc_rows(net, fn):
    """The rows of every pass through ``net.fc`` while ``fn()`` runs."""
    rows: list = []
    h = net.fc.register_forward_pre_hook(lambda m, i: rows.append(i[0].shape[0]))
    try:
        fn()
    finally:
        h.remove()
    return rows


@pytest.mark.parametrize("n", [1, 2])
def test_large_copies_come_in_small_chunks_when_replaying(n):
    """Rows of 1.2 MiB, 150 channels: where a sample's passes replay (or record) the stem, its
    copies come in chunks of SMALL_ROWS; N = 1 from the second call on the capture pass carries
    SMALL_ROWS - 1 copies (a fresh buffer of hundreds of MB is slow to fill)."""
    assert budget.small_chunk(2**20, torch.device("cpu")) == budget.SMALL_ROWS
    net, x = Skip(c=150).double().eval(), torch.randn(n, 2, 64, 64, dtype=torch.float64)
    ablation(net, x, batch_size=None)
    got = []
    rows = fc_rows(net, lambda: got.append(ablation(net, x, batch_size=None)))
    s = budget.SMALL_ROWS
    # (a pass that neither replays nor checks the tail-only path leaves out the unmodified copy:
    # N = 2, sample 1's recording pass)
    assert rows == ([s + 1, s + 1, 150 - 2 * s + 2] if n == 1 else
                    [2, s + 1, s + 1, 150 - 2 * s + 1, s, s + 1, 150 - 2 * s + 1])
    want = ablation(net, x, batch_size=None, enabled=False)
    torch.testing.assert_close(got[0], want, rtol=1e-10, atol=1e-12)


def test_a_network_that_does_not_replay_keeps_the_budgets_chunks():
    """The stem writes a buffer: the first call's recording pass (small) finds nothing to replay,
    its other copies come in one chunk, and the next call's capture pass carries them all."""
    net, x = Skip(c=150).double().eval(), torch.randn(1, 2, 64, 64, dtype=torch.float64)
    net.stem = Counter().double()
    first = fc_rows(net, lambda: ablation(net, x, batch_size=None))
    assert first[-2:] == [budget.SMALL_ROWS + 1, 150 - budget.SMALL_ROWS]  # (the second: no check)
    assert fc_rows(net, lambda: ablation(net, x, batch_size=None)) == [152]


class Shift(nn.Module):
    """``x += 0.5`` in place (not idempotent, unlike an in-place ReLU: a chunk written by it
    and handed over again would score otherwise)."""

    def forward(self, x):
        return x.add_(0.5)


class InPlaceTail(nn.Module):
    """The layers after the feature layer start with an in-place op: they write the chunk of
    copies they are handed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = Stem(2, 6)
        self.block = nn.Conv2d(6, 12, 3, padding=1)
        self.tail = nn.Sequential(Shift(), nn.ReLU(), nn.Conv2d(12, 4, 1), nn.AdaptiveMaxPool2d(1),
                                  nn.Flatten(), nn.Linear(4, 5))

    def forward(self, x):
        return self.tail(self.block(torch.relu(self.stem(x))))


@pytest.mark.parametrize("make", [Skip, InPlaceTail], ids=["Skip", "InPlaceTail"])
@pytest.mark.parametrize("n", [1, 2])
def test_later_chunks_put_back_the_last_chunks_channels(make, n):
    """A later chunk of copies is the last one with its zeroed channels put back and its own
    zeroed, unless the layers after the feature layer wrote it: the map of chunks filled whole,
    bit for bit, and the naive reference's."""
    from gradattr.methods import ablation as module
    net, x = make().double().eval(), x_of(n)
    for _ in range(2):  # (the second call: N = 1's capture pass carries the first chunk)
        got = ablation(net, x)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(module, "PATCH", False)
            assert torch.equal(got, ablation(net, x))
    torch.testing.assert_close(got.double(), naive_ablation(net, x, [1, 3]), rtol=1e-5, atol=1e-6)  # (float32 maps)


def naive_ablation(net, x, targets, layer=None, at=0):
    """Ablation-CAM without ReLU, channel by channel in whole passes, each with its own copy of
    the feature map (call ``at`` of ``layer``, default ``net.block``; tests/references.py's
    records the map the network continues with, which an in-place op after the layer writes)."""
    def run(k=None):
        seen, calls = [], []

        def hook(m, i, o):
            calls.append(1)
            if len(calls) != at + 1:
                return None
            seen.append(o.clone())
            if k is not None:
                o = o.clone()
                o[:, k] = 0
                return o
            return o.clone()
        h = (net.block if layer is None else layer).register_forward_hook(hook)
        try:
            with torch.no_grad():
                return net(x)[:, targets], seen[0]
        finally:
            h.remove()
    y, a = run()
    maps = []
    for k in range(a.shape[1]):
        w = (y - run(k)[0]) / y  # (N, K)
        maps.append(w[:, :, None, None] * a[:, None, k])
    return torch.stack(maps).sum(0)


def test_nothing_is_recorded_when_one_pass_takes_every_copy(monkeypatch):
    """12 channels and the budget's chunk: the first call's one tail-only pass and the later
    calls' carrying capture pass take every copy, so no Replay is made (recording costs a copy
    of each output before the feature layer)."""
    made = []
    init = replay.Replay.__init__

    def counting(self, *args):
        made.append(self)
        init(self, *args)
    monkeypatch.setattr(replay.Replay, "__init__", counting)
    net, x = Skip().double().eval(), x_of()
    for _ in range(3):
        ablation(net, x, batch_size=None)
    assert made == []
    ablation(net, x, batch_size=3)  # (4 passes: the first records)
    assert len(made) == 1


class ListNet(nn.Module):
    """Blocks in a ``ModuleList`` called in a loop with a keyword (as EfficientNet's), a shared
    activation whose second call is the feature layer, and a head that reads the batch size
    from the input (``view(bs, -1)``): Ablation-CAM falls back to whole passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.stem, self.act = Stem(2, 6), nn.SiLU()
        self.blocks = nn.ModuleList([Scaled(6, 6), Scaled(6, 12)])
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        bs = x.size(0)
        h = self.act(self.stem(x))
        for j, block in enumerate(self.blocks):
            h = block(h, scale=1.0 + j)
        return self.fc(self.act(h).mean((2, 3)).view(bs, -1))


class Scaled(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv, self.runs = nn.Conv2d(c_in, c_out, 3, padding=1), 0

    def forward(self, x, scale=1.0):
        self.runs += 1
        return self.conv(x) * scale


def test_whole_passes_replay_the_layers_before_the_feature_layer():
    """The tail-only path refused, whole passes of the same size replay the modules before the
    feature layer (call 1 of ``act``; the ``ModuleList``'s members): the map of passes that run
    everything, bit for bit, and the naive reference's."""
    net, x = ListNet().double().eval(), x_of()
    opts = dict(feature_layer="act", feature_call=1, upsampling="none", relu=False, batch_size=3)
    gradattr.ablation_cam(net, x, [1, 3], **opts)
    net.blocks[1].runs = 0
    got = gradattr.ablation_cam(net, x, [1, 3], **opts)
    runs, net.blocks[1].runs = net.blocks[1].runs, 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(replay, "ENABLED", False)
        want = gradattr.ablation_cam(net, x, [1, 3], **opts)
    assert torch.equal(got, want)
    # the capture pass, the failed check of the tail-only path, then 4 whole passes of 3 copies:
    # the first records (it carries the unmodified map too), the other 3 replay
    assert (runs, net.blocks[1].runs) == (3, 6)
    torch.testing.assert_close(got.double(), naive_ablation(net, x, [1, 3], net.act, at=1),
                               rtol=1e-5, atol=1e-6)


def test_two_threads_replaying_one_model_leave_its_forward_methods_alone():
    """Two calls replaying the same model at once (their passes overlap: the first pass of each
    waits for the other's at the head) get the single-threaded map, and afterwards no module
    keeps a patched ``forward`` (one pass putting back what the other had patched in would
    leave it there for good)."""
    net, x = Skip().double().eval(), x_of()
    want = ablation(net, x)
    barrier, waited, got = threading.Barrier(2, timeout=20), set(), {}

    def meet(m, i):
        me = threading.get_ident()
        if me not in waited and threading.current_thread() is not threading.main_thread():
            waited.add(me)
            barrier.wait()
    h = net.fc.register_forward_pre_hook(meet)
    try:
        threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, ablation(net, x))) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        h.remove()
    assert len(got) == 2 and all(torch.equal(g, want) for g in got.values())
    assert all("forward" not in m.__dict__ for m in net.modules())


class ListSkip(ListNet):
    """ListNet whose head also reads the stem's output (a skip past the feature layer)."""

    def __init__(self):
        super().__init__()
        self.skip = nn.Linear(6, 4)

    def forward(self, x):
        bs = x.size(0)
        s = self.act(self.stem(x))
        h = s
        for j, block in enumerate(self.blocks):
            h = block(h, scale=1.0 + j)
        return self.fc(self.act(h).mean((2, 3)).view(bs, -1)) + self.skip(s.mean((2, 3)))


def test_a_replayed_whole_pass_that_fails_its_check_runs_again(monkeypatch):
    """Whole passes with the stem's recorded output corrupted behind its version counter: the
    skip feeds the head wrong values, the unmodified copy's score differs from the captured
    one, and the pass runs again with the modules before the feature layer."""
    net, x = ListSkip().double().eval(), x_of()
    opts = dict(feature_layer="act", feature_call=1, upsampling="none", relu=False, batch_size=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(replay, "ENABLED", False)
        want = gradattr.ablation_cam(net, x, [1, 3], **opts)
    settle = replay.Replay.settle

    def corrupt(self):
        settle(self)
        for calls in self.calls.values():
            for c in calls:
                if c.give is not None and isinstance(c.out, torch.Tensor) and c.out.shape[1] == 6:
                    (c.kept if c.give == "copy" else c.out).data.mul_(3)
    monkeypatch.setattr(replay.Replay, "settle", corrupt)
    net.blocks[1].runs = 0
    got = gradattr.ablation_cam(net, x, [1, 3], **opts)
    assert torch.equal(got, want)
    # the capture pass, the failed check of the tail-only path, the recording whole pass, the
    # replayed one that fails its check and its rerun, then 2 more (no longer replayed)
    assert net.blocks[1].runs == 6


def test_patches_of_two_threads_put_the_forward_back_in_either_order():
    """Two threads' patches of one model, installed one after the other and removed in the same
    order (the order in which a second thread's patch once saved the first one's and put it
    back for good), and in the other order: no module keeps a patched ``forward``."""
    for first_out in (0, 1):
        net = Skip().double().eval()
        reps = [replay.replay_for(net, "block", 0, lambda: True) for _ in range(2)]
        installed, removable = [threading.Event() for _ in range(2)], [threading.Event() for _ in range(2)]
        done = [threading.Event() for _ in range(2)]

        def worker(k):
            if k == 1:
                assert installed[0].wait(20)
            patch = reps[k].install()
            installed[k].set()
            assert removable[k].wait(20)
            patch.remove()
            done[k].set()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        assert installed[1].wait(20)
        removable[first_out].set()
        assert done[first_out].wait(20)
        removable[1 - first_out].set()
        for t in threads:
            t.join()
        assert all("forward" not in m.__dict__ for m in net.modules())
