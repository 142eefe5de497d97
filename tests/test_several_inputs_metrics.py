"""Several inputs (a tuple ``x`` run as ``net(*x)``, ``forward_kwargs``, ``explain``) through the
metrics, ``compare`` and ``explain_dataset``.

The oracle is a one-input model that closes over the other inputs (``Bound``): it runs the network
on the explained input only, so it uses none of gradattr's tuple code. A metric on the tuple must
equal the same metric on the bound model, sample by sample.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import gradattr
from references import VQA  # the shared two-input toy model
from gradattr import GradattrError
from gradattr import metrics as M



class Bound(nn.Module):
    """The image branch alone: the question (and mask) of one sample fixed, broadcast over the rows."""

    def __init__(self, net: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None):
        super().__init__()
        self.net, self.ids, self.mask = net, ids, mask

    def forward(self, image):
        return self.net(image, self.ids, self.mask)


def vqa_data(n: int = 3, seed: int = 3):
    torch.manual_seed(seed)
    net = VQA().eval()
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 3, 6, 5, generator=g)
    ids = torch.randint(1, 20, (n, 7), generator=g)
    return net, image, ids


def state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}, [m.training for m in net.modules()]


def cam_of(net, image, ids, target=1):
    return gradattr.grad_cam(net, (image, ids), target, feature_layer="conv")


METRICS = {
    "deletion": lambda net, x, m, t, **kw: M.deletion(net, x, m, t, steps=8, **kw).scores,
    "insertion": lambda net, x, m, t, **kw: M.insertion(net, x, m, t, steps=8, **kw).scores,
    "confidence_change": lambda net, x, m, t, **kw: M.confidence_change(net, x, m, t, **kw).masked,
    "road": lambda net, x, m, t, **kw: M.road(net, x, m, t, fractions=(0.3, 0.7), **kw).morf,
}


@pytest.mark.parametrize("metric", list(METRICS))
def test_a_constant_second_input_gives_the_metric_of_the_bound_one_input_model(metric):
    """The same question for every sample: one bound model explains the whole batch."""
    net, image, ids = vqa_data()
    ids = ids[:1].expand(3, -1)
    maps = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(0))
    fn = METRICS[metric]
    got = fn(net, (image, ids), maps, [[1], [2], [0]])
    want = fn(Bound(net, ids[:1]), image, maps, [[1], [2], [0]])
    assert got.shape == want.shape == ((3, 9) if metric in ("deletion", "insertion") else
                                       (3, 2) if metric == "road" else (3,))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert not torch.equal(want[0], want[1])  # the samples differ: a mix-up of rows would show


def test_other_inputs_and_batched_forward_kwargs_follow_each_perturbed_copy():
    """Each sample its own question and mask: the metric of sample i is that of the model bound to them."""
    net, image, ids = vqa_data()
    mask = torch.tensor([[1.0] * 4 + [0.0] * 3, [1.0] * 7, [0.0] * 2 + [1.0] * 5])
    maps = cam_of(net, image, ids)
    before, image0, ids0 = state(net), image.clone(), ids.clone()
    curve = M.deletion(net, (image, ids), maps, 1, steps=6, batch_size=5, forward_kwargs={"mask": mask})
    drop = M.confidence_change(net, (image, ids), maps, 1, forward_kwargs={"mask": mask}).drop
    for i in range(3):
        one = Bound(net, ids[i:i + 1], mask[i:i + 1])
        torch.testing.assert_close(curve.scores[i], M.deletion(one, image[i], maps[i], 1, steps=6).scores)
        torch.testing.assert_close(drop[i], M.confidence_change(one, image[i], maps[i], 1).drop)
    without = M.deletion(net, (image, ids), maps, 1, steps=6).scores
    assert not torch.allclose(without[0], curve.scores[0])  # the mask reached the network
    after = state(net)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1] == after[1]
    assert torch.equal(image, image0) and torch.equal(ids, ids0)


def test_explain_picks_the_perturbed_input_and_a_baseline_array_is_that_inputs():
    """Two images: explain=1 perturbs the second only (against a model bound to the first)."""
    torch.manual_seed(0)
    branch = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU())
    head = nn.Linear(6, 3)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = branch, nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()), head

        def forward(self, first, second):
            return self.head(torch.cat([self.a(first).mean((2, 3)), self.b(second).mean((2, 3))], 1))

    net = Two().eval()
    g = torch.Generator().manual_seed(1)
    first, second = torch.randn(2, 2, 5, 5, generator=g), torch.randn(2, 2, 4, 6, generator=g)
    maps = torch.rand(2, 4, 6, generator=g)
    base = torch.randn(2, 2, 4, 6, generator=g)
    got = M.insertion(net, (first, second), maps, 0, explain=1, baseline=base, steps=4).scores
    for i in range(2):
        want = M.insertion(_Fn(net, first[i:i + 1]), second[i:i + 1], maps[i:i + 1], 0,
                           baseline=base[i:i + 1], steps=4).scores
        torch.testing.assert_close(got[i:i + 1], want)
    with pytest.raises(GradattrError, match=r"^maps: .*\(2, \*\(5, 5\)\)"):
        M.insertion(net, (first, second), maps, 0, steps=4)  # explain=0: maps on the first input's grid


class _Fn(nn.Module):
    """The first input fixed (one sample, repeated over the rows)."""

    def __init__(self, net, first):
        super().__init__()
        self.net, self.first = net, first

    def forward(self, second):
        return self.net(self.first.expand(second.shape[0], -1, -1, -1), second)


@pytest.mark.parametrize("call,arg", [
    (lambda net, x, m: M.deletion(net, x, m, 1, explain=2), r"^explain: .*2 inputs"),
    (lambda net, x, m: M.deletion(net, x, m, 1, explain=-1), r"^explain: "),
    (lambda net, x, m: M.road(net, x, m, 1, explain="0"), r"^explain: "),
    (lambda net, x, m: M.deletion(net, x, m, 1, explain=1), r"^explain: .*floating-point"),
    (lambda net, x, m: M.confidence_change(net, x[0], m, 1, explain=1), r"^explain: .*single input"),
    (lambda net, x, m: M.deletion(net, x, m, 1, forward_kwargs=["mask"]), r"^forward_kwargs: "),
    (lambda net, x, m: M.deletion(net, (x[0], x[1][:2]), m, 1), r"^x\[1\]: .*batch size"),
    (lambda net, x, m: gradattr.compare(net, x, ["random"], ["deletion"], target=1, explain=2),
     r"^explain: .*2 inputs"),
])
def test_bad_explain_and_inputs_name_the_argument_and_change_nothing(call, arg):
    net, image, ids = vqa_data()
    net.train()
    before, image0, ids0 = state(net), image.clone(), ids.clone()
    maps = torch.rand(3, 6, 5)
    with pytest.raises(GradattrError, match=arg):
        call(net, (image, ids), maps)
    after = state(net)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1] == after[1]
    assert torch.equal(image, image0) and torch.equal(ids, ids0)


def test_compare_on_a_vqa_model_equals_the_metrics_of_the_bound_models():
    net, image, ids = vqa_data()
    opts = {"grad_cam": {"feature_layer": "conv"}}
    mopts = {"deletion": {"steps": 8}, "insertion": {"steps": 8}}
    table = gradattr.compare(net, (image, ids), ["grad_cam", "saliency", "occlusion"],
                             ["deletion", "insertion", "average_drop"], target=2,
                             method_options=opts, metric_options=mopts)
    assert table.samples == 3 and [r["method"] for r in table] == ["grad_cam", "saliency", "occlusion"]
    for method, kw in (("grad_cam", {"feature_layer": "net.conv"}), ("saliency", {}), ("occlusion", {})):
        dels, ins, drops = [], [], []
        for i in range(3):
            one = Bound(net, ids[i:i + 1])
            m = gradattr.attribute(one, image[i:i + 1], 2, method=method, **kw)
            if m.ndim == 4:  # saliency (1, C, H, W): compare's channel reduction, sum of |.|
                m = m.abs().sum(1)
            dels.append(float(M.deletion(one, image[i:i + 1], m, 2, steps=8).auc))
            ins.append(float(M.insertion(one, image[i:i + 1], m, 2, steps=8).auc))
            drops.append(float(M.confidence_change(one, image[i:i + 1], m, 2).drop) * 100)
        row = table[method]
        assert row["deletion"] == pytest.approx(np.mean(dels), rel=1e-5, abs=1e-7), method
        assert row["insertion"] == pytest.approx(np.mean(ins), rel=1e-5, abs=1e-7), method
        assert row["average_drop"] == pytest.approx(np.mean(drops), rel=1e-4, abs=1e-6), method
    # the same data as an iterable of ((image, ids), labels) batches, lists as a DataLoader gives them
    parts = gradattr.compare(net, [((image[:2], ids[:2]), torch.tensor([2, 2])), ([image[2:], ids[2:]], torch.tensor([2]))],
                             ["grad_cam"], ["deletion"], method_options=opts, metric_options=mopts)
    assert parts.samples == 3
    assert parts["grad_cam"]["deletion"] == pytest.approx(table["grad_cam"]["deletion"], rel=1e-6)


def test_compare_explains_the_question_at_the_embedding_where_the_metric_cannot_perturb_ids():
    """explain=1 on token ids: the methods run at a layer, the metrics refuse to perturb integers."""
    net, image, ids = vqa_data()
    with pytest.raises(GradattrError, match=r"^explain: .*floating-point.*token ids"):
        gradattr.compare(net, (image, ids), [("per token", lambda n, x, t: torch.rand(3, 6, 5))],
                         ["deletion"], target=1, explain=1)


def items(image, ids, labels):
    return [((image[i], ids[i]), int(labels[i])) for i in range(len(labels))]


def test_explain_dataset_on_image_question_items_equals_the_bound_models(tmp_path):
    net, image, ids = vqa_data(n=5)
    labels = torch.tensor([0, 1, 2, 3, 1])
    loader = DataLoader(items(image, ids, labels), batch_size=2)  # yields [[images, ids], labels]
    seen = []
    report = gradattr.explain_dataset(net, loader, "grad_cam", target="label", feature_layer="conv",
                                      out_dir=tmp_path / "maps", on_batch=lambda b: seen.append(b.maps.shape))
    assert report.samples == 5 and seen == [(2, 6, 5), (2, 6, 5), (1, 6, 5)]
    maps = gradattr.load_maps(tmp_path / "maps")
    for i in range(5):
        want = gradattr.grad_cam(Bound(net, ids[i:i + 1]), image[i:i + 1], int(labels[i]), feature_layer="net.conv")
        np.testing.assert_allclose(maps[i], want[0].numpy(), rtol=1e-5, atol=1e-7)
    again = gradattr.explain_dataset(net, loader, "grad_cam", target="label", feature_layer="conv",
                                     out_dir=tmp_path / "maps")
    assert again.skipped == 3 and again.samples == 0  # resumed: every shard intact
    # input-level maps of the image: (B, C, H, W) per batch
    sal = []
    gradattr.explain_dataset(net, [((image[:3], ids[:3]), labels[:3])], "saliency", target="label",
                             on_batch=lambda b: sal.append(b.maps))
    want = gradattr.saliency(Bound(net, ids[1:2]), image[1:2], int(labels[1]))
    np.testing.assert_allclose(sal[0][1], want[0].numpy(), rtol=1e-5, atol=1e-7)


def test_explain_dataset_refuses_what_it_cannot_store_or_read(tmp_path):
    net, image, ids = vqa_data(n=2)
    batch = [((image, ids), torch.tensor([0, 1]))]
    with pytest.raises(GradattrError, match=r"^explain: .*one input.*per run"):
        gradattr.explain_dataset(net, batch, "grad_cam", feature_layer="conv", explain=[0, 1])
    with pytest.raises(GradattrError, match=r"^batches: .*positional inputs.*forward_kwargs"):
        gradattr.explain_dataset(net, [((image, ids, {"mask": torch.ones(2, 7)}), torch.tensor([0, 1]))],
                                 "grad_cam", feature_layer="conv")
    with pytest.raises(GradattrError, match=r"^batches: .*one batch size"):
        gradattr.explain_dataset(net, [((image, ids[:1]), torch.tensor([0, 1]))], "grad_cam",
                                 feature_layer="conv")
    with pytest.raises(GradattrError, match=r"^explain: .*2 inputs"):
        gradattr.explain_dataset(net, batch, "grad_cam", feature_layer="conv", explain=2,
                                 out_dir=tmp_path / "m")
    assert not any((tmp_path / "m").glob("maps_*.npy"))
