"""The report page as an attack surface: what a hostile run folder can put on the page, and
where a planted symbolic link could make ``gradattr report`` read or write.

Each test plants what an attacker who can write into the run folder (or the input folder)
would plant, then checks the page's markup (parsed, not searched), the files outside the
folder, and the message.
"""
from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("matplotlib")

import gradattr  # noqa: E402
from gradattr import GradattrError  # noqa: E402

HOSTILE = 'x"><img src=x onerror="window.pwned=1">'
HOSTILE_ATTR = "z onerror=window.pwned=2 q"


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def run_folder(path: Path, n: int = 4) -> Path:
    gradattr.explain_dataset(conv_net(), [torch.rand(n, 3, 8, 8)], out_dir=path)
    return path


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, as a browser's tokenizer splits them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parsed(page: Path) -> list[tuple[str, dict]]:
    p = Tags()
    p.feed(page.read_text(encoding="utf-8"))
    return p.tags


def hostile_samples(folder: Path) -> dict:
    """samples.jsonl with metric names and class labels built to break out of attributes."""
    values = {0: 0.5, 1: 0.1, 2: 0.9, 3: 0.3}
    with open(folder / "samples.jsonl", "w") as f:
        for i, v in values.items():
            f.write(json.dumps({"index": i, "class": HOSTILE, "score": float(i),
                                "metrics": {HOSTILE: 1.0, HOSTILE_ATTR: 2.0, "a b": v, "deletion": -v}}) + "\n")
    return values


# -- 1, 6: escaping ------------------------------------------------------------------------------
def test_hostile_metric_names_and_labels_stay_text(tmp_path):
    folder = run_folder(tmp_path / "run")
    hostile_samples(folder)
    page = gradattr.report(folder, title=HOSTILE)
    tags = parsed(page)
    assert not [t for t, a in tags if any(k.startswith("on") for k in a)]  # no event handler anywhere
    assert not [a for t, a in tags if t == "img" and a.get("src") == "x"]  # no injected element
    cards = [a for t, a in tags if t == "div" and a.get("class") == "card"]
    assert len(cards) == 4
    token = {"a b": "_612062", "deletion": "deletion"}
    allowed = {"class", "id", "tabindex", "data-index", "data-class", "data-score", "data-probability",
               "data-name", "data-min", "data-max", "data-full", "data-label", "data-class-name"}
    for a in cards:  # every metric is one attribute whose name is a token, its value the number
        metric_attrs = {k for k in a if k.startswith("data-metric-")}
        assert set(a) - metric_attrs == allowed and len(metric_attrs) == 4
        assert all(k[len("data-metric-"):].replace("_", "").isalnum() for k in metric_attrs)
        assert a["data-class"] == HOSTILE  # the label survives as text, whole
    got = {int(a["data-index"]): float(a["data-metric-" + token["a b"]]) for a in cards}
    assert got == {0: 0.5, 1: 0.1, 2: 0.9, 3: 0.3}
    options = [a["value"] for t, a in tags if t == "option"]
    assert "metric-_612062:asc" in options and "metric-deletion:desc" in options
    assert f"metric-_{HOSTILE.encode().hex()}:asc" in options  # the hostile name, as its token
    titles = [t for t, a in tags if t == "title"]
    assert len(titles) == 1


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_injected_onerror_does_not_run_in_chromium_and_a_spaced_name_sorts(tmp_path):
    browser_path = _chromium()
    playwright = pytest.importorskip("playwright.sync_api")
    if browser_path is None:
        pytest.skip("no chromium (apt-get install chromium)")
    folder = run_folder(tmp_path / "run")
    values = hostile_samples(folder)
    page_path = gradattr.report(folder, title=HOSTILE)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            for value in page.eval_on_selector_all("#sort option", "os => os.map(o => o.value)"):
                page.select_option("#sort", value)
            page.locator(".card").first.click()
            page.wait_for_timeout(200)  # let any injected image fail to load and its handler run
            assert page.evaluate("typeof window.pwned") == "undefined"
            assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
            page.keyboard.press("Escape")
            page.select_option("#sort", "metric-_612062:asc")
            order = page.eval_on_selector_all(".card:not([hidden])", "cs => cs.map(c => +c.dataset.index)")
            assert order == sorted(values, key=values.get)  # [1, 3, 0, 2]: by the value of "a b"
            page.select_option("#sort", "metric-_612062:desc")
            order = page.eval_on_selector_all(".card:not([hidden])", "cs => cs.map(c => +c.dataset.index)")
            assert order == sorted(values, key=values.get, reverse=True)
        finally:
            browser.close()


# -- 2: no writing through links -----------------------------------------------------------------
@pytest.mark.parametrize("planted", ["report/index.html", "report", "report/img", "report/img/0_overlay.png"])
def test_planted_links_are_not_written_through(tmp_path, planted):
    folder = run_folder(tmp_path / "run")
    victim = tmp_path / "victim"
    if planted in ("report", "report/img"):
        victim.mkdir()
        (victim / "keep.txt").write_text("mine")
    else:
        victim.write_bytes(b"the victim's own bytes")
    link = folder / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, link)
    with pytest.raises(GradattrError, match=r"symbolic link"):
        gradattr.report(folder)
    if planted in ("report", "report/img"):
        assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    else:
        assert victim.read_bytes() == b"the victim's own bytes"
    assert os.path.islink(link)  # refused, left as it was


def test_the_command_line_refuses_a_planted_link_in_one_line(tmp_path, capfd):
    from gradattr.cli import main

    folder = run_folder(tmp_path / "run")
    victim = tmp_path / "victim.html"
    victim.write_text("mine")
    (folder / "report").mkdir()
    os.symlink(victim, folder / "report" / "index.html")
    assert main(["report", str(folder)]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "index.html to be a plain file gradattr may replace, got a symbolic link" in err
    assert victim.read_text() == "mine"


def test_report_rewrites_its_own_files_in_place(tmp_path):
    folder = run_folder(tmp_path / "run")
    first = gradattr.report(folder)
    before = sorted(p.name for p in (folder / "report" / "img").iterdir())
    second = gradattr.report(folder)
    assert first == second and sorted(p.name for p in (folder / "report" / "img").iterdir()) == before
    assert not [p for p in (folder / "report").rglob("*.tmp")]


# -- 3: no reading through links or out of the folders --------------------------------------------
def test_a_linked_samples_file_is_refused_unread(tmp_path):
    folder = run_folder(tmp_path / "run")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LINE\n")
    os.symlink(secret, folder / "samples.jsonl")
    with pytest.raises(GradattrError, match=r"samples\.jsonl.*symbolic link") as err:
        gradattr.report(folder)
    assert "TOP-SECRET" not in str(err.value)
    assert not (folder / "report" / "index.html").exists()


def _inputs_json(folder: Path, inputs: Path, names: list) -> None:
    (folder / "inputs.json").write_text(json.dumps({"folder": str(inputs), "files": [
        n if not isinstance(n, str) else {"name": n, "size": 0, "mtime_ns": 0} for n in names]}))


def test_input_names_with_a_folder_part_are_refused(tmp_path):
    folder = run_folder(tmp_path / "run", n=2)
    inputs, private = tmp_path / "inputs", tmp_path / "private"
    inputs.mkdir()
    private.mkdir()
    np.save(inputs / "a.npy", np.zeros((3, 8, 8), np.float32))
    np.save(private / "private.npy", np.full((3, 8, 8), 7, np.float32))
    _inputs_json(folder, inputs, ["a.npy", "../private/private.npy"])
    with pytest.raises(GradattrError, match=r"plain file name .*inputs\.json, files\[1\], field 'name', "
                                            r"got '\.\./private/private\.npy'"):
        gradattr.report(folder)
    assert not (folder / "report").exists()


def test_a_linked_input_file_is_refused(tmp_path):
    folder = run_folder(tmp_path / "run", n=2)
    inputs, private = tmp_path / "inputs", tmp_path / "private"
    inputs.mkdir()
    private.mkdir()
    np.save(inputs / "a.npy", np.zeros((3, 8, 8), np.float32))
    np.save(private / "private.npy", np.full((3, 8, 8), 7, np.float32))
    os.symlink(private / "private.npy", inputs / "b.npy")
    _inputs_json(folder, inputs, ["a.npy", "b.npy"])
    with pytest.raises(GradattrError, match=r"'b\.npy', which is a symbolic link"):
        gradattr.report(folder)


def test_plain_input_files_are_read(tmp_path):
    folder = run_folder(tmp_path / "run", n=2)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k in range(2):
        np.save(inputs / f"{k}.npy", np.full((3, 8, 8), k, np.float32))
    _inputs_json(folder, inputs, ["0.npy", "1.npy"])
    page = gradattr.report(folder)
    cards = [a for t, a in parsed(page) if t == "div" and a.get("class") == "card"]
    assert [c["data-name"] for c in cards] == ["0.npy", "1.npy"]
    assert (folder / "report" / "img" / "1_input.png").is_file()


# -- 11: damaged run folders: one error naming the file, the place and the field ---------------------
@pytest.mark.parametrize("lines, match", [
    ([{"index": 0, "score": 1.0}, {"index": 1, "score": "high"}],
     r"out_dir: expected 'score' to be a number in samples\.jsonl line 2, got 'high'"),
    ([{"index": 0, "metrics": [0.1, 0.2]}], r"expected 'metrics' to be an object \{name: number\} in "
                                            r"samples\.jsonl line 1, got \[0\.1, 0\.2\]"),
    ([{"index": 0, "metrics": {"deletion": "low"}}], r"'metrics' .* samples\.jsonl line 1"),
    ([{"index": "zero"}], r"expected 'index' to be an int >= 0 in samples\.jsonl line 1"),
    ([{"index": 0, "probability": [1]}], r"'probability' to be a number in samples\.jsonl line 1"),
])
def test_damaged_samples_file(tmp_path, lines, match):
    folder = run_folder(tmp_path / "run")
    (folder / "samples.jsonl").write_text("".join(json.dumps(v) + "\n" for v in lines))
    with pytest.raises(GradattrError, match=match):
        gradattr.report(folder)


@pytest.mark.parametrize("listing, match", [
    ({"folder": ".", "files": ["a.npy"]}, r"expected each entry of 'files' in inputs\.json to be an object "
                                           r"with a 'name' field, got 'a\.npy' at files\[0\]"),
    ({"folder": ".", "files": [{"name": 3}]}, r"inputs\.json, files\[0\], field 'name', got 3"),
    ({"folder": ".", "files": {"a": 1}}, r"inputs\.json to hold"),
    ([1, 2], r"inputs\.json to hold"),
    ({"folder": ".", "files": [{"name": "notes.txt"}]}, r"image or \.npy file names in inputs\.json, "
                                                        r"files\[0\], field 'name', got 'notes\.txt'"),
])
def test_damaged_inputs_listing(tmp_path, listing, match):
    folder = run_folder(tmp_path / "run")
    (folder / "inputs.json").write_text(json.dumps(listing))
    with pytest.raises(GradattrError, match=match):
        gradattr.report(folder)


def test_damaged_inputs_json_text(tmp_path):
    folder = run_folder(tmp_path / "run")
    (folder / "inputs.json").write_text('{"folder": ".", "files": [')
    with pytest.raises(GradattrError, match=r"out_dir: expected JSON in inputs\.json, got a damaged file"):
        gradattr.report(folder)
