"""Load a ``torch.export`` archive (``.pt2``) without running code from the file.

``torch.export.load`` unpickles parts of the archive: the sample inputs
(``data/sample_inputs/<model>.pt``, ``torch.load`` retried with
``weights_only=False`` when the safe load fails), every weight or constant
marked ``use_pickle`` (torch unpickles them with ``weights_only=False``), custom and opaque
objects (``torch._C._pickle_load_obj``, ``pickle.loads``) and the files of
older layouts; it hands shape expressions to ``sympy.sympify`` (which calls
``eval``) and resolves a node's target to any callable under ``torch.``,
``_operator.`` or ``math.`` (``torch.os.system`` among them). An AOTInductor
member loads a shared library.

:func:`checked_archive` reads the archive in memory and rebuilds it from what
it recognises, member by member, before torch sees anything:

- text members (``archive_format`` must be ``pt2``, ``archive_version``,
  ``byteorder``, ``.data/version``, ``.data/serialization_id``) and ``extra/``
  files (read as text) are copied;
- each ``models/<name>.json`` is parsed as JSON; every node target must name a
  registered operator (``torch.ops.<namespace>.<op>[.<overload>]``) or one of
  the symbolic-shape functions of :data:`PLAIN_TARGETS`; every shape
  expression may hold only numbers, operators, symbol names (``s0``, ``u3``)
  and calls of sympy classes (``Mul(Integer(2), Symbol('s0', integer=True))``),
  checked on its syntax tree: no attribute, subscript, builtin or private
  name; its ``guards_code`` (Python source that ``ExportedProgram.module()``
  would compile; gradattr unflattens instead) is dropped;
- the weights and constants configs are parsed as JSON; a payload stored raw
  (``use_pickle: false``) is copied: torch reads it as bytes of a tensor,
  never as a pickle;
- every pickle torch would unpickle (the sample inputs, ``use_pickle``
  payloads) is loaded with ``torch.load(weights_only=True)`` and written back
  with ``torch.save``, so the only pickles torch reads are the ones written
  here from what the safe load returned;
- anything else (custom or opaque objects, AOTInductor or ExecuTorch members,
  legacy ``<model>.pt`` weight files, ``*.pkl``, members no config names,
  duplicate names, a member outside the archive's root folder) is refused.

The layout of torch before 2.7 (``serialized_exported_program.json``,
``serialized_state_dict.pt``, ``serialized_constants.pt``,
``serialized_example_inputs.pt``, ``version``, ``extra_files/``) gets the same
treatment: the program checked, every ``torch.save`` file loaded with
``weights_only=True`` and saved again, anything else refused.

After loading, every call in every graph is checked once more to be an
operator overload, a higher-order operator or one of :data:`PLAIN_TARGETS`.
A refusal raises :class:`Unsafe` naming the member and what it holds; the
caller turns it into the one-line error with the way out (``--trust-model``).

Sizes: before any member is read, the sizes the archive declares for its members
(uncompressed) must add up to at most the file's own size plus
:data:`EXPANSION_MARGIN` (64 MiB); ``torch.export.save`` stores its members
uncompressed, so a genuine archive never comes near it, while a small file whose
compressed members would expand to gigabytes (a zip bomb) is refused with
:class:`TooLarge` before anything is allocated. Each member is then read up to its
declared size only (one byte more is refused as a damaged archive).
"""
from __future__ import annotations

import ast
import builtins
import io
import json
import logging
import re
import zipfile
from contextlib import contextmanager

#: The archive layout written by ``torch.export.save`` (torch/export/pt2_archive/constants.py).
ARCHIVE_FORMAT_PATH = "archive_format"
ARCHIVE_FORMAT_VALUE = b"pt2"
MODELS_DIR = "models/"
SAMPLE_INPUTS = "data/sample_inputs/{}.pt"
WEIGHTS_DIR = "data/weights/"
WEIGHTS_CONFIG = "data/weights/{}_weights_config.json"
CONSTANTS_DIR = "data/constants/"
CONSTANTS_CONFIG = "data/constants/{}_constants_config.json"
TENSOR_CONSTANT_PREFIX = "tensor_"
EXTRA_DIR = "extra/"
#: The layout torch.export.save wrote before torch 2.7 (still read by torch.export.load).
LEGACY_PROGRAM = "serialized_exported_program.json"
LEGACY_PICKLES = {"serialized_state_dict.pt": "the weights", "serialized_state_dict.json": "the weights",
                  "serialized_constants.pt": "the constants", "serialized_constants.json": "the constants",
                  "serialized_example_inputs.pt": "the sample inputs"}
TEXT_MEMBERS = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")

#: Node targets that are plain Python functions (symbolic-shape arithmetic and tuple access).
PLAIN_TARGETS = frozenset(
    [f"_operator.{n}" for n in ("getitem", "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add",
                                "sub", "floordiv", "mod", "pow", "truediv", "and_", "or_", "lshift",
                                "rshift")]
    + ["math.trunc", "math.ceil", "math.floor"]
    + [f"torch.{n}" for n in ("sym_not", "sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_sqrt",
                              "_sym_sqrt")])

#: Names a shape expression may use besides symbols and sympy's own classes: torch.utils._sympy's functions
#: and sympy's printed forms.
SYMPY_NAMES = frozenset((
    "FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv IntTrueDiv "
    "FloatTrueDiv LShift RShift IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt "
    "RoundDecimal ToFloat FloatPow PowByNatural Identity Max Min Eq Ne Lt Le Gt Ge StrictLessThan "
    "StrictGreaterThan LessThan GreaterThan And Or Not Xor Abs Piecewise ITE floor ceiling sqrt oo zoo nan "
    "True False Integer Rational Float Symbol pi Add Mul Pow true false").split())

_OP_TARGET = re.compile(r"torch\.ops(\.(?!__)[A-Za-z_][A-Za-z0-9_]*){2,3}")
_SYMBOL = re.compile(r"[a-z]+[0-9]+")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")

#: Loggers whose records a failed load would print (torch logs a traceback before raising).
_LOGGERS = ("torch.export", "torch._export", "torch.export.pt2_archive", "torch.export.pt2_archive._package",
            "torch._export.serde", "torch._export.serde.serialize", "torch.serialization")


#: How many bytes the members of a model archive may hold beyond the archive file's own size.
EXPANSION_MARGIN = 64 * 2 ** 20


class TooLarge(Exception):
    """The archive's members would expand far beyond the file's own size (a zip bomb?)."""


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.1f} KiB" if n >= 2 ** 10 else f"{n} B"


def check_sizes(infos: list[zipfile.ZipInfo], size: int) -> None:
    """Refuse an archive of ``size`` bytes whose members declare more than ``size`` +
    :data:`EXPANSION_MARGIN` bytes uncompressed (before any member is read)."""
    total = sum(i.file_size for i in infos)
    limit = size + EXPANSION_MARGIN
    if total > limit:
        big = max(infos, key=lambda i: i.file_size)
        raise TooLarge(f"holds members of {_mib(total)} uncompressed in a file of {_mib(size)} (the largest, "
                       f"{big.filename}, {_mib(big.file_size)} from {_mib(big.compress_size)}), more than the "
                       f"{_mib(limit)} gradattr reads from it (the file's size plus {_mib(EXPANSION_MARGIN)}: a "
                       "zip bomb?); torch.export.save stores members uncompressed, re-save the model with it")


def member_reader(src: zipfile.ZipFile):
    """``read(name) -> bytes`` of a zip's members, each read up to its declared size only."""
    infos = {i.filename: i for i in src.infolist()}

    def read(name: str) -> bytes:
        info = infos[name]
        with src.open(info) as f:
            data = f.read(info.file_size + 1)
        if len(data) != info.file_size:
            raise NotAnArchive(f"holds {name}, whose size differs from the {info.file_size} bytes it declares")
        return data

    return read


class Unsafe(Exception):
    """The archive holds something gradattr does not load without ``--trust-model``."""


class NotAnArchive(Exception):
    """The file is not a ``torch.export`` archive gradattr can read."""


@contextmanager
def quiet_torch():
    """Silence torch's export and serialization loggers (restored after)."""
    saved = []
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def is_archive(names: list[str], read) -> bool:
    """Whether a zip's member ``names`` are a ``torch.export.save`` archive (``<root>/archive_format``)."""
    for n in names:
        if n.partition("/")[2] == ARCHIVE_FORMAT_PATH:
            return read(n).strip() == ARCHIVE_FORMAT_VALUE
    return False


def is_legacy(names: list[str]) -> bool:
    """Whether a zip's member ``names`` are the layout ``torch.export.save`` wrote before torch 2.7."""
    return LEGACY_PROGRAM in names and "version" in names


def checked_archive(data: bytes) -> bytes:
    """A copy of the ``.pt2`` archive ``data`` holding only what is recognised and checked (see the module)."""
    import torch

    try:
        src = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise NotAnArchive(f"not a zip archive ({err})") from None
    infos = src.infolist()
    check_sizes(infos, len(data))
    read_member = member_reader(src)
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise Unsafe(f"holds the member {twice[0]} twice")
    if is_legacy(names):
        return _checked_legacy(torch, read_member, names)
    roots = {n.partition("/")[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise Unsafe(f"holds members outside one root folder ({', '.join(sorted(roots)[:3])})")
    root = roots.pop() + "/"
    members = {n[len(root):]: n for n in names if not n.endswith("/")}

    def read(rel: str) -> bytes:
        if rel not in members:
            raise NotAnArchive(f"has no member {root}{rel}")
        return read_member(members[rel])

    if read(ARCHIVE_FORMAT_PATH).strip() != ARCHIVE_FORMAT_VALUE:
        raise NotAnArchive(f"{root}{ARCHIVE_FORMAT_PATH} is not {ARCHIVE_FORMAT_VALUE.decode()}")

    out: dict[str, bytes] = {}
    for rel in TEXT_MEMBERS:
        if rel in members:
            out[rel] = read(rel)
    for rel in members:
        if rel.startswith(EXTRA_DIR):
            try:
                read(rel).decode("utf-8")
            except UnicodeDecodeError:
                raise Unsafe(f"holds the extra file {root}{rel}, which is not text") from None
            out[rel] = read(rel)

    models = [rel[len(MODELS_DIR):-len(".json")] for rel in members
              if rel.startswith(MODELS_DIR) and rel.endswith(".json")]
    if not models:
        raise NotAnArchive(f"has no {root}{MODELS_DIR}*.json (an older torch.export layout or not an "
                           "exported program)")
    for name in models:
        _check_model(torch, name, read, root, out)
    left = sorted(set(members) - set(out))
    if left:
        what = ("a pickle" if left[0].endswith((".pkl", ".pt")) or read(left[0])[:1] == b"\x80"
                else "a member torch.export.load may read and gradattr does not check")
        raise Unsafe(f"holds {root}{left[0]}, {what}" + (f" (and {len(left) - 1} more)" if len(left) > 1 else ""))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for rel, content in out.items():
            z.writestr(root + rel, content)
    return buf.getvalue()


def _check_model(torch, name: str, read, root: str, out: dict[str, bytes]) -> None:
    """One model of an archive into ``out``: its program (checked, guards dropped), its sample
    inputs re-saved, its weight and constant configs and every payload they name."""
    rel = f"{MODELS_DIR}{name}.json"
    program = _json(read(rel), root + rel)
    _check_program(program, root + rel)
    program["guards_code"] = []
    out[rel] = json.dumps(program).encode()
    rel = SAMPLE_INPUTS.format(name)
    out[rel] = _resaved(torch, read(rel), root + rel, "the sample inputs")
    for config_fmt, folder in ((WEIGHTS_CONFIG, WEIGHTS_DIR), (CONSTANTS_CONFIG, CONSTANTS_DIR)):
        rel = config_fmt.format(name)
        config = _json(read(rel), root + rel)
        out[rel] = json.dumps(config).encode()
        entries = config.get("config") if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            raise Unsafe(f"holds {root}{rel} without a 'config' mapping")
        for fqn, meta in entries.items():
            _check_payload(torch, fqn, meta, rel, folder, read, root, out)


def _check_payload(torch, fqn: str, meta, rel: str, folder: str, read, root: str,
                   out: dict[str, bytes]) -> None:
    """The payload a config entry ``fqn: meta`` of ``rel`` names, into ``out``: raw tensor bytes as
    they are, a pickled tensor re-saved, anything else refused."""
    path = meta.get("path_name") if isinstance(meta, dict) else None
    if not isinstance(path, str) or not _PLAIN_NAME.fullmatch(path) or ".." in path:
        raise Unsafe(f"holds {root}{rel} naming the payload {path!r} for {fqn!r}")
    member = folder + path
    if folder == CONSTANTS_DIR and not path.startswith(TENSOR_CONSTANT_PREFIX):
        raise Unsafe(f"holds the constant {root}{member} ({fqn!r}), a pickled custom or opaque "
                     "object (only tensors load without trust)")
    if member in out:
        return
    if meta.get("use_pickle") is True:
        out[member] = _resaved(torch, read(member), root + member, f"the pickled tensor {fqn!r}")
    elif meta.get("use_pickle") is False:
        out[member] = read(member)  # raw tensor bytes: torch never unpickles them
    else:
        raise Unsafe(f"holds {root}{rel} with use_pickle={meta.get('use_pickle')!r} for {fqn!r}")


def _checked_legacy(torch, read, names: list[str]) -> bytes:
    """The pre-2.7 layout: one JSON program and ``torch.save`` files at the top level."""
    out: dict[str, bytes] = {"version": read("version")}
    program = _json(read(LEGACY_PROGRAM), LEGACY_PROGRAM)
    _check_program(program, LEGACY_PROGRAM)
    if isinstance(program, dict):
        program.pop("guards_code", None)
    out[LEGACY_PROGRAM] = json.dumps(program).encode()
    for name in names:
        if name in LEGACY_PICKLES:
            out[name] = _resaved(torch, read(name), name, LEGACY_PICKLES[name])
        elif name.startswith("extra_files/") and not name.endswith("/"):
            try:
                read(name).decode("utf-8")
            except UnicodeDecodeError:
                raise Unsafe(f"holds the extra file {name}, which is not text") from None
            out[name] = read(name)
    left = sorted(n for n in names if n not in out and not n.endswith("/"))
    if left:
        raise Unsafe(f"holds {left[0]}, a member torch.export.load may read and gradattr does not check"
                     + (f" (and {len(left) - 1} more)" if len(left) > 1 else ""))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, content in out.items():
            z.writestr(name, content)
    return buf.getvalue()


def missing_operators(data: bytes) -> list[str]:
    """The operators (``torch.ops.<namespace>.<op>[.<overload>]``) that the programs of the archive
    ``data`` call or pass and that are not registered in this process (a custom operator whose
    library was not imported), sorted. Only the programs' JSON is read (sizes checked first)."""
    import torch

    try:
        src = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return []
    check_sizes(src.infolist(), len(data))
    read = member_reader(src)
    names = [n for n in src.namelist() if n == LEGACY_PROGRAM or (
        n.partition("/")[2].startswith(MODELS_DIR) and n.endswith(".json"))]
    found: set[str] = set()
    for name in names:
        try:
            stack = [json.loads(read(name).decode("utf-8"))]
        except (UnicodeDecodeError, ValueError):
            continue
        while stack:
            obj = stack.pop()
            if isinstance(obj, dict):
                for key in ("target", "as_operator"):
                    v = obj.get(key)
                    if isinstance(v, str) and _OP_TARGET.fullmatch(v) and not _registered(torch, v):
                        found.add(v)
                stack.extend(obj.values())
            elif isinstance(obj, list):
                stack.extend(obj)
    return sorted(found)


def _registered(torch, target: str) -> bool:
    """Whether ``torch.ops.<namespace>.<op>[.<overload>]`` names a registered operator (looked up in
    torch's registry by name; nothing is imported)."""
    parts = target.split(".")[2:]
    try:
        packet = getattr(getattr(torch.ops, parts[0]), parts[1])
        if len(parts) == 3:
            getattr(packet, parts[2])
    except (AttributeError, RuntimeError):
        return False
    return True


def check_graphs(ep) -> None:
    """Every call in every graph of the loaded program is an operator or a :data:`PLAIN_TARGETS` function."""
    import torch

    allowed = (torch._ops.OpOverload, torch._ops.HigherOrderOperator)

    def check(f, what: str) -> None:
        if isinstance(f, allowed) or not callable(f) or isinstance(f, (torch.fx.Node, torch.nn.Module, type)):
            return
        name = f"{getattr(f, '__module__', '?')}.{getattr(f, '__name__', '?')}"
        if name not in PLAIN_TARGETS:
            raise Unsafe(f"{what} {name!r}, which is not a registered operator")

    for module in ep.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in getattr(graph, "nodes", ()):
            if node.op == "call_function":
                check(node.target, "calls")
            for arg in torch.utils._pytree.tree_leaves((node.args, node.kwargs)):
                check(arg, "passes")


def _json(data: bytes, member: str):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise Unsafe(f"holds {member}, which is not JSON ({' '.join(str(err).split())})") from None


def _resaved(torch, data: bytes, member: str, what: str) -> bytes:
    """``data`` loaded with ``weights_only=True`` and saved again by ``torch.save``."""
    try:
        with quiet_torch():
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure of the safe load is a refusal
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        asks = f"; it asks for {found.group(1)}" if found else ""
        raise Unsafe(f"holds {member}, {what}, which a weights-only load refuses{asks}") from None
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _check_program(program, member: str) -> None:
    """Node targets and shape expressions of a serialized program (see the module)."""
    stack = [program]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            target = obj.get("target")
            if (isinstance(target, str) and "inputs" in obj and "outputs" in obj
                    and not (_OP_TARGET.fullmatch(target) or target in PLAIN_TARGETS)):
                raise Unsafe(f"holds {member}, whose graph calls {target!r}, which is not a registered "
                             "operator")
            op = obj.get("as_operator")  # an operator passed as an argument (resolved like a target)
            if isinstance(op, str) and not (_OP_TARGET.fullmatch(op) or op in PLAIN_TARGETS):
                raise Unsafe(f"holds {member}, whose graph passes {op!r}, which is not a registered operator")
            expr = obj.get("expr_str")
            if isinstance(expr, str):
                _check_expr(expr, member)
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)


def _check_expr(expr: str, member: str) -> None:
    """``expr`` may only build sympy objects: calls of sympy classes (``Mul(Integer(2), Symbol('s0',
    integer=True))``, torch's ``srepr`` form) and arithmetic, comparisons and boolean operators over
    numbers and shape symbols (``2*s0 + 1``, the older ``str`` form); no attribute, subscript or builtin."""
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError):
        _refuse_expr(expr, member, "a syntax that is not an expression")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and _sympy_class(node.func.id)):
                _refuse_expr(expr, member, f"a call of {ast.unparse(node.func)!r}")
            for kw in node.keywords:
                if kw.arg is None or kw.arg.startswith("_") or not (
                        isinstance(kw.value, ast.Constant) and type(kw.value.value) in (bool, int)):
                    _refuse_expr(expr, member, f"the keyword {kw.arg!r}")
        elif isinstance(node, ast.Name):
            if not (_SYMBOL.fullmatch(node.id) or _sympy_class(node.id)):
                _refuse_expr(expr, member, f"the name {node.id!r}")
        elif isinstance(node, ast.Constant):
            v = node.value
            if not (type(v) in (bool, int, float) or (isinstance(v, str) and _TEXT_CONSTANT.fullmatch(v))):
                _refuse_expr(expr, member, f"the constant {v!r}")
        elif not isinstance(node, _EXPR_NODES):
            _refuse_expr(expr, member, f"a {type(node).__name__} node")


_TEXT_CONSTANT = re.compile(r"[a-z]+[0-9]+|[-+]?[0-9]*\.?[0-9]+(e[-+]?[0-9]+)?")
_EXPR_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.keyword, ast.Load,
               ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr,
               ast.BitXor, ast.USub, ast.UAdd, ast.Not, ast.Invert, ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt,
               ast.LtE, ast.Gt, ast.GtE)


def _sympy_class(name: str) -> bool:
    """A sympy class or singleton (``Mul``, ``Integer``, ``oo``), or one of torch's sympy functions,
    never a Python builtin (``exec``, ``open``) or a private name."""
    if name in SYMPY_NAMES:
        return True
    if name.startswith("_") or hasattr(builtins, name):
        return False
    import sympy

    obj = getattr(sympy, name, None)
    return (isinstance(obj, type) and issubclass(obj, sympy.Basic)) or isinstance(obj, sympy.Basic)


def _refuse_expr(expr: str, member: str, what: str):
    shown = expr if len(expr) <= 60 else expr[:57] + "..."
    raise Unsafe(f"holds {member}, whose shape expression {shown!r} has {what}, not only sympy arithmetic on "
                 "shape symbols (torch evaluates it with sympy)")
