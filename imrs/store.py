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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .embset import FORMAT_VERSION, FP32, EmbeddingRows, check_same_runtime, load_npz, read_npz
from .errors import StoreError
from .fsutil import atomic_savez
from .shards import ShardStore, is_store

log = logging.getLogger(__name__)


class EmbeddingSet(EmbeddingRows):
    """Rows of one backbone's embeddings; the unit that caches, merges and indexes exchange. The
    arrays live in :class:`imrs.embset.EmbeddingRows`; this adds reading and writing either layout."""

    @classmethod
    def of(cls, rows: EmbeddingRows) -> EmbeddingSet:
        return rows if isinstance(rows, cls) else cls(rows.backbone, rows.ids, rows.relpaths, rows.vectors,
                                                      rows.runtime)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write all rows to ``path``: a single NPZ file, or the whole content of a shard store."""
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
        if is_store(path):
            out = cls.of(ShardStore(path).load())
            if backbone is not None and out.backbone not in (backbone, "unknown"):
                raise StoreError(f"{path} holds {out.backbone} embeddings, not {backbone}")
        else:
            out = cls.of(load_npz(path, backbone))
        if runtime is not None and out.runtime != runtime and len(out):
            raise RuntimeMismatchError(f"{path} holds {out.runtime} embeddings, not {runtime}")
        return out


def load_ids(path: str | os.PathLike[str], backbone: str | None = None) -> np.ndarray:
    """Only a cache's ids (NPZ members load one by one): what a consistency check compares, at a
    few hundred kB for 10k rows instead of the vectors' tens of MB."""
    if is_store(path):
        store = ShardStore(path)
        found = str(store.manifest().get("backbone") or "unknown")
        if backbone is not None and found not in (backbone, "unknown"):
            raise StoreError(f"{path} holds {found} embeddings, not {backbone}")
        return store.load_ids()
    _, (ids,) = read_npz(path, backbone, ("ids",))
    return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)


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
