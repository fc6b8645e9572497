"""Embedding caches: the expensive part of indexing, kept so nothing is ever embedded twice.

One cache per (collection, backbone) for base images, one per (term, backbone) for dynamic images
(``dyn_emb_<slug>_<backbone>``). A collection's caches are append-only shard stores
(``<name>.store/``, see :mod:`imrs.shards`): a change writes only its own rows. Single NPZ files
(``<name>.npz``) remain the import/export format (``imrs merge``, seeds, benchmarks) and are what
caches were before stores; ``EmbeddingSet.load`` / ``save`` / ``load_ids`` take either. Arrays
only (ids int64, relpaths unicode, vectors float32), loaded with ``allow_pickle=False``, written
atomically.

Each file also names the runtime tag its vectors came from ("fp32" for every float runtime, or
"int8-<model key>", see :mod:`imrs.encoders.int8`; files from before the tag existed are fp32).
Sets of different tags are never combined: their vectors are close but not interchangeable.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError
from .fsutil import atomic_savez

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FP32 = "fp32"


def check_same_runtime(sets: Sequence[EmbeddingSet]) -> str:
    """The one runtime tag of ``sets`` (empty sets do not count); StoreError if they differ."""
    tags = {s.runtime for s in sets if len(s)} or {s.runtime for s in sets}
    if len(tags) > 1:
        raise StoreError(f"refusing to mix embeddings of different runtimes: {sorted(tags)} "
                         "(re-embed with one runtime: `imrs index --runtime ...`)")
    return tags.pop() if tags else FP32


@dataclass
class EmbeddingSet:
    """Rows of one backbone's embeddings; the unit that caches, merges and indexes exchange."""

    backbone: str
    ids: np.ndarray  # int64 (n,)
    relpaths: np.ndarray  # unicode (n,)
    vectors: np.ndarray  # float32 (n, dim)
    runtime: str = FP32  # the encoder's runtime tag: which numerics made these vectors

    def __post_init__(self) -> None:
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int64).reshape(-1)
        self.relpaths = np.asarray(self.relpaths, dtype=str).reshape(-1)
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            self.vectors = self.vectors.reshape(len(self.ids), -1)
        if not (len(self.ids) == len(self.relpaths) == len(self.vectors)):
            raise StoreError(
                f"embedding set rows disagree: {len(self.ids)} ids, {len(self.relpaths)} paths, "
                f"{len(self.vectors)} vectors")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, backbone: str, dim: int, runtime: str = FP32) -> EmbeddingSet:
        return cls(backbone, np.zeros(0, np.int64), np.zeros(0, dtype="<U1"), np.zeros((0, dim), np.float32),
                   runtime)

    def select(self, mask_or_idx: np.ndarray) -> EmbeddingSet:
        return EmbeddingSet(self.backbone, self.ids[mask_or_idx], self.relpaths[mask_or_idx],
                            self.vectors[mask_or_idx], self.runtime)

    def without(self, ids: Iterable[int]) -> EmbeddingSet:
        drop = np.fromiter((int(i) for i in ids), dtype=np.int64)
        return self.select(~np.isin(self.ids, drop))

    def concat(self, other: EmbeddingSet) -> EmbeddingSet:
        if len(other) and len(self) and other.dim != self.dim:
            raise StoreError(f"cannot combine {self.dim}-d and {other.dim}-d embeddings")
        runtime = check_same_runtime([self, other])
        vecs = other.vectors if not len(self) else (self.vectors if not len(other)
                                                    else np.concatenate([self.vectors, other.vectors]))
        return EmbeddingSet(self.backbone, np.concatenate([self.ids, other.ids]),
                            np.concatenate([self.relpaths, other.relpaths]), vecs, runtime)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write all rows to ``path``: a single NPZ file, or the whole content of a shard store."""
        from .shards import ShardStore, is_store

        if is_store(path):
            ShardStore(path).replace(self)
            return Path(path)
        atomic_savez(path, ids=self.ids, relpaths=self.relpaths, vectors=self.vectors,
                     backbone=np.asarray(self.backbone), runtime=np.asarray(self.runtime),
                     format_version=np.asarray(FORMAT_VERSION))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], backbone: str | None = None,
             runtime: str | None = None) -> EmbeddingSet:
        """``backbone``/``runtime``: what the caller expects; another one in the file is an error."""
        from .shards import ShardStore, is_store

        if is_store(path):
            out = ShardStore(path).load()
            if backbone is not None and out.backbone not in (backbone, "unknown"):
                raise StoreError(f"{path} holds {out.backbone} embeddings, not {backbone}")
        else:
            file_backbone, arrays = _read(path, backbone, ("ids", "relpaths", "vectors", "runtime"))
            ids, relpaths, vectors, file_runtime = arrays
            out = cls(file_backbone, ids, relpaths, vectors, str(file_runtime))
        if runtime is not None and out.runtime != runtime and len(out):
            raise RuntimeMismatchError(f"{path} holds {out.runtime} embeddings, not {runtime}")
        return out


def load_ids(path: str | os.PathLike[str], backbone: str | None = None) -> np.ndarray:
    """Only a cache's ids (NPZ members load one by one): what a consistency check compares, at a
    few hundred kB for 10k rows instead of the vectors' tens of MB."""
    from .shards import ShardStore, is_store

    if is_store(path):
        store = ShardStore(path)
        found = str(store.manifest().get("backbone") or "unknown")
        if backbone is not None and found not in (backbone, "unknown"):
            raise StoreError(f"{path} holds {found} embeddings, not {backbone}")
        return store.load_ids()
    _, (ids,) = _read(path, backbone, ("ids",))
    return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)


def _read(path: str | os.PathLike[str], backbone: str | None, wanted: Sequence[str]
          ) -> tuple[str, list[Any]]:
    """(file's backbone, the ``wanted`` arrays) of a validated cache; older key names accepted
    (and files from before the runtime tag are fp32)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            names = {"ids": "ids", "relpaths": "relpaths" if "relpaths" in keys else "paths",
                     "vectors": "vectors" if "vectors" in keys else "embeddings"}
            missing = set(names.values()) - keys
            if missing:
                raise StoreError(f"{path}: not an IMRS embedding file (missing {sorted(missing)})")
            file_backbone = str(z["backbone"]) if "backbone" in keys else (backbone or "unknown")
            arrays: list[Any] = [(str(z["runtime"]) if "runtime" in keys else FP32) if k == "runtime"
                                 else z[names[k]] for k in wanted]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        # truncated or garbage zip, a bad CRC, or an object array that would need pickle
        raise StoreError(f"{path}: unreadable embedding file ({type(exc).__name__}: {exc})") from exc
    if backbone is not None and file_backbone not in (backbone, "unknown"):
        raise StoreError(f"{path} holds {file_backbone} embeddings, not {backbone}")
    return file_backbone, arrays


def concat_all(sets: Sequence[EmbeddingSet]) -> EmbeddingSet:
    """All rows in one copy (pairwise ``concat`` in a loop copies the big base cache once per term);
    sets of different runtimes are refused."""
    full = [s for s in sets if len(s)] or list(sets[:1])
    if len(full) == 1:
        return full[0]
    runtime = check_same_runtime(full)
    if len({s.dim for s in full}) > 1:
        raise StoreError(f"cannot combine embeddings of dims {sorted({s.dim for s in full})}")
    return EmbeddingSet(full[0].backbone, np.concatenate([s.ids for s in full]),
                        np.concatenate([s.relpaths for s in full]), np.concatenate([s.vectors for s in full]),
                        runtime)


class RuntimeMismatchError(StoreError):
    """An embedding file made by another runtime than the one expected: re-embed, never mix."""


def read_runtime(path: str | os.PathLike[str]) -> str | None:
    """The runtime tag of a cache without reading its vectors (None if unreadable)."""
    from .shards import ShardStore, is_store

    try:
        if is_store(path):
            return ShardStore(path).runtime()
        with np.load(path, allow_pickle=False) as z:
            return str(z["runtime"]) if "runtime" in z.files else FP32
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, StoreError):
        return None


@dataclass
class MergeReport:
    inputs: list[str] = field(default_factory=list)
    rows_in: int = 0
    rows_out: int = 0
    dropped_missing: int = 0
    dropped_duplicate: int = 0
    skipped_files: list[str] = field(default_factory=list)
    output: str | None = None


def merge(sets: Sequence[EmbeddingSet], exists: Callable[[str], bool] | None = None,
          report: MergeReport | None = None) -> EmbeddingSet:
    """First occurrence of an id wins (so pass the most trusted cache first); rows whose file is gone
    are dropped so a stale cache can never resurrect a deleted image."""
    report = report or MergeReport()
    if not sets:
        raise StoreError("nothing to merge")
    backbones = {s.backbone for s in sets} - {"unknown"}
    if len(backbones) > 1:
        raise StoreError(f"cannot merge embeddings of different backbones: {sorted(backbones)}")
    check_same_runtime(sets)
    dims = {s.dim for s in sets if len(s)}
    if len(dims) > 1:
        raise StoreError(f"cannot merge embeddings of different dims: {sorted(dims)}")
    backbone = backbones.pop() if backbones else sets[0].backbone
    combined = concat_all(sets)
    report.rows_in += len(combined)
    _, first = np.unique(combined.ids, return_index=True)
    keep = np.zeros(len(combined), dtype=bool)
    keep[first] = True
    report.dropped_duplicate += int(len(combined) - keep.sum())
    if exists is not None:
        alive = np.fromiter((exists(str(p)) for p in combined.relpaths), dtype=bool, count=len(combined))
        report.dropped_missing += int((keep & ~alive).sum())
        keep &= alive
    order = np.sort(np.flatnonzero(keep))  # keep input order: stable, diff-friendly output
    out = combined.select(order)
    out.backbone = backbone
    report.rows_out = len(out)
    return out


def merge_files(paths: Sequence[str | os.PathLike[str]], backbone: str, out_path: str | os.PathLike[str],
                exists: Callable[[str], bool] | None = None) -> MergeReport:
    """Merge NPZ files of one backbone into ``out_path`` (written atomically). Unreadable inputs are
    reported and skipped rather than failing the whole merge, since caches come from many places."""
    report = MergeReport()
    sets = []
    for p in paths:
        try:
            sets.append(EmbeddingSet.load(p, backbone=backbone))
            report.inputs.append(str(p))
        except StoreError as exc:
            log.warning("skipping %s", exc)
            report.skipped_files.append(str(p))
    if not sets:
        raise StoreError(f"no readable {backbone} embedding files among {len(paths)} input(s)")
    merged = merge(sets, exists=exists, report=report)
    merged.save(out_path)
    report.output = str(out_path)
    log.info("merged %d file(s): %d rows in, %d out (%d missing, %d duplicate)", len(sets),
             report.rows_in, report.rows_out, report.dropped_missing, report.dropped_duplicate)
    return report


def merged_name(backbone: str) -> str:
    return f"emb_merged_{backbone}.npz"


def base_name(backbone: str, suffix: str = ".store") -> str:
    """The base cache's name: a shard store (``.store``), or the single file it once was (``.npz``)."""
    return f"emb_{backbone}{suffix}"


def dynamic_name(slug: str, backbone: str, suffix: str = ".store") -> str:
    return f"dyn_emb_{slug}_{backbone}{suffix}"
