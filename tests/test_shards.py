"""Append-only shard stores (imrs.shards): a change writes one delta and a manifest, the live rows are
always what a plain dict of id -> row says they are, compaction keeps them, damaged deltas are
named, and single-file caches migrate without a rewrite of their vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imrs.errors import StoreError
from imrs.shards import GARBAGE_RATIO, MANIFEST, ShardStore, migrate_file
from imrs.store import EmbeddingSet, load_ids, read_runtime

BB, DIM = "bb", 8


def _rows(ids: list[int], seed: int) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    return EmbeddingSet(BB, ids, [f"c/{i}.jpg" for i in ids], rng.standard_normal((len(ids), DIM)))


def _as_dict(emb: EmbeddingSet) -> dict[int, tuple[str, list[float]]]:
    return {int(i): (str(r), v.tolist()) for i, r, v in zip(emb.ids, emb.relpaths, emb.vectors, strict=True)}


def test_random_changes_match_a_plain_dict(tmp_path: Path) -> None:
    """200 random adds / replacements / deletions: the store's live rows equal a dict's at every
    step, with and without compaction in between."""
    store = ShardStore(tmp_path / "emb_bb.store")
    truth: dict[int, tuple[str, list[float]]] = {}
    rng = np.random.default_rng(0)
    for step in range(200):
        add_ids = sorted({int(x) for x in rng.integers(0, 300, rng.integers(0, 6))})
        gone = [int(x) for x in rng.integers(0, 300, rng.integers(0, 4)) if int(x) not in add_ids]
        add = _rows(add_ids, step)
        store.update(add, gone, backbone=BB, dim=DIM, compact=step % 7 == 0)
        for i in gone:
            truth.pop(i, None)
        truth.update(_as_dict(add))
        got = store.load()
        assert _as_dict(got) == truth, step
        assert set(load_ids(store.path).tolist()) == set(truth)
    assert store.verify() == []
    written = store.compact(backbone=BB, dim=DIM)
    assert written > 0 and len(store.deltas()) == 1 and _as_dict(store.load()) == truth
    assert sorted(p.name for p in store.path.iterdir()) == sorted([MANIFEST, store.deltas()[0].file])


def test_a_change_writes_only_its_rows(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "s.store")
    big = _rows(list(range(20000)), 1)
    store.update(big, backbone=BB, dim=DIM)
    size = store.deltas()[0].bytes
    before = {p.name: p.stat().st_mtime_ns for p in store.path.iterdir() if p.name != MANIFEST}
    written = store.update(_rows([20000, 20001], 2), [5], backbone=BB, dim=DIM)
    assert 0 < written < 0.05 * size  # a delta of 2 rows + 1 deletion, and the manifest
    assert all((store.path / n).stat().st_mtime_ns == t for n, t in before.items())  # nothing rewritten
    assert len(store.load()) == 20001 and 5 not in set(store.load_ids().tolist())


def test_garbage_past_the_ratio_compacts(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "s.store")
    store.update(_rows(list(range(10000)), 1), backbone=BB, dim=DIM)
    store.update(None, range(int(10000 * GARBAGE_RATIO) - 10), backbone=BB, dim=DIM)
    assert len(store.deltas()) == 2  # under the ratio: a tombstone delta only
    store.update(None, range(3000, 3100), backbone=BB, dim=DIM)
    assert len(store.deltas()) == 1 and store.deltas()[0].deleted == 0  # past it: compacted
    assert len(store.load()) == 10000 - (int(10000 * GARBAGE_RATIO) - 10) - 100


def test_many_small_changes_merge_the_tail_not_the_big_delta(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "s.store")
    store.update(_rows(list(range(10000)), 1), backbone=BB, dim=DIM)
    first = store.deltas()[0].file
    truth = _as_dict(store.load())
    for k in range(40):
        add = _rows([10000 + k], k)
        store.update(add, [k], backbone=BB, dim=DIM)
        truth.pop(k)
        truth.update(_as_dict(add))
    assert store.deltas()[0].file == first  # the big delta was never rewritten
    assert len(store.deltas()) < 30 and _as_dict(store.load()) == truth


def test_runtime_and_backbone_are_kept_and_mixing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.store"
    EmbeddingSet(BB, [1], ["a"], np.ones((1, DIM)), runtime="int8-ab").save(path)
    assert read_runtime(path) == "int8-ab" and EmbeddingSet.load(path).runtime == "int8-ab"
    with pytest.raises(StoreError, match="different runtimes"):
        ShardStore(path).update(_rows([2], 0), backbone=BB, dim=DIM)
    with pytest.raises(StoreError, match="not other"):
        EmbeddingSet.load(path, backbone="other")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "missing"])
def test_a_damaged_delta_is_named(tmp_path: Path, damage: str) -> None:
    store = ShardStore(tmp_path / "s.store")
    store.update(_rows(list(range(100)), 1), backbone=BB, dim=DIM)
    store.update(_rows([100], 2), backbone=BB, dim=DIM)
    victim = store.path / store.deltas()[0].file
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        victim.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == "flip":
        victim.write_bytes(data[:2000] + bytes([data[2000] ^ 0xFF]) + data[2001:])
    else:
        victim.unlink()
    assert store.verify() and victim.name in store.verify()[0]
    if damage != "flip":  # a flipped byte inside the vectors: the checksum (verify) is what finds it
        with pytest.raises(StoreError, match=victim.name):
            store.load()


def test_single_file_cache_migrates_and_a_lost_manifest_is_rebuilt(tmp_path: Path) -> None:
    old = tmp_path / "emb_bb.npz"
    emb = _rows(list(range(50)), 3)
    emb.save(old)
    store = migrate_file(old, tmp_path / "emb_bb.store")
    assert not old.exists() and _as_dict(store.load()) == _as_dict(emb)
    store.update(_rows([7, 99], 4), [8], backbone=BB, dim=DIM, compact=False)
    want = _as_dict(store.load())
    (store.path / MANIFEST).unlink()
    assert store.rebuild_manifest(BB, DIM, "fp32") == 2
    assert _as_dict(store.load()) == want
    # a delta written by a change killed before its manifest: garbage the next repair removes
    orphan = store.path / "d-00000009-deadbeef.npz"
    orphan.write_bytes(b"partial")
    assert store.collect_garbage() == 1 and not orphan.exists()
    assert json.loads((store.path / MANIFEST).read_text())["rows"] == 52


def test_readers_without_the_lock_survive_compactions(tmp_path: Path) -> None:
    """A compaction deletes the deltas an older manifest names; a reader that read that manifest
    retries instead of reporting a damaged cache."""
    import threading

    store = ShardStore(tmp_path / "s.store")
    store.update(_rows(list(range(2000)), 1), backbone=BB, dim=DIM)
    stop, errors, reads = threading.Event(), [], [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                ids = set(store.load().ids.tolist())
                assert set(range(1000)) <= ids  # rows no change touches are always there
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(30):
            store.update(_rows([5000 + k], k), [1000 + k], backbone=BB, dim=DIM, compact=False)
            store.compact(backbone=BB, dim=DIM)
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors[:3]
    assert reads[0] > 0
