"""The one exception type gradattr raises for bad input."""
from __future__ import annotations


class GradattrError(ValueError):
    """Bad input to a gradattr function.

    The message names the argument, what was expected and what was given.
    It subclasses ``ValueError`` so ``except ValueError`` keeps working.
    """


def expected(argument: str, what: str, given: object) -> GradattrError:
    """Build the standard message: ``argument: expected WHAT, got GIVEN``."""
    return GradattrError(f"{argument}: expected {what}, got {given}")


class GradattrWarning(UserWarning):
    """A map that was computed but says nothing (all zero): why, and what to try."""
