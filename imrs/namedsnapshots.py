"""Named snapshots of a collection: save one, restore one, list them.

One job: the user's ``imrs snapshot save/load NAME``. The file format and atomic pointer are
``imrs.snapshot``'s; what this adds is the transaction around a restore. The caches stay the truth
for vectors, so a restore copies the snapshot's vectors of images the caches lack into them first,
then restores the catalog, then cuts caches and index to it (``reconcile.align``). The caller
(``Collection``) holds the writer lock (``writing``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import reconcile
from . import snapshot as snap
from .catalog import Catalog
from .errors import SnapshotError
from .faults import fault_point
from .store import EmbeddingSet

if TYPE_CHECKING:
    from .indexes import VectorIndex
    from .syncpipe import SyncTarget

log = logging.getLogger(__name__)


def save(coll: SyncTarget, name: str) -> snap.Manifest:
    """Save index and catalog as snapshot ``name`` (under the writer lock)."""
    snap.check_user_name(name)
    with coll.live.lock:
        coll.begin_changes()  # a killed save leaves a version folder for the repair to collect
        return snap.save_snapshot(coll.snap_dir, name, coll.index, coll.backbone, catalog=coll.repair_port.catalog,
                                  collection_root=str(coll.root),
                                  extra={"runtime": coll.repair_port.runtime_label()})


def load(coll: SyncTarget, name: str) -> snap.Manifest:
    """Restore index and catalog from snapshot ``name`` (refused if made with another backbone);
    images added since the snapshot leave the collection (their downloaded files move to
    ``<state>/quarantine/released-*``; a later ``imrs index`` re-finds base files, not those)."""
    port = coll.repair_port
    try:
        index, manifest, cat_path = snap.load_snapshot(coll.snap_dir, name, expect_backbone=coll.backbone,
                                                       expect_dim=coll.dim,
                                                       remote=coll.live.milvus_remote(name, "full"))
    except SnapshotError as exc:
        index, manifest, cat_path = _restore_milvus(coll, name, exc)
    _same_runtime(port.runtime_label(), manifest, name)
    coll.begin_changes()
    coll.live.attach(index)
    if cat_path is not None:
        saved = Catalog(cat_path)
        try:
            _backfill_caches(coll, index, saved.relpaths_by_id())
            fault_point("snapshot.load.after_cache")
            saved.backup_to(port.catalog.path)
        finally:
            saved.close()
        path = port.catalog.path
        port.catalog.close()
        port.replace_catalog(Catalog(path))
        port.catalog.new_generation()
        fault_point("snapshot.load.after_catalog")
    with coll.live.lock:
        coll.live.replace(index)
        coll.live.indexer = manifest.indexer
    reconcile.align(coll, release=f"snapshot {name!r}")
    coll.persist_index()
    fault_point("snapshot.load.after_index")
    return manifest


def list_named(snap_dir: Path) -> list[snap.Manifest]:
    """The user's snapshots (the live ones left out)."""
    return [m for m in snap.list_snapshots(snap_dir) if not m.name.startswith("live-")]


def _same_runtime(cached: str, manifest: snap.Manifest, name: str) -> None:
    held = manifest.extra.get("runtime", "fp32")
    if held != cached:  # the next sync would mix the two runtimes
        raise SnapshotError(f"snapshot {name!r} holds {held} vectors but the collection's caches are "
                            f"{cached}: re-index with that runtime first")


def _backfill_caches(coll: SyncTarget, index: VectorIndex, wanted: dict[int, str]) -> None:
    """Copy into the caches the vectors ``index`` holds for images of ``wanted`` (id -> relpath)
    that no cache of this backbone has (e.g. pruned since a snapshot was saved)."""
    have = set(coll.store.cached_ids().tolist())
    held = set(index.ids().tolist())
    need = [i for i in wanted if i in held and i not in have]
    if need:
        coll.store.save_rows(EmbeddingSet(coll.backbone, need, [wanted[i] for i in need],
                                          index.get_vectors(np.asarray(need, dtype=np.int64))))


def _restore_milvus(coll: SyncTarget, name: str, exc: SnapshotError
                    ) -> tuple[VectorIndex, snap.Manifest, Path | None]:
    """A Milvus snapshot whose collection changed since: put its rows back from the NPZ caches
    when they still hold every one of them with the same vectors (the checksum says so), else
    refuse in one line; nothing is changed before the rows are known to be complete."""
    from .indexes.milvus_index import ContentMismatch, checksum_as_stored

    if not isinstance(exc, ContentMismatch):
        raise exc
    manifest = snap.read_manifest(coll.snap_dir, name)
    want = snap.snapshot_ids(coll.snap_dir, name)
    recorded = (manifest.extra.get("vectors_at") or {}).get("checksum")
    emb = coll.store.load_all()
    have = emb.select(np.isin(emb.ids, want)) if want is not None else emb.select(np.zeros(len(emb), bool))
    if want is None or recorded is None or len(have) != len(want) \
            or f"{checksum_as_stored(have.ids, have.vectors):016x}" != recorded:
        lost = len(want) - len(have) if want is not None else manifest.count
        what = f"{lost} of its {manifest.count} vectors (pruned since)" if lost else \
            "its vectors as they were (re-embedded since)"
        raise SnapshotError(f"snapshot {name!r} cannot be restored: {exc}, and the caches no longer hold "
                            f"{what}") from exc
    _same_runtime(coll.repair_port.runtime_label(), manifest, name)
    log.warning("snapshot %s: %s; restoring its %d vectors from the caches", name, exc, len(have))
    coll.begin_changes()
    index = coll.live.build(have)
    cat = snap.pointed_version(coll.snap_dir, name)
    cat_path = coll.snap_dir / cat / "catalog.sqlite" if cat else None
    return index, manifest, (cat_path if cat_path is not None and cat_path.exists() else None)
