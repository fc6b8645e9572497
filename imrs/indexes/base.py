"""The common half of every index: id bookkeeping, upsert/remove semantics, exact delta, persistence.

Every kind works on *slots*, not on image ids. A slot is a row number in a ``_SlotTable``; the
native structure (FAISS, Annoy) is labelled with slots, and one vectorised gather
(``table.ids[labels]``) turns its answers into image ids. Slots buy three things the libraries
do not give uniformly:

* Annoy and HNSW need dense, small integer labels; image ids are arbitrary int64 hashes.
* A removed vector in a structure that cannot remove (HNSW, an Annoy forest) is a *tombstone*:
  its slot stays, ``live[slot]`` becomes False, and search filters it with one boolean gather.
* Raw vectors, when a kind keeps them (IVF re-training, PQ re-ranking, Annoy rebuilds), are
  ``vecs[slot]``: re-ranking candidates is one fancy-index, no id lookup.

The table has two regions. ``[0, frozen)`` is referenced by the native structure; removing there
leaves a tombstone (or a dead slot after a native remove). ``[frozen, n)`` is *loose*: vectors not
in any structure yet (Annoy's delta, an untrained IVF's buffer), searched exactly; removing there
swaps the last loose row into the hole, so the loose region is always dense and needs no filtering.

Compaction (``_compact``) rebuilds the table densely once dead slots pass ``compact_fraction``; its
cost is linear in the index but happens after a linear number of removals, so it is amortised O(1)
per removal.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import faiss
import numpy as np

from ..errors import SnapshotError
from ..fsutil import atomic_path, atomic_write_json, read_json
from .params import BUILD_PARAMS, KIND_PARAMS, SEARCH_PARAMS, auto_params, validate_params

if TYPE_CHECKING:
    from ..filters import Where as WhereLike

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"

#: Queries per block in exact re-ranking, sized so a block's gathered candidates stay ~64 MiB.
_RERANK_BLOCK_FLOATS = 16 * 1024 * 1024
#: A filter allowing at most this many floats of vectors (64 MiB) is answered by exact search over
#: just those vectors; a larger one by the native structure with a slot mask.
FILTER_EXACT_FLOATS = 16 * 1024 * 1024


class _SlotTable:
    """Slot -> (image id, live flag[, raw vector]) with an id -> slot dict for membership.

    Arrays grow by doubling, so appends are amortised O(batch). ``vecs`` is None for kinds whose
    native structure already holds the vectors (flat, HNSW): keeping a second copy would double
    the memory of the biggest kinds for nothing.
    """

    def __init__(self, dim: int, keep_vectors: bool, spill: bool = False) -> None:
        self.dim = dim
        self.keep_vectors = keep_vectors
        #: Raw vectors in an unlinked file mapped into memory (IVF-PQ's compressed mode): the kernel
        #: pages them in for re-ranking and drops them under pressure, so only codes stay resident.
        self.spill = spill
        self._ids = np.empty(0, np.int64)
        self._live = np.empty(0, bool)
        self._vecs: np.ndarray | None = self._new_vecs(0) if keep_vectors else None
        self.n = 0
        self.frozen = 0
        self.n_dead = 0
        self.slot_of: dict[int, int] = {}

    # -- views ----------------------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.n]

    @property
    def live(self) -> np.ndarray:
        return self._live[: self.n]

    @property
    def vecs(self) -> np.ndarray:
        if self._vecs is None:
            raise RuntimeError("this index kind does not keep raw vectors in its slot table")
        return self._vecs[: self.n]

    def __len__(self) -> int:
        return len(self.slot_of)

    @property
    def n_loose(self) -> int:
        return self.n - self.frozen

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.live)

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        get = self.slot_of.get
        return np.fromiter((get(i, -1) for i in ids.tolist()), dtype=np.int64, count=len(ids))

    def _new_vecs(self, rows: int) -> np.ndarray:
        if not self.spill:
            return np.empty((rows, self.dim), np.float32)
        return spill_array(rows, self.dim)

    def nbytes(self) -> int:
        # A dict entry with its two int objects costs ~100 bytes in CPython. Spilled or mapped
        # vectors are file pages the kernel may drop, not resident memory of this process.
        vec = 0 if self._vecs is None or self.spill or isinstance(self._vecs, np.memmap) else self._vecs.nbytes
        return int(self._ids.nbytes + self._live.nbytes + vec + 100 * len(self.slot_of))

    # -- mutation -------------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Copy memory-mapped (read-only) arrays into owned memory before the first in-place write."""
        if self._vecs is not None and not self._vecs.flags.writeable:
            vecs = self._new_vecs(len(self._vecs))
            vecs[:] = self._vecs
            self._vecs = vecs
        if not self._ids.flags.writeable:
            self._ids = np.array(self._ids)
        if not self._live.flags.writeable:
            self._live = np.array(self._live)

    def _reserve(self, need: int) -> None:
        cap = len(self._ids)
        if need <= cap:
            return
        new_cap = max(need, cap * 2, 64)
        ids = np.empty(new_cap, np.int64)
        ids[: self.n] = self._ids[: self.n]
        live = np.zeros(new_cap, bool)
        live[: self.n] = self._live[: self.n]
        self._ids, self._live = ids, live
        if self._vecs is not None:
            vecs = self._new_vecs(new_cap)
            vecs[: self.n] = self._vecs[: self.n]
            self._vecs = vecs

    def append(self, ids: np.ndarray, vecs: np.ndarray) -> np.ndarray:
        """Append rows (ids must not be present); returns their slots, which start out loose."""
        k = len(ids)
        self._reserve(self.n + k)
        lo, hi = self.n, self.n + k
        self._ids[lo:hi] = ids
        self._live[lo:hi] = True
        if self._vecs is not None:
            self._vecs[lo:hi] = vecs
        self.slot_of.update(zip(ids.tolist(), range(lo, hi), strict=True))
        self.n = hi
        return np.arange(lo, hi, dtype=np.int64)

    def discard(self, slots: np.ndarray) -> np.ndarray:
        """Forget live ``slots``. Returns the frozen ones, now dead, for the structure to handle.

        Loose slots are removed for real by moving surviving tail rows into the holes.
        """
        for i in self._ids[slots].tolist():
            del self.slot_of[i]
        frozen = slots[slots < self.frozen]
        self._live[frozen] = False
        self.n_dead += len(frozen)
        loose = slots[slots >= self.frozen]
        if len(loose):
            r = len(loose)
            new_n = self.n - r
            holes = loose[loose < new_n]
            tail = np.arange(new_n, self.n)
            movers = np.setdiff1d(tail, loose, assume_unique=True)
            self._ids[holes] = self._ids[movers]
            if self._vecs is not None:
                self._vecs[holes] = self._vecs[movers]
            self.slot_of.update(zip(self._ids[holes].tolist(), holes.tolist(), strict=True))
            self._live[new_n : self.n] = False
            self.n = new_n
        return frozen

    def freeze(self) -> None:
        """Mark every slot as referenced by the native structure."""
        self.frozen = self.n

    def reset(self, ids: np.ndarray, vecs: np.ndarray | None) -> None:
        """Replace the content with dense live rows (after compaction or rebuild); nothing frozen."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._ids = ids.copy()
        self._live = np.ones(len(ids), bool)
        if self.keep_vectors:
            assert vecs is not None
            fresh = self._new_vecs(len(ids))
            fresh[:] = vecs
            self._vecs = fresh
        self.n = len(ids)
        self.frozen = 0
        self.n_dead = 0
        self.slot_of = dict(zip(ids.tolist(), range(len(ids)), strict=True))

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        _save_npy(directory / "slot_ids.npy", self.ids)
        _save_npy(directory / "slot_live.npy", self.live)
        if self._vecs is not None:
            _save_npy(directory / "vectors.npy", self.vecs)

    def load(self, directory: Path, n: int, frozen: int, mmap: bool) -> None:
        ids = np.load(directory / "slot_ids.npy", allow_pickle=False)
        live = np.load(directory / "slot_live.npy", allow_pickle=False)
        if ids.dtype != np.int64 or live.dtype != bool or len(ids) != n or len(live) != n:
            raise SnapshotError(f"index files in {directory} disagree with meta.json: re-save the index")
        self._ids, self._live = ids, live
        if self.keep_vectors:
            vecs = np.load(directory / "vectors.npy", mmap_mode="r" if mmap or self.spill else None,
                           allow_pickle=False)
            if vecs.dtype != np.float32 or vecs.shape != (n, self.dim):
                raise SnapshotError(f"vectors.npy in {directory} has shape {vecs.shape}, expected {(n, self.dim)}")
            if self.spill and not mmap:  # a private copy, still out of anonymous memory
                owned = self._new_vecs(n)
                owned[:] = vecs
                vecs = owned
            self._vecs = vecs
        self.n = n
        self.frozen = frozen
        self.n_dead = int(frozen - np.count_nonzero(live[:frozen]))
        slots = np.flatnonzero(live)
        self.slot_of = dict(zip(ids[slots].tolist(), slots.tolist(), strict=True))


class _ReadWriteLock:
    """Many readers or one writer. Readers (searches, vector reads) run together: FAISS and Annoy
    searches are safe in parallel, but not beside an add that resizes the structure under them.
    A waiting writer goes before new readers, so a growth never waits behind a stream of searches.
    The writing thread may read (a writer's own checks); nothing upgrades a read to a write."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        if self._writer == threading.get_ident():
            yield
            return
        with self._cond:
            while self._writer is not None or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                self._waiting += 1
                while self._writer is not None or self._readers:
                    self._cond.wait()
                self._waiting -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    self._cond.notify_all()


def _reads(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def locked(self: VectorIndex, *args: Any, **kwargs: Any) -> Any:
        with self._rw.read():
            return fn(self, *args, **kwargs)

    return locked


def _writes(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def locked(self: VectorIndex, *args: Any, **kwargs: Any) -> Any:
        with self._rw.write():
            return fn(self, *args, **kwargs)

    return locked


def spill_array(rows: int, dim: int) -> np.ndarray:
    """A writable (rows, dim) float32 array backed by an already-unlinked file in the spill folder
    (IMRS_SPILL_DIR, else the temp folder): it lives exactly as long as the array, even after a crash."""
    from ..config import spill_dir

    folder = spill_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="imrs-vectors-", suffix=".f32", dir=folder)
    try:
        os.close(fd)
        arr = np.memmap(path, dtype=np.float32, mode="w+", shape=(max(rows, 1), dim))
    finally:
        os.unlink(path)
    return arr[:rows]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)


def exact_search(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner product top-k (FAISS's blocked BLAS path); row numbers of ``base``."""
    nb = len(base)
    kk = min(k, nb)
    if kk == 0:
        return (np.full((len(queries), 0), -np.inf, np.float32), np.full((len(queries), 0), -1, np.int64))
    scores, rows = faiss.knn(queries, np.ascontiguousarray(base), kk, metric=faiss.METRIC_INNER_PRODUCT)
    return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)


def rerank(queries: np.ndarray, vecs: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate rows ``labels`` (-1 = none); top-k.

    Done in query blocks so the gathered (block, candidates, dim) tensor stays bounded.
    """
    nq, kc = labels.shape
    k = min(k, kc)
    out_d = np.full((nq, k), -np.inf, np.float32)
    out_l = np.full((nq, k), -1, np.int64)
    if kc == 0 or nq == 0:
        return out_d, out_l
    block = max(1, _RERANK_BLOCK_FLOATS // max(1, kc * vecs.shape[1]))
    for lo in range(0, nq, block):
        lab = labels[lo : lo + block]
        valid = lab >= 0
        cand = vecs[np.where(valid, lab, 0)]
        sc = np.einsum("qd,qkd->qk", queries[lo : lo + block], cand, dtype=np.float32)
        sc[~valid] = -np.inf
        order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        out_d[lo : lo + block] = np.take_along_axis(sc, order, 1)
        out_l[lo : lo + block] = np.where(np.take_along_axis(valid, order, 1), np.take_along_axis(lab, order, 1), -1)
    return out_d, out_l


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-source (scores, slots) results into one best-first top-k; invalid = slot -1."""
    D = np.concatenate([p[0] for p in parts], axis=1)
    S = np.concatenate([p[1] for p in parts], axis=1)
    D = np.where(S >= 0, D, -np.inf).astype(np.float32, copy=False)
    if len(parts) > 1 or D.shape[1] > k:
        order = np.argsort(-D, axis=1, kind="stable")[:, :k]
        D = np.take_along_axis(D, order, 1)
        S = np.take_along_axis(S, order, 1)
    return D, S


def _as_ids(ids: Any) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"ids must be a 1-d array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("ids must fit in a signed int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


class VectorIndex(ABC):
    """An id-mapped cosine-similarity index over L2-normalised float32 vectors.

    Subclasses implement the native structure through a handful of hooks; everything a caller
    relies on (upsert, unknown ids on remove, padding, dim checks, persistence layout) lives here
    so the five kinds cannot drift apart.
    """

    kind: ClassVar[str]
    #: Whether the slot table keeps raw vectors (False when the native structure already holds them).
    keeps_vectors: ClassVar[bool] = True
    #: Native file name inside a saved directory, when the structure exists.
    native_file: ClassVar[str] = "index.faiss"

    def __init__(self, dim: int, params: dict[str, Any], explicit: frozenset[str] = frozenset()) -> None:
        self.dim = int(dim)
        self._params: dict[str, Any] = dict(params)
        self._explicit: set[str] = set(explicit)
        self._table = _SlotTable(self.dim, self.keeps_vectors, spill=bool(self._params.get("compressed", 0)))
        #: True while native structures / arrays are memory-mapped read-only views of saved files.
        self._mapped = False
        #: Searches and reads run in parallel, never beside a change (see ``_ReadWriteLock``).
        self._rw = _ReadWriteLock()

    # -- container protocol ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, item: object) -> bool:
        try:
            return int(item) in self._table.slot_of  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind} dim={self.dim} count={len(self)}>"

    @_reads
    def ids(self) -> np.ndarray:
        """Live ids, in slot order (insertion order, modulo compactions)."""
        t = self._table
        return t.ids[t.live].copy()

    # -- input checks ---------------------------------------------------------------------------------
    def _as_matrix(self, x: Any, what: str, allow_1d: bool) -> np.ndarray:
        """float32, C-contiguous, (n, dim), L2-normalised copy: every kind then reports cosines."""
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim == 1 and allow_1d:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2:
            raise ValueError(f"{what} must be a 2-d (n, {self.dim}) array, got shape {arr.shape}")
        if arr.shape[1] != self.dim:
            raise ValueError(f"{what} have dimension {arr.shape[1]} but this {self.kind} index holds "
                             f"{self.dim}-d vectors: use the same backbone for indexing and querying")
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        return np.ascontiguousarray(arr / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)

    # -- public mutation ------------------------------------------------------------------------------
    def _upsert_batch(self, ids: Any, vecs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Checked int64 ids and normalised vectors for an upsert, duplicates resolved (the last
        occurrence in the batch wins); empty arrays when there is nothing to add."""
        ids = _as_ids(ids)
        vecs = self._as_matrix(vecs, "vectors", allow_1d=False) if len(ids) else np.zeros((0, self.dim), np.float32)
        if len(ids) != len(vecs):
            raise ValueError(f"add() got {len(ids)} ids but {len(vecs)} vectors")
        if (ids == -1).any():
            raise ValueError("id -1 is reserved as the 'no result' marker")
        _, first_of_reversed = np.unique(ids[::-1], return_index=True)
        if len(first_of_reversed) != len(ids):
            keep = np.sort(len(ids) - 1 - first_of_reversed)
            ids, vecs = ids[keep], vecs[keep]
        return ids, vecs

    @_writes
    def add(self, ids: Any, vecs: Any) -> None:
        """Upsert: an id already present is replaced; within one batch the last occurrence wins."""
        ids, vecs = self._upsert_batch(ids, vecs)
        if not len(ids):
            return
        self._materialize()
        old = self._table.slots_of(ids)
        old = old[old >= 0]
        if len(old):
            self._discard(old)
        slots = self._table.append(ids, vecs)
        self._on_append(slots, vecs)
        self._maybe_compact()

    @_writes
    def remove(self, ids: Any) -> int:
        """Remove ``ids``; unknown ids are ignored. Returns how many were actually removed."""
        ids = np.unique(_as_ids(ids))
        if not len(ids):
            return 0
        slots = self._table.slots_of(ids)
        slots = slots[slots >= 0]
        if not len(slots):
            return 0
        self._materialize()
        self._discard(slots)
        self._maybe_compact()
        return len(slots)

    def _discard(self, slots: np.ndarray) -> None:
        dead = self._table.discard(np.sort(slots))
        if len(dead):
            self._on_dead(dead)

    def _maybe_compact(self) -> None:
        t = self._table
        if t.n_dead and t.n_dead > self._params["compact_fraction"] * t.frozen:
            start = time.perf_counter()
            dead = t.n_dead
            self._compact()
            log.info("%s: compacted %d dead of %d slots in %.3fs", self.kind, dead, dead + len(self),
                     time.perf_counter() - start)

    @_writes
    def rebuild(self, **build_params: Any) -> None:
        """Build the structure again from the stored vectors (IVF re-trains, HNSW/Annoy drop tombstones).

        Build parameters given here become explicit; auto ones are re-derived from the current size.
        """
        params = validate_params(self.kind, self.dim, build_params)
        self._materialize()
        self._explicit |= set(params)
        self._params.update(params)
        self._reresolve(len(self))
        start = time.perf_counter()
        self._rebuild()
        log.info("%s: rebuilt %d vectors in %.3fs", self.kind, len(self), time.perf_counter() - start)

    retrain = rebuild

    def _reresolve(self, n: int) -> None:
        """Re-derive the auto (not explicitly given) parameters for ``n`` vectors."""
        fresh = auto_params(self.kind, n, self.dim)
        for key, value in fresh.items():
            if key not in self._explicit:
                self._params[key] = value

    # -- params ---------------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return dict(self._params)

    @_writes
    def set_params(self, **tunables: Any) -> None:
        """Change search-time or policy parameters; build parameters need ``rebuild(**params)``."""
        build = sorted(set(tunables) & BUILD_PARAMS & KIND_PARAMS[self.kind])
        if build:
            raise ValueError(f"{', '.join(build)} shape{'s' if len(build) == 1 else ''} the {self.kind} "
                             f"structure: pass {'it' if len(build) == 1 else 'them'} to rebuild() instead")
        params = validate_params(self.kind, self.dim, tunables)
        self._explicit |= set(params)
        self._params.update(params)
        if params:
            self._on_params_changed()

    def stats(self) -> dict[str, Any]:
        """Counts that explain the index's state (for logs, the CLI and tests)."""
        t = self._table
        return {"kind": self.kind, "dim": self.dim, "count": len(self), "slots": t.n,
                "indexed": t.frozen - t.n_dead, "dead": t.n_dead, "loose": t.n_loose,
                "memory_bytes": self.memory_bytes(), "mapped": self._mapped, **self._extra_state()}

    @_reads
    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored (normalised) vectors of ``ids``, zero rows for unknown ids. Query expansion needs
        the neighbours' vectors, and the index already holds them: no second copy in memory."""
        ids = _as_ids(ids)
        slots = self._table.slots_of(ids)
        out = np.zeros((len(ids), self.dim), np.float32)
        ok = slots >= 0
        if ok.any():
            out[ok] = self._vectors_at(slots[ok])
        return out

    def _vectors_at(self, slots: np.ndarray) -> np.ndarray:
        """Kinds whose slot table keeps no vectors override this to read them from the native index."""
        return self._table.vecs[slots]

    def set_attribute_source(self, source: Callable[[np.ndarray], dict[str, list[str]]] | None) -> None:  # noqa: B027
        """Hook for kinds that store filter fields beside each vector (Milvus); the in-process kinds
        filter through the catalog at query time instead, so they ignore it."""

    def location(self) -> dict[str, Any] | None:
        """Where the vectors live when not in this process (Milvus: URI and collection), else None."""
        return None

    def memory_bytes(self) -> int:
        """Approximate resident bytes: slot table (+ raw vectors) + native structure."""
        return self._table.nbytes() + self._native_bytes()

    # -- search ---------------------------------------------------------------------------------------
    @_reads
    def search(self, queries: Any, k: int, where: WhereLike | None = None,
               params: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine scores (float32) and ids (int64), best first, each (n, k).

        A single (dim,) query gives (1, k). Rows are padded with -inf / -1 when fewer than ``k``
        live vectors exist; an empty index gives fully padded rows rather than an error.
        ``where`` (an ``imrs.filters.Where``) restricts results to the ids it allows; rows are
        then padded only when fewer than ``k`` allowed vectors exist.
        ``params`` (``efSearch``, ``nprobe``, ``k_factor``, ``search_k``) apply to this call only,
        like FAISS's per-call ``SearchParameters``: callers in several threads share one index
        without ever changing its settings for each other.
        """
        q, k = self._query_args(queries, k)
        p = self.search_params(params)
        nq = len(q)
        scores = np.full((nq, k), -np.inf, np.float32)
        ids = np.full((nq, k), -1, np.int64)
        if nq == 0 or len(self) == 0:
            return scores, ids
        t = self._table
        if where is not None:
            D, S = self._search_where(q, k, np.asarray(where.allowed_ids(), dtype=np.int64), p)
        else:
            parts = []
            if t.frozen - t.n_dead > 0:
                parts.append(self._search_frozen(q, k, None, p))
            if t.n_loose:
                d, i = exact_search(q, t.vecs[t.frozen :], k)
                parts.append((d, np.where(i >= 0, i + t.frozen, -1)))
            D, S = merge_topk(parts, k)
        valid = S >= 0
        w = D.shape[1]
        scores[:, :w] = np.where(valid, D, -np.inf)
        ids[:, :w] = np.where(valid, t.ids[np.where(valid, S, 0)], -1)
        return scores, ids

    def search_params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """The parameters one search runs with: the index's own, with ``params`` (search-time
        tunables of this kind only; others are ignored like in ``make_index``) over them."""
        if not params:
            return self._params
        build = sorted(set(params) - SEARCH_PARAMS)
        if build:
            raise ValueError(f"{', '.join(build)}: not search-time parameters (per-search params are "
                             f"{', '.join(sorted(SEARCH_PARAMS))})")
        return {**self._params, **validate_params(self.kind, self.dim, params)}

    def _query_args(self, queries: Any, k: Any) -> tuple[np.ndarray, int]:
        q = self._as_matrix(queries, "queries", allow_1d=True)
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return q, int(k)

    def _search_where(self, q: np.ndarray, k: int, allowed_ids: np.ndarray, params: dict[str, Any]
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, slots) among the allowed ids only.

        A small allowed set (the usual case: one label, the dynamic images) is searched exactly over
        its gathered vectors, which is both exact and cheaper than steering an ANN structure; a
        large one is searched by the native structure with a slot mask (FAISS ``IDSelector``, Annoy
        over-fetch), whose retries keep rows full whenever ``k`` allowed vectors exist.
        """
        t = self._table
        slots = t.slots_of(allowed_ids)
        slots = np.unique(slots[slots >= 0])
        if not len(slots):
            return np.full((len(q), 0), -np.inf, np.float32), np.full((len(q), 0), -1, np.int64)
        if len(slots) * self.dim <= FILTER_EXACT_FLOATS:
            d, rows = exact_search(q, np.ascontiguousarray(self._vectors_at(slots), dtype=np.float32), k)
            return d, np.where(rows >= 0, slots[np.where(rows >= 0, rows, 0)], -1)
        mask = np.zeros(t.n, bool)
        mask[slots] = True
        parts = []
        if t.frozen and mask[: t.frozen].any():
            parts.append(self._search_frozen(q, k, mask[: t.frozen], params))
        loose = t.frozen + np.flatnonzero(mask[t.frozen :])
        if len(loose):
            d, rows = exact_search(q, t.vecs[loose], k)
            parts.append((d, np.where(rows >= 0, loose[np.where(rows >= 0, rows, 0)], -1)))
        return merge_topk(parts, k)

    # -- persistence ----------------------------------------------------------------------------------
    @_reads
    def save(self, directory: str | Path) -> None:
        """Write native file(s), slot arrays (.npy) and meta.json (last, so it marks a complete save)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        t = self._table
        self._table.save(directory)
        has_native = self._save_native(directory / self.native_file)
        meta = {
            "format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim, "count": len(self),
            "params": self.get_params(), "explicit_params": sorted(self._explicit),
            "state": {"slots": t.n, "frozen": t.frozen, "native": has_native, **self._extra_state()},
        }
        atomic_write_json(directory / META_FILE, meta)
        log.debug("saved %s index (%d vectors) to %s", self.kind, len(self), directory)

    @classmethod
    def _load(cls, directory: Path, meta: dict[str, Any], mmap: bool) -> VectorIndex:
        params = validate_params(cls.kind, int(meta["dim"]), meta["params"])
        obj = cls(int(meta["dim"]), {**auto_params(cls.kind, 0, int(meta["dim"])), **params},
                  frozenset(meta.get("explicit_params", ())))
        state = meta["state"]
        obj._table.load(directory, int(state["slots"]), int(state["frozen"]), mmap)
        if state["native"]:
            obj._load_native(directory / cls.native_file, mmap, state)
        obj._mapped = mmap
        if len(obj) != int(meta["count"]):
            raise SnapshotError(f"index in {directory} holds {len(obj)} vectors, meta.json says {meta['count']}")
        return obj

    def _materialize(self) -> None:
        """Turn memory-mapped views into owned memory before mutating: FAISS aborts the process
        (not an exception) when asked to resize a mapped vector."""
        if self._mapped:
            self._table.ensure_writable()
            self._materialize_native()
            self._mapped = False

    # -- hooks ----------------------------------------------------------------------------------------
    @abstractmethod
    def _on_append(self, slots: np.ndarray, vecs: np.ndarray) -> None:
        """New loose ``slots`` (normalised ``vecs``) were appended: index them now or leave them loose."""

    @abstractmethod
    def _on_dead(self, slots: np.ndarray) -> None:
        """Frozen ``slots`` died: remove natively, or leave as tombstones that search filters."""

    @abstractmethod
    def _search_frozen(self, q: np.ndarray, k: int, mask: np.ndarray | None, params: dict[str, Any]
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, slots) of the native structure, best first, never returning dead slots, nor
        (when ``mask``, a bool per frozen slot, is given) slots outside the mask. ``params`` are
        this search's (``search_params``): read them, never ``self._params``, for search-time knobs."""

    @abstractmethod
    def _compact(self) -> None:
        """Drop dead slots (dense table) and bring the structure in line."""

    @abstractmethod
    def _rebuild(self) -> None:
        """Rebuild the structure from live vectors with the current params."""

    @abstractmethod
    def _native_bytes(self) -> int: ...

    @abstractmethod
    def _save_native(self, path: Path) -> bool:
        """Write the native structure to ``path``; False when there is none yet."""

    @abstractmethod
    def _load_native(self, path: Path, mmap: bool, state: dict[str, Any]) -> None: ...

    def _materialize_native(self) -> None:  # noqa: B027 - optional hook
        """Hook: copy a memory-mapped native structure into owned memory."""

    def _on_params_changed(self) -> None:  # noqa: B027 - optional hook
        """Hook: apply changed search/policy params (e.g. build Annoy once exact_below drops)."""

    def _extra_state(self) -> dict[str, Any]:
        return {}


def load_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    if not path.is_file():
        raise SnapshotError(f"{directory} holds no saved index ({META_FILE} missing)")
    try:
        meta = read_json(path)
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path} is unreadable ({exc}): save the index again") from exc
    if not isinstance(meta, dict) or not {"format_version", "kind", "dim", "params", "state", "count"} <= set(meta):
        raise SnapshotError(f"{path} is not an IMRS index description: save the index again")
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise SnapshotError(f"index in {directory} has format {meta['format_version']}; this IMRS reads up to "
                            f"{FORMAT_VERSION}: upgrade IMRS")
    return meta
