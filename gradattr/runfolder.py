"""The output folder of a dataset run: what gradattr writes there, and how it reads it back safely.

A run folder holds only files gradattr names itself:

- ``.gradattr-run.json``: the marker. Its presence says gradattr made the folder; it holds the run's
  fingerprint (what the maps depend on) and the extra files the run wrote (``inputs.json``).
- ``.gradattr-lock-rankNNN``: one lock file per rank, held with ``fcntl.flock`` for the whole run.
- ``maps_NNNNN.npy``: the shards, one per batch.
- ``manifest-rankNNN.jsonl``: each rank's append-only record of the shards it finished, with each
  shard's size and sha256.
- ``index.json``: written by rank 0 when every rank is done.
- ``.NAME.PID.RANDOM.tmp``: a file being written; renamed to ``NAME`` when complete.

Reading never follows a symbolic link and reads only regular files named by these patterns;
writing creates files with ``O_EXCL | O_NOFOLLOW`` under a unique temporary name and renames
them, or appends with ``O_APPEND | O_NOFOLLOW``, so a link planted in the folder is never
written through. The report's folders (``report/``, ``report/img/``) are written through
:class:`PlainDir`: opened with ``O_NOFOLLOW``, refused when they or a file in them is a link.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import stat
from pathlib import Path

from .errors import GradattrError

MARKER = ".gradattr-run.json"
FORMAT = 2  # the folder format this version writes (0.2's had run.json and no checksums: format 1)
SHARD = "maps_{:05d}.npy"
SHARD_RE = re.compile(r"maps_(\d{5,})\.npy")
MANIFEST = "manifest-rank{:03d}.jsonl"
MANIFEST_RE = re.compile(r"manifest-rank(\d{3,})\.jsonl")
LOCK = ".gradattr-lock-rank{:03d}"
LOCK_RE = re.compile(r"\.gradattr-lock-rank\d{3,}")
TMP_RE = re.compile(r"\.(.+)\.\d+\.[0-9a-f]{16}\.tmp")
INDEX = "index.json"
OLD_RUN = "run.json"  # gradattr 0.2's header


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # 0 where the system has no such flag (Windows): see _no_link
_LINK_ERRNOS = {errno.ELOOP, errno.EMLINK}  # what opening a link with O_NOFOLLOW gives (Linux/macOS, BSD)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted in the folder must not block the read


class FolderError(GradattrError):
    """A run folder that cannot be used as it is (the message says why and what to do)."""


def _no_link(path: Path) -> None:
    """Where ``O_NOFOLLOW`` does not exist, refuse a link before opening (a narrower check)."""
    if not _NOFOLLOW and os.path.islink(path):
        raise OSError(errno.ELOOP, "a symbolic link", str(path))


def read_plain(path: Path, what: str = "out_dir", place: str = "the run folder") -> bytes:
    """The bytes of ``path``, which must be a regular file and not a symbolic link (``place``:
    where such files live, for the message)."""
    try:
        _no_link(path)
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except OSError as err:
        if err.errno in _LINK_ERRNOS:
            raise FolderError(f"{what}: expected plain files in {place}, got {path.name!r}, "
                              f"which is a symbolic link (links are never followed)") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise FolderError(f"{what}: expected plain files in {place}, got {path.name!r}, "
                              "which is not a regular file")
        return f.read()


def plain_name(name, what: str, where: str) -> str:
    """``name`` if it is a plain file name (no folder part, not ``.``/``..``, no NUL), else an error
    naming ``where`` it was found."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name \
            or os.path.basename(name) != name:
        raise FolderError(f"{what}: expected a plain file name (no folder part, no '..') in {where}, "
                          f"got {name!r}")
    return name


def read_json(path: Path, what: str = "out_dir"):
    data = read_plain(path, what)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FolderError(f"{what}: expected JSON in {path.name}, got a damaged file ({err})") from None


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def open_new(path: Path):
    """``(temporary path, binary file)`` for writing ``path``: a new, uniquely named file, created
    with ``O_EXCL | O_NOFOLLOW``; rename it onto ``path`` with ``os.replace`` when complete."""
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    return tmp, os.fdopen(fd, "wb")


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or is left as it was (a link at ``path`` is replaced, not followed)."""
    tmp, f = open_new(path)
    try:
        with f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one line to a regular file (created if missing); a link at ``path`` is refused."""
    try:
        _no_link(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno in _LINK_ERRNOS:
            raise FolderError(f"out_dir: expected {path.name} to be a plain file, got a symbolic link "
                              "(never written through)") from None
        raise
    with os.fdopen(fd, "ab") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise FolderError(f"out_dir: expected {path.name} to be a plain file, got something else")
        f.write(line.encode() + b"\n")


def end_cut_line(path: Path) -> None:
    """End a last line a crash cut short, so that lines appended later parse."""
    try:
        _no_link(path)
        fd = os.open(path, os.O_RDWR | _NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno in _LINK_ERRNOS:
            raise FolderError(f"out_dir: expected {path.name} to be a plain file, got a symbolic link "
                              "(never written through)") from None
        raise
    with os.fdopen(fd, "rb+") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise FolderError(f"out_dir: expected {path.name} to be a plain file, got something else")
        if f.seek(0, 2) and (f.seek(-1, 2), f.read(1))[1] != b"\n":
            f.write(b"\n")


_AT = os.open in os.supports_dir_fd and os.rename in os.supports_dir_fd and os.stat in os.supports_dir_fd
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class PlainDir:
    """A folder written through a descriptor opened with ``O_NOFOLLOW``: created if missing, refused
    if it is a symbolic link or not a folder; its files are written as :func:`write_atomic` does
    (``O_EXCL | O_NOFOLLOW`` under a temporary name, renamed into place) relative to the
    descriptor, so a link swapped in for the folder later is not followed either. Where the
    system has no ``dir_fd`` calls (Windows) the same checks run on paths."""

    def __init__(self, path: Path, what: str = "out_dir", parent: PlainDir | None = None):
        self.path, self.what = path, what
        name = path.name if parent is not None else path
        at = parent.fd if parent is not None else None
        try:
            os.mkdir(name, 0o755, dir_fd=at) if at is not None else os.mkdir(name, 0o755)
        except FileExistsError:
            pass
        st = os.stat(name, dir_fd=at, follow_symlinks=False) if at is not None else os.lstat(name)
        if stat.S_ISLNK(st.st_mode):
            raise FolderError(f"{what}: expected {path} to be a plain folder, got a symbolic link (links are "
                              "never written through); remove it")
        if not stat.S_ISDIR(st.st_mode):
            raise FolderError(f"{what}: expected {path} to be a folder, got a file")
        self.fd: int | None = None
        if _AT:
            try:
                self.fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=at)
            except OSError as err:
                if err.errno in _LINK_ERRNOS or err.errno == errno.ENOTDIR:
                    raise FolderError(f"{what}: expected {path} to be a plain folder, got a symbolic link "
                                      "(links are never written through)") from None
                raise

    def sub(self, name: str) -> PlainDir:
        """The folder ``name`` inside this one (created if missing), under the same rule."""
        return PlainDir(self.path / name, self.what, self)

    def write(self, name: str, data: bytes) -> Path:
        """``name`` in this folder holds ``data`` whole; a link or a folder at ``name`` is refused."""
        target = self.path / name
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False) if self.fd is not None else os.lstat(target)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            kind = "a symbolic link (never written through)" if stat.S_ISLNK(st.st_mode) else "not a plain file"
            raise FolderError(f"{self.what}: expected {target} to be a plain file gradattr may replace, got "
                              f"{kind}; remove it")
        if self.fd is None:
            write_atomic(target, data)
            return target
        tmp = _tmp_name(Path(name)).name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=self.fd)
            except FileNotFoundError:
                pass
            raise
        return target

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> PlainDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def unlink_quietly(path: Path) -> None:
    """Remove the file ``path`` if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class HashingWriter:
    """A write-only file object that counts and hashes (sha256) what passes through it."""

    def __init__(self, f):
        self.f, self.size, self.hash = f, 0, hashlib.sha256()

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)


def file_digest(path: Path) -> tuple[int, str] | None:
    """``(size, sha256 hex)`` of a regular file, or ``None`` if it is missing, a link or not a file."""
    try:
        data = read_plain(path)
    except (FolderError, FileNotFoundError):
        return None
    return len(data), hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ locks
def _lock_exclusive(fd: int) -> None:
    """An exclusive lock on an open file, without waiting (``OSError`` if another holds it)."""
    try:
        import fcntl
    except ImportError:  # Windows: a byte-range lock of the first byte
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class Lock:
    """An exclusive ``fcntl.flock`` on ``.gradattr-lock-rankNNN`` in the folder, held until ``release``.

    The lock file is never deleted (deleting it would let two runs lock two different files);
    it holds the pid and host of the run that holds it, for the message of the run refused.
    """

    def __init__(self, folder: Path, rank: int, out_dir: str):
        path = folder / LOCK.format(rank)
        try:
            _no_link(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as err:
            if err.errno in _LINK_ERRNOS:
                raise FolderError(f"{out_dir}: expected {path.name} to be gradattr's lock file, got a "
                                  "symbolic link") from None
            raise
        try:
            _lock_exclusive(fd)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            raise FolderError(f"{out_dir}: expected a folder that no other run is writing to, got "
                              f"{str(folder)!r}, locked by {holder} (rank {rank}); wait for that run to "
                              "finish, or give this one another folder") from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


# ------------------------------------------------------------------------------ manifests
def check_record(rec, where: str, out_dir: str = "out_dir") -> dict:
    """A shard record (from a manifest or index.json) with every field of the right type, else an error."""
    def bad(why: str) -> FolderError:
        return FolderError(f"{out_dir}: expected shard records written by explain_dataset, got {why} in "
                           f"{where} (a damaged or edited folder)")

    if not isinstance(rec, dict):
        raise bad(f"a {type(rec).__name__}")

    def integer(key, low=0):
        v = rec.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise bad(f"{key}={v!r}")
        return v

    shard, rows = integer("shard"), integer("rows", 1)
    integer("start")
    if rec.get("file") != SHARD.format(shard):
        raise bad(f"file={rec.get('file')!r} for shard {shard} (only {SHARD.format(shard)!r} in the folder "
                  "itself is read)")
    if "indices" in rec:
        idx = rec["indices"]
        if not isinstance(idx, list) or len(idx) != rows or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx):
            raise bad(f"indices that are not {rows} sample numbers for shard {shard}")
    else:
        integer("first")
    if "shape" in rec:
        shape = rec["shape"]
        if not (isinstance(shape, list) and shape and shape[0] == rows and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise bad(f"shape={shape!r} for shard {shard} of {rows} rows")
    if "sha256" in rec or "size" in rec:
        integer("size")
        if not (isinstance(rec.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", rec["sha256"])):
            raise bad(f"sha256={rec.get('sha256')!r} for shard {shard}")
    return rec


def read_manifests(folder: Path) -> dict[int, list[dict]]:
    """shard number -> its records in every rank's manifest, in file order (a line cut by a crash is skipped)."""
    out: dict[int, list[dict]] = {}
    if not folder.is_dir():
        return out
    for m in sorted(p for p in folder.iterdir() if MANIFEST_RE.fullmatch(p.name)):
        for n, line in enumerate(read_plain(m).decode(errors="replace").splitlines(), 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # cut by a crash: its shard is recomputed
                continue
            check_record(rec, f"{m.name} line {n}")
            out.setdefault(rec["shard"], []).append(rec)
    return out


def own_entries(folder: Path) -> tuple[list[str], list[str]]:
    """``(gradattr's lock and temporary files, every other entry)`` of an existing folder."""
    ours: list[str] = []
    others: list[str] = []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        (ours if LOCK_RE.fullmatch(p.name) or TMP_RE.fullmatch(p.name) else others).append(p.name)
    return ours, others
