"""``imrs bench`` end to end on a small Caltech-101 subset, plus its parts on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imrs.bench.data import collection_caches, load_embeddings, scan_dataset
from imrs.bench.report import latest_run
from imrs.bench.runner import holdout_split, mark_kept, sample_queries
from imrs.bench.tuning import search_without_self, tune_index
from imrs.config import state_dir_for
from imrs.store import EmbeddingSet
from tests.conftest import CALTECH, caltech_subset

CLASSES = ["sunflower", "airplanes", "Leopards", "watch", "pizza"]


def _link_subset(dst: Path, classes: list[str], per_class: int, background: int = 4) -> Path:
    files = caltech_subset(classes, per_class)
    files += sorted((CALTECH / "BACKGROUND_Google").glob("*.jpg"))[:background]
    for src in files:
        target = dst / src.parent.name / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(src)
    return dst


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _link_subset(tmp_path_factory.mktemp("bench") / "data", CLASSES, 8)


@pytest.mark.slow
def test_bench_end_to_end_writes_every_output(subset: Path, tmp_path: Path, home: Path) -> None:
    from imrs.cli import main

    out = tmp_path / "run"
    rc = main(["bench", "--data-root", str(subset), "--backbones", "efficientnet_lite0",
               "--indexers", "flat_ip", "hnsw", "ivf_flat,ivf_pq", "annoy", "--topk", "10", "--sample-queries", "30",
               "--out", str(out), "--seed", "0", "--improvements", "all", "--map", "pca",
               "--latency-queries", "10", "-q"])
    assert rc == 0
    for name in ("results.json", "summary.md", "indexes.csv", "tuning.csv", "tuned.csv", "quality.csv", "text.csv",
                 "text_per_class.csv", "recall_qps.png", "quality.png", "map_efficientnet_lite0.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["images"] == 44 and res["meta"]["labelled"] == 40 and res["meta"]["distractors"] == 4
    assert res["meta"]["queries"] == 30
    assert {r["indexer"] for r in res["indexes"]} == {"flat_ip", "hnsw", "ivf_flat", "ivf_pq", "annoy"}
    flat = next(r for r in res["indexes"] if r["indexer"] == "flat_ip")
    assert flat["recall@10"] == pytest.approx(1.0)
    assert flat["memory_bytes"] > 0 and flat["latency_p50_ms"] > 0 and flat["qps"] > 0
    plain = next(r for r in res["quality"] if r["method"] == "plain kNN")
    assert 0.5 < plain["p@1"] <= 1.0 and 0.0 < plain["map"] <= 1.0
    methods = {r["method"] for r in res["quality"]}
    assert {"AQE", "DBA", "projection head 128", "plain kNN (held-out)"} <= methods
    assert any(m.startswith("PCA-whiten") for m in methods)
    text = {t["method"]: t for t in res["text"]}
    assert "ConSE query vector" in text and text["ConSE query vector"]["map@10"] > 0.5
    assert len(res["tuned"]) == 4
    latest = latest_run(home)
    assert latest is not None and Path(latest["run_dir"]) == out.resolve()
    assert set(latest["tables"]) >= {"indexes", "quality", "tuning", "text"}
    assert set(latest["plots"]) >= {"recall_qps", "quality", "map_efficientnet_lite0"}
    assert "## Indexes" in Path(latest["summary"]).read_text()

    # a re-run reuses the cache: nothing is embedded again, and quality numbers are identical
    out2 = tmp_path / "run2"
    assert main(["bench", "--data-root", str(subset), "--indexers", "flat_ip", "--topk", "10",
                 "--sample-queries", "30", "--out", str(out2), "--map", "none", "--no-tune", "-q"]) == 0
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["embeddings"][0]["embedded"] == 0 and res2["embeddings"][0]["from_cache"] == 44
    plain2 = next(r for r in res2["quality"] if r["method"] == "plain kNN")
    assert plain2["map"] == pytest.approx(plain["map"]) and plain2["p@10"] == pytest.approx(plain["p@10"])
    assert latest_run(home)["run_dir"] == str(out2.resolve())


@pytest.mark.parametrize("cache", ["emb_efficientnet_lite0.npz", "emb_efficientnet_lite0.store"])
def test_bench_reuses_collection_cache_without_embedding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         cache: str) -> None:
    root = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(3):
            (root / c).mkdir(parents=True, exist_ok=True)
            (root / c / f"{i}.jpg").write_bytes(b"not really a jpeg")
    data = scan_dataset(root)
    home = tmp_path / "home"
    emb_dir = state_dir_for(data.root, home) / "emb"
    vecs = np.random.default_rng(0).normal(size=(len(data), 1280)).astype(np.float32)
    EmbeddingSet("efficientnet_lite0", data.ids, data.relpaths, vecs).save(emb_dir / cache)  # file or shard store
    assert collection_caches(data.root, "efficientnet_lite0", home)

    def boom(*a, **k):  # embedding would mean the cache was not found
        raise AssertionError("should not embed")

    monkeypatch.setattr("imrs.encoders.get_encoder", boom)
    got, rows, rep = load_embeddings(data, "efficientnet_lite0", cache_dir=tmp_path / "cache", home=home,
                                     progress=False)
    assert rep.from_cache == len(data) and rep.embedded == 0 and len(rows) == len(data)
    np.testing.assert_allclose(got, vecs)
    assert Path(rep.cache).is_file()  # the bench keeps its own copy keyed by backbone + root


def test_scan_dataset_background_policy(tmp_path: Path) -> None:
    for c in ("cat", "dog", "BACKGROUND_Google"):
        (tmp_path / c).mkdir()
        for i in range(2):
            (tmp_path / c / f"{i}.png").write_bytes(b"x")
    keep = scan_dataset(tmp_path)
    assert keep.classes == ["cat", "dog"] and len(keep) == 6
    assert (keep.label_ids[keep.labels == "BACKGROUND_Google"] == -1).all()
    assert set(sample_queries(keep, 0, 0).tolist()) == set(np.flatnonzero(keep.label_ids >= 0).tolist())
    drop = scan_dataset(tmp_path, background="drop")
    assert len(drop) == 4 and (drop.label_ids >= 0).all()


def test_sampling_and_split_are_deterministic() -> None:
    labels = np.repeat(np.arange(10), 9)
    tr1, te1 = holdout_split(labels, 0.5, seed=3)
    tr2, te2 = holdout_split(labels, 0.5, seed=3)
    assert tr1.tolist() == tr2.tolist() and te1.tolist() == te2.tolist()
    assert not set(tr1.tolist()) & set(te1.tolist())
    assert len(tr1) + len(te1) == len(labels)
    for c in range(10):  # every class on both sides
        assert (labels[tr1] == c).any() and (labels[te1] == c).any()


def _clustered(n: int = 4000, dim: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat", "ivf_pq", "annoy"])
def test_autotune_meets_recall_target(kind: str) -> None:
    from imrs.bench.metrics import recall_at_k
    from imrs.indexes import make_index
    from imrs.indexes.exact import exact_search

    x = _clustered()
    params = {} if kind == "hnsw" else {"exact_below": 0}
    index = make_index(kind, x.shape[1], n_hint=len(x), **params)
    index.add(np.arange(len(x)), x)
    q = np.arange(0, len(x), 10)
    truth = exact_search(x[q], x, 10, exclude=q)[1]
    res = tune_index(index, kind, x[q], truth, k=10, target=0.95, self_ids=q, repeats=1)
    assert res.reached and res.best is not None
    assert res.best.recall >= 0.95
    assert len(res.curve) >= 2
    # the index is left at the chosen setting and really delivers the recall
    _, ids = search_without_self(index, x[q], q, 10)
    assert recall_at_k(ids, truth, 10) >= 0.95
    for name, value in res.best.setting.items():
        assert index.get_params()[name] == value
    # the chosen point is the fastest of those meeting the target
    assert res.best.qps == max(p.qps for p in res.curve if p.recall >= 0.95)


def test_fusion_and_kept_flags() -> None:
    from imrs.retrieval import fuse_backbones

    a = _clustered(50, 8, seed=1)
    b = _clustered(50, 4, seed=2)
    f = fuse_backbones([a, b])
    assert f.shape == (50, 12)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
    # the fused cosine is the mean of the per-backbone cosines
    np.testing.assert_allclose(f[0] @ f[1], 0.5 * (a[0] @ a[1] + b[0] @ b[1]), rtol=1e-5)
    rows = [{"backbone": "x", "method": "plain kNN", "split": "all", "p@10": 0.8, "map": 0.7},
            {"backbone": "x", "method": "AQE", "split": "all", "p@10": 0.85, "map": 0.75},
            {"backbone": "x", "method": "W", "split": "all", "p@10": 0.85, "map": 0.65}]
    mark_kept(rows)
    assert [r["kept"] for r in rows] == ["", "yes", "no"]


def test_whitening_and_head_round_trip(tmp_path: Path) -> None:
    from imrs.retrieval import PCAWhitening, ProjectionHead, train_head

    x = _clustered(600, 16, clusters=6)
    labels = np.repeat(np.arange(6), 100)
    w = PCAWhitening.fit(x, dim=8)
    y = w.transform(x)
    assert y.shape == (600, 8)
    w2 = PCAWhitening.load(w.save(tmp_path / "w.npz"))
    np.testing.assert_allclose(w2.transform(x), y, rtol=1e-5)
    h1 = train_head(x, labels, dim=4, hidden=16, epochs=3, seed=0)
    h2 = train_head(x, labels, dim=4, hidden=16, epochs=3, seed=0)
    np.testing.assert_allclose(h1.transform(x), h2.transform(x), rtol=1e-4, atol=1e-5)  # deterministic
    h3 = ProjectionHead.load(h1.save(tmp_path / "h.npz"))
    np.testing.assert_allclose(h3.transform(x), h1.transform(x), rtol=1e-5)
    assert h1.dim == 4 and h1.in_dim == 16


def test_docs_blocks_are_replaced_whole_and_say_where(tmp_path: Path) -> None:
    from imrs.bench.docblock import host_line, replace_block
    from imrs.encoders.int8 import cpu_features

    doc = tmp_path / "b.md"
    tail = "after\n<!-- u:start -->\n<!-- u:end -->\n"
    doc.write_text("intro\n<!-- t:start -->\nold | 1\n<!-- t:end -->\n" + tail)
    replace_block(doc, "t", "| new | 2 |\n")
    assert doc.read_text() == "intro\n<!-- t:start -->\n| new | 2 |\n<!-- t:end -->\n" + tail
    with pytest.raises(ValueError, match="exactly one"):
        replace_block(doc, "missing", "x")
    line = host_line()
    assert cpu_features().describe() in line and "load average" in line and "UTC" in line
