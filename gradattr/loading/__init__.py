"""Loading what the command line is given: models (``--model``), images, ``.npy`` arrays, class names.

Shared by ``gradattr explain`` / ``layers`` / ``report`` (:mod:`gradattr.cli`) and
``gradattr explain-dataset``. Where each part lives: ``models`` (model files,
factories and their weights), ``pt2_archive`` (a ``torch.export`` ``.pt2``
archive checked and rebuilt before torch reads it), ``input_files`` (images,
``.npy`` arrays, class names, the ``--max-memory`` estimate), ``cli_error`` (the
one-line error they raise).
"""
from .cli_error import CliError, one_line
from .input_files import (DEEP_MODES, IMAGE_SUFFIXES, MEMORY_FACTOR, Item, check_memory, image_array, load_npy,
                          parse_ints, read_array, read_classes, read_image)
from .models import CUSTOM_OPS, SAFE_FORMATS, TRUST, Loaded, load_model

__all__ = ["CliError", "one_line", "DEEP_MODES", "IMAGE_SUFFIXES", "MEMORY_FACTOR", "Item", "check_memory",
           "image_array", "load_npy", "parse_ints", "read_array", "read_classes", "read_image", "CUSTOM_OPS",
           "SAFE_FORMATS", "TRUST", "Loaded", "load_model"]
