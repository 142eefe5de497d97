"""How the caller of a data-set run spells its arguments, and what the command line adds to the run."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunContext:
    """How the caller spells things, and what the command line adds to a run (nothing for the API).

    :func:`explain_dataset` runs with the defaults; ``gradattr explain-dataset``
    (:mod:`gradattr.cli.explain_dataset`) passes ``RunContext(**CLI_WORDING, ...)`` with its own
    fingerprint (``describe``), accounts of differences (``details``) and files (``extra``).
    """

    out_dir: str = "out_dir"
    overwrite: str = "overwrite=True"
    #: the fingerprint entries that replace the method/target/options/data entries (the CLI's arguments)
    describe: dict | None = None
    #: label -> f(folder, old value, new value) -> a clearer account of what differs
    details: dict | None = None
    #: extra files rank 0 writes into the folder (name -> bytes), recorded in the marker
    extra: dict | None = None
    none: str = "None"  # how a missing value is shown in a difference


#: :class:`RunContext`'s spellings for the command line (its arguments instead of the API's keywords).
CLI_WORDING = dict(out_dir="--out-dir", overwrite="--overwrite", none="(not given)")


__all__ = ["RunContext", "CLI_WORDING"]
