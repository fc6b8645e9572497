"""Scale-out (issue 12): filtered search on every index kind, the milvus kind behind the real
facade and CLI (Milvus Lite), and the Ray engine (a real local Ray) against the local engine, on a
10-class Caltech-101 subset with the real EfficientNet-Lite0 weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imrs.catalog import ImageRecord
from imrs.cli import main
from imrs.collection import Collection
from imrs.filters import FilterError, Where, evaluate, parse, to_milvus, to_sql
from imrs.indexes import INDEX_KINDS, make_index
from imrs.store import EmbeddingSet

from .conftest import caltech_subset
from .test_indexes import clustered, ids_for

BB = "efficientnet_lite0"
CLASSES = ["sunflower", "airplanes", "Leopards", "watch", "Motorbikes", "lotus", "butterfly", "chair",
           "camera", "dolphin"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# -- the filter language -----------------------------------------------------------------------------
def test_filter_language_parses_safely() -> None:
    node = parse("source == 'dynamic' and (label in ['a', \"b\"] or not term != 'x')")
    rows = [{"source": "dynamic", "label": "a", "term": ""}, {"source": "base", "label": "a", "term": "x"},
            {"source": "dynamic", "label": "c", "term": "x"}, {"source": "dynamic", "label": "c", "term": "y"}]
    assert [evaluate(node, r) for r in rows] == [True, False, True, False]
    sql, args = to_sql(node)
    assert "?" in sql and args == ["dynamic", "a", "b", "x"] and "dynamic" not in sql
    # a quote in a value is a value, in SQL (a parameter) and in Milvus (escaped)
    sneaky = parse("label == 'x\\' OR 1=1 --'")
    assert to_sql(sneaky) == ("label = ?", ["x' OR 1=1 --"])
    assert to_milvus(parse('label == "a\\"b"')) == 'label == "a\\"b"'
    assert to_milvus(parse("term not in []")) == '(term == "" or term != "")'
    for bad, why in [("", "empty"), ("colour == 'red'", "unknown filter field"), ("label = 'a'", "cannot read"),
                     ("label == a", "quoted string"), ("label == 'a' label == 'b'", "unexpected"),
                     ("label in ['a'", "expected"), ("__import__('os')", "unknown filter field"),
                     ("(" * 300 + "label == 'a'" + ")" * 300, "nested deeper"),
                     ("not " * 200 + "label == 'a'", "nested deeper")]:
        with pytest.raises(FilterError, match=why):
            parse(bad)


# -- filtered search, every kind -----------------------------------------------------------------------
def _attrs(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {"source": np.where(rng.random(n) < 0.1, "dynamic", "base"),
            "label": rng.choice(["cat", "dog", "owl", "eel"], n, p=[0.6, 0.3, 0.08, 0.02]),
            "term": np.array([""] * n, dtype=object)}


@pytest.mark.parametrize("path", ["exact", "masked"])
@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_filtered_search_returns_k_matching_hits(kind: str, path: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """k hits that all satisfy the filter whenever k match (fewer only when fewer match), on the
    exact-subset path (small allowed sets) and on the native masked path (large ones)."""
    if path == "masked":
        monkeypatch.setattr("imrs.indexes.base.FILTER_EXACT_FLOATS", 0)
    n, dim = 2000, 32
    x = clustered(n, dim, seed=31, noise=1.0)
    ids = ids_for(n)
    attrs = _attrs(n)
    row_of = {int(i): r for r, i in enumerate(ids)}
    params = {"exact_below": 100} if kind in ("ivf_flat", "ivf_pq", "annoy") else {}
    if kind == "milvus":
        params = {"uri": str(tmp_path / "m.db"), "collection": f"f_{path}"}
    index = make_index(kind, dim, n_hint=n, **params)

    def attr_source(batch: np.ndarray) -> dict[str, list[str]]:
        rows = [row_of[int(i)] for i in batch]
        return {f: [str(attrs[f][r]) for r in rows] for f in attrs}

    index.set_attribute_source(attr_source)
    index.add(ids, x)
    index.remove(ids[::9])  # tombstones / dead slots are never returned either
    alive = np.ones(n, bool)
    alive[::9] = False
    q = clustered(12, dim, seed=32, noise=1.0)
    for expr in ["source == 'dynamic'", "label in ['owl', 'eel'] and source != 'dynamic'", "label != 'cat'",
                 "label == 'eel' and source == 'dynamic'"]:
        node = parse(expr)
        match = np.array([alive[r] and evaluate(node, {f: str(attrs[f][r]) for f in attrs}) for r in range(n)])
        where = Where(expr, ids_fn=lambda _sql, _args, m=match: ids[m])
        k = 10
        scores, found = index.search(q, k, where=where)
        want = min(k, int(match.sum()))
        assert ((found != -1).sum(axis=1) == want).all(), (expr, int(match.sum()))
        hit_rows = np.array([row_of[int(i)] for i in found[found != -1]])
        assert match[hit_rows].all(), f"{kind}: a hit breaks {expr!r}"
        # and they are the right ones: the filtered exact top-k (recall, for the approximate kinds)
        sub = np.flatnonzero(match)
        truth = ids[sub[np.argsort(-(q @ x[sub].T), axis=1)[:, :want]]]
        recall = np.mean([len(set(t) & set(f)) / max(want, 1) for t, f in zip(truth.tolist(), found.tolist(),
                                                                               strict=True)])
        assert recall >= 0.9, (kind, expr, recall)


# -- the facade and the CLI on Caltech-101 ----------------------------------------------------------
@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes x 5 images, symlinked (writable folder, read-only shared data)."""
    root = tmp_path_factory.mktemp("subset") / "caltech10"
    for src in caltech_subset(CLASSES, 5):
        dst = root / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
    return root


@pytest.fixture(scope="module")
def milvus_home(subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The subset indexed once into Milvus Lite through the CLI (the local engine)."""
    home = tmp_path_factory.mktemp("home")
    assert main(["index", str(subset), "--backbone", BB, "--indexer", "milvus", "--home", str(home), "-q"]) == 0
    return home


def hits_of(capsys, *argv: str) -> list[dict]:
    code, out, err = run_cli(capsys, "search", *argv, "--json")
    assert code == 0, err
    return json.loads(out)["hits"]


@pytest.mark.slow
def test_milvus_index_search_rerun_snapshot(subset: Path, milvus_home: Path, capsys, photos: Path) -> None:
    home = str(milvus_home)
    sunflower = str(photos / "sunflower.jpg")
    capsys.readouterr()
    hits = hits_of(capsys, "--image", sunflower, "-k", "5", "--home", home)
    assert len(hits) == 5 and sum(h["label"] == "sunflower" for h in hits) >= 4, hits
    code, out, _ = run_cli(capsys, "index", str(subset), "--home", home, "-q")
    assert code == 0 and "embedded 0" in out and "50 unchanged" in out and "milvus" in out
    coll = Collection(subset, BB, "milvus", home=milvus_home)
    loc = coll.index.location()
    assert loc is not None and loc["uri"].startswith(str(coll.state_dir)) and len(coll.index) == 50
    # filtered: every hit is a lotus, and there are k of them although sunflowers score higher
    hits = hits_of(capsys, "--image", sunflower, "-k", "5", "--home", home, "--where", "label == 'lotus'")
    assert len(hits) == 5 and {h["label"] for h in hits} == {"lotus"}
    code, _, err = run_cli(capsys, "search", "--image", sunflower, "--home", home, "--where", "colour == 'red'")
    assert code == 2 and err.startswith("imrs: error: unknown filter field")
    # a snapshot records where the vectors are and restores without re-embedding
    npz_mtime = coll.base_npz().stat().st_mtime_ns
    code, out, _ = run_cli(capsys, "snapshot", "save", "s1", "--home", home)
    assert code == 0 and "50 vectors" in out
    manifest = json.loads(next((coll.snap_dir).glob("s1@*/manifest.json")).read_text())
    assert manifest["extra"]["vectors_at"]["collection"] == loc["collection"]
    assert manifest["extra"]["vectors_at"]["uri"] == loc["uri"]
    code, out, _ = run_cli(capsys, "snapshot", "load", "s1", "--home", home)
    assert code == 0 and "loaded snapshot s1: 50 vectors" in out
    assert coll.base_npz().stat().st_mtime_ns == npz_mtime
    hits = hits_of(capsys, "--image", sunflower, "-k", "3", "--home", home)
    assert sum(h["label"] == "sunflower" for h in hits) >= 2
    # moving the vectors to another Milvus (here another Lite file, as a server would be given):
    # the index is refilled from the NPZ cache, nothing is embedded, the old store is untouched
    other = milvus_home / "elsewhere.db"
    code, out, _ = run_cli(capsys, "index", str(subset), "--home", home, "--milvus-uri", str(other), "-q")
    assert code == 0 and "embedded 0" in out and "index holds 50 vectors" in out
    moved = Collection(subset, BB, "milvus", home=milvus_home, index_params={"uri": str(other)})
    assert moved.index.location()["uri"] == str(other) and len(moved.index) == 50
    live = json.loads(next(coll.snap_dir.glob(f"{coll.live_name}@*/manifest.json")).read_text())
    assert live["extra"]["vectors_at"]["uri"] == str(other), "the move is saved, not redone on every open"
    hits = hits_of(capsys, "--image", sunflower, "-k", "5", "--home", home, "--milvus-uri", str(other))
    assert sum(h["label"] == "sunflower" for h in hits) >= 4
    # another index type: rebuilt from the caches, saved, used by the next command
    code, out, _ = run_cli(capsys, "index", str(subset), "--home", home, "--milvus-uri", str(other),
                           "--milvus-index", "ivf_flat", "-q")
    assert code == 0 and "embedded 0" in out
    again = Collection(subset, BB, "milvus", home=milvus_home, index_params={"uri": str(other)})
    assert again.index.stats()["index_type"] == "IVF_FLAT" and len(again.index) == 50


@pytest.mark.slow
def test_where_on_every_kind_through_the_facade(subset: Path, milvus_home: Path, tmp_path: Path) -> None:
    """Dynamic images added, then every kind rebuilt from the caches: a filter by source, label
    and term returns k hits that satisfy it, with and without query expansion."""
    root = tmp_path / "writable"
    shutil.copytree(subset, root, symlinks=True)
    coll = Collection(subset, BB, "milvus", home=milvus_home)
    emb = EmbeddingSet.load(coll.base_npz())
    mine = Collection(root, BB, "flat_ip", home=tmp_path / "h2")
    assert mine.sync().embedded == 50
    lotus = [i for i, r in enumerate(emb.relpaths) if r.startswith("lotus/")]
    recs = []
    for n, i in enumerate(lotus[:3]):
        rel = f"dynamic_water_lily/img{n}.jpg"
        (root / rel).parent.mkdir(exist_ok=True)
        shutil.copy(subset / emb.relpaths[i], root / rel)
        recs.append(ImageRecord.for_path(rel, source="dynamic", term="water lily", slug="water_lily",
                                         label="water lily"))
    assert mine.add_dynamic("water_lily", recs, emb.vectors[lotus[:3]]) == 3
    q = emb.vectors[lotus[3]]
    for kind in INDEX_KINDS:
        mine.rebuild_index(kind)
        got = mine.search_vectors(q, 3, where="source == 'dynamic'")[0]
        assert len(got) == 3 and {h.source for h in got} == {"dynamic"}, kind
        got = mine.search_vectors(q, 4, where="term == 'water lily' or label == 'watch'")[0]
        assert len(got) == 4 and all(h.label in ("water lily", "watch") for h in got), kind
        got = mine.search_vectors(q, 5, where="label in ['chair', 'camera'] and source != 'dynamic'", qe=2)[0]
        assert len(got) == 5 and {h.label for h in got} <= {"chair", "camera"}, kind


# -- the Ray engine ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting one costs ~12 s), torn down after. 3 logical CPUs:
    the encoder actor takes one, read tasks must always find one (the machine's 2 cores are
    shared by all of them anyway)."""
    ray = pytest.importorskip("ray")
    from imrs.engines.ray_engine import ensure_ray

    ensure_ray(num_cpus=3)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_matches_local_and_is_incremental(local_ray, subset: Path, milvus_home: Path, tmp_path: Path,
                                                     capsys, photos: Path) -> None:
    root = tmp_path / "with_bad"
    shutil.copytree(subset, root, symlinks=True)
    (root / "watch" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    home = str(tmp_path / "ray-home")
    code, out, _ = run_cli(capsys, "index", str(root), "--backbone", BB, "--indexer", "milvus", "--engine", "ray",
                           "--ray-concurrency", "1", "--home", home, "-q")
    assert code == 0 and "51 new" in out and "embedded 50, 1 failed" in out
    assert "skipped watch/broken.jpg: corrupt image" in out  # reported like the local engine does
    hits = hits_of(capsys, "--image", str(photos / "sunflower.jpg"), "-k", "5", "--home", home)
    assert sum(h["label"] == "sunflower" for h in hits) >= 4, hits
    code, out, _ = run_cli(capsys, "index", str(root), "--engine", "ray", "--home", home, "-q")
    assert code == 0 and "embedded 0" in out
    # the same vectors as the local engine's, image by image
    ray_emb = EmbeddingSet.load(Collection(root, BB, "milvus", home=home).base_npz())
    local_emb = EmbeddingSet.load(Collection(subset, BB, "milvus", home=milvus_home).base_npz())
    local_by_rel = dict(zip(local_emb.relpaths.tolist(), local_emb.vectors, strict=True))
    assert set(ray_emb.relpaths.tolist()) == set(local_by_rel)
    cos = np.array([float(v @ local_by_rel[r]) for r, v in zip(ray_emb.relpaths.tolist(), ray_emb.vectors,
                                                                 strict=True)])
    assert cos.min() >= 0.999, cos.min()


def test_unreachable_ray_cluster_is_one_line_in_seconds() -> None:
    """ray.init retries an absent cluster for minutes; the engine checks the port first."""
    pytest.importorskip("ray")
    from imrs.engines.ray_engine import _check_reachable
    from imrs.errors import IMRSError

    with pytest.raises(IMRSError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        _check_reachable("127.0.0.1:1")
    with pytest.raises(IMRSError, match="is a Ray Client address, which IMRS does not use"):
        _check_reachable("ray://127.0.0.1:1")  # the client form is refused before any connection
    _check_reachable("auto")  # not a host:port: left to Ray
