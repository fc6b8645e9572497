"""The facade: one object owns a collection's catalog, embeddings, encoder and live index.

The CLI and the Streamlit app both talk only to ``Collection`` so there is one place where state
changes, one writer lock, and one definition of "incremental": files are embedded once, vectors
are added to or removed from the live index in place, and every change is persisted atomically
(NPZ + snapshot pointer + SQLite transaction).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import snapshot as snap
from .catalog import Catalog, ImageRecord, label_for
from .config import DEFAULT_INDEXER, state_dir_for
from .errors import EmptyCollectionError, IMRSError, SnapshotError, StoreError
from .fsutil import atomic_write_json, read_json
from .ids import normalise_relpath, stable_id
from .locking import WriterLock
from .store import (
    EmbeddingSet,
    RuntimeMismatchError,
    base_name,
    dynamic_name,
    merge,
    merge_files,
    merged_name,
    read_runtime,
)

if TYPE_CHECKING:
    from PIL import Image

    from .encoders import Encoder
    from .indexes import VectorIndex

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
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    runtime: str = ""  # runtime tag of the vectors now cached ("fp32", "int8-<key>")
    restamped: str = ""  # the previous tag, when a runtime change re-embedded everything
    runtime_note: str = ""  # the int8 gate's verdict, or why int8 is not in use, when it was considered

    def summary(self) -> str:
        return (f"{self.scanned} files: {self.added} new, {self.changed} changed, {self.removed} removed, "
                f"{self.unchanged} unchanged; embedded {self.embedded}, {len(self.failed)} failed "
                f"in {self.seconds:.1f}s")


@dataclass
class RemoveReport:
    removed: int = 0
    files_deleted: int = 0
    missing: int = 0


def is_dynamic_relpath(relpath: str) -> bool:
    return relpath.split("/", 1)[0].startswith(DYNAMIC_PREFIX)


def scan_folder(root: Path) -> list[tuple[str, float, int]]:
    """(relpath, mtime, size) of every image under ``root`` except dynamic and hidden folders.

    os.scandir with cached stat keeps a 30k-file rescan well under a second: this runs on every
    ``imrs index`` and app start, so it must cost far less than embedding even one image.
    """
    from .imageio import IMAGE_EXTENSIONS

    out: list[tuple[str, float, int]] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc)
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = f"{prefix}{e.name}"
            if e.is_dir(follow_symlinks=True):
                if not prefix and e.name.startswith(DYNAMIC_PREFIX):
                    continue
                stack.append((Path(e.path), rel + "/"))
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                st = e.stat()
                out.append((normalise_relpath(rel), st.st_mtime, st.st_size))
    out.sort()
    return out


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
        self.catalog = Catalog(self.state_dir / "catalog.sqlite")
        self.catalog.set_kv("root", str(self.root))
        self.writer = WriterLock(self.state_dir / "write.lock")
        self._index_lock = threading.RLock()
        self._encoder_lock = threading.Lock()  # two UI sessions must not load the model twice
        self._encoder = encoder
        self._encoder_given = encoder is not None
        self._index: VectorIndex | None = None
        self._index_version: str | None = None  # live snapshot version our in-memory index matches
        atomic_write_json(self.state_dir / "collection.json", {"root": str(self.root)})

    # -- paths ---------------------------------------------------------------------------------
    def _default_dynamic_root(self) -> Path:
        """Dynamic images live beside the base ones (``<root>/dynamic_<slug>/``) when the folder is
        writable; a read-only collection (a shared dataset) keeps them in the state folder instead."""
        if os.access(self.root, os.W_OK):
            return self.root
        return self.state_dir / "dynamic"

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
    def index(self) -> VectorIndex:
        with self._index_lock:
            if self._index is None:
                self._index = self._open_index()
            return self._index

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
        caches (no embedding), else empty."""
        self._index_version = self._disk_version()
        if snap.snapshot_exists(self.snap_dir, self.live_name):
            try:
                index, manifest, _ = snap.load_snapshot(self.snap_dir, self.live_name,
                                                        expect_backbone=self.backbone, expect_dim=self.dim)
                cached = self.cached_runtime()
                if cached is not None and manifest.extra.get("runtime", "fp32") != cached:
                    raise SnapshotError(f"live index holds {manifest.extra.get('runtime', 'fp32')} vectors, "
                                        f"the caches {cached}")
                if self.index_params:
                    index.set_params(**_tunables(self.index_params))
                log.info("loaded live index %s (%d vectors)", self.live_name, len(index))
                return index
            except SnapshotError as exc:
                log.warning("live snapshot unusable, rebuilding from embeddings: %s", exc)
        emb = self.all_embeddings()
        return self._build_index(emb)

    def _build_index(self, emb: EmbeddingSet) -> VectorIndex:
        from .indexes import make_index

        index = make_index(self.indexer, self.dim, n_hint=max(len(emb), 1), **self.index_params)
        if len(emb):
            index.add(emb.ids, emb.vectors)
        return index

    def rebuild_index(self, indexer: str | None = None, index_params: dict[str, Any] | None = None) -> None:
        """Build the index again from cached embeddings (new kind or parameters); embeds nothing."""
        with self.writing():
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
    def base_npz(self) -> Path:
        return self.emb_dir / base_name(self.backbone)

    def dynamic_npz(self, slug: str) -> Path:
        return self.emb_dir / dynamic_name(slug, self.backbone)

    def dynamic_npzs(self) -> list[Path]:
        return sorted(self.emb_dir.glob(f"dyn_emb_*_{self.backbone}.npz"))

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
        """Write ``emb_merged_<backbone>.npz`` from every cache and add rows the live index lacks.

        Returns (merged file, rows in it, rows newly added to the index)."""
        with self.writing():
            paths = [p for p in [self.base_npz(), *self.dynamic_npzs(), *map(Path, extra_npz)] if p.exists()]
            if not paths:
                raise StoreError(f"no {self.backbone} embedding caches to merge yet: index the collection first")
            out = self.emb_dir / merged_name(self.backbone)
            report = merge_files(paths, self.backbone, out, exists=lambda rel: self.abspath(rel).exists())
            merged = EmbeddingSet.load(out)
            added = 0
            with self._index_lock:
                have = set(self.index.ids().tolist())
                new = np.array([i not in have for i in merged.ids.tolist()], dtype=bool)
                if new.any():
                    fresh = merged.select(new)
                    self.index.add(fresh.ids, fresh.vectors)
                    self.catalog.upsert(_records_for(fresh.relpaths, self.catalog) )
                    added = int(new.sum())
            if added:
                self._persist_index()
            return out, report.rows_out, added

    # -- indexing a folder ------------------------------------------------------------------------
    def sync(self, progress: Progress | bool = False, batch_size: int | None = None) -> SyncReport:
        """Bring catalog, cache and index in line with the folder: embed only new or changed files,
        drop vanished ones. Re-running on an unchanged folder embeds nothing."""
        t0 = time.perf_counter()
        report = SyncReport()
        with self.writing():
            files = scan_folder(self.root)
            report.scanned = len(files)
            if not files and not len(self.catalog):
                raise EmptyCollectionError(f"no images found in {self.root} "
                                           f"(looked for .jpg, .png, .webp, ... in all subfolders)")
            known = self.catalog.file_stats()
            base = self.load_base_embeddings()
            todo = _plan(files, known, base, report)
            encoder: Encoder | None = None
            tag = base.runtime
            restamp = False
            if todo or self._runtime_may_change(base):
                encoder = self._sync_encoder([self.root / rel for rel, _, _ in files])
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
                report.failed = [(todo[i][0], reason) for i, reason in res.failures]
                report.embedded = len(kept)
                new_emb = EmbeddingSet(self.backbone, [stable_id(r) for r, _, _ in kept],
                                       [r for r, _, _ in kept], res.vectors, runtime=tag)
                records = [ImageRecord.for_path(rel, source="base", mtime=mtime, size=size)
                           for rel, mtime, size in kept]
                _fill_image_facts(records, self.root)
            drop = set(gone_ids) | set(stale_ids)
            if drop or len(new_emb) or restamp:
                base = base.without(drop).concat(new_emb)
                base.save(self.base_npz())
                self.catalog.delete(gone_ids, allow_base=True)  # files already gone; never touches files
                self.catalog.upsert(records)
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
            elif not snap.snapshot_exists(self.snap_dir, self.live_name):
                self._persist_index()
        report.seconds = time.perf_counter() - t0
        log.info("sync %s: %s", self.root, report.summary())
        return report

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
            res = encoder.embed_paths([self.abspath(str(r), "dynamic") for r in emb.relpaths])
            emb = EmbeddingSet(self.backbone, emb.ids[res.kept], emb.relpaths[res.kept], res.vectors, runtime=tag)
            emb.save(npz)
            changed = True
        return changed

    def _persist_index(self) -> None:
        with self._index_lock:
            snap.save_snapshot(self.snap_dir, self.live_name, self.index, self.backbone,
                               collection_root=str(self.root), extra={"runtime": self._runtime_label()})
            self._index_version = self._disk_version()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """The writer lock, with the in-memory index brought up to date first. Every mutation of
        the collection happens inside this."""
        with self.writer.hold():
            self.refresh_if_stale()
            yield

    # -- dynamic images -----------------------------------------------------------------------------
    def add_dynamic(self, slug: str, records: Sequence[ImageRecord], vectors: np.ndarray) -> int:
        """Add already-embedded dynamic images: catalog rows, index vectors, the term's NPZ. The
        expansion engine calls this after download and dedupe; nothing else is re-embedded."""
        if not records:
            return 0
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(records), self.dim):
            raise StoreError(f"expected {len(records)}x{self.dim} vectors, got {vectors.shape}")
        for r in records:
            if r.source != "dynamic" or not is_dynamic_relpath(r.relpath):
                raise IMRSError(f"{r.relpath}: dynamic images must live under {DYNAMIC_PREFIX}<term>/")
        tag = getattr(self.encoder, "runtime_tag", "fp32")
        cached = self.cached_runtime()
        if cached is not None and cached != tag:
            raise IMRSError(f"the collection holds {cached} vectors but the encoder writes {tag}: "
                            "run `imrs index` first so one runtime embeds everything")
        with self.writing():
            new = EmbeddingSet(self.backbone, [r.id for r in records], [r.relpath for r in records], vectors,
                               runtime=tag)
            path = self.dynamic_npz(slug)
            old = EmbeddingSet.load(path, self.backbone) if path.exists() else EmbeddingSet.empty(
                self.backbone, self.dim, runtime=tag)
            old.without(new.ids).concat(new).save(path)
            self.catalog.upsert(records)
            with self._index_lock:
                self.index.add(new.ids, new.vectors)
            self._persist_index()
        return len(records)

    def remove_dynamic(self, ids: Iterable[int]) -> RemoveReport:
        """Remove dynamic images everywhere (file, catalog, index, NPZ). Refuses the whole request if
        any id is a base image: a user's own files are never deleted by IMRS."""
        id_list = sorted({int(i) for i in ids})
        report = RemoveReport()
        if not id_list:
            return report
        with self.writing():
            recs = self.catalog.get_many(id_list)
            base = [r.relpath for r in recs.values() if r.source != "dynamic" or not is_dynamic_relpath(r.relpath)]
            if base:
                raise IMRSError(f"refusing to remove base image(s): {', '.join(base[:3])}"
                                f"{' ...' if len(base) > 3 else ''}; only dynamic images can be removed")
            report.missing = len(id_list) - len(recs)
            by_slug: dict[str, list[int]] = {}
            for r in recs.values():
                by_slug.setdefault(r.relpath.split("/", 1)[0][len(DYNAMIC_PREFIX):], []).append(r.id)
            self.catalog.delete(recs.keys())
            with self._index_lock:
                self.index.remove(np.asarray(list(recs.keys()), dtype=np.int64))
            for slug_ids in by_slug.values():
                for npz in self.dynamic_npzs():
                    emb = EmbeddingSet.load(npz, self.backbone)
                    if np.isin(emb.ids, slug_ids).any():
                        emb.without(slug_ids).save(npz)
            self._persist_index()
            for r in recs.values():
                path = self._safe_dynamic_file(r.relpath)
                if path is not None and path.exists():
                    path.unlink()
                    report.files_deleted += 1
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
                       qe_alpha: float = 3.0) -> list[list[SearchHit]]:
        """k nearest images per query. ``qe`` > 0 turns on alpha query expansion: the query is
        re-issued as the alpha-weighted mean of itself and its top ``qe`` hits (measured by
        ``imrs bench``: +0.012 P@10 and +0.04 full mAP on Caltech-101 with qe=5, alpha=3)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        self.refresh_if_stale()  # a long-lived reader (the app) sees other writers' changes
        with self._index_lock:
            if len(self.index) == 0:
                raise EmptyCollectionError("the index is empty: index a folder first (imrs index FOLDER)")
            if qe > 0:
                from .retrieval.qe import expand_queries

                sims, nn = self.index.search(q, qe)
                flat_nn = nn.ravel()
                vecs = self.index.get_vectors(np.where(flat_nn == -1, 0, flat_nn))
                rows = np.where(nn == -1, -1, np.arange(nn.size).reshape(nn.shape))
                q = expand_queries(q, vecs, sims, rows, qe, alpha=qe_alpha)
            scores, ids = self.index.search(q, k)
        flat = [int(i) for i in ids.ravel() if i != -1]
        recs = self.catalog.get_many(flat)
        out = []
        for srow, irow in zip(scores, ids, strict=True):
            hits = []
            for s, i in zip(srow.tolist(), irow.tolist(), strict=True):
                if i == -1:
                    continue
                r = recs.get(i)
                rel = r.relpath if r else ""
                hits.append(SearchHit(id=i, score=float(s), relpath=rel,
                                      path=self.abspath(rel, r.source if r else None),
                                      label=r.label if r else "", source=r.source if r else "base", record=r))
            out.append(hits)
        return out

    def embed_query_text(self, text: str) -> np.ndarray:
        text = text.strip()
        if not text:
            raise IMRSError("empty text query")
        self._warn_if_query_runtime_differs()
        if self.encoder.supports_text:
            return self.encoder.embed_texts([text])[0]
        from .textmap import text_query_vector

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
        with self.writing(), self._index_lock:
            return snap.save_snapshot(self.snap_dir, name, self.index, self.backbone, catalog=self.catalog,
                                      collection_root=str(self.root), extra={"runtime": self._runtime_label()})

    def load_snapshot(self, name: str) -> snap.Manifest:
        """Restore index and catalog from a named snapshot (refused if made with another backbone, or
        from vectors of another runtime than the caches hold: the next sync would mix them)."""
        with self.writing():
            index, manifest, cat_path = snap.load_snapshot(self.snap_dir, name, expect_backbone=self.backbone,
                                                           expect_dim=self.dim)
            held = manifest.extra.get("runtime", "fp32")
            if held != self._runtime_label():
                raise SnapshotError(f"snapshot {name!r} holds {held} vectors but the collection's caches are "
                                    f"{self._runtime_label()}: re-index with that runtime first")
            if cat_path is not None:
                Catalog(cat_path).backup_to(self.catalog.path)
                self.catalog.close()
                self.catalog = Catalog(self.catalog.path)
            with self._index_lock:
                self._index = index
                self.indexer = manifest.indexer
            self._persist_index()
            return manifest

    def list_snapshots(self) -> list[snap.Manifest]:
        return [m for m in snap.list_snapshots(self.snap_dir) if not m.name.startswith("live-")]

    # -- reporting ----------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        per_backbone: dict[str, dict[str, Any]] = {}
        for npz in sorted(self.emb_dir.glob("*.npz")):
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
            d["bytes"] += npz.stat().st_size
            d["files"].append(npz.name)
        snaps = snap.list_snapshots(self.snap_dir)
        return {"root": str(self.root), "state_dir": str(self.state_dir),
                "images": len(self.catalog), "base": self.catalog.count("base"),
                "dynamic": self.catalog.count("dynamic"), "labels": len(self.catalog.labels()),
                "embeddings": per_backbone,
                "snapshots": [{"name": m.name, "backbone": m.backbone, "indexer": m.indexer, "count": m.count,
                               "created": m.created} for m in snaps]}


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


def _records_for(relpaths: Iterable[str], catalog: Catalog) -> list[ImageRecord]:
    """Catalog rows for merged-in cache rows the catalog does not know yet."""
    rels = [str(r) for r in relpaths]
    have = catalog.get_many([stable_id(r) for r in rels])
    out = []
    for rel in rels:
        i = stable_id(rel)
        if i not in have:
            out.append(ImageRecord.for_path(rel, source="dynamic" if is_dynamic_relpath(rel) else "base",
                                            label=label_for(rel)))
    return out


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
