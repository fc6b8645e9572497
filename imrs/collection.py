"""The facade: one object owns a collection's catalog, embeddings, encoder and live index.

The CLI, the page and the API talk only to ``Collection`` so there is one place where state
changes, one writer lock, and one definition of "incremental": files are embedded once, vectors
are added to or removed from the live index in place, and every change is persisted atomically
(NPZ + snapshot pointer + SQLite transaction). Multi-step writes follow the commit protocol of
``imrs.reconcile`` (intent record, store order, commit record), and the first use of the catalog or
index checks that the last writer finished, repairing under the writer lock when it did not.

The facade is thin: it holds the transaction (``writing``, ``begin_changes``, the consistency check)
and hands each job to its room:

- ``imrs.layout``: folder layout, hit and report types (a leaf: import it, not this, for those);
- ``imrs.vectorstore``: the embedding caches on disk (``store``);
- ``imrs.liveindex``: the live index, its snapshot and per-call search parameters (``live``);
- ``imrs.encoderslot``: the encoder and the runtime identity of the vectors (``encoders``);
- ``imrs.syncpipe``: folder sync, walk -> plan -> read/decode -> embed -> commit;
- ``imrs.namedsnapshots``: the user's named snapshots;
- ``imrs.webimages``: adding and removing web images;
- ``imrs.repairport``: what ``imrs.reconcile`` may touch beneath the check (``repair_port``);
- ``imrs.active``: the "active collection" pointer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from . import namedsnapshots, reconcile, syncpipe, webfiles, webimages
from . import snapshot as snap
from .catalog import Catalog, CatalogDamagedError, ImageRecord
from .config import Settings, state_dir_for
from .damaged import replace_damaged_catalog
from .encoderslot import EncoderSlot
from .errors import EmptyCollectionError, IMRSError, StoreError
from .faults import fault_point
from .filters import attributes_of
from .fsutil import atomic_write_json, read_json
from .layout import RemoveReport, SearchHit, SyncReport, is_dynamic_relpath
from .liveindex import LiveIndex
from .locking import WriterLock
from .progress import ProgressArg
from .repairport import RepairPort
from .store import EmbeddingSet
from .vectorstore import VectorStore, records_for

if TYPE_CHECKING:
    from PIL import Image

    from .encoders import Encoder
    from .engines import Embedder
    from .filters import Where
    from .indexes import VectorIndex

log = logging.getLogger(__name__)

T = TypeVar("T")


class Collection:
    """A folder of images, indexed with one backbone and one index kind."""

    def __init__(self, root: str | os.PathLike[str], backbone: str | None = None, indexer: str | None = None, *,
                 home: str | os.PathLike[str] | None = None, device: str | None = None,
                 weights: str = "pretrained", checkpoint: str | None = None,
                 index_params: dict[str, Any] | None = None, dynamic_root: str | None = None,
                 encoder: Encoder | None = None, runtime: str = "auto", settings: Settings | None = None):
        # read once, here: every room (encoder, weights, walk, Milvus) takes these, never the environment
        self.settings = settings if settings is not None else Settings.from_env()
        backbone = backbone or self.settings.backbone
        indexer = indexer or self.settings.indexer
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise IMRSError(f"collection folder not found: {root}")
        from .encoders import backbone_info
        from .indexes import INDEX_KINDS

        self.backbone_info = backbone_info(backbone)  # unknown backbone: clear error before any work
        if indexer not in INDEX_KINDS:
            from .errors import UnknownIndexError
            raise UnknownIndexError(f"unknown indexer {indexer!r}; choose one of {', '.join(INDEX_KINDS)}")
        self.backbone = backbone
        self.device = device
        self.weights = weights
        self.checkpoint = checkpoint
        self.runtime = runtime  # "auto" | "fp32" | "int8" | a float runtime name (see imrs.encoders)
        self.state_dir = state_dir_for(self.root, home if home is not None else self.settings.home)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.emb_dir = self.state_dir / "emb"
        self.snap_dir = self.state_dir / "snapshots"
        self.dynamic_root = Path(dynamic_root) if dynamic_root else self._default_dynamic_root()
        self.writer = WriterLock(self.state_dir / "write.lock")
        self._catalog: Catalog | None = None
        self.store = VectorStore(self.emb_dir, backbone, self.dim, lambda rel: self.abspath(rel).exists())
        self.live = LiveIndex(root=self.root, state_dir=self.state_dir, snap_dir=self.snap_dir, backbone=backbone,
                              dim=self.dim, indexer=indexer, index_params=index_params, writer=self.writer,
                              settings=self.settings,
                              attributes=lambda ids: attributes_of(self._catalog, ids),
                              vectors=self.all_embeddings, cached_runtime=self.cached_runtime,
                              catalog_size=lambda: len(self._catalog) if self._catalog is not None else 0)
        self.encoders = EncoderSlot(backbone=backbone, device=device, weights=weights, checkpoint=checkpoint,
                                    runtime=runtime, given=encoder, cached_runtime=self.cached_runtime,
                                    settings=self.settings,
                                    base_files=lambda: [self.root / r.relpath
                                                        for r in self.catalog.iter_records(source="base")])
        self.repair_port = RepairPort(get_catalog=lambda: self._catalog, set_catalog=self._set_catalog,
                                      store=self.store, live=self.live, runtime_label=self._runtime_label)
        try:
            self._catalog = Catalog(self.state_dir / "catalog.sqlite")
            self._catalog.set_kv("root", str(self.root))
        except CatalogDamagedError as exc:
            self._replace_catalog(exc)
        if dynamic_root is None and self.dynamic_root == self.root:
            with contextlib.suppress(IMRSError):  # web images of ours already there: say whose they are
                if self.repair_port.catalog.count("dynamic"):
                    webfiles.claim_owner(self.root, self.state_dir)
        self._checked = False  # crash-consistency check done (see ``_ensure_consistent``)
        self._caches: dict[str, Any] = {}  # per-collection derived state (see ``cache``)
        self._caches_lock = threading.Lock()
        _write_if_changed(self.state_dir / "collection.json", {"root": str(self.root)})

    # -- per-collection caches --------------------------------------------------------------------
    def cache(self, key: str, factory: Callable[[], T]) -> T:
        """Derived state that belongs to this collection (pHash index, prompt embeddings, the text
        search state, calibration): built once by ``factory`` and kept on the object, so two
        collections in one process (two app sessions on different folders, a test) never share it,
        and it goes away with the collection instead of living in a module global."""
        with self._caches_lock:
            if key not in self._caches:
                self._caches[key] = factory()
            return self._caches[key]  # type: ignore[no-any-return]

    def forget(self, key: str) -> None:
        with self._caches_lock:
            self._caches.pop(key, None)

    # -- paths and identity --------------------------------------------------------------------------
    def _default_dynamic_root(self) -> Path:
        """Dynamic images live beside the base ones (``<root>/dynamic_<slug>/``) when the folder is
        writable and this state folder owns them (``webfiles.claim_owner``); a read-only collection
        (a shared dataset), or one another state folder owns, keeps them in the state folder."""
        if os.access(self.root, os.W_OK):
            owner = webfiles.other_owner(self.root, self.state_dir)
            if owner is None:
                return self.root
            log.warning("%s belongs to the state folder %s: this one (%s) keeps its own web images and never "
                        "touches that one's", self.root, owner, self.state_dir)
        return self.state_dir / "dynamic"

    def _set_catalog(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def _replace_catalog(self, exc: CatalogDamagedError) -> None:
        """A catalog that does not open: quarantined and rebuilt under the writer lock (if another
        writer holds it, the one line of ``exc`` is the answer for now)."""
        try:
            with self.writer.hold(timeout=0):
                replace_damaged_catalog(self, str(exc.__cause__ or exc))
                self.repair_port.catalog.set_kv("root", str(self.root))
        except IMRSError as busy:
            if isinstance(busy, CatalogDamagedError):
                raise
            raise exc from None

    def abspath(self, relpath: str, source: str | None = None) -> Path:
        if source == "dynamic" or (source is None and is_dynamic_relpath(relpath)):
            return self.dynamic_root / relpath
        return self.root / relpath

    @property
    def indexer(self) -> str:
        return self.live.indexer

    @property
    def index_params(self) -> dict[str, Any]:
        return self.live.index_params

    @property
    def live_name(self) -> str:
        return self.live.name

    @property
    def dim(self) -> int:
        return int(self.backbone_info.dim)

    @property
    def encoder(self) -> Encoder:
        return self.encoders.get()

    def cached_runtime(self) -> str | None:
        """Runtime tag of the base cache; None before anything was embedded."""
        return self.store.cached_runtime()

    def _runtime_label(self) -> str:
        return self.cached_runtime() or "fp32"

    def warn_if_query_runtime_differs(self) -> None:
        """Say once when queries are embedded with another runtime than the cached vectors."""
        self.encoders.warn_if_query_runtime_differs()

    @property
    def catalog(self) -> Catalog:
        if not self._checked:
            self._ensure_consistent()
        return self.repair_port.catalog

    @property
    def index(self) -> VectorIndex:
        if not self._checked:
            self._ensure_consistent()
        return self.live.current()

    # -- the transaction: consistency check, writer lock, intent and commit records (imrs.reconcile) -----
    def _ensure_consistent(self) -> None:
        """Before the first catalog or index use: the cheap check, and a repair when a writer died.

        The repair needs the writer lock; when another writer holds it, its own write is in flight
        (not a crash) and ends consistent, so this reader goes on and the next write re-checks."""
        if self._checked:
            return
        try:
            if reconcile.check(self).clean:
                self._checked = True
                return
        except CatalogDamagedError:
            pass  # repaired under the lock below
        try:
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(self.writer.hold(timeout=0))
                except IMRSError as exc:
                    log.info("not repairing %s now (%s); the next write will", self.state_dir.name, exc)
                else:
                    self._check_locked()
        except OSError as exc:  # e.g. a read-only state folder: reading must still work
            log.warning("cannot repair %s (%s): reading it as it is", self.state_dir, exc)
        self._checked = True
        if self.live.loaded is not None:  # built by the repair, under the lock: say now if it is partial
            self.live.warn_if_partial(self.live.loaded)

    def _check_locked(self) -> None:
        """Under the writer lock (outermost hold): repair whatever a crash left behind."""
        try:
            reconcile.migrate(self)
            status = reconcile.check(self)
        except CatalogDamagedError as exc:
            replace_damaged_catalog(self, str(exc.__cause__ or exc))
            status = reconcile.check(self)
        self._checked = True  # the repair itself uses the catalog and index
        if not status.clean:
            try:
                reconcile.repair(self, status)
            except BaseException:
                self._checked = False
                raise

    def begin_changes(self) -> None:
        """Called right before a write's first change: writes the intent record once per op."""
        op = self.writer.scratch.get("op")
        if op is not None and not self.writer.scratch.get("begun"):
            reconcile.begin(self, op)
            self.writer.scratch["begun"] = True

    def persist_index(self) -> None:
        """Save the live index (inside ``writing``)."""
        self.repair_port.persist_index()

    def refresh_if_stale(self) -> bool:
        """Drop the in-memory index when another writer saved a newer live snapshot."""
        return self.live.refresh_if_stale()

    @contextlib.contextmanager
    def writing(self, op: str | None = None) -> Iterator[None]:
        """The writer lock, with the in-memory index brought up to date and any crash repaired
        first. Every mutation of the collection happens inside this.

        ``op`` names a multi-step write: its first change (``begin_changes``) writes the intent
        record and its normal end the commit record (``imrs.reconcile``); nested ``writing`` calls
        join the outermost op. An exception leaves the intent in place: the state on disk may be
        half-written, and the next use repairs it."""
        with self.writer.hold():
            scratch = self.writer.scratch
            if self.writer.depth == 1:
                scratch.clear()
                self.refresh_if_stale()
                self._check_locked()
            owner = op is not None and "op" not in scratch
            if owner:
                scratch["op"] = op
            try:
                yield
            except BaseException:
                if owner and scratch.get("begun"):
                    self.live.replace(None)  # may hold half of the change: reload from disk
                    self._checked = False
                raise
            else:
                if owner and scratch.get("begun"):
                    reconcile.commit(self)
            finally:
                if owner:
                    scratch.pop("op", None)
                    scratch.pop("begun", None)

    # -- the index ------------------------------------------------------------------------------------
    def rebuild_index(self, indexer: str | None = None, index_params: dict[str, Any] | None = None) -> None:
        """Build the index again from cached embeddings (new kind or parameters); embeds nothing."""
        with self.writing("rebuild"):
            self.begin_changes()
            if indexer:
                self.live.indexer = indexer
            if index_params is not None:
                self.live.index_params = dict(index_params)
            self.live.rebuild(self.all_embeddings())
            self.persist_index()

    def set_search_params(self, **params: Any) -> None:
        self.live.set_search_params(**params)

    def milvus_location(self) -> dict[str, str] | None:
        """Where this collection's Milvus vectors live now (remembered; None: never put there)."""
        return self.live.milvus_location()

    # -- embeddings on disk (imrs.vectorstore) --------------------------------------------------------
    def base_npz(self) -> Path:
        """The base cache (a shard store; a not yet migrated single NPZ file until the next write)."""
        return self.store.base_path()

    def dynamic_npz(self, slug: str) -> Path:
        return self.store.dynamic_path(slug)

    def dynamic_npzs(self) -> list[Path]:
        return self.store.dynamic_paths()

    def load_base_embeddings(self) -> EmbeddingSet:
        return self.store.load_base()

    def all_embeddings(self, extra_npz: Sequence[str | os.PathLike[str]] = ()) -> EmbeddingSet:
        """Base cache + dynamic caches (+ any extra files, e.g. benchmark caches), merged by the
        store's rules: ids deduped (first wins), rows whose image file is gone dropped."""
        return self.store.load_all(extra_npz)

    def compact(self) -> dict[str, int]:
        """Rewrite every store of this backbone as one delta of its live rows (``imrs compact``).
        Returns store name -> bytes written."""
        with self.writing("compact"):
            return self.store.compact(self.begin_changes)

    def merge_caches(self, extra_npz: Sequence[str | os.PathLike[str]] = ()) -> tuple[Path, int, int]:
        """Write ``emb_merged_<backbone>.npz`` from every cache, and take in what the extra NPZs have
        that the collection lacks (rows whose image file exists here): into the base or term cache
        first, then the catalog, then the live index (the commit order of ``imrs.reconcile``).

        Returns (merged file, rows in it, rows newly added to the collection)."""
        with self.writing("merge"):
            extras = [Path(p) for p in extra_npz]
            if not self.store.existing_paths() and not any(p.exists() for p in extras):
                raise StoreError(f"no {self.backbone} embedding caches to merge yet: index the collection first")
            new = self.store.new_rows_from(extras)
            if len(new):
                self.begin_changes()
                self.store.save_rows(new)
                fault_point("merge.after_cache")
                self.catalog.upsert(records_for(new.relpaths, self.catalog, self.root))
                fault_point("merge.after_catalog")
                with self.live.lock:
                    self.index.add(new.ids, new.vectors)
                self.persist_index()
                fault_point("merge.after_index")
            out, rows = self.store.write_merged(extras)
            return out, rows, len(new)

    # -- indexing a folder (imrs.syncpipe) --------------------------------------------------------------
    def sync(self, progress: ProgressArg = False, batch_size: int | None = None,
             engine: Embedder | None = None) -> SyncReport:
        """Bring catalog, cache and index in line with the folder: embed only new or changed files,
        drop vanished ones. Re-running on an unchanged folder embeds nothing. ``progress`` hears
        ``("embed", done, total)`` (``imrs.progress``; True: tqdm bars). ``engine`` embeds the
        paths (default: this process's encoder; ``imrs.engines.ray_engine.RayEngine`` for a Ray
        cluster): anything with the encoder's ``embed_paths`` signature."""
        t0 = time.perf_counter()
        with self.writing("sync"):
            report = syncpipe.run(self, progress, batch_size, engine)
        report.seconds = time.perf_counter() - t0
        log.info("sync %s: %s", self.root, report.summary())
        return report

    # -- web images (imrs.webimages) --------------------------------------------------------------------
    def add_dynamic(self, slug: str, records: Sequence[ImageRecord], vectors: np.ndarray) -> int:
        """Add already-embedded web images of term ``slug`` (files already in place): the term's
        cache, catalog rows, index vectors, in the commit order of ``imrs.reconcile``."""
        if not records:
            return 0
        new = webimages.checked_rows(self, records, vectors)
        with self.writing("expand"):
            webimages.add(self, slug, records, new)
        return len(records)

    def remove_dynamic(self, ids: Iterable[int]) -> RemoveReport:
        """Remove web images everywhere: catalog, cache, file, index. Refuses the whole request if
        any id is a base image: a user's own files are never deleted by IMRS."""
        id_list = sorted({int(i) for i in ids})
        if not id_list:
            return RemoveReport()
        with self.writing("prune"):
            return webimages.remove(self, id_list)

    # -- search -------------------------------------------------------------------------------------
    def search_vectors(self, queries: np.ndarray, k: int = 10, qe: int = 0,
                       qe_alpha: float = 3.0, where: str | Where | None = None,
                       params: dict[str, Any] | None = None) -> list[list[SearchHit]]:
        """k nearest images per query. ``qe`` > 0 turns on alpha query expansion: the query is
        re-issued as the alpha-weighted mean of itself and its top ``qe`` hits (measured by
        ``imrs bench``: +0.012 P@10 and +0.04 full mAP on Caltech-101 with qe=5, alpha=3).
        ``where`` (``source == 'dynamic'``, see ``imrs.filters``) keeps only matching images, and
        still returns k hits whenever k images match; a parsed ``Where`` may be passed instead, so a
        caller searching twice with one filter resolves it once. ``params`` (else those of
        ``imrs.liveindex.caller_search_params``) are search-time index tunables for this call only."""
        from .filters import Where

        cond = Where(where, self.catalog) if isinstance(where, str) and where else where or None
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        self.refresh_if_stale()  # a long-lived reader (the app) sees other writers' changes
        with self.live.lock:
            index = self.index
        # the index's own read/write lock lets searches run in parallel, never beside an add
        if len(index) == 0:
            raise EmptyCollectionError("the index is empty: index a folder first (imrs index FOLDER)")
        scores, ids = self.live.search(index, q, k, qe=qe, qe_alpha=qe_alpha, where=cond, params=params)
        return [self.hits_for([i for i in irow.tolist() if i != -1],
                              [s for s, i in zip(srow.tolist(), irow.tolist(), strict=True) if i != -1])
                for srow, irow in zip(scores, ids, strict=True)]

    def hits_for(self, ids: Sequence[int], scores: Sequence[float]) -> list[SearchHit]:
        """SearchHits for image ids (catalog rows attached), in the given order; ids the catalog no
        longer knows (removed by a writer since this index was loaded) are dropped."""
        recs = self.catalog.get_many([int(i) for i in ids])
        hits = []
        for s, i in zip(scores, ids, strict=True):
            r = recs.get(int(i))
            if r is None:  # removed by a writer since this index was loaded: not an image any more
                log.debug("dropping hit %d: not in the catalog", i)
                continue
            hits.append(SearchHit(id=int(i), score=float(s), relpath=r.relpath, path=self.abspath(r.relpath, r.source),
                                  label=r.label, source=r.source, record=r))
        return hits

    def embed_query_image(self, image: str | os.PathLike[str] | bytes | Image.Image) -> np.ndarray:
        from .imageio import load_image

        self.warn_if_query_runtime_differs()
        return self.encoder.embed_images([load_image(image)])[0]

    def search_image(self, image: str | os.PathLike[str] | bytes | Image.Image, k: int = 10,
                     qe: int = 0) -> list[SearchHit]:
        return self.search_vectors(self.embed_query_image(image), k, qe=qe)[0]

    # -- snapshots (imrs.namedsnapshots) ---------------------------------------------------------------
    def save_snapshot(self, name: str) -> snap.Manifest:
        with self.writing("snapshot-save"):
            return namedsnapshots.save(self, name)

    def load_snapshot(self, name: str) -> snap.Manifest:
        """Restore index and catalog from a named snapshot (refused if made with another backbone).
        Images added since the snapshot leave the collection (see ``imrs.namedsnapshots``)."""
        with self.writing("snapshot-load"):
            return namedsnapshots.load(self, name)

    def list_snapshots(self) -> list[snap.Manifest]:
        return namedsnapshots.list_named(self.snap_dir)

    # -- reporting ----------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        snaps = snap.list_snapshots(self.snap_dir)
        qdir = webfiles.quarantine_dir(self)
        quarantine = {"web_images": len(webfiles.quarantined(self)),
                      "damaged_files": sorted(p.name for p in qdir.glob("*.damaged-*")
                                             if not p.name.endswith(("-wal", "-shm"))) if qdir.is_dir() else [],
                      "folder": str(qdir)}
        return {"root": str(self.root), "state_dir": str(self.state_dir), "quarantine": quarantine,
                "images": len(self.catalog), "base": self.catalog.count("base"),
                "dynamic": self.catalog.count("dynamic"), "labels": len(self.catalog.labels()),
                "embeddings": self.store.summary(), "milvus": self.milvus_location(),
                "snapshots": [{"name": m.name, "backbone": m.backbone, "indexer": m.indexer, "count": m.count,
                               "created": m.created} for m in snaps]}


def _write_if_changed(path: Path, obj: dict[str, Any]) -> None:
    """Opening a collection writes nothing unless something changed (a read-only open stays one)."""
    try:
        if read_json(path) == obj:
            return
    except (OSError, ValueError):
        pass
    atomic_write_json(path, obj)
