"""ANN recall@10 against exact search on real image embeddings (EfficientNet-Lite0 on Caltech-101),
not only on synthetic clusters: real features are anisotropic and clumpy, which is where ANN
parameters chosen from the collection size can go wrong."""

from __future__ import annotations

import numpy as np
import pytest

from imrs.indexes import INDEX_KINDS, make_index

from .conftest import CALTECH, need


@pytest.fixture(scope="module")
def real_vectors() -> np.ndarray:
    need(CALTECH)
    from imrs.encoders import get_encoder

    classes = sorted(p for p in CALTECH.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")
    paths = [f for c in classes for f in sorted(c.glob("*.jpg"))[:12]]  # ~1,200 images, 101 classes
    res = get_encoder("efficientnet_lite0").embed_paths(paths, batch_size=64)
    assert not res.failures
    return res.vectors


@pytest.mark.parametrize("kind", [k for k in INDEX_KINDS if k != "flat_ip"])
def test_ann_recall_at_10_on_real_embeddings(kind: str, real_vectors: np.ndarray) -> None:
    n = len(real_vectors)
    ids = np.arange(n, dtype=np.int64) * 7919 - 10**9
    exact = make_index("flat_ip", real_vectors.shape[1])
    exact.add(ids, real_vectors)
    ann = make_index(kind, real_vectors.shape[1], n_hint=n)
    ann.add(ids, real_vectors)
    queries = real_vectors[::6]
    _, truth = exact.search(queries, 10)
    scores, got = ann.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth.tolist(), got.tolist(), strict=True)])
    assert recall >= 0.9, f"{kind}: recall@10 {recall:.3f} with auto params {ann.get_params()}"
    # the scores are true cosines for every kind (IVF-PQ re-ranks, Annoy converts distances)
    for row, (srow, irow) in enumerate(zip(scores, got, strict=True)):
        vec = real_vectors[(irow[0] + 10**9) // 7919]
        assert abs(float(srow[0]) - float(vec @ queries[row])) < 1e-3
