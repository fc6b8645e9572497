"""Metric functions against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from imrs.bench import metrics as M
from imrs.indexes.exact import exact_search


def test_precision_at_k() -> None:
    rel = [1, 0, 1, 0, 0]
    assert M.precision_at_k(rel, 1) == 1.0
    assert M.precision_at_k(rel, 3) == pytest.approx(2 / 3)
    assert M.precision_at_k(rel, 10) == pytest.approx(0.2)  # short ranking: missing places are misses


def test_average_precision_hand_computed() -> None:
    rel = [1, 0, 1, 0, 0]
    # hits at ranks 1 and 3: (1/1 + 2/3) / 2
    assert M.average_precision(rel) == pytest.approx((1 + 2 / 3) / 2)
    # two more relevant items exist but were never retrieved
    assert M.average_precision(rel, n_relevant=4) == pytest.approx((1 + 2 / 3) / 4)
    assert np.isnan(M.average_precision([0, 0], n_relevant=0))
    assert M.average_precision([0, 0, 0, 1]) == pytest.approx(0.25)


def test_average_precision_at_k_hand_computed() -> None:
    rel = [1, 0, 1, 0, 1]
    # cut at 3, normalised by min(k, R) = min(3, 4) = 3
    assert M.average_precision_at_k(rel, 3, n_relevant=4) == pytest.approx((1 + 2 / 3) / 3)
    # cut at 2: only the first hit, normalised by min(2, 3)
    assert M.average_precision_at_k(rel, 2) == pytest.approx(1 / 2)
    # perfect top-k with many relevant items scores 1
    assert M.average_precision_at_k([1, 1, 1, 0], 3, n_relevant=50) == pytest.approx(1.0)


def test_recall_at_k_hand_computed() -> None:
    found = np.array([[1, 2, 3], [4, 5, -1]])
    truth = np.array([[3, 2, 9], [4, 6, 7]])
    assert M.recall_at_k(found, truth, 3) == pytest.approx(3 / 6)
    assert M.recall_at_k(found, truth, 1) == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        M.recall_at_k(found, truth[:1], 3)


def test_batched_metrics_match_scalar_ones() -> None:
    rng = np.random.default_rng(0)
    rel = rng.random((20, 30)) < 0.3
    nrel = rel.sum(axis=1) + rng.integers(0, 3, size=20)
    m = M.ranking_metrics(rel, nrel, ks=(1, 10), map_k=[5, 10], full=True)
    for i in range(20):
        assert m["p@10"][i] == pytest.approx(M.precision_at_k(rel[i], 10))
        assert m["ap@5"][i] == pytest.approx(M.average_precision_at_k(rel[i], 5, int(nrel[i])), nan_ok=True)
        assert m["ap"][i] == pytest.approx(M.average_precision(rel[i], int(nrel[i])), nan_ok=True)


def _unit(*rows: tuple[float, float]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_label_quality_excludes_self_and_counts_distractors() -> None:
    # a, b: class 0; c, d: class 1; e: background, closest of all to a
    db = _unit((1, 0), (0.9, 0.1), (0, 1), (0.1, 0.9), (0.95, 0.05))
    labels = np.array([0, 0, 1, 1, -1])
    q = M.label_quality(db, labels, np.array([0]), k=10)
    # ranking for a without itself: e, b, d, c -> relevant at rank 2 only, R = 1
    assert q["p@1"] == 0.0
    assert q["map"] == pytest.approx(0.5)
    assert q["map@10"] == pytest.approx(0.5)
    assert q["p@10"] == pytest.approx(0.1)
    q2 = M.label_quality(db, labels, np.array([2]), k=10)  # c: d first, perfect
    assert q2["p@1"] == 1.0 and q2["map"] == pytest.approx(1.0)


def test_exact_search_matches_sort_and_excludes() -> None:
    rng = np.random.default_rng(1)
    db = rng.normal(size=(50, 8)).astype(np.float32)
    q = db[:5]
    s, r = exact_search(q, db, 7, exclude=np.arange(5))
    full = q @ db.T
    for i in range(5):
        full[i, i] = -np.inf
        assert r[i].tolist() == np.argsort(-full[i], kind="stable")[:7].tolist()
        assert i not in r[i]
    assert np.all(np.diff(s, axis=1) <= 0)


def test_topk_label_quality_and_text_quality() -> None:
    labels = np.array([0, 0, 0, 1, 1, -1])
    # query row 0 (class 0, R = 2), index returned rows 1, 3, 2
    out = M.topk_label_quality(np.array([[1, 3, 2]]), labels, np.array([0]), k=3)
    assert out["p@1"] == 1.0
    assert out["map@3"] == pytest.approx((1 + 2 / 3) / 2)
    scores = np.array([[0.9, 0.1, 0.8, 0.7, 0.0, 0.95]])  # text query for class 0
    t = M.score_quality(scores, labels, np.array([0]), k=2)
    # ranking: 5(bg), 0, 2, 3, 1, 4 -> relevant at 2, 3, 5; R = 3
    assert t["ap"][0] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert t["ap@2"][0] == pytest.approx((1 / 2) / 2)
