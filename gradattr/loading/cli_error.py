"""The error every loader raises for a user's mistake (:class:`CliError`, reported as one line), and
an exception's message on one line (:func:`one_line`).
"""
from __future__ import annotations


class CliError(Exception):
    """A user error reported as one line."""


def one_line(err: BaseException | str) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    text = " ".join(str(err).split())
    return text if text else type(err).__name__
