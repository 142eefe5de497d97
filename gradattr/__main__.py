"""``python -m gradattr``: the command line (see :mod:`gradattr.cli`).

``python -m`` puts the working folder first on ``sys.path``; it is taken off
before the command runs, so a ``PIL.py`` or ``matplotlib.py`` lying there is
never imported (factories ``package.module:function`` still find their module
there, for that one import).
"""
from .cli import drop_working_folder, main

if __name__ == "__main__":
    drop_working_folder()
    raise SystemExit(main())
