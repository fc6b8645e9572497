"""Query expansion (AQE, alpha-QE) and database-side augmentation (DBA).

Both average a vector with its nearest neighbours so that a query (or a database item) moves toward
the dense middle of its class, which mainly lifts recall deep in the ranking (full mAP). alpha-QE
weights neighbour ``j`` by ``sim^alpha`` so a weak neighbour barely moves the query: it is the
safer default when some of the top neighbours are wrong (Radenović et al., 2018).

The neighbour search is passed in (``Neighbours``), so the same code runs on exact search in the
benchmark and on any live ANN index in an application.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: (queries (q, d), k) -> (similarities (q, k), database rows (q, k), -1 = none), best first.
Neighbours = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def expand_queries(queries: np.ndarray, db: np.ndarray, sims: np.ndarray, rows: np.ndarray, n: int,
                   alpha: float = 0.0, self_weight: float = 1.0) -> np.ndarray:
    """``q' = norm(self_weight * q + sum_{j<n} w_j db[rows_j])`` with ``w_j = max(sim_j, 0)^alpha``
    (``alpha=0``: plain average query expansion). ``rows`` must not contain the query itself."""
    q = np.asarray(queries, dtype=np.float32)
    if n <= 0:
        return _normalise(q)
    r = np.asarray(rows)[:, :n]
    s = np.asarray(sims, dtype=np.float32)[:, :n]
    valid = r >= 0
    w = np.where(valid, np.maximum(s, 0.0) ** alpha if alpha else 1.0, 0.0).astype(np.float32)
    nb = db[np.where(valid, r, 0)]  # (q, n, d)
    return _normalise(self_weight * q + np.einsum("qn,qnd->qd", w, nb))


def average_qe(queries: np.ndarray, db: np.ndarray, neighbours: Neighbours, n: int = 5) -> np.ndarray:
    sims, rows = neighbours(queries, n)
    return expand_queries(queries, db, sims, rows, n, alpha=0.0)


def alpha_qe(queries: np.ndarray, db: np.ndarray, neighbours: Neighbours, n: int = 10,
             alpha: float = 3.0) -> np.ndarray:
    sims, rows = neighbours(queries, n)
    return expand_queries(queries, db, sims, rows, n, alpha=alpha)


def database_augment(db: np.ndarray, sims: np.ndarray, rows: np.ndarray, k: int = 5,
                     alpha: float = 3.0) -> np.ndarray:
    """DBA: every database vector becomes the alpha-weighted mean of itself and its ``k`` nearest
    other items (``sims``/``rows`` from a self-excluded search of the database against itself).
    The index is then rebuilt on the result and queries are searched against it."""
    return expand_queries(db, db, sims, rows, k, alpha=alpha, self_weight=1.0)
