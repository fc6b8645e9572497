"""Scale-out state, fast: the Milvus content checksum, where a collection's Milvus vectors are
remembered, exact filtered search on Milvus Lite, and fitting Ray actors to a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imrs.errors import IMRSError
from imrs.filters import Where
from imrs.indexes import make_index
from imrs.indexes.exact import exact_search

from .test_indexes import clustered, ids_for


def test_checksum_sees_content_not_order_or_count(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    from imrs.indexes.milvus_index import checksum_as_stored, content_checksum

    x = clustered(50, 16, seed=1)
    ids = ids_for(50)
    c = content_checksum(ids, x)
    perm = np.random.default_rng(0).permutation(50)
    assert content_checksum(ids[perm], x[perm]) == c  # order-free
    swapped = x.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert content_checksum(ids, swapped) != c  # the same vectors under other ids
    nudged = x.copy()
    nudged[7, 3] = np.nextafter(nudged[7, 3], np.float32(2))
    assert content_checksum(ids, nudged) != c  # one bit of one float
    other = np.concatenate([ids[:-1], ids[-1:] + 1])
    assert content_checksum(other, x) != c
    # incremental: add and subtract rows
    part = (content_checksum(ids[:20], x[:20]) + content_checksum(ids[20:], x[20:])) % 2**64
    assert part == c

    # what the index keeps, what Milvus really holds, and what the caches' rows would give agree
    # to the bit (vectors are stored re-normalised, so the raw input's checksum would not)
    index = make_index("milvus", 16, uri=str(tmp_path / "c.db"), collection="c")
    index.add(ids, x * 3.0)
    assert index.read_checksum() == (50, checksum_as_stored(ids, x * 3.0)) == (50, index.checksum())
    index.remove(ids[:5])
    index.add(ids[10:12], x[:2])  # upserts replace rows: the old ones leave the checksum
    assert index.read_checksum()[1] == index.checksum()
    index.close()


def test_location_is_remembered_relative_to_the_state_folder(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("pymilvus")
    from imrs.indexes.milvus_index import connection_params, remember_location, remembered_location

    monkeypatch.delenv("IMRS_MILVUS_URI", raising=False)
    state = tmp_path / "home" / "collections" / "photos-1234"
    state.mkdir(parents=True)
    assert remembered_location(state, "bb") is None
    first = connection_params(state, "bb", {})
    assert first["uri"] == str(state.resolve() / "milvus.db") and first["collection"] == "imrs_photos_1234_bb"
    remember_location(state, "bb", first["uri"], first["collection"])
    assert json.loads((state / "milvus.json").read_text())["bb"]["uri"] == "milvus.db"  # relative: copies move
    remember_location(state, "other", "http://127.0.0.1:19530", "c2")
    copy = tmp_path / "copy" / "photos-1234"
    copy.parent.mkdir()
    state.rename(copy)
    assert remembered_location(copy, "bb") == {"uri": str(copy / "milvus.db"), "collection": "imrs_photos_1234_bb"}
    assert connection_params(copy, "other", {})["uri"] == "http://127.0.0.1:19530"
    assert connection_params(copy, "other", {})["collection"] == "c2"
    # an explicit URI wins, and a new place gets the default collection name
    moved = connection_params(copy, "other", {"uri": "http://127.0.0.1:19531"})
    assert moved["uri"] == "http://127.0.0.1:19531" and moved["collection"] == "imrs_photos_1234_other"
    monkeypatch.setenv("IMRS_MILVUS_URI", "http://127.0.0.1:19532")
    assert connection_params(copy, "bb", {})["uri"] == "http://127.0.0.1:19532"


def test_filtered_search_on_milvus_lite_is_exact_on_small_allowed_sets(tmp_path: Path) -> None:
    """The allowed rows' exact top-k, every time (an HNSW graph with a selective filter misses)."""
    pytest.importorskip("pymilvus")
    n, dim = 3000, 32
    x = clustered(n, dim, seed=41, noise=1.0)
    ids = ids_for(n)
    label = np.where(np.arange(n) % 40 == 0, "rare", "common")
    index = make_index("milvus", dim, n_hint=n, uri=str(tmp_path / "m.db"), collection="exact",
                       M=4, efConstruction=8, efSearch=4)  # a weak graph: approximate would miss
    row_of = {int(i): r for r, i in enumerate(ids)}
    index.set_attribute_source(lambda b: {"label": [str(label[row_of[int(i)]]) for i in b],
                                          "source": ["base"] * len(b), "term": [""] * len(b)})
    index.add(ids, x)
    q = clustered(20, dim, seed=42, noise=1.0)
    allowed = np.flatnonzero(label == "rare")
    _, rows = exact_search(q, x[allowed], 10)
    truth = ids[allowed][rows]
    _, found = index.search(q, 10, where=Where("label == 'rare'", ids_fn=lambda *_: ids[allowed]))
    np.testing.assert_array_equal(found, truth)
    index.close()


def test_actor_asks_are_fitted_to_the_cluster() -> None:
    from imrs.engines.ray_engine import ClusterInfo, fit_to_cluster

    two = ClusterInfo("127.0.0.1:1", ["127.0.0.1"], cpus=2.0, gpus=0.0)
    assert fit_to_cluster(two, 1, 1.0, 0.0) == 1.0  # fits with room for the reads
    assert fit_to_cluster(two, 2, 1.0, 0.0) == 0.87  # would take every CPU: lowered
    with pytest.raises(IMRSError, match="too few for 40 encoder actors"):
        fit_to_cluster(two, 40, 1.0, 0.0)
    with pytest.raises(IMRSError, match="has 0 GPU"):
        fit_to_cluster(two, 2, 1.0, 0.25)
    gpu = ClusterInfo("h:1", ["h"], cpus=16.0, gpus=1.0)
    assert fit_to_cluster(gpu, 4, 1.0, 0.25) == 1.0
    with pytest.raises(IMRSError, match="5 actors x 0.25 GPU need 1.25"):
        fit_to_cluster(gpu, 5, 1.0, 0.25)
