"""The ``gradattr`` command line, end to end through ``python -m gradattr`` (and the console script
when it is installed), with tiny models saved in a temporary folder."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import gradattr
from gradattr import cli

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
    np.save(d / "seq.npy", rng.standard_normal((2, 32)).astype(np.float32))
    np.save(d / "vol.npy", rng.standard_normal((1, 1, 8, 8, 8)).astype(np.float32))
    np.save(d / "hwc.npy", rng.standard_normal((16, 16, 3)).astype(np.float32))
    (d / "classes.txt").write_text("dog\ntabby\nespresso\n")
    return d, nets


def run(args, cwd, entry=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PYTHONWARNINGS": "ignore"}
    cmd = (entry or [sys.executable, "-m", "gradattr"]) + [str(a) for a in args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def preprocess(path, size=16, mean=0.5, std=0.25) -> torch.Tensor:
    """The CLI's documented preprocessing, written out: RGB, bilinear resize, [0, 1], (x - mean) / std."""
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy((a - mean) / std).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------ end to end
def test_explain_image_with_exported_program(work):
    d, nets = work
    r = run(["explain", "cat.png", "--model", "image_net.pt2", "--size", "16", "--mean", "0.5", "--std",
             "0.25", "--target", "2", "--out", "o.png", "--save-map", "m.npy"], d)
    assert r.returncode == 0, r.stderr
    want = gradattr.grad_cam(nets["image_net"], preprocess(d / "cat.png"), 2)
    got = np.load(d / "m.npy")
    assert got.shape == (16, 16)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6)
    from PIL import Image

    with Image.open(d / "o.png") as png:
        assert png.size[0] > 100 and png.size[1] > 100
    assert "cat.png: grad_cam target 2 layer '3' map 16x16" in r.stdout


def test_explain_sequence_with_factory_and_weights(work):
    d, nets = work
    r = run(["explain", "seq.npy", "--model", "tinynets:seq_net", "--weights", "seq_net.pth",
             "--method", "grad_cam_plus_plus", "--out", "s.png", "--save-map", "s.npy"], d)
    assert r.returncode == 0, r.stderr
    x = torch.from_numpy(np.load(d / "seq.npy"))
    top = nets["seq_net"](x[None]).argmax().item()
    want = gradattr.attribute(nets["seq_net"], x, top, method="grad_cam_plus_plus")
    np.testing.assert_allclose(np.load(d / "s.npy"), want.numpy(), rtol=1e-4, atol=1e-6)
    assert (d / "s.png").stat().st_size > 1000 and f"class {top} p=" in r.stdout


def test_explain_volume_with_saved_module_and_matlab_array(work):
    d, nets = work
    r = run(["explain", "vol.npy", "--model", "vol_net.pt", "--out", "v.png", "--save-map", "v.npy",
             "--upsampling", "nearest", "--feature-layer", "0"], d)
    assert r.returncode == 0, r.stderr
    want = gradattr.grad_cam(nets["vol_net"], torch.from_numpy(np.load(d / "vol.npy")),
                             feature_layer="0", upsampling="nearest")
    np.testing.assert_allclose(np.load(d / "v.npy"), want.numpy(), rtol=1e-4, atol=1e-6)
    assert (d / "v.png").stat().st_size > 1000
    r = run(["explain", "hwc.npy", "--model", "image_net.pt2", "--input-format", "SSC", "--save-map",
             "h.npy"], d)
    assert r.returncode == 0, r.stderr
    want = gradattr.grad_cam(nets["image_net"], np.load(d / "hwc.npy"), input_format="SSC")
    np.testing.assert_allclose(np.load(d / "h.npy"), want, rtol=1e-4, atol=1e-6)


def test_explain_folder(work):
    d, nets = work
    r = run(["explain", "pics", "--model", "image_net.pt2", "--size", "16", "--out", "overlays",
             "--save-map", "maps"], d)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (d / "overlays").iterdir()) == ["p0.png", "p1.png"]
    assert sorted(p.name for p in (d / "maps").iterdir()) == ["p0.npy", "p1.npy"]
    assert "[1/2]" in r.stderr and "[2/2]" in r.stderr
    want = gradattr.grad_cam(nets["image_net"], preprocess(d / "pics" / "p1.png", mean=0.0, std=1.0))
    np.testing.assert_allclose(np.load(d / "maps" / "p1.npy"), want.numpy(), rtol=1e-4, atol=1e-6)


def test_layers_and_methods(work):
    d, nets = work
    r = run(["layers", "--model", "image_net.pt2", "--input-shape", "1,3,16,16"], d)
    assert r.returncode == 0, r.stderr
    _, chosen, _ = gradattr.grad_cam(nets["image_net"], torch.zeros(1, 3, 16, 16), return_layers=True,
                                     upsampling="none")
    lines = r.stdout.splitlines()
    starred = [ln for ln in lines if ln.startswith("*")]
    assert len(starred) == 1 and starred[0][2:].split()[0] == chosen
    assert [ln[2:].split()[0] for ln in lines[:-1]] == ["0", "1", "2", "3"]  # the (1, 4, 16, 16) outputs
    assert all(ln.endswith("(1, 4, 16, 16)") for ln in lines[:-1])
    r = run(["methods"], d)
    assert r.returncode == 0
    assert [ln.split()[0] for ln in r.stdout.splitlines()] == list(gradattr.list_methods())


def test_errors_are_one_line_and_write_nothing(work):
    d, _ = work
    r = run(["explain", "cat.png", "--model", "scripted.pt", "--out", "never.png", "--save-map", "never.npy"], d)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("gradattr: error: --model:")
    assert "TorchScript" in r.stderr and "torch.export.save" in r.stderr and "package.module:function" in r.stderr
    assert not (d / "never.png").exists() and not (d / "never.npy").exists()
    (d / "mixed").mkdir()
    shutil.copy(d / "cat.png", d / "mixed" / "a.png")
    (d / "mixed" / "b.txt").write_text("not an image")
    r = run(["explain", "mixed", "--model", "image_net.pt2", "--size", "16", "--out", "mixed_out",
             "--save-map", "mixed_maps"], d)
    assert r.returncode == 1 and "gradattr: error: INPUT: cannot read" in r.stderr
    assert not (d / "mixed_out").exists() and not (d / "mixed_maps").exists()


def test_console_script(work):
    exe = shutil.which("gradattr")
    if exe is None:
        pytest.skip("the gradattr console script is not installed (pip install -e .)")
    d, _ = work
    r = run(["methods"], d, entry=[exe])
    assert r.returncode == 0 and "grad_cam" in r.stdout
    r = run(["explain", "cat.png", "--model", "state.pt"], d, entry=[exe])
    assert r.returncode == 1 and r.stderr.startswith("gradattr: error: --model: no such file 'state.pt'")


# ------------------------------------------------------------------------------ in-process messages
@pytest.fixture
def here(work, monkeypatch):
    d, nets = work
    monkeypatch.chdir(d)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the factory loader adds the current folder
    return d, nets


def error_of(argv, capsys) -> str:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradattr: error: ")
    return err


def test_label_lookup(here, capsys):
    d, nets = here
    assert cli.main(["explain", "cat.png", "--model", "image_net.pt2", "--size", "16", "--label", "tabby",
                     "--classes", "classes.txt", "--save-map", "tabby.npy"]) == 0
    want = gradattr.grad_cam(nets["image_net"], preprocess(d / "cat.png", mean=0.0, std=1.0), 1)
    np.testing.assert_allclose(np.load(d / "tabby.npy"), want.numpy(), rtol=1e-4, atol=1e-6)
    assert "target 'tabby'" in capsys.readouterr().out


def test_error_messages(here, capsys):
    d, _ = here
    torch.save(torch.nn.Linear(2, 2).state_dict(), d / "state.pt")
    before = sorted(p.name for p in d.rglob("*"))
    assert "holds a state_dict" in error_of(["explain", "cat.png", "--model", "state.pt"], capsys)
    assert "cannot import 'nosuch.mod'" in error_of(["explain", "cat.png", "--model", "nosuch.mod:f"], capsys)
    assert "no such file 'missing.pt2'" in error_of(["explain", "cat.png", "--model", "missing.pt2"], capsys)
    assert "--label: expected --classes FILE" in error_of(
        ["explain", "cat.png", "--model", "image_net.pt2", "--label", "tabby"], capsys)
    assert "INPUT: no such file or folder 'nope.png'" in error_of(
        ["explain", "nope.png", "--model", "image_net.pt2"], capsys)
    assert "--size: expected integers separated by commas, got 'big'" in error_of(
        ["explain", "cat.png", "--model", "image_net.pt2", "--size", "big"], capsys)
    assert "--mean: expected 1 or 3 values (one per channel), got 2" in error_of(
        ["explain", "cat.png", "--model", "image_net.pt2", "--size", "16", "--mean", "0.1,0.2"], capsys)
    assert "takes inputs of shape (1, 3, 16, 16)" in error_of(
        ["explain", "cat.png", "--model", "image_net.pt2"], capsys)
    err = error_of(["explain", "cat.png", "--model", "tinynets:image_net", "--feature-layer", "conv9"], capsys)
    assert "feature_layer: expected the name of a submodule" in err
    assert "--weights: expected only with a factory" in error_of(
        ["explain", "cat.png", "--model", "image_net.pt2", "--weights", "image_net.pth"], capsys)
    assert "does not fit" in error_of(
        ["explain", "seq.npy", "--model", "tinynets:image_net", "--weights", "seq_net.pth"], capsys)
    with pytest.raises(SystemExit) as exc:
        cli.main(["explain", "cat.png", "--model", "m.pt2", "--target", "1", "--label", "tabby"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not allowed with argument" in err
    assert sorted(p.name for p in d.rglob("*")) == before  # no error wrote anything


def test_help_states_preprocessing_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Defaults: no resize, mean 0, std 1" in out and "weights_only=False" in out
