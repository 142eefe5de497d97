"""The run's output folder: one rank's writer (:class:`Shards`: the folder's checks and lock,
atomic shards, the manifest, the marker, the index) and :func:`load_maps`, which reads a finished
folder back."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from .. import runfolder as rf
from ..errors import GradattrError, expected
from .context import RunContext
from .distributed import agree, barrier
from .fingerprint import differences


def load_maps(out_dir: str | Path, *, return_indices: bool = False):
    """The maps a finished :func:`explain_dataset` run wrote, as one array in dataset order.

    Works for single-process and multi-process output alike: the shards of every
    rank are read through ``index.json`` and their rows placed by sample index.
    Only plain files inside ``out_dir`` that the index names as shards
    (``maps_NNNNN.npy``) are read, never through a symbolic link; each must have the
    size and sha256 the index records, and the counts must agree (shards numbered
    0..K-1, each with the rows and map shape recorded, every sample once).
    Anything else is refused with the file's name.

    Args:
        out_dir: the ``out_dir`` given to :func:`explain_dataset`.
        return_indices: also return the sorted sample indices (``0..N-1`` unless a
            sampler chose a subset of the data set).

    Returns:
        float32 array ``(N, *map_shape)`` (and the indices ``(N,)`` if asked).

    Example:
        >>> import tempfile, torch, gradattr
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten())
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = gradattr.explain_dataset(net, [torch.randn(3, 1, 8), torch.randn(2, 1, 8)], out_dir=d)
        ...     gradattr.load_maps(d).shape
        (5, 8)
    """
    if not isinstance(out_dir, (str, Path)):
        raise expected("out_dir", "a folder path (str or pathlib.Path)", type(out_dir).__name__)
    folder = Path(out_dir)
    index_file = folder / rf.INDEX
    if not (index_file.is_file() or index_file.is_symlink()):
        why = "not a folder" if not folder.is_dir() else (
            "an unfinished run: re-run explain_dataset with the same out_dir to finish it"
            if rf.read_manifests(folder) else "no shards")
        raise expected("out_dir", f"a folder written by explain_dataset, with its {rf.INDEX}",
                       f"{str(folder)!r} ({why})")
    index = rf.read_json(index_file)
    records, map_shape = _check_index(index, folder)
    all_idx = np.concatenate([_record_indices(r) for r in records]) if records else np.zeros(0, np.int64)
    order = np.sort(all_idx)
    out = None
    for r in records:
        maps = _read_shard(folder, r)
        if map_shape is not None and tuple(maps.shape[1:]) != map_shape:
            raise GradattrError(f"out_dir: expected {r['file']} to hold maps of shape {map_shape} as "
                                f"{rf.INDEX} says, got {tuple(maps.shape[1:])}")
        if out is None:
            out = np.empty((len(order), *maps.shape[1:]), dtype=np.float32)
        elif maps.shape[1:] != out.shape[1:]:
            raise GradattrError(f"out_dir: expected shards of one map shape {out.shape[1:]}, got "
                                f"{maps.shape[1:]} in {r['file']}")
        out[np.searchsorted(order, _record_indices(r))] = maps
    if out is None:
        out = np.zeros((0,), dtype=np.float32)
    return (out, order) if return_indices else out


def _check_index(index, folder: Path) -> tuple[list[dict], tuple | None]:
    """The index's shard records, each checked, and the map shape it states (format 2), or an error."""
    def bad(why: str) -> GradattrError:
        return GradattrError(f"out_dir: expected an {rf.INDEX} written by explain_dataset, got {why} in "
                             f"{str(folder)!r} (a damaged or edited folder)")

    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise bad("no list of shards")
    fmt = index.get("gradattr_run", 1)
    if fmt not in (1, rf.FORMAT):
        raise bad(f"folder format {fmt!r} (this gradattr reads 1 and {rf.FORMAT})")
    records = [rf.check_record(r, rf.INDEX) for r in index["shards"]]
    numbers = [r["shard"] for r in records]
    if numbers != list(range(len(records))):
        dup = sorted({n for n in numbers if numbers.count(n) > 1})
        raise bad(f"shards {dup[:5]} recorded twice" if dup else
                  f"shard numbers {numbers[:8]}{'...' if len(numbers) > 8 else ''} instead of 0..{len(numbers) - 1}")
    start = 0
    for r in records:
        if r["start"] != start:
            raise bad(f"shard {r['shard']} starting at sample {r['start']} where the shards before it end "
                      f"at {start}")
        start += r["rows"]
    samples = index.get("samples")
    if samples != start:
        raise bad(f"samples={samples!r} where the shards hold {start} rows")
    idx = np.concatenate([_record_indices(r) for r in records]) if records else np.zeros(0, np.int64)
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise bad(f"samples {uniq[counts > 1][:5].tolist()} recorded in several shards")
    map_shape = None
    if fmt == rf.FORMAT:
        if any("sha256" not in r for r in records):
            raise bad("a shard without its size and sha256")
        ms = index.get("map_shape")
        if not (isinstance(ms, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                             for v in ms)):
            raise bad(f"map_shape={ms!r}")
        map_shape = tuple(ms)
    return records, map_shape


def _read_shard(folder: Path, rec: dict) -> np.ndarray:
    """One shard, read from a plain file inside ``folder`` and checked against its record."""
    name = rec["file"]
    try:
        data = rf.read_plain(folder / name)
    except FileNotFoundError:
        raise GradattrError(f"out_dir: expected the shard {name} that {rf.INDEX} records, got no such file "
                            f"in {str(folder)!r}") from None
    if "sha256" in rec and (len(data), hashlib.sha256(data).hexdigest()) != (rec["size"], rec["sha256"]):
        raise GradattrError(f"out_dir: expected {name} of {rec['size']} bytes with the sha256 {rf.INDEX} "
                            f"records, got {len(data)} bytes{' with another sha256' if len(data) == rec['size'] else ''}"
                            f" (a damaged shard: re-run explain_dataset into {str(folder)!r} to compute it again)")
    try:
        maps = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise GradattrError(f"out_dir: expected {name} to be a .npy array, got a damaged file ({err}); "
                            f"re-run explain_dataset into {str(folder)!r} to compute it again") from None
    if not isinstance(maps, np.ndarray) or maps.dtype != np.float32 or maps.ndim < 1 \
            or maps.shape[0] != rec["rows"]:
        raise GradattrError(f"out_dir: expected {name} to hold {rec['rows']} float32 maps as {rf.INDEX} "
                            f"records, got shape {getattr(maps, 'shape', '?')} and dtype {getattr(maps, 'dtype', '?')}")
    return maps


class Shards:
    """One rank's writer: the folder's checks and lock, atomic shards, the manifest, the marker and the index."""

    def __init__(self, folder: Path, rank: int, world: int, fingerprint: dict, overwrite: bool, ctx: RunContext):
        self.folder, self.rank, self.world, self.ctx = folder, rank, world, ctx
        self.lock: rf.Lock | None = None
        self.repaired = 0
        self.chosen: dict[int, dict] = {}
        try:
            self.records = self._open(folder, rank, fingerprint, overwrite, ctx)
        except BaseException:
            self.close()  # a lock is never left held by an object nobody holds
            raise

    def _open(self, folder, rank, fingerprint, overwrite, ctx) -> dict:
        err = None
        try:
            self._marker(folder)  # read only: a folder that is not gradattr's is refused untouched
            folder.mkdir(parents=True, exist_ok=True)
            self.lock = rf.Lock(folder, rank, ctx.out_dir)
        except (GradattrError, OSError) as e:
            err = e
        self._agree(err)
        fresh = overwrite
        try:
            marker = self._marker(folder)  # again, now that no other run can change the folder
            records = rf.read_manifests(folder)
            old = marker.get("fingerprint") if marker is not None else None
            if old is not None and old != fingerprint and not overwrite:
                if records:
                    diffs = differences(old, fingerprint, folder, ctx)
                    raise GradattrError(
                        f"{ctx.out_dir}: expected the folder of the same run to resume it, or "
                        f"{ctx.overwrite} to start again, got {str(folder)!r}, written by a run that differs "
                        f"in {'; '.join(diffs)}")
                fresh = True  # nothing computed yet: nothing to keep
        except (GradattrError, OSError) as e:
            err = e
        self._agree(err)
        try:
            if rank == 0:
                self._clean(marker, records, fresh)
                files = sorted(ctx.extra or {})
                rf.write_atomic(folder / rf.MARKER, json.dumps(
                    {"gradattr_run": rf.FORMAT, "gradattr": _version(), "fingerprint": fingerprint,
                     "files": files}, indent=1).encode())
                for name, data in (ctx.extra or {}).items():
                    rf.write_atomic(folder / name, data)
            self.manifest = folder / rf.MANIFEST.format(rank)
            if not fresh:
                rf.end_cut_line(self.manifest)
        except (GradattrError, OSError) as e:
            err = e
        self._agree(err)  # no rank goes on before rank 0 has cleaned up and marked the folder
        return {} if fresh else records

    def _agree(self, err) -> None:
        agree(self.world, err, self.ctx.out_dir)

    def _marker(self, folder: Path) -> dict | None:
        """The folder's marker, ``None`` for a new or empty folder, or an error for anyone else's."""
        if not folder.exists():
            return None
        _, others = rf.own_entries(folder)
        sp = self.ctx
        if rf.MARKER in others:
            marker = rf.read_json(folder / rf.MARKER, sp.out_dir)
            if not isinstance(marker, dict) or marker.get("gradattr_run") != rf.FORMAT \
                    or not isinstance(marker.get("fingerprint"), dict):
                raise expected(sp.out_dir, f"a folder made by this version of gradattr (format {rf.FORMAT})",
                               f"{str(folder)!r}, whose {rf.MARKER} says format "
                               f"{marker.get('gradattr_run') if isinstance(marker, dict) else '?'}; "
                               "give this run another folder")
            return marker
        if not others:
            return None
        if rf.OLD_RUN in others:
            raise expected(sp.out_dir, f"a new or empty folder, or one this version of gradattr made (with "
                           f"its {rf.MARKER})", f"{str(folder)!r}, written by gradattr 0.2 ({rf.OLD_RUN}, no "
                           "checksums): load_maps still reads it; give this run another folder, or delete "
                           "that one yourself to start again")
        shown = ", ".join(repr(n) for n in others[:4]) + (", ..." if len(others) > 4 else "")
        raise expected(sp.out_dir, f"a new or empty folder, or one an earlier run made (with its {rf.MARKER})",
                       f"{str(folder)!r}, holding {len(others)} entr{'y' if len(others) == 1 else 'ies'} of "
                       f"its own ({shown}); gradattr never writes into such a folder, {sp.overwrite} included")

    def _clean(self, marker, records: dict, fresh: bool) -> None:
        """Rank 0, all locks held: remove what an earlier run wrote (``fresh``), or only what goes stale."""
        folder = self.folder
        doomed = {rf.INDEX}  # the run is open again until finish writes it
        doomed |= {p.name for p in folder.iterdir() if rf.TMP_RE.fullmatch(p.name)}  # cut by a crash
        if fresh:
            doomed |= {r["file"] for recs in records.values() for r in recs}
            doomed |= {p.name for p in folder.iterdir() if rf.MANIFEST_RE.fullmatch(p.name)}
            if marker is not None:
                doomed |= {n for n in marker.get("files", []) if isinstance(n, str) and "/" not in n
                           and n not in (".", "..", rf.MARKER) and not n.startswith(".gradattr-lock")}
        for name in doomed:
            p = folder / name
            if p.is_symlink() or p.is_file():
                p.unlink()

    def done(self, index: int, start: int, rows: int, first: str | None = None) -> bool:
        """Whether batch ``index`` has an intact shard already (it is then checked against this run)."""
        recs = self.records.get(index)
        if not recs:
            return False
        digest = rf.file_digest(self.folder / rf.SHARD.format(index))
        match = [r for r in recs if digest is not None and (r.get("size"), r.get("sha256")) == digest]
        if not match:  # missing, truncated or altered: computed again
            self.repaired += 1
            return False
        rec = match[-1]
        if (rec["start"], rec["rows"]) != (start, rows):
            raise expected(self.ctx.out_dir, "the same batches as the run being resumed",
                           f"batch {index} with {rows} samples from position {start}, where the earlier "
                           f"run had {rec['rows']} from {rec['start']} (another batch size?)")
        if first is not None and rec.get("x0") not in (None, first):
            raise expected(self.ctx.out_dir, "the same data as the run being resumed",
                           f"batch {index} whose first sample differs from the one the earlier run "
                           f"explained; use {self.ctx.overwrite} to start again")
        self.chosen[index] = rec
        return True

    def save(self, index: int, start: int, indices, maps: np.ndarray, first: str | None) -> Path:
        name = rf.SHARD.format(index)
        path = self.folder / name
        tmp, f = rf.open_new(path)
        try:
            with f:
                w = rf.HashingWriter(f)
                np.save(w, maps)
            os.replace(tmp, path)  # a shard exists complete or not at all
        except BaseException:
            rf.unlink_quietly(tmp)
            raise
        rec = {"shard": index, "file": name, "start": start, "rows": int(maps.shape[0]),
               "shape": list(maps.shape), "size": w.size, "sha256": w.hash.hexdigest()}
        idx = [int(i) for i in indices]
        if idx == list(range(idx[0], idx[0] + len(idx))):
            rec["first"] = idx[0]  # contiguous samples: the first is enough
        else:
            rec["indices"] = idx
        if first is not None:
            rec["x0"] = first
        rf.append_line(self.manifest, json.dumps(rec))  # recorded only once the shard is complete
        self.chosen[index] = rec
        return path

    def finish(self, n_batches: int | None) -> None:
        """Barrier, then rank 0 writes ``index.json`` from every rank's manifest."""
        barrier(self.world)  # every rank's manifest is complete
        err = None
        if self.rank == 0:
            try:
                merged = self._merge(n_batches)
                shapes = {tuple(r["shape"][1:]) for r in merged if "shape" in r}
                if len(shapes) > 1:
                    raise GradattrError(f"out_dir: expected maps of one shape in every shard, got "
                                        f"{sorted(shapes)}")
                rf.write_atomic(self.folder / rf.INDEX, json.dumps(
                    {"gradattr_run": rf.FORMAT, "samples": sum(r["rows"] for r in merged),
                     "world_size": self.world, "map_shape": list(shapes.pop()) if shapes else [1],
                     "shards": merged}).encode())
            except (GradattrError, OSError) as e:
                err = e
        agree(self.world, err, self.ctx.out_dir)  # the index exists when any rank returns

    def _merge(self, n_batches: int | None) -> list[dict]:
        """One record per shard 0..n-1, the one that matches the file where ranks recorded it twice."""
        found = rf.read_manifests(self.folder)
        n = n_batches if n_batches is not None else (max(found) + 1 if found else 0)
        merged = []
        for k in range(n):
            recs = found.get(k, [])
            if k in self.chosen:
                rec = self.chosen[k]
            elif len({(r.get("size"), r.get("sha256")) for r in recs}) == 1:
                rec = recs[-1]
            else:
                digest = rf.file_digest(self.folder / rf.SHARD.format(k))
                match = [r for r in recs if (r.get("size"), r.get("sha256")) == digest]
                if not match:
                    raise GradattrError(f"out_dir: expected shard {k} to be recorded by a rank, got "
                                        f"{'no record' if not recs else 'records that do not match the file'}")
                rec = match[-1]
            merged.append({key: v for key, v in rec.items() if key != "x0"})
        start = 0
        for r in merged:
            if r["start"] != start:
                raise GradattrError(f"out_dir: expected shard {r['shard']} to start at sample {start}, got "
                                    f"{r['start']} (did the ranks see different data?)")
            start += r["rows"]
        seen = np.concatenate([_record_indices(r) for r in merged]) if merged else np.zeros(0, int)
        uniq, counts = np.unique(seen, return_counts=True)
        if (counts > 1).any():
            raise GradattrError(f"out_dir: expected each sample in one shard, got samples "
                                f"{uniq[counts > 1][:5].tolist()} in several (did the ranks see "
                                "different data, e.g. a shuffling loader?)")
        return merged

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _version() -> str:
    from .. import __version__

    return __version__


def _record_indices(rec: dict) -> np.ndarray:
    if "indices" in rec:
        return np.asarray(rec["indices"], dtype=np.int64)
    return np.arange(rec["first"], rec["first"] + rec["rows"], dtype=np.int64)


__all__ = ["Shards", "load_maps"]
