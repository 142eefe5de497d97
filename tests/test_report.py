"""gradattr report: a static page of a dataset run, checked in its HTML and in a real browser.

The fast tests read the written page (cards, their data, the files beside it, no
network reference); the slow test opens a 200-image run in headless Chromium,
sorts, filters and clicks as a user would.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

import gradattr  # noqa: E402
from gradattr import GradattrError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def conv_net(rank: int = 2, c: int = 3, k: int = 3) -> nn.Module:
    torch.manual_seed(0)
    conv, pool = {1: (nn.Conv1d, nn.AdaptiveAvgPool1d), 2: (nn.Conv2d, nn.AdaptiveAvgPool2d),
                  3: (nn.Conv3d, nn.AdaptiveAvgPool3d)}[rank]
    return nn.Sequential(conv(c, 4, 3, padding=1), nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(4, k)).eval()


def cards(page: Path) -> list[dict]:
    """Each card's data-* attributes, in page order."""
    text = page.read_text()
    out = []
    for tag in re.findall(r'<div class="card" [^>]*>', text):
        out.append(dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag)))
    return out


def test_image_run_cards_with_class_score_probability_and_deletion(tmp_path):
    net = conv_net()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10, 3, 12, 14, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    gradattr.explain_dataset(net, [(x[:4], y[:4]), (x[4:], y[4:])], target="label", out_dir=tmp_path / "run")
    data = torch.utils.data.TensorDataset(x, y)
    page = gradattr.report(tmp_path / "run", inputs=data, net=net, classes=["cat", "dog", "bird"],
                           metrics=["deletion"])
    assert page == tmp_path / "run" / "report" / "index.html"
    got = cards(page)
    assert [int(c["index"]) for c in got] == list(range(10))
    with torch.no_grad():
        logits = net(x)
    prob = torch.softmax(logits, 1)
    for c, label in zip(got, y.tolist()):  # the run explained each sample's label: that class is scored
        i = int(c["index"])
        assert int(c["class"]) == label and c["class-name"] == ["cat", "dog", "bird"][label]
        assert float(c["score"]) == pytest.approx(float(logits[i, label]), rel=1e-5)
        assert float(c["probability"]) == pytest.approx(float(prob[i, label]), rel=1e-5)
        ref = gradattr.metrics.deletion(net, x[i:i + 1], gradattr.load_maps(tmp_path / "run")[i:i + 1],
                                        torch.tensor([[label]]), steps=20).auc
        assert float(c["metric-deletion"]) == pytest.approx(float(np.asarray(ref).ravel()[0]), rel=1e-4)
    maps = gradattr.load_maps(tmp_path / "run")
    assert float(got[3]["min"]) == pytest.approx(float(maps[3].min())) and \
        float(got[3]["max"]) == pytest.approx(float(maps[3].max()))
    # the pictures beside the page: the full-size overlay is the overlay array, enlarged without blending
    full = np.asarray(Image.open(page.parent / got[3]["full"]).convert("RGB"))
    small = gradattr.plot.overlay_array(x[3], maps[3])
    step = full.shape[0] // 12
    np.testing.assert_array_equal(full[::step, ::step][:12, :14], small)
    for k in ("input", "overlay"):
        assert (page.parent / "img" / f"3_{k}.png").is_file()
    text = page.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<script>" in text and "<style>" in text
    assert "deletion (lower: more faithful)" in text and '<option value="2">2: bird</option>' in text


def test_sequence_and_volume_runs(tmp_path):
    x1 = torch.randn(5, 2, 30)
    gradattr.explain_dataset(conv_net(1, 2), [x1], out_dir=tmp_path / "seq")
    page = gradattr.report(tmp_path / "seq", inputs=x1)
    text = page.read_text()
    assert text.count('class="card"') == 5 and text.count("<svg") == 10 and "5 sequences" in text
    assert "<polyline" in text and not (page.parent / "img" / "0_full.png").exists()

    x3 = torch.randn(3, 1, 6, 8, 10)
    gradattr.explain_dataset(conv_net(3, 1), [x3], out_dir=tmp_path / "vol")
    page = gradattr.report(tmp_path / "vol", inputs=x3.numpy())
    assert page.read_text().count('class="card"') == 3 and "volumes" in page.read_text()
    full = np.asarray(Image.open(page.parent / "img" / "0_full.png"))
    ref = gradattr.plot.volume_array(x3[0], gradattr.load_maps(tmp_path / "vol")[0])
    assert full.shape[1] / full.shape[0] == pytest.approx(ref.shape[1] / ref.shape[0], rel=0.02)


def test_the_header_says_what_was_explained(tmp_path):
    """It once said "target None" for a run without a target (each sample's top class)."""
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0])
    header = {}
    for name, target in (("top", None), ("fixed", 2), ("label", "label")):
        gradattr.explain_dataset(conv_net(), [(x, y)], target=target, out_dir=tmp_path / name)
        text = gradattr.report(tmp_path / name).read_text()
        header[name] = re.search(r'<div class="run">(.*?)</div>', text).group(1)
    assert header["top"] == ("4 images; method grad_cam, explaining each sample&#x27;s top class. "
                             "Click a card for the full-size map.")
    assert "method grad_cam, explaining class 2." in header["fixed"]
    assert "method grad_cam, explaining each sample&#x27;s label." in header["label"]
    assert "None" not in header["top"]


def test_maps_only_and_a_samples_file_written_by_the_run(tmp_path):
    x = torch.rand(4, 3, 8, 8)
    gradattr.explain_dataset(conv_net(), [x], out_dir=tmp_path / "run")
    with open(tmp_path / "run" / "samples.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"index": i, "class": i % 2, "score": 1.5 * i, "probability": 0.25 * i,
                                "metrics": {"deletion": 0.1 * (4 - i)}}) + "\n")
    page = gradattr.report(tmp_path / "run")
    got = cards(page)
    assert [float(c["score"]) for c in got] == [0.0, 1.5, 3.0, 4.5]
    assert [float(c["metric-deletion"]) for c in got] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert "sample 0" in page.read_text() and not (page.parent / "img" / "0_input.png").exists()


def test_cli_report_of_an_explain_dataset_folder(tmp_path, monkeypatch, capsys):
    from gradattr.cli import main

    (tmp_path / "rnet.py").write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), "
        "nn.Flatten(), nn.Linear(4, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"im{i}.png")
    (tmp_path / "names.txt").write_text("cat\ndog\nbird\n")
    common = ["--model", "rnet:build", "--random-weights", "--mean", "0.5", "--std", "0.25"]
    assert main(["explain-dataset", "imgs", "--out-dir", "maps", "--batch-size", "4", *common]) == 0
    assert main(["report", "maps", "--classes", "names.txt", "--metrics", "deletion", *common]) == 0
    out = capsys.readouterr().out.strip()
    assert out == os.path.join("maps", "report", "index.html")
    got = cards(tmp_path / out)
    assert [c["name"] for c in got] == [f"im{i}.png" for i in range(6)]
    assert all(c["class-name"] in ("cat", "dog", "bird") and 0 < float(c["probability"]) < 1 for c in got)
    assert all(c["metric-deletion"] for c in got)
    assert main(["report", "maps", "--metrics", "deletion"]) == 1
    assert "--metrics: expected --model too" in capsys.readouterr().err
    assert main(["report", "nowhere"]) == 1
    assert "out_dir: expected a folder written by explain_dataset" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [
    (dict(metrics=["insertion"]), r"metrics: expected names from \['deletion'\], got \['insertion'\]"),
    (dict(metrics=["deletion"]), r"net: expected the run's network, to compute the metrics deletion"),
    (dict(thumb=4), r"thumb: expected an int >= 16"),
    (dict(inputs=torch.rand(2, 3, 8, 8)), r"inputs: expected at least the run's 4 samples, got 2"),
    (dict(net="x"), r"inputs: expected the run's samples"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    gradattr.explain_dataset(conv_net(), [torch.rand(4, 3, 8, 8)], out_dir=tmp_path / "run")
    with pytest.raises(GradattrError, match=match):
        gradattr.report(tmp_path / "run", **kwargs)


# -- in a real browser ----------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _digits_run(folder: Path, n: int = 200):
    """A tiny CNN trained for a second on scikit-learn's digits, its Grad-CAM run over n of them."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, scale_factor=3, mode="nearest")  # 24 x 24
    y = torch.tensor(d.target[:n])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=50)
    gradattr.explain_dataset(net, loader, target="label", out_dir=folder)
    return net, data


@pytest.mark.slow
def test_the_page_in_headless_chromium(tmp_path):
    browser_path = _chromium()
    playwright = pytest.importorskip("playwright.sync_api")
    if browser_path is None:
        pytest.skip("no chromium (apt-get install chromium)")
    net, data = _digits_run(tmp_path / "run")
    page_path = gradattr.report(tmp_path / "run", inputs=data, net=net, classes=[str(k) for k in range(10)],
                                metrics=["deletion"], thumb=72)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            assert page.locator(".card").count() == 200
            assert page.locator("#shown").inner_text() == "200 of 200 shown"

            def order(attr="index"):
                return page.eval_on_selector_all(".card:not([hidden])", f"cs => cs.map(c => c.dataset.{attr})")

            assert order() == [str(i) for i in range(200)]
            page.select_option("#sort", "probability:asc")
            probs = [float(v) for v in order("probability")]
            assert probs == sorted(probs) and order() != [str(i) for i in range(200)]
            page.select_option("#sort", "metric-deletion:desc")
            dels = [float(v) for v in page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.metricDeletion)")]
            assert dels == sorted(dels, reverse=True)
            page.select_option("#class-filter", "7")
            shown = order("class")
            assert shown and set(shown) == {"7"} and len(shown) == int(data.tensors[1].eq(7).sum())
            page.select_option("#class-filter", "")
            page.select_option("#sort", "score:desc")
            assert page.locator("#detail").is_hidden()
            first = page.locator(".card").first
            index = first.get_attribute("data-index")
            first.click()
            assert page.locator("#detail").is_visible()
            assert page.locator("#detail").get_attribute("data-index") == index
            img = page.locator("#detail-picture img")
            assert img.get_attribute("src") == f"img/{index}_full.png"
            assert page.evaluate("document.querySelector('#detail-picture img').naturalWidth") >= 512
            assert page.locator("#scale-max").inner_text() != ""
            page.keyboard.press("Escape")
            assert page.locator("#detail").is_hidden()
            assert all(u.startswith("file://") for u in requests)  # nothing from the network
            page.select_option("#sort", "index:asc")
            shot = os.environ.get("GRADATTR_REPORT_SCREENSHOT") or str(tmp_path / "report.png")
            page.screenshot(path=shot)
            assert Image.open(shot).size == (1280, 900)
        finally:
            browser.close()
