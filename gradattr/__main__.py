"""``python -m gradattr``: the command line (see :mod:`gradattr.cli`)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
