"""Crash consistency: the commit protocol of a collection's three stores, and repair on open.

One idea in one module: the protocol, the check that reads it and the repair that finishes it are
the three halves of one promise and are read together (web images' files live in ``webfiles``,
damaged stores in ``damaged``).

A collection's state lives in three places that cannot share one transaction: the SQLite catalog
(which images exist), the NPZ embedding caches (their vectors, one set per backbone) and the live
index snapshot (a search structure over those vectors, one per backbone and index kind). A
process killed between writing one and the next used to leave them out of step for good: a
re-index reported "0 new" and deleted images kept coming back as rank 1.

The protocol, run by ``Collection.writing(op)`` around every multi-step write:

1. Before the first change, an **intent record** (``intent.json``: op, pid, time) is written.
2. The stores are written in an order that keeps every intermediate state repairable:
   *additions* go to the caches first and the catalog second; *removals* leave the catalog first
   and the caches second. So at any crash point, a cache row the catalog lacks is a half-done
   addition or removal, and dropping it is right in both cases. The live index comes last: it is
   derived, and rebuilt (or patched) from caches and catalog.
3. Last, a **commit record** (``commit-<backbone>-<indexer>.json``) stores what the state looks
   like (the catalog's generation token, each cache file's size/mtime/inode, the live snapshot
   version), and the intent record is removed.

On open (before the first catalog or index use, and at the start of every write) ``check``
compares the commit record with the disk: one small JSON read, one SQLite query, a ``stat`` per
cache file and a listing of a usually empty folder, so it is cheap when nothing is wrong. Only when
they disagree (an intent record is left, the catalog or a cache changed behind this backbone's
back, no commit record yet) does ``repair`` compare id sets, under the writer lock:

* cache rows whose id the catalog lacks are dropped (the catalog says which images exist);
* the live index gets the cache vectors it lacks and loses the ids the caches lack (the caches
  hold the vectors); catalog rows without a vector are only counted: another backbone may have
  them, and ``imrs index`` embeds base images a cache lacks;
* files in ``dynamic_*/`` that IMRS named (``<20 hex>.jpg``) but the catalog does not know (a
  commit killed after moving them) are **moved** to ``<state>/quarantine/``, never deleted: they
  cost a download, and their provenance sidecar (``<20 hex>.json``, written at download time)
  travels with them; ``imrs index`` takes them back. Base files are never touched;
* a catalog that is lost (deleted, emptied, unreadable) is rebuilt from the caches, the folder and
  the sidecars before anything is compared, so a lost catalog never costs a cache row or a file;
* a damaged cache is moved to the quarantine and named; the live index keeps the vectors of its
  images until ``imrs index`` re-embeds them, so no search answers from part of the collection;
* staging folders of dead expansions, temp files of interrupted atomic writes, deltas no store
  manifest names and snapshot versions no pointer names are removed.

One state folder owns a collection folder's ``dynamic_*`` folders: it names itself in
``<root>/.imrs-owner.json``. Another state folder on the same collection is told so once and keeps
its own web images in its state folder, so it never moves or deletes the owner's files.

Expansions download outside the writer lock, into ``dynamic_<slug>/.staging-<token>``; each holds
a file lock ``<state>/staging/dynamic_<slug>.<token>.lock`` for its lifetime, so a staging folder
is removed only when its owner is gone (the kernel frees the lock of a killed process).

This module holds the protocol, the check and the repair; the web images' files (sidecars,
quarantine, ownership) are ``imrs.webfiles``'s, damaged stores ``imrs.damaged``'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock, Timeout

from . import snapshot as snap
from .damaged import cache_files, catalog_lost, quarantine_damaged_caches, rebuild_catalog, replace_damaged_catalog
from .errors import IMRSError, StoreError
from .faults import fault_point
from .fsutil import atomic_write_json, read_json
from .layout import is_dynamic_folder
from .shards import ShardStore, migrate_file, sorted_unique
from .store import EmbeddingSet, load_ids, merge
from .webfiles import claim_owner, dynamic_folders, quarantine_orphans, rmdir_if_empty, scandir

if TYPE_CHECKING:
    from .repairport import RepairTarget

log = logging.getLogger(__name__)

INTENT_FILE = "intent.json"
STAGING_LOCK_DIR = "staging"
STAGING_PREFIX = ".staging-"
#: Temp files in the state folder older than this (s) belong to no live write (any write takes far less).
TEMP_MAX_AGE = 3600.0
_LOCKED_TEMP = (f".{INTENT_FILE}.", ".commit-")  # temp names of the records, written under the lock


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def commit_path(coll: RepairTarget) -> Path:
    return coll.state_dir / f"commit-{coll.backbone}-{coll.indexer}.json"


def intent_path(coll: RepairTarget) -> Path:
    return coll.state_dir / INTENT_FILE


def fingerprint(coll: RepairTarget) -> dict[str, Any]:
    """What the commit record stores: enough to notice any change to the three stores without
    reading them. Caches by size and mtime (ns), not inode: a state folder copied with its times
    (a backup put back) is still the same state and needs no repair."""
    caches = []
    for p in cache_files(coll):
        if p.is_dir():  # a shard store: its manifest's checksum names every delta's checksum
            caches.append([p.name, ShardStore(p).fingerprint(), _dir_stats(p)])
            continue
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            caches.append([p.name, st.st_size, st.st_mtime_ns])
    return {"catalog": coll.repair_port.catalog.generation(), "caches": caches,
            "version": snap.pointed_version(coll.snap_dir, coll.live_name)}


def migrate(coll: RepairTarget) -> int:
    """Under the writer lock: single-file caches (from before shard stores) become stores, and a
    store folder whose manifest is missing gets it back from its deltas. The stores' content is
    unchanged, so a clean commit record is renewed rather than sending the next check to a repair."""
    legacy = [p for p in cache_files(coll) if p.is_file()]
    broken = [p for p in cache_files(coll) if p.is_dir() and not ShardStore(p).exists()]
    if not legacy and not broken:
        return 0
    was_clean = not check(coll).full
    for p in legacy:
        try:
            migrate_file(p, p.with_suffix(".store"))
        except StoreError as exc:
            log.warning("not migrating a damaged cache: %s", exc)
    for p in broken:
        n = ShardStore(p).rebuild_manifest(coll.backbone, coll.dim, coll.repair_port.runtime_label())
        log.warning("%s had no manifest: rebuilt it from its %d delta file(s)", p, n)
    if was_clean and not broken:
        commit(coll)
    return len(legacy) + len(broken)


def begin(coll: RepairTarget, op: str) -> None:
    """Write the intent record: from here until ``commit`` a crash must trigger a repair."""
    atomic_write_json(intent_path(coll), {"op": op, "pid": os.getpid(), "backbone": coll.backbone,
                                          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def commit(coll: RepairTarget) -> None:
    """Write the commit record (the state is consistent as it is now), then drop the intent."""
    atomic_write_json(commit_path(coll), fingerprint(coll))
    fault_point("commit.after_record")
    intent_path(coll).unlink(missing_ok=True)


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: treated as "something is wrong", never as clean


# ---------------------------------------------------------------------------------------------
# Staging folders of expansions in progress
# ---------------------------------------------------------------------------------------------


def _staging_lock_dir(coll: RepairTarget) -> Path:
    return coll.state_dir / STAGING_LOCK_DIR


def _new_lock(path: Path) -> FileLock:
    return FileLock(path, thread_local=False, fallback_to_soft=False)


@contextlib.contextmanager
def staging_folder(coll: RepairTarget, folder: Path) -> Iterator[Path]:
    """A private folder inside ``folder`` (a ``dynamic_<slug>`` folder) for one expansion's
    downloads, guarded by a lock its owner holds until it is gone: removed here on exit, and by
    ``repair`` if the owner was killed. The lock exists before the folder, so a folder without a
    held lock is always dead."""
    if Path(coll.dynamic_root) == coll.root:
        other = claim_owner(coll.root, coll.state_dir)
        if other is not None:
            raise IMRSError(f"{coll.root} belongs to the state folder {other}: grow it from there "
                            "(or remove that state folder)")
    token = uuid.uuid4().hex[:12]
    lock_dir = _staging_lock_dir(coll)
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock_path = lock_dir / f"{folder.name}.{token}.lock"
    lock = _new_lock(lock_path)
    lock.acquire(timeout=0)  # a fresh name: nobody else can hold it
    staging = folder / f"{STAGING_PREFIX}{token}"
    try:
        staging.mkdir(parents=True)  # parents: a concurrent expansion of the term may have rmdir'ed it
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()
        lock_path.unlink(missing_ok=True)


TEMP_DIR = "tmp"


@contextlib.contextmanager
def temp_folder(coll: RepairTarget) -> Iterator[Path]:
    """A private scratch folder in the state folder's own ``tmp/`` (not the system temp), guarded by
    a lock its owner holds: removed on exit, and by the next open's check if the owner was killed,
    so a killed run never leaves its scratch files behind for good."""
    token = uuid.uuid4().hex[:12]
    lock_dir = _staging_lock_dir(coll)
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock_path = lock_dir / f"{TEMP_DIR}.{token}.lock"
    lock = _new_lock(lock_path)
    lock.acquire(timeout=0)
    folder = coll.state_dir / TEMP_DIR / token
    try:
        folder.mkdir(parents=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.release()
        lock_path.unlink(missing_ok=True)


def _clean_temp_folders(coll: RepairTarget) -> int:
    """Scratch folders in ``<state>/tmp`` whose lock is not held (their run was killed)."""
    removed = 0
    for entry in scandir(coll.state_dir / TEMP_DIR):
        lock_path = _staging_lock_dir(coll) / f"{TEMP_DIR}.{entry.name}.lock"
        lock = _is_dead(lock_path) if lock_path.exists() else None
        if lock_path.exists() and lock is None:
            continue  # a live run
        try:
            shutil.rmtree(entry.path, ignore_errors=True) if entry.is_dir(follow_symlinks=False) else \
                Path(entry.path).unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
            removed += 1
        finally:
            if lock is not None:
                lock.release()
    return removed


def _is_dead(lock_path: Path) -> FileLock | None:
    """The lock, held by us, when its owner is gone; None while someone holds it."""
    lock = _new_lock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    except OSError:  # vanished meanwhile: its owner finished
        return None
    return lock


def stale_staging(coll: RepairTarget) -> list[Path]:
    """Lock files of staging folders whose expansion died (cheap: the folder is empty normally)."""
    lock_dir = _staging_lock_dir(coll)
    try:
        names = [e.name for e in os.scandir(lock_dir) if e.name.endswith(".lock")]
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        lock = _is_dead(lock_dir / name)
        if lock is not None:
            lock.release()
            out.append(lock_dir / name)
    return out


def clean_staging(coll: RepairTarget, scan_folders: bool) -> int:
    """Remove staging folders of dead expansions. With ``scan_folders`` also look inside every
    ``dynamic_*`` folder, for staging folders with no lock file (left by IMRS before locks)."""
    removed = 0
    lock_dir = _staging_lock_dir(coll)
    dyn_root = Path(coll.dynamic_root)
    for lock_path in stale_staging(coll):
        lock = _is_dead(lock_path)
        if lock is None:
            continue
        try:
            folder, _, token = lock_path.name[: -len(".lock")].rpartition(".")
            if folder == TEMP_DIR and token and "/" not in token:
                shutil.rmtree(coll.state_dir / TEMP_DIR / token, ignore_errors=True)
                removed += 1
            elif is_dynamic_folder(folder) and "/" not in folder and token:
                target = dyn_root / folder / f"{STAGING_PREFIX}{token}"
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                    removed += 1
                rmdir_if_empty(dyn_root / folder)
            lock_path.unlink(missing_ok=True)
        finally:
            lock.release()
    if scan_folders:
        for folder in dynamic_folders(dyn_root):
            for entry in scandir(folder):
                if not entry.name.startswith(STAGING_PREFIX) or not entry.is_dir(follow_symlinks=False):
                    continue
                token = entry.name[len(STAGING_PREFIX):]
                lock_path = lock_dir / f"{folder.name}.{token}.lock"
                lock = _is_dead(lock_path) if lock_path.exists() else None
                if lock_path.exists() and lock is None:
                    continue  # a live expansion
                try:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
                    lock_path.unlink(missing_ok=True)
                finally:
                    if lock is not None:
                        lock.release()
            rmdir_if_empty(folder)
    return removed


# ---------------------------------------------------------------------------------------------
# Check and repair
# ---------------------------------------------------------------------------------------------


@dataclass
class Status:
    """What ``check`` found. ``full``: the id sets must be compared; ``staging``: dead staging."""

    reasons: list[str] = field(default_factory=list)
    full: bool = False
    staging: bool = False

    @property
    def clean(self) -> bool:
        return not (self.full or self.staging)


@dataclass
class RepairReport:
    reasons: list[str] = field(default_factory=list)
    cache_rows_dropped: int = 0
    cache_files_rewritten: int = 0
    index_removed: int = 0
    index_added: int = 0
    orphan_files: int = 0
    staging_removed: int = 0
    garbage_removed: int = 0
    without_vectors: int = 0
    catalog_rebuilt: int = 0
    caches_quarantined: int = 0
    seconds: float = 0.0

    @property
    def repaired(self) -> bool:
        return bool(self.cache_rows_dropped or self.index_removed or self.index_added or self.orphan_files
                    or self.staging_removed or self.garbage_removed or self.catalog_rebuilt
                    or self.caches_quarantined)

    def summary(self) -> str:
        parts = [f"{n} {what}" for n, what in (
            (self.index_removed, "index vector(s) of images no longer in the catalog removed"),
            (self.index_added, "cached vector(s) the index lacked added"),
            (self.cache_rows_dropped, f"cache row(s) the catalog lacks dropped ({self.cache_files_rewritten} file(s))"),
            (self.orphan_files, "unrecorded web image(s) moved to the quarantine (imrs index takes them back)"),
            (self.catalog_rebuilt, "catalog row(s) rebuilt from the caches, folder and sidecars"),
            (self.caches_quarantined, "damaged cache(s) moved to the quarantine (imrs index re-embeds them)"),
            (self.staging_removed, "staging / scratch folder(s) of dead runs removed"),
            (self.garbage_removed, "temp file(s) / unreferenced snapshot version(s) removed"),
        ) if n]
        return "; ".join(parts) or "nothing to repair"


def check(coll: RepairTarget) -> Status:
    """The cheap test run on every open and every write: is there anything to repair?"""
    status = Status()
    intent = _read(intent_path(coll))
    if intent is not None:
        status.full = True
        if isinstance(intent, dict) and intent.get("op"):
            status.reasons.append(f"interrupted {intent['op']} (pid {intent.get('pid', '?')}, "
                                  f"started {intent.get('started', '?')})")
        else:
            status.reasons.append("unreadable intent record")
    if stale_staging(coll):
        status.staging = True
        status.reasons.append("staging / scratch folders of dead runs")
    record = _read(commit_path(coll))
    now = fingerprint(coll)
    if record is None:
        if now["caches"] or now["version"] is not None:
            status.full = True
            status.reasons.append("no commit record for this backbone and index")
    elif record != now:
        status.full = True
        changed = [k for k in ("catalog", "caches", "version") if not isinstance(record, dict)
                   or record.get(k) != now[k]]
        status.reasons.append(f"changed since the last commit: {', '.join(changed)}")
    return status


def repair(coll: RepairTarget, status: Status | None = None) -> RepairReport:
    """Bring catalog, caches, index and dynamic folders back in step. The caller holds the writer
    lock. Idempotent: a second run finds nothing to do."""
    t0 = time.perf_counter()
    status = status or check(coll)
    report = RepairReport(reasons=list(status.reasons))
    report.staging_removed = clean_staging(coll, scan_folders=status.full)
    if status.full:
        report.staging_removed += _clean_temp_folders(coll)
        problem = coll.repair_port.catalog.integrity_problem()
        if problem is not None:
            report.catalog_rebuilt = replace_damaged_catalog(coll, problem)
        report.garbage_removed = (_clean_temp_files(coll.emb_dir) + snap.collect_garbage(coll.snap_dir)
                                  + _clean_temp_files(coll.state_dir, unlocked_min_age=TEMP_MAX_AGE)
                                  + sum(ShardStore(p).collect_garbage() for p in cache_files(coll) if p.is_dir()))
        align(coll, report)
        commit(coll)
    report.seconds = time.perf_counter() - t0
    if report.repaired:
        log.warning("repaired %s (%s) after %s: %s [%.2fs]", coll.state_dir.name, coll.backbone,
                    "; ".join(report.reasons) or "a check", report.summary(), report.seconds)
    else:
        log.info("checked %s (%s): %s; nothing to repair [%.2fs]", coll.state_dir.name, coll.backbone,
                 "; ".join(report.reasons), report.seconds)
    if report.without_vectors:
        log.info("%d catalog image(s) have no %s vector yet (another backbone's, or not yet indexed)",
                 report.without_vectors, coll.backbone)
    return report


def align(coll: RepairTarget, report: RepairReport | None = None, release: str | None = None) -> RepairReport:
    """The O(n) part: caches lose rows the catalog lacks, unrecorded dynamic files go, the live
    index becomes exactly the cached vectors. Compares ids only (vectors are read just for the
    rows the index lacks); persists the index only if it changed. ``release`` (a snapshot load):
    web images the catalog no longer lists were dropped on purpose, so they go to a quarantine
    folder ``imrs index`` does not take back from."""
    report = report or RepairReport()
    damaged = quarantine_damaged_caches(coll, verify=True)
    report.caches_quarantined = len(damaged)
    if catalog_lost(coll):
        report.catalog_rebuilt += rebuild_catalog(coll)
    catalog = coll.repair_port.catalog.relpaths_by_id()
    cat_ids = np.fromiter(catalog.keys(), dtype=np.int64, count=len(catalog))
    files: list[tuple[Path, np.ndarray]] = []
    for path in cache_files(coll):
        try:
            ids = load_ids(path, backbone=coll.backbone)
        except StoreError as exc:  # damaged since the check above: never read, never dropped from
            log.warning("not repairing from a damaged cache (imrs index re-embeds it): %s", exc)
            damaged.append(path)
            continue
        keep = np.isin(ids, cat_ids)
        if not keep.all():
            if path.is_dir():
                coll.repair_port.write_cache(path, remove=ids[~keep])
            else:
                EmbeddingSet.load(path, backbone=coll.backbone).select(keep).save(path)
            report.cache_rows_dropped += int((~keep).sum())
            report.cache_files_rewritten += 1
            ids = ids[keep]
        files.append((path, ids))
    cached = sorted_unique(np.concatenate([ids for _, ids in files])) if files else np.zeros(0, np.int64)
    report.orphan_files = quarantine_orphans(coll, set(catalog), release)
    index, fresh = coll.repair_port.index_for_repair(lambda: _load_rows(coll, files, cached))
    have = index.ids()
    have = sorted_unique(have)
    extra = np.setdiff1d(have, cached, assume_unique=True)  # (NumPy's hash unique is slow at 1M ids)
    if damaged:  # the index keeps the vectors of catalogued images until imrs index re-embeds them
        extra = np.setdiff1d(extra, cat_ids, assume_unique=True)
    missing = np.setdiff1d(cached, have, assume_unique=True)
    if len(extra):
        index.remove(extra)
        report.index_removed = len(extra)
    if len(missing):
        add = _load_rows(coll, files, missing)
        index.add(add.ids, add.vectors)
        report.index_added = len(add)
    report.without_vectors = int(np.isin(cat_ids, cached, invert=True).sum())
    if fresh or len(extra) or len(missing) or snap.pointed_version(coll.snap_dir, coll.live_name) is None:
        coll.repair_port.persist_index()
    return report


def _load_rows(coll: RepairTarget, files: list[tuple[Path, np.ndarray]], wanted: np.ndarray) -> EmbeddingSet:
    """Cached rows of ``wanted`` ids, the first cache holding an id winning (as in ``store.merge``);
    only the files that hold any of them are read in full."""
    sets = [EmbeddingSet.load(path, backbone=coll.backbone) for path, ids in files if np.isin(ids, wanted).any()]
    if not sets:
        return EmbeddingSet.empty(coll.backbone, coll.dim)
    rows = merge(sets)
    return rows.select(np.isin(rows.ids, wanted))


def _dir_stats(path: Path) -> list[list[Any]]:
    out = []
    for e in scandir(path):
        if e.name.startswith("d-"):
            with contextlib.suppress(OSError):
                st = e.stat()
                out.append([e.name, st.st_size, st.st_mtime_ns])
    return sorted(out)


def _clean_temp_files(folder: Path, unlocked_min_age: float | None = None) -> int:
    """Temp files of atomic writes (``.<name>.<random>[.npz].tmp``) killed before their replace.

    ``emb/`` and ``snapshots/`` are written only under the writer lock, so every temp file there is
    dead. The state folder itself also gets lockless writes (text-search caches): there only the
    records this module writes, and temp files older than ``unlocked_min_age`` seconds, are."""
    removed = 0
    now = time.time()
    for entry in scandir(folder):
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False)):
            continue
        if unlocked_min_age is not None and not entry.name.startswith(_LOCKED_TEMP):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime < unlocked_min_age:
                    continue
        Path(entry.path).unlink(missing_ok=True)
        removed += 1
    return removed
