"""explain_dataset: shards and callbacks equal per-batch results, order, bounded memory, errors."""
from __future__ import annotations

import gc
import json
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradattr
from gradattr import GradattrError
from gradattr.dataset import BatchMaps, explain_dataset
from expected_warnings import ZERO_MAPS


def tiny_net(rank: int = 2, classes: int = 4) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[rank]
    return nn.Sequential(OrderedDict(
        conv1=conv(2, 5, 3, padding=1), relu1=nn.ReLU(),
        conv2=conv(5, 6, 3, padding=1, stride=2), relu2=nn.ReLU(inplace=True),
        pool=pool(1), flat=nn.Flatten(), fc=nn.Linear(6, classes)))


def naive_grad_cam(net: nn.Sequential, x: torch.Tensor, cls: int) -> np.ndarray:
    """Grad-CAM of one sample at relu2's resolution, looping over channels (from the paper)."""
    head, tail = net[:4], net[4:]
    a = head(x[None].clone()).detach().requires_grad_(True)
    score = tail(a)[0, cls]
    (g,) = torch.autograd.grad(score, a)
    cam = torch.zeros(a.shape[2:])
    for c in range(a.shape[1]):
        cam += g[0, c].mean() * a[0, c].detach()
    return torch.relu(cam).numpy()


@pytest.fixture
def data():
    xs = [torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8), torch.randn(3, 2, 8, 8)]
    ys = [torch.tensor([0, 1, 2, 3]), torch.tensor([3, 3, 1, 0]), torch.tensor([2, 0, 1])]
    return xs, ys


@ZERO_MAPS
def test_shards_equal_per_batch_grad_cam(tmp_path, data):
    net = tiny_net()
    xs, _ = data
    report = explain_dataset(net, xs, "grad_cam", out_dir=tmp_path / "maps", target=1,
                             feature_layer="relu2")
    names = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert names == [".gradattr-lock-rank000", ".gradattr-run.json", "index.json", "manifest-rank000.jsonl",
                     "maps_00000.npy", "maps_00001.npy", "maps_00002.npy"]
    shards = sorted((tmp_path / "maps").glob("maps_*.npy"))
    for x, p in zip(xs, shards):
        want = gradattr.grad_cam(net, x, 1, feature_layer="relu2").numpy()
        got = np.load(p)
        assert got.dtype == np.float32 and got.shape == (x.shape[0], 8, 8)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (report.samples, report.batches, report.method) == (11, 3, "grad_cam")
    assert report.seconds > 0 and report.images_per_second == pytest.approx(11 / report.seconds)
    assert report.out_dir == tmp_path / "maps" and report.skipped == 0
    whole = gradattr.load_maps(tmp_path / "maps")
    np.testing.assert_array_equal(whole, np.concatenate([np.load(p) for p in shards]))


@ZERO_MAPS
def test_labels_from_dataloader_match_naive_loop(data):
    net = tiny_net()
    x = torch.cat(data[0])
    y = torch.cat(data[1])
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)
    seen: list[BatchMaps] = []
    report = explain_dataset(net, loader, target="label", upsampling="none", feature_layer="relu2",
                             on_batch=lambda b: seen.append(BatchMaps(b.index, b.start, b.maps.copy(),
                                                                      b.labels, b.path, b.indices)))
    assert [b.index for b in seen] == [0, 1, 2] and [b.start for b in seen] == [0, 4, 8]
    assert [b.indices.tolist() for b in seen] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert report.samples == 11
    for b in seen:
        assert b.path is None and b.maps.shape == (len(b.labels), 4, 4)
        for j, label in enumerate(b.labels.tolist()):
            want = naive_grad_cam(net, x[b.start + j], label)
            np.testing.assert_allclose(b.maps[j], want, rtol=1e-4, atol=1e-6)


@ZERO_MAPS
def test_several_labels_per_sample_keep_k_axis():
    net = tiny_net()
    x = torch.randn(3, 2, 8, 8)
    y = torch.tensor([[0, 2], [1, 3], [3, 0]])
    got = []
    explain_dataset(net, [(x, y)], target="label", upsampling="none",
                    on_batch=lambda b: got.append(b.maps.copy()))
    assert got[0].shape == (3, 2, 4, 4)
    want = gradattr.grad_cam(net, x, y.numpy(), upsampling="none").numpy()
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)


@ZERO_MAPS
def test_callback_sees_every_batch_in_order_and_1d_numpy_batches():
    net = tiny_net(rank=1)
    xs = [np.random.randn(b, 2, 16).astype(np.float32) for b in (2, 5, 1, 3)]
    order = []
    explain_dataset(net, iter(xs), target=[0, 2],
                    on_batch=lambda b: order.append((b.index, b.start, b.maps.shape, b.labels)))
    assert order == [(0, 0, (2, 2, 16), None), (1, 2, (5, 2, 16), None),
                     (2, 7, (1, 2, 16), None), (3, 8, (3, 2, 16), None)]


@pytest.mark.slow  # minutes of CPU in total with its neighbours; CI's second step runs it
def test_memory_is_bounded_only_current_batch_alive():
    net = tiny_net()
    inputs: list[weakref.ref] = []
    maps_refs: list[weakref.ref] = []

    def stream():
        for _ in range(5):
            x = torch.randn(4, 2, 8, 8)
            inputs.append(weakref.ref(x))
            yield x

    def on_batch(b: BatchMaps):
        gc.collect()
        # Every earlier batch's input and maps have been let go; only this batch's are alive.
        assert [r() is None for r in inputs[:-1]] == [True] * (len(inputs) - 1)
        assert [r() is None for r in maps_refs] == [True] * len(maps_refs)
        assert inputs[-1]() is not None
        maps_refs.append(weakref.ref(b.maps))

    report = explain_dataset(net, stream(), on_batch=on_batch)
    gc.collect()
    assert report.batches == 5 and len(maps_refs) == 5
    assert all(r() is None for r in maps_refs + inputs)  # and nothing is kept after the call
    assert set(vars(report)) == {"method", "samples", "batches", "seconds", "out_dir", "skipped", "repaired", "rank",
                                 "world_size"}


def test_progress_bar_on_stderr(capsys, data):
    explain_dataset(tiny_net(), data[0], progress=True)
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\r")[-1]
    assert last.startswith("[####################] 3/3 batches, 11 images")
    assert last.endswith("images/s")
    explain_dataset(tiny_net(), iter(data[0]), progress=True, total=None)
    assert capsys.readouterr().err.rstrip("\n").split("\r")[-1].startswith("3 batches, 11 images")


def test_callable_method_and_model_left_unchanged(data):
    net = tiny_net().train()
    calls = []

    def method(net_, x, target=None, feature_layer=None):
        calls.append((x.shape[0], target, feature_layer))
        return gradattr.grad_cam(net_, x, target, feature_layer=feature_layer)

    report = explain_dataset(net, data[0], method, target=2, feature_layer="conv2")
    assert calls == [(4, 2, "conv2"), (4, 2, "conv2"), (3, 2, "conv2")]
    assert report.method == "method" and net.training
    assert all(p.grad is None and p.requires_grad for p in net.parameters())


# ------------------------------------------------------------------------------- errors
def test_error_unknown_method():
    with pytest.raises(GradattrError, match=r"method: expected .*'grad_cam'.*got 'grad_kam'"):
        explain_dataset(tiny_net(), [torch.randn(1, 2, 8, 8)], "grad_kam")
    with pytest.raises(GradattrError, match=r"method: expected a method name .*got int"):
        explain_dataset(tiny_net(), [torch.randn(1, 2, 8, 8)], 3)


def test_error_unknown_and_refused_options(tmp_path):
    with pytest.raises(GradattrError, match=r"feature_layr: expected an option of grad_cam .*"
                                            r"got 'feature_layr'; did you mean 'feature_layer'"):
        explain_dataset(tiny_net(), [torch.randn(1, 2, 8, 8)], feature_layr="relu2",
                        out_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()  # checked before anything is written
    with pytest.raises(GradattrError, match=r"return_layers: expected no such option"):
        explain_dataset(tiny_net(), [torch.randn(1, 2, 8, 8)], return_layers=True)


def test_error_label_target_without_or_with_bad_labels():
    net = tiny_net()
    with pytest.raises(GradattrError, match=r"target: expected 'label' only for batches \(x, y\).*batch 0"):
        explain_dataset(net, [torch.randn(2, 2, 8, 8)], target="label")
    with pytest.raises(GradattrError, match=r"target: expected 'label' with integer labels y of shape "
                                            r"\(2,\).*got y of shape \(3,\)"):
        explain_dataset(net, [(torch.randn(2, 2, 8, 8), torch.tensor([0, 1, 2]))], target="label")
    with pytest.raises(GradattrError, match=r"target: .*got y of shape \(2,\) and dtype torch.float32"):
        explain_dataset(net, [(torch.randn(2, 2, 8, 8), torch.tensor([0.5, 1.0]))], target="label")


def test_error_bad_batches_and_arguments(tmp_path):
    net = tiny_net()
    with pytest.raises(GradattrError, match=r"batches: expected an iterable of batches.*got Tensor"):
        explain_dataset(net, torch.randn(2, 2, 8, 8))
    with pytest.raises(GradattrError, match=r"batches: expected batches that are .*batch 1.*got dict"):
        explain_dataset(net, [torch.randn(1, 2, 8, 8), {"x": torch.randn(1, 2, 8, 8)}])
    with pytest.raises(GradattrError, match=r"batches: expected batched inputs .*got shape \(2, 8\)"):
        explain_dataset(net, [torch.randn(2, 8)])
    with pytest.raises(GradattrError, match=r"on_batch: expected a callable .*got str"):
        explain_dataset(net, [torch.randn(1, 2, 8, 8)], on_batch="print")
    with pytest.raises(GradattrError, match=r"progress: expected True or False, got 'yes'"):
        explain_dataset(net, [torch.randn(1, 2, 8, 8)], progress="yes")
    with pytest.raises(GradattrError, match=r"total: expected None or a number of batches >= 0, got -1"):
        explain_dataset(net, [torch.randn(1, 2, 8, 8)], total=-1)
    afile = tmp_path / "file.npy"
    afile.write_bytes(b"")
    with pytest.raises(GradattrError, match=r"out_dir: expected a folder, got .*file.npy.*which is a file"):
        explain_dataset(net, [torch.randn(1, 2, 8, 8)], out_dir=afile)


@ZERO_MAPS
def test_rerun_resumes_and_a_different_run_is_refused_unless_overwrite(tmp_path):
    net = tiny_net()
    x = torch.randn(2, 2, 8, 8)
    explain_dataset(net, [x], out_dir=tmp_path)
    again = explain_dataset(net, [x], out_dir=tmp_path)  # same run: the shard is complete
    assert (again.batches, again.skipped) == (0, 1)
    with pytest.raises(GradattrError, match=r"out_dir: expected the folder of the same run to resume it, "
                                            r"or overwrite=True to start again, got .* written by a run that "
                                            r"differs in target: None -> 3$"):
        explain_dataset(net, [x], out_dir=tmp_path, target=3)
    other = tiny_net()
    with pytest.raises(GradattrError, match=r"differs in model: 'torch.nn.modules.container.Sequential, "
                                            r"weights sha256 [0-9a-f]{16}' -> 'torch.nn.modules.container."
                                            r"Sequential, weights sha256 [0-9a-f]{16}'$"):
        explain_dataset(other, [x], out_dir=tmp_path)
    explain_dataset(net, [x], out_dir=tmp_path, overwrite=True, target=3)
    np.testing.assert_allclose(np.load(tmp_path / "maps_00000.npy"), gradattr.grad_cam(net, x, 3).numpy(),
                               rtol=1e-5, atol=1e-6)
    (tmp_path / ".gradattr-run.json").unlink()  # no marker: not a folder gradattr made
    with pytest.raises(GradattrError, match=r"out_dir: expected a new or empty folder, or one an earlier run "
                                            r"made .*holding 3 entries of its own \('index.json', "
                                            r"'manifest-rank000.jsonl', 'maps_00000.npy'\)"):
        explain_dataset(net, [x], out_dir=tmp_path)


def test_other_methods_and_their_options_pass_through(data):
    if not all(hasattr(gradattr, m) for m in ("eigen_cam", "score_cam")):
        pytest.skip("eigen_cam/score_cam not in this gradattr yet")
    net = tiny_net()
    xs = data[0][:2]
    got = []
    explain_dataset(net, xs, "eigen_cam", upsampling="none", on_batch=lambda b: got.append(b.maps.copy()))
    explain_dataset(net, xs, "score_cam", target=2, batch_size=3,
                    on_batch=lambda b: got.append(b.maps.copy()))
    want = [gradattr.eigen_cam(net, x, upsampling="none").numpy() for x in xs]
    want += [gradattr.score_cam(net, x, 2, batch_size=3).numpy() for x in xs]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    with pytest.raises(GradattrError, match=r"batch_size: expected an option of eigen_cam .*got 'batch_size'"):
        explain_dataset(net, xs, "eigen_cam", batch_size=3)


def test_killed_run_resumes_without_recomputing_finished_shards(tmp_path):
    """A run stopped after 3 shards, re-run: only the 2 missing batches are computed, the maps are whole."""
    net = tiny_net()
    torch.manual_seed(1)
    xs = [torch.randn(b, 2, 8, 8) for b in (4, 4, 4, 4, 1)]
    calls = []

    def counted(net_, x, target=None):
        calls.append(x.shape[0])
        return gradattr.grad_cam(net_, x, target)

    def kill(b):
        if b.index == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        explain_dataset(net, iter(xs), counted, target=2, out_dir=tmp_path, on_batch=kill)
    assert calls == [4, 4, 4]
    (tmp_path / ".maps_00003.npy.0.tmp").write_bytes(b"half a shard")  # what a crash mid-write leaves
    with open(tmp_path / "manifest-rank000.jsonl", "a") as f:
        f.write('{"shard": 3, "fi')  # and a manifest line cut short
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("maps_*.npy")}
    report = explain_dataset(net, iter(xs), counted, target=2, out_dir=tmp_path)
    assert calls == [4, 4, 4, 4, 1] and (report.batches, report.skipped, report.samples) == (2, 3, 5)
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in stamps} == stamps
    want = gradattr.grad_cam(net, torch.cat(xs), 2).numpy()
    np.testing.assert_allclose(gradattr.load_maps(tmp_path), want, rtol=1e-5, atol=1e-6)
    # resuming with other batches (another batch size) is refused instead of mixing shards
    with pytest.raises(GradattrError, match=r"out_dir: expected the folder of the same run .*differs in "
                                            r"first batch: 'x of shape \(4, 2, 8, 8\), sha256 [0-9a-f]+' -> "
                                            r"'x of shape \(2, 2, 8, 8\), sha256 [0-9a-f]+'$"):
        explain_dataset(net, [torch.cat(xs)[i:i + 2] for i in range(0, 17, 2)], counted, target=2,
                        out_dir=tmp_path)
    with pytest.raises(GradattrError, match=r"out_dir: expected the same batches as the run being resumed, "
                                            r"got batch 1 with 2 samples from position 4, where the earlier run had 4"):
        explain_dataset(net, [xs[0], xs[1][:2], xs[1][2:]], counted, target=2, out_dir=tmp_path)
    with pytest.raises(GradattrError, match=r"out_dir: expected the same data as the run being resumed, got "
                                            r"batch 2 whose first sample differs .*use overwrite=True"):
        explain_dataset(net, [xs[0], xs[1], xs[2] + 1], counted, target=2, out_dir=tmp_path)


def test_load_maps_orders_shuffled_samples_and_refuses_other_folders(tmp_path):
    net = tiny_net()
    x = torch.randn(7, 2, 8, 8)
    torch.manual_seed(3)
    loader = DataLoader(TensorDataset(x), batch_size=3, shuffle=True)
    explain_dataset(net, loader, target=0, out_dir=tmp_path / "shuffled", upsampling="none")
    got, order = gradattr.load_maps(tmp_path / "shuffled", return_indices=True)
    assert order.tolist() == list(range(7))
    np.testing.assert_allclose(got, gradattr.grad_cam(net, x, 0, upsampling="none").numpy(),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(GradattrError, match=r"out_dir: expected a folder written by explain_dataset, with "
                                            r"its index.json, got .*\(no shards\)"):
        gradattr.load_maps(tmp_path)
    with pytest.raises(GradattrError, match=r"out_dir: .*\(not a folder\)"):
        gradattr.load_maps(tmp_path / "nothing")


FACTORY = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))
'''


def test_cli_explain_dataset_folder_of_images_and_arrays(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from gradattr.cli import main

    (tmp_path / "dsnet.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    pixels = rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):  # names out of creation order: the maps follow name order
        Image.fromarray(p).save(folder / f"im_{4 - i}.png")
    args = ["explain-dataset", "imgs", "--model", "dsnet:build", "--out-dir", "maps", "--batch-size", "2",
            "--target", "1", "--mean", "0.5", "--std", "0.25", "--random-weights"]
    assert main(args) == 0
    assert "grad_cam: 5 samples in 3 batches" in capsys.readouterr().err
    x = (torch.from_numpy(pixels[::-1].copy()).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    from dsnet import build

    want = gradattr.grad_cam(build(), x, 1).numpy()
    np.testing.assert_allclose(gradattr.load_maps(tmp_path / "maps"), want, rtol=1e-4, atol=1e-6)
    listing = json.loads((tmp_path / "maps" / "inputs.json").read_text())
    assert listing["folder"] == "imgs" and [f["name"] for f in listing["files"]] == [f"im_{i}.png" for i in range(5)]
    assert [f["size"] for f in listing["files"]] == [(folder / f"im_{i}.png").stat().st_size for i in range(5)]
    assert main(args) == 0  # the same command again: nothing left to do
    err = capsys.readouterr().err
    assert "0 samples in 0 batches" in err and "3 batches already done" in err

    arrays = tmp_path / "arrays"
    arrays.mkdir()
    np.save(arrays / "a.npy", x[0].numpy())
    np.save(arrays / "b.npy", x[1, :, :6].numpy())
    assert main(["explain-dataset", "arrays", "--model", "dsnet:build", "--out-dir", "m2", "--random-weights"]) == 1
    assert capsys.readouterr().err.strip() == ("gradattr: error: FOLDER: expected every sample of shape "
                                               "(3, 12, 10) (as a.npy; --size resizes images), got (3, 6, 10) "
                                               f"in {Path('arrays') / 'b.npy'}")
    assert main(["explain-dataset", "nowhere", "--model", "dsnet:build", "--out-dir", "m3", "--random-weights"]) == 1
    assert "FOLDER: expected a folder of images or .npy files, got 'nowhere'" in capsys.readouterr().err


def test_cli_explain_dataset_checks_method_options_with_the_registry_first(tmp_path, monkeypatch, capsys):
    """--upsampling and --device are checked by the registry's validators, named as the command
    spells them, before the model is loaded (the missing model is not reached) or a file written."""
    from PIL import Image

    from gradattr.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "0.png")
    base = ["explain-dataset", "imgs", "--model", "missing.pt2", "--out-dir", "maps"]
    assert main(base + ["--upsampling", "cubic"]) == 1
    assert capsys.readouterr().err == ("gradattr: error: --upsampling: expected one of 'bicubic', 'nearest', "
                                       "'none', got 'cubic'\n")
    assert main(base + ["--device", "xpu9"]) == 1
    assert capsys.readouterr().err == ("gradattr: error: --device: expected 'auto', 'cpu', 'gpu'/'cuda' or a "
                                       "torch.device, got 'xpu9'\n")
    assert main(base + ["--upsampling", "None", "--device", "cpu"]) == 1
    assert "--model: no such file 'missing.pt2'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_cli_explain_dataset_reports_a_model_failure_in_one_line(tmp_path, monkeypatch, capsys):
    """A model that fails on the batch (an exported program traced for another batch size, say) gives
    one line naming the error and exit status 1, not a traceback."""
    from PIL import Image

    from gradattr.cli import main

    (tmp_path / "badnet.py").write_text(FACTORY + '''

class Fails(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = build()

    def forward(self, x):
        if x.shape[0] != 1:
            raise RuntimeError("Expected input at *args[0].shape[0] to be equal to 1, but got 2")
        return self.body(x)


def fails():
    return Fails()
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    assert main(["explain-dataset", "imgs", "--model", "badnet:fails", "--out-dir", "maps", "--batch-size", "2",
                 "--random-weights"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gradattr: error: RuntimeError: Expected input at *args[0].shape[0] to be equal to 1, "
                   "but got 2 (--debug shows the traceback)"]


def test_cli_interrupted_run_says_so_on_a_line_of_its_own(tmp_path, monkeypatch, capsys):
    """Ctrl-C after the progress bar was drawn: the bar's line is ended first, so the message that
    follows (the command's, or Python's traceback) is not glued to the bar."""
    from PIL import Image

    from gradattr.cli import main

    (tmp_path / "stopnet.py").write_text(FACTORY + '''

class Stops(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = build()

    def forward(self, x):
        if x.shape[0] == 1:  # the second batch: Ctrl-C
            raise KeyboardInterrupt
        return self.body(x)


def stops():
    return Stops()
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    assert main(["explain-dataset", "imgs", "--model", "stopnet:stops", "--out-dir", "maps", "--batch-size", "2",
                 "--random-weights", "--progress"]) == 130
    lines = capsys.readouterr().err.split("\n")
    assert lines[-1] == ""  # every line ended
    assert lines[-2] == "gradattr: interrupted (run the same command again to resume)"
    bar = lines[-3].split("\r")[-1]
    assert bar.startswith("[##########..........] 1/2 batches, 2 images, ") and bar.endswith(" images/s")
    # the finished shard stays for the resume
    assert (tmp_path / "maps" / "maps_00000.npy").is_file() and not (tmp_path / "maps" / "maps_00001.npy").exists()


def test_interrupted_run_ends_the_progress_bar_line(capsys):
    def stream():
        yield torch.randn(2, 2, 8, 8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explain_dataset(tiny_net(), stream(), progress=True, total=3)
    err = capsys.readouterr().err
    assert err.endswith(" images/s\n") and err.count("\n") == 1
    assert err.split("\r")[-1].startswith("[######..............] 1/3 batches, 2 images, ")
