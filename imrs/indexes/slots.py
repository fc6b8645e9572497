"""The slot table every index kind keeps: slot -> (image id, live flag[, raw vector]).

A slot is a dense row number; the native structures (FAISS, Annoy) are labelled with slots, and one
gather turns their answers into image ids (see :mod:`imrs.indexes.base` for why). This module owns
the arrays, their growth (optionally into an unlinked spill file) and their ``.npy`` persistence.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import SnapshotError
from ..fsutil import atomic_path


class SlotTable:
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
        save_npy(directory / "slot_ids.npy", self.ids)
        save_npy(directory / "slot_live.npy", self.live)
        if self._vecs is not None:
            save_npy(directory / "vectors.npy", self.vecs)

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


def save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
