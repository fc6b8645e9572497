"""Behaviour of the six index kinds against real FAISS, Annoy and Milvus Lite.

Small collections (a few hundred 32-d vectors, with ``exact_below`` lowered so the approximate
structures are really built) check semantics after every change; one 5k x 128-d clustered
collection checks recall of each approximate kind, with auto parameters, against exact search.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from imrs.errors import IMRSError, UnknownIndexError
from imrs.indexes import INDEX_KINDS, VectorIndex, auto_params, load_index, make_index

ANN_KINDS = [k for k in INDEX_KINDS if k != "flat_ip"]
#: Kinds whose index lives in this process (files, mmap, native structures); milvus is a pointer.
LOCAL_KINDS = [k for k in INDEX_KINDS if k != "milvus"]
_collection_names = (f"t{n}" for n in itertools.count())
DIM = 32
N = 800  # > 39 * 16: enough for IVF-PQ's smallest (4-bit) codebooks
# exact_below lowered so IVF trains and Annoy builds a forest in these small tests
SMALL_PARAMS = {"ivf_flat": {"exact_below": 100}, "ivf_pq": {"exact_below": 100}, "annoy": {"exact_below": 100}}


@pytest.fixture(autouse=True, scope="module")
def milvus_lite_file(tmp_path_factory: pytest.TempPathFactory):
    """Milvus indexes of this module live in one Milvus Lite file (its default is the state folder)."""
    mp = pytest.MonkeyPatch()  # IMRS_TEST_MILVUS_URI: run them against a server (tests/test_engines.py)
    mp.setenv("IMRS_MILVUS_URI", os.environ.get("IMRS_TEST_MILVUS_URI")
              or str(tmp_path_factory.mktemp("milvus") / "lite.db"))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="module")
def one_omp_thread():
    """The test machine's cores are shared: OpenMP spinning on a busy core is slower than one thread."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, dim: int, seed: int, n_clusters: int = 50, noise: float = 1.6) -> np.ndarray:
    """Unit vectors around random centres: neighbours are meaningful, so recall is too.

    ``noise`` 1.6 makes clusters overlap enough that weak settings (IVF nprobe=1) lose recall.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_clusters, n)]
    x = x + rng.standard_normal((n, dim)).astype(np.float32) * np.float32(noise / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ids_for(n: int, start: int = 0) -> np.ndarray:
    # large, scattered int64 ids like stable_id produces, including negative ones
    return (np.arange(start, start + n, dtype=np.int64) * 1_000_003 - 7_000_000_000_000)


def small(kind: str, **params) -> VectorIndex:
    if kind == "milvus":  # a collection of its own, so indexes of one test never share rows
        params.setdefault("collection", next(_collection_names))
    return make_index(kind, DIM, **{**SMALL_PARAMS.get(kind, {}), **params})


def top1(index: VectorIndex, vecs: np.ndarray) -> np.ndarray:
    return index.search(vecs, 1)[1][:, 0]


def assert_sorted_padded(scores: np.ndarray, ids: np.ndarray) -> None:
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    finite = np.where(np.isneginf(scores), -1e9, scores)
    assert (np.diff(finite, axis=1) <= 1e-6).all(), "results must be best first"
    assert ((ids == -1) == np.isneginf(scores)).all(), "padding is -inf with id -1"


# -- basic semantics, every kind ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_add_search_scores_are_cosines(kind: str) -> None:
    x = clustered(N, DIM, seed=1)
    ids = ids_for(N)
    index = small(kind)
    index.add(ids, x)
    assert index.kind == kind and index.dim == DIM and len(index) == N
    assert index.stats()["loose"] == 0, "the approximate structure is built"
    assert ids[5] in index and 12345 not in index
    assert set(index.ids().tolist()) == set(ids.tolist())
    scores, found = index.search(x[:50], 10)
    assert scores.shape == found.shape == (50, 10)
    assert_sorted_padded(scores, found)
    assert (found[:, 0] == ids[:50]).all()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-3)
    # every returned score is the true cosine of query and returned vector
    row_of = {int(i): r for r, i in enumerate(ids)}
    exact = np.einsum("qd,qkd->qk", x[:50], x[np.vectorize(row_of.get)(found)])
    np.testing.assert_allclose(scores, exact, atol=1e-3)
    assert index.memory_bytes() > N * 8


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_remove_is_immediate_and_exact(kind: str) -> None:
    x = clustered(N, DIM, seed=2)
    ids = ids_for(N)
    index = small(kind)
    index.add(ids, x)
    gone: set[int] = set()
    rng = np.random.default_rng(0)
    for batch in np.array_split(rng.permutation(N)[:300], 5):  # > 20%: compaction happens en route
        assert index.remove(ids[batch]) == len(batch)
        gone |= set(ids[batch].tolist())
        found = index.search(x, 20)[1]
        assert not gone & set(found.ravel().tolist()), "a removed id came back"
        alive = np.array([i for i in range(N) if int(ids[i]) not in gone])
        assert (top1(index, x[alive]) == ids[alive]).all()
        assert len(index) == N - len(gone)
    assert index.remove(ids[:1]) in (0, 1)
    assert index.remove(np.array([424242, -5], np.int64)) == 0, "unknown ids are ignored"
    assert index.remove([]) == 0
    assert set(index.ids().tolist()) == set(ids.tolist()) - gone - set(ids[:1].tolist())


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_added_ids_found_right_after_each_add(kind: str) -> None:
    x = clustered(N, DIM, seed=3)
    ids = ids_for(N)
    index = small(kind)
    for lo in range(0, N, 80):  # crosses the training / forest-building thresholds on the way
        sl = slice(lo, lo + 80)
        index.add(ids[sl], x[sl])
        assert (top1(index, x[sl]) == ids[sl]).all()
        assert len(index) == lo + 80
    assert (top1(index, x[:200]) == ids[:200]).all()


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_upsert_replaces(kind: str) -> None:
    x = clustered(N, DIM, seed=4)
    new = clustered(40, DIM, seed=44)
    ids = ids_for(N)
    index = small(kind)
    index.add(ids, x)
    index.add(ids[:40], new)  # same ids, new vectors
    assert len(index) == N
    assert (top1(index, new) == ids[:40]).all()
    scores, found = index.search(x[:40], 5)
    # the old vectors are gone: their own id may still rank (new vector), but not with score ~1
    hit_self = found[:, 0] == ids[:40]
    assert (scores[hit_self, 0] < 0.999).all()
    # duplicates within one batch: the last occurrence wins
    twice = clustered(2, DIM, seed=45)
    index.add(np.array([ids[100], ids[100]]), twice)
    assert len(index) == N
    assert top1(index, twice[1:])[0] == ids[100]
    assert index.search(twice[:1], 1)[0][0, 0] < 0.999


# -- edges -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_empty_and_k_larger_than_n(kind: str) -> None:
    index = small(kind)
    q = clustered(3, DIM, seed=5)
    scores, found = index.search(q, 4)
    assert scores.shape == (3, 4) and (found == -1).all() and np.isneginf(scores).all()
    scores, found = index.search(q[0], 4)  # a single (dim,) query
    assert found.shape == (1, 4)
    index.add(ids_for(3), q)
    scores, found = index.search(q, 10)
    assert found.shape == (3, 10)
    assert_sorted_padded(scores, found)
    assert ((found != -1).sum(axis=1) == 3).all()
    assert set(found[0, :3].tolist()) == set(ids_for(3).tolist())
    index.remove(ids_for(3))
    assert len(index) == 0 and (index.search(q, 2)[1] == -1).all()


@pytest.mark.parametrize("kind", ANN_KINDS)
def test_rows_full_even_with_weak_params_and_tombstones(kind: str) -> None:
    """Padding only when the index really holds fewer than k: short probes/candidates are retried."""
    x = clustered(N, DIM, seed=16)
    ids = ids_for(N)
    index = small(kind)
    index.add(ids, x)
    index.remove(ids[::8])  # 100 tombstones / dead slots, under the compaction threshold
    index.set_params(**{"hnsw": {"efSearch": 4}, "ivf_flat": {"nprobe": 1}, "ivf_pq": {"nprobe": 1, "k_factor": 1},
                        "annoy": {"search_k": 5}, "milvus": {"efSearch": 4}}[kind])
    scores, found = index.search(x[:20], 300)
    assert (found != -1).all()
    assert all(len(set(row.tolist())) == 300 for row in found)
    assert not set(found.ravel().tolist()) & set(ids[::8].tolist())
    assert_sorted_padded(scores, found)
    scores, found = index.search(x[:5], N)  # everything live, exactly once
    assert ((found != -1).sum(axis=1) == len(index)).all()
    assert set(found[0][found[0] != -1].tolist()) == set(index.ids().tolist())


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_save_load_empty(kind: str, tmp_path: Path) -> None:
    index = small(kind)
    index.save(tmp_path / "empty")
    x = clustered(N, DIM, seed=17)
    for mmap in (False, True):
        loaded = load_index(tmp_path / "empty", mmap=mmap)
        assert len(loaded) == 0 and (loaded.search(x[:2], 3)[1] == -1).all()
        loaded.add(ids_for(N), x)
        assert (top1(loaded, x[:50]) == ids_for(N)[:50]).all()
        loaded.remove(ids_for(N))  # all gone, then saved and loaded again
        loaded.save(tmp_path / f"drained{mmap}")
        again = load_index(tmp_path / f"drained{mmap}", mmap=True)
        assert len(again) == 0 and (again.search(x[:2], 3)[1] == -1).all()


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_wrong_dim_and_input_conversion(kind: str) -> None:
    index = small(kind)
    with pytest.raises(ValueError, match="dimension 16"):
        index.add(ids_for(2), np.ones((2, 16), np.float32))
    x = clustered(150, DIM, seed=6)
    index.add(ids_for(150), x)
    with pytest.raises(ValueError, match="dimension 31"):
        index.search(np.ones((1, DIM - 1), np.float32), 3)
    with pytest.raises(ValueError, match="ids"):
        index.add(ids_for(2), x[:3])
    with pytest.raises(ValueError, match="k must"):
        index.search(x[:1], 0)
    # float64, Fortran-ordered, strided input is converted and gives the same answer
    wide = np.asfortranarray(np.repeat(x[:20].astype(np.float64), 2, axis=0)[::2])
    assert not wide.flags.c_contiguous
    s64, i64 = index.search(wide, 5)
    s32, i32 = index.search(x[:20], 5)
    assert (i64 == i32).all()
    np.testing.assert_allclose(s64, s32, atol=1e-5)


def test_unknown_kind() -> None:
    with pytest.raises(UnknownIndexError) as err:
        make_index("lsh", DIM)
    assert isinstance(err.value, IMRSError)
    for kind in INDEX_KINDS:
        assert kind in str(err.value)
    with pytest.raises(UnknownIndexError):
        auto_params("nope", 10, DIM)


def test_params_checks() -> None:
    with pytest.raises(ValueError, match="unknown index parameter"):
        make_index("hnsw", DIM, efSerch=10)
    with pytest.raises(ValueError, match="divide"):
        make_index("ivf_pq", DIM, m=5)
    index = make_index("hnsw", DIM, nprobe=4)  # another kind's tunable is ignored
    assert "nprobe" not in index.get_params()
    with pytest.raises(ValueError, match="rebuild"):
        index.set_params(M=8)
    index.set_params(efSearch=99)
    assert index.get_params()["efSearch"] == 99


def test_auto_params() -> None:
    assert set(INDEX_KINDS) == {"flat_ip", "hnsw", "ivf_flat", "ivf_pq", "annoy", "milvus"}
    p = auto_params("ivf_pq", 1_000_000, 768)
    assert p["nlist"] == 4000 and 768 % p["m"] == 0 and p["nbits"] == 8 and 1 <= p["nprobe"] <= p["nlist"]
    small_p = auto_params("ivf_flat", 2000, 128)
    assert small_p["nlist"] * 39 <= 2000  # enough training points per list
    assert auto_params("ivf_pq", 2000, 100)["m"] in (10, 20, 25) and auto_params("ivf_pq", 2000, 128)["nbits"] < 8
    assert auto_params("annoy", 10**6, 64)["n_trees"] > auto_params("annoy", 10**3, 64)["n_trees"]
    assert auto_params("hnsw", 10**6, 64)["M"] >= auto_params("hnsw", 10**3, 64)["M"]
    index = make_index("ivf_flat", 64, n_hint=10_000)
    assert index.get_params()["nlist"] == auto_params("ivf_flat", 10_000, 64)["nlist"]


# -- kind-specific state machines --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_pq"])
def test_ivf_exact_buffer_then_trains_once(kind: str) -> None:
    x = clustered(1400, DIM, seed=7)
    ids = ids_for(1400)
    index = make_index(kind, DIM)  # default exact_below=1024
    flat = make_index("flat_ip", DIM)
    index.add(ids[:600], x[:600])
    flat.add(ids[:600], x[:600])
    st = index.stats()
    assert st["loose"] == 600 and st["indexed"] == 0, "too small to train: exact buffer"
    q = clustered(20, DIM, seed=77)
    s_exact, i_exact = flat.search(q, 10)
    s_buf, i_buf = index.search(q, 10)
    assert (i_buf == i_exact).all()
    index.remove(ids[:50])  # removal inside the buffer
    assert index.stats()["loose"] == 550
    index.add(ids[600:1100], x[600:1100])  # crosses the threshold: trains on all 1050
    st = index.stats()
    assert st["loose"] == 0 and st["indexed"] == 1050
    p = index.get_params()
    assert p["nlist"] * 39 <= 1050
    quantizer = faiss.extract_index_ivf(index._index).quantizer
    centroids = quantizer.reconstruct_n(0, quantizer.ntotal).copy()
    index.add(ids[1100:], x[1100:])  # later data is encoded, not re-trained
    after = faiss.extract_index_ivf(index._index).quantizer
    np.testing.assert_array_equal(after.reconstruct_n(0, after.ntotal), centroids)
    assert (top1(index, x[1100:]) == ids[1100:]).all()
    index.rebuild(nlist=8)  # explicit retrain with a new list count
    assert index.get_params()["nlist"] == 8 and index.stats()["indexed"] == 1350
    assert (top1(index, x[1100:]) == ids[1100:]).all()


def test_ivf_pq_compressed_mode_keeps_only_codes_resident(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compressed=1: the raw vectors for the exact re-rank live in an unlinked mapped file, so the
    index's resident memory is codes + ids, and answers are the same as the in-memory mode's."""
    monkeypatch.setenv("IMRS_SPILL_DIR", str(tmp_path / "spill"))
    x = clustered(2000, 64, seed=21)
    ids = ids_for(2000)
    plain = make_index("ivf_pq", 64, n_hint=2000)
    packed = make_index("ivf_pq", 64, n_hint=2000, compressed=1)
    for index in (plain, packed):
        index.add(ids[:1500], x[:1500])
        index.remove(ids[:100])
        index.add(ids[1500:], x[1500:])
    assert isinstance(packed._table._vecs, np.memmap) and not isinstance(plain._table._vecs, np.memmap)
    assert not list((tmp_path / "spill").iterdir()), "spill files are unlinked at once"
    assert packed.memory_bytes() < plain.memory_bytes() - 1900 * 64 * 4 + 1
    q = clustered(40, 64, seed=22)
    s0, i0 = plain.search(q, 10)
    s1, i1 = packed.search(q, 10)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_allclose(s1, s0, atol=1e-6)
    packed.save(tmp_path / "pq")
    loaded = load_index(tmp_path / "pq")
    assert loaded.get_params()["compressed"] == 1 and isinstance(loaded._table._vecs, np.memmap)
    np.testing.assert_array_equal(loaded.search(q, 10)[1], i0)
    loaded.remove(ids[200:300])
    assert not set(loaded.search(x[200:300], 5)[1].ravel().tolist()) & set(ids[200:300].tolist())


def test_ivf_explicit_nlist_waits_for_enough_points() -> None:
    index = make_index("ivf_flat", DIM, nlist=64, exact_below=10)
    x = clustered(64 * 39 + 10, DIM, seed=8)
    index.add(ids_for(1000), x[:1000])
    assert index.stats()["indexed"] == 0  # 1000 < 39 * 64
    index.add(ids_for(len(x) - 1000, 1000), x[1000:])
    assert index.stats()["indexed"] == len(x) and index.get_params()["nlist"] == 64


def test_hnsw_tombstones_then_compaction() -> None:
    x = clustered(500, DIM, seed=9)
    ids = ids_for(500)
    index = make_index("hnsw", DIM)
    index.add(ids, x)
    index.remove(ids[:60])  # 12%: tombstones, filtered
    st = index.stats()
    assert st["dead"] == 60 and st["slots"] == 500
    assert not set(index.search(x[:60], 10)[1].ravel().tolist()) & set(ids[:60].tolist())
    index.add(ids[60:120], x[60:120] * -1)  # upsert = tombstone + new node: 120 dead > 20% of 560
    st = index.stats()
    assert st["dead"] == 0 and st["slots"] == 440, "compacted"
    assert (top1(index, -x[60:120]) == ids[60:120]).all()
    assert (top1(index, x[120:]) == ids[120:]).all()


def test_annoy_delta_tombstones_and_merge() -> None:
    x = clustered(800, DIM, seed=10)
    ids = ids_for(800)
    index = make_index("annoy", DIM, exact_below=200, delta_fraction=0.25)
    index.add(ids[:400], x[:400])
    assert index.stats()["loose"] == 0, "forest built"
    forest = index._forest
    index.add(ids[400:450], x[400:450])  # 50 < 0.25 * 400: stays in the exact delta
    assert index._forest is forest and index.stats()["loose"] == 50
    assert (top1(index, x[400:450]) == ids[400:450]).all()
    index.remove(ids[:30])  # tombstones in the forest
    index.remove(ids[400:410])  # removals from the delta are real
    st = index.stats()
    assert st["dead"] == 30 and st["loose"] == 40
    assert not set(index.search(x[:30], 15)[1].ravel().tolist()) & set(ids[:30].tolist())
    index.add(ids[450:800], x[450:800])  # delta passes 25% of the forest: merged by a rebuild
    st = index.stats()
    assert index._forest is not forest and st["loose"] == 0 and st["dead"] == 0
    assert (top1(index, x[410:]) == ids[410:]).all()


def test_many_small_adds_do_not_rebuild() -> None:
    """Incremental cost: 100 more vectors into a built index touch no existing structure."""
    x = clustered(3100, DIM, seed=11)
    ids = ids_for(3100)
    for kind in [k for k in ANN_KINDS if k in LOCAL_KINDS]:
        index = make_index(kind, DIM, n_hint=3000)
        index.add(ids[:3000], x[:3000])
        native = index._forest if kind == "annoy" else index._index
        for lo in range(3000, 3100, 10):
            index.add(ids[lo : lo + 10], x[lo : lo + 10])
        assert (index._forest if kind == "annoy" else index._index) is native, kind
        assert (top1(index, x[3000:]) == ids[3000:]).all(), kind


# -- persistence -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_save_load_roundtrip_with_state(kind: str, tmp_path: Path) -> None:
    x = clustered(N, DIM, seed=12)
    ids = ids_for(N)
    index = small(kind, **({"delta_fraction": 0.5} if kind == "annoy" else {}))
    index.add(ids[:700], x[:700])
    index.remove(ids[:40])  # tombstones (hnsw/annoy) / dead slots (others)
    index.add(ids[700:760], x[700:760])  # annoy: exact delta
    index.add(ids[100:110], x[760:770])  # upserts
    assert index.stats()["dead"] > 0 or kind not in ("hnsw", "annoy")
    before = index.stats()
    q = clustered(30, DIM, seed=13)
    s0, i0 = index.search(q, 12)
    index.save(tmp_path / "idx")
    files = {p.name for p in (tmp_path / "idx").iterdir()}
    assert "meta.json" in files and not {f for f in files if f.endswith((".pkl", ".pickle"))}
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["kind"] == kind and meta["dim"] == DIM and meta["count"] == len(index)
    assert meta["format_version"] == 1 and meta["params"] == index.get_params()
    for mmap in (False, True):
        loaded = load_index(tmp_path / "idx", mmap=mmap)
        assert type(loaded) is type(index) and len(loaded) == len(index)
        assert loaded.get_params() == index.get_params()
        st = loaded.stats()
        assert {k: st[k] for k in ("slots", "dead", "loose")} == {k: before[k] for k in ("slots", "dead", "loose")}
        s1, i1 = loaded.search(q, 12)
        np.testing.assert_array_equal(i1, i0)
        np.testing.assert_allclose(s1, s0, atol=1e-6)
        assert set(loaded.ids().tolist()) == set(index.ids().tolist())
        # a loaded (possibly mapped) index is still fully mutable
        loaded.remove(ids[200:220])
        loaded.add(ids[770:], x[770:])
        assert (top1(loaded, x[770:]) == ids[770:]).all()
        assert not set(loaded.search(x[200:220], 10)[1].ravel().tolist()) & set(ids[200:220].tolist())
    # saving a loaded index again round-trips too (Annoy re-maps its file on save)
    again = load_index(tmp_path / "idx", mmap=True)
    again.save(tmp_path / "idx2")
    np.testing.assert_array_equal(load_index(tmp_path / "idx2").search(q, 12)[1], i0)


def test_milvus_save_is_a_pointer_that_reopens(tmp_path: Path) -> None:
    """A saved milvus index is meta.json naming URI + collection (never the token): loading it
    reconnects to the same rows without re-adding anything, and a save the server has moved past
    is refused rather than silently serving other rows."""
    x = clustered(N, DIM, seed=12)
    ids = ids_for(N)
    index = small("milvus", index_type="IVF_FLAT", nlist=16, nprobe=16)
    index.add(ids[:700], x[:700])
    index.remove(ids[:40])
    index.add(ids[100:110], x[760:770])  # upserts
    q = clustered(30, DIM, seed=13)
    s0, i0 = index.search(q, 12)
    index.save(tmp_path / "idx")
    assert {p.name for p in (tmp_path / "idx").iterdir()} == {"meta.json"}
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["state"]["collection"] == index.collection and meta["state"]["uri"] == index.uri
    assert meta["state"]["index_type"] == "IVF_FLAT" and "token" not in json.dumps(meta)
    loaded = load_index(tmp_path / "idx")
    assert loaded.kind == "milvus" and len(loaded) == 660 and loaded.get_params()["nlist"] == 16
    s1, i1 = loaded.search(q, 12)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_allclose(s1, s0, atol=1e-5)
    assert ids[50] in loaded and ids[0] not in loaded
    loaded.add(ids[770:], x[770:])  # the server moves on: the old pointer no longer describes it
    assert (top1(loaded, x[770:]) == ids[770:]).all()
    with pytest.raises(IMRSError, match="changed since"):
        load_index(tmp_path / "idx")
    # the same count with other rows (10 removed, 10 others added) is seen too: by the checksum
    loaded.save(tmp_path / "idx3")
    loaded.remove(ids[100:110])
    loaded.add(ids[:10], x[:10])
    assert len(loaded) == 690
    with pytest.raises(IMRSError, match="690 vectors as the snapshot recorded, but other ones"):
        load_index(tmp_path / "idx3")
    loaded.remove(ids[:10])
    loaded.add(ids[100:110], x[760:770])  # the same rows again, however they got there: accepted
    assert len(load_index(tmp_path / "idx3")) == 690
    loaded.rebuild(index_type="HNSW")  # a new native index over the same rows
    assert loaded.stats()["index_type"] == "HNSW" and len(loaded) == 690
    assert (top1(loaded, x[770:]) == ids[770:]).all()


def test_milvus_lite_falls_back_for_types_it_cannot_build(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="imrs.indexes.milvus_index"):
        index = small("milvus", index_type="IVF_PQ")
    if index.stats()["lite"]:
        assert index.stats()["index_type"] == "IVF_SQ8" and "cannot build IVF_PQ" in caplog.text
    else:  # a server builds what was asked
        assert index.stats()["index_type"] == "IVF_PQ" and "cannot build" not in caplog.text
    index.add(ids_for(N), clustered(N, DIM, seed=3))
    assert (top1(index, clustered(N, DIM, seed=3)[:20]) == ids_for(20)).all()


def test_mmap_maps_files(tmp_path: Path) -> None:
    x = clustered(N, DIM, seed=14)
    for kind in LOCAL_KINDS:
        index = small(kind)
        index.add(ids_for(N), x)
        index.save(tmp_path / kind)
        loaded = load_index(tmp_path / kind, mmap=True)
        assert loaded.stats()["mapped"]
        maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
        if maps:
            native = "index.annoy" if kind == "annoy" else "index.faiss"
            assert str(tmp_path / kind / native) in maps, f"{kind} native file not mapped"
        if kind not in ("flat_ip", "hnsw"):  # those two keep their vectors in FAISS only
            assert isinstance(loaded._table._vecs, np.memmap)


def test_load_rejects_missing_or_newer(tmp_path: Path) -> None:
    with pytest.raises(IMRSError, match="meta.json"):
        load_index(tmp_path / "nothing")
    index = make_index("flat_ip", DIM)
    index.add(ids_for(5), clustered(5, DIM, seed=15))
    index.save(tmp_path / "i")
    meta = json.loads((tmp_path / "i" / "meta.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "i" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IMRSError, match="upgrade"):
        load_index(tmp_path / "i")


# -- recall ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recall_data():
    x = clustered(5200, 128, seed=42)
    db, queries = x[:5000], x[5000:]
    ids = ids_for(5000)
    flat = make_index("flat_ip", 128, n_hint=5000)
    flat.add(ids, db)
    return ids, db, queries, flat.search(queries, 10)[1]


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found, truth, strict=True)]))


@pytest.mark.parametrize("kind", ANN_KINDS)
def test_recall_at_10_vs_exact(kind: str, recall_data, record_property) -> None:
    ids, db, queries, truth = recall_data
    index = make_index(kind, 128, n_hint=len(db))
    index.add(ids, db)
    assert index.stats()["loose"] == 0, "the approximate structure is what is measured"
    recall = recall_at_10(index.search(queries, 10)[1], truth)
    record_property("recall_at_10", recall)
    print(f"{kind} recall@10={recall:.3f} params={index.get_params()}")
    assert recall >= 0.9, f"{kind} recall@10 {recall:.3f} with {index.get_params()}"
    if kind == "ivf_flat":  # the data is hard enough that the parameters matter
        index.set_params(nprobe=1)
        assert recall_at_10(index.search(queries, 10)[1], truth) < 0.85


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_get_vectors_follows_adds_removes_and_compaction(kind: str) -> None:
    vecs = clustered(600, 32, seed=7)
    ids = ids_for(600)
    idx = small(kind)
    idx.add(ids, vecs)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    got = idx.get_vectors(ids[[0, 299, 599]])
    assert np.allclose(got, unit[[0, 299, 599]], atol=1e-5)
    idx.remove(ids[:300])  # past every compaction threshold
    got = idx.get_vectors(np.array([ids[0], ids[450], 10**12]))
    assert not got[0].any() and not got[2].any()
    assert np.allclose(got[1], unit[450], atol=1e-5)


#: Per kind: (weak, strong) search-time parameters whose answers differ on the clustered data.
PER_CALL = {"hnsw": ({"efSearch": 1}, {"efSearch": 400}), "ivf_flat": ({"nprobe": 1}, {"nprobe": 16}),
            "ivf_pq": ({"nprobe": 1, "k_factor": 1}, {"nprobe": 16, "k_factor": 16}),
            "annoy": ({"search_k": 10}, {"search_k": 3000}), "milvus": ({"efSearch": 1}, {"efSearch": 400})}


@pytest.mark.parametrize("kind", [k for k in ANN_KINDS if k != "milvus"])
def test_per_call_params_in_concurrent_threads(kind: str) -> None:
    """Threads searching one index with different per-call params each get exactly the answer of their
    own params, and the index's settings never change: with a set-params-search-restore scheme, a
    thread would now and then run with another thread's params."""
    from concurrent.futures import ThreadPoolExecutor

    x = clustered(N, DIM, seed=31, noise=2.2)
    index = small(kind, nlist=16) if kind.startswith("ivf") else small(kind)
    index.add(ids_for(N), x)
    q = clustered(64, DIM, seed=32, noise=2.2)
    before = index.get_params()
    weak, strong = PER_CALL[kind]
    expect = {name: index.search(q, 10, params=p)[1] for name, p in (("weak", weak), ("strong", strong))}
    assert not np.array_equal(expect["weak"], expect["strong"])  # the test can tell the two apart
    assert np.array_equal(expect["strong"], index.search(q, 10, params=strong)[1])  # deterministic

    def run(n: int) -> bool:
        name = "weak" if n % 2 else "strong"
        return all(np.array_equal(index.search(q, 10, params=weak if n % 2 else strong)[1], expect[name])
                   for _ in range(3))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(run, range(16)))
    assert index.get_params() == before


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_per_call_params_checked_and_never_stored(kind: str) -> None:
    index = small(kind)
    index.add(ids_for(200), clustered(200, DIM, seed=33))
    before = index.get_params()
    weak, strong = PER_CALL.get(kind, ({}, {}))
    for p in (weak, strong, {"nprobe": 3, "search_k": 7, "efSearch": 5}):  # other kinds' tunables are ignored
        scores, found = index.search(clustered(3, DIM, seed=34), 5, params=p)
        assert found.shape == (3, 5) and (found != -1).all()
    assert index.get_params() == before
    with pytest.raises(ValueError, match="not search-time"):
        index.search(clustered(1, DIM, seed=35), 5, params={"M": 8})


@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_reads_run_beside_a_writer(kind: str) -> None:
    """Searches and vector reads from several threads while another thread keeps adding and removing
    (what a server does during growth): every answer is whole -- ids that were added, scores that
    are the cosines of their stored vectors -- and nothing crashes (an HNSW add resizing storage
    under a concurrent reconstruct is a segfault without the index's read/write lock)."""
    from concurrent.futures import ThreadPoolExecutor

    x = clustered(3000, DIM, seed=36)
    ids = ids_for(3000)
    index = small(kind)
    index.add(ids[:300], x[:300])
    known = set(ids.tolist())
    done = threading.Event()

    def write() -> None:
        try:
            for lo in range(300, 3000, 60):
                index.add(ids[lo : lo + 60], x[lo : lo + 60])
                index.remove(ids[lo - 300 : lo - 290])
        finally:
            done.set()

    def read(seed: int) -> int:
        rng = np.random.default_rng(seed)
        n = 0
        while not done.is_set() or n < 5:
            q = x[rng.integers(0, 3000, 4)]
            scores, found = index.search(q, 10)
            got = found[found != -1]
            assert set(got.tolist()) <= known
            vecs = index.get_vectors(found[0][found[0] != -1])
            still = np.linalg.norm(vecs, axis=1) > 0  # zero rows: removed by the writer since the search
            np.testing.assert_allclose((vecs @ (q[0] / np.linalg.norm(q[0])))[still],
                                       scores[0][found[0] != -1][still], atol=2e-3)
            n += 1
        return n

    with ThreadPoolExecutor(5) as pool:
        readers = [pool.submit(read, s) for s in range(4)]
        pool.submit(write).result()
        assert all(r.result() >= 5 for r in readers)
    gone = {int(i) for lo in range(300, 3000, 60) for i in ids[lo - 300 : lo - 290]}
    assert set(index.ids().tolist()) == known - gone
