"""Model files run no code without ``--trust-model``: malicious ``torch.export`` archives of every kind
(pickled sample inputs, a member marked ``use_pickle``, a pickled opaque constant, an unknown pickle, a
graph that calls ``torch.os.system``, a shape expression for ``sympy``'s ``eval``, the archive renamed
``model.bin``; all but the unknown pickle and ``torch.os.system`` wrote the marker through a plain
``torch.export.load``) are refused in one line by ``gradattr explain``, ``gradattr layers`` and
``explain-dataset`` (:func:`gradattr.loading.load_model`), and the payload's marker file is never
written. Genuine archives still load and explain, under any suffix."""
from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr import cli, loading


class _Payload:
    """Unpickles as ``exec(code)``: what a malicious model file does."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A genuine archive, an image and an input folder (module-wide: exporting takes seconds)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("model_files")
    net = _net()
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 16, 16),)), d / "good.pt2")
    rng = np.random.default_rng(0)
    (d / "in").mkdir()
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / "in" / f"p{k}.png")
    return d, net


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, b in members.items():
            z.writestr(n, b)
    return path


def _root(members) -> str:
    return next(iter(members)).split("/")[0]


def _torch_saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _evil(kind: str, good: Path, folder: Path, marker: Path) -> Path:
    """A copy of ``good`` made malicious in one way (``kind``)."""
    m = _members(good)
    r = _root(m)
    payload = _Payload(f"open({str(marker)!r}, 'w').write('x')")
    name = "model.bin" if kind == "renamed" else f"{kind}.pt2"
    if kind in ("sample_inputs", "renamed"):  # torch.load(weights_only=True) fails, then weights_only=False
        m[f"{r}/data/sample_inputs/model.pt"] = _torch_saved(payload)
    elif kind == "sample_inputs_raw":  # a bare pickle (protocol header 0x80), not torch's zip
        m[f"{r}/data/sample_inputs/model.pt"] = pickle.dumps(payload, protocol=2)
    elif kind == "use_pickle":  # a weight marked use_pickle: torch.load(weights_only=False) outright
        config = json.loads(m[f"{r}/data/weights/model_weights_config.json"])
        entry = config["config"]["0.weight"]
        entry["use_pickle"] = True
        m[f"{r}/data/weights/{entry['path_name']}"] = _torch_saved(payload)
        m[f"{r}/data/weights/model_weights_config.json"] = json.dumps(config).encode()
    elif kind == "opaque":  # an opaque constant: pickle.loads
        config = json.loads(m[f"{r}/data/constants/model_constants_config.json"])
        config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                    "tensor_meta": None}
        m[f"{r}/data/constants/opaque_obj_0"] = pickle.dumps(payload, protocol=2)
        m[f"{r}/data/constants/model_constants_config.json"] = json.dumps(config).encode()
    elif kind == "extra_pickle":  # a member torch would not read today: refused all the same
        m[f"{r}/data/evil.pkl"] = pickle.dumps(payload, protocol=2)
    elif kind == "os_system":  # a node target resolved under torch.*: torch.os is the os module
        program = json.loads(m[f"{r}/models/model.json"])
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
        m[f"{r}/models/model.json"] = json.dumps(program).encode()
    elif kind == "as_operator":  # an operator argument is resolved like a target
        program = json.loads(m[f"{r}/models/model.json"])
        program["graph_module"]["graph"]["nodes"][0]["inputs"][0]["arg"] = {"as_operator": "torch.os.system"}
        m[f"{r}/models/model.json"] = json.dumps(program).encode()
    elif kind == "sympy":  # shape expressions go to sympy.sympify, which evals them
        program = json.loads(m[f"{r}/models/model.json"])
        program["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0] = {"as_expr": {
            "expr_str": f"exec(open({str(marker)!r}, 'w').write('x'))", "hint": {"as_int": 1}}}
        m[f"{r}/models/model.json"] = json.dumps(program).encode()
    else:
        raise AssertionError(kind)
    return _write(folder / name, m)


KINDS = ["sample_inputs", "sample_inputs_raw", "use_pickle", "opaque", "extra_pickle", "os_system", "sympy",
         "renamed"]


def _one_line_error(argv, capfd) -> str:
    status = cli.main([str(a) for a in argv])
    err = capfd.readouterr().err
    assert status == 1, err
    assert err.count("\n") == 1 and err.startswith("gradattr: error: "), err
    return err


@pytest.mark.parametrize("kind", KINDS)
def test_malicious_archive_is_refused_everywhere_and_runs_nothing(files, tmp_path, capfd, monkeypatch, kind):
    d, _ = files
    marker = tmp_path / "pwned"
    path = _evil(kind, d / "good.pt2", tmp_path, marker)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    runs = [["explain", d / "in" / "p0.png", "--model", path, "--save-map", out / "m.npy", "--out", out / "o.png"],
            ["layers", "--model", path, "--input-shape", "1,3,16,16"],
            ["explain-dataset", d / "in", "--model", path, "--out-dir", out / "ds"]]
    for argv in runs:
        err = _one_line_error(argv, capfd)
        assert err.startswith(f"gradattr: error: --model: {path} ")
        assert err.rstrip().endswith("unless you pass --trust-model (only for files you trust)"), err
        assert not marker.exists(), (kind, argv[0])
    assert sorted(p.name for p in out.iterdir()) == []
    with pytest.raises(cli.CliError, match=r"--trust-model"):
        loading.load_model(str(path))
    assert not marker.exists()


def test_refusals_name_what_the_archive_holds(files, tmp_path, capfd):
    d, _ = files
    said = {
        "sample_inputs": "data/sample_inputs/model.pt, the sample inputs, which a weights-only load refuses; "
                         "it asks for exec",
        "use_pickle": "data/weights/weight_0, the pickled tensor '0.weight', which a weights-only load refuses",
        "opaque": "data/constants/opaque_obj_0 ('evil'), a pickled custom or opaque object",
        "extra_pickle": "data/evil.pkl, a pickle",
        "os_system": "whose graph calls 'torch.os.system', which is not a registered operator",
        "as_operator": "whose graph passes 'torch.os.system', which is not a registered operator",
        "sympy": "has a call of 'exec', not only sympy arithmetic on shape symbols (torch evaluates it with sympy)",
    }
    for kind, text in said.items():
        path = _evil(kind, d / "good.pt2", tmp_path, tmp_path / "pwned")
        err = _one_line_error(["layers", "--model", path, "--input-shape", "1,3,16,16"], capfd)
        assert text in err, (kind, err)


def test_shape_expressions_hold_only_sympy_arithmetic_on_symbols():
    from gradattr.loading import pt2_archive

    for ok in ("s0", "2*s0 + 1", "Max(1, s77)", "((s0 - 1)//2)", "FloorDiv(s0, 4) <= 1.5e3", "Eq(Mod(u0, 8), 0)",
               "Mul(Integer(128), Symbol('s39', positive=True, integer=True))", "Float('1.5', precision=53)",
               "StrictLessThan(Symbol('s1', integer=True), oo) & Ne(s1, 0)"):
        pt2_archive._check_expr(ok, "m.json")
    for bad, why in (("exec(chr(49))", "a call of 'exec'"), ("s0.__class__", "a Attribute node"),
                     ("__import__", "the name '__import__'"), ("getattr(s0, x1)", "a call of 'getattr'"),
                     ("s0[0]", "a Subscript node"), ("Symbol('os.system')", "the constant 'os.system'"),
                     ("Integer(open)", "the name 'open'"), ("Symbol('s0', __class__=1)", "the keyword '__class__'"),
                     ("(lambda: 0)()", "a call of"), ("s0 if s1 else s2", "a IfExp node")):
        with pytest.raises(pt2_archive.Unsafe, match=f"has {re.escape(why)}"):
            pt2_archive._check_expr(bad, "m.json")


def test_dynamic_shapes_load(tmp_path):
    """A program exported with dynamic batch and size (its expressions in torch's srepr form) loads."""
    net = _net()
    batch, half = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("half", min=4, max=512)
    ep = torch.export.export(net, (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch, 2: 2 * half},))
    torch.export.save(ep, tmp_path / "dyn.pt2")
    loaded = loading.load_model(str(tmp_path / "dyn.pt2"))
    x = torch.rand(5, 3, 20, 16)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.net(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)


def test_trust_model_lets_the_pickles_load(files, tmp_path, capfd):
    """The flag is the gate: with it torch.export.load runs as it is, and the payload runs."""
    d, _ = files
    marker = tmp_path / "pwned"
    path = _evil("sample_inputs", d / "good.pt2", tmp_path, marker)
    cli.main(["layers", "--model", str(path), "--input-shape", "1,3,16,16", "--trust-model"])
    capfd.readouterr()
    assert marker.read_text() == "x"


def test_genuine_archive_loads_and_explains_under_any_suffix(files, tmp_path, capfd):
    d, net = files
    shutil.copy(d / "good.pt2", tmp_path / "model.bin")
    x = torch.from_numpy(np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(d / "in" / "p0.png"),
                                    dtype=np.float32) / 255.0).permute(2, 0, 1)
    want = gradattr.grad_cam(net, x)
    for k, model in enumerate((d / "good.pt2", tmp_path / "model.bin")):
        status = cli.main(["explain", str(d / "in" / "p0.png"), "--model", str(model),
                           "--save-map", str(tmp_path / f"m{k}.npy")])
        assert status == 0, capfd.readouterr().err
        np.testing.assert_allclose(np.load(tmp_path / f"m{k}.npy"), want.numpy(), rtol=1e-4, atol=1e-6)
    assert capfd.readouterr().err == ""  # torch logged nothing


def test_pickled_plain_tensor_loads_through_the_weights_only_path(files, tmp_path, capfd):
    """A parameter stored with use_pickle (torch.save of a plain Parameter) is read with weights_only=True."""
    d, net = files
    m = _members(d / "good.pt2")
    r = _root(m)
    config = json.loads(m[f"{r}/data/weights/model_weights_config.json"])
    entry = config["config"]["6.bias"]
    entry["use_pickle"] = True
    m[f"{r}/data/weights/{entry['path_name']}"] = _torch_saved(nn.Parameter(torch.tensor([5.0, -5.0, 0.0])))
    m[f"{r}/data/weights/model_weights_config.json"] = json.dumps(config).encode()
    loaded = loading.load_model(str(_write(tmp_path / "pickled_bias.pt2", m)))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        want = net[:6](x) @ net[6].weight.T + torch.tensor([5.0, -5.0, 0.0])
        np.testing.assert_allclose(loaded.net(x).numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def _legacy(good: Path, net, path: Path, example_inputs: bytes | None = None) -> Path:
    """The layout torch.export.save wrote before torch 2.7, made from a genuine archive's parts."""
    from torch._export.serde.schema import SCHEMA_VERSION

    m = _members(good)
    r = _root(m)
    return _write(path, {
        "version": ".".join(map(str, SCHEMA_VERSION)).encode(),
        "serialized_exported_program.json": m[f"{r}/models/model.json"],
        "serialized_state_dict.pt": _torch_saved(dict(net.named_parameters())),
        "serialized_constants.pt": _torch_saved({}),
        "serialized_example_inputs.pt": example_inputs or m[f"{r}/data/sample_inputs/model.pt"]})


def test_older_layout_loads_checked_and_its_pickles_are_refused(files, tmp_path, capfd):
    d, net = files
    loaded = loading.load_model(str(_legacy(d / "good.pt2", net, tmp_path / "old.pt2")))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.net(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)
    marker = tmp_path / "pwned"
    evil = _legacy(d / "good.pt2", net, tmp_path / "old_evil.bin",
                   _torch_saved(_Payload(f"open({str(marker)!r}, 'w').write('x')")))
    err = _one_line_error(["layers", "--model", evil, "--input-shape", "1,3,16,16"], capfd)
    assert (f"--model: {evil} holds serialized_example_inputs.pt, the sample inputs, which a weights-only load "
            "refuses; it asks for exec; gradattr runs no code") in err
    assert not marker.exists()
    cli.main(["layers", "--model", str(evil), "--input-shape", "1,3,16,16", "--trust-model"])
    capfd.readouterr()
    assert marker.exists()  # what a plain torch.export.load does with it


def test_pickle_renamed_pt2_is_refused_in_one_line(files, tmp_path, capfd):
    """A module saved whole, renamed .pt2: refused before torch.export.load (which logged 19 lines)."""
    d, net = files
    torch.save(net, tmp_path / "whole.pt2")
    err = _one_line_error(["layers", "--model", tmp_path / "whole.pt2", "--input-shape", "1,3,16,16"], capfd)
    assert err == (f"gradattr: error: --model: {tmp_path / 'whole.pt2'} holds pickled objects (it asks for "
                   "torch.nn.modules.container.Sequential), such as a module saved whole with torch.save(model); "
                   "unpickling runs code from the file, so gradattr loads it only with --trust-model; safe "
                   f"instead: {loading.SAFE_FORMATS}\n")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip at all")
    err = _one_line_error(["layers", "--model", tmp_path / "junk.pt2", "--input-shape", "1,3,16,16"], capfd)
    assert err == (f"gradattr: error: --model: expected {tmp_path / 'junk.pt2'} to be a torch.export archive "
                   "(a zip file written by torch.export.save), got a file that is not a zip\n")
