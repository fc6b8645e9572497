"""Folder sync in stages: walk -> plan -> read/decode -> embed -> commit.

One job: bring a collection's catalog, caches and index in line with its folder, embedding only
new or changed files and dropping vanished ones (re-running on an unchanged folder embeds nothing).
The stages are the reader -> mapper -> writer shape clip-retrieval made familiar:

- **walk** (``walk``): the hostile-folder-proof walk of ``imrs.walk``; what it leaves out is reported;
- **plan** (``plan``): which files are new, changed or missing a vector, against the catalog's
  file stats and the base cache;
- **read/decode + embed** (``embed``): the encoder's streamed pipeline (or a Ray engine) reads,
  decodes and embeds in batches, reporting ``progress("embed", done, total)`` (``imrs.progress``);
  files that do not decode are reported, never fatal;
- **commit** (``commit``): removals leave the catalog first, additions enter the cache first, then
  the catalog, then the index (the commit order of ``imrs.reconcile``), each step a fault point.

Around it: damaged stores are checked first (``verify_stores``) and web images the catalog lacks are
taken back after (``adopt_dynamic``). The caller (``Collection.sync``) holds the writer lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from . import reconcile
from .catalog import ImageRecord
from .damaged import quarantine_damaged_caches, replace_damaged_catalog
from .errors import EmptyCollectionError, StoreError
from .faults import fault_point
from .ids import stable_id
from .layout import SyncReport, is_dynamic_folder
from .progress import ProgressArg, relabel
from .repairport import RepairTarget
from .store import EmbeddingSet, read_runtime
from .webfiles import dynamic_record, quarantine_dir, unquarantine, unrecorded_dynamic

if TYPE_CHECKING:
    from .catalog import Catalog
    from .config import Settings
    from .encoders import Encoder
    from .encoderslot import EncoderSlot
    from .engines import Embedder
    from .indexes import VectorIndex
    from .liveindex import LiveIndex
    from .vectorstore import VectorStore

log = logging.getLogger(__name__)

FileStat = tuple[str, float, int]  # (relpath, mtime, size)


class SyncTarget(RepairTarget, Protocol):
    """A collection as its sync sees it (under the writer lock): its stores and its encoder."""

    store: VectorStore
    live: LiveIndex
    encoders: EncoderSlot
    settings: Settings

    @property
    def catalog(self) -> Catalog: ...

    @property
    def index(self) -> VectorIndex: ...

    def begin_changes(self) -> None: ...

    def persist_index(self) -> None: ...


@dataclass
class Embedded:
    """What the embed stage made: cache rows, their catalog rows, and the files that failed."""

    rows: EmbeddingSet
    records: list[ImageRecord] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def run(coll: SyncTarget, progress: ProgressArg = False, batch_size: int | None = None,
        engine: Embedder | None = None) -> SyncReport:
    """All stages, in order (see the module docstring); ``engine`` embeds the paths instead of the
    collection's encoder (``imrs.engines.ray_engine.RayEngine``: anything with ``embed_paths``)."""
    report = SyncReport()
    verify_stores(coll, report)
    files = walk(coll.root, report, empty=not len(coll.catalog), follow_links=coll.settings.follow_links)
    known = coll.catalog.file_stats()
    base = coll.store.load_base()
    todo = plan(files, known, base, report)
    encoder: Encoder | Embedder | None = None
    tag = base.runtime
    restamp = False
    if todo or coll.encoders.may_change_runtime(base.runtime, len(base)):
        # another engine (a Ray cluster) embeds with its own model: its tag is the truth
        encoder = engine or coll.encoders.for_sync([coll.root / rel for rel, _, _ in files])
        tag = getattr(encoder, "runtime_tag", "fp32")
        if len(base) and base.runtime != tag:
            log.warning("re-embedding %d images: the cache holds %s vectors, the encoder writes %s",
                        len(base), base.runtime, tag)
            report.restamped = base.runtime
            base = EmbeddingSet.empty(coll.backbone, coll.dim, runtime=tag)
            todo = plan(files, known, base, report)
        restamp = restamp_dynamic(coll, encoder)
        gate = getattr(encoder, "int8_gate", None)
        report.runtime_note = gate.summary() if gate is not None else getattr(encoder, "int8_note", "")
    report.runtime = tag
    on_disk = {rel for rel, _, _ in files}
    gone = [rel for rel in known if rel not in on_disk]
    report.removed = len(gone)
    gone_ids = [known[rel][0] for rel in gone]
    made = Embedded(EmbeddingSet.empty(coll.backbone, coll.dim, runtime=tag))
    if todo:
        assert encoder is not None
        made = embed(encoder, coll.root, todo, tag, coll.backbone, batch_size, progress)
        report.failed = made.failed
        report.embedded = len(made.rows)
    commit(coll, report, gone_ids, [stable_id(rel) for rel, _, _ in todo], made, restamp)
    adopt_dynamic(coll, report, lambda: encoder or engine or coll.encoders.for_sync(
        [coll.root / rel for rel, _, _ in files]), batch_size)
    return report


# -- stage 1: walk ------------------------------------------------------------------------------------
def walk(root: Path, report: SyncReport, empty: bool, follow_links: str | None = None) -> list[FileStat]:
    """Every image under ``root`` but the web-image folders; what the walk leaves out goes into
    ``report.skipped``. ``empty`` (the catalog lists nothing): no image at all is an error.
    ``follow_links``: which links are followed (the collection's ``settings.follow_links``)."""
    from .walk import walk_images

    walked = walk_images(root, follow_links=follow_links, skip_top=is_dynamic_folder)
    files = [(f.relpath, f.mtime, f.size) for f in walked.files]
    report.skipped = [(s.relpath, s.reason) for s in walked.skipped]
    report.scanned = len(files)
    if not files and empty:
        left_out = (f"; {len(walked.skipped)} entries left out, e.g. {walked.skipped[0].display}: "
                    f"{walked.skipped[0].reason}" if walked.skipped else "")
        raise EmptyCollectionError(f"no images found in {root} "
                                   f"(looked for .jpg, .png, .webp, ... in all subfolders){left_out}")
    return files


# -- stage 2: plan ------------------------------------------------------------------------------------
def plan(files: Sequence[FileStat], known: dict[str, tuple[int, float | None, int | None]],
         base: EmbeddingSet, report: SyncReport) -> list[FileStat]:
    """Files to embed: new, changed, or missing from ``base``; counts go into ``report``."""
    report.added = report.changed = report.unchanged = 0
    cached = set(base.ids.tolist())
    todo: list[FileStat] = []
    for rel, mtime, size in files:
        prev = known.get(rel)
        if prev is None or stable_id(rel) not in cached:
            todo.append((rel, mtime, size))
            report.added += prev is None
            report.changed += prev is not None
        elif prev[1] != mtime or prev[2] != size:
            todo.append((rel, mtime, size))
            report.changed += 1
        else:
            report.unchanged += 1
    return todo


# -- stages 3 and 4: read/decode and embed -------------------------------------------------------------
def embed(encoder: Encoder | Embedder, root: Path, todo: Sequence[FileStat], tag: str, backbone: str,
          batch_size: int | None, progress: ProgressArg) -> Embedded:
    """Read, decode and embed ``todo`` (one streamed pass of the encoder's pipeline), and the
    catalog rows of the files that embedded (with width, height and pHash)."""
    # a caller's callback hears ("embed", done, total); True keeps the encoder's own labelled bar
    res = encoder.embed_paths([root / rel for rel, _, _ in todo], batch_size=batch_size,
                              progress=relabel(progress, "embed") if callable(progress) else bool(progress))
    kept = [todo[i] for i in res.kept.tolist()]
    rows = EmbeddingSet(backbone, [stable_id(r) for r, _, _ in kept], [r for r, _, _ in kept], res.vectors,
                        runtime=tag)
    records = [ImageRecord.for_path(rel, source="base", mtime=mtime, size=size) for rel, mtime, size in kept]
    fill_image_facts(records, root)
    return Embedded(rows, records, [(todo[i][0], strip_name(reason, root / todo[i][0])) for i, reason in res.failures])


# -- stage 5: commit ----------------------------------------------------------------------------------
def commit(coll: SyncTarget, report: SyncReport, gone_ids: list[int], stale_ids: list[int], made: Embedded,
           restamp: bool) -> None:
    """Removals leave the catalog first, additions enter the cache first: whatever step a crash
    interrupts, a cache row without a catalog row is safe to drop on repair."""
    drop = set(gone_ids) | set(stale_ids)
    new = made.rows
    if drop or len(new) or restamp:
        coll.begin_changes()
        coll.catalog.delete(gone_ids, allow_base=True)  # files already gone; never touches files
        fault_point("sync.after_catalog_delete")
        if report.restamped:  # every vector changed space: the store starts over
            new.save(coll.store.base_path())
        else:
            coll.store.write(coll.store.base_path(), add=new, remove=drop)
        fault_point("sync.after_cache")
        coll.catalog.upsert(made.records)
        fault_point("sync.after_catalog")
        with coll.live.lock:
            if report.restamped or restamp:  # every vector changed space: rebuild, never mix
                coll.live.rebuild(coll.store.load_all())
            else:
                index = coll.index
                if drop:
                    index.remove(np.fromiter(drop, dtype=np.int64))
                if len(new):
                    index.add(new.ids, new.vectors)
        coll.persist_index()
        fault_point("sync.after_index")
    elif not coll.live.saved() or coll.live.rebuilt_on_open():
        coll.begin_changes()
        coll.persist_index()


# -- around the stages: damaged stores, runtime changes, the user's web images -----------------------------
def verify_stores(coll: SyncTarget, report: SyncReport) -> None:
    """``imrs index`` checks every store whole (SQLite quick_check, cache checksums: O(n), as the
    folder walk is): a damaged catalog is rebuilt, a damaged cache quarantined (its images are
    re-embedded by the sync), each named in one line."""
    problem = coll.catalog.integrity_problem()
    damaged = quarantine_damaged_caches(coll, verify=True)
    if problem is None and not damaged:
        return
    coll.begin_changes()
    if problem is not None:
        n = replace_damaged_catalog(coll, problem)
        report.recovered.append(f"catalog damaged ({problem}): rebuilt with {n} image(s)")
    report.recovered += [f"cache {p.name} damaged: moved to {quarantine_dir(coll)}, re-embedding"
                         for p in damaged]
    reconcile.align(coll)


def restamp_dynamic(coll: SyncTarget, encoder: Encoder | Embedder) -> bool:
    """Re-embed dynamic caches written by another runtime than ``encoder``'s (their images are
    on disk). Returns whether any was rewritten."""
    tag = getattr(encoder, "runtime_tag", "fp32")
    changed = False
    for npz in coll.store.dynamic_paths():
        if read_runtime(npz) == tag:
            continue
        try:
            emb = EmbeddingSet.load(npz, coll.backbone)
        except StoreError as exc:
            log.warning("skipping %s", exc)
            continue
        if emb.runtime == tag:
            continue
        coll.begin_changes()  # caches change from here: a crash is repaired on the next open
        res = encoder.embed_paths([coll.abspath(str(r), "dynamic") for r in emb.relpaths])
        emb = EmbeddingSet(coll.backbone, emb.ids[res.kept], emb.relpaths[res.kept], res.vectors, runtime=tag)
        emb.save(npz)
        changed = True
    return changed


def adopt_dynamic(coll: SyncTarget, report: SyncReport, encoder: Callable[[], Any], batch_size: int | None) -> None:
    """Web images the catalog lacks (back from the quarantine, or found in ``dynamic_*`` after a lost
    catalog) get their rows from their sidecars; catalogued web images no cache of this backbone
    holds (a damaged cache) are re-embedded from their files. Cache, then catalog, then index."""
    known = coll.catalog.ids_set()
    unquarantine(coll, known)
    rels = unrecorded_dynamic(coll, known)
    cached = set(coll.store.cached_ids().tolist())
    records = [dynamic_record(coll, rel, coll.abspath(rel, "dynamic")) for rel in rels]
    unvectored = [r for r in coll.catalog.iter_records(source="dynamic") if r.id not in cached]
    records += [r for r in unvectored if coll.abspath(r.relpath, "dynamic").is_file()]
    lost = [r for r in unvectored if not coll.abspath(r.relpath, "dynamic").is_file()]
    if lost:  # neither a vector nor a file: nothing here can rebuild them
        line = (f"{len(lost)} web image(s) (e.g. {lost[0].relpath}, from {lost[0].source_url or '?'}) have "
                f"neither a {coll.backbone} vector nor a file: restore them with `imrs snapshot load NAME` "
                "or forget them with `imrs prune`")
        log.warning("%s", line)
        report.recovered.append(line)
    if not records:
        return
    enc = encoder()
    res = enc.embed_paths([coll.abspath(r.relpath, "dynamic") for r in records], batch_size=batch_size)
    kept = [records[i] for i in res.kept.tolist()]
    report.failed += [(records[i].relpath, reason) for i, reason in res.failures]
    if not kept:
        return
    emb = EmbeddingSet(coll.backbone, [r.id for r in kept], [r.relpath for r in kept], res.vectors,
                       runtime=getattr(enc, "runtime_tag", "fp32"))
    coll.begin_changes()
    coll.store.save_rows(emb)
    coll.catalog.upsert([r for r in kept if r.id not in known])
    with coll.live.lock:
        index = coll.index
        index.remove(emb.ids)
        index.add(emb.ids, emb.vectors)
    coll.persist_index()
    report.adopted = sum(r.id not in known for r in kept)
    report.embedded += len(kept)


def strip_name(reason: str, path: Path) -> str:
    """"cannot read /abs/path: why" -> "why": the report already names the file."""
    from .ids import display_path

    return reason.removeprefix(f"cannot read {display_path(path)}: ")


def fill_image_facts(records: list[ImageRecord], root: Path) -> None:
    """Width, height and pHash for new base images. A header read plus a JPEG draft decode at 1/8
    scale is a few ms per image, far below embedding cost, and pHash of base images is what lets
    web expansion drop near-duplicates of what the user already has."""
    from .dedupe import phash_file

    for r in records:
        try:
            r.phash, (r.width, r.height) = phash_file(root / r.relpath, with_size=True)
        except Exception as exc:  # noqa: BLE001 - facts are optional; the embedding already succeeded
            log.debug("no image facts for %s: %s", r.relpath, exc)
