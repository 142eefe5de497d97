"""MkDocs hooks: the method catalogue from gradattr's registry, the README's Guarantees, and links
into the README.

``docs/methods.md`` holds a ``<!-- catalogue -->`` marker that is replaced, at build time, by one
section per registered method (title, kind, target, what it returns, options, use-when, the
docstring's formula and paper, and its picture when the gallery has one), so the catalogue cannot
drift from the code. Pages that link to ``../README.md#section`` (written to be read on GitHub)
are pointed at the site page that holds that section.
"""
from __future__ import annotations

import functools
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
    from gradattr.options import SHARED

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
                f"`gradattr.attribute(net, x, target, method=\"{name}\")`; every option in "
                f"[its API entry][gradattr.{name}].", ""]
    return "\n".join(out)


def _readme_section(title: str) -> str:
    """A ``## title`` section of the README (its one source), its links pointed into the site."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = re.split(r"(?m)^## ", text.split(f"\n## {title}\n", 1)[1])[0]
    body = re.sub(r"(?m)^### ", "## ", body).replace("](docs/images/", "](images/")
    return re.sub(r"\]\(docs/([\w./#-]+)\)", r"](\1)", body)


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = _api_markers(markdown)
    if "<!-- catalogue -->" in markdown:
        markdown = markdown.replace("<!-- catalogue -->", _catalogue())
    markdown = re.sub(r"<!-- readme: (.+?) -->", lambda m: _readme_section(m.group(1)), markdown)

    def readme(m: re.Match) -> str:
        anchor = m.group(1) or ""
        return "](" + README_PAGES.get(anchor, "index.md") + ")"

    return re.sub(r"\]\(\.\./README\.md(?:#([\w-]+))?\)", readme, markdown)


# -- the API reference ------------------------------------------------------------------------
# Docstrings are written with reStructuredText habits (``code``, :func:`name`) and the generated
# method functions each repeat the shared arguments' text. The griffe extension below turns the
# former into Markdown and the latter into links to one table of shared arguments, so that each
# API page stays readable and small; the pages list the methods by family (``<!-- api: ... -->``
# markers), and a build fails if a public method is on no page.

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|attr|mod|exc|obj|const):`([^`]+)`")
_DOUBLE = re.compile(r"(?<!`)``(?!`)(.+?)(?<!`)``(?!`)", re.S)
_GROUPED = re.compile(r"(?m)^( +)(\w+(?:,\s+\w+)+):(.*(?:\n\1 +\S.*)*)")
_placed: set[str] = set()


def _role(m: re.Match) -> str:
    target = m.group(1)
    if "<" in target:  # :func:`title <target>`
        return f"`{target.split('<')[0].strip()}`"
    return f"`{target[1:].rsplit('.', 1)[-1]}`" if target.startswith("~") else f"`{target}`"


def rst_to_markdown(text: str) -> str:
    """``code`` -> `code`, :func:`a.b` -> `a.b` (:func:`~a.b` -> `b`), and Google-style argument
    groups ``a, b, c: text`` -> one entry per argument (each gets a row of the table)."""
    text = _ROLE.sub(_role, text)
    text = _DOUBLE.sub(lambda m: f"`{m.group(1)}`", text)

    def ungroup(m: re.Match) -> str:
        desc = " ".join(m.group(3).split())
        return "\n".join(f"{m.group(1)}{name}: {desc}" for name in re.split(r",\s+", m.group(2)))

    return _GROUPED.sub(ungroup, text)


def _arguments(doc: str) -> dict[str, str]:
    """The ``Args:`` entries of a generated method's docstring: name -> text on one line."""
    body = inspect.cleandoc(doc).split("\nArgs:\n", 1)[-1].split("\n\n", 1)[0]
    entries = re.findall(r"(?m)^    (\w+): (.*(?:\n {5,}\S.*)*)", body)
    return {name: " ".join(text.split()) for name, text in entries}


@functools.lru_cache(maxsize=1)
def _shared_arguments() -> dict[tuple[str, str], str]:
    """(name, text) of every argument that three or more methods describe alike -> its anchor."""
    import gradattr

    seen: dict[tuple[str, str], int] = {}
    for name in gradattr.list_methods():
        for item in _arguments(getattr(gradattr, name).__doc__ or "").items():
            seen[item] = seen.get(item, 0) + 1
    shared = [item for item, n in seen.items() if n > 2]
    out, taken = {}, set()
    for arg, text in shared:
        anchor = f"api-arg-{arg}"
        if anchor in taken:
            anchor += f"-{sum(a == arg for a, _ in out) + 1}"
        taken.add(anchor)
        out[(arg, text)] = anchor
    return out


def _gist(text: str, width: int = 90) -> str:
    """The first clause of a shared argument's text (up to ``;`` or a sentence's end), at most
    ``width`` characters cut at a word, never inside a code span."""
    text, depth, end = rst_to_markdown(text), 0, None
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and ch in ";." and text[i + 1:i + 2] in (" ", "") \
                and not text[:i + 1].endswith(("e.g.", "i.e.")):
            end = i
            break
    gist = text[:end]
    if len(gist) > width:
        gist = gist[:width].rsplit(" ", 1)[0]
        if gist.count("`") % 2:
            gist = gist[:gist.rindex("`")].rstrip()
        gist = gist.rstrip(",;:(") + " …"
    return gist


def _shared_section() -> str:
    """One heading per shared argument (its anchor is what the method tables link to)."""
    out = []
    for (arg, text), anchor in _shared_arguments().items():
        out += [f"### `{arg}` {{#{anchor}}}", "", rst_to_markdown(text), ""]
    return "\n".join(out)


def _method_entries(families: list[str]) -> str:
    import gradattr

    out = []
    for name in gradattr.list_methods():
        if gradattr.method_info(name).family in families:
            _placed.add(name)
            out += [f"::: gradattr.api.{name}", "    options:", "      force_inspection: true", ""]
    return "\n".join(out)


def _api_markers(markdown: str) -> str:
    markdown = markdown.replace("<!-- api: shared arguments -->", _shared_section())
    return re.sub(r"<!-- api: methods (.+?) -->",
                  lambda m: _method_entries([f.strip() for f in m.group(1).split(",")]), markdown)


def on_post_build(config) -> None:
    import gradattr

    missing = [n for n in gradattr.list_methods() if n not in _placed]
    if missing:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"methods on no API page (add their family to an <!-- api: methods ... --> "
                          f"marker): {missing}")


try:
    import griffe
except ImportError:  # mkdocs without mkdocstrings: the extension is not needed
    griffe = None

if griffe is not None:
    class MarkdownDocstrings(griffe.Extension):
        """Every docstring in Markdown; a generated method's shared arguments as links to the
        shared table (their text is on the page once)."""

        def on_object(self, *, obj, loader, **kwargs) -> None:
            if obj.is_alias or obj.docstring is None:
                return
            value = obj.docstring.value
            if obj.is_function and obj.parent is not None and obj.parent.path == "gradattr.api":
                shared = _shared_arguments()

                def link(m: re.Match) -> str:
                    anchor = shared.get((m.group(1), " ".join(m.group(2).split())))
                    if anchor is None:
                        return m.group(0)
                    return f"    {m.group(1)}: {_gist(m.group(2))} ([shared][{anchor}])."

                head, sep, rest = value.partition("\nArgs:\n")
                if sep:
                    args, sep2, tail = rest.partition("\n\n")
                    args = re.sub(r"(?m)^    (\w+): (.*(?:\n {5,}\S.*)*)", link, args)
                    value = head + sep + args + sep2 + tail
            obj.docstring.value = rst_to_markdown(value)
