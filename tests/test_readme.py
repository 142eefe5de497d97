"""The README lists what the package has: every registered method is in the CAM-family table."""
from __future__ import annotations

import re
from pathlib import Path

import gradattr

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_registered_method_is_in_the_readme_table_and_nothing_else():
    table = README[README.index("| function | method | use it when |"):]
    table = table[:table.index("\n\n")]
    listed = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
    assert listed == gradattr.list_methods()


def test_every_argument_of_grad_cam_is_in_the_readme_signature_and_table():
    """A new shared option must be documented where users read the signature."""
    import inspect

    params = [p for p in inspect.signature(gradattr.grad_cam).parameters if p not in ("net", "x")]
    block = README[README.index("gradattr.grad_cam(net, x, target=None"):]
    block = block[:block.index("```")]
    assert re.findall(r"(\w+)=", block) == params
    table = README[README.index("| argument | meaning |"):]
    table = table[:table.index("\n\n")]
    rows = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
    assert sorted(rows) == sorted(params)  # each argument once, in an order that reads well
