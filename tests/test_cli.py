"""The ``gradattr`` command line, in process (``cli.main([...])``), with tiny models saved in a
temporary folder, plus one end-to-end run of ``python -m gradattr`` in a folder with planted modules."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr import cli
from expected_warnings import ZERO_MAPS

REPO = Path(__file__).resolve().parents[1]

TINYNETS = textwrap.dedent('''
    import torch
    from torch import nn


    def image_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


    def seq_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                             nn.Flatten(), nn.Linear(4, 3))


    def vol_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
                             nn.Flatten(), nn.Linear(4, 2))
''')


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with tiny models (every supported kind, plus TorchScript) and inputs."""
    from PIL import Image

    d = tmp_path_factory.mktemp("cli")
    (d / "tinynets.py").write_text(TINYNETS)
    sys.path.insert(0, str(d))
    try:
        import tinynets
    finally:
        sys.path.remove(str(d))
    nets = {}
    for name in ("image_net", "seq_net", "vol_net"):
        net = getattr(tinynets, name)()
        torch.manual_seed(7)  # weights that differ from the factory's own
        for p in net.parameters():
            torch.nn.init.normal_(p, 0, 0.5)
        net.eval()
        torch.save(net.state_dict(), d / f"{name}.pth")
        nets[name] = net
    nets["image_net_factory"] = tinynets.image_net().eval()
    img_net = nets["image_net"]
    torch.export.save(torch.export.export(img_net, (torch.zeros(1, 3, 16, 16),)), d / "image_net.pt2")
    torch.save(nets["vol_net"], d / "vol_net.pt")
    with warnings.catch_warnings():  # torch.jit is deprecated; users still have such files
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(img_net, torch.zeros(1, 3, 16, 16)), d / "scripted.pt")
    rng = np.random.default_rng(0)
    (d / "pics").mkdir()
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / "pics" / f"p{k}.png")
    shutil.copy(d / "pics" / "p0.png", d / "cat.png")
    (d / "twins").mkdir()  # a.png and a_png.png once shared one output name
    shutil.copy(d / "pics" / "p0.png", d / "twins" / "a.png")
    shutil.copy(d / "pics" / "p1.png", d / "twins" / "a_png.png")
    np.save(d / "seq.npy", rng.standard_normal((2, 32)).astype(np.float32))
    np.save(d / "vol.npy", rng.standard_normal((1, 1, 8, 8, 8)).astype(np.float32))
    np.save(d / "hwc.npy", rng.standard_normal((16, 16, 3)).astype(np.float32))
    np.save(d / "batch.npy", rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    (d / "classes.txt").write_text("dog\ntabby\nespresso\n")
    return d, nets


@pytest.fixture
def here(work, monkeypatch, tmp_path):
    """The fixture folder as the working folder; outputs go to ``tmp_path`` (fresh per test)."""
    d, nets = work
    monkeypatch.chdir(d)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return d, nets, tmp_path


def ok(argv, capsys) -> tuple[str, str]:
    assert cli.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    cap = capsys.readouterr()
    return cap.out, cap.err


def error_of(argv, capsys) -> str:
    assert cli.main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradattr: error: ")
    return err


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def preprocess(path, size=16, mean=0.5, std=0.25, crop="center") -> torch.Tensor:
    """The CLI's documented preprocessing, written out: RGB, bilinear resize (torchvision's
    ``Resize(size)`` + ``CenterCrop(size)``, or squashed with ``crop="none"``), [0, 1], (x - mean) / std."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    if crop == "center":  # the shorter side becomes size, the longer int(size * long / short); the middle
        w0, h0 = img.size
        long = int(size * max(w0, h0) / min(w0, h0))
        w, h = (size, long) if w0 <= h0 else (long, size)
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        img = img.resize((w, h), Image.Resampling.BILINEAR).crop((left, top, left + size, top + size))
    else:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy((a - mean) / std).permute(2, 0, 1).contiguous()


@pytest.fixture
def titles(monkeypatch):
    """The titles of the pictures drawn by the command line."""
    seen = []
    for name in ("overlay", "sequence", "volume"):
        original = getattr(gradattr.plot, name)

        def spy(*a, _original=original, **k):
            seen.append(k.get("title"))
            return _original(*a, **k)
        monkeypatch.setattr(gradattr.plot, name, spy)
    return seen


# ------------------------------------------------------------------------------ explain
@pytest.mark.slow  # a few seconds: CI's second step
def test_explain_image_with_exported_program(here, capsys, titles):
    d, nets, out = here
    stdout, _ = ok(["explain", "cat.png", "--model", "image_net.pt2", "--size", "16", "--mean", "0.5", "--std",
                    "0.25", "--target", "2", "--classes", "classes.txt", "--out", out / "o.png",
                    "--save-map", out / "m.npy"], capsys)
    x = preprocess(d / "cat.png")
    want = gradattr.grad_cam(nets["image_net"], x, 2)
    got = np.load(out / "m.npy")
    assert got.shape == (16, 16)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6)
    from PIL import Image

    with Image.open(out / "o.png") as png:
        assert png.size[0] > 100 and png.size[1] > 100
    with torch.no_grad():
        y = nets["image_net"](x[None])[0]
    score, p = float(y[2]), float(y.softmax(0)[2])
    assert stdout.startswith(f"cat.png: grad_cam class 2 'espresso' score {score:.4g} p={p:.3f} layer '3' "
                             "map 16x16")
    assert stdout.rstrip().endswith(f"-> {out / 'm.npy'}, {out / 'o.png'}")
    assert titles == [f"grad_cam: class 2 'espresso'\nscore {score:.4g} (p={p:.3f}), cat.png (center-cropped to 16x16)"]


@pytest.mark.slow  # a few seconds: CI's second step
def test_titles_tell_the_default_and_a_label_apart(here, capsys, titles):
    d, nets, out = here
    common = ["explain", "cat.png", "--model", "image_net.pt2", "--size", "16", "--classes", "classes.txt"]
    ok(common + ["--out", out / "top.png"], capsys)
    ok(common + ["--label", "TABBY", "--out", out / "tabby.png"], capsys)  # case-insensitive when unambiguous
    with torch.no_grad():
        y = nets["image_net"](preprocess(d / "cat.png", mean=0.0, std=1.0)[None])[0]
    top = int(y.argmax())
    names = ["dog", "tabby", "espresso"]
    assert titles[0].startswith(f"grad_cam: class {top} '{names[top]}'\nscore {float(y[top]):.4g}")
    assert titles[1].startswith(f"grad_cam: class 1 'tabby'\nscore {float(y[1]):.4g} "
                                f"(p={float(y.softmax(0)[1]):.3f})")
    ok(["explain", "cat.png", "--model", "image_net.pt2", "--size", "16", "--method", "eigen_cam",
        "--out", out / "eigen.png"], capsys)
    assert titles[2] == "eigen_cam: no class (features only)\ncat.png (center-cropped to 16x16)"


def test_explain_sequence_with_factory_and_weights(here, capsys, monkeypatch):
    d, nets, out = here
    labels = []  # the importance axis names the method (it once said "Grad-CAM" for every method)
    original = gradattr.plot.sequence
    monkeypatch.setattr(gradattr.plot, "sequence", lambda *a, **k: labels.append(k.get("ylabel")) or original(*a, **k))
    stdout, _ = ok(["explain", "seq.npy", "--model", "tinynets:seq_net", "--weights", "seq_net.pth",
                    "--method", "grad_cam_plus_plus", "--out", out / "s.png", "--save-map", out / "s.npy"], capsys)
    x = torch.from_numpy(np.load(d / "seq.npy"))
    top = nets["seq_net"](x[None]).argmax().item()
    want = gradattr.attribute(nets["seq_net"], x, top, method="grad_cam_plus_plus")
    np.testing.assert_allclose(np.load(out / "s.npy"), want.numpy(), rtol=1e-4, atol=1e-6)
    assert (out / "s.png").stat().st_size > 1000 and f"class {top} score " in stdout
    assert labels == ["Grad-CAM++ importance"]
    assert str(d) not in sys.path  # the working folder was searched for the factory's import only


def test_batched_array_gives_one_picture_per_sample(here, capsys, titles):
    d, nets, out = here
    stdout, _ = ok(["explain", "batch.npy", "--model", "tinynets:image_net", "--weights", "image_net.pth",
                    "--out", out / "b", "--save-map", out / "b"], capsys)
    assert files_in(out) == ["b.npy", "b_0.png", "b_1.png"]
    x = torch.from_numpy(np.load(d / "batch.npy"))
    tops = nets["image_net"](x).argmax(1).tolist()
    want = gradattr.grad_cam(nets["image_net"], x, tops)  # (N, K, H, W): sample i's map is [i, i]
    np.testing.assert_allclose(np.load(out / "b.npy"), want[[0, 1], [0, 1]].numpy(), rtol=1e-4, atol=1e-6)
    assert [t.splitlines()[0] for t in titles] == [f"grad_cam: class {c}" for c in tops]
    assert [t.rsplit(", ", 1)[1] for t in titles] == ["batch.npy[0]", "batch.npy[1]"]


def test_volume_and_matlab_array(here, capsys):
    d, nets, out = here
    ok(["explain", "vol.npy", "--model", "tinynets:vol_net", "--weights", "vol_net.pth", "--out", out / "v.png",
        "--save-map", out / "v.npy", "--upsampling", "nearest", "--feature-layer", "0"], capsys)
    want = gradattr.grad_cam(nets["vol_net"], torch.from_numpy(np.load(d / "vol.npy")),
                             feature_layer="0", upsampling="nearest")
    np.testing.assert_allclose(np.load(out / "v.npy"), want.numpy(), rtol=1e-4, atol=1e-6)
    assert (out / "v.png").stat().st_size > 1000
    ok(["explain", "hwc.npy", "--model", "image_net.pt2", "--input-format", "SSC", "--save-map", out / "h.npy"],
       capsys)
    want = gradattr.grad_cam(nets["image_net"], np.load(d / "hwc.npy"), input_format="SSC")
    np.testing.assert_allclose(np.load(out / "h.npy"), want, rtol=1e-4, atol=1e-6)


def test_folder_outputs_are_named_by_stem_and_method(here, capsys):
    d, nets, out = here
    stdout, stderr = ok(["explain", "twins", "--model", "image_net.pt2", "--size", "16", "--out", out / "o",
                         "--save-map", out / "m"], capsys)
    assert files_in(out) == ["m", "m/a_grad_cam.npy", "m/a_png_grad_cam.npy", "o", "o/a_grad_cam.png",
                             "o/a_png_grad_cam.png"]
    for name in ("a.png", "a_png.png"):  # each map is its own input's
        want = gradattr.grad_cam(nets["image_net"], preprocess(d / "twins" / name, mean=0.0, std=1.0))
        got = np.load(out / "m" / f"{Path(name).stem}_grad_cam.npy")
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6)
    assert not np.allclose(np.load(out / "m" / "a_grad_cam.npy"), np.load(out / "m" / "a_png_grad_cam.npy"))
    assert len(stdout.splitlines()) == 2
    assert f"-> {out / 'm' / 'a_grad_cam.npy'}, {out / 'o' / 'a_grad_cam.png'}" in stdout
    assert stderr == ""  # stderr is not a terminal: no progress unless asked


def test_progress(here, capsys, monkeypatch):
    d, _, out = here
    _, stderr = ok(["explain", "pics", "--model", "image_net.pt2", "--size", "16", "--progress"], capsys)
    assert "explaining [1/2] p0.png" in stderr and "explaining [2/2] p1.png" in stderr
    _, stderr = ok(["explain", "cat.png", "--model", "image_net.pt2", "--size", "16", "--method", "score_cam",
                    "--progress"], capsys)
    assert "Score-CAM" in stderr and "4/4" in stderr  # 4 channels of the feature layer, one pass each
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: on by default
    _, stderr = ok(["explain", "pics", "--model", "image_net.pt2", "--size", "16"], capsys)
    assert "explaining [2/2] p1.png" in stderr
    _, stderr = ok(["explain", "pics", "--model", "image_net.pt2", "--size", "16", "--no-progress"], capsys)
    assert stderr == ""


def test_save_map_paths(here, capsys):
    d, nets, out = here
    stdout, _ = ok(["explain", "cat.png", "--model", "image_net.pt2", "--size", "16", "--save-map",
                    out / "mapfile"], capsys)
    assert files_in(out) == ["mapfile.npy"] and stdout.rstrip().endswith(f"-> {out / 'mapfile.npy'}")
    (out / "adir").mkdir()
    stdout, _ = ok(["explain", "cat.png", "--model", "image_net.pt2", "--size", "16", "--save-map",
                    out / "adir", "--out", out / "adir"], capsys)
    assert files_in(out / "adir") == ["cat_grad_cam.npy", "cat_grad_cam.png"]
    assert stdout.rstrip().endswith(f"-> {out / 'adir' / 'cat_grad_cam.npy'}, {out / 'adir' / 'cat_grad_cam.png'}")
    want = gradattr.grad_cam(nets["image_net"], preprocess(d / "cat.png", mean=0.0, std=1.0))
    np.testing.assert_allclose(np.load(out / "adir" / "cat_grad_cam.npy"), want.numpy(), rtol=1e-4, atol=1e-6)


def test_existing_files_need_overwrite(here, capsys):
    d, nets, out = here
    (out / "m.npy").write_bytes(b"keep me")
    args = ["explain", "cat.png", "--model", "image_net.pt2", "--size", "16", "--save-map", out / "m.npy",
            "--out", out / "o.png"]
    err = error_of(args, capsys)
    assert f"--overwrite: expected outputs that do not exist yet, got {out / 'm.npy'}; pass --overwrite" in err
    assert files_in(out) == ["m.npy"] and (out / "m.npy").read_bytes() == b"keep me"
    ok(args + ["--overwrite"], capsys)
    want = gradattr.grad_cam(nets["image_net"], preprocess(d / "cat.png", mean=0.0, std=1.0))
    np.testing.assert_allclose(np.load(out / "m.npy"), want.numpy(), rtol=1e-4, atol=1e-6)
    (out / "maps").mkdir()
    (out / "maps" / "p1_grad_cam.npy").write_bytes(b"keep me")
    err = error_of(["explain", "pics", "--model", "image_net.pt2", "--size", "16", "--save-map", out / "maps"],
                   capsys)
    assert f"got {out / 'maps' / 'p1_grad_cam.npy'}; pass --overwrite" in err
    assert files_in(out / "maps") == ["p1_grad_cam.npy"]


@ZERO_MAPS
def test_memory_estimate(here, capsys):
    d, _, out = here
    err = error_of(["explain", "cat.png", "--model", "tinynets:image_net", "--random-weights", "--size", "64",
                    "--max-memory", "1M", "--save-map", out / "m.npy"], capsys)
    # 3 x 64 x 64 float32 = 48 KiB; 32 x 48 KiB + 48 KiB = 1.5 MiB
    assert ("--max-memory: expected a request within 1.0 MiB, got an estimated 1.5 MiB (32 x the 48.0 KiB "
            "float32 input 3x64x64 of cat.png, plus the maps)") in err
    assert files_in(out) == []
    ok(["explain", "cat.png", "--model", "tinynets:image_net", "--random-weights", "--size", "64",
        "--max-memory", "2M", "--save-map", out / "m.npy"], capsys)
    assert np.load(out / "m.npy").shape == (64, 64)
    err = error_of(["explain", "cat.png", "--model", "tinynets:image_net", "--random-weights", "--size", "40000",
                    "--save-map", out / "m.npy"], capsys)  # refused before the image is resized
    assert ("within 2.0 GiB, got an estimated 572.2 GiB (32 x the 17.9 GiB float32 input 3x40000x40000 of "
            "cat.png") in err
    assert "--max-memory: expected a size such as 2G" in error_of(
        ["explain", "cat.png", "--model", "image_net.pt2", "--max-memory", "lots"], capsys)


def test_factory_needs_weights_or_random_weights(here, capsys):
    d, nets, out = here
    err = error_of(["explain", "cat.png", "--model", "tinynets:image_net", "--size", "16", "--save-map",
                    out / "m.npy"], capsys)
    assert "--weights: expected a state_dict FILE for the factory 'tinynets:image_net' (or --random-weights" in err
    assert files_in(out) == []
    # class 0: the top class's map is empty for this image
    ok(["explain", "cat.png", "--model", "tinynets:image_net", "--random-weights", "--size", "16",
        "--target", "0", "--save-map", out / "m.npy"], capsys)
    want = gradattr.grad_cam(nets["image_net_factory"], preprocess(d / "cat.png", mean=0.0, std=1.0), 0)
    np.testing.assert_allclose(np.load(out / "m.npy"), want.numpy(), rtol=1e-4, atol=1e-6)


@ZERO_MAPS
def test_factory_module_found_in_the_working_folder_for_its_import_only(work, tmp_path, monkeypatch, capsys):
    import importlib.util

    d, _ = work
    (tmp_path / "cwd_nets_7f3a.py").write_text(TINYNETS + "\nimport sys\nSEARCHED = list(sys.path)\n")
    (tmp_path / "cwd_other_7f3a.py").write_text("")
    shutil.copy(d / "cat.png", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_nets_7f3a", raising=False)
    before = list(sys.path)
    ok(["explain", "cat.png", "--model", "cwd_nets_7f3a:image_net", "--random-weights", "--size", "16"], capsys)
    module = sys.modules.pop("cwd_nets_7f3a")
    assert Path(module.__file__).parent == tmp_path and module.SEARCHED[0] == str(tmp_path)
    assert sys.path == before and importlib.util.find_spec("cwd_other_7f3a") is None


# ------------------------------------------------------------------------------ untrusted files
class _Payload:
    """Unpickles as ``exec(code)``: what a malicious model file does."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


@pytest.fixture
def evil(tmp_path_factory):
    """A working model whose file writes a marker when unpickled."""
    tmp_path = tmp_path_factory.mktemp("evil")
    marker = tmp_path / "pwned"
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    net.payload = _Payload(f"open({str(marker)!r}, 'w').write('x')")
    torch.save(net, tmp_path / "evil.pt")
    return tmp_path / "evil.pt", marker


def test_malicious_pickle_runs_nothing_without_trust_model(here, capsys, evil):
    d, _, out = here
    path, marker = evil
    for argv in (["explain", "cat.png", "--model", path, "--size", "16", "--save-map", out / "m.npy",
                  "--out", out / "o.png"],
                 ["layers", "--model", path, "--input-shape", "1,3,16,16"]):
        err = error_of(argv, capsys)
        assert f"--model: {path} holds pickled objects" in err and "with --trust-model" in err
        assert "torch.export.save (.pt2)" in err and "'package.module:function'" in err and "--weights" in err
        assert not marker.exists()
        assert files_in(out) == []
    ok(["explain", "cat.png", "--model", path, "--size", "16", "--trust-model"], capsys)
    assert marker.read_text() == "x"  # the flag is what lets the file's code run


def test_whole_module_loads_with_trust_model(here, capsys):
    d, nets, out = here
    err = error_of(["explain", "vol.npy", "--model", "vol_net.pt", "--save-map", out / "v.npy"], capsys)
    assert "(it asks for torch.nn.modules.container.Sequential)" in err and files_in(out) == []
    ok(["explain", "vol.npy", "--model", "vol_net.pt", "--trust-model", "--save-map", out / "v.npy"], capsys)
    want = gradattr.grad_cam(nets["vol_net"], torch.from_numpy(np.load(d / "vol.npy")))
    np.testing.assert_allclose(np.load(out / "v.npy"), want.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # minutes of CPU in total with its neighbours; CI's second step runs it
def test_python_m_does_not_import_from_the_working_folder(work, tmp_path):
    """The one subprocess: `python -m gradattr` in a folder holding a planted PIL.py and matplotlib.py."""
    d, nets = work
    for name in ("PIL", "matplotlib"):
        (tmp_path / f"{name}.py").write_text(f"open({str(tmp_path / (name + '.ran'))!r}, 'w').write('x')\n")
    shutil.copy(d / "image_net.pt2", tmp_path)
    shutil.copy(d / "cat.png", tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    r = subprocess.run([sys.executable, "-m", "gradattr", "explain", "cat.png", "--model", "image_net.pt2",
                        "--size", "16", "--out", "o.png", "--save-map", "m.npy"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "PIL.ran").exists() and not (tmp_path / "matplotlib.ran").exists()
    want = gradattr.grad_cam(nets["image_net"], preprocess(d / "cat.png", mean=0.0, std=1.0))
    np.testing.assert_allclose(np.load(tmp_path / "m.npy"), want.numpy(), rtol=1e-4, atol=1e-6)
    assert (tmp_path / "o.png").stat().st_size > 1000 and r.stderr == ""


# ------------------------------------------------------------------------------ layers, methods, help
def test_layers(here, capsys):
    d, nets, _ = here
    stdout, _ = ok(["layers", "--model", "image_net.pt2", "--input-shape", "1,3,16,16"], capsys)
    _, chosen, reduction = gradattr.grad_cam(nets["image_net"], torch.zeros(1, 3, 16, 16), return_layers=True,
                                             upsampling="none")
    lines = stdout.splitlines()
    assert lines[0].startswith(f"automatic feature layer: {chosen!r} (* below") and f"from {reduction!r}" in lines[0]
    assert lines[1].split() == ["name", "type", "output", "shape", "reading"]
    assert [ln[2:].split()[:2] for ln in lines[2:-1]] == [["0", "Conv2d"], ["1", "ReLU"], ["2", "Conv2d"],
                                                               ["3", "ReLU"]]
    assert all(ln.rstrip().endswith("(1, 4, 16, 16)  channels first (N, C, *S)") for ln in lines[2:-1])
    assert [ln[2:].split()[0] for ln in lines if ln.startswith("*")] == [chosen]
    assert lines[-1].startswith("4 layers whose output has the input's layout")
    stdout, _ = ok(["layers", "--model", "image_net.pt2", "--input-shape", "1,3,16,16", "--filter", "relu"],
                   capsys)
    assert [ln[2:].split()[0] for ln in stdout.splitlines()[2:-1]] == ["1", "3"]
    stdout, _ = ok(["layers", "--model", "image_net.pt2", "--input-shape", "1,3,16,16", "--all", "--filter", "*n*"],
                   capsys)  # a glob over names and types: Conv2d, Linear, Flatten
    assert [ln[2:].split()[:2] for ln in stdout.splitlines()[2:-1]] == [
        ["0", "Conv2d"], ["2", "Conv2d"], ["5", "Flatten"], ["6", "Linear"]]
    assert [ln.split()[-1] for ln in stdout.splitlines()[2:-1]] == ["*S)", "*S)", "-", "-"]  # "-": no candidate
    err = error_of(["layers", "--model", "image_net.pt2", "--input-shape", "1,3,16,16", "--filter", "lstm"], capsys)
    assert "--filter: expected a part of a layer name or type" in err and "got 'lstm', which matches none of the 4" in err


def test_methods_lists_the_registry_and_random(capsys, monkeypatch):
    out, _ = ok(["methods"], capsys)
    names = [ln.split()[0] for ln in out.splitlines()]
    assert names == gradattr.list_methods() + ["random"]
    assert "``" not in out and "Score-CAM map (Wang et al., CVPR-W 2020)" in out
    monkeypatch.setattr(gradattr, "list_methods", lambda: ["grad_cam", "random"])
    monkeypatch.setattr(gradattr, "method_info", lambda n: gradattr.api.method_info("grad_cam")
                        if n == "grad_cam" else type("I", (), {"summary": "registered random maps"}))
    out, _ = ok(["methods"], capsys)  # a registered random is listed once, with its own line
    assert [ln.split()[0] for ln in out.splitlines()] == ["grad_cam", "random"]
    assert out.splitlines()[1].endswith("registered random maps")


def test_help_lists_formats_and_trust(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Defaults: no resize, mean 0, std 1" in out
    assert "e.g. 'SSC' (H x W x C), 'SSCB', 'SSSC', 'CT', 'TC', 'CBT'" in out
    assert "--trust-model" in out and "--random-weights" in out and "--overwrite" in out
    assert f"{cli.MEMORY_FACTOR} x the bytes of the largest float32 network input" in out


# ------------------------------------------------------------------------------ error messages
def test_error_messages(here, capsys):
    d, _, out = here
    torch.save(torch.nn.Linear(2, 2).state_dict(), out / "state.pt")
    (out / "junk.pt").write_text("not a model")
    before = files_in(d)
    cases = [
        (["--model", out / "state.pt"], "holds a state_dict"),
        (["--model", out / "junk.pt"], "could not load"),
        (["--model", "scripted.pt"], "is a TorchScript file"),
        (["--model", "nosuch.mod:f", "--random-weights"], "cannot import 'nosuch.mod'"),
        (["--model", "missing.pt2"], "no such file 'missing.pt2'"),
        (["--model", "image_net.pt2", "--label", "tabby"], "--label: expected --classes FILE"),
        (["--model", "image_net.pt2", "--size", "big"], "--size: expected integers separated by commas, got 'big'"),
        (["--model", "image_net.pt2", "--size", "16", "--mean", "0.1,0.2"],
         "--mean: expected 1 or 3 values (one per channel), got 2"),
        (["--model", "image_net.pt2"], "takes inputs of shape (1, 3, 16, 16)"),
        (["--model", "tinynets:image_net", "--random-weights", "--feature-layer", "conv9"],
         "feature_layer: expected the name of a submodule"),
        (["--model", "image_net.pt2", "--weights", "image_net.pth"], "--weights: expected only with a factory"),
        (["--model", "image_net.pt2", "--random-weights"], "--random-weights: expected only with a factory"),
        (["--model", "tinynets:image_net", "--weights", "seq_net.pth"], "does not fit"),
        (["--model", "image_net.pt2", "--method", "score_kam"], "did you mean 'score_cam'"),
        (["--model", "image_net.pt2", "--method", "random"], "(random maps are a baseline for gradattr.compare"),
        (["--model", "image_net.pt2", "--size", "16", "--input-format", "SSC"],
         ("--input-format: expected only with .npy array inputs (images are read as H x W x C and given to "
          "the network as (C, H, W)), got 'SSC' with the image cat.png")),
        (["--model", "image_net.pt2", "--size", "16", "--save-map", out / "no" / "m.npy"],
         "--save-map: expected a path in an existing folder"),
    ]
    for extra, message in cases:
        err = error_of(["explain", "cat.png", "--out", out / "o.png", "--save-map", out / "m.npy"] + extra, capsys)
        assert message in err, (extra, err)
    assert files_in(out) == ["junk.pt", "state.pt"]
    err = error_of(["explain", "pics", "--model", "image_net.pt2", "--size", "16", "--out", out / "junk.pt"], capsys)
    assert "--out: expected a folder for a folder INPUT, got the file" in err
    (d / "mixed").mkdir(exist_ok=True)
    shutil.copy(d / "cat.png", d / "mixed" / "a.png")
    (d / "mixed" / "b.txt").write_text("not an image")
    err = error_of(["explain", "mixed", "--model", "image_net.pt2", "--size", "16", "--out", out / "mo",
                    "--save-map", out / "mm"], capsys)
    assert "INPUT: cannot read" in err and files_in(out) == ["junk.pt", "state.pt"]
    shutil.rmtree(d / "mixed")
    with pytest.raises(SystemExit) as exc:
        cli.main(["explain", "cat.png", "--model", "m.pt2", "--target", "1", "--label", "tabby"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not allowed with argument" in err
    assert files_in(d) == before  # no error wrote anything


# ------------------------------------------------------------------------------ python -m gradattr.demo
def test_method_options_are_checked_by_the_registry_before_the_model_loads(here, capsys):
    """--upsampling and --device go through the registry's own validators (gradattr.options.SHARED),
    named as the command spells them, before the model is read: a missing model file is not reached."""
    _, _, out = here
    base = ["explain", "cat.png", "--model", "missing.pt2", "--save-map", out / "m.npy"]
    err = error_of(base + ["--upsampling", "cubic"], capsys)
    assert err == "gradattr: error: --upsampling: expected one of 'bicubic', 'nearest', 'none', got 'cubic'\n"
    err = error_of(base + ["--device", "xpu9"], capsys)
    assert err == ("gradattr: error: --device: expected 'auto', 'cpu', 'gpu'/'cuda' or a torch.device, "
                   "got 'xpu9'\n")
    err = error_of(base + ["--device", "meta"], capsys)
    assert "--device: expected a device that computes" in err
    # the registry's spelling is the API's: NONE is none, so a picture of it is refused as for none
    err = error_of(["explain", "cat.png", "--model", "missing.pt2", "--out", out / "o.png",
                    "--upsampling", "NONE"], capsys)
    assert "--out: expected maps at the input's size to draw; drop --upsampling none" in err
    assert "no such file 'missing.pt2'" in error_of(base + ["--upsampling", "Nearest"], capsys)
    assert files_in(out) == []


def test_method_option_arguments_take_the_registrys_defaults_and_modes(capsys):
    from gradattr.options import SHARED
    from gradattr.options import UPSAMPLING_MODES

    args = cli.build_parser().parse_args(["explain", "x.png", "--model", "m.pt2"])
    assert args.device == SHARED["device"].default == "auto" and args.upsampling is None
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"--upsampling MODE {', '.join(UPSAMPLING_MODES)}; default {SHARED['upsampling'].default}" in out


def test_demo_class_names_are_in_the_network_order():
    pytest.importorskip("torchvision")
    from gradattr import demo

    names = demo.imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert (names[0], names[281], names[285], names[967]) == ("tench", "tabby", "Egyptian cat", "espresso")


def test_demo_refuses_to_overwrite(tmp_path, capsys):
    from gradattr import demo

    (tmp_path / "imagenet.txt").write_text("mine\n")
    assert demo.main(["export-effnet", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m gradattr.demo: error: DIR: expected a folder without effnet.pt2")
    assert f"got {tmp_path / 'imagenet.txt'} (pass --overwrite" in err
    assert files_in(tmp_path) == ["imagenet.txt"] and (tmp_path / "imagenet.txt").read_text() == "mine\n"


@pytest.mark.slow
def test_demo_export_runs_the_readme_recipe(tmp_path, capsys, monkeypatch, effnet):
    """`python -m gradattr.demo export-effnet DIR`, then the README's command on what it wrote (~40 s)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("skimage")
    from gradattr import demo

    assert demo.main(["export-effnet", str(tmp_path / "demo")]) == 0
    assert files_in(tmp_path / "demo") == ["chelsea.png", "effnet.pt2", "effnet.pth", "imagenet.txt"]
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    common = ["explain", "demo/chelsea.png", "--size", "224", "--mean", "0.5", "--std", "0.5", "--classes",
              "demo/imagenet.txt"]
    out, _ = ok(common + ["--model", "demo/effnet.pt2", "--save-map", "cat.npy"], capsys)
    assert out.startswith("chelsea.png: grad_cam class 285 'Egyptian cat' score ")
    out, _ = ok(common + ["--model", "gradattr.demo:efficientnet_lite0", "--weights", "demo/effnet.pth",
                          "--save-map", "cat2.npy"], capsys)
    assert out.startswith("chelsea.png: grad_cam class 285 'Egyptian cat' score ")
    x = preprocess(tmp_path / "demo" / "chelsea.png", size=224, mean=0.5, std=0.5)
    want = gradattr.grad_cam(effnet, x, 285).numpy()
    np.testing.assert_allclose(np.load("cat.npy"), want, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(np.load("cat2.npy"), want, rtol=1e-3, atol=1e-5)
    # the README's explain-dataset command on the exported program: batches of 2 (any batch size)
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "images" / name).write_bytes((tmp_path / "demo" / "chelsea.png").read_bytes())
    from gradattr.cli.explain_dataset import cli_explain_dataset

    assert cli_explain_dataset(["images/", "--model", "demo/effnet.pt2", "--size", "224", "--mean", "0.5",
                                "--std", "0.5", "--batch-size", "2", "--out-dir", "maps/"]) == 0
    maps = gradattr.load_maps("maps/")
    assert maps.shape == (3, 224, 224)
    np.testing.assert_allclose(maps, np.broadcast_to(want, (3, 224, 224)), rtol=1e-3, atol=1e-5)


def test_report_deletion_of_a_model_without_conv_layers(tmp_path, monkeypatch, capsys):
    """A sequence MLP has no Conv/Pool layer to tell the input's rank: the report's deletion reads
    the run's inputs as (N, C, T), as explain-dataset did, or as --input-format says."""
    from gradattr.cli import main

    (tmp_path / "mlp.py").write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.Tanh(), nn.Linear(8, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seqs").mkdir()
    x = np.random.default_rng(0).standard_normal((5, 2, 16)).astype(np.float32)
    for i in range(5):
        np.save(tmp_path / "seqs" / f"s{i}.npy", x[i])
    model = ["--model", "mlp:build", "--random-weights"]
    assert main(["explain-dataset", "seqs", "--out-dir", "run", "--method", "saliency", *model]) == 0
    capsys.readouterr()
    assert main(["report", "run", "--metrics", "deletion", *model]) == 0
    page = Path(capsys.readouterr().out.strip()).read_text()
    got = {int(i): float(d) for i, d in re.findall(r'data-index="(\d+)"[^>]*data-metric-deletion="([^"]+)"', page)}
    assert sorted(got) == list(range(5))
    # the same AUCs from Python, the layout given outright (the report scores each sample's top class)
    import mlp

    net = mlp.build().eval()
    maps = gradattr.load_maps("run")[:, 0]
    xt = torch.from_numpy(x)
    top = net(xt).argmax(1)
    want = gradattr.metrics.deletion(net, xt, torch.as_tensor(maps), top[:, None], steps=20, input_format="BCT").auc
    assert [got[i] for i in range(5)] == pytest.approx(np.asarray(want).reshape(5).tolist(), rel=1e-5)
    # read as (N, T, C) instead, the maps no longer fit the input's 2 time steps: refused
    assert main(["report", "run", "--metrics", "deletion", "--input-format", "BTC", *model]) == 1
    assert "maps: expected (5, *(2,))" in capsys.readouterr().err
