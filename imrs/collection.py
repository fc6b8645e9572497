"""The facade: one object owns a collection's catalog, embeddings, encoder and live index.

The CLI and the Streamlit app both talk only to ``Collection`` so there is one place where state
changes, one writer lock, and one definition of "incremental": files are embedded once, vectors
are added to or removed from the live index in place, and every change is persisted atomically
(NPZ + snapshot pointer + SQLite transaction). Multi-step writes follow the commit protocol of
``imrs.reconcile`` (intent record, store order, commit record), and the first use of the catalog or
index checks that the last writer finished, repairing under the writer lock when it did not.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import reconcile
from . import snapshot as snap
from .catalog import Catalog, CatalogDamagedError, ImageRecord, label_for
from .config import DEFAULT_INDEXER, state_dir_for
from .errors import EmptyCollectionError, IMRSError, SnapshotError, StoreError
from .faults import fault_point
from .filters import attributes_of
from .fsutil import atomic_write_json, read_json
from .ids import stable_id
from .locking import WriterLock
from .store import (
    EmbeddingSet,
    RuntimeMismatchError,
    base_name,
    dynamic_name,
    load_ids,
    merge,
    merge_files,
    merged_name,
    read_runtime,
)

if TYPE_CHECKING:
    from PIL import Image

    from .encoders import Encoder
    from .engines import Embedder
    from .indexes import VectorIndex
    from .textsearch import TextIndex

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
DYNAMIC_PREFIX = "dynamic_"


@dataclass
class SearchHit:
    id: int
    score: float
    relpath: str
    path: Path
    label: str
    source: str
    record: ImageRecord | None = None
    #: "likely match" | "uncertain" | "no match", from the collection's coverage thresholds
    confidence: str = ""
    #: why it matched: ("visual",), ("visual", "label"), ("same image",) ...; text search adds
    #: "label", "filename", "caption", "term" and "web" (imrs.textsearch)
    why: tuple[str, ...] = ("visual",)

    @property
    def title(self) -> str:
        if self.record is None:
            return ""
        return self.record.title or self.record.extra.get("title", "") or self.record.extra.get("caption", "")


@dataclass
class SyncReport:
    scanned: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relpath, why): did not decode
    #: (relpath, why): left out by the folder walk (links, special files, too large, ...)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    runtime: str = ""  # runtime tag of the vectors now cached ("fp32", "int8-<key>")
    restamped: str = ""  # the previous tag, when a runtime change re-embedded everything
    runtime_note: str = ""  # the int8 gate's verdict, or why int8 is not in use, when it was considered
    adopted: int = 0  # web images found on disk or in the quarantine and taken (back) into the catalog
    recovered: list[str] = field(default_factory=list)  # damaged stores found and rebuilt, one line each

    def summary(self) -> str:
        adopted = f"; {self.adopted} web image(s) taken back with their provenance" if self.adopted else ""
        return (f"{self.scanned} files: {self.added} new, {self.changed} changed, {self.removed} removed, "
                f"{self.unchanged} unchanged; embedded {self.embedded}, {len(self.failed)} failed, "
                f"{len(self.skipped)} skipped{adopted} in {self.seconds:.1f}s")


@dataclass
class RemoveReport:
    removed: int = 0
    files_deleted: int = 0
    missing: int = 0


def is_dynamic_relpath(relpath: str) -> bool:
    return relpath.split("/", 1)[0].startswith(DYNAMIC_PREFIX)


def scan_folder(root: Path) -> list[tuple[str, float, int]]:
    """(relpath, mtime, size) of every image under ``root`` except dynamic and hidden folders
    (``imrs.walk`` does the walking; what it leaves out is logged)."""
    from .walk import scan_folder as walk_scan

    return walk_scan(root, skip_top=lambda name: name.startswith(DYNAMIC_PREFIX))


# -- per-caller search settings (issue 10) -----------------------------------------------------------
#: Search-time index tunables for searches made in this context only (an app session): sessions share
#: one in-memory index, so one session's efSearch must not become everyone's.
_CALLER_SEARCH_PARAMS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "imrs_caller_search_params", default=None)


@contextlib.contextmanager
def caller_search_params(**params: Any) -> Iterator[None]:
    """Within this block, searches in this context use ``params`` (efSearch, nprobe, search_k,
    k_factor), passed to each ``VectorIndex.search`` call; the shared index's settings never change."""
    token = _CALLER_SEARCH_PARAMS.set(_tunables(params) or None)
    try:
        yield
    finally:
        _CALLER_SEARCH_PARAMS.reset(token)
# -- end per-caller search settings -------------------------------------------------------------------


class Collection:
    """A folder of images, indexed with one backbone and one index kind."""

    def __init__(self, root: str | os.PathLike[str], backbone: str, indexer: str = DEFAULT_INDEXER, *,
                 home: str | os.PathLike[str] | None = None, device: str | None = None,
                 weights: str = "pretrained", checkpoint: str | None = None,
                 index_params: dict[str, Any] | None = None, dynamic_root: str | None = None,
                 encoder: Encoder | None = None, runtime: str = "auto"):
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
        self.indexer = indexer
        self.index_params = dict(index_params or {})
        self.device = device
        self.weights = weights
        self.checkpoint = checkpoint
        self.runtime = runtime  # "auto" | "fp32" | "int8" | a float runtime name (see imrs.encoders)
        self._runtime_warned = False
        self.state_dir = state_dir_for(self.root, home)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.emb_dir = self.state_dir / "emb"
        self.snap_dir = self.state_dir / "snapshots"
        self.dynamic_root = Path(dynamic_root) if dynamic_root else self._default_dynamic_root()
        self.writer = WriterLock(self.state_dir / "write.lock")
        try:
            self._catalog = Catalog(self.state_dir / "catalog.sqlite")
            self._catalog.set_kv("root", str(self.root))
        except CatalogDamagedError as exc:
            self._replace_catalog(exc)
        if dynamic_root is None and self.dynamic_root == self.root:
            with contextlib.suppress(IMRSError):  # web images of ours already there: say whose they are
                if self._catalog.count("dynamic"):
                    reconcile.claim_owner(self.root, self.state_dir)
        self._checked = False  # crash-consistency check done (see ``_ensure_consistent``)
        self._index_lock = threading.RLock()
        self._encoder_lock = threading.Lock()  # two UI sessions must not load the model twice
        self._encoder = encoder
        self._encoder_given = encoder is not None
        self._index: VectorIndex | None = None
        self._index_version: str | None = None  # live snapshot version our in-memory index matches
        self._caches: dict[str, Any] = {}  # per-collection derived state (see ``cache``)
        self._caches_lock = threading.Lock()
        self._snapshot_stale = False  # the live snapshot could not be used and the index was rebuilt
        _write_if_changed(self.state_dir / "collection.json", {"root": str(self.root)})

    # -- per-collection caches --------------------------------------------------------------------
    def cache(self, key: str, factory: Callable[[], Any]) -> Any:
        """Derived state that belongs to this collection (pHash index, prompt embeddings, the text
        map, calibration): built once by ``factory`` and kept on the object, so two collections in
        one process (two app sessions on different folders, a test) never share it, and it goes
        away with the collection instead of living in a module global."""
        with self._caches_lock:
            if key not in self._caches:
                self._caches[key] = factory()
            return self._caches[key]

    def forget(self, key: str) -> None:
        with self._caches_lock:
            self._caches.pop(key, None)

    # -- paths ---------------------------------------------------------------------------------
    def _default_dynamic_root(self) -> Path:
        """Dynamic images live beside the base ones (``<root>/dynamic_<slug>/``) when the folder is
        writable and this state folder owns them (``reconcile.claim_owner``); a read-only collection
        (a shared dataset), or one another state folder owns, keeps them in the state folder."""
        if os.access(self.root, os.W_OK):
            owner = reconcile.other_owner(self.root, self.state_dir)
            if owner is None:
                return self.root
            log.warning("%s belongs to the state folder %s: this one (%s) keeps its own web images and never "
                        "touches that one's", self.root, owner, self.state_dir)
        return self.state_dir / "dynamic"

    def _replace_catalog(self, exc: CatalogDamagedError) -> None:
        """A catalog that does not open: quarantined and rebuilt under the writer lock (if another
        writer holds it, the one line of ``exc`` is the answer for now)."""
        try:
            with self.writer.hold(timeout=0):
                reconcile.replace_damaged_catalog(self, str(exc.__cause__ or exc))
                self._catalog.set_kv("root", str(self.root))
        except IMRSError as busy:
            if isinstance(busy, CatalogDamagedError):
                raise
            raise exc from None

    def abspath(self, relpath: str, source: str | None = None) -> Path:
        if source == "dynamic" or (source is None and is_dynamic_relpath(relpath)):
            return self.dynamic_root / relpath
        return self.root / relpath

    @property
    def live_name(self) -> str:
        return f"live-{self.backbone}-{self.indexer}"

    # -- lazy heavy objects ----------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    self._encoder = self._make_encoder(None)
        return self._encoder

    # -- runtime identity of the cached vectors (fp32 / int8) ------------------------------------
    # The base cache records the runtime tag of its vectors. Under runtime "auto" the encoder
    # follows it, so queries and new images land in the same vector space; a sync whose encoder
    # writes another tag (an explicit --runtime, or an int8 model no longer cached) re-embeds
    # every cache and rebuilds the index instead of mixing.
    def cached_runtime(self) -> str | None:
        """Runtime tag of the base cache; None before anything was embedded."""
        path = self.base_npz()
        return read_runtime(path) if path.exists() else None

    def _runtime_label(self) -> str:
        return self.cached_runtime() or "fp32"

    def _make_encoder(self, sync_files: Sequence[Path] | None) -> Encoder:
        """The encoder for this collection. ``sync_files`` (when indexing) lets int8 be calibrated
        on the collection's own images; without them an int8 model is only reopened."""
        from .config import int8_auto_min_images
        from .encoders import get_encoder
        from .encoders.int8 import CALIBRATION_IMAGES, HELD_IMAGES, is_int8_tag

        tag = self.cached_runtime()
        kw: dict[str, Any] = {"runtime": self.runtime}
        if self.runtime in ("auto", "int8") and is_int8_tag(tag):
            kw["int8_tag"] = tag
        elif self.runtime == "auto" and tag is not None:
            kw["runtime"] = "fp32"
        if kw["runtime"] in ("auto", "int8") and (sync_files is not None or self.runtime == "int8"):
            files = list(sync_files) if sync_files is not None else [
                self.root / r.relpath for r in self.catalog.iter_records(source="base")]
            if self.runtime == "int8" or "int8_tag" in kw or len(files) >= int8_auto_min_images():
                kw["calibration"] = calibration_sample(files, CALIBRATION_IMAGES + HELD_IMAGES)
        return get_encoder(self.backbone, device=self.device, weights=self.weights, checkpoint=self.checkpoint,
                           **kw)

    def _warn_if_query_runtime_differs(self) -> None:
        tag = self.cached_runtime()
        enc_tag = getattr(self.encoder, "runtime_tag", "fp32")
        if tag is not None and enc_tag != tag and not self._runtime_warned:
            self._runtime_warned = True
            log.warning("the index holds %s vectors but queries are embedded with %s: results are "
                        "approximate until `imrs index --runtime ...` re-embeds the collection", tag, enc_tag)

    @property
    def dim(self) -> int:
        return int(self.backbone_info.dim)

    @property
    def catalog(self) -> Catalog:
        if not self._checked:
            self._ensure_consistent()
        return self._catalog

    @property
    def index(self) -> VectorIndex:
        if not self._checked:
            self._ensure_consistent()
        return self._index_unchecked()

    def _index_unchecked(self) -> VectorIndex:
        with self._index_lock:
            if self._index is None:
                self._index = self._open_index()
                self._warn_if_partial(self._index)
            return self._index

    def _warn_if_partial(self, index: VectorIndex) -> None:
        """No search answers silently from part of the collection: say so when the index holds
        fewer images than the catalog lists (a damaged cache, images not yet embedded)."""
        if self.writer.depth:  # inside a write the catalog may lead the index by design
            return
        try:
            n = len(self._catalog)
        except IMRSError:
            return
        if len(index) < n:
            log.warning("the %s index holds %d of the collection's %d images: %d have no vector yet "
                        "(`imrs index` embeds them)", self.backbone, len(index), n, n - len(index))

    # -- crash consistency (imrs.reconcile) ------------------------------------------------------
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
        if self._index is not None:  # built by the repair, under the lock: say now if it is partial
            self._warn_if_partial(self._index)

    def _check_locked(self) -> None:
        """Under the writer lock (outermost hold): repair whatever a crash left behind."""
        try:
            reconcile.migrate(self)
            status = reconcile.check(self)
        except CatalogDamagedError as exc:
            reconcile.replace_damaged_catalog(self, str(exc.__cause__ or exc))
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

    def _index_for_repair(self, vectors: Callable[[], EmbeddingSet]) -> tuple[VectorIndex, bool]:
        """The live index for ``reconcile.align`` (no consistency check: that is the caller), and
        whether it had to be built from ``vectors()`` because no usable snapshot exists."""
        with self._index_lock:
            if self._index is not None:
                return self._index, False
            index = self._load_live()
            fresh = index is None
            self._index = index if index is not None else self._build_index(vectors())
            return self._index, fresh

    def _disk_version(self) -> str | None:
        try:
            return str(read_json(self.snap_dir / f"{self.live_name}.json")["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def refresh_if_stale(self) -> bool:
        """Drop the in-memory index when another writer (another process, or another Collection in
        this one) has saved a newer live snapshot; adding to a stale copy and saving it would
        silently lose that writer's vectors. Costs one small JSON read."""
        with self._index_lock:
            if self._index is None or self._disk_version() == self._index_version:
                return False
            log.info("live index changed on disk: reloading")
            self._index = None
            return True

    def _open_index(self) -> VectorIndex:
        """Live snapshot if there is a compatible one (fast start, mmap), else rebuilt from the NPZ
        caches (no embedding), else empty. A Milvus index is rebuilt only by a writer: the rebuild
        replaces a collection on a server other readers share, so a reader says what to run."""
        index = self._load_live()
        if index is None and self.indexer == "milvus" and not self.writer.depth:
            why = self._milvus_unusable or "no live index yet"
            raise IMRSError(f"the Milvus index of {self.root} cannot be used ({why}): run `imrs index "
                            f"{self.root}` to rebuild it from the caches (nothing is re-embedded)")
        return index if index is not None else self._build_index(self.all_embeddings())

    def _load_live(self) -> VectorIndex | None:
        self._index_version = self._disk_version()
        self._milvus_unusable = ""
        if snap.snapshot_exists(self.snap_dir, self.live_name):
            try:
                index, manifest, _ = snap.load_snapshot(self.snap_dir, self.live_name,
                                                        expect_backbone=self.backbone, expect_dim=self.dim,
                                                        remote=self._milvus_remote(self.live_name))
                cached = self.cached_runtime()
                if cached is not None and manifest.extra.get("runtime", "fp32") != cached:
                    raise SnapshotError(f"live index holds {manifest.extra.get('runtime', 'fp32')} vectors, "
                                        f"the caches {cached}")
                self._wire_index(index)  # scale-out: filter fields, Milvus location
                if getattr(index, "uri", None) != (manifest.extra.get("vectors_at") or {}).get("uri", None):
                    self._snapshot_stale = True  # found in this state folder's own Lite file: re-save
                if self.index_params:
                    index.set_params(**_tunables(self.index_params))
                log.info("loaded live index %s (%d vectors)", self.live_name, len(index))
                return index
            except SnapshotError as exc:
                if self.indexer == "milvus" and not self.writer.depth:
                    self._milvus_unusable = str(exc)
                    return None
                log.warning("live snapshot unusable, rebuilding from embeddings: %s", exc)
                self._snapshot_stale = True
        return None

    def _build_index(self, emb: EmbeddingSet) -> VectorIndex:
        from .indexes import make_index

        index = make_index(self.indexer, self.dim, n_hint=max(len(emb), 1), **self._index_build_params())
        self._wire_index(index)
        loc = index.location()
        if loc is not None:  # later commands find the vectors here without --milvus-uri
            from .indexes.milvus_index import remember_location

            remember_location(self.state_dir, self.backbone, loc["uri"], loc["collection"])
        if len(emb):
            index.add(emb.ids, emb.vectors)
        return index

    # -- scale-out: where a Milvus index lives, what it stores beside each vector, how it is checked ------
    _milvus_unusable = ""  # why the live Milvus index could not be used (a reader reports it)

    def _index_build_params(self) -> dict[str, Any]:
        if self.indexer != "milvus":
            return self.index_params
        from .indexes.milvus_index import connection_params

        return connection_params(self.state_dir, self.backbone, self.index_params)

    def milvus_location(self) -> dict[str, str] | None:
        """Where this collection's Milvus vectors live now (remembered; None: never put there)."""
        from .indexes.milvus_index import remembered_location

        return remembered_location(self.state_dir, self.backbone)

    def _milvus_remote(self, name: str, verify: str = "auto") -> dict[str, Any] | None:
        """How to load snapshot ``name`` of a Milvus index: ``verify`` (see ``MilvusIndex._load``),
        and, when it names a Lite file other than the one this collection uses (a copied state
        folder), that file instead: the checksum then proves it holds the same vectors."""
        if self.indexer != "milvus":
            return None
        from .config import milvus_verify_rows
        from .indexes.milvus_index import is_lite_uri

        remote: dict[str, Any] = {"verify": verify, "verify_rows": milvus_verify_rows()}
        try:
            at = snap.read_manifest(self.snap_dir, name).extra.get("vectors_at") or {}
        except SnapshotError:
            return remote
        want = self._index_build_params()
        uri = str(at.get("uri", ""))
        if uri and uri != want["uri"] and is_lite_uri(uri) and is_lite_uri(want["uri"]) \
                and at.get("collection") == want["collection"]:
            remote.update(uri=want["uri"], verify="full")
        return remote

    def _wire_index(self, index: VectorIndex) -> None:
        """Let the index read filter fields from the catalog, and refuse (SnapshotError: the caller
        rebuilds from the caches) a Milvus index that lives elsewhere than now asked for."""
        index.set_attribute_source(lambda ids: attributes_of(self._catalog, ids))
        loc = index.location()
        if loc is not None and self.indexer == "milvus":
            want = self._index_build_params()
            if (loc["uri"], loc["collection"]) != (want["uri"], want["collection"]):
                raise SnapshotError(f"the index lives in {loc['collection']} at {loc['uri']}, "
                                    f"not {want['collection']} at {want['uri']}")
            asked = want.get("index_type")
            if asked and asked.upper() != index.get_params().get("index_type"):
                raise SnapshotError(f"the index is a {index.get_params().get('index_type')} index, {asked} was asked")

    def rebuild_index(self, indexer: str | None = None, index_params: dict[str, Any] | None = None) -> None:
        """Build the index again from cached embeddings (new kind or parameters); embeds nothing."""
        with self.writing("rebuild"):
            self.begin_changes()
            if indexer:
                self.indexer = indexer
            if index_params is not None:
                self.index_params = dict(index_params)
            with self._index_lock:
                self._index = self._build_index(self.all_embeddings())
            self._persist_index()

    def set_search_params(self, **params: Any) -> None:
        self.index_params.update(params)
        with self._index_lock:
            if self._index is not None:
                self._index.set_params(**_tunables(params))

    # -- embeddings on disk ------------------------------------------------------------------------
    # Caches are shard stores (imrs.shards): ``<name>.store/``. A single-file ``<name>.npz`` from
    # before stores is read as it is until the first write migrates it (``reconcile.migrate``).
    def _cache_path(self, store: str, legacy: str) -> Path:
        path = self.emb_dir / store
        old = self.emb_dir / legacy
        return old if not path.exists() and old.is_file() else path

    def base_npz(self) -> Path:
        """The base cache (a shard store; a not yet migrated single NPZ file until the next write)."""
        return self._cache_path(base_name(self.backbone), base_name(self.backbone, ".npz"))

    def dynamic_npz(self, slug: str) -> Path:
        return self._cache_path(dynamic_name(slug, self.backbone), dynamic_name(slug, self.backbone, ".npz"))

    def dynamic_npzs(self) -> list[Path]:
        stores = set(self.emb_dir.glob(f"dyn_emb_*_{self.backbone}.store"))
        legacy = {p for p in self.emb_dir.glob(f"dyn_emb_*_{self.backbone}.npz")
                  if p.with_suffix(".store") not in stores}
        return sorted(stores | legacy)

    def _write_cache(self, path: Path, add: EmbeddingSet | None = None, remove: Iterable[int] = ()) -> int:
        """One change to one cache: a new delta in its store (never a rewrite of the whole cache)."""
        from .shards import ShardStore

        if path.is_file():  # a single-file cache the migration left: it did not read whole
            raise StoreError(f"cache {path} could not be migrated (damaged?): `imrs index` checks, moves it "
                             "aside and re-embeds its images")
        return ShardStore(path).update(add, remove, backbone=self.backbone, dim=self.dim)

    def compact(self) -> dict[str, int]:
        """Rewrite every store of this backbone as one delta of its live rows (``imrs compact``).
        Returns store name -> bytes written."""
        from .shards import ShardStore

        out: dict[str, int] = {}
        with self.writing("compact"):
            for path in [self.base_npz(), *self.dynamic_npzs()]:
                if not path.exists():
                    continue
                self.begin_changes()
                out[path.name] = ShardStore(path).compact(backbone=self.backbone, dim=self.dim)
        return out

    def load_base_embeddings(self) -> EmbeddingSet:
        path = self.base_npz()
        if path.exists():
            try:
                emb = EmbeddingSet.load(path, backbone=self.backbone)
                if len(emb) and emb.dim != self.dim:
                    raise StoreError(f"{path}: {emb.dim}-d vectors but {self.backbone} gives {self.dim}-d")
                return emb
            except StoreError as exc:
                log.warning("ignoring damaged cache (will re-embed): %s", exc)
        return EmbeddingSet.empty(self.backbone, self.dim)

    def all_embeddings(self, extra_npz: Sequence[str | os.PathLike[str]] = ()) -> EmbeddingSet:
        """Base cache + dynamic caches (+ any extra files, e.g. benchmark caches), merged by the
        store's rules: ids deduped (first wins), rows whose image file is gone dropped."""
        base = self.load_base_embeddings()
        sets = [base]
        expect = base.runtime if len(base) else None  # one runtime: the base cache's, else the first
        for p in [*self.dynamic_npzs(), *map(Path, extra_npz)]:
            try:
                emb = EmbeddingSet.load(p, backbone=self.backbone, runtime=expect)
                expect = expect or (emb.runtime if len(emb) else None)
                sets.append(emb)
            except RuntimeMismatchError as exc:
                log.warning("skipping %s: vectors of another runtime are never mixed (imrs index re-embeds them)",
                            exc)
            except StoreError as exc:
                log.warning("skipping %s", exc)
        return merge(sets, exists=lambda rel: self.abspath(rel).exists())

    def merge_caches(self, extra_npz: Sequence[str | os.PathLike[str]] = ()) -> tuple[Path, int, int]:
        """Write ``emb_merged_<backbone>.npz`` from every cache, and take in what the extra NPZs have
        that the collection lacks (rows whose image file exists here): into the base or term cache
        first, then the catalog, then the live index (the commit order of ``imrs.reconcile``).

        Returns (merged file, rows in it, rows newly added to the collection)."""
        with self.writing("merge"):
            own = [p for p in [self.base_npz(), *self.dynamic_npzs()] if p.exists()]
            extras = [Path(p) for p in extra_npz]
            if not own and not any(p.exists() for p in extras):
                raise StoreError(f"no {self.backbone} embedding caches to merge yet: index the collection first")
            new = self._new_rows_from(extras)
            if len(new):
                self.begin_changes()
                self._save_to_caches(new)
                fault_point("merge.after_cache")
                self._catalog.upsert(_records_for(new.relpaths, self._catalog, self))
                fault_point("merge.after_catalog")
                with self._index_lock:
                    self.index.add(new.ids, new.vectors)
                self._persist_index()
                fault_point("merge.after_index")
            paths = [p for p in [self.base_npz(), *self.dynamic_npzs(), *extras] if p.exists()]
            out = self.emb_dir / merged_name(self.backbone)
            report = merge_files(paths, self.backbone, out, exists=lambda rel: self.abspath(rel).exists())
            return out, report.rows_out, len(new)

    def _new_rows_from(self, paths: Sequence[Path]) -> EmbeddingSet:
        """Rows of ``paths`` that no cache of this backbone has and whose image file exists."""
        sets = []
        for p in paths:
            try:
                sets.append(EmbeddingSet.load(p, backbone=self.backbone))
            except StoreError as exc:
                log.warning("skipping %s", exc)
        if not sets:
            return EmbeddingSet.empty(self.backbone, self.dim)
        extra = merge(sets, exists=lambda rel: self.abspath(rel).exists())
        if len(extra) and extra.dim != self.dim:
            raise StoreError(f"extra caches hold {extra.dim}-d vectors but {self.backbone} gives {self.dim}-d")
        return extra.select(np.isin(extra.ids, self._cached_ids(), invert=True))

    def _cached_ids(self) -> np.ndarray:
        """Ids of every row in this backbone's caches."""
        parts = [load_ids(p, self.backbone) for p in [self.base_npz(), *self.dynamic_npzs()] if p.exists()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _save_to_caches(self, rows: EmbeddingSet) -> None:
        """Append rows to the cache they belong in: the base cache, or their term's dynamic cache."""
        slugs = np.array([_slug_of(str(r)) for r in rows.relpaths], dtype=object)
        for slug in sorted(set(slugs.tolist()), key=lambda x: x or ""):
            part = rows.select(slugs == slug)
            path = self.base_npz() if slug is None else self.dynamic_npz(slug)
            self._write_cache(path, add=part)

    # -- indexing a folder ------------------------------------------------------------------------
    def sync(self, progress: Progress | bool = False, batch_size: int | None = None,
             engine: Embedder | None = None) -> SyncReport:
        """Bring catalog, cache and index in line with the folder: embed only new or changed files,
        drop vanished ones. Re-running on an unchanged folder embeds nothing. ``engine`` embeds the
        paths (default: this process's encoder; ``imrs.engines.ray_engine.RayEngine`` for a Ray
        cluster): anything with the encoder's ``embed_paths`` signature."""
        t0 = time.perf_counter()
        report = SyncReport()
        with self.writing("sync"):
            self._verify_stores(report)
            # The hostile-folder-proof walk; everything it leaves out is reported.
            from .walk import walk_images

            walked = walk_images(self.root, skip_top=lambda name: name.startswith(DYNAMIC_PREFIX))
            files = [(f.relpath, f.mtime, f.size) for f in walked.files]
            report.skipped = [(s.relpath, s.reason) for s in walked.skipped]
            report.scanned = len(files)
            if not files and not len(self._catalog):
                left_out = (f"; {len(walked.skipped)} entries left out, e.g. {walked.skipped[0].display}: "
                            f"{walked.skipped[0].reason}" if walked.skipped else "")
                raise EmptyCollectionError(f"no images found in {self.root} "
                                           f"(looked for .jpg, .png, .webp, ... in all subfolders){left_out}")
            known = self._catalog.file_stats()
            base = self.load_base_embeddings()
            todo = _plan(files, known, base, report)
            encoder: Encoder | None = None
            tag = base.runtime
            restamp = False
            if todo or self._runtime_may_change(base):
                # another engine (a Ray cluster) embeds with its own model: its tag is the truth
                encoder = engine or self._sync_encoder([self.root / rel for rel, _, _ in files])
                tag = getattr(encoder, "runtime_tag", "fp32")
                if len(base) and base.runtime != tag:
                    log.warning("re-embedding %d images: the cache holds %s vectors, the encoder writes %s",
                                len(base), base.runtime, tag)
                    report.restamped = base.runtime
                    base = EmbeddingSet.empty(self.backbone, self.dim, runtime=tag)
                    todo = _plan(files, known, base, report)
                restamp = self._restamp_dynamic(encoder)
                gate = getattr(encoder, "int8_gate", None)
                report.runtime_note = gate.summary() if gate is not None else getattr(encoder, "int8_note", "")
            report.runtime = tag
            on_disk = {rel for rel, _, _ in files}
            gone = [rel for rel in known if rel not in on_disk]
            report.removed = len(gone)
            gone_ids = [known[rel][0] for rel in gone]
            stale_ids = [stable_id(rel) for rel, _, _ in todo]

            new_emb = EmbeddingSet.empty(self.backbone, self.dim, runtime=tag)
            records: list[ImageRecord] = []
            if todo:
                assert encoder is not None
                paths = [self.root / rel for rel, _, _ in todo]
                res = encoder.embed_paths(paths, batch_size=batch_size, progress=progress)
                kept = [todo[i] for i in res.kept.tolist()]
                report.failed = [(todo[i][0], _strip_name(reason, self.root / todo[i][0]))
                                 for i, reason in res.failures]
                report.embedded = len(kept)
                new_emb = EmbeddingSet(self.backbone, [stable_id(r) for r, _, _ in kept],
                                       [r for r, _, _ in kept], res.vectors, runtime=tag)
                records = [ImageRecord.for_path(rel, source="base", mtime=mtime, size=size)
                           for rel, mtime, size in kept]
                _fill_image_facts(records, self.root)
            drop = set(gone_ids) | set(stale_ids)
            if drop or len(new_emb) or restamp:
                # Removals leave the catalog first, additions enter the cache first: whatever step
                # a crash interrupts, a cache row without a catalog row is safe to drop on repair.
                self.begin_changes()
                self._catalog.delete(gone_ids, allow_base=True)  # files already gone; never touches files
                fault_point("sync.after_catalog_delete")
                if report.restamped:  # every vector changed space: the store starts over
                    new_emb.save(self.base_npz())
                else:
                    self._write_cache(self.base_npz(), add=new_emb, remove=drop)
                fault_point("sync.after_cache")
                self._catalog.upsert(records)
                fault_point("sync.after_catalog")
                with self._index_lock:
                    if report.restamped or restamp:  # every vector changed space: rebuild, never mix
                        self._index = self._build_index(self.all_embeddings())
                    else:
                        index = self.index
                        if drop:
                            index.remove(np.fromiter(drop, dtype=np.int64))
                        if len(new_emb):
                            index.add(new_emb.ids, new_emb.vectors)
                self._persist_index()
                fault_point("sync.after_index")
            elif not snap.snapshot_exists(self.snap_dir, self.live_name) or self._rebuilt_on_open():
                self.begin_changes()
                self._persist_index()
            self._adopt_dynamic(report, lambda: encoder or engine or self._sync_encoder(
                [self.root / rel for rel, _, _ in files]), batch_size)
        report.seconds = time.perf_counter() - t0
        log.info("sync %s: %s", self.root, report.summary())
        return report

    # -- damaged stores and the user's web images (imrs.reconcile) --------------------------------------
    def _verify_stores(self, report: SyncReport) -> None:
        """``imrs index`` checks every store whole (SQLite quick_check, cache checksums: O(n), as the
        folder walk is): a damaged catalog is rebuilt, a damaged cache quarantined (its images are
        re-embedded below), each named in one line."""
        problem = self._catalog.integrity_problem()
        damaged = reconcile.quarantine_damaged_caches(self, verify=True)
        if problem is None and not damaged:
            return
        self.begin_changes()
        if problem is not None:
            n = reconcile.replace_damaged_catalog(self, problem)
            report.recovered.append(f"catalog damaged ({problem}): rebuilt with {n} image(s)")
        report.recovered += [f"cache {p.name} damaged: moved to {reconcile.quarantine_dir(self)}, re-embedding"
                             for p in damaged]
        reconcile.align(self)

    def _adopt_dynamic(self, report: SyncReport, encoder: Callable[[], Any], batch_size: int | None) -> None:
        """Web images the catalog lacks (back from the quarantine, or found in ``dynamic_*`` after a lost
        catalog) get their rows from their sidecars; catalogued web images no cache of this backbone
        holds (a damaged cache) are re-embedded from their files. Cache, then catalog, then index."""
        known = self._catalog.ids_set()
        reconcile.unquarantine(self, known)
        rels = reconcile.unrecorded_dynamic(self, known)
        cached = set(self._cached_ids().tolist())
        records = [reconcile.dynamic_record(self, rel, self.abspath(rel, "dynamic")) for rel in rels]
        unvectored = [r for r in self._catalog.iter_records(source="dynamic") if r.id not in cached]
        records += [r for r in unvectored if self.abspath(r.relpath, "dynamic").is_file()]
        lost = [r for r in unvectored if not self.abspath(r.relpath, "dynamic").is_file()]
        if lost:  # neither a vector nor a file: nothing here can rebuild them
            line = (f"{len(lost)} web image(s) (e.g. {lost[0].relpath}, from {lost[0].source_url or '?'}) have "
                    f"neither a {self.backbone} vector nor a file: restore them with `imrs snapshot load NAME` "
                    "or forget them with `imrs prune`")
            log.warning("%s", line)
            report.recovered.append(line)
        if not records:
            return
        enc = encoder()
        res = enc.embed_paths([self.abspath(r.relpath, "dynamic") for r in records], batch_size=batch_size)
        kept = [records[i] for i in res.kept.tolist()]
        report.failed += [(records[i].relpath, reason) for i, reason in res.failures]
        if not kept:
            return
        emb = EmbeddingSet(self.backbone, [r.id for r in kept], [r.relpath for r in kept], res.vectors,
                           runtime=getattr(enc, "runtime_tag", "fp32"))
        self.begin_changes()
        self._save_to_caches(emb)
        self._catalog.upsert([r for r in kept if r.id not in known])
        with self._index_lock:
            index = self.index
            index.remove(emb.ids)
            index.add(emb.ids, emb.vectors)
        self._persist_index()
        report.adopted = sum(r.id not in known for r in kept)
        report.embedded += len(kept)

    def _runtime_may_change(self, base: EmbeddingSet) -> bool:
        """Whether this sync's encoder may write another runtime than ``base`` holds (decided
        without loading a model: an unchanged folder under "auto" must stay instant)."""
        if not len(base) or self.runtime == "auto":
            return False
        return self.runtime == "int8" or base.runtime != "fp32"

    def _sync_encoder(self, files: Sequence[Path]) -> Encoder:
        """The encoder that embeds for a sync: the one in use when it already writes the caches'
        runtime, else one made with the folder's files at hand (int8 calibrates on them)."""
        enc = self._encoder
        if enc is not None and (self._encoder_given or (
                self.runtime == "auto" and getattr(enc, "runtime_tag", "fp32") == self.cached_runtime())):
            return enc
        with self._encoder_lock:
            self._encoder = self._make_encoder(files)
            return self._encoder

    def _restamp_dynamic(self, encoder: Encoder) -> bool:
        """Re-embed dynamic caches written by another runtime than ``encoder``'s (their images are
        on disk). Returns whether any was rewritten."""
        tag = getattr(encoder, "runtime_tag", "fp32")
        changed = False
        for npz in self.dynamic_npzs():
            if read_runtime(npz) == tag:
                continue
            try:
                emb = EmbeddingSet.load(npz, self.backbone)
            except StoreError as exc:
                log.warning("skipping %s", exc)
                continue
            if emb.runtime == tag:
                continue
            self.begin_changes()  # caches change from here: a crash is repaired on the next open
            res = encoder.embed_paths([self.abspath(str(r), "dynamic") for r in emb.relpaths])
            emb = EmbeddingSet(self.backbone, emb.ids[res.kept], emb.relpaths[res.kept], res.vectors, runtime=tag)
            emb.save(npz)
            changed = True
        return changed
    def _rebuilt_on_open(self) -> bool:
        """Whether opening the index had to rebuild it from the caches (a damaged live snapshot, a
        Milvus collection that moved or changed): then an unchanged folder still re-saves it."""
        with self._index_lock:
            _ = self.index
            return self._snapshot_stale

    def _persist_index(self) -> None:
        self._snapshot_stale = False
        with self._index_lock:
            snap.save_snapshot(self.snap_dir, self.live_name, self._index_unchecked(), self.backbone,
                               collection_root=str(self.root), extra={"runtime": self._runtime_label()})
            self._index_version = self._disk_version()

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
                    with self._index_lock:
                        self._index = None  # may hold half of the change: reload from disk
                    self._checked = False
                raise
            else:
                if owner and scratch.get("begun"):
                    reconcile.commit(self)
            finally:
                if owner:
                    scratch.pop("op", None)
                    scratch.pop("begun", None)

    # -- dynamic images -----------------------------------------------------------------------------
    def add_dynamic(self, slug: str, records: Sequence[ImageRecord], vectors: np.ndarray) -> int:
        """Add already-embedded dynamic images: the term's NPZ, catalog rows, index vectors (in this
        order, see ``imrs.reconcile``). The expansion engine calls this after download and dedupe,
        with the files already in place; nothing else is re-embedded."""
        if not records:
            return 0
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(records), self.dim):
            raise StoreError(f"expected {len(records)}x{self.dim} vectors, got {vectors.shape}")
        if not np.isfinite(vectors).all():  # checked before any write: the caches must stay indexable
            raise StoreError("refusing to add NaN or infinite vectors")
        for r in records:
            if r.source != "dynamic" or not is_dynamic_relpath(r.relpath):
                raise IMRSError(f"{r.relpath}: dynamic images must live under {DYNAMIC_PREFIX}<term>/")
        # The vectors come from the encoder in use (an expansion) or the caller; loading a model
        # only to read its runtime tag would cost seconds, so without one the caches' tag holds.
        cached = self.cached_runtime()
        tag = getattr(self._encoder, "runtime_tag", None) or cached or "fp32"
        if cached is not None and cached != tag:
            raise IMRSError(f"the collection holds {cached} vectors but the encoder writes {tag}: "
                            "run `imrs index` first so one runtime embeds everything")
        with self.writing("expand"):
            if self.dynamic_root == self.root:  # web images recorded in the user's folder: claim it
                other = reconcile.claim_owner(self.root, self.state_dir)
                if other is not None:
                    raise IMRSError(f"{self.root} belongs to the state folder {other}: grow it from there")
            self.begin_changes()
            new = EmbeddingSet(self.backbone, [r.id for r in records], [r.relpath for r in records], vectors,
                               runtime=tag)
            self._write_cache(self.dynamic_npz(slug), add=new)
            fault_point("expand.after_cache")
            self._catalog.upsert(records)
            fault_point("expand.after_catalog")
            with self._index_lock:
                self.index.add(new.ids, new.vectors)
            self._persist_index()
            fault_point("expand.after_index")
        return len(records)

    def remove_dynamic(self, ids: Iterable[int]) -> RemoveReport:
        """Remove dynamic images everywhere: catalog, NPZ, file, index (in this order, see
        ``imrs.reconcile``). Refuses the whole request if any id is a base image: a user's own
        files are never deleted by IMRS."""
        id_list = sorted({int(i) for i in ids})
        report = RemoveReport()
        if not id_list:
            return report
        with self.writing("prune"):
            recs = self._catalog.get_many(id_list)
            base = [r.relpath for r in recs.values() if r.source != "dynamic" or not is_dynamic_relpath(r.relpath)]
            if base:
                raise IMRSError(f"refusing to remove base image(s): {', '.join(base[:3])}"
                                f"{' ...' if len(base) > 3 else ''}; only dynamic images can be removed")
            report.missing = len(id_list) - len(recs)
            if not recs:
                return report
            gone = list(recs.keys())
            self.begin_changes()
            self._catalog.delete(gone)
            fault_point("prune.after_catalog")
            for npz in self.dynamic_npzs():
                if np.isin(load_ids(npz, self.backbone), gone).any():
                    self._write_cache(npz, remove=gone)
            fault_point("prune.after_cache")
            for r in recs.values():
                path = self._safe_dynamic_file(r.relpath)
                if path is not None and path.exists():
                    path.unlink()
                    reconcile.sidecar_of(path).unlink(missing_ok=True)
                    report.files_deleted += 1
                    if report.files_deleted == 1:
                        fault_point("prune.mid_files")
            with self._index_lock:
                self.index.remove(np.asarray(gone, dtype=np.int64))
            self._persist_index()
            fault_point("prune.after_index")
            report.removed = len(recs)
        return report

    def _safe_dynamic_file(self, relpath: str) -> Path | None:
        """Resolve a dynamic image's file and prove it sits inside a dynamic_* folder of the dynamic
        root; anything else (symlink games, '..') is never deleted."""
        root = self.dynamic_root.resolve()
        path = (root / relpath).resolve()
        try:
            rel = path.relative_to(root)
        except ValueError:
            return None
        if len(rel.parts) < 2 or not rel.parts[0].startswith(DYNAMIC_PREFIX):
            return None
        return path

    # -- search -------------------------------------------------------------------------------------
    def search_vectors(self, queries: np.ndarray, k: int = 10, qe: int = 0,
                       qe_alpha: float = 3.0, where: str | None = None,
                       params: dict[str, Any] | None = None) -> list[list[SearchHit]]:
        """k nearest images per query. ``qe`` > 0 turns on alpha query expansion: the query is
        re-issued as the alpha-weighted mean of itself and its top ``qe`` hits (measured by
        ``imrs bench``: +0.012 P@10 and +0.04 full mAP on Caltech-101 with qe=5, alpha=3).
        ``where`` (``source == 'dynamic'``, see ``imrs.filters``) keeps only matching images, and
        still returns k hits whenever k images match. ``params`` (else those of
        ``caller_search_params``) are search-time index tunables for this call only."""
        from .filters import Where

        cond = Where(where, self.catalog) if where else None
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        own = _tunables(params if params is not None else (_CALLER_SEARCH_PARAMS.get() or {})) or None
        self.refresh_if_stale()  # a long-lived reader (the app) sees other writers' changes
        with self._index_lock:
            index = self.index
        # the index's own read/write lock lets searches run in parallel, never beside an add
        if len(index) == 0:
            raise EmptyCollectionError("the index is empty: index a folder first (imrs index FOLDER)")
        if qe > 0:
            from .retrieval.qe import expand_queries

            sims, nn = index.search(q, qe, where=cond, params=own)
            flat_nn = nn.ravel()
            vecs = index.get_vectors(np.where(flat_nn == -1, 0, flat_nn))
            rows = np.where(nn == -1, -1, np.arange(nn.size).reshape(nn.shape))
            q = expand_queries(q, vecs, sims, rows, qe, alpha=qe_alpha)
        scores, ids = index.search(q, k, where=cond, params=own)
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

    @property
    def text_index(self) -> TextIndex:
        """This collection's text-search state (imrs.textsearch: class space, query plans,
        metadata index), one per collection object."""
        from .textsearch import TextIndex

        return self.cache("textsearch", lambda: TextIndex(self))

    def embed_query_text(self, text: str) -> np.ndarray:
        """The visual query vector of ``text`` (text tower, else hierarchy-aware ConSE); the full
        text search with metadata and fusion is ``imrs.textsearch.text_search``."""
        if self.backbone_info.supports_text:  # ConSE never runs the model on the query: no warning
            self._warn_if_query_runtime_differs()
        from .textsearch import text_query_vector

        return text_query_vector(self, text)

    def embed_query_image(self, image: str | os.PathLike[str] | bytes | Image.Image) -> np.ndarray:
        from .imageio import load_image

        self._warn_if_query_runtime_differs()
        return self.encoder.embed_images([load_image(image)])[0]

    def search_text(self, text: str, k: int = 10, qe: int = 0) -> list[SearchHit]:
        return self.search_vectors(self.embed_query_text(text), k, qe=qe)[0]

    def search_image(self, image: str | os.PathLike[str] | bytes | Image.Image, k: int = 10,
                     qe: int = 0) -> list[SearchHit]:
        return self.search_vectors(self.embed_query_image(image), k, qe=qe)[0]

    # -- snapshots ----------------------------------------------------------------------------------
    def save_snapshot(self, name: str) -> snap.Manifest:
        snap.check_user_name(name)
        with self.writing("snapshot-save"), self._index_lock:
            self.begin_changes()  # a killed save leaves a version folder for the repair to collect
            return snap.save_snapshot(self.snap_dir, name, self.index, self.backbone, catalog=self._catalog,
                                      collection_root=str(self.root), extra={"runtime": self._runtime_label()})

    def load_snapshot(self, name: str) -> snap.Manifest:
        """Restore index and catalog from a named snapshot (refused if made with another backbone).

        The caches stay the truth for vectors, so the snapshot's vectors of images the caches lack
        are copied into them first, then the catalog is restored, then caches and index are cut
        to the restored catalog (``reconcile.align``): images added since the snapshot leave the
        collection (their downloaded files move to ``<state>/quarantine/released-*``; a later
        ``imrs index`` re-finds base files, not those)."""
        with self.writing("snapshot-load"):
            try:
                index, manifest, cat_path = snap.load_snapshot(self.snap_dir, name, expect_backbone=self.backbone,
                                                               expect_dim=self.dim,
                                                               remote=self._milvus_remote(name, "full"))
            except SnapshotError as exc:
                index, manifest, cat_path = self._restore_milvus_snapshot(name, exc)
            held = manifest.extra.get("runtime", "fp32")
            if held != self._runtime_label():  # the next sync would mix the two runtimes
                raise SnapshotError(f"snapshot {name!r} holds {held} vectors but the collection's caches are "
                                    f"{self._runtime_label()}: re-index with that runtime first")
            self.begin_changes()
            index.set_attribute_source(lambda ids: attributes_of(self._catalog, ids))
            if cat_path is not None:
                saved = Catalog(cat_path)
                try:
                    self._backfill_caches(index, saved.relpaths_by_id())
                    fault_point("snapshot.load.after_cache")
                    saved.backup_to(self._catalog.path)
                finally:
                    saved.close()
                self._catalog.close()
                self._catalog = Catalog(self._catalog.path)
                self._catalog.new_generation()
                fault_point("snapshot.load.after_catalog")
            with self._index_lock:
                self._index = index
                self.indexer = manifest.indexer
            reconcile.align(self, release=f"snapshot {name!r}")
            self._persist_index()
            fault_point("snapshot.load.after_index")
            return manifest

    def _backfill_caches(self, index: VectorIndex, wanted: dict[int, str]) -> None:
        """Copy into the caches the vectors ``index`` holds for images of ``wanted`` (id -> relpath)
        that no cache of this backbone has (e.g. pruned since a snapshot was saved)."""
        have = set(self._cached_ids().tolist())
        held = set(index.ids().tolist())
        need = [i for i in wanted if i in held and i not in have]
        if need:
            self._save_to_caches(EmbeddingSet(self.backbone, need, [wanted[i] for i in need],
                                              index.get_vectors(np.asarray(need, dtype=np.int64))))

    def list_snapshots(self) -> list[snap.Manifest]:
        return [m for m in snap.list_snapshots(self.snap_dir) if not m.name.startswith("live-")]

    # -- reporting ----------------------------------------------------------------------------------
    def _restore_milvus_snapshot(self, name: str, exc: SnapshotError
                                 ) -> tuple[VectorIndex, snap.Manifest, Path | None]:
        """A Milvus snapshot whose collection changed since: put its rows back from the NPZ caches
        when they still hold every one of them with the same vectors (the checksum says so), else
        refuse in one line; nothing is changed before the rows are known to be complete."""
        from .indexes.milvus_index import ContentMismatch, checksum_as_stored

        if not isinstance(exc, ContentMismatch):
            raise exc
        manifest = snap.read_manifest(self.snap_dir, name)
        want = snap.snapshot_ids(self.snap_dir, name)
        recorded = (manifest.extra.get("vectors_at") or {}).get("checksum")
        emb = self.all_embeddings()
        have = emb.select(np.isin(emb.ids, want)) if want is not None else emb.select(np.zeros(len(emb), bool))
        if want is None or recorded is None or len(have) != len(want) \
                or f"{checksum_as_stored(have.ids, have.vectors):016x}" != recorded:
            lost = len(want) - len(have) if want is not None else manifest.count
            what = f"{lost} of its {manifest.count} vectors (pruned since)" if lost else \
                "its vectors as they were (re-embedded since)"
            raise SnapshotError(f"snapshot {name!r} cannot be restored: {exc}, and the caches no longer hold "
                                f"{what}") from exc
        held = manifest.extra.get("runtime", "fp32")
        if held != self._runtime_label():
            raise SnapshotError(f"snapshot {name!r} holds {held} vectors but the collection's caches are "
                                f"{self._runtime_label()}: re-index with that runtime first")
        log.warning("snapshot %s: %s; restoring its %d vectors from the caches", name, exc, len(have))
        self.begin_changes()
        index = self._build_index(have)
        cat = snap.pointed_version(self.snap_dir, name)
        cat_path = self.snap_dir / cat / "catalog.sqlite" if cat else None
        return index, manifest, (cat_path if cat_path is not None and cat_path.exists() else None)

    def info(self) -> dict[str, Any]:
        per_backbone: dict[str, dict[str, Any]] = {}
        for npz in sorted([*self.emb_dir.glob("*.npz"), *self.emb_dir.glob("*.store")]):
            try:
                emb = EmbeddingSet.load(npz)
            except StoreError:
                continue
            d = per_backbone.setdefault(emb.backbone, {"rows": 0, "bytes": 0, "files": [], "dim": emb.dim,
                                                       "runtimes": []})
            if emb.runtime not in d["runtimes"]:
                d["runtimes"].append(emb.runtime)
            if not npz.name.startswith("emb_merged_"):
                d["rows"] += len(emb)
            d["bytes"] += (sum(f.stat().st_size for f in npz.iterdir() if f.is_file()) if npz.is_dir()
                           else npz.stat().st_size)
            d["files"].append(npz.name)
        snaps = snap.list_snapshots(self.snap_dir)
        qdir = reconcile.quarantine_dir(self)
        quarantine = {"web_images": len(reconcile.quarantined(self)),
                      "damaged_files": sorted(p.name for p in qdir.glob("*.damaged-*")
                                             if not p.name.endswith(("-wal", "-shm"))) if qdir.is_dir() else [],
                      "folder": str(qdir)}
        return {"root": str(self.root), "state_dir": str(self.state_dir), "quarantine": quarantine,
                "images": len(self.catalog), "base": self.catalog.count("base"),
                "dynamic": self.catalog.count("dynamic"), "labels": len(self.catalog.labels()),
                "embeddings": per_backbone, "milvus": self.milvus_location(),
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


def _plan(files: Sequence[tuple[str, float, int]], known: dict[str, tuple[int, float | None, int | None]],
          base: EmbeddingSet, report: SyncReport) -> list[tuple[str, float, int]]:
    """Files to embed: new, changed, or missing from ``base``; counts go into ``report``."""
    report.added = report.changed = report.unchanged = 0
    cached = set(base.ids.tolist())
    todo: list[tuple[str, float, int]] = []
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


def calibration_sample(files: Sequence[Path], n: int, seed: int = 0) -> list[Path]:
    """Up to ``n`` of ``files``, a seeded random sample (the same for the same folder)."""
    ordered = sorted(files)
    if len(ordered) <= n:
        return ordered
    rng = np.random.default_rng(seed)
    return [ordered[i] for i in sorted(rng.choice(len(ordered), size=n, replace=False).tolist())]


def _tunables(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k in ("efSearch", "nprobe", "search_k", "k_factor")}


def _slug_of(relpath: str) -> str | None:
    """The term slug of a dynamic image's relpath, None for a base image."""
    return relpath.split("/", 1)[0][len(DYNAMIC_PREFIX):] if is_dynamic_relpath(relpath) else None


def _records_for(relpaths: Iterable[str], catalog: Catalog, coll: Collection) -> list[ImageRecord]:
    """Catalog rows for merged-in cache rows the catalog does not know yet. Base rows get the
    file's mtime and size, so ``imrs index`` takes the merged vector as current, not re-embeds."""
    rels = [str(r) for r in relpaths]
    have = catalog.get_many([stable_id(r) for r in rels])
    out = []
    for rel in rels:
        if stable_id(rel) in have:
            continue
        slug = _slug_of(rel)
        if slug is None:
            try:
                st = (coll.root / rel).stat()
                facts: dict[str, Any] = {"mtime": st.st_mtime, "size": st.st_size}
            except OSError:
                facts = {}
            out.append(ImageRecord.for_path(rel, source="base", label=label_for(rel), **facts))
        else:
            out.append(ImageRecord.for_path(rel, source="dynamic", label=slug, slug=slug, term=slug))
    return out


def _strip_name(reason: str, path: Path) -> str:
    """"cannot read /abs/path: why" -> "why": the report already names the file."""
    from .ids import display_path

    return reason.removeprefix(f"cannot read {display_path(path)}: ")


def _fill_image_facts(records: list[ImageRecord], root: Path) -> None:
    """Width, height and pHash for new base images. A header read plus a JPEG draft decode at 1/8
    scale is a few ms per image, far below embedding cost, and pHash of base images is what lets
    web expansion drop near-duplicates of what the user already has."""
    from .dedupe import phash_file

    for r in records:
        try:
            r.phash, (r.width, r.height) = phash_file(root / r.relpath, with_size=True)
        except Exception as exc:  # noqa: BLE001 - facts are optional; the embedding already succeeded
            log.debug("no image facts for %s: %s", r.relpath, exc)


ACTIVE_FILE = "active.json"


def remember_active(home: Path, coll: Collection) -> None:
    atomic_write_json(home / ACTIVE_FILE, {"root": str(coll.root), "backbone": coll.backbone,
                                           "indexer": coll.indexer})


def read_active(home: Path) -> dict[str, str] | None:
    try:
        return read_json(home / ACTIVE_FILE)
    except (OSError, ValueError):
        return None
