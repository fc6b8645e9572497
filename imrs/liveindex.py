"""A collection's live vector index: open, build, wire, search with per-call parameters, persist.

One job: the in-memory ``VectorIndex`` a collection answers from and its saved form, the live
snapshot ``live-<backbone>-<indexer>``. It opens from that snapshot when a compatible one exists
(fast start, mmap), rebuilds from the caches otherwise (no embedding), notices when another
writer saved a newer one, and for Milvus knows where the vectors live and refuses one that moved.

Search-time tunables (efSearch, nprobe, search_k, k_factor) are passed to each
``VectorIndex.search`` call: a caller's settings (``caller_search_params``, one app session) never
change the shared index another session searches at the same moment.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import snapshot as snap
from .errors import IMRSError, SnapshotError
from .fsutil import read_json

if TYPE_CHECKING:
    from .config import Settings
    from .indexes import VectorIndex
    from .locking import WriterLock
    from .store import EmbeddingSet

log = logging.getLogger(__name__)

#: Search-time index tunables for searches made in this context only (an app session): sessions share
#: one in-memory index, so one session's efSearch must not become everyone's.
_CALLER_SEARCH_PARAMS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "imrs_caller_search_params", default=None)


def tunables(params: dict[str, Any]) -> dict[str, Any]:
    """The search-time tunables among ``params`` (build parameters left out); the table is
    ``imrs.indexes.params.SEARCH_PARAMS`` (imported here: the index engines load on first use)."""
    from .indexes.params import SEARCH_PARAMS

    return {k: v for k, v in params.items() if k in SEARCH_PARAMS}


@contextlib.contextmanager
def caller_search_params(**params: Any) -> Iterator[None]:
    """Within this block, searches in this context use ``params`` (efSearch, nprobe, search_k,
    k_factor), passed to each ``VectorIndex.search`` call; the shared index's settings never change."""
    token = _CALLER_SEARCH_PARAMS.set(tunables(params) or None)
    try:
        yield
    finally:
        _CALLER_SEARCH_PARAMS.reset(token)


class LiveIndex:
    """The live index of one collection (``backbone`` vectors of ``dim``, kind ``indexer``).

    ``attributes(ids)`` gives the filter fields of images (from the catalog), ``vectors()`` every
    cached vector (to build from), ``cached_runtime()`` the caches' runtime tag and ``catalog_size()``
    how many images the catalog lists (a partial index is reported, never silent)."""

    def __init__(self, *, root: Path, state_dir: Path, snap_dir: Path, backbone: str, dim: int, indexer: str,
                 index_params: dict[str, Any] | None, writer: WriterLock,
                 attributes: Callable[[np.ndarray], Any], vectors: Callable[[], EmbeddingSet],
                 cached_runtime: Callable[[], str | None], catalog_size: Callable[[], int],
                 settings: Settings) -> None:
        self.settings = settings  # the collection's: where Milvus lives, how much of it is checked on open
        self.root = root
        self.state_dir = state_dir
        self.snap_dir = snap_dir
        self.backbone = backbone
        self.dim = dim
        self.indexer = indexer
        self.index_params = dict(index_params or {})
        self.lock = threading.RLock()
        self._writer = writer
        self._attributes = attributes
        self._vectors = vectors
        self._cached_runtime = cached_runtime
        self._catalog_size = catalog_size
        self._index: VectorIndex | None = None
        self._version: str | None = None  # live snapshot version our in-memory index matches
        self._snapshot_stale = False  # the live snapshot could not be used and the index was rebuilt
        self._milvus_unusable = ""  # why the live Milvus index could not be used (a reader reports it)

    @property
    def name(self) -> str:
        return f"live-{self.backbone}-{self.indexer}"

    @property
    def loaded(self) -> VectorIndex | None:
        """The index in memory, None when not opened yet (or dropped)."""
        return self._index

    def current(self) -> VectorIndex:
        """The index, opened on first use."""
        with self.lock:
            if self._index is None:
                self._index = self._open()
                self.warn_if_partial(self._index)
            return self._index

    def replace(self, index: VectorIndex | None) -> None:
        """Answer from ``index`` from now on (None: reopen from disk on next use)."""
        with self.lock:
            self._index = index

    def rebuild(self, emb: EmbeddingSet) -> VectorIndex:
        """A fresh index of ``emb``, in use from now on."""
        with self.lock:
            self._index = self.build(emb)
            return self._index

    def warn_if_partial(self, index: VectorIndex) -> None:
        """No search answers silently from part of the collection: say so when the index holds
        fewer images than the catalog lists (a damaged cache, images not yet embedded)."""
        if self._writer.depth:  # inside a write the catalog may lead the index by design
            return
        try:
            n = self._catalog_size()
        except IMRSError:
            return
        if len(index) < n:
            log.warning("the %s index holds %d of the collection's %d images: %d have no vector yet "
                        "(`imrs index` embeds them)", self.backbone, len(index), n, n - len(index))

    def for_repair(self, vectors: Callable[[], EmbeddingSet]) -> tuple[VectorIndex, bool]:
        """The live index for a repair, and whether it had to be built from ``vectors()`` because no
        usable snapshot exists."""
        with self.lock:
            if self._index is not None:
                return self._index, False
            index = self._load_live()
            fresh = index is None
            self._index = index if index is not None else self.build(vectors())
            return self._index, fresh

    # -- the saved form -----------------------------------------------------------------------------
    def disk_version(self) -> str | None:
        try:
            return str(read_json(self.snap_dir / f"{self.name}.json")["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def refresh_if_stale(self) -> bool:
        """Drop the in-memory index when another writer (another process, or another Collection in
        this one) has saved a newer live snapshot; adding to a stale copy and saving it would
        silently lose that writer's vectors. Costs one small JSON read."""
        with self.lock:
            if self._index is None or self.disk_version() == self._version:
                return False
            log.info("live index changed on disk: reloading")
            self._index = None
            return True

    def saved(self) -> bool:
        return snap.snapshot_exists(self.snap_dir, self.name)

    def persist(self, runtime: str) -> None:
        """Save the index as the live snapshot (its vectors are of runtime ``runtime``)."""
        self._snapshot_stale = False
        with self.lock:
            snap.save_snapshot(self.snap_dir, self.name, self.current(), self.backbone,
                               collection_root=str(self.root), extra={"runtime": runtime})
            self._version = self.disk_version()

    def rebuilt_on_open(self) -> bool:
        """Whether opening the index had to rebuild it from the caches (a damaged live snapshot, a
        Milvus collection that moved or changed): then an unchanged folder still re-saves it."""
        with self.lock:
            self.current()
            return self._snapshot_stale

    def _open(self) -> VectorIndex:
        """Live snapshot if there is a compatible one, else rebuilt from the caches, else empty. A
        Milvus index is rebuilt only by a writer: the rebuild replaces a collection on a server
        other readers share, so a reader says what to run."""
        index = self._load_live()
        if index is None and self.indexer == "milvus" and not self._writer.depth:
            why = self._milvus_unusable or "no live index yet"
            raise IMRSError(f"the Milvus index of {self.root} cannot be used ({why}): run `imrs index "
                            f"{self.root}` to rebuild it from the caches (nothing is re-embedded)")
        return index if index is not None else self.build(self._vectors())

    def _load_live(self) -> VectorIndex | None:
        self._version = self.disk_version()
        self._milvus_unusable = ""
        if snap.snapshot_exists(self.snap_dir, self.name):
            try:
                index, manifest, _ = snap.load_snapshot(self.snap_dir, self.name,
                                                        expect_backbone=self.backbone, expect_dim=self.dim,
                                                        remote=self.milvus_remote(self.name))
                cached = self._cached_runtime()
                if cached is not None and manifest.extra.get("runtime", "fp32") != cached:
                    raise SnapshotError(f"live index holds {manifest.extra.get('runtime', 'fp32')} vectors, "
                                        f"the caches {cached}")
                self.wire(index)  # scale-out: filter fields, Milvus location
                if getattr(index, "uri", None) != (manifest.extra.get("vectors_at") or {}).get("uri", None):
                    self._snapshot_stale = True  # found in this state folder's own Lite file: re-save
                if self.index_params:
                    index.set_params(**tunables(self.index_params))
                log.info("loaded live index %s (%d vectors)", self.name, len(index))
                return index
            except SnapshotError as exc:
                if self.indexer == "milvus" and not self._writer.depth:
                    self._milvus_unusable = str(exc)
                    return None
                log.warning("live snapshot unusable, rebuilding from embeddings: %s", exc)
                self._snapshot_stale = True
        return None

    def build(self, emb: EmbeddingSet) -> VectorIndex:
        """A new index of this kind holding ``emb`` (not put in use: see ``rebuild``)."""
        from .indexes import make_index

        index = make_index(self.indexer, self.dim, n_hint=max(len(emb), 1), **self.build_params())
        self.wire(index)
        loc = index.location()
        if loc is not None:  # later commands find the vectors here without --milvus-uri
            from .indexes.milvus_index import remember_location

            remember_location(self.state_dir, self.backbone, loc["uri"], loc["collection"])
        if len(emb):
            index.add(emb.ids, emb.vectors)
        return index

    # -- scale-out: where a Milvus index lives, what it stores beside each vector, how it is checked ------
    def build_params(self) -> dict[str, Any]:
        if self.indexer != "milvus":
            return self.index_params
        from .indexes.milvus_index import connection_params

        return connection_params(self.state_dir, self.backbone, self.index_params, self.settings)

    def milvus_location(self) -> dict[str, str] | None:
        """Where this collection's Milvus vectors live now (remembered; None: never put there)."""
        from .indexes.milvus_index import remembered_location

        return remembered_location(self.state_dir, self.backbone)

    def milvus_remote(self, name: str, verify: str = "auto") -> dict[str, Any] | None:
        """How to load snapshot ``name`` of a Milvus index: ``verify`` (see ``MilvusIndex._load``),
        and, when it names a Lite file other than the one this collection uses (a copied state
        folder), that file instead: the checksum then proves it holds the same vectors."""
        if self.indexer != "milvus":
            return None
        from .indexes.milvus_index import is_lite_uri

        remote: dict[str, Any] = {"verify": verify, "verify_rows": self.settings.milvus_verify_rows}
        try:
            at = snap.read_manifest(self.snap_dir, name).extra.get("vectors_at") or {}
        except SnapshotError:
            return remote
        want = self.build_params()
        uri = str(at.get("uri", ""))
        if uri and uri != want["uri"] and is_lite_uri(uri) and is_lite_uri(want["uri"]) \
                and at.get("collection") == want["collection"]:
            remote.update(uri=want["uri"], verify="full")
        return remote

    def attach(self, index: VectorIndex) -> None:
        """Let ``index`` read filter fields from the catalog (an index restored from elsewhere)."""
        index.set_attribute_source(self._attributes)

    def wire(self, index: VectorIndex) -> None:
        """Let the index read filter fields from the catalog, and refuse (SnapshotError: the caller
        rebuilds from the caches) a Milvus index that lives elsewhere than now asked for."""
        self.attach(index)
        loc = index.location()
        if loc is not None and self.indexer == "milvus":
            want = self.build_params()
            if (loc["uri"], loc["collection"]) != (want["uri"], want["collection"]):
                raise SnapshotError(f"the index lives in {loc['collection']} at {loc['uri']}, "
                                    f"not {want['collection']} at {want['uri']}")
            asked = want.get("index_type")
            if asked and asked.upper() != index.get_params().get("index_type"):
                raise SnapshotError(f"the index is a {index.get_params().get('index_type')} index, {asked} was asked")

    # -- search -------------------------------------------------------------------------------------
    def set_search_params(self, **params: Any) -> None:
        """Change the defaults every search of this index uses (a per-call ``params`` still wins)."""
        self.index_params.update(params)
        with self.lock:
            if self._index is not None:
                self._index.set_params(**tunables(params))

    def search(self, index: VectorIndex, queries: np.ndarray, k: int, *, qe: int = 0, qe_alpha: float = 3.0,
               where: Any = None, params: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``k`` nearest per query, with alpha query expansion when ``qe`` > 0.
        ``params`` (else those of ``caller_search_params``) are tunables for this call only."""
        own = tunables(params if params is not None else (_CALLER_SEARCH_PARAMS.get() or {})) or None
        q = queries
        if qe > 0:
            from .retrieval.qe import expand_queries

            sims, nn = index.search(q, qe, where=where, params=own)
            flat_nn = nn.ravel()
            vecs = index.get_vectors(np.where(flat_nn == -1, 0, flat_nn))
            rows = np.where(nn == -1, -1, np.arange(nn.size).reshape(nn.shape))
            q = expand_queries(q, vecs, sims, rows, qe, alpha=qe_alpha)
        return index.search(q, k, where=where, params=own)
