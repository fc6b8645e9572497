"""The common half of every index: id bookkeeping, upsert/remove semantics, exact delta, persistence.

Every kind works on *slots*, not on image ids. A slot is a row number in a ``SlotTable``; the
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

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import SnapshotError
from ..fsutil import atomic_write_json, read_json
from .exact import exact_search, merge_topk
from .params import BUILD_PARAMS, KIND_PARAMS, SEARCH_PARAMS, auto_params, validate_params
from .rwlock import ReadWriteLock, reads, writes
from .slots import SlotTable

if TYPE_CHECKING:
    from ..filters import Where as WhereLike

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"

#: A filter allowing at most this many floats of vectors (64 MiB) is answered by exact search over
#: just those vectors; a larger one by the native structure with a slot mask.
FILTER_EXACT_FLOATS = 16 * 1024 * 1024


def as_ids(ids: Any) -> np.ndarray:
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
        self._table = SlotTable(self.dim, self.keeps_vectors, spill=bool(self._params.get("compressed", 0)))
        #: True while native structures / arrays are memory-mapped read-only views of saved files.
        self._mapped = False
        #: Searches and reads run in parallel, never beside a change (see ``ReadWriteLock``).
        self._rw = ReadWriteLock()

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

    @reads
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
        ids = as_ids(ids)
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

    @writes
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

    @writes
    def remove(self, ids: Any) -> int:
        """Remove ``ids``; unknown ids are ignored. Returns how many were actually removed."""
        ids = np.unique(as_ids(ids))
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

    @writes
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

    @writes
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

    @reads
    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored (normalised) vectors of ``ids``, zero rows for unknown ids. Query expansion needs
        the neighbours' vectors, and the index already holds them: no second copy in memory."""
        ids = as_ids(ids)
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
    @reads
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
    @reads
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
