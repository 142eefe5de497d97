"""``gradattr methods``: the attribution methods, one line each."""
from __future__ import annotations

from .common import EXTRA_METHODS


def cmd_methods(args) -> int:
    import gradattr

    rows = [(name, gradattr.method_info(name).summary) for name in gradattr.list_methods()]
    rows += [(name, doc) for name, doc in EXTRA_METHODS.items() if name not in dict(rows)]
    width = max(len(n) for n, _ in rows)
    for name, doc in rows:
        text = " ".join(doc.replace("``", "").split())
        print(f"{name.ljust(width)}  {text}".rstrip())
    return 0
