"""The one exception type gradattr raises for bad input, and its one warning."""
from __future__ import annotations

import os
import sys
import warnings
from types import FrameType


class GradattrError(ValueError):
    """Bad input to a gradattr function.

    The message names the argument, what was expected and what was given.
    It subclasses ``ValueError`` so ``except ValueError`` keeps working.
    """


def expected(argument: str, what: str, given: object) -> GradattrError:
    """Build the standard message: ``argument: expected WHAT, got GIVEN``."""
    return GradattrError(f"{argument}: expected {what}, got {given}")


class GradattrWarning(UserWarning):
    """A result to look at before trusting: a map that was computed but says nothing (all zero:
    why, and what to try), or a feature reading that was guessed rather than observed."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = GradattrWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the caller's line: the first frame
    outside the gradattr package (however deep inside it the warning is raised)."""
    frame: FrameType | None = sys._getframe(1)
    level = 2  # stacklevel 2: the frame that called warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
