"""ids, catalog, NPZ store and atomic writes: the parts every other feature trusts."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from imrs.catalog import Catalog, ImageRecord, clean_label, label_for
from imrs.errors import IDCollisionError, IMRSError, StoreError
from imrs.fsutil import atomic_savez, atomic_write_json, read_json
from imrs.ids import ids_for, normalise_relpath, stable_id
from imrs.store import EmbeddingSet, merge, merge_files


# -- ids ---------------------------------------------------------------------------------------------
def test_stable_id_is_deterministic_across_processes_and_spellings():
    code = "from imrs.ids import stable_id; print(stable_id('sunflower/image_0001.jpg'))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(other.stdout) == stable_id("sunflower/image_0001.jpg")
    assert stable_id("./sunflower//image_0001.jpg") == stable_id("sunflower/image_0001.jpg")
    # On POSIX a backslash is part of a name, and NFC/NFD spellings are two different files:
    # merging them would lose one of the two images (issue 11).
    assert stable_id("sunflower\\image_0001.jpg") != stable_id("sunflower/image_0001.jpg")
    assert stable_id("caf\u00e9/a.jpg") != stable_id("cafe\u0301/a.jpg")
    assert stable_id("sunflower/image_0001.jpg") != stable_id("sunflower/image_0002.jpg")


def test_ids_are_signed_int64_and_unique_on_caltech_sized_input():
    rels = [f"class_{c}/image_{i:04d}.jpg" for c in range(100) for i in range(100)]
    ids = ids_for(rels)
    assert ids.dtype == np.int64 and len(np.unique(ids)) == len(rels)
    assert (ids < 0).any() and (ids > 0).any()  # full signed range is used


def test_collision_is_detected_not_ignored():
    i = stable_id("a/b.jpg")
    with pytest.raises(IDCollisionError):
        ids_for(["x/y.jpg"], known={stable_id("x/y.jpg"): "other/file.jpg"})
    assert ids_for(["a/b.jpg"], known={i: "a/b.jpg"})[0] == i


def test_relpath_outside_root_rejected(tmp_path):
    with pytest.raises(ValueError):
        normalise_relpath("../etc/passwd")
    assert normalise_relpath(tmp_path / "a" / "b.jpg", tmp_path) == "a/b.jpg"


# -- catalog -----------------------------------------------------------------------------------------
def test_label_cleaning():
    assert clean_label("001.ak47") == "ak47"
    assert clean_label("257.clutter") == "clutter"
    assert clean_label("Faces_easy") == "Faces_easy"
    assert clean_label("v1.2") == "v1.2"
    assert label_for("001.ak47/001_0001.jpg") == "ak47"
    assert label_for("loose.jpg") == ""


def test_catalog_roundtrip_provenance_and_base_protection(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite")
    base = ImageRecord.for_path("001.ak47/a.jpg", source="base", width=10, height=20, phash=-5)
    dyn = ImageRecord.for_path("dynamic_bus/1.jpg", source="dynamic", label="bus", term="yellow bus",
                               slug="bus", source_url="http://x/1.jpg", provider="wikimedia",
                               license="CC BY-SA 4.0", author="Someone")
    assert cat.upsert([base, dyn]) == 2
    got = cat.get(dyn.id)
    assert got.term == "yellow bus" and got.license == "CC BY-SA 4.0" and got.provider == "wikimedia"
    assert cat.get(base.id).label == "ak47" and cat.get(base.id).phash == -5
    assert cat.count("base") == 1 and cat.count("dynamic") == 1
    assert cat.dynamic_terms() == [("bus", "yellow bus", 1)]
    with pytest.raises(IMRSError, match="base"):
        cat.delete([base.id, dyn.id])
    assert len(cat) == 2  # the refused transaction removed nothing
    assert cat.delete([dyn.id]) == 1 and len(cat) == 1
    # upsert replaces, never duplicates
    cat.upsert([ImageRecord.for_path("001.ak47/a.jpg", source="base", width=11)])
    assert len(cat) == 1 and cat.get(base.id).width == 11
    # WAL mode for concurrent readers
    mode = sqlite3.connect(cat.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_catalog_metadata_csv(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite")
    cat.upsert([ImageRecord.for_path("cats/1.jpg"), ImageRecord.for_path("dogs/2.jpg")])
    csv_path = tmp_path / "meta.csv"
    csv_path.write_text("path,title,caption\ncats/1.jpg,Tabby,a cat on a mat\nnope/3.jpg,X,Y\n")
    assert cat.import_metadata_csv(csv_path) == 1
    rec = cat.get(stable_id("cats/1.jpg"))
    assert rec.extra == {"title": "Tabby", "caption": "a cat on a mat"}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,title\na,b\n")
    with pytest.raises(IMRSError, match="path"):
        cat.import_metadata_csv(bad)


def test_catalog_concurrent_writers_from_threads(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite")

    def work(t: int) -> None:
        cat.upsert([ImageRecord.for_path(f"t{t}/{i}.jpg") for i in range(50)])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(cat) == 200


# -- store -------------------------------------------------------------------------------------------
def _set(rels, dim=8, seed=0, backbone="bb"):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(rels), dim)).astype(np.float32)
    return EmbeddingSet(backbone, ids_for(rels), rels, v)


def test_npz_roundtrip_without_pickle(tmp_path):
    s = _set(["a/1.jpg", "b/2.jpg"])
    s.save(tmp_path / "e.npz")
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        assert z["relpaths"].dtype.kind == "U"
    back = EmbeddingSet.load(tmp_path / "e.npz", backbone="bb")
    assert np.array_equal(back.ids, s.ids) and np.array_equal(back.vectors, s.vectors)
    assert list(back.relpaths) == ["a/1.jpg", "b/2.jpg"]
    with pytest.raises(StoreError, match="holds bb"):
        EmbeddingSet.load(tmp_path / "e.npz", backbone="other")


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="pickle"):
        atomic_savez(tmp_path / "x.npz", a=np.array([{"x": 1}], dtype=object))
    # a file that needs pickle to load is reported as unreadable, not unpickled
    np.savez(tmp_path / "evil.npz", ids=np.array([1]), relpaths=np.array([object()], dtype=object),
             vectors=np.zeros((1, 2)))
    with pytest.raises(StoreError):
        EmbeddingSet.load(tmp_path / "evil.npz")


def test_merge_rules(tmp_path):
    a = _set(["c/1.jpg", "c/2.jpg", "c/3.jpg"], seed=1)
    b = _set(["c/2.jpg", "c/4.jpg", "gone/5.jpg"], seed=2)
    alive = {"c/1.jpg", "c/2.jpg", "c/3.jpg", "c/4.jpg"}
    out = merge([a, b], exists=lambda r: r in alive)
    assert list(out.relpaths) == ["c/1.jpg", "c/2.jpg", "c/3.jpg", "c/4.jpg"]
    # first wins: c/2 keeps a's vector
    assert np.array_equal(out.vectors[1], a.vectors[1])
    with pytest.raises(StoreError, match="dims"):
        merge([a, _set(["z/1.jpg"], dim=4)])
    with pytest.raises(StoreError, match="backbones"):
        merge([a, _set(["z/1.jpg"], backbone="other")])


def test_merge_files_writes_atomically_and_reports(tmp_path):
    a = _set(["c/1.jpg", "c/2.jpg"], seed=1)
    b = _set(["c/2.jpg", "c/3.jpg"], seed=2)
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    out = tmp_path / "emb_merged_bb.npz"
    rep = merge_files([tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "junk.npz"], "bb", out,
                      exists=lambda r: r != "c/1.jpg")
    assert (rep.rows_in, rep.rows_out, rep.dropped_duplicate, rep.dropped_missing) == (4, 2, 1, 1)
    assert rep.skipped_files == [str(tmp_path / "junk.npz")]
    assert list(EmbeddingSet.load(out).relpaths) == ["c/2.jpg", "c/3.jpg"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_crash_mid_write_keeps_previous_file(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"v": 1})

    class Boom(Exception):
        pass

    from imrs.fsutil import atomic_path

    with pytest.raises(Boom), atomic_path(target) as tmp:
        Path(tmp).write_text('{"v": 2, "half')
        raise Boom
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
