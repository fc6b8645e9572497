"""Crash consistency: the commit protocol of a collection's three stores, and repair on open.

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
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
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
from .catalog import Catalog, ImageRecord, label_for
from .errors import IMRSError, StoreError
from .faults import fault_point
from .fsutil import atomic_write_json, read_json
from .layout import DYNAMIC_PREFIX, is_dynamic_folder, is_dynamic_relpath
from .shards import ShardStore, migrate_file, sorted_unique
from .store import EmbeddingSet, load_ids, merge

if TYPE_CHECKING:
    from .repairport import RepairTarget

log = logging.getLogger(__name__)

INTENT_FILE = "intent.json"
STAGING_LOCK_DIR = "staging"
STAGING_PREFIX = ".staging-"
#: Temp files in the state folder older than this (s) belong to no live write (any write takes far less).
TEMP_MAX_AGE = 3600.0
_LOCKED_TEMP = (f".{INTENT_FILE}.", ".commit-")  # temp names of the records, written under the lock
#: Names expansion gives downloaded files (``grow.url_filename``); only such files are ever moved.
DYNAMIC_FILE_RE = re.compile(r"^[0-9a-f]{20}\.jpg$")
QUARANTINE_DIR = "quarantine"
OWNER_FILE = ".imrs-owner.json"
#: Provenance fields a sidecar keeps beside each downloaded image (the catalog's dynamic columns).
PROVENANCE_FIELDS = ("label", "term", "slug", "source_url", "provider", "title", "license", "author", "page_url",
                     "phash", "width", "height", "added_at")


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def commit_path(coll: RepairTarget) -> Path:
    return coll.state_dir / f"commit-{coll.backbone}-{coll.indexer}.json"


def intent_path(coll: RepairTarget) -> Path:
    return coll.state_dir / INTENT_FILE


def cache_files(coll: RepairTarget) -> list[Path]:
    """This backbone's caches, most trusted first (base, then dynamic terms): the vector truth."""
    return [p for p in [coll.base_npz(), *coll.dynamic_npzs()] if p.exists()]


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
    for entry in _scandir(coll.state_dir / TEMP_DIR):
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
                _rmdir_if_empty(dyn_root / folder)
            lock_path.unlink(missing_ok=True)
        finally:
            lock.release()
    if scan_folders:
        for folder in _dynamic_folders(dyn_root):
            for entry in _scandir(folder):
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
            _rmdir_if_empty(folder)
    return removed


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def _dynamic_folders(dyn_root: Path) -> list[Path]:
    return [Path(e.path) for e in _scandir(dyn_root)
            if is_dynamic_folder(e.name) and e.is_dir(follow_symlinks=False)]


def _rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


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


# ---------------------------------------------------------------------------------------------
# The user's web images: quarantine, provenance sidecars, ownership
# ---------------------------------------------------------------------------------------------


def quarantine_dir(coll: RepairTarget) -> Path:
    return coll.state_dir / QUARANTINE_DIR


def sidecar_of(image: Path) -> Path:
    return image.with_suffix(".json")


def write_provenance(image: Path, record: ImageRecord) -> None:
    """The sidecar of a downloaded image: where it came from, kept beside it so a lost catalog
    loses nothing (``rebuild_catalog``, ``Collection.sync`` read it back)."""
    atomic_write_json(sidecar_of(image), {k: getattr(record, k) for k in PROVENANCE_FIELDS}
                      | {"relpath": record.relpath})


def read_provenance(image: Path) -> dict[str, Any]:
    """The sidecar's fields ({} when there is none or it is unreadable: the folder names the term)."""
    try:
        data = read_json(sidecar_of(image))
    except (OSError, ValueError):
        return {}
    return {k: data[k] for k in PROVENANCE_FIELDS if isinstance(data, dict) and k in data}


def dynamic_record(coll: RepairTarget, relpath: str, image: Path) -> ImageRecord:
    """A catalog row for a web image found on disk: its sidecar's provenance, else its folder's term."""
    slug = relpath.split("/", 1)[0][len(DYNAMIC_PREFIX):]
    facts: dict[str, Any] = {"label": slug, "term": slug, "slug": slug}
    facts.update({k: v for k, v in read_provenance(image).items() if v is not None})
    with contextlib.suppress(OSError):
        st = image.stat()
        facts["mtime"], facts["size"] = st.st_mtime, st.st_size
    return ImageRecord.for_path(relpath, source="dynamic", **facts)


def _move_pair(src: Path, dest: Path) -> None:
    """Move an image and its sidecar (when there is one) to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    side = sidecar_of(src)
    if side.is_file():
        os.replace(side, sidecar_of(dest))


def quarantine_orphans(coll: RepairTarget, catalog_ids: set[int], release: str | None = None) -> int:
    """Web images an expansion moved into ``dynamic_<slug>/`` but never recorded (killed in between),
    or that a catalog no longer lists: moved with their sidecars to ``<state>/quarantine/``, never
    deleted. A state folder that does not own the collection's dynamic folders touches nothing."""
    from .ids import stable_id

    if not owns_dynamic_root(coll):
        return 0
    moved = 0
    target = quarantine_dir(coll) / f"released-{_stamp()}" if release else quarantine_dir(coll)
    for folder in _dynamic_folders(Path(coll.dynamic_root)):
        for entry in _scandir(folder):
            if not DYNAMIC_FILE_RE.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            rel = f"{folder.name}/{entry.name}"
            if stable_id(rel) not in catalog_ids:
                _move_pair(Path(entry.path), target / rel)
                moved += 1
        _rmdir_if_empty(folder)
    if moved and release:
        log.warning("%d web image(s) not in %s moved to %s (delete that folder to free the space)", moved,
                    release, target)
    elif moved:
        log.warning("%d web image(s) the catalog does not list moved to %s; `imrs index` takes them back",
                    moved, target)
    return moved


def quarantined(coll: RepairTarget) -> list[tuple[str, Path]]:
    """(relpath, file) of every web image waiting in the quarantine."""
    out = []
    for folder in _dynamic_folders(quarantine_dir(coll)):
        out += [(f"{folder.name}/{e.name}", Path(e.path)) for e in _scandir(folder)
                if DYNAMIC_FILE_RE.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
    return sorted(out)


def unquarantine(coll: RepairTarget, known: set[int]) -> list[str]:
    """Put quarantined web images back in their folders (``imrs index``). One whose name is back
    already and recorded (the expansion was re-run) is a second copy and goes. Returns relpaths."""
    from .ids import stable_id

    back = []
    for rel, path in quarantined(coll):
        dest = Path(coll.dynamic_root) / rel
        if dest.exists():
            if stable_id(rel) in known:
                path.unlink(missing_ok=True)
                sidecar_of(path).unlink(missing_ok=True)
            continue
        _move_pair(path, dest)
        back.append(rel)
    for folder in _dynamic_folders(quarantine_dir(coll)):
        _rmdir_if_empty(folder)
    return back


def unrecorded_dynamic(coll: RepairTarget, known: set[int]) -> list[str]:
    """Relpaths of web images (IMRS-named files in ``dynamic_*``) the catalog does not list."""
    from .ids import stable_id

    out = []
    for folder in _dynamic_folders(Path(coll.dynamic_root)):
        out += [f"{folder.name}/{e.name}" for e in _scandir(folder)
                if DYNAMIC_FILE_RE.fullmatch(e.name) and e.is_file(follow_symlinks=False)
                and stable_id(f"{folder.name}/{e.name}") not in known]
    return sorted(out)


def _marked_owner(root: Path) -> Path | None:
    try:
        return Path(str(read_json(root / OWNER_FILE)["state_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def other_owner(root: Path, state_dir: Path) -> Path | None:
    """The living state folder other than ``state_dir`` that owns ``root``'s web images, if any
    (read only: opening a collection writes nothing into the user's folder)."""
    owner = _marked_owner(root)
    if owner is not None and owner != state_dir and (owner / "catalog.sqlite").exists():
        return owner
    return None


def claim_owner(root: Path, state_dir: Path) -> Path | None:
    """Make ``state_dir`` the owner of ``root``'s dynamic folders (before it first writes web images
    there) unless another living state folder is. Returns that other owner, or None."""
    owner = _marked_owner(root)
    if owner is not None and owner != state_dir:
        if (owner / "catalog.sqlite").exists():
            return owner
        log.info("the state folder %s that owned %s is gone: %s takes its web images over", owner, root, state_dir)
    if owner != state_dir:
        try:
            atomic_write_json(root / OWNER_FILE, {"state_dir": str(state_dir),
                                                  "claimed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        except OSError as exc:  # a folder we cannot write: dynamic images live in the state folder anyway
            log.debug("cannot claim %s: %s", root, exc)
    return None


def owns_dynamic_root(coll: RepairTarget) -> bool:
    """Whether this state folder may move files in its dynamic root: its own (in the state folder),
    or the collection folder it owns."""
    root = Path(coll.dynamic_root)
    if root != coll.root:
        return True
    return _marked_owner(root) == coll.state_dir  # unclaimed: web images there are nobody's we know


# ---------------------------------------------------------------------------------------------
# Damaged stores: caches and the catalog
# ---------------------------------------------------------------------------------------------


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:4]}"


def cache_problem(path: Path, backbone: str, verify: bool) -> str | None:
    """None when the cache reads whole, else one line naming the file and what is wrong."""
    try:
        if path.is_dir():
            store = ShardStore(path)
            problems = store.verify() if verify else []
            if problems:
                return problems[0]
            store.load_ids()
        else:
            load_ids(path, backbone=backbone)
            if verify:
                EmbeddingSet.load(path, backbone=backbone)  # zip CRCs of every member
    except StoreError as exc:
        return str(exc)
    return None


def quarantine_damaged_caches(coll: RepairTarget, verify: bool = True) -> list[Path]:
    """Move every damaged cache of this backbone to the quarantine, naming it and what is lost
    until ``imrs index`` re-embeds its images. Returns the caches' former paths."""
    out = []
    for path in cache_files(coll):
        problem = cache_problem(path, coll.backbone, verify)
        if problem is None:
            continue
        dest = quarantine_dir(coll) / f"{path.name}.damaged-{_stamp()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        log.warning("damaged cache %s (%s) moved to %s: its images keep their index vectors and "
                    "`imrs index` re-embeds them from the images", path.name, problem, dest)
        out.append(path)
    return out


def catalog_lost(coll: RepairTarget) -> bool:
    """A catalog never written (deleted, emptied to 0 bytes, or replaced after damage) while caches
    or web images say the collection had images: rebuild it rather than cut the caches to it."""
    cat = coll.repair_port.catalog
    if cat.generation() or len(cat):
        return False
    return bool(cache_files(coll)) or bool(unrecorded_dynamic(coll, set()))


def rebuild_catalog(coll: RepairTarget, salvaged: dict[int, ImageRecord] | None = None) -> int:
    """Catalog rows for every cached image whose file is still there: base images from the folder
    (label from the path, mtime/size from the file, so ``imrs index`` keeps the cached vector),
    web images from their sidecars; rows ``salvaged`` from a damaged catalog win. Images with a
    file but no vector are found by ``imrs index`` (base) or its adoption of web images."""
    from .ids import stable_id

    salvaged = salvaged or {}
    records: dict[int, ImageRecord] = {}
    for path in cache_files(coll):
        try:
            rels = EmbeddingSet.load(path, backbone=coll.backbone).relpaths
        except StoreError:
            continue
        for rel in (str(r) for r in rels):
            i = stable_id(rel)
            if i in records:
                continue
            dynamic = is_dynamic_relpath(rel)
            file = coll.abspath(rel, "dynamic" if dynamic else "base")
            if not file.is_file():
                continue
            if i in salvaged:
                records[i] = salvaged[i]
            elif dynamic:
                records[i] = dynamic_record(coll, rel, file)
            else:
                st = file.stat()
                records[i] = ImageRecord.for_path(rel, source="base", label=label_for(rel), mtime=st.st_mtime,
                                                  size=st.st_size)
    for i, rec in salvaged.items():  # rows whose vectors no cache has: still the user's images
        if i not in records and coll.abspath(rec.relpath, rec.source).is_file():
            records[i] = rec
    coll.repair_port.catalog.upsert(records.values())
    if records:
        log.warning("catalog %s rebuilt: %d image(s) from the caches, the folder and the web images' sidecars",
                    coll.repair_port.catalog.path, len(records))
    return len(records)


def salvage_catalog(path: Path) -> dict[int, ImageRecord]:
    """Rows still readable in a damaged catalog (read until SQLite gives up): they keep imported
    metadata and provenance that no other store has."""
    import sqlite3

    from .catalog import _record

    out: dict[int, ImageRecord] = {}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return out
    con.row_factory = sqlite3.Row
    try:
        for row in con.execute("SELECT * FROM images"):
            with contextlib.suppress(Exception):
                rec = _record(row)
                out[rec.id] = rec
        for row in con.execute("SELECT id, key, value FROM extra"):
            if row["id"] in out:
                out[row["id"]].extra[row["key"]] = row["value"]
    except sqlite3.Error as exc:
        log.info("salvaged %d row(s) of the damaged catalog before: %s", len(out), exc)
    finally:
        con.close()
    return out


def replace_damaged_catalog(coll: RepairTarget, reason: str) -> int:
    """Move a damaged catalog (and its WAL) to the quarantine, salvage what reads, and rebuild a new
    one from it, the caches, the folder and the sidecars. Needs the writer lock (the caller's)."""
    port = coll.repair_port
    path = port.catalog.path if port.catalog_open else coll.state_dir / "catalog.sqlite"
    with contextlib.suppress(Exception):
        port.catalog.close()
    dest = quarantine_dir(coll) / f"catalog.sqlite.damaged-{_stamp()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{dest}{suffix}"))
    salvaged = salvage_catalog(dest)
    port.replace_catalog(Catalog(path))
    n = rebuild_catalog(coll, salvaged)
    lost = len(salvaged)
    log.warning("catalog %s was damaged (%s): moved to %s; rebuilt with %d image(s) (%d row(s) salvaged). "
                "Images without a cached vector come back with `imrs index`; metadata only the catalog held "
                "is back from a snapshot (`imrs snapshot load NAME`)", path, reason, dest, n, lost)
    return n


def _dir_stats(path: Path) -> list[list[Any]]:
    out = []
    for e in _scandir(path):
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
    for entry in _scandir(folder):
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False)):
            continue
        if unlocked_min_age is not None and not entry.name.startswith(_LOCKED_TEMP):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime < unlocked_min_age:
                    continue
        Path(entry.path).unlink(missing_ok=True)
        removed += 1
    return removed
