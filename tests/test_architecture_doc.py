"""docs/ARCHITECTURE.md stays true: its module table is the tree, and the claims it makes about
where things live are read from the source here (ast and text, nothing imported)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gradattr"
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def _modules() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if p.name not in ("__init__.py", "__main__.py")}


def _table() -> list[str]:
    block = DOC.split("<!-- modules: begin -->")[1].split("<!-- modules: end -->")[0]
    return re.findall(r"^\| `([^`]+\.py)` \|", block, re.M)


def _imports(path: Path) -> set[str]:
    """The gradattr modules ``path`` names in any import (relative ones resolved)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(parts[:-1]) if node.level else []
            if node.level > 1:
                base = base[:len(base) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("gradattr")}


def test_the_module_table_is_the_tree():
    listed = _table()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert set(listed) == _modules(), (sorted(set(listed) - _modules()), sorted(_modules() - set(listed)))
    assert listed == sorted(listed)


def test_no_module_over_500_lines():
    long = {m: n for m in _modules() if (n := len((PACKAGE / m).read_text().splitlines())) > 500}
    assert not long, long


def test_options_sit_at_the_bottom():
    assert _imports(PACKAGE / "options.py") <= {"gradattr.errors", "gradattr.errors.expected"}


def test_only_api_imports_the_engine():
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
             if any(m == "gradattr.engine" or m.startswith("gradattr.engine.") for m in _imports(p))}
    assert users == {"api.py"}, users


def test_every_resize_goes_through_resize_py():
    calls = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
             if p.name != "resize.py" and "interpolate(" in p.read_text()]
    assert not calls, calls


def test_one_gaussian_blur_and_one_minmax():
    defs = {}
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef) and ("blur" in node.name or "minmax" in node.name):
                defs.setdefault(node.name, []).append(p.relative_to(PACKAGE).as_posix())
    assert defs.get("gaussian_blur") == ["ops.py"] and defs.get("minmax") == ["ops.py"], defs
    # metrics.blur is the public name of the same blur: it calls ops.gaussian_blur
    assert "gaussian_blur(" in (PACKAGE / "metrics" / "faithfulness.py").read_text()


def test_one_seed_rule():
    """No module but options.py defines a validator of a seed; every seed option is made by
    options.seed_option."""
    found = [(p.name, node.name) for p in PACKAGE.rglob("*.py") if p.name != "options.py"
             for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.FunctionDef) and "seed" in node.name
             and [a.arg for a in node.args.args] == ["name", "value"]]  # an option validator
    assert not found, found
    literal = [p.name for p in PACKAGE.rglob("*.py") if re.search(r'Option\(\s*"seed"', p.read_text())
               and p.name != "options.py"]
    assert not literal, literal


def test_the_table_names_what_the_doc_names():
    """Every `path.py` the text mentions (outside the table) is a module of the tree."""
    text = DOC.split("<!-- modules: begin -->")[0]
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.pyi?)`", text))
    outside = {n for n in named if n.split("/")[0] in ("tests", "benchmarks", "docs")}
    assert all((ROOT / n).exists() for n in outside), sorted(n for n in outside if not (ROOT / n).exists())
    files = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py*")}
    named = {n.removeprefix("gradattr/") for n in named - outside}
    unknown = {n for n in named if n not in files and not any(f.endswith("/" + n) for f in files)}
    assert not unknown, sorted(unknown)
