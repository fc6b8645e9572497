"""Annoy forest + exact numpy delta + tombstones.

An Annoy forest is immutable once built, so the index is three parts searched together:

* the **forest** over slots ``[0, frozen)``, built from the then-live vectors;
* the **delta**: slots ``[frozen, n)`` added since, searched exactly (``faiss.knn`` on the slot
  table's rows) and merged with the forest's answer;
* **tombstones**: forest slots removed or replaced since, filtered out of forest answers. The
  forest is asked for ``k`` plus a margin proportional to the dead fraction, and asked again with
  twice as many when filtering left fewer than ``k``, so a query never comes back short.

The forest is rebuilt from the stored vectors (dense slots, no tombstones, empty delta) when the
delta exceeds ``max(exact_below, delta_fraction * forest size)`` or tombstones exceed
``compact_fraction`` of the forest. Both triggers need a number of changes proportional to the
forest, so rebuilding is amortised O(n_trees * log n) per change. Below ``exact_below`` vectors no
forest is built at all: everything is delta, and search is exact.

Scores: Annoy's angular distance is ``sqrt(2 - 2 cos)``, so ``cos = 1 - d**2 / 2``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from annoy import AnnoyIndex

from ..errors import SnapshotError
from ..fsutil import atomic_path
from .base import VectorIndex

log = logging.getLogger(__name__)

#: Auto ``search_k`` = fetched * n_trees * this (Annoy's own default is 1x): a little more work per
#: query buys the recall a retrieval product needs.
SEARCH_K_MULT = 4


class AnnoyForestIndex(VectorIndex):
    kind = "annoy"
    keeps_vectors = True
    native_file = "index.annoy"

    def __init__(self, dim: int, params: dict[str, Any], explicit: frozenset[str] = frozenset()) -> None:
        super().__init__(dim, params, explicit)
        self._forest: AnnoyIndex | None = None

    # -- building -------------------------------------------------------------------------------------
    def _delta_limit(self) -> float:
        t = self._table
        forest_live = t.frozen - t.n_dead
        return max(int(self._params["exact_below"]), float(self._params["delta_fraction"]) * forest_live, 1)

    def _maybe_build(self) -> None:
        if self._table.n_loose >= self._delta_limit():
            self._materialize()
            start = time.perf_counter()
            delta = self._table.n_loose
            self._rebuild()
            log.info("annoy: merged a delta of %d into a forest of %d (%d trees) in %.3fs", delta, len(self),
                     self._forest.get_n_trees() if self._forest is not None else 0, time.perf_counter() - start)

    def _rebuild(self) -> None:
        t = self._table
        live = t.live_slots()
        t.reset(t.ids[live], t.vecs[live])
        self._forest = None
        if not len(self) or len(self) < int(self._params["exact_below"]):
            return  # too small for a forest to pay off: everything stays in the exact delta
        self._reresolve(len(self))
        forest = AnnoyIndex(self.dim, "angular")
        forest.set_seed(1234)
        for slot, vec in enumerate(t.vecs):
            forest.add_item(slot, vec)
        forest.build(int(self._params["n_trees"]), n_jobs=-1)
        self._forest = forest
        t.freeze()

    def _on_append(self, slots: np.ndarray, vecs: np.ndarray) -> None:
        self._maybe_build()

    def _on_dead(self, slots: np.ndarray) -> None:
        pass  # tombstones: table.live is False for them and search filters them out

    def _compact(self) -> None:
        self._rebuild()

    def _on_params_changed(self) -> None:
        self._maybe_build()
        self._maybe_compact()

    # -- search ---------------------------------------------------------------------------------------
    def _search_frozen(self, q: np.ndarray, k: int, mask: np.ndarray | None, params: dict[str, Any]
                       ) -> tuple[np.ndarray, np.ndarray]:
        t = self._table
        forest = self._forest
        assert forest is not None
        live = t.live if mask is None else t.live[: t.frozen] & mask
        usable = t.frozen - t.n_dead if mask is None else int(np.count_nonzero(live))
        filtered = bool(t.n_dead) or mask is not None
        want = min(k, usable)
        # over-fetch in proportion to what filtering (tombstones, a where-mask) will drop
        margin = int(np.ceil(2 * want * (t.frozen - usable) / max(usable, 1))) + 2 if filtered else 0
        first_fetch = min(t.frozen, want + margin)
        n_trees = forest.get_n_trees()
        search_k = int(params["search_k"])
        scores = np.full((len(q), want), -np.inf, np.float32)
        slots = np.full((len(q), want), -1, np.int64)
        exhaustive = t.frozen * n_trees  # search_k at which Annoy visits every leaf of every tree
        for row, vec in enumerate(q.tolist()):
            fetch = first_fetch
            sk = search_k if search_k > 0 else fetch * n_trees * SEARCH_K_MULT
            while True:
                items, dists = forest.get_nns_by_vector(vec, fetch, search_k=sk, include_distances=True)
                got = np.asarray(items, np.int64)
                dist = np.asarray(dists, np.float32)
                if filtered and len(got):
                    keep = live[got]
                    got, dist = got[keep], dist[keep]
                if len(got) >= want or (fetch >= t.frozen and sk >= exhaustive):
                    break
                # short (tombstones, or a search_k too small for this k): ask wider and deeper
                fetch = min(t.frozen, 2 * fetch)
                sk = min(exhaustive, max(2 * sk, fetch * n_trees))
            m = min(want, len(got))
            slots[row, :m] = got[:m]
            scores[row, :m] = 1.0 - dist[:m] ** 2 / 2.0
        return scores, slots

    # -- persistence / accounting ---------------------------------------------------------------------
    def _save_native(self, path: Path) -> bool:
        if self._forest is None:
            return False
        # Annoy writes the file, then re-opens it memory-mapped; the mapping follows the inode
        # through the rename, so the in-memory forest stays valid.
        with atomic_path(path) as tmp:
            self._forest.save(str(tmp))
        return True

    def _load_native(self, path: Path, mmap: bool, state: dict[str, Any]) -> None:
        forest = AnnoyIndex(self.dim, "angular")
        forest.load(str(path), prefault=not mmap)  # Annoy always maps; prefault reads it all in now
        if forest.get_n_items() != self._table.frozen:
            raise SnapshotError(f"{path} holds {forest.get_n_items()} items, meta.json says {self._table.frozen}")
        self._forest = forest

    def _native_bytes(self) -> int:
        if self._forest is None:
            return 0
        n = self._table.frozen
        node = 12 + 4 * self.dim  # n_descendants + two children + the vector (angular node)
        leaf_cap = self.dim + 2  # items per leaf bucket (Annoy's K)
        per_tree = 4 * n / leaf_cap + 1  # split + bucket nodes, leaves ~half full
        return int(node * (n + self._forest.get_n_trees() * per_tree))
