"""Dataset runs that stay sound: fingerprints, locks, marked folders, checksums, tampering, names (issue 17, 2).

Every test here failed on 0.2.0: a changed run resumed with stale maps, two runs mixed their rows,
user files were overwritten, damaged and edited folders were read or "resumed", and a newline in a
file name broke the list of inputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_dataset import FACTORY, tiny_net
from torch.utils.data import DataLoader, TensorDataset

import gradattr
from gradattr import GradattrError
from gradattr.dataset import explain_dataset, load_maps

MARKER = ".gradattr-run.json"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry of a folder (hidden ones included) with its bytes (a link: where it points)."""
    return {p.name: (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.iterdir())}


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """A factory model importable as dsnet:build, and tmp_path as the working folder."""
    (tmp_path / "dsnet.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_images(folder: Path, names, seed: int = 0) -> dict[str, np.ndarray]:
    from PIL import Image

    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = {}
    for name in names:
        pixels[name] = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
        Image.fromarray(pixels[name]).save(folder / name)
    return pixels


def reference(pixels: np.ndarray, mean: float, target: int = 1) -> np.ndarray:
    from dsnet import build

    x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255 - mean
    return gradattr.grad_cam(build(), x, target).numpy()[0]


# ------------------------------------------------------------------------------ 1. fingerprint
def test_cli_resume_with_another_mean_is_refused_with_what_differs(cli_env, capsys):
    from gradattr.cli import main

    pixels = write_images(cli_env / "imgs", [f"im_{i}.png" for i in range(5)])
    args = ["explain-dataset", "imgs", "--model", "dsnet:build", "--random-weights", "--out-dir", "maps",
            "--batch-size", "2", "--target", "1"]
    assert main(args + ["--mean", "0.5"]) == 0
    capsys.readouterr()
    before = snapshot(cli_env / "maps")
    assert main(args + ["--mean", "0.1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("gradattr: error: --out-dir: expected the folder of the same run to resume it, or --overwrite "
                   "to start again, got 'maps', written by a run that differs in --mean: 0.5 -> 0.1")
    assert "already done" not in err
    assert snapshot(cli_env / "maps") == before  # nothing touched
    assert main(args + ["--mean", "0.1", "--overwrite"]) == 0
    want = np.stack([reference(pixels[f"im_{i}.png"], 0.1) for i in range(5)])
    np.testing.assert_allclose(load_maps("maps"), want, rtol=1e-4, atol=1e-6)
    # a flag given where it was not, and another model file: each named
    assert main(args + ["--mean", "0.1", "--gray"]) == 1
    assert "differs in --gray: False -> True" in capsys.readouterr().err


def test_cli_file_that_sorts_first_is_refused_never_paired_with_the_wrong_maps(cli_env, capsys):
    from gradattr.cli import main

    pixels = write_images(cli_env / "imgs", [f"im_{i}.png" for i in range(6)])
    args = ["explain-dataset", "imgs", "--model", "dsnet:build", "--random-weights", "--out-dir", "maps",
            "--batch-size", "4", "--target", "1"]
    assert main(args) == 0
    pixels.update(write_images(cli_env / "imgs", ["a_first.png"], seed=1))
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert ("differs in FOLDER: 6 -> 7 files, the first difference at position 0: 'a_first.png' where the "
            "earlier run had 'im_0.png'") in err
    assert main(args + ["--overwrite"]) == 0
    names = [f["name"] for f in json.loads((cli_env / "maps" / "inputs.json").read_text())["files"]]
    assert names == ["a_first.png"] + [f"im_{i}.png" for i in range(6)]
    maps = load_maps("maps")
    assert maps.shape[0] == 7
    for row, name in zip(maps, names):  # row i is the map of inputs.json's file i
        np.testing.assert_allclose(row, reference(pixels[name], 0.0), rtol=1e-4, atol=1e-6)
    # a file rewritten in place (same name) is seen too
    write_images(cli_env / "imgs", ["im_3.png"], seed=2)
    os.utime(cli_env / "imgs" / "im_3.png", ns=(1, 1))
    capsys.readouterr()
    assert main(args) == 1
    assert "the first difference at position 4: 'im_3.png'" in capsys.readouterr().err


def test_api_fingerprint_covers_model_buffers_options_and_data(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(tiny_net(), torch.nn.BatchNorm1d(4)).eval()
    x, y = torch.randn(10, 2, 8, 8), torch.randint(0, 4, (10,))
    ds = TensorDataset(x, y)
    explain_dataset(net, DataLoader(ds, batch_size=4), target="label", out_dir=tmp_path, feature_layer="0.relu2")
    before = snapshot(tmp_path)

    def refused(match, net=net, loader=None, **kw):
        kw = {"target": "label", "feature_layer": "0.relu2", **kw}
        with pytest.raises(GradattrError, match=match):
            explain_dataset(net, loader or DataLoader(ds, batch_size=4), out_dir=tmp_path, **kw)
        assert snapshot(tmp_path) == before

    refused(r"differs in feature_layer: '0.relu2' -> '0.conv2'$", feature_layer="0.conv2")
    refused(r"differs in upsampling: None -> 'nearest'$", upsampling="nearest")
    refused(r"differs in batch size: 4 -> 5; sample order: '3 batches of 10 samples, sha256 [0-9a-f]+' -> "
            r"'2 batches of 10 samples", loader=DataLoader(ds, batch_size=5))
    changed = x.clone()
    changed[9] += 1  # the last sample: one of the three hashed
    refused(r"differs in samples: '3 samples, sha256 [0-9a-f]{16}' -> '3 samples, sha256 [0-9a-f]{16}' \(the "
            r"first, middle and last samples as the data set returns them: one whose samples change from one read "
            r"to the next \(random augmentation\) cannot be resumed\)$",
            loader=DataLoader(TensorDataset(changed, y), batch_size=4))
    refused(r"differs in data set length: 10 -> 9; sample order",
            loader=DataLoader(TensorDataset(x[:9], y[:9]), batch_size=4))
    other = torch.nn.Sequential(tiny_net(), torch.nn.BatchNorm1d(4)).eval()
    other.load_state_dict(net.state_dict())
    other[1].running_mean += 0.5  # a buffer, not a parameter
    refused(r"differs in model: '.*Sequential, weights sha256 [0-9a-f]{16}' -> '.*Sequential, weights sha256",
            net=other)
    # the same run resumes: everything is done
    report = explain_dataset(net, DataLoader(ds, batch_size=4), target="label", out_dir=tmp_path,
                             feature_layer="0.relu2")
    assert (report.batches, report.skipped) == (0, 3)


def test_a_run_that_wrote_no_shard_does_not_hold_the_folder(tmp_path):
    """A first attempt that fails on its first batch leaves nothing to keep: another run may start there."""
    def broken(net, x, target=None):
        raise RuntimeError("typo in my method")

    with pytest.raises(RuntimeError, match="typo"):
        explain_dataset(tiny_net(), [torch.randn(2, 2, 8, 8)], broken, out_dir=tmp_path)
    report = explain_dataset(tiny_net(), [torch.randn(2, 2, 8, 8)], out_dir=tmp_path)
    assert report.batches == 1 and load_maps(tmp_path).shape == (2, 8, 8)


# ------------------------------------------------------------------------------ 2. one run at a time
def test_second_run_into_a_busy_folder_is_refused(tmp_path):
    net = tiny_net()
    xs = [torch.randn(2, 2, 8, 8) for _ in range(3)]
    inside, release = threading.Event(), threading.Event()
    errors = []

    def hold(b):
        inside.set()
        release.wait(30)

    def first():
        try:
            explain_dataset(net, xs, target=1, out_dir=tmp_path, on_batch=hold)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert inside.wait(30)
        for same in (True, False):  # the same run and a different one: both refused, nothing mixed
            with pytest.raises(GradattrError, match=rf"out_dir: expected a folder that no other run is writing "
                                                    rf"to, got .*, locked by pid {os.getpid()} on .* \(rank 0\)"):
                explain_dataset(net, xs, target=1 if same else 2, out_dir=tmp_path)
    finally:
        release.set()
        t.join(60)
    assert not errors
    want = gradattr.grad_cam(net, torch.cat(xs), 1).numpy()
    np.testing.assert_allclose(load_maps(tmp_path), want, rtol=1e-5, atol=1e-6)
    # the lock ends with the run, also with a run that failed
    with pytest.raises(RuntimeError, match="stop"):
        explain_dataset(net, xs, target=1, out_dir=tmp_path / "b",
                        on_batch=lambda b: (_ for _ in ()).throw(RuntimeError("stop")))
    assert explain_dataset(net, xs, target=1, out_dir=tmp_path / "b").batches == 2


def test_temporary_names_are_unique(tmp_path):
    from gradattr import runfolder

    names = set()
    for _ in range(3):
        tmp, f = runfolder.open_new(tmp_path / "maps_00000.npy")
        f.close()
        names.add(tmp.name)
        assert runfolder.TMP_RE.fullmatch(tmp.name) and f".maps_00000.npy.{os.getpid()}." in tmp.name
    assert len(names) == 3


RACER = r'''
import sys, time, torch
sys.path.insert(0, {tests!r})
from test_dataset import tiny_net
import gradattr
torch.manual_seed(0)
net = tiny_net()
xs = [torch.randn(2, 2, 8, 8) for _ in range(4)]
def slow(net, x, target=None):
    time.sleep(0.5)
    return gradattr.grad_cam(net, x, target)
try:
    gradattr.explain_dataset(net, xs, slow, target=int(sys.argv[1]), out_dir=sys.argv[2])
except gradattr.GradattrError as err:
    print("REFUSED", err)
    sys.exit(3)
print("DONE")
'''


@pytest.mark.slow  # two Python processes that import torch: several seconds
def test_two_processes_into_one_folder_one_is_refused(tmp_path):
    script = tmp_path / "racer.py"
    script.write_text(RACER.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, str(script), str(t), str(tmp_path / "out")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for t in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    refused = next(o for o, p in zip(outs, procs) if p.returncode == 3)[0]
    assert "expected a folder that no other run is writing to" in refused and "locked by pid" in refused
    winner = next(t for t, p in zip((1, 2), procs) if p.returncode == 0)
    torch.manual_seed(0)
    net = tiny_net()
    xs = [torch.randn(2, 2, 8, 8) for _ in range(4)]
    np.testing.assert_allclose(load_maps(tmp_path / "out"), gradattr.grad_cam(net, torch.cat(xs), winner).numpy(),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ 3. only gradattr's folders
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_holding_the_users_files_is_refused_and_left_as_it_was(tmp_path, overwrite):
    (tmp_path / "index.json").write_text('{"my": "own index"}')
    (tmp_path / "inputs.txt").write_text("my notes\n")
    before = snapshot(tmp_path)
    with pytest.raises(GradattrError, match=r"out_dir: expected a new or empty folder, or one an earlier run made "
                                            r"\(with its .gradattr-run.json\), got .*, holding 2 entries of its "
                                            r"own \('index.json', 'inputs.txt'\); gradattr never writes into such "
                                            r"a folder, overwrite=True included"):
        explain_dataset(tiny_net(), [torch.randn(2, 2, 8, 8)], out_dir=tmp_path, overwrite=overwrite)
    assert snapshot(tmp_path) == before  # not even a lock file


def test_cli_overwrite_refuses_a_folder_it_did_not_make(cli_env, capsys):
    from gradattr.cli import main

    write_images(cli_env / "imgs", ["a.png"])
    (cli_env / "maps").mkdir()
    (cli_env / "maps" / "index.json").write_text("mine")
    assert main(["explain-dataset", "imgs", "--model", "dsnet:build", "--random-weights", "--out-dir", "maps",
                 "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "--out-dir: expected a new or empty folder" in err and "--overwrite included" in err
    assert (cli_env / "maps" / "index.json").read_text() == "mine"


def test_overwrite_deletes_only_what_gradattr_wrote(tmp_path):
    net = tiny_net()
    explain_dataset(net, [torch.randn(2, 2, 8, 8) for _ in range(3)], out_dir=tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "maps_00099.npy").write_bytes(b"mine too")  # named like a shard, but never recorded
    xs = [torch.randn(3, 2, 8, 8)]
    explain_dataset(net, xs, out_dir=tmp_path, overwrite=True)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".gradattr-lock-rank000", MARKER, "index.json", "manifest-rank000.jsonl", "maps_00000.npy",
                    "maps_00099.npy", "notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "maps_00099.npy").read_bytes() == b"mine too"
    np.testing.assert_allclose(load_maps(tmp_path), gradattr.grad_cam(net, xs[0]).numpy(), rtol=1e-5, atol=1e-6)


def old_format(folder: Path) -> None:
    """Turn a run folder into what gradattr 0.2 wrote: run.json, no marker, no sizes or checksums."""
    marker = json.loads((folder / MARKER).read_text())
    (folder / MARKER).unlink()
    (folder / "run.json").write_text(json.dumps(marker["fingerprint"]))
    index = json.loads((folder / "index.json").read_text())
    for r in index["shards"]:
        for k in ("size", "sha256", "shape"):
            r.pop(k)
    (folder / "index.json").write_text(json.dumps({"samples": index["samples"], "world_size": 1,
                                                   "shards": index["shards"]}))


def test_old_format_folder_is_read_but_never_written(tmp_path):
    net = tiny_net()
    xs = [torch.randn(2, 2, 8, 8) for _ in range(2)]
    explain_dataset(net, xs, out_dir=tmp_path)
    old_format(tmp_path)
    np.testing.assert_allclose(load_maps(tmp_path), gradattr.grad_cam(net, torch.cat(xs)).numpy(),
                               rtol=1e-5, atol=1e-6)
    before = snapshot(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(GradattrError, match=r"out_dir: expected a new or empty folder, or one this version "
                                                r"of gradattr made .*written by gradattr 0.2 \(run.json, no "
                                                r"checksums\): load_maps still reads it; give this run another "
                                                r"folder, or delete that one yourself"):
            explain_dataset(net, xs, out_dir=tmp_path, overwrite=overwrite)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------ 4. checksums
def test_damaged_shard_is_named_by_load_maps_and_computed_again_on_resume(tmp_path):
    net = tiny_net()
    xs = [torch.randn(2, 2, 8, 8) for _ in range(3)]
    calls = []

    def counted(net_, x, target=None):
        calls.append(x.shape[0])
        return gradattr.grad_cam(net_, x, target)

    explain_dataset(net, xs, counted, out_dir=tmp_path)
    rec = json.loads((tmp_path / "manifest-rank000.jsonl").read_text().splitlines()[1])
    data = (tmp_path / "maps_00001.npy").read_bytes()
    assert (rec["size"], rec["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    want = gradattr.grad_cam(net, torch.cat(xs)).numpy()

    (tmp_path / "maps_00001.npy").write_bytes(data[:-40])  # truncated
    with pytest.raises(GradattrError, match=rf"out_dir: expected maps_00001.npy of {len(data)} bytes with the "
                                            rf"sha256 index.json records, got {len(data) - 40} bytes \(a damaged "
                                            r"shard: re-run explain_dataset into .* to compute it again\)"):
        load_maps(tmp_path)
    calls.clear()
    report = explain_dataset(net, xs, counted, out_dir=tmp_path)
    assert calls == [2] and (report.batches, report.skipped, report.repaired) == (1, 2, 1)
    assert "1 damaged shard(s) computed again" in str(report)
    np.testing.assert_allclose(load_maps(tmp_path), want, rtol=1e-5, atol=1e-6)

    flipped = bytearray((tmp_path / "maps_00002.npy").read_bytes())
    flipped[-1] ^= 0x40  # same size, one bit of one map changed
    (tmp_path / "maps_00002.npy").write_bytes(bytes(flipped))
    with pytest.raises(GradattrError, match=r"maps_00002.npy of \d+ bytes .*got \d+ bytes with another sha256"):
        load_maps(tmp_path)
    (tmp_path / "maps_00000.npy").unlink()  # and one gone
    calls.clear()
    report = explain_dataset(net, xs, counted, out_dir=tmp_path)
    assert calls == [2, 2] and report.repaired == 2
    np.testing.assert_allclose(load_maps(tmp_path), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ 5. tampered folders
RUNS: dict[Path, tuple] = {}


@pytest.fixture
def finished(tmp_path):
    """A finished run of 2 shards of 4 rows each, and a secret beside it."""
    net = tiny_net()
    xs = [torch.randn(4, 2, 8, 8) for _ in range(2)]
    out = tmp_path / "run"
    explain_dataset(net, xs, out_dir=out, upsampling="none")
    np.save(tmp_path / "secret.npy", np.full((4, 4, 4), 7, np.float32))
    RUNS[out] = (net, xs)  # what resumes it
    return out


def edit_index(folder: Path, change) -> None:
    index = json.loads((folder / "index.json").read_text())
    change(index)
    (folder / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("where", ["../secret.npy", "ABSOLUTE", "maps_00001.npy"])
def test_index_naming_a_file_outside_or_another_shard_is_refused(finished, where):
    secret = finished.parent / "secret.npy"
    name = str(secret) if where == "ABSOLUTE" else where
    data = secret.read_bytes()

    def change(index):
        index["shards"][0].update(file=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    edit_index(finished, change)
    with pytest.raises(GradattrError, match=rf"out_dir: expected shard records written by explain_dataset, got "
                                            rf"file='{__import__('re').escape(name)}' for shard 0 \(only "
                                            r"'maps_00000.npy' in the folder itself is read\) in index.json"):
        load_maps(finished)


def test_shard_replaced_by_a_link_is_not_followed(finished):
    secret = finished.parent / "secret.npy"
    data = secret.read_bytes()
    (finished / "maps_00000.npy").unlink()
    (finished / "maps_00000.npy").symlink_to(secret)
    edit_index(finished, lambda i: i["shards"][0].update(size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(GradattrError, match=r"out_dir: expected plain files in the run folder, got "
                                            r"'maps_00000.npy', which is a symbolic link"):
        load_maps(finished)
    # a resume computes that shard again and replaces the link, never writing through it
    net, xs = RUNS.pop(finished)
    report = explain_dataset(net, xs, out_dir=finished, upsampling="none")
    assert (report.batches, report.repaired) == (1, 1) and not (finished / "maps_00000.npy").is_symlink()
    assert secret.read_bytes() == data
    np.testing.assert_allclose(load_maps(finished), gradattr.grad_cam(net, torch.cat(xs), upsampling="none").numpy(),
                               rtol=1e-5, atol=1e-6)


def test_duplicate_records_and_wrong_counts_are_refused(finished):
    original = (finished / "index.json").read_text()
    edit_index(finished, lambda i: i["shards"].__setitem__(1, dict(i["shards"][0])))
    with pytest.raises(GradattrError, match=r"expected an index.json written by explain_dataset, got shards "
                                            r"\[0\] recorded twice"):
        load_maps(finished)

    (finished / "index.json").write_text(original)
    edit_index(finished, lambda i: i.update(samples=9))
    with pytest.raises(GradattrError, match=r"got samples=9 where the shards hold 8 rows"):
        load_maps(finished)

    # a 1-row shard where the index says 4, with a matching size and sha256: never broadcast
    (finished / "index.json").write_text(original)
    one = finished / "maps_00001.npy"
    np.save(one, np.load(one)[:1])
    data = one.read_bytes()
    edit_index(finished, lambda i: i["shards"][1].update(size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(GradattrError, match=r"out_dir: expected maps_00001.npy to hold 4 float32 maps as "
                                            r"index.json records, got shape \(1, 4, 4\)"):
        load_maps(finished)
    # the same in a 0.2 folder (no checksums): the counts are checked all the same
    (finished / "index.json").write_text(original)
    edit_index(finished, lambda i: [r.pop(k) for r in i["shards"] for k in ("size", "sha256", "shape")]
               and i.pop("gradattr_run"))
    with pytest.raises(GradattrError, match=r"maps_00001.npy to hold 4 float32 maps .*got shape \(1, 4, 4\)"):
        load_maps(finished)


def test_symlinked_manifest_is_never_appended_to(tmp_path):
    net = tiny_net()
    xs = [torch.randn(2, 2, 8, 8) for _ in range(3)]

    def stop(b):
        if b.index == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explain_dataset(net, xs, out_dir=tmp_path / "run", on_batch=stop)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    manifest = tmp_path / "run" / "manifest-rank000.jsonl"
    manifest.unlink()
    manifest.symlink_to(victim)
    with pytest.raises(GradattrError, match=r"out_dir: expected plain files in the run folder, got "
                                            r"'manifest-rank000.jsonl', which is a symbolic link"):
        explain_dataset(net, xs, out_dir=tmp_path / "run")
    assert victim.read_text() == "precious\n"


def test_manifest_record_naming_another_file_is_refused(tmp_path):
    net = tiny_net()
    explain_dataset(net, [torch.randn(2, 2, 8, 8)], out_dir=tmp_path)
    m = tmp_path / "manifest-rank000.jsonl"
    rec = json.loads(m.read_text())
    rec["file"] = "../../etc/passwd"
    m.write_text(json.dumps(rec) + "\n")
    with pytest.raises(GradattrError, match=r"got file='../../etc/passwd' for shard 0 .* in "
                                            r"manifest-rank000.jsonl line 1"):
        explain_dataset(net, [torch.randn(2, 2, 8, 8)], out_dir=tmp_path)


# ------------------------------------------------------------------------------ 6. names
def test_a_newline_in_a_file_name_keeps_one_entry_per_map(cli_env):
    from gradattr.cli import main

    (cli_env / "arrays").mkdir()
    names = ["a.npy", "b\nc.npy", "d.npy"]
    rng = np.random.default_rng(0)
    for n in names:
        np.save(cli_env / "arrays" / n, rng.standard_normal((3, 6, 6)).astype(np.float32))
    assert main(["explain-dataset", "arrays", "--model", "dsnet:build", "--random-weights", "--out-dir", "maps"]) == 0
    listing = json.loads((cli_env / "maps" / "inputs.json").read_text())
    assert [f["name"] for f in listing["files"]] == names
    assert len(listing["files"]) == load_maps("maps").shape[0] == 3


class Normalized(torch.utils.data.Dataset):
    """A map-style data set with a torchvision-style ``transform`` attribute."""

    def __init__(self, x, transform):
        self.x, self.transform = x, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(self.x[i])


class Normalize:
    """A transform with a telling repr, as torchvision's are."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, t):
        return (t - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


def test_a_data_sets_transform_is_named_and_seen_through_its_samples(tmp_path):
    net = tiny_net()
    x = torch.rand(6, 2, 8, 8)
    explain_dataset(net, DataLoader(Normalized(x, Normalize([0.5, 0.5], [1.0, 1.0])), batch_size=3), target=1,
                    out_dir=tmp_path)
    with pytest.raises(GradattrError, match=r"differs in data set: 'test_dataset_integrity.Normalized with transform "
                                            r"Normalize\(mean=\[0.5, 0.5\], std=\[1.0, 1.0\]\)' -> "
                                            r"'test_dataset_integrity.Normalized with transform Normalize\(mean="
                                            r"\[0.1, 0.1\], std=\[1.0, 1.0\]\)'; samples: "):
        explain_dataset(net, DataLoader(Normalized(x, Normalize([0.1, 0.1], [1.0, 1.0])), batch_size=3), target=1,
                        out_dir=tmp_path)
    # a transform without a telling repr is known by its name, and by what it does to the samples
    explain_dataset(net, DataLoader(Normalized(x, lambda t: t - 0.5), batch_size=3), target=1, out_dir=tmp_path,
                    overwrite=True)
    with pytest.raises(GradattrError, match=r"differs in samples: '3 samples, sha256 [0-9a-f]{16}' -> '3 samples"):
        explain_dataset(net, DataLoader(Normalized(x, lambda t: t - 0.1), batch_size=3), target=1, out_dir=tmp_path)
