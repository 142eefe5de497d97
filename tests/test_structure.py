"""The package's shape, read from its source: no import cycle, no private names borrowed
across modules, no function over 60 lines, nothing bound through ``inspect.signature``."""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gradattr"
FILES = sorted(PACKAGE.rglob("*.py"))


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    base = _module_name(path).split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level_imports(path: Path) -> set[str]:
    """The gradattr modules ``path`` imports when it is imported (module level, not in functions)."""
    return _imports(path, _tree(path).body)


def _all_imports(path: Path) -> set[str]:
    """The gradattr modules ``path`` imports anywhere, inside functions too."""
    return _imports(path, list(ast.walk(_tree(path))))


def _imports(path: Path, nodes) -> set[str]:
    modules = {_module_name(p) for p in FILES}
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            target = _resolve(path, node)
            for alias in node.names:  # "from . import methods" imports a module
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules and m != _module_name(path)}


def _cycles(imports) -> list[list[str]]:
    graph = {_module_name(p): imports(p) for p in FILES}
    # a package's __init__ imports its parts; a part importing a sibling through the package
    # is not a cycle of the code: drop the edges into package __init__s
    packages = {_module_name(p) for p in FILES if p.name == "__init__.py"}
    graph = {m: {d for d in deps if d not in packages} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert len(graph) > 30 and sum(map(len, graph.values())) > 60  # the walk saw the package
    return cycles


def test_no_import_cycle():
    assert not _cycles(_top_level_imports)


def test_no_import_cycle_through_imports_inside_functions():
    """An import inside a function is still an arrow: deferring it must not hide a loop."""
    assert not _cycles(_all_imports)


def test_the_cycle_check_sees_imports_inside_functions():
    """Some arrows exist only inside functions (lazy imports): the check above walks them."""
    hidden = {(_module_name(p), d) for p in FILES for d in _all_imports(p) - _top_level_imports(p)}
    assert len(hidden) >= 3, hidden


def test_no_private_name_crosses_a_module():
    found = []
    for path in FILES:
        tree = _tree(path)
        imported = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("gradattr")):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.name}:{node.lineno} from {_resolve(path, node)} import {alias.name}")
                    imported[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):  # module._private of an imported gradattr module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in imported and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert not found, found


def test_no_function_over_60_lines():
    long = []
    for path in FILES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({n} lines)")
    assert not long, long


def test_nothing_is_bound_through_inspect_signature():
    calls = [f"{p.name}:{node.lineno}" for p in FILES for node in ast.walk(_tree(p))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "signature" and isinstance(node.func.value, ast.Name)
             and node.func.value.id == "inspect"]
    assert not calls, calls
