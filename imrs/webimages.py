"""Adding and removing a collection's web ("dynamic") images, in the commit order.

One job: the two writes growth and pruning make. An add writes the term's cache, then the catalog,
then the index; a removal the catalog, then the caches, then the files, then the index (the order
``imrs.reconcile`` repairs from, each step a fault point the kill tests stop at). A user's own
images are never removed here. The caller (``Collection``) holds the writer lock (``writing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import IMRSError, StoreError
from .faults import fault_point
from .layout import DYNAMIC_PREFIX, RemoveReport, is_dynamic_relpath, safe_dynamic_file
from .store import EmbeddingSet
from .webfiles import claim_owner, sidecar_of

if TYPE_CHECKING:
    from .catalog import ImageRecord
    from .syncpipe import SyncTarget


def checked_rows(coll: SyncTarget, records: Sequence[ImageRecord], vectors: np.ndarray) -> EmbeddingSet:
    """The cache rows of ``records``, after every check that must pass before any write: shape,
    finite vectors, web-image paths, and one runtime with the caches."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != (len(records), coll.dim):
        raise StoreError(f"expected {len(records)}x{coll.dim} vectors, got {vectors.shape}")
    if not np.isfinite(vectors).all():  # checked before any write: the caches must stay indexable
        raise StoreError("refusing to add NaN or infinite vectors")
    for r in records:
        if r.source != "dynamic" or not is_dynamic_relpath(r.relpath):
            raise IMRSError(f"{r.relpath}: dynamic images must live under {DYNAMIC_PREFIX}<term>/")
    # The vectors come from the encoder in use (an expansion) or the caller; loading a model
    # only to read its runtime tag would cost seconds, so without one the caches' tag holds.
    cached = coll.store.cached_runtime()
    tag = getattr(coll.encoders.loaded, "runtime_tag", None) or cached or "fp32"
    if cached is not None and cached != tag:
        raise IMRSError(f"the collection holds {cached} vectors but the encoder writes {tag}: "
                        "run `imrs index` first so one runtime embeds everything")
    return EmbeddingSet(coll.backbone, [r.id for r in records], [r.relpath for r in records], vectors, runtime=tag)


def add(coll: SyncTarget, slug: str, records: Sequence[ImageRecord], new: EmbeddingSet) -> None:
    """Add already-embedded web images of term ``slug`` whose files are in place (``checked_rows``
    made ``new``); nothing is re-embedded."""
    if coll.dynamic_root == coll.root:  # web images recorded in the user's folder: claim it
        other = claim_owner(coll.root, coll.state_dir)
        if other is not None:
            raise IMRSError(f"{coll.root} belongs to the state folder {other}: grow it from there")
    coll.begin_changes()
    coll.store.write(coll.store.dynamic_path(slug), add=new)
    fault_point("expand.after_cache")
    coll.catalog.upsert(records)
    fault_point("expand.after_catalog")
    with coll.live.lock:
        coll.index.add(new.ids, new.vectors)
    coll.persist_index()
    fault_point("expand.after_index")


def remove(coll: SyncTarget, ids: Sequence[int]) -> RemoveReport:
    """Remove web images ``ids`` everywhere; refuses the whole request if any is a base image."""
    report = RemoveReport()
    recs = coll.catalog.get_many(list(ids))
    base = [r.relpath for r in recs.values() if r.source != "dynamic" or not is_dynamic_relpath(r.relpath)]
    if base:
        raise IMRSError(f"refusing to remove base image(s): {', '.join(base[:3])}"
                        f"{' ...' if len(base) > 3 else ''}; only dynamic images can be removed")
    report.missing = len(ids) - len(recs)
    if not recs:
        return report
    gone = list(recs.keys())
    coll.begin_changes()
    coll.catalog.delete(gone)
    fault_point("prune.after_catalog")
    coll.store.remove_everywhere(gone)
    fault_point("prune.after_cache")
    for r in recs.values():
        path = safe_dynamic_file(coll.dynamic_root, r.relpath)
        if path is not None and path.exists():
            path.unlink()
            sidecar_of(path).unlink(missing_ok=True)
            report.files_deleted += 1
            if report.files_deleted == 1:
                fault_point("prune.mid_files")
    with coll.live.lock:
        coll.index.remove(np.asarray(gone, dtype=np.int64))
    coll.persist_index()
    fault_point("prune.after_index")
    report.removed = len(recs)
    return report
