"""Append-only sharded embedding caches: a change writes only what changed.

A single-file NPZ cache must be rewritten whole on every change: at 10M x 1,280 floats that is
51 GB written to add one image. A shard store is a folder ``<name>.store/`` holding

* delta files ``d-<seq>-<token>.npz``: the rows one change added (ids, relpaths, vectors) and the
  ids it deleted (``deleted``), each written once and never modified;
* ``manifest.json``: the ordered list of deltas with each one's size and SHA-256, the backbone,
  runtime tag and dim, replaced atomically: the commit point of every change.

A row is live unless a later delta deletes or re-adds its id (so a re-embedded image is its
newest row). A change writes one delta and a new manifest; a delta file the manifest does not
name is a change killed before its commit point and is garbage. **Compaction** rewrites the live
rows into one delta: on ``imrs compact``, and automatically when deleted/replaced rows exceed
``GARBAGE_RATIO`` of the rows on disk; when deltas pile up, only the small ones after the largest
are merged, so the big first delta is not rewritten for a stream of small changes.

Every delta is named with its checksum in the manifest, so a damaged file is found by ``verify``
(and by reading: zip CRCs, sizes), named, and never read as if it were whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .embset import FP32, EmbeddingRows, load_npz
from .errors import StoreError
from .faults import fault_point
from .fsutil import atomic_path, atomic_write_json, read_json

log = logging.getLogger(__name__)

STORE_SUFFIX = ".store"
MANIFEST = "manifest.json"
FORMAT = 2
#: Fraction of the rows on disk that may be dead (deleted or replaced) before a change compacts.
GARBAGE_RATIO = 0.25
#: Stores below this many rows on disk are compacted whenever anything is dead (cheap, and tidy).
SMALL_ROWS = 4096
#: Deltas after which the small ones (all but the largest and those before it) are merged.
MAX_DELTAS = 24
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
#: How long a reader without the lock keeps retrying while writers keep replacing the manifest.
CONSISTENT_READ_SECONDS = 30.0


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (NumPy's hash-based unique is ~50x slower on a million int64 ids)."""
    s = np.sort(a)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def is_store(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return p.name.endswith(STORE_SUFFIX) or (p / MANIFEST).is_file()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Delta:
    file: str
    rows: int
    deleted: int
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows, "deleted": self.deleted, "bytes": self.bytes,
                "sha256": self.sha256}


class ShardStore:
    """One cache (a backbone's base images, or one web term's) as append-only deltas."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    # -- manifest ---------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        try:
            data = read_json(self.manifest_path)
        except FileNotFoundError as exc:
            raise StoreError(f"{self.path}: no embedding store here") from exc
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.manifest_path}: unreadable manifest ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("deltas"), list):
            raise StoreError(f"{self.manifest_path}: not an IMRS store manifest")
        if int(data.get("format", 0)) > FORMAT:
            raise StoreError(f"{self.path} has store format {data.get('format')}: upgrade IMRS")
        return data

    def deltas(self) -> list[Delta]:
        try:
            return [Delta(**d) for d in self.manifest()["deltas"]]
        except TypeError as exc:
            raise StoreError(f"{self.manifest_path}: not an IMRS store manifest ({exc})") from exc

    def fingerprint(self) -> str:
        """SHA-256 of the manifest, which names every delta's checksum: what a commit record keeps."""
        try:
            return hashlib.sha256(self.manifest_path.read_bytes()).hexdigest()
        except OSError:
            return ""

    def _write_manifest(self, backbone: str, runtime: str, dim: int, deltas: list[Delta]) -> None:
        atomic_write_json(self.manifest_path, {
            "format": FORMAT, "backbone": backbone, "runtime": runtime, "dim": int(dim),
            "rows": int(sum(d.rows for d in deltas)), "deltas": [d.as_dict() for d in deltas]})

    # -- reading ----------------------------------------------------------------------------------
    def runtime(self) -> str:
        return str(self.manifest().get("runtime") or FP32)

    def _read_delta(self, d: Delta, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
        path = self.path / d.file
        try:
            size = path.stat().st_size
            if size != d.bytes:
                raise StoreError(f"{path}: {size} bytes, the manifest says {d.bytes} (damaged or truncated)")
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in wanted}
        except StoreError:
            raise
        except _READ_ERRORS as exc:
            raise StoreError(f"{path}: unreadable embedding delta ({type(exc).__name__}: {exc})") from exc
        if len(out.get("ids", ())) != d.rows:
            raise StoreError(f"{path}: {len(out['ids'])} rows, the manifest says {d.rows} (damaged)")
        return out

    def _live(self, deltas: list[Delta], with_vectors: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(live rows of ``deltas`` in order, every id deleted or re-added by them): the resolution of
        the append-only log. Rows of delta i die when a delta j > i deletes or re-adds their id."""
        wanted = ("ids", "deleted", "relpaths", "vectors") if with_vectors else ("ids", "deleted")
        parts = [self._read_delta(d, wanted) for d in deltas]
        if not parts:
            empty: dict[str, np.ndarray] = {"ids": np.zeros(0, np.int64)}
            return empty, np.zeros(0, np.int64)
        ids = np.concatenate([p["ids"].astype(np.int64, copy=False) for p in parts])
        pos = np.concatenate([np.full(len(p["ids"]), i, np.int64) for i, p in enumerate(parts)])
        # "kills": (id, delta) pairs; a row dies if a kill of its id comes from a later delta
        k_ids = np.concatenate([np.concatenate([p["deleted"].astype(np.int64, copy=False),
                                                p["ids"].astype(np.int64, copy=False)]) for p in parts])
        k_pos = np.concatenate([np.full(len(p["deleted"]) + len(p["ids"]), i, np.int64)
                                for i, p in enumerate(parts)])
        alive = np.ones(len(ids), dtype=bool)
        if len(k_ids):
            order = np.lexsort((k_pos, k_ids))
            k_ids, k_pos = k_ids[order], k_pos[order]
            last = np.r_[k_ids[1:] != k_ids[:-1], True]  # the latest kill of each id
            u_ids, u_pos = k_ids[last], k_pos[last]
            at = np.minimum(np.searchsorted(u_ids, ids), len(u_ids) - 1)
            alive = ~((u_ids[at] == ids) & (u_pos[at] > pos))
        idx = np.flatnonzero(alive)
        if len(idx) and len(sorted_unique(ids[idx])) != len(idx):  # an id twice in one delta: its last row
            _, first_rev = np.unique(ids[idx][::-1], return_index=True)
            keep = np.zeros(len(ids), dtype=bool)
            keep[np.sort(idx[len(idx) - 1 - first_rev])] = True
            alive = keep
        out = {"ids": ids[alive]}
        if with_vectors:
            out["relpaths"] = np.concatenate([p["relpaths"].astype(str) for p in parts])[alive]
            chunks = []
            for i, p in enumerate(parts):
                mine = alive[pos == i]
                if mine.any():
                    chunks.append(p["vectors"] if mine.all() else p["vectors"][mine])
            out["vectors"] = (chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks
                              else np.zeros((0, 0), np.float32))
        killed = sorted_unique(np.concatenate([p["deleted"].astype(np.int64, copy=False) for p in parts]
                                               + [p["ids"].astype(np.int64, copy=False) for p in parts]))
        return out, killed

    def _consistent(self, with_vectors: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(manifest, live rows) read without the writer lock: a compaction may delete the deltas a
        manifest just read names, so a failed read is retried while the manifest keeps changing."""
        deadline = time.monotonic() + CONSISTENT_READ_SECONDS
        attempt = 0
        while True:
            before = self.fingerprint()
            m = self.manifest()
            try:
                deltas = [Delta(**d) for d in m["deltas"]]
                return m, self._live(deltas, with_vectors)[0]
            except StoreError:
                # the manifest did not change: what it names is really missing or damaged. A busy
                # writer (compactions back to back) can outrun a few quick retries, so they go on,
                # a little slower each time, until the manifest holds still or time runs out.
                if self.fingerprint() == before or time.monotonic() > deadline:
                    raise
            except TypeError as exc:
                raise StoreError(f"{self.manifest_path}: not an IMRS store manifest ({exc})") from exc
            attempt += 1
            time.sleep(min(0.001 * 2 ** attempt, 0.05))

    def load_ids(self) -> np.ndarray:
        return self._consistent(with_vectors=False)[1]["ids"]

    def load(self) -> EmbeddingRows:
        m, rows = self._consistent(with_vectors=True)
        dim = int(m.get("dim") or 0)
        vectors = rows["vectors"] if len(rows["ids"]) else np.zeros((0, dim), np.float32)
        return EmbeddingRows(str(m.get("backbone") or "unknown"), rows["ids"], rows.get("relpaths", []), vectors,
                             str(m.get("runtime") or FP32))

    def verify(self) -> list[str]:
        """Every problem of the store: missing or damaged deltas (size, SHA-256), as one line each."""
        try:
            deltas = self.deltas()
        except StoreError as exc:
            return [str(exc)]
        problems = []
        for d in deltas:
            path = self.path / d.file
            try:
                if path.stat().st_size != d.bytes or sha256_file(path) != d.sha256:
                    problems.append(f"{path}: checksum mismatch (damaged)")
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
        return problems

    def stats(self) -> dict[str, int]:
        """Rows on disk, live rows, deltas and bytes: what compaction and ``imrs info`` look at."""
        deltas = self.deltas()
        on_disk = sum(d.rows for d in deltas)
        live = len(self.load_ids()) if deltas else 0
        return {"deltas": len(deltas), "rows_on_disk": on_disk, "live": live, "dead": on_disk - live,
                "bytes": sum(d.bytes for d in deltas)}

    # -- writing (callers hold the collection's writer lock) -------------------------------------------
    def _write_delta(self, ids: np.ndarray, relpaths: np.ndarray, vectors: np.ndarray,
                     deleted: np.ndarray) -> Delta:
        self.path.mkdir(parents=True, exist_ok=True)
        existing = [d.file for d in self.deltas()] if self.exists() else []
        seq = 1 + max((int(f.split("-")[1]) for f in existing), default=-1)
        name = f"d-{seq:08d}-{uuid.uuid4().hex[:8]}.npz"
        target = self.path / name
        with atomic_path(target, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, ids=np.asarray(ids, np.int64), relpaths=np.asarray(relpaths, dtype=str),
                     vectors=np.ascontiguousarray(vectors, np.float32), deleted=np.asarray(deleted, np.int64))
        return Delta(name, len(ids), len(deleted), target.stat().st_size, sha256_file(target))

    def update(self, add: EmbeddingRows | None = None, remove: Iterable[int] = (), *,
               backbone: str, dim: int, runtime: str | None = None, compact: bool = True) -> int:
        """Delete ``remove`` ids and add (or replace) ``add``'s rows: one new delta, one new manifest.
        Returns the bytes written (what ``scripts/bench_store.py`` measures)."""
        gone = np.unique(np.fromiter((int(i) for i in remove), dtype=np.int64))
        if add is not None and len(add):
            gone = np.setdiff1d(gone, add.ids)  # re-added rows supersede themselves
        if (add is None or not len(add)) and not len(gone):
            return 0
        old = self.deltas() if self.exists() else []
        old_runtime = self.runtime() if old else None
        new_runtime = runtime or (add.runtime if add is not None and len(add) else None) or old_runtime or FP32
        if add is not None and len(add) and old_runtime is not None and old_runtime != add.runtime \
                and self.load_ids().size:
            raise StoreError(f"refusing to mix embeddings of different runtimes: {old_runtime} and "
                             f"{add.runtime} in {self.path.name} (re-embed with one runtime)")
        if add is not None and len(add) and add.dim != dim:
            raise StoreError(f"{self.path.name}: {add.dim}-d vectors for a {dim}-d store")
        if old:
            live = self.load_ids()
            gone = gone[np.isin(gone, live)]  # deleting what is not there writes nothing
            if (add is None or not len(add)) and not len(gone):
                return 0
        before = self._dir_bytes()
        delta = self._write_delta(add.ids if add is not None else np.zeros(0, np.int64),
                                  add.relpaths if add is not None else np.zeros(0, "<U1"),
                                  add.vectors if add is not None else np.zeros((0, dim), np.float32), gone)
        fault_point("store.after_delta")
        self._write_manifest(backbone, new_runtime, dim, [*old, delta])
        written = delta.bytes + self.manifest_path.stat().st_size
        if compact:
            written += self.maybe_compact(backbone=backbone, dim=dim)
        log.debug("%s: +%d -%d rows, %d bytes written (%d on disk before)", self.path.name,
                  delta.rows, delta.deleted, written, before)
        return written

    def replace(self, emb: EmbeddingRows, *, dim: int | None = None) -> int:
        """All of the store becomes ``emb`` (an import, a restamp, a full rewrite): one delta."""
        old = self.deltas() if self.exists() else []
        delta = self._write_delta(emb.ids, emb.relpaths, emb.vectors, np.zeros(0, np.int64))
        fault_point("store.after_delta")
        self._write_manifest(emb.backbone, emb.runtime, dim or int(emb.vectors.shape[1]), [delta])
        fault_point("store.after_manifest")
        self._remove_files([d.file for d in old if d.file != delta.file])
        return delta.bytes

    def maybe_compact(self, *, backbone: str, dim: int) -> int:
        """Compact when dead rows pass ``GARBAGE_RATIO`` (or any die in a small store), and merge the
        small deltas after the largest when they pile up. Returns the bytes written."""
        deltas = self.deltas()
        on_disk = sum(d.rows for d in deltas)
        dead = on_disk - len(self.load_ids())
        if dead and (dead > GARBAGE_RATIO * on_disk or on_disk < SMALL_ROWS):
            return self.compact(backbone=backbone, dim=dim)
        if len(deltas) > MAX_DELTAS:
            return self._merge_tail(deltas, backbone=backbone, dim=dim)
        return 0

    def compact(self, *, backbone: str | None = None, dim: int | None = None) -> int:
        """Rewrite the live rows as one delta (``imrs compact``). Returns the bytes written."""
        if not self.exists():
            return 0
        m = self.manifest()
        emb = self.load()
        if backbone:
            emb.backbone = backbone
        old = [Delta(**d) for d in m["deltas"]]
        if len(old) == 1 and old[0].deleted == 0 and old[0].rows == len(emb):
            return 0
        return self.replace(emb, dim=dim or int(m.get("dim") or emb.dim))

    def _merge_tail(self, deltas: list[Delta], *, backbone: str, dim: int) -> int:
        """Merge the longest run of trailing deltas whose bytes together stay under the delta before
        them (size tiers, as an LSM tree does): its live rows, and every id it deletes or re-adds
        (those still kill rows of the earlier deltas). Big deltas are never rewritten here."""
        start = next((i for i in range(1, len(deltas) - 1)
                      if sum(d.bytes for d in deltas[i:]) <= deltas[i - 1].bytes), None)
        if start is None:
            return 0
        head, tail = deltas[:start], deltas[start:]
        rows, killed = self._live(tail, with_vectors=True)
        vectors = rows["vectors"] if len(rows["ids"]) else np.zeros((0, dim), np.float32)
        merged = self._write_delta(rows["ids"], rows.get("relpaths", np.zeros(0, "<U1")), vectors,
                                   np.setdiff1d(killed, rows["ids"]))
        fault_point("store.after_delta")
        self._write_manifest(backbone, self.runtime(), dim, [*head, merged])
        fault_point("store.after_manifest")
        self._remove_files([d.file for d in tail])
        return merged.bytes

    def _remove_files(self, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def _dir_bytes(self) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for e in os.scandir(self.path):
                with contextlib.suppress(OSError):
                    total += e.stat().st_size
        return total

    def collect_garbage(self) -> int:
        """Delta files no manifest names (a change killed before its commit point) and temp files.
        Only under the writer lock: a change in progress looks alike."""
        if not self.path.is_dir():
            return 0
        try:
            named = {d.file for d in self.deltas()} | {MANIFEST}
        except StoreError:
            return 0  # a damaged manifest: its files are evidence, not garbage
        removed = 0
        for e in os.scandir(self.path):
            if e.name not in named and e.is_file(follow_symlinks=False) and (
                    e.name.startswith("d-") or e.name.endswith(".tmp")):
                Path(e.path).unlink(missing_ok=True)
                removed += 1
        return removed

    def rebuild_manifest(self, backbone: str, dim: int, runtime: str) -> int:
        """A store whose manifest is lost: the deltas are self-describing (each holds what it added and
        deleted), so replaying them in sequence order gives the rows back. Returns deltas found."""
        files = sorted(e.name for e in os.scandir(self.path) if e.name.startswith("d-") and e.name.endswith(".npz"))
        deltas = []
        for f in files:
            p = self.path / f
            try:
                with np.load(p, allow_pickle=False) as z:
                    rows, deleted = len(z["ids"]), len(z["deleted"])
            except _READ_ERRORS:
                log.warning("%s: unreadable delta left out of the rebuilt manifest", p)
                continue
            deltas.append(Delta(f, rows, deleted, p.stat().st_size, sha256_file(p)))
        self._write_manifest(backbone, runtime, dim, deltas)
        return len(deltas)


def migrate_file(npz: Path, store_path: Path) -> ShardStore:
    """A single-file cache (``emb_<backbone>.npz``, from before stores) becomes a store's first delta:
    moved, not copied, so the migration writes only a manifest. Crash-safe in any order: a store
    folder without a manifest is rebuilt from its deltas (``rebuild_manifest``)."""
    emb = load_npz(npz)
    store = ShardStore(store_path)
    store.path.mkdir(parents=True, exist_ok=True)
    name = f"d-{0:08d}-{uuid.uuid4().hex[:8]}.npz"
    # the old file lacks the "deleted" member: rewrite it once in the delta format
    with atomic_path(store.path / name, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, ids=emb.ids, relpaths=emb.relpaths, vectors=emb.vectors, deleted=np.zeros(0, np.int64))
    p = store.path / name
    store._write_manifest(emb.backbone, emb.runtime, emb.dim if len(emb) else 0,
                          [Delta(name, len(emb), 0, p.stat().st_size, sha256_file(p))])
    npz.unlink()
    log.info("migrated %s to the store %s (%d rows)", npz.name, store.path.name, len(emb))
    return store
