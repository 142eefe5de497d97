"""``gradattr explain``: outputs written whole or not at all, Ctrl-C keeping finished inputs, ``--crop``,
and the one-line errors for an empty ``.npy``, a binary ``--classes`` file and a wrong channel count."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

import gradattr
from gradattr import cli
from gradattr.cli import explain
from expected_warnings import ZERO_MAPS

TINY = textwrap.dedent('''
    import torch
    from torch import nn


    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 3))
''')


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A factory module, its weights, a non-square photo, a folder of three images; the working folder."""
    from PIL import Image

    (tmp_path / "tinyout.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "tinyout", raising=False)
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)).save(tmp_path / "wide.png")  # H 30, W 45
    (tmp_path / "pics").mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "pics" / f"p{k}.png")
    (tmp_path / "out").mkdir()
    return tmp_path, net


MODEL = ["--model", "tinyout:net", "--weights", "w.pth"]


def run(argv) -> tuple[int, str, str]:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------ partial writes
def test_a_failed_write_leaves_no_output_and_no_temporary(work):
    """Under a file-size limit the .npy (1 KiB) fits and the picture does not: neither is left."""
    resource = pytest.importorskip("resource")
    d, _ = work
    out = d / "out"
    argv = ["explain", "wide.png", *MODEL, "--size", "16", "--save-map", out / "m.npy", "--out", out / "m.png"]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))  # Python ignores SIGXFSZ: the write raises EFBIG
    try:
        status, stdout, err = run(argv)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(f"gradattr: error: --out: could not write {out / 'm.png'}: [Errno 27] File too large")
    assert err.rstrip().endswith("none of the outputs of wide.png were written")
    assert listing(out) == [] and stdout == ""
    status, stdout, err = run(argv)  # nothing left behind that a re-run refuses
    assert status == 0, err
    assert listing(out) == ["m.npy", "m.png"]


def test_write_together_removes_the_files_it_renamed(work, monkeypatch):
    """A failure between the renames: the first output, already renamed, is removed too."""
    import os

    d, _ = work
    real = os.replace
    calls = []

    def replace(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(a, b)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(cli.CliError, match="--out: could not write .*b.png: .*No space left on device; none of"):
        explain.write_together([("--save-map", d / "out" / "a.npy", b"1"), ("--out", d / "out" / "o" / "b.png", b"2")],
                           "x")
    assert listing(d / "out") == []  # the folder it made for b.png is gone too


# ------------------------------------------------------------------------------ Ctrl-C in a folder run
def test_ctrl_c_keeps_the_finished_inputs_and_says_how_many(work, monkeypatch):
    d, _ = work
    out = d / "out"
    real = explain._explain_one
    seen = []

    def explain_one(loaded, item, *a, **k):
        seen.append(item.path.name)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(loaded, item, *a, **k)
    monkeypatch.setattr(explain, "_explain_one", explain_one)
    monkeypatch.setattr(explain, "_picture", lambda *a, **k: b"png")  # drawing is test_cli's business
    status, stdout, err = run(["explain", "pics", *MODEL, "--save-map", out / "m", "--out", out / "o"])
    assert status == 130
    assert err == ("gradattr: interrupted; kept the outputs of 1 of 3 inputs: p0.png, each written whole; "
                   "the others have none\n")
    assert listing(out) == ["m", "m/p0_grad_cam.npy", "o", "o/p0_grad_cam.png"]
    assert stdout.startswith("p0.png: grad_cam") and stdout.count("\n") == 1


def test_a_failure_in_a_folder_run_keeps_the_finished_inputs(work, monkeypatch):
    d, _ = work
    real = explain._explain_one

    def explain_one(loaded, item, *a, **k):
        if item.path.name == "p2.png":
            raise gradattr.GradattrError("target: expected something, got nothing")
        return real(loaded, item, *a, **k)
    monkeypatch.setattr(explain, "_explain_one", explain_one)
    status, _, err = run(["explain", "pics", *MODEL, "--save-map", d / "out"])
    assert status == 1
    assert err == ("gradattr: error: target: expected something, got nothing (kept the outputs of 2 of 3 inputs; "
                   "the last: p1.png, finished before the failure)\n")
    assert listing(d / "out") == ["p0_grad_cam.npy", "p1_grad_cam.npy"]


# ------------------------------------------------------------------------------ output names
def test_outputs_are_named_by_stem_and_method_never_doubling_the_extension(work):
    """``p0.png`` -> ``p0_<method>.png`` (once ``p0.png.png``); inputs that share a stem (``a.png``,
    ``a.jpg``) keep their whole names, so neither overwrites the other's maps."""
    from PIL import Image

    d, _ = work
    status, stdout, _ = run(["explain", "pics", *MODEL, "--method", "grad_cam_plus_plus", "--out", d / "o"])
    assert status == 0 and listing(d / "o") == [f"p{k}_grad_cam_plus_plus.png" for k in range(3)]
    (d / "same").mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(d / "same" / "a.png")
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(d / "same" / "a.bmp")
    status, _, _ = run(["explain", "same", *MODEL, "--save-map", d / "m"])
    assert status == 0 and listing(d / "m") == ["a.bmp_grad_cam.npy", "a.png_grad_cam.npy"]
    assert not np.allclose(np.load(d / "m" / "a.bmp_grad_cam.npy"), np.load(d / "m" / "a.png_grad_cam.npy"))


# ------------------------------------------------------------------------------ --crop
@ZERO_MAPS
def test_crop_center_is_torchvisions_resize_and_center_crop(work, monkeypatch):
    tvt = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    d, net = work
    titles = []  # the pictures' titles (drawing them is test_cli's business)
    monkeypatch.setattr(explain, "_picture", lambda xs, cam, title, image=None, **k: titles.append(title) or b"png")
    seen = []
    real = explain._explain_one
    monkeypatch.setattr(explain, "_explain_one", lambda loaded, item, *a, **k: seen.append(item) or real(loaded, item, *a, **k))
    for crop in ("center", "none", None):
        argv = ["explain", "wide.png", *MODEL, "--size", "16", "--out", d / "out" / f"{crop}.png"]
        status, _, err = run(argv + ([] if crop is None else ["--crop", crop]))
        assert status == 0, err
    img = Image.open(d / "wide.png").convert("RGB")
    centre = tvt.CenterCrop(16)(tvt.Resize(16, interpolation=tvt.InterpolationMode.BILINEAR)(img))
    squashed = img.resize((16, 16), Image.Resampling.BILINEAR)
    assert centre.size == (16, 16) and np.asarray(centre).shape == (16, 16, 3)
    for item, want in zip(seen, (centre, squashed, centre)):  # the default is center
        np.testing.assert_array_equal(item.image, np.asarray(want))
        np.testing.assert_allclose(item.x, np.moveaxis(np.asarray(want, dtype=np.float32) / 255.0, -1, 0))
    assert [t.splitlines()[1].rsplit(", ", 1)[1] for t in titles] == [
        "wide.png (center-cropped to 16x16)", "wide.png (squashed to 16x16)", "wide.png (center-cropped to 16x16)"]
    # the map is the network's on the center crop
    status, _, err = run(["explain", "wide.png", *MODEL, "--size", "16", "--save-map", d / "out" / "c.npy"])
    want = gradattr.grad_cam(net, torch.from_numpy(np.moveaxis(np.asarray(centre, dtype=np.float32) / 255.0, -1, 0)))
    np.testing.assert_allclose(np.load(d / "out" / "c.npy"), want.numpy(), rtol=1e-4, atol=1e-6)


@ZERO_MAPS
def test_crop_center_for_a_rectangular_size(work, monkeypatch):
    """--size 10,20 on a 30 x 45 picture: scaled to 13 x 20 (covers 10 x 20), rows 2..11 kept."""
    from PIL import Image

    d, _ = work
    seen = []
    real = explain._explain_one
    monkeypatch.setattr(explain, "_explain_one", lambda loaded, item, *a, **k: seen.append(item) or real(loaded, item, *a, **k))
    status, _, err = run(["explain", "wide.png", *MODEL, "--size", "10,20"])
    assert status == 0, err
    scaled = Image.open(d / "wide.png").convert("RGB").resize((20, 13), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(seen[0].image, np.asarray(scaled)[2:12])  # round(3 / 2) = 2 rows off the top


# ------------------------------------------------------------------------------ one-line errors
def test_empty_npy_and_binary_classes_are_one_line(work):
    d, _ = work
    (d / "empty.npy").write_bytes(b"")
    np.save(d / "cut.npy", np.zeros((3, 8, 8), np.float32))
    (d / "cut.npy").write_bytes((d / "cut.npy").read_bytes()[:300])
    (d / "classes.bin").write_bytes(bytes(range(256)))
    cases = [
        (["empty.npy"], "gradattr: error: INPUT: cannot read empty.npy as a .npy array: the file is empty (0 bytes)\n"),
        (["cut.npy"], "gradattr: error: INPUT: cannot read cut.npy as a .npy array: the file holds fewer bytes (300) "
                      "than its header's shape and dtype need (cut short?)\n"),
        (["wide.png", "--classes", "classes.bin"],
         "gradattr: error: --classes: expected a UTF-8 text file, one class name per line, got classes.bin, which "
         "is not text (byte 0x80 at offset 128)\n"),
    ]
    for extra, line in cases:
        status, _, err = run(["explain", *extra, *MODEL])
        assert (status, err) == (1, line)


def test_wrong_channel_count_names_the_argument(work):
    d, _ = work
    np.save(d / "one.npy", np.zeros((1, 12, 12), np.float32))
    status, _, err = run(["explain", "one.npy", *MODEL])
    assert (status, err) == (1, "gradattr: error: INPUT: expected 3 channels, as the network's first layer takes, "
                                "got 1 in one.npy (shape 1x12x12, read as PyTorch layout); pass an array with that "
                                "many channels, or --input-format if they lie on another axis\n")
    status, _, err = run(["explain", "wide.png", *MODEL, "--gray", "--save-map", d / "out" / "g.npy"])
    assert (status, err) == (1, "gradattr: error: --gray: expected 3 channels, as the network's first layer takes, "
                                "got 1 from wide.png read with --gray; drop --gray to read images as RGB\n")
    assert listing(d / "out") == []
