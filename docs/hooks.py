"""MkDocs hooks: the method catalogue from gradattr's registry, the README's Guarantees, and links
into the README.

``docs/methods.md`` holds a ``<!-- catalogue -->`` marker that is replaced, at build time, by one
section per registered method (title, kind, target, what it returns, options, use-when, the
docstring's formula and paper, and its picture when the gallery has one), so the catalogue cannot
drift from the code. Pages that link to ``../README.md#section`` (written to be read on GitHub)
are pointed at the site page that holds that section.
"""
from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's gradattr

# README section anchors -> the site page that carries the section
README_PAGES = {
    "whole-datasets": "datasets.md",
    "transformers-sequence-models-and-structured-outputs": "sequences.md",
    "command-line": "cli.md",
    "the-cam-family": "methods.md",
    "is-the-map-faithful-metrics-and-compare": "metrics.md",
    "coming-from-matlab": "matlab.md",
    "guarantees": "guarantees.md",
    "use": "usage.md",
    "examples": "gallery.md",
}


def _catalogue() -> str:
    import gradattr
    from gradattr.registry import SHARED

    shared = set(SHARED)
    out = []
    for name in gradattr.list_methods():
        info = gradattr.method_info(name)
        fn = getattr(gradattr, name)
        doc = inspect.cleandoc(fn.__doc__ or "")
        lead = "\n\n".join(p.replace("\n", " ") for p in doc.split("Args:")[0].strip().split("\n\n"))
        own = [o for o in info.options if o not in shared]
        out += [f"## `{name}`: {info.title}", "",
                f"*{info.family}* method, captures {info.captures}; {'needs a target class' if info.needs_target else 'explains no class'}; "
                f"returns {info.returns}.", "",
                f"**Use it when** {info.use_when}" if info.use_when else "", "",
                lead, ""]
        if own:
            out += ["Its own options: " + ", ".join(f"`{o}`" for o in own) + ".", ""]
        out += [f"`gradattr.{name}(net, x, target, ...)`, or "
                f"`gradattr.attribute(net, x, target, method=\"{name}\")`; every option in the "
                f"[API reference](api.md).", ""]
    return "\n".join(out)


def _readme_section(title: str) -> str:
    """A ``## title`` section of the README (its one source), its links pointed into the site."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = re.split(r"(?m)^## ", text.split(f"\n## {title}\n", 1)[1])[0]
    body = re.sub(r"(?m)^### ", "## ", body).replace("](docs/images/", "](images/")
    return re.sub(r"\]\(docs/([\w./#-]+)\)", r"](\1)", body)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- catalogue -->" in markdown:
        markdown = markdown.replace("<!-- catalogue -->", _catalogue())
    markdown = re.sub(r"<!-- readme: (.+?) -->", lambda m: _readme_section(m.group(1)), markdown)

    def readme(m: re.Match) -> str:
        anchor = m.group(1) or ""
        return "](" + README_PAGES.get(anchor, "index.md") + ")"

    return re.sub(r"\]\(\.\./README\.md(?:#([\w-]+))?\)", readme, markdown)
