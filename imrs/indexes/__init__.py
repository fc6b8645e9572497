"""ID-mapped cosine indexes over L2-normalised float32 vectors, one API for six kinds.

``flat_ip`` is exact; ``hnsw``, ``ivf_flat``, ``ivf_pq`` and ``annoy`` are approximate, in this
process; ``milvus`` keeps the vectors in a Milvus collection (Milvus Lite file or a server). All of
them take incremental ``add`` (upsert) and ``remove`` with results correct right after the call,
report cosine scores, and save to / load from a directory (native file + ``.npy`` + ``meta.json``,
never pickle). See ``base`` for the slot design, ``faiss_index`` / ``annoy_index`` for how each
kind handles what its library cannot do natively (HNSW/Annoy removal, Annoy insertion, IVF
training on tiny collections).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import UnknownIndexError
from .annoy_index import AnnoyForestIndex
from .base import VectorIndex, load_meta
from .faiss_index import FlatIPIndex, HNSWIndex, IVFFlatIndex, IVFPQIndex
from .params import INDEX_KINDS, auto_params, check_kind, validate_params


def _milvus_class() -> type[VectorIndex]:
    """Imported lazily: pymilvus is an optional extra (``imrs[scale]``) and costs ~0.5 s to import."""
    from .milvus_index import MilvusIndex

    return MilvusIndex


log = logging.getLogger(__name__)

__all__ = ["INDEX_KINDS", "VectorIndex", "auto_params", "load_index", "make_index"]

_REGISTRY: dict[str, type[VectorIndex] | None] = {
    **{cls.kind: cls for cls in (FlatIPIndex, HNSWIndex, IVFFlatIndex, IVFPQIndex, AnnoyForestIndex)},
    "milvus": None,  # resolved on first use by _index_class
}
assert tuple(_REGISTRY) == INDEX_KINDS


def _index_class(kind: str) -> type[VectorIndex]:
    cls = _REGISTRY[kind]
    if cls is None:
        cls = _REGISTRY[kind] = _milvus_class()
    return cls


def make_index(kind: str, dim: int, n_hint: int | None = None, **params: Any) -> VectorIndex:
    """A new empty index of ``kind``.

    ``n_hint`` (expected collection size) seeds the auto parameters; those that depend on the
    data (IVF lists, PQ bits, Annoy trees) are settled again from the real count when the structure
    is trained or built. ``params`` override auto values and stay fixed; tunables meant for another
    kind (``nprobe`` for ``hnsw``) are ignored so one config can serve several kinds.
    """
    check_kind(kind)
    dim = int(dim)
    given = validate_params(kind, dim, params)
    ignored = sorted(set(params) - set(given))
    if ignored:
        log.debug("%s ignores parameters for other kinds: %s", kind, ", ".join(ignored))
    full = {**auto_params(kind, n_hint or 0, dim), **given}
    return _index_class(kind)(dim, full, frozenset(given))


def load_index(directory: str | Path, mmap: bool = False, remote: dict[str, Any] | None = None) -> VectorIndex:
    """Load what ``VectorIndex.save`` wrote. With ``mmap`` the native index (FAISS
    ``IO_FLAG_MMAP_IFC``; Annoy always maps, here without prefaulting) and ``vectors.npy`` are
    memory-mapped; the first add/remove copies them into memory. ``remote`` overrides what a
    kind that keeps its vectors elsewhere (Milvus) reads from its saved state: where to find them,
    how thoroughly to check them (see ``MilvusIndex._load``); other kinds ignore it."""
    directory = Path(directory)
    meta = load_meta(directory)
    kind = meta["kind"]
    if remote and kind == "milvus":
        meta["state"] = {**meta["state"], **remote}
    if kind not in _REGISTRY:
        raise UnknownIndexError(f"index in {directory} is of unknown kind {kind!r}; this IMRS knows "
                                f"{', '.join(INDEX_KINDS)}")
    return _index_class(kind)._load(directory, meta, mmap)
