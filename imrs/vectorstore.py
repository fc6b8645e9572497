"""A collection's embedding caches on disk: where each lives, reading them, writing deltas, merging.

One job: the vectors' source of truth (``<state>/emb/``), one shard store (``imrs.shards``) per
cache: the base cache of the user's images and one cache per web term. Everything here works on
files alone; when a change may happen (the writer lock, the intent record) is the facade's
business, and the order across catalog, caches and index is ``imrs.reconcile``'s.

A single-file ``<name>.npz`` from before stores is read as it is until the first write migrates
it (``reconcile.migrate``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog, ImageRecord, label_for
from .errors import StoreError
from .ids import stable_id
from .layout import slug_of
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

log = logging.getLogger(__name__)


class VectorStore:
    """The ``backbone`` caches of one collection. ``exists(relpath)`` says whether an image's file
    is still there: merged reads drop rows whose file is gone."""

    def __init__(self, emb_dir: Path, backbone: str, dim: int, exists: Callable[[str], bool]) -> None:
        self.emb_dir = emb_dir
        self.backbone = backbone
        self.dim = dim
        self._exists = exists

    # -- where the caches live ----------------------------------------------------------------------
    def _cache_path(self, store: str, legacy: str) -> Path:
        path = self.emb_dir / store
        old = self.emb_dir / legacy
        return old if not path.exists() and old.is_file() else path

    def base_path(self) -> Path:
        """The base cache (a shard store; a not yet migrated single NPZ file until the next write)."""
        return self._cache_path(base_name(self.backbone), base_name(self.backbone, ".npz"))

    def dynamic_path(self, slug: str) -> Path:
        return self._cache_path(dynamic_name(slug, self.backbone), dynamic_name(slug, self.backbone, ".npz"))

    def dynamic_paths(self) -> list[Path]:
        stores = set(self.emb_dir.glob(f"dyn_emb_*_{self.backbone}.store"))
        legacy = {p for p in self.emb_dir.glob(f"dyn_emb_*_{self.backbone}.npz")
                  if p.with_suffix(".store") not in stores}
        return sorted(stores | legacy)

    def existing_paths(self) -> list[Path]:
        return [p for p in [self.base_path(), *self.dynamic_paths()] if p.exists()]

    def cached_runtime(self) -> str | None:
        """Runtime tag of the base cache; None before anything was embedded."""
        path = self.base_path()
        return read_runtime(path) if path.exists() else None

    # -- writing ------------------------------------------------------------------------------------
    def write(self, path: Path, add: EmbeddingSet | None = None, remove: Iterable[int] = ()) -> int:
        """One change to one cache: a new delta in its store (never a rewrite of the whole cache)."""
        from .shards import ShardStore

        if path.is_file():  # a single-file cache the migration left: it did not read whole
            raise StoreError(f"cache {path} could not be migrated (damaged?): `imrs index` checks, moves it "
                             "aside and re-embeds its images")
        return ShardStore(path).update(add, remove, backbone=self.backbone, dim=self.dim)

    def save_rows(self, rows: EmbeddingSet) -> None:
        """Append rows to the cache they belong in: the base cache, or their term's dynamic cache."""
        slugs = np.array([slug_of(str(r)) for r in rows.relpaths], dtype=object)
        for slug in sorted(set(slugs.tolist()), key=lambda x: x or ""):
            part = rows.select(slugs == slug)
            path = self.base_path() if slug is None else self.dynamic_path(slug)
            self.write(path, add=part)

    def compact(self, before_change: Callable[[], None]) -> dict[str, int]:
        """Rewrite every store as one delta of its live rows; store name -> bytes written.
        ``before_change`` runs before the first rewrite (the intent record)."""
        from .shards import ShardStore

        out: dict[str, int] = {}
        for path in self.existing_paths():
            before_change()
            out[path.name] = ShardStore(path).compact(backbone=self.backbone, dim=self.dim)
        return out

    def remove_everywhere(self, ids: Sequence[int]) -> None:
        """Drop ``ids`` from every dynamic cache that holds one of them."""
        for path in self.dynamic_paths():
            if np.isin(load_ids(path, self.backbone), ids).any():
                self.write(path, remove=ids)

    # -- reading ------------------------------------------------------------------------------------
    def load_base(self) -> EmbeddingSet:
        path = self.base_path()
        if path.exists():
            try:
                emb = EmbeddingSet.load(path, backbone=self.backbone)
                if len(emb) and emb.dim != self.dim:
                    raise StoreError(f"{path}: {emb.dim}-d vectors but {self.backbone} gives {self.dim}-d")
                return emb
            except StoreError as exc:
                log.warning("ignoring damaged cache (will re-embed): %s", exc)
        return EmbeddingSet.empty(self.backbone, self.dim)

    def load_all(self, extra: Sequence[str | os.PathLike[str]] = ()) -> EmbeddingSet:
        """Base cache + dynamic caches (+ any extra files, e.g. benchmark caches), merged by the
        store's rules: ids deduped (first wins), rows whose image file is gone dropped."""
        base = self.load_base()
        sets = [base]
        expect = base.runtime if len(base) else None  # one runtime: the base cache's, else the first
        for p in [*self.dynamic_paths(), *map(Path, extra)]:
            try:
                emb = EmbeddingSet.load(p, backbone=self.backbone, runtime=expect)
                expect = expect or (emb.runtime if len(emb) else None)
                sets.append(emb)
            except RuntimeMismatchError as exc:
                log.warning("skipping %s: vectors of another runtime are never mixed (imrs index re-embeds them)",
                            exc)
            except StoreError as exc:
                log.warning("skipping %s", exc)
        return merge(sets, exists=self._exists)

    def cached_ids(self) -> np.ndarray:
        """Ids of every row in this backbone's caches."""
        parts = [load_ids(p, self.backbone) for p in self.existing_paths()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def new_rows_from(self, paths: Sequence[Path]) -> EmbeddingSet:
        """Rows of ``paths`` that no cache of this backbone has and whose image file exists."""
        sets = []
        for p in paths:
            try:
                sets.append(EmbeddingSet.load(p, backbone=self.backbone))
            except StoreError as exc:
                log.warning("skipping %s", exc)
        if not sets:
            return EmbeddingSet.empty(self.backbone, self.dim)
        extra = merge(sets, exists=self._exists)
        if len(extra) and extra.dim != self.dim:
            raise StoreError(f"extra caches hold {extra.dim}-d vectors but {self.backbone} gives {self.dim}-d")
        return extra.select(np.isin(extra.ids, self.cached_ids(), invert=True))

    def write_merged(self, extras: Sequence[Path]) -> tuple[Path, int]:
        """``emb_merged_<backbone>.npz`` from every cache and ``extras``; (file, rows in it)."""
        paths = [p for p in [*self.existing_paths(), *extras] if p.exists()]
        out = self.emb_dir / merged_name(self.backbone)
        report = merge_files(paths, self.backbone, out, exists=self._exists)
        return out, report.rows_out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Every backbone's caches in this folder: rows, bytes, files, dim, runtimes (``imrs info``)."""
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
        return per_backbone


def records_for(relpaths: Iterable[str], catalog: Catalog, root: Path) -> list[ImageRecord]:
    """Catalog rows for merged-in cache rows the catalog does not know yet. Base rows get the
    file's mtime and size, so ``imrs index`` takes the merged vector as current, not re-embeds."""
    rels = [str(r) for r in relpaths]
    have = catalog.get_many([stable_id(r) for r in rels])
    out = []
    for rel in rels:
        if stable_id(rel) in have:
            continue
        slug = slug_of(rel)
        if slug is None:
            try:
                st = (root / rel).stat()
                facts: dict[str, Any] = {"mtime": st.st_mtime, "size": st.st_size}
            except OSError:
                facts = {}
            out.append(ImageRecord.for_path(rel, source="base", label=label_for(rel), **facts))
        else:
            out.append(ImageRecord.for_path(rel, source="dynamic", label=slug, slug=slug, term=slug))
    return out
