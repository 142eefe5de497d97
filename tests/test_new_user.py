"""What tripped a new user: labels, pytorch-grad-cam habits, examples that write tracked files,
the benchmark's --quick, README numbers that disagreed with the pictures, torch.compile warnings.
"""
from __future__ import annotations

import inspect
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradattr
from gradattr import GradattrError

ROOT = Path(__file__).resolve().parents[1]


def small_net(k: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, k)).eval()


# -- labels ----------------------------------------------------------------------------------
def test_labels_match_case_insensitively_as_the_readme_says():
    net, x = small_net(), torch.rand(3, 8, 8)
    want = gradattr.grad_cam(net, x, 1)
    for label in ("dog", "DOG", "Dog"):
        assert torch.equal(gradattr.grad_cam(net, x, label, classes=["cat", "dog", "bird"]), want)
    both = gradattr.grad_cam(net, x, ["BIRD", "Cat"], classes=["cat", "dog", "bird"])
    assert torch.equal(both, gradattr.grad_cam(net, x, [2, 0]))


def test_an_exact_label_wins_over_a_case_insensitive_one():
    net, x = small_net(), torch.rand(3, 8, 8)
    assert torch.equal(gradattr.grad_cam(net, x, "Dog", classes=["dog", "Dog", "bird"]), gradattr.grad_cam(net, x, 1))


@pytest.mark.parametrize("label, classes, match", [
    ("dgo", ["cat", "Dog", "bird"], r"target: expected a label from classes \(3 labels\), got 'dgo'; "
                                    r"did you mean 'Dog'\?"),
    ("zebra", ["cat", "dog", "bird"], r"got 'zebra'$"),
    ("crane", ["crane", "dog", "crane"], r"a label that names one class .*got 'crane', which names "
                                         r"classes 0 'crane', 2 'crane'"),
    ("DOG", ["dog", "Dog", "bird"], r"names classes 0 'dog', 1 'Dog'"),
])
def test_unknown_or_ambiguous_labels_are_refused_with_the_close_ones(label, classes, match):
    with pytest.raises(GradattrError, match=match):
        gradattr.grad_cam(small_net(), torch.rand(3, 8, 8), label, classes=classes)


# -- pytorch-grad-cam habits -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(target_layers=["0"]), r"target_layers: grad_cam does not take pytorch-grad-cam's/captum's "
                                r"target_layers=; use feature_layer="),
    (dict(targets=[1]), r"targets: .*use target= .*ClassifierOutputTarget"),
    (dict(reshape_transform=lambda t: t), r"reshape_transform: .*use feature_layout="),
])
def test_pytorch_grad_cam_keywords_get_the_gradattr_spelling(kwargs, match):
    net, x = small_net(), torch.rand(2, 3, 8, 8)
    with pytest.raises(GradattrError, match=match):
        gradattr.grad_cam(net, x, **kwargs)
    with pytest.raises(GradattrError, match=match.replace("grad_cam does", "score_cam does")):
        gradattr.score_cam(net, x, **kwargs)
    with pytest.raises(GradattrError, match=match.replace("grad_cam does", "attribute does")):
        gradattr.attribute(net, x, method="layer_cam", **kwargs)


def test_a_list_of_classifier_output_targets_is_one_class_per_sample_as_in_pytorch_grad_cam():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    net, x = small_net(), torch.rand(2, 3, 8, 8)
    cam = gradattr.grad_cam(net, x, [ClassifierOutputTarget(2), ClassifierOutputTarget(0)])
    assert cam.shape == (2, 8, 8)
    assert torch.equal(cam, gradattr.grad_cam(net, x, torch.tensor([[2], [0]]))[:, 0])
    # and equals pytorch-grad-cam's own map with the same targets (it min-max scales each map)
    with pgc.GradCAM(net, [net[1]]) as e:
        ref = e(x, [ClassifierOutputTarget(2), ClassifierOutputTarget(0)])
    ours = gradattr.grad_cam(net, x, [ClassifierOutputTarget(2), ClassifierOutputTarget(0)], feature_layer="1",
                             upsampling="none", normalize=True).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    with pytest.raises(GradattrError, match=r"target: expected one ClassifierOutputTarget per sample \(2\).*got 1"):
        gradattr.grad_cam(net, x, [ClassifierOutputTarget(2)])
    with pytest.raises(GradattrError, match=r"target: .*reduction_fn=.*got a list holding ClassifierOutputSoftmaxTarget"):
        gradattr.grad_cam(net, x, [ClassifierOutputSoftmaxTarget(2), ClassifierOutputSoftmaxTarget(1)])


# -- the docs vs pictures and signatures: one source -------------------------------------------
SEQUENCES = (ROOT / "docs/sequences.md").read_text()  # the README's section on transformers, moved here
USAGE = (ROOT / "docs/usage.md").read_text()  # grad_cam's signature and argument table


def test_the_readme_quotes_the_transformer_numbers_the_example_wrote_with_its_picture():
    import json

    numbers = json.loads((ROOT / "docs/images/vit_swin_sequences.json").read_text())["median_share"]
    text = " ".join(SEQUENCES[SEQUENCES.index("python examples/vit_swin_sequences.py` trains"):].split())
    text = text[:text.index("![")]
    said = re.search(r"the Swin puts ([\d.]+) on the left digit and the ViT ([\d.]+)", text)
    assert (float(said[1]), float(said[2])) == (numbers["Swin"], numbers["ViT"])
    said = re.search(r"\(([\d.]+) and ([\d.]+) of the mass in it", text)
    assert (float(said[1]), float(said[2])) == (numbers["LSTM"], numbers["Transformer encoder"])
    doc = " ".join((ROOT / "examples/vit_swin_sequences.py").read_text().split())
    said = re.search(r"the Swin puts ([\d.]+) of its map on the left digit, the ViT ([\d.]+)", doc)
    assert (float(said[1]), float(said[2])) == (numbers["Swin"], numbers["ViT"])


def _readme_rows() -> dict[str, str]:
    table = USAGE[USAGE.index("| argument | meaning |"):]
    table = table[:table.index("\n\n")]
    return dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", table, flags=re.M))


def test_the_readme_states_each_default_the_signature_has():
    params = inspect.signature(gradattr.grad_cam).parameters
    rows = _readme_rows()
    stated = {name: re.findall(r"`([^`]+)` \(the default\)", row) for name, row in rows.items()}
    assert stated["feature_call"] == ["None"]
    for name, values in stated.items():
        for v in values:
            assert v == repr(params[name].default).strip("'") or v == repr(params[name].default), (name, v)


def test_every_feature_layout_name_is_in_the_docstring_and_the_readme():
    from gradattr.layouts import LAYOUT_NAMES

    doc, row = " ".join(gradattr.grad_cam.__doc__.split()), _readme_rows()["feature_layout"]
    for name in LAYOUT_NAMES:
        assert f'"{name}"' in doc and f'`"{name}"`' in row, name


# -- torch.compile ---------------------------------------------------------------------------
@pytest.mark.slow  # Dynamo traces the model (seconds)
def test_a_compiled_model_is_explained_without_dynamo_warnings():
    import torch._dynamo

    net = small_net()
    x = torch.rand(2, 3, 8, 8)
    want = gradattr.grad_cam(net, x, 1)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager")  # Dynamo's tracing, without a C++ compiler
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = gradattr.grad_cam(compiled, x, 1)
            again = gradattr.grad_cam(compiled, x, 1)
    finally:
        torch._dynamo.reset()
    assert [str(w.message)[:120] for w in seen] == []
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(again, want, atol=1e-6, rtol=1e-5)


# -- examples leave git status clean -----------------------------------------------------------
def _git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_examples_write_only_to_the_ignored_output_folder_by_default():
    import ast

    assert _git("ls-files", "examples/output") == ""  # nothing tracked in the ignored folder
    assert _git("check-ignore", "examples/output/sliding_window_volume.png").strip() \
        == "examples/output/sliding_window_volume.png"
    assert _git("check-ignore", "examples/output/cache/a.pt").strip() == "examples/output/cache/a.pt"
    scripts = sorted(p for p in (ROOT / "examples").glob("*.py") if p.name != "example_utils.py")
    assert len(scripts) >= 9
    for script in scripts:
        tree = ast.parse(script.read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        defaults = dict(zip([a.arg for a in main.args.args][-len(main.args.defaults):], main.args.defaults))
        assert ast.unparse(defaults["out_dir"]) == "OUTPUT", script.name  # examples/output unless --out
        # every file it writes is named through save_path(out_dir, ...) (or the cache helper)
        saved = {"path"} | {ast.unparse(t) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                            and isinstance(n.value, ast.Call) and ast.unparse(n.value.func) == "save_path"
                            for t in n.targets}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            name = ast.unparse(call.func)
            if name in ("open",) and len(call.args) > 1 and ast.unparse(call.args[1]) in ("'w'", "'wb'"):
                assert ast.unparse(call.args[0]) in saved | {"numbers"}, (script.name, ast.unparse(call))
            if name.endswith("savefig"):  # a name bound to save_path(out_dir, ...) in the script
                assert ast.unparse(call.args[0]) in saved, (script.name, ast.unparse(call))
            if name == "save_path":
                assert ast.unparse(call.args[0]) == "out_dir", (script.name, ast.unparse(call))


# -- the benchmark's --quick -------------------------------------------------------------------
@pytest.mark.slow  # runs a slice of the benchmark (about 20 s)
def test_bench_quick_labels_every_figure_and_writes_only_where_told(tmp_path):
    import sys

    out = tmp_path / "quick.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench.py"), "--quick", "--groups", "methods,dataset",
                           "--models", "cnn1d", "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [ln for ln in done.stdout.splitlines() if ln.startswith("  cnn1d")]
    assert len(rows) == 13  # six methods at batches 1 and 8, and ten classes at batch 1
    for ln in rows:  # every figure with its unit
        tail = ln[ln.index(" fwd "):].strip()
        assert re.fullmatch(r"fwd +\S+ ms +gradattr +\S+ ms +pgc +\S+ ms +captum +\S+ ms +"
                            r"gradattr/fwd +\S+x +gradattr/pgc +\S+x", tail), ln
    assert re.search(r"\(case took [\d.]+ s\)", done.stdout)
    assert re.search(r"images/s +\([\d.]+ x fwd loop time\)", done.stdout)
    assert re.search(r"measured +[\d.]+x \(limit <= [\d.]+x\)", done.stdout)
    text = out.read_text()
    assert "| fwd ms | gradattr ms |" in text and "measured (x)" in text


# -- the documentation site --------------------------------------------------------------------
@pytest.mark.slow  # builds the whole site (about a minute)
def test_the_documentation_site_builds_strictly(tmp_path):
    import shutil
    import sys

    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    catalogue = (tmp_path / "site/methods/index.html").read_text()
    for name in gradattr.list_methods():  # the catalogue is generated from the registry
        assert f"<code>{name}</code>" in catalogue, name
    # the API reference is several pages (api, api-gradient-cams, api-cams, api-input, ...)
    api = "".join(p.read_text() for p in sorted((tmp_path / "site").glob("api*/index.html")))
    missing = [name for name in gradattr.list_methods() if f'id="gradattr.api.{name}"' not in api]
    assert not missing, missing
    assert 'id="gradattr.plot.overlay_array"' in api and 'id="gradattr.report.report"' in api
    assert shutil.which("git") is None or _git("status", "--porcelain", "site") == ""
