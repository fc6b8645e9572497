"""Exact inner-product search: the ground truth of benchmarks, the exact delta and small filtered
searches of every index kind, and the re-rank of approximate candidates."""

from __future__ import annotations

import faiss
import numpy as np

#: Queries per block in exact re-ranking, sized so a block's gathered candidates stay ~64 MiB.
_RERANK_BLOCK_FLOATS = 16 * 1024 * 1024


def exact_search(queries: np.ndarray, base: np.ndarray, k: int, exclude: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-``k`` (FAISS's blocked BLAS path): (scores, row numbers of
    ``base``), best first. ``exclude[i]`` is a row of ``base`` query ``i`` must not return (itself in
    a leave-one-out evaluation), or -1; with ``exclude`` at most ``len(base) - 1`` rows come back."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    nb = len(base)
    kk = min(k, nb - (1 if exclude is not None else 0))
    if kk <= 0:
        return (np.full((len(queries), 0), -np.inf, np.float32), np.full((len(queries), 0), -1, np.int64))
    extra = 1 if exclude is not None else 0  # kk <= nb - 1 then: one more row always exists
    scores, rows = faiss.knn(queries, base, kk + extra, metric=faiss.METRIC_INNER_PRODUCT)
    scores, rows = scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)
    return (scores, rows) if exclude is None else drop_excluded(scores, rows, exclude, kk)


def drop_excluded(scores: np.ndarray, rows: np.ndarray, exclude: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of a top-``k+1`` answer without each query's ``exclude[i]``: that one when it was
    returned, else the last (so what remains is the top-``k`` of everything else)."""
    is_out = rows == np.asarray(exclude, dtype=np.int64)[:, None]
    drop = np.where(is_out.any(axis=1), is_out.argmax(axis=1), rows.shape[1] - 1)
    keep = np.ones_like(rows, dtype=bool)
    keep[np.arange(len(rows)), drop] = False
    return scores[keep].reshape(len(rows), k), rows[keep].reshape(len(rows), k)


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
