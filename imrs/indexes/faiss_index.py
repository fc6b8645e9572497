"""FAISS kinds: exact flat, HNSW with tombstones, IVF-Flat and IVF-PQ (+ exact re-rank).

All structures are labelled with slots (see ``base``). Inner product on normalised vectors is the
cosine, so FAISS's scores are returned as they are, except IVF-PQ whose shortlist is re-scored
exactly from the stored vectors.

Memory-mapped loads use ``IO_FLAG_MMAP_IFC``: in FAISS 1.15 it maps flat codes (flat, HNSW
storage) and IVF inverted lists in place. ``IO_FLAG_MMAP`` proper would turn IVF lists into
read-only ``OnDiskInvertedLists`` that cannot even be serialised back, so it is not used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..fsutil import atomic_path
from .base import VectorIndex
from .exact import rerank
from .params import MIN_AUTO_NBITS, MIN_POINTS_PER_CENTROID

log = logging.getLogger(__name__)

#: An IVF index that has grown this many times past its training set logs a rebuild() hint.
RETRAIN_HINT_GROWTH = 8

#: IVF-PQ re-ranks at least this many PQ candidates exactly, whatever k is.
MIN_RERANK_CANDIDATES = 64

_MMAP_FLAG: int = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)


def _write_index(index: faiss.Index, path: Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def _read_index(path: Path, mmap: bool) -> faiss.Index:
    return faiss.read_index(str(path), _MMAP_FLAG if mmap else 0)


def _fill_short_rows(q: np.ndarray, want: int, effort: int, max_effort: int,
                     run: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``run(queries, effort)`` for all queries, then again with 4x the effort for the rows that came
    back with fewer than ``want`` results (HNSW candidates eaten by tombstones, IVF probes that hit
    short lists), so rows are padded only when the index really holds fewer than ``want``."""
    D, L = run(q, effort)
    short = np.flatnonzero((L[:, :want] < 0).any(axis=1)) if want else np.zeros(0, np.int64)
    while len(short) and effort < max_effort:
        effort = min(max_effort, effort * 4)
        d, lab = run(q[short], effort)
        D[short], L[short] = d, lab
        short = short[(lab[:, :want] < 0).any(axis=1)]
    return D, L


def _bitmap_selector(bits: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """An ``IDSelectorBitmap`` over slot labels, and the packed array it points into (the caller
    keeps that alive for as long as the selector is used)."""
    packed = np.packbits(bits, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(packed)), packed


def _owned_copy(index: faiss.Index) -> faiss.Index:
    """A deep copy in owned memory: the way out of a mapped index before any mutation."""
    return faiss.deserialize_index(faiss.serialize_index(index))


class _FaissIndex(VectorIndex):
    """Shared persistence for kinds whose native structure is one ``faiss.Index`` in ``_index``."""

    _index: faiss.Index | None

    def _save_native(self, path: Path) -> bool:
        if self._index is None:
            return False
        _write_index(self._index, path)
        return True

    def _load_native(self, path: Path, mmap: bool, state: dict[str, Any]) -> None:
        self._index = _read_index(path, mmap)

    def _materialize_native(self) -> None:
        if self._index is not None:
            self._index = _owned_copy(self._index)


class FlatIPIndex(_FaissIndex):
    """Exact search: ``IndexIDMap2(IndexFlatIP)``, labelled with slots.

    FAISS holds the vectors, so the slot table keeps none. ``remove_ids`` is native (O(n) shift);
    the dead slots it leaves in the table are squeezed out by relabelling ``id_map`` in place.
    """

    kind = "flat_ip"
    keeps_vectors = False

    def __init__(self, dim: int, params: dict[str, Any], explicit: frozenset[str] = frozenset()) -> None:
        super().__init__(dim, params, explicit)
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _on_append(self, slots: np.ndarray, vecs: np.ndarray) -> None:
        self._index.add_with_ids(vecs, slots)
        self._table.freeze()

    def _on_dead(self, slots: np.ndarray) -> None:
        self._index.remove_ids(faiss.IDSelectorBatch(slots))

    def _search_frozen(self, q: np.ndarray, k: int, mask: np.ndarray | None, params: dict[str, Any]
                       ) -> tuple[np.ndarray, np.ndarray]:
        if mask is None:
            return self._index.search(q, min(k, self._index.ntotal))
        sel, _packed = _bitmap_selector(mask)  # IndexIDMap2 translates positions to slot labels
        return self._index.search(q, min(k, int(np.count_nonzero(mask))), params=faiss.SearchParameters(sel=sel))

    def _vectors_at(self, slots: np.ndarray) -> np.ndarray:
        # labels are slots; one batched call (a Python loop of reconstruct() cost ~40 us a vector)
        return self._index.reconstruct_batch(np.ascontiguousarray(slots, dtype=np.int64))

    def _compact(self) -> None:
        t = self._table
        live = t.live_slots()
        remap = np.full(t.n, -1, np.int64)
        remap[live] = np.arange(len(live))
        labels = faiss.vector_to_array(self._index.id_map)
        faiss.copy_array_to_vector(remap[labels], self._index.id_map)
        self._index.construct_rev_map()
        t.reset(t.ids[live], None)
        t.freeze()

    def _rebuild(self) -> None:
        self._compact()

    def _native_bytes(self) -> int:
        n = self._index.ntotal
        # codes + id_map + rev_map (an unordered_map node is ~40 bytes)
        return int(n * (4 * self.dim + 8 + 40))


class HNSWIndex(_FaissIndex):
    """``IndexHNSWFlat`` (inner product); removal by tombstone, compaction by rebuilding.

    FAISS HNSW cannot delete a node without breaking the graph, so a removed or replaced vector
    keeps its node (still useful for routing) and is filtered out of results with an
    ``IDSelectorBitmap`` over live slots, applied inside the graph search so filtered nodes never
    take a result place. Past ``compact_fraction`` tombstones the graph is rebuilt from the live
    vectors, read back from HNSW's own flat storage (no second copy is kept).
    """

    kind = "hnsw"
    keeps_vectors = False

    def __init__(self, dim: int, params: dict[str, Any], explicit: frozenset[str] = frozenset()) -> None:
        super().__init__(dim, params, explicit)
        self._index = self._new_graph()
        self._bitmap: np.ndarray | None = None  # packed live bitmap, cached until the next change

    def _new_graph(self) -> faiss.IndexHNSWFlat:
        index = faiss.IndexHNSWFlat(self.dim, int(self._params["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(self._params["efConstruction"])
        index.hnsw.efSearch = int(self._params["efSearch"])
        return index

    def _on_append(self, slots: np.ndarray, vecs: np.ndarray) -> None:
        assert self._index.ntotal == slots[0], "HNSW labels must stay aligned with slots"
        self._index.add(vecs)
        self._table.freeze()
        self._bitmap = None

    def _on_dead(self, slots: np.ndarray) -> None:
        self._bitmap = None  # tombstones live in table.live; search filters them

    def _search_frozen(self, q: np.ndarray, k: int, mask: np.ndarray | None, params: dict[str, Any]
                       ) -> tuple[np.ndarray, np.ndarray]:
        t = self._table
        sel = None
        kk = min(k, len(self))
        if mask is not None:
            keep = t.live[: t.frozen] & mask
            sel, _packed = _bitmap_selector(keep)
            kk_allowed = int(np.count_nonzero(keep))
            kk = min(k, kk_allowed)
        elif t.n_dead:
            if self._bitmap is None:
                self._bitmap = np.packbits(t.live, bitorder="little")
            sel = faiss.IDSelectorBitmap(t.n, faiss.swig_ptr(self._bitmap))

        def run(queries: np.ndarray, ef: int) -> tuple[np.ndarray, np.ndarray]:
            native = faiss.SearchParametersHNSW()
            native.efSearch = ef
            if sel is not None:
                native.sel = sel
            return self._index.search(queries, kk, params=native)

        ef = max(int(params["efSearch"]), kk)
        if mask is not None:  # a graph walk meets allowed nodes in proportion to the filter's share
            ef = max(kk, min(t.n, int(ef * min(8.0, t.frozen / max(1, kk_allowed)))))
        return _fill_short_rows(q, kk, ef, max(ef, t.n), run)

    def _vectors_at(self, slots: np.ndarray) -> np.ndarray:
        # position == slot; one batched call
        return self._index.reconstruct_batch(np.ascontiguousarray(slots, dtype=np.int64))

    def _live_vectors(self) -> np.ndarray:
        live = self._table.live_slots()
        if not len(live):
            return np.zeros((0, self.dim), np.float32)
        return self._index.reconstruct_n(0, self._index.ntotal)[live]

    def _compact(self) -> None:
        t = self._table
        vecs = self._live_vectors()
        ids = t.ids[t.live_slots()]
        self._index = self._new_graph()
        t.reset(ids, None)
        if len(ids):
            self._index.add(vecs)
        t.freeze()
        self._bitmap = None

    def _rebuild(self) -> None:
        self._compact()

    def _on_params_changed(self) -> None:
        self._index.hnsw.efSearch = int(self._params["efSearch"])

    def _native_bytes(self) -> int:
        n = self._index.ntotal
        # vectors + level-0 links (2M) + upper levels (~M/(M-1)... small) + offsets/levels
        return int(n * (4 * self.dim + 4 * 2 * int(self._params["M"]) * 1.1 + 12))


class IVFIndex(_FaissIndex):
    """IVF-Flat / IVF-PQ with native add/remove, an exact buffer until trained, exact PQ re-rank.

    Training rule: the coarse quantizer (and PQ codebooks) are trained once the index holds
    ``max(exact_below, 39 * nlist [, 39 * 2**nbits])`` live vectors, where ``nlist`` / ``nbits``
    count only if given explicitly (auto ``nbits`` counts as its minimum, 4); auto values are
    chosen at that moment from the count (``nlist ~ 4*sqrt(n)`` but <= n/39, ``nbits`` so each PQ
    centroid gets 39 points). Until then
    the vectors sit in the slot table's loose region and are searched exactly, which at that size
    is as fast as the IVF and exact. Vectors added after training are encoded with the existing
    centroids, not re-trained (``rebuild()`` re-trains from the stored vectors).

    Raw vectors are kept in the slot table: for re-training and, for IVF-PQ, to re-rank the
    ``k * k_factor`` PQ candidates exactly so returned scores are true cosines.
    """

    keeps_vectors = True

    def __init__(self, dim: int, params: dict[str, Any], explicit: frozenset[str] = frozenset()) -> None:
        super().__init__(dim, params, explicit)
        self._index = None
        self._trained_on = 0  # vectors the centroids were trained on: tells when a retrain is due
        self._hinted = False

    @property
    def trained(self) -> bool:
        return self._index is not None

    def train_threshold(self) -> int:
        need = int(self._params["exact_below"])
        if "nlist" in self._explicit:
            need = max(need, MIN_POINTS_PER_CENTROID * int(self._params["nlist"]))
        if self.kind == "ivf_pq":  # every PQ sub-quantizer is a k-means over 2**nbits centroids
            nbits = int(self._params["nbits"]) if "nbits" in self._explicit else MIN_AUTO_NBITS
            need = max(need, MIN_POINTS_PER_CENTROID * (1 << nbits))
        return max(need, 1)

    def _new_ivf(self) -> faiss.IndexIVF:
        p = self._params
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.kind == "ivf_pq":
            index = faiss.IndexIVFPQ(quantizer, self.dim, int(p["nlist"]), int(p["m"]), int(p["nbits"]),
                                     faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, self.dim, int(p["nlist"]), faiss.METRIC_INNER_PRODUCT)
        index.nprobe = int(p["nprobe"])
        return index

    def _train_and_fill(self) -> None:
        """Train on all live vectors (sampled when huge) and index them: the loose buffer freezes."""
        t = self._table
        n = len(self)
        assert t.n_dead == 0 and t.frozen == 0
        self._reresolve(n)
        p = self._params
        start = time.perf_counter()
        index = self._new_ivf()
        vecs = t.vecs
        cap = 256 * max(int(p["nlist"]), 1 << int(p.get("nbits", 0)))
        train = vecs
        if len(vecs) > cap:
            pick = np.random.default_rng(1234).choice(len(vecs), cap, replace=False)
            train = vecs[np.sort(pick)]
        index.train(np.ascontiguousarray(train))
        index.add_with_ids(vecs, np.arange(t.n, dtype=np.int64))
        self._index = index
        self._trained_on = n
        self._hinted = False
        t.freeze()
        log.info("%s: trained nlist=%d%s on %d vectors in %.3fs", self.kind, p["nlist"],
                 f" m={p['m']} nbits={p['nbits']}" if self.kind == "ivf_pq" else "", len(train),
                 time.perf_counter() - start)

    def _on_append(self, slots: np.ndarray, vecs: np.ndarray) -> None:
        if self.trained:
            self._index.add_with_ids(vecs, slots)
            self._table.freeze()
            if not self._hinted and len(self) > RETRAIN_HINT_GROWTH * max(self._trained_on, 1):
                self._hinted = True
                log.info("%s: trained on %d vectors, now holds %d: rebuild() would fit the lists to "
                         "the collection", self.kind, self._trained_on, len(self))
        elif len(self) >= self.train_threshold():
            self._train_and_fill()

    def _on_params_changed(self) -> None:
        if self._index is not None:
            self._index.nprobe = int(self._params["nprobe"])
        elif len(self) and len(self) >= self.train_threshold():
            self._materialize()
            self._train_and_fill()

    def _on_dead(self, slots: np.ndarray) -> None:
        self._index.remove_ids(faiss.IDSelectorBatch(slots))

    def _search_frozen(self, q: np.ndarray, k: int, mask: np.ndarray | None, params: dict[str, Any]
                       ) -> tuple[np.ndarray, np.ndarray]:
        live_indexed = self._index.ntotal
        sel = None
        if mask is not None:  # dead slots are removed natively, so the mask alone decides
            sel, _packed = _bitmap_selector(mask)
            live_indexed = min(live_indexed, int(np.count_nonzero(mask)))
        kk = min(k, live_indexed)
        # PQ ranking errors do not shrink with k, so even a top-1 query re-ranks a real shortlist
        kc = kk if self.kind != "ivf_pq" else min(max(k * int(params["k_factor"]),
                                                       MIN_RERANK_CANDIDATES), live_indexed)

        def run(queries: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
            native = faiss.SearchParametersIVF()
            native.nprobe = nprobe
            if sel is not None:
                native.sel = sel
            return self._index.search(queries, kc, params=native)

        nlist = self._index.nlist
        nprobe = int(params["nprobe"])
        if mask is not None:  # probed lists hold allowed vectors in proportion to the filter's share
            nprobe = int(np.ceil(nprobe * self._index.ntotal / max(live_indexed, 1)))
        D, labels = _fill_short_rows(q, kk, min(nprobe, nlist), nlist, run)
        if self.kind != "ivf_pq":
            return D, labels
        return rerank(q, self._table.vecs, labels, k)

    def _compact(self) -> None:
        """Re-encode the live vectors densely with the trained centroids (no re-training)."""
        t = self._table
        live = t.live_slots()
        t.reset(t.ids[live], t.vecs[live])
        self._index.reset()
        if t.n:
            self._index.add_with_ids(t.vecs, np.arange(t.n, dtype=np.int64))
        t.freeze()

    def _rebuild(self) -> None:
        t = self._table
        live = t.live_slots()
        t.reset(t.ids[live], t.vecs[live])
        self._index = None
        if len(self) and len(self) >= self.train_threshold():
            self._train_and_fill()

    def _extra_state(self) -> dict[str, Any]:
        return {"trained_on": self._trained_on}

    def _load_native(self, path: Path, mmap: bool, state: dict[str, Any]) -> None:
        super()._load_native(path, mmap, state)
        self._trained_on = int(state.get("trained_on", self._index.ntotal))

    def _native_bytes(self) -> int:
        if self._index is None:
            return 0
        p = self._params
        code = int(p["m"]) * int(p["nbits"]) / 8 if self.kind == "ivf_pq" else 4 * self.dim
        return int(self._index.ntotal * (code + 8) + int(p["nlist"]) * 4 * self.dim)


class IVFFlatIndex(IVFIndex):
    kind = "ivf_flat"


class IVFPQIndex(IVFIndex):
    kind = "ivf_pq"
