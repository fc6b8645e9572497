"""Named fault points: where a crash test may kill the process in the middle of a multi-step write.

Databases are tested by killing them between every pair of steps of a commit; IMRS's writes span
three stores that cannot share one transaction (SQLite catalog, NPZ caches, live index snapshot),
so the same test is the only way to know that ``imrs.reconcile`` repairs every window. Each step
boundary calls ``fault_point("<op>.<where>")``; with ``IMRS_FAULT=<name>`` in the environment the
process SIGKILLs itself there (no ``finally`` blocks, no flushed buffers: a real crash). Without
it the call is one string comparison.

Every point is listed in ``POINTS`` so ``tests/test_crash_consistency.py`` can iterate over all of
them and fail when a new point has no trial.
"""

from __future__ import annotations

import os
import signal
import sys

from .config import fault_point_name

#: name -> what has happened when the process dies there (and therefore what recovery must undo/finish).
POINTS: dict[str, str] = {
    # imrs index (Collection.sync)
    "sync.after_catalog_delete": "rows of vanished files left the catalog; cache and index still hold them",
    "sync.after_cache": "base NPZ rewritten (new + changed vectors in, vanished out); catalog lacks new rows",
    "sync.after_catalog": "catalog committed; live index snapshot still the old one (the issue's window)",
    "sync.after_index": "live index saved; the commit record still names the previous state",
    # imrs expand (grow.expand -> grow._commit -> Collection.add_dynamic)
    "expand.after_download": "images downloaded into a staging folder; nothing recorded yet",
    "expand.after_move": "files moved into dynamic_<slug>/; cache, catalog and index know nothing",
    "expand.after_cache": "term NPZ saved; catalog and index lack the new images",
    "expand.after_catalog": "catalog rows committed; live index lacks the vectors",
    "expand.after_index": "live index saved; commit record not yet written",
    # imrs prune (Collection.remove_dynamic)
    "prune.after_catalog": "catalog rows deleted; NPZ, files and index still hold the images",
    "prune.after_cache": "NPZ rows dropped; files and index still hold the images",
    "prune.mid_files": "one file deleted, the others not; index still holds the vectors",
    "prune.after_index": "live index saved without the images; commit record not yet written",
    # imrs merge (Collection.merge_caches)
    "merge.after_cache": "extra NPZ rows copied into the collection's caches; catalog lacks them",
    "merge.after_catalog": "catalog rows for the merged images committed; index lacks them",
    "merge.after_index": "live index saved; merged output and commit record not yet written",
    # imrs snapshot save / load
    "snapshot.save.after_files": "a complete new snapshot version folder exists; the pointer names the old one",
    "snapshot.save.after_pointer": "pointer switched to the new version; the old folder not yet deleted",
    "snapshot.load.after_cache": "snapshot vectors copied into the caches; catalog is still the current one",
    "snapshot.load.after_catalog": "catalog restored from the snapshot; caches and index still the current ones",
    "snapshot.load.after_index": "live index saved from the snapshot; commit record not yet written",
    # shard stores (imrs.shards): every cache change; compaction on imrs compact
    "store.after_delta": "a new delta file written; the store's manifest does not name it yet",
    "store.after_manifest": "compaction's manifest names the new delta; superseded deltas not yet deleted",
    # every multi-step write (Collection.writing(op))
    "commit.after_record": "commit record written; the intent record not yet removed",
}

_ARMED = fault_point_name()


def fault_point(name: str) -> None:
    """Die here if this point is armed. Unknown names are a programming error (a typo would make a
    crash trial silently test nothing), caught cheaply only when a point is armed."""
    if _ARMED is None:
        return
    if name not in POINTS:
        raise KeyError(f"fault point {name!r} is not registered in imrs.faults.POINTS")
    if name == _ARMED:
        sys.stderr.write(f"imrs: fault point {name} reached: killing the process\n")
        sys.stderr.flush()
        if hasattr(signal, "SIGKILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # pragma: no cover - platforms without SIGKILL
