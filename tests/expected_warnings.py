"""Marks for the gradattr warnings a test expects but does not check.

pyproject.toml turns every ``GradattrWarning`` into an error in the tests: a test asserts the
warning it provokes (``pytest.warns(GradattrWarning, match=...)``) or carries one of these marks,
which ignore one warning by its text, for that test only.
"""
from __future__ import annotations

import pytest

#: "the map is all zero", "every map is all zero", "k of n maps are all zero": toy networks with
#: random weights give empty maps for some samples and targets. Tests marked with it compare maps
#: with a reference (or check shapes, files, state) and mean to include such maps; what the
#: warning says is tested in test_warnings.py, test_observe.py and test_hot_path.py.
ZERO_MAPS = pytest.mark.filterwarnings(r"ignore:gradattr. .* all zero \(first:gradattr.errors.GradattrWarning")
