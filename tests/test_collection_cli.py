"""The facade and the `imrs` command end to end on a real Caltech-101 subset with the real
EfficientNet-Lite0 weights, a real FAISS/Annoy index and a real SQLite catalog."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imrs.cli import main
from imrs.collection import Collection
from imrs.errors import EmptyCollectionError, IMRSError, SnapshotError, UnknownBackboneError
from imrs.store import EmbeddingSet

BB = "efficientnet_lite0"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def copy_collection(small_collection: Path, tmp_path: Path) -> Path:
    """Real files (not symlinks) so the test can delete and modify them."""
    root = tmp_path / "copy"
    shutil.copytree(small_collection, root, symlinks=False)
    return root


def test_cli_index_is_incremental_and_search_finds_the_class(copy_collection, home, capsys, photos):
    code, out, _ = run_cli(capsys, "index", str(copy_collection), "--backbone", BB, "--indexer", "hnsw", "-q")
    assert code == 0 and "24 new" in out and "embedded 24" in out

    code, out, _ = run_cli(capsys, "index", str(copy_collection), "-q")
    assert code == 0 and "embedded 0" in out and "24 unchanged" in out

    code, out, _ = run_cli(capsys, "search", "--image", str(photos / "sunflower.jpg"), "-k", "5", "--json")
    hits = json.loads(out)["hits"]
    assert code == 0 and len(hits) == 5
    assert sum(h["label"] == "sunflower" for h in hits) >= 4
    assert hits[0]["score"] >= hits[-1]["score"]

    # delete one file, add one new file, modify one: exactly those are touched
    victim = sorted((copy_collection / "watch").glob("*.jpg"))[0]
    victim.unlink()
    new = copy_collection / "watch" / "new_copy.jpg"
    shutil.copy(sorted((copy_collection / "airplanes").glob("*.jpg"))[0], new)
    code, out, _ = run_cli(capsys, "index", str(copy_collection), "-q")
    assert "1 new" in out and "1 removed" in out and "embedded 1" in out

    coll = Collection(copy_collection, BB, "hnsw", home=home)
    assert len(coll.index) == 24 == len(coll.catalog)
    emb = EmbeddingSet.load(coll.base_npz())
    assert len(emb) == 24 and "watch/new_copy.jpg" in set(emb.relpaths)
    assert coll.index.search(emb.vectors[:1], 1)[1][0, 0] == emb.ids[0]

    code, out, _ = run_cli(capsys, "info")
    assert code == 0 and "24 embeddings x 1280-d" in out and "(active)" in out


def test_text_and_table_output(small_collection, home, capsys):
    run_cli(capsys, "index", str(small_collection), "--backbone", BB, "--indexer", "flat_ip", "-q")
    code, out, _ = run_cli(capsys, "search", "--image", str(next((small_collection / "Leopards").iterdir())))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("coverage ")  # the verdict comes first, then the table
    head = next(i for i, ln in enumerate(lines) if ln.startswith("rank"))
    assert lines[head].split()[:5] == ["rank", "score", "confidence", "label", "source"]
    assert lines[head + 2].split()[0] == "1" and "Leopards" in lines[head + 2]


def test_bad_input_gives_one_line_errors(tmp_path, home, capsys, small_collection):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "index", str(empty), "--backbone", BB)
    assert code == 2 and err.startswith("imrs: error: no images found") and err.count("\n") == 1

    code, _, err = run_cli(capsys, "index", str(small_collection), "--backbone", "nope_net")
    assert code == 2 and "unknown backbone" in err and "efficientnet_lite0" in err

    code, _, err = run_cli(capsys, "index", str(tmp_path / "missing"), "--backbone", BB)
    assert code == 2 and "not found" in err

    code, _, err = run_cli(capsys, "search", "--text", "x", "--image", "y", "--root", str(small_collection))
    assert code == 2 and "exactly one" in err


def test_corrupt_files_are_skipped_with_a_reason(copy_collection, home):
    (copy_collection / "watch" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (copy_collection / "watch" / "empty.png").write_bytes(b"")
    coll = Collection(copy_collection, BB, "flat_ip", home=home)
    heard: list[tuple[str, int, int]] = []
    report = coll.sync(progress=lambda stage, done, total: heard.append((stage, done, total)))
    assert report.embedded == 24
    # the one progress protocol (imrs.progress): every file read, the broken one included
    assert heard and {s for s, _, _ in heard} == {"embed"} and heard[-1][1:] == (25, 25)
    assert [d for _, d, _ in heard] == sorted(d for _, d, _ in heard)
    assert [r for r, _ in report.failed] == ["watch/broken.jpg"]  # did not decode
    assert report.skipped == [("watch/empty.png", "empty file")]  # left out by the walk, never read
    assert all(reason and "cannot read" not in reason for _, reason in report.failed)
    assert len(coll.index) == 24


def test_snapshots_roundtrip_and_mismatch_refused(small_collection, home, tmp_path):
    coll = Collection(small_collection, BB, "hnsw", home=home)
    coll.sync()
    q = EmbeddingSet.load(coll.base_npz()).vectors[:3]
    before = coll.index.search(q, 5)
    coll.save_snapshot("good")
    assert [m.name for m in coll.list_snapshots()] == ["good"]

    # a fresh process-like reopen loads the live snapshot without re-embedding
    again = Collection(small_collection, BB, "hnsw", home=home)
    after = again.index.search(q, 5)
    assert np.array_equal(before[1], after[1])
    again.load_snapshot("good")
    assert len(again.index) == 24

    other = Collection(small_collection, "resnet18", "hnsw", home=home, weights="random")
    with pytest.raises(SnapshotError, match="efficientnet_lite0"):
        other.load_snapshot("good")

    # a damaged pointer is reported, never half-loaded
    (coll.snap_dir / "good.json").write_text("{broken")
    with pytest.raises(SnapshotError, match="no snapshot"):
        coll.load_snapshot("good")


def test_dynamic_add_and_remove_never_touch_base(copy_collection, home):
    from imrs.catalog import ImageRecord

    coll = Collection(copy_collection, BB, "annoy", home=home)
    coll.sync()
    base_ids = list(coll.catalog.ids_set("base"))
    with pytest.raises(IMRSError, match="base"):
        coll.remove_dynamic(base_ids[:2])
    assert all(Path(coll.abspath(r.relpath)).exists() for r in coll.catalog.iter_records())

    dyn_dir = coll.dynamic_root / "dynamic_test"
    dyn_dir.mkdir()
    src = sorted((copy_collection / "sunflower").glob("*.jpg"))[0]
    shutil.copy(src, dyn_dir / "a.jpg")
    vec = coll.encoder.embed_images([dyn_dir / "a.jpg"])
    rec = ImageRecord.for_path("dynamic_test/a.jpg", source="dynamic", label="test", term="test", slug="test")
    coll.add_dynamic("test", [rec], vec)
    top2 = coll.search_vectors(vec, 2)[0]  # the copy and its base original, both at cosine 1
    assert rec.id in {h.id for h in top2} and {h.source for h in top2} == {"base", "dynamic"}
    assert len(coll.index) == 25

    rep = coll.remove_dynamic([rec.id])
    assert rep.removed == 1 and rep.files_deleted == 1 and not (dyn_dir / "a.jpg").exists()
    assert len(coll.index) == 24 and len(coll.catalog) == 24
    assert len(EmbeddingSet.load(coll.dynamic_npz("test"))) == 0
    assert src.exists()


def test_unknown_backbone_is_a_clear_error(small_collection, home):
    with pytest.raises(UnknownBackboneError, match="efficientnet_lite0"):
        Collection(small_collection, "resnet9000", home=home)
    with pytest.raises(EmptyCollectionError):
        Collection(small_collection, BB, "flat_ip", home=home).search_vectors(np.ones((1, 1280), np.float32))


def test_query_expansion_switch(small_collection, home, capsys):
    coll = Collection(small_collection, BB, "hnsw", home=home)
    coll.sync()
    emb = EmbeddingSet.load(coll.base_npz())
    plain = coll.search_vectors(emb.vectors[:4], 6)
    expanded = coll.search_vectors(emb.vectors[:4], 6, qe=3)
    # expansion moves the query (scores change) but the image itself stays the best match
    assert [h[0].id for h in expanded] == [h[0].id for h in plain] == list(emb.ids[:4])
    assert any(abs(a.score - b.score) > 1e-4 for p, e in zip(plain, expanded, strict=True)
               for a, b in zip(p, e, strict=True))
    code, out, _ = run_cli(capsys, "search", "--image", str(coll.abspath(emb.relpaths[0])), "--qe", "3", "--json",
                           "--root", str(small_collection), "--backbone", BB, "--indexer", "hnsw")
    # the query image itself is left out of the answer; its class still comes first
    hits = json.loads(out)["hits"]
    assert code == 0 and hits[0]["label"] == coll.catalog.get(int(emb.ids[0])).label
    assert int(emb.ids[0]) not in [h["id"] for h in hits]
