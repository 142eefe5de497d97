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
