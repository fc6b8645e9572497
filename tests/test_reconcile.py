"""Repair on open (imrs.reconcile) in the cases the kill test does not reach: another backbone's
writes, live versus dead staging folders, which files a repair may delete, a write that fails with
an exception, and a clean open that must touch nothing. Vectors are given (no model): these tests
are about the stores, not about embeddings."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imrs import reconcile, webfiles
from imrs import snapshot as snap
from imrs.catalog import ImageRecord
from imrs.collection import Collection
from imrs.store import EmbeddingSet

A, B = "efficientnet_lite0", "resnet18"  # 1280-d and 512-d


def _name(i: int) -> str:
    return hashlib.sha1(str(i).encode()).hexdigest()[:20] + ".jpg"  # the names expansion gives files


def _add(coll: Collection, slug: str, n: int, seed: int = 0) -> list[ImageRecord]:
    folder = coll.dynamic_root / f"dynamic_{slug}"
    folder.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        name = _name(1000 * seed + i)
        Image.new("RGB", (8, 8), (i * 40 % 255, 0, 0)).save(folder / name)
        recs.append(ImageRecord.for_path(f"dynamic_{slug}/{name}", source="dynamic", label=slug, term=slug,
                                         slug=slug))
    vecs = np.random.default_rng(seed).standard_normal((n, coll.dim)).astype(np.float32)
    coll.add_dynamic(slug, recs, vecs)
    return recs


def _ids(coll: Collection) -> tuple[set[int], set[int], set[int]]:
    catalog = coll.catalog.ids_set()  # first: the first use is what repairs
    caches = set()
    for p in reconcile.cache_files(coll):
        caches |= set(EmbeddingSet.load(p, coll.backbone).ids.tolist())
    return catalog, caches, set(coll.index.ids().tolist())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "coll"
    (r / "base").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(r / "base" / "mine.jpg")
    return r


def test_a_prune_by_another_backbone_reaches_this_one(root: Path, tmp_path: Path, caplog) -> None:
    home = tmp_path / "home"
    a, b = Collection(root, A, "flat_ip", home=home), Collection(root, B, "hnsw", home=home)
    recs = _add(a, "x", 3)
    b.add_dynamic("x", recs, np.random.default_rng(1).standard_normal((3, b.dim)).astype(np.float32))
    a.remove_dynamic([recs[0].id])
    assert _ids(a) == ({r.id for r in recs[1:]},) * 3

    caplog.set_level(logging.INFO, logger="imrs.reconcile")
    b2 = Collection(root, B, "hnsw", home=home)
    assert _ids(b2) == ({r.id for r in recs[1:]},) * 3  # B's cache row and vector of the pruned image went
    assert "1 index vector(s) of images no longer in the catalog removed" in caplog.text
    hits = b2.search_vectors(np.ones(b2.dim, np.float32), 5)[0]
    assert recs[0].id not in {h.id for h in hits} and all(h.path.is_file() for h in hits)


def test_a_clean_open_touches_nothing(root: Path, tmp_path: Path, caplog) -> None:
    home = tmp_path / "home"
    a = Collection(root, A, "hnsw", home=home)
    _add(a, "x", 4)

    def files() -> dict[Path, int]:  # SQLite's own files change with every connection; the image set not
        return {p: p.stat().st_mtime_ns for p in a.state_dir.rglob("*") if p.is_file() and "sqlite" not in p.name}

    before, generation = files(), a.catalog.generation()
    caplog.set_level(logging.INFO, logger="imrs.reconcile")
    again = Collection(root, A, "hnsw", home=home)
    assert reconcile.check(again).clean
    again.search_vectors(np.ones(again.dim, np.float32), 3)
    assert not caplog.records
    assert files() == before and again.catalog.generation() == generation


def test_staging_of_a_live_expansion_survives_a_dead_one_does_not(root: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    coll = Collection(root, A, "hnsw", home=home)
    _add(coll, "x", 2)
    folder = coll.dynamic_root / "dynamic_y"
    folder.mkdir()
    entered, leave = threading.Event(), threading.Event()
    live: list[Path] = []

    def expansion() -> None:
        with reconcile.staging_folder(coll, folder) as staging:
            (staging / "download.jpg").write_bytes(b"x")
            live.append(staging)
            entered.set()
            leave.wait(20)

    t = threading.Thread(target=expansion)
    t.start()
    assert entered.wait(10)
    # A dead one: its lock file exists but nobody holds it; and one left by IMRS before locks.
    dead = coll.dynamic_root / "dynamic_x" / f"{reconcile.STAGING_PREFIX}deadbeef0000"
    dead.mkdir()
    (coll.state_dir / "staging" / "dynamic_x.deadbeef0000.lock").touch()
    legacy = coll.dynamic_root / "dynamic_x" / f"{reconcile.STAGING_PREFIX}0123456789ab"
    legacy.mkdir()
    try:
        status = reconcile.check(coll)
        assert status.staging and not status.full
        reconcile.begin(coll, "test")  # force the full repair too: it must still spare the live one
        Collection(root, A, "hnsw", home=home).catalog  # noqa: B018 - opening is what repairs
        assert not dead.exists() and not legacy.exists()
        assert live[0].is_dir() and (live[0] / "download.jpg").exists()
        assert reconcile.check(coll).clean
    finally:
        leave.set()
        t.join(10)
    assert not live[0].exists() and not list((coll.state_dir / "staging").iterdir())


def test_repair_moves_only_unrecorded_files_it_named(root: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    coll = Collection(root, A, "hnsw", home=home)
    recs = _add(coll, "x", 2)
    orphan = coll.dynamic_root / "dynamic_x" / _name(999)
    shutil.copy(coll.abspath(recs[0].relpath), orphan)  # moved in by a commit killed before recording it
    mine = coll.dynamic_root / "dynamic_x" / "holiday.jpg"  # not a name IMRS gives: never deleted
    shutil.copy(coll.abspath(recs[0].relpath), mine)
    temps = [coll.emb_dir / ".emb_x.npz.k3j.npz.tmp", coll.state_dir / ".commit-x.json.a1.tmp",
             coll.state_dir / ".textmap_x.npz.b2.npz.tmp"]  # killed atomic writes; the last is a lockless one
    for t in temps:
        t.write_bytes(b"partial")
    young = coll.state_dir / ".textmap_y.npz.c3.npz.tmp"  # may be another process writing right now
    young.write_bytes(b"partial")
    os.utime(temps[2], (1e9, 1e9))
    reconcile.begin(coll, "expand")
    report = reconcile.repair(coll)
    assert report.orphan_files == 1 and not orphan.exists()  # moved, never deleted: imrs index takes it back
    assert (webfiles.quarantine_dir(coll) / "dynamic_x" / orphan.name).read_bytes() == mine.read_bytes()
    assert coll.info()["quarantine"]["web_images"] == 1
    assert report.garbage_removed == 3 and not any(t.exists() for t in temps) and young.exists()
    assert mine.exists() and (root / "base" / "mine.jpg").exists()
    assert all(coll.abspath(r.relpath).exists() for r in recs)


def test_a_write_that_fails_midway_is_repaired_on_next_use(root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    coll = Collection(root, A, "hnsw", home=home)
    first = _add(coll, "x", 2)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:  # the index save fails after cache and catalog were written
        m.setattr(snap, "save_snapshot", disk_full)
        with pytest.raises(OSError, match="No space"):
            _add(coll, "y", 3, seed=1)
    assert reconcile.intent_path(coll).exists()
    cat, caches, index = _ids(coll)  # the same object: its next use repairs
    assert cat == caches == index and len(cat) == len(first) + 3
    assert not reconcile.intent_path(coll).exists()


def test_non_finite_vectors_are_refused_before_any_write(root: Path, tmp_path: Path) -> None:
    coll = Collection(root, A, "hnsw", home=tmp_path / "home")
    rec = ImageRecord.for_path("dynamic_x/" + _name(1), source="dynamic", slug="x")
    vec = np.full((1, coll.dim), np.nan, np.float32)
    with pytest.raises(Exception, match="NaN"):
        coll.add_dynamic("x", [rec], vec)
    assert not coll.dynamic_npz("x").exists() and len(coll.catalog) == 0


def test_single_file_caches_are_read_as_they_are_and_migrated_on_the_first_write(root: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    coll = Collection(root, A, "hnsw", home=home)
    recs = _add(coll, "x", 3)
    store = coll.dynamic_npz("x")
    legacy = store.with_suffix(".npz")
    EmbeddingSet.load(store).save(legacy)  # what a cache was before shard stores
    shutil.rmtree(store)
    reconcile.commit(coll)
    before = _ids(coll)
    again = Collection(root, A, "hnsw", home=home)
    assert again.dynamic_npz("x") == legacy and reconcile.check(again).clean
    assert _ids(again) == before and legacy.is_file()  # reading writes nothing
    more = _add(again, "x", 2, seed=7)
    assert not legacy.exists() and again.dynamic_npz("x").is_dir()
    assert _ids(again) == ({r.id for r in recs + more},) * 3 and reconcile.check(again).clean


def test_scratch_folders_of_killed_runs_are_cleaned_on_the_next_open(root: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    coll = Collection(root, A, "hnsw", home=home)
    with reconcile.temp_folder(coll) as live:
        (live / "part.bin").write_bytes(b"x" * 1000)
        dead = coll.state_dir / reconcile.TEMP_DIR / "deadbeef0000"  # a killed run: its lock is not held
        dead.mkdir()
        (dead / "model.onnx").write_bytes(b"x" * 1000)
        (coll.state_dir / "staging" / f"{reconcile.TEMP_DIR}.deadbeef0000.lock").touch()
        assert reconcile.check(coll).staging
        Collection(root, A, "hnsw", home=home).catalog  # noqa: B018 - opening is what repairs
        assert not dead.exists() and (live / "part.bin").exists()
    assert not live.exists() and not list((coll.state_dir / reconcile.TEMP_DIR).iterdir())


def test_a_snapshot_load_releases_later_web_images_instead_of_deleting_them(root: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    coll = Collection(root, A, "hnsw", home=home)
    kept = _add(coll, "x", 2)
    coll.save_snapshot("s1")
    later = _add(coll, "y", 2, seed=3)
    data = {r.relpath: coll.abspath(r.relpath).read_bytes() for r in later}
    coll.load_snapshot("s1")
    assert _ids(coll) == ({r.id for r in kept},) * 3
    released = list(webfiles.quarantine_dir(coll).glob("released-*"))
    assert len(released) == 1 and {rel: (released[0] / rel).read_bytes() for rel in data} == data
    assert webfiles.quarantined(coll) == []  # not taken back by imrs index: dropped on purpose
    assert coll.info()["quarantine"]["web_images"] == 0
