"""Damaged stores: a cache or the catalog that no longer reads, found, moved aside and rebuilt.

One job: what happens when a store's bytes are wrong (a disk error, a copy cut short) rather than
out of step. A damaged cache is moved to the quarantine and named; its images keep their index
vectors until ``imrs index`` re-embeds them. A damaged or lost catalog is rebuilt from the caches,
the folder and the web images' sidecars, keeping every row still readable in the old one.
``imrs.reconcile`` runs this before it compares the stores.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .catalog import Catalog, ImageRecord, label_for
from .errors import StoreError
from .layout import is_dynamic_relpath
from .shards import ShardStore
from .store import EmbeddingSet, load_ids
from .webfiles import dynamic_record, quarantine_dir, stamp, unrecorded_dynamic

if TYPE_CHECKING:
    from .repairport import RepairTarget

log = logging.getLogger(__name__)


def cache_files(coll: RepairTarget) -> list[Path]:
    """This backbone's caches, most trusted first (base, then dynamic terms): the vector truth."""
    return [p for p in [coll.base_npz(), *coll.dynamic_npzs()] if p.exists()]


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
        dest = quarantine_dir(coll) / f"{path.name}.damaged-{stamp()}"
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
    dest = quarantine_dir(coll) / f"catalog.sqlite.damaged-{stamp()}"
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
