"""Retrieval metrics, defined once and vectorised so a benchmark over every Caltech-101 image takes
seconds, not minutes.

Definitions (the ones the reference script and most retrieval papers use):

* ``P@k``: fraction of the first ``k`` results that are relevant.
* ``AP`` (full ranking): ``(1/R) * sum_i P@i * rel_i`` over the whole ranking, ``R`` = relevant
  items in the database (the query itself excluded). Queries with ``R == 0`` are left out of mAP.
* ``AP@k``: the same sum cut at ``k``, normalised by ``min(k, R)`` so a perfect top-``k`` scores 1
  even when ``R > k`` (the usual "mAP@k" of retrieval benchmarks).
* ``recall@k`` (index quality): ``|ANN top-k  ∩  exact top-k| / k``, averaged over queries; this
  measures the index, not the embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _as_rel(relevant: Sequence[bool] | np.ndarray) -> np.ndarray:
    return np.asarray(relevant, dtype=bool).reshape(-1)


def precision_at_k(relevant: Sequence[bool] | np.ndarray, k: int) -> float:
    """A ranking shorter than ``k`` counts the missing places as misses."""
    if k < 1:
        raise ValueError("k must be >= 1")
    rel = _as_rel(relevant)[:k]
    return float(rel.sum()) / k


def average_precision(relevant: Sequence[bool] | np.ndarray, n_relevant: int | None = None) -> float:
    """AP of one ranking. ``n_relevant`` is the number of relevant items in the whole database
    (defaults to those present in ``relevant``, i.e. the ranking is complete)."""
    rel = _as_rel(relevant)
    total = int(rel.sum()) if n_relevant is None else int(n_relevant)
    if total <= 0:
        return float("nan")
    hits = np.cumsum(rel)
    ranks = np.arange(1, len(rel) + 1)
    return float((hits[rel] / ranks[rel]).sum() / total)


def average_precision_at_k(relevant: Sequence[bool] | np.ndarray, k: int, n_relevant: int | None = None) -> float:
    if k < 1:
        raise ValueError("k must be >= 1")
    rel = _as_rel(relevant)
    total = int(rel.sum()) if n_relevant is None else int(n_relevant)
    if total <= 0:
        return float("nan")
    rel = rel[:k]
    hits = np.cumsum(rel)
    ranks = np.arange(1, len(rel) + 1)
    return float((hits[rel] / ranks[rel]).sum() / min(k, total))


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean overlap of the first ``k`` ids of each row (``-1`` = no result, never a match)."""
    found = np.atleast_2d(np.asarray(found))[:, :k]
    truth = np.atleast_2d(np.asarray(truth))[:, :k]
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows but {truth.shape[0]} ground-truth rows")
    if truth.shape[1] < k:
        raise ValueError(f"ground truth has only {truth.shape[1]} columns, need {k}")
    hits = 0
    for f, t in zip(found, truth, strict=True):
        hits += len(set(f[f != -1].tolist()) & set(t.tolist()))
    return hits / float(k * len(truth)) if len(truth) else float("nan")


# -- batched ------------------------------------------------------------------------------------------

def ranking_metrics(rel: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int] = (1, 10),
                    map_k: int | Sequence[int] | None = None, full: bool = False) -> dict[str, np.ndarray]:
    """Per-query metrics from a (queries, L) boolean matrix of ranked relevance.

    ``full=True`` means each row is the complete ranking of the database, so its AP is the full
    AP; otherwise only ``P@k`` and ``AP@map_k`` (cut at the rows' length) are meaningful.
    """
    rel = np.asarray(rel, dtype=bool)
    if rel.ndim != 2:
        raise ValueError("rel must be 2-D (queries x ranking)")
    nrel = np.asarray(n_relevant, dtype=np.float64).reshape(-1)
    q, length = rel.shape
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"p@{k}"] = rel[:, :k].sum(axis=1) / float(k)
    hits = np.cumsum(rel, axis=1, dtype=np.float64)
    prec = hits / np.arange(1, length + 1, dtype=np.float64)
    contrib = np.where(rel, prec, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        map_ks = [] if map_k is None else [map_k] if isinstance(map_k, int) else list(map_k)
        for mk in map_ks:
            kk = min(mk, length)
            denom = np.minimum(float(mk), nrel)
            out[f"ap@{mk}"] = np.where(nrel > 0, contrib[:, :kk].sum(axis=1) / denom, np.nan)
        if full:
            out["ap"] = np.where(nrel > 0, contrib.sum(axis=1) / nrel, np.nan)
    return out


@dataclass
class LabelSpace:
    """Integer labels of the database; ``-1`` marks items that are never relevant (background,
    unlabelled files) but stay in the database as distractors."""

    labels: np.ndarray  # int (n,)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        counts = np.bincount(self.labels[self.labels >= 0], minlength=1) if (self.labels >= 0).any() \
            else np.zeros(1, np.int64)
        self.counts = counts

    def n_relevant(self, query_rows: np.ndarray, self_in_db: bool = True) -> np.ndarray:
        lab = self.labels[query_rows]
        n = np.where(lab >= 0, self.counts[np.maximum(lab, 0)], 0)
        return n - (1 if self_in_db else 0) * (lab >= 0)


def label_quality(db: np.ndarray, labels: np.ndarray, query_rows: np.ndarray, queries: np.ndarray | None = None,
                  k: int = 50, chunk: int = 512) -> dict[str, float]:
    """Label metrics of exact (cosine) search with each query row of the database as the query,
    itself excluded, over the FULL ranking: P@1, P@10, mAP@k and full mAP.

    ``queries`` lets a transformed query (query expansion) stand in for ``db[query_rows]`` while the
    item itself is still excluded from its own ranking.
    """
    space = LabelSpace(labels)
    db = np.ascontiguousarray(db, dtype=np.float32)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    qv = db[query_rows] if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    nrel = space.n_relevant(query_rows)
    acc: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(query_rows), chunk):
        rows = query_rows[s:s + chunk]
        sims = qv[s:s + chunk] @ db.T
        sims[np.arange(len(rows)), rows] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")[:, :-1]  # drop the query itself (last)
        qlab = space.labels[rows]
        rel = (space.labels[order] == qlab[:, None]) & (qlab[:, None] >= 0)
        m = ranking_metrics(rel, nrel[s:s + chunk], ks=(1, 10), map_k=sorted({10, k}), full=True)
        for key, val in m.items():
            acc.setdefault(key, []).append(val)
    out = {key: float(np.nanmean(np.concatenate(v))) for key, v in acc.items()}
    res: dict[str, float] = {"p@1": out["p@1"], "p@10": out["p@10"], "map@10": out["ap@10"]}
    res[f"map@{k}"] = out[f"ap@{k}"]
    res["map"] = out["ap"]
    res["queries"] = int(len(query_rows))
    return res


def topk_label_quality(result_rows: np.ndarray, labels: np.ndarray, query_rows: np.ndarray,
                       k: int = 50) -> dict[str, float]:
    """Label metrics from an index's own top-``k`` (database rows, -1 = none, self already removed):
    P@1, P@10 and mAP@k. Full mAP needs the full ranking; see :func:`label_quality`."""
    space = LabelSpace(labels)
    res = np.asarray(result_rows, dtype=np.int64)[:, :k]
    qlab = space.labels[np.asarray(query_rows, dtype=np.int64)]
    lab = np.where(res >= 0, space.labels[np.maximum(res, 0)], -2)
    rel = (lab == qlab[:, None]) & (qlab[:, None] >= 0)
    m = ranking_metrics(rel, space.n_relevant(query_rows), ks=(1, 10), map_k=sorted({10, min(k, 10), k}))
    out = {"p@1": float(np.nanmean(m["p@1"])), "p@10": float(np.nanmean(m["p@10"])),
           "map@10": float(np.nanmean(m["ap@10"]))}
    out[f"map@{k}"] = float(np.nanmean(m[f"ap@{k}"]))
    return out


def text_quality(db: np.ndarray, labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                 k: int = 10) -> dict[str, np.ndarray]:
    """Per-query AP@k and full AP of text (or any external) queries against integer labels."""
    db = np.ascontiguousarray(db, dtype=np.float32)
    return score_quality(np.ascontiguousarray(queries, dtype=np.float32) @ db.T, labels, query_labels, k)


def score_quality(scores: np.ndarray, labels: np.ndarray, query_labels: np.ndarray,
                  k: int = 10) -> dict[str, np.ndarray]:
    """Like :func:`text_quality` from a (queries, n) score matrix (higher = better), for rankers
    that score the database without a query vector (ConSE in class space)."""
    space = LabelSpace(labels)
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")
    ql = np.asarray(query_labels, dtype=np.int64)
    rel = (space.labels[order] == ql[:, None]) & (ql[:, None] >= 0)
    nrel = np.where(ql >= 0, space.counts[np.maximum(ql, 0)], 0)
    return ranking_metrics(rel, nrel, ks=(1, 10), map_k=k, full=True)
