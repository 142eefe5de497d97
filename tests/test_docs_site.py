"""The documentation site's API reference, built with mkdocs and read in headless Chromium.

The reference is rendered from docstrings written with reStructuredText habits; the docs hook
turns them into Markdown. The browser test checks what a reader gets: pages of a readable size,
no object dumps or addresses, no raw roles or doubled backticks, every public function once,
code blocks that scroll rather than cut, and argument names that never break mid-word.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gradattr

ROOT = Path(__file__).resolve().parents[1]
MAX_CHARS = 60_000


def _hooks():
    spec = importlib.util.spec_from_file_location("gradattr_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docstrings_become_markdown():
    to_md = _hooks().rst_to_markdown
    assert to_md("see :func:`gradattr.attribute` and :class:`~gradattr.comparison.Table`") == \
        "see `gradattr.attribute` and `Table`"
    assert to_md("``x`` is ``(N, C)``; :data:`title <gradattr.registry.SHARED>`") == \
        "`x` is `(N, C)`; `title`"
    assert to_md("```python\nx = 1\n```") == "```python\nx = 1\n```"  # fences stay
    grouped = "Args:\n    net, x,\n        maps: as in ``deletion``.\n    steps: how many.\n"
    assert to_md(grouped) == "Args:\n    net: as in `deletion`.\n    x: as in `deletion`.\n" \
                             "    maps: as in `deletion`.\n    steps: how many.\n"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


_CODE_FITS = """els => els.map(pre => {
    const code = pre.querySelector('code') || pre;
    const scrolls = e => ['auto', 'scroll'].includes(getComputedStyle(e).overflowX);
    return (code.scrollWidth <= code.clientWidth + 1 || scrolls(code) || scrolls(pre)) ? '' : pre.innerText.slice(0, 80);
})"""

_NAMES = """els => els.map(c => {
    const s = getComputedStyle(c);
    return [c.innerText, s.wordBreak, s.overflowWrap, c.getClientRects().length];
})"""


@pytest.mark.slow
def test_api_reference_in_headless_chromium(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    playwright = pytest.importorskip("playwright.sync_api")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no chromium (apt-get install chromium)")
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                           capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    pages = sorted(site.glob("api*/index.html"))
    public = [n for n in gradattr.__all__ if callable(getattr(gradattr, n))]
    headings: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route(re.compile(r"^https?://"), lambda route: route.abort())  # fonts: nothing from the network
            for path in pages:
                page.goto(path.as_uri())
                text = page.inner_text("body")
                name = path.parent.name
                assert len(text) <= MAX_CHARS, (name, len(text))
                assert not re.search(r"0x[0-9a-fA-F]{6,}", text), name
                for bad in ("__file__", "__cached__", "__doc__", "REGISTRY", "str(object=", "``"):
                    assert bad not in text, (name, bad)
                roles = re.findall(r":(?:func|class|meth|data|attr|mod|exc|obj):`", text)
                assert not roles, (name, roles[:3])
                headings += page.eval_on_selector_all(
                    "h2[id^='gradattr.'], h3[id^='gradattr.'], h4[id^='gradattr.']", "hs => hs.map(h => h.id)")
                cut = [t for t in page.eval_on_selector_all(".md-typeset pre", _CODE_FITS) if t]
                assert not cut, (name, cut[:3])
                names = page.eval_on_selector_all(".md-typeset table td:first-child code", _NAMES)
                for arg, word_break, wrap, lines in names:
                    assert (word_break, wrap, lines) == ("keep-all", "normal", 1), (name, arg, word_break, wrap, lines)
                if name == "api-gradient-cams":
                    assert len(names) > 100  # the methods' argument tables are there
                    page.goto(path.as_uri() + "#gradattr.api.grad_cam")
                    page.wait_for_timeout(500)  # the header's title settles
                    shot = os.environ.get("GRADATTR_DOCS_SCREENSHOT") or str(tmp_path / "api.png")
                    page.screenshot(path=shot)
        finally:
            browser.close()
    assert len(pages) >= 2  # the reference is split by subject
    last = [h.rsplit(".", 1)[-1] for h in headings]
    assert {n: last.count(n) for n in public} == {n: 1 for n in public}
