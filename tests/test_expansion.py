"""Dynamic web expansion against a loopback web server: real pHash, FAISS, SQLite and (where the
test is about quality) the real EfficientNet-Lite0.

Base collections are built from Caltech-101 *without* sunflowers; the server serves Caltech
sunflowers (plus resized / recompressed copies, and a copy of a base image) as "the web".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imrs.catalog import ImageRecord
from imrs.collection import Collection
from imrs.config import Settings
from imrs.errors import IMRSError, NetworkError
from imrs.expansion import (
    CoverageThresholds,
    check_coverage,
    expand,
    list_dynamic,
    parse_terms,
    prune,
    read_terms,
    thresholds_for,
)
from imrs.query import grow_terms
from imrs.store import EmbeddingSet
from imrs.web import DownloadPolicy, ImageHit, StaticProvider, WikimediaProvider
from tests.conftest import CALTECH, PHOTOS, REPO, need
from tests.webserver import LoopbackServer

BACKBONE = "efficientnet_lite0"
BASE_CLASSES = ["airplanes", "Leopards", "watch"]
PER_CLASS = 6
SUNFLOWER_QUERY = PHOTOS / "sunflower.jpg"


# ---------------------------------------------------------------------------------------------
# Helpers and fixtures (also used by tests/test_expansion_cli.py)
# ---------------------------------------------------------------------------------------------


class CachingEncoder:
    """The real encoder, with base-image embeddings memoised by file target: every test builds a
    fresh collection, and re-embedding the same Caltech files each time would only cost time."""

    _cache: dict[str, np.ndarray] = {}

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed_paths(self, paths: Any, batch_size: Any = None, progress: Any = False) -> Any:
        from imrs.encoders import EmbedResult

        keys = [os.path.realpath(p) for p in paths]
        cacheable = all(k.startswith(str(CALTECH)) for k in keys)
        if cacheable and all(k in self._cache for k in keys):
            vecs = np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, self._inner.dim), np.float32)
            return EmbedResult(vecs, np.arange(len(keys), dtype=np.int64), [])
        res = self._inner.embed_paths(paths, batch_size=batch_size, progress=progress)
        if cacheable:
            for i, v in zip(res.kept.tolist(), res.vectors, strict=True):
                self._cache[keys[i]] = v
        return res


@pytest.fixture(scope="session")
def encoder() -> Any:
    need(CALTECH)
    from imrs.encoders import backbone_status, get_encoder

    state, why = backbone_status(BACKBONE)
    if state != "ready":
        pytest.skip(f"{BACKBONE} unavailable: {why}")
    return CachingEncoder(get_encoder(BACKBONE, device="cpu"))


def make_base(root: Path, classes: list[str] = BASE_CLASSES, per_class: int = PER_CLASS) -> Path:
    need(CALTECH)
    for c in classes:
        for src in sorted((CALTECH / c).glob("*.jpg"))[:per_class]:
            dst = root / c / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    return root


def open_coll(root: Path, home: Path, encoder: Any, indexer: str = "flat_ip") -> Collection:
    return Collection(root, BACKBONE, indexer, home=home, encoder=encoder)


@pytest.fixture
def coll(tmp_path: Path, home: Path, encoder: Any) -> Collection:
    c = open_coll(make_base(tmp_path / "collection"), home, encoder)
    c.sync()
    return c


def build_web_dir(folder: Path) -> Path:
    """What the loopback "web" serves: 8 Caltech sunflowers, 5 strawberries, near-duplicates of the
    first sunflower, and a shrunken copy of a base image."""
    need(CALTECH)
    folder.mkdir(parents=True, exist_ok=True)
    suns = sorted((CALTECH / "sunflower").glob("*.jpg"))[:8]
    for i, src in enumerate(suns):
        (folder / f"sunflower_{i:02d}.jpg").symlink_to(src)
    for i, src in enumerate(sorted((CALTECH / "strawberry").glob("*.jpg"))[:5]):
        (folder / f"strawberry_{i:02d}.jpg").symlink_to(src)
    first = Image.open(suns[0]).convert("RGB")
    first.resize((int(first.width * 0.6), int(first.height * 0.6))).save(folder / "dup_small.jpg", quality=90)
    first.save(folder / "dup_q20.jpg", quality=20)
    base = Image.open(sorted((CALTECH / BASE_CLASSES[0]).glob("*.jpg"))[0]).convert("RGB")
    base.resize((base.width * 3 // 4, base.height * 3 // 4)).save(folder / "base_copy.jpg", quality=80)
    return folder


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = LoopbackServer(build_web_dir(tmp_path_factory.mktemp("web")), max_lifetime=600).start()
    try:
        yield server
    finally:
        server.stop()


def sun_urls(server: LoopbackServer, n: int = 8) -> list[str]:
    return [server.url(f"/photos/sunflower_{i:02d}.jpg") for i in range(n)]


@pytest.fixture
def policy() -> DownloadPolicy:
    return DownloadPolicy(allow_loopback=True, connect_timeout=2.0, read_timeout=2.0, total_timeout=5.0)


def npz_rows(c: Collection) -> int:
    paths = [p for p in [c.base_npz(), *c.dynamic_npzs()] if p.exists()]
    return sum(len(EmbeddingSet.load(p)) for p in paths)


def counts(c: Collection) -> tuple[int, int, int]:
    return len(c.catalog), len(c.index), npz_rows(c)


def fresh_counts(c: Collection, encoder: Any) -> tuple[int, int, int]:
    other = Collection(c.root, c.backbone, c.indexer, home=c.state_dir.parents[1], encoder=encoder)
    return counts(other)


def dynamic_files(c: Collection) -> list[Path]:
    """The downloaded images (each has a provenance sidecar ``<name>.json`` beside it, not counted)."""
    return sorted(p for p in Path(c.dynamic_root).glob("dynamic_*/**/*") if p.is_file() and p.suffix != ".json")


# ---------------------------------------------------------------------------------------------
# Coverage and terms (no network, no model)
# ---------------------------------------------------------------------------------------------


def test_coverage_weak_and_ok() -> None:
    t = CoverageThresholds(best_min=0.5, good_min=0.45, min_good=3)
    assert check_coverage([], t).weak and check_coverage([], t).reason == "no results"
    low = check_coverage([0.4, 0.3, 0.2], t)
    assert low.weak and "best score 0.400 < 0.50" in low.reason and low.n_good == 0
    lonely = check_coverage([0.9, 0.44, 0.3], t)
    assert lonely.weak and lonely.n_good == 1 and "only 1 hit(s)" in lonely.reason
    ok = check_coverage([0.3, 0.8, 0.5, 0.46], t)  # any order
    assert not ok.weak and ok.best == pytest.approx(0.8) and ok.n_good == 3


def test_thresholds_per_backbone_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built-in values per backbone family; IMRS_COVERAGE_* (read through Settings) override them."""
    for var in ("IMRS_COVERAGE_BEST_MIN", "IMRS_COVERAGE_GOOD_MIN", "IMRS_COVERAGE_MIN_GOOD"):
        monkeypatch.delenv(var, raising=False)
    clip_text = thresholds_for("clip_vit_b32", "text")
    clip_image = thresholds_for("clip_vit_b32", "image")
    eff = thresholds_for("efficientnet_lite0", "image")
    assert clip_text.best_min < 0.35 < eff.best_min < clip_image.best_min
    assert thresholds_for("resnet50", "image") == eff  # unmeasured backbones: the generic default
    monkeypatch.setenv("IMRS_COVERAGE_BEST_MIN", "0.9")
    monkeypatch.setenv("IMRS_COVERAGE_MIN_GOOD", "5")
    assert thresholds_for("efficientnet_lite0").best_min == 0.9
    assert thresholds_for("efficientnet_lite0").min_good == 5
    monkeypatch.setenv("IMRS_COVERAGE_MIN_GOOD", "many")
    with pytest.raises(IMRSError, match="IMRS_COVERAGE_MIN_GOOD"):
        thresholds_for("efficientnet_lite0")
    assert eff.with_overrides(good_min=0.1).good_min == 0.1


def test_parse_and_read_terms(tmp_path: Path) -> None:
    assert parse_terms("cat\n\n# comment\n  hot   dog \ncat\nCat\n", csv_mode=False) == ["cat", "hot dog"]
    assert parse_terms("id,term,n\n1,red fox,3\n2,\"owl, barn\",4\n") == ["red fox", "owl, barn"]
    assert parse_terms("giraffe,zoo\nzebra,zoo\n") == ["giraffe", "zebra"]  # no 'term' column: the first
    f = tmp_path / "terms.csv"
    f.write_text("\ufeffTerm\nkoala\n\nwombat\n", encoding="utf-8")
    assert read_terms(f) == ["koala", "wombat"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(IMRSError, match="no terms"):
        read_terms(empty)
    with pytest.raises(IMRSError, match="cannot read"):
        read_terms(tmp_path / "absent.txt")


# ---------------------------------------------------------------------------------------------
# Growing
# ---------------------------------------------------------------------------------------------


def test_wikimedia_provider_against_loopback(coll: Collection, web: LoopbackServer, policy: DownloadPolicy) -> None:
    provider = WikimediaProvider(web.api_url, None, allow_loopback=True)
    rep = expand(coll, "sunflower", n=3, policy=policy, providers=provider)
    assert rep.kept == 3 and rep.provider_report[0]["provider"] == "wikimedia" and rep.provider_report[0]["ok"]
    recs = list_dynamic(coll, "sunflower")
    assert len(recs) == 3
    assert all(r.license and r.author and r.page_url and r.provider == "wikimedia" for r in recs)


def test_near_duplicates_dropped(coll: Collection, web: LoopbackServer, policy: DownloadPolicy) -> None:
    urls = [web.url("/photos/sunflower_00.jpg"), web.url("/photos/dup_small.jpg"), web.url("/photos/dup_q20.jpg"),
            web.url("/photos/base_copy.jpg"), web.url("/photos/sunflower_01.jpg")]
    before = counts(coll)
    rep = expand(coll, "sunflower", n=10, policy=policy, providers=StaticProvider(urls))
    assert rep.kept == 2 and rep.fetched == 5 and not rep.failures
    reasons = dict(rep.duplicates)
    assert "in this batch" in reasons[urls[1]] and "in this batch" in reasons[urls[2]]
    assert "base image airplanes/" in reasons[urls[3]]
    assert counts(coll) == tuple(x + 2 for x in before)
    assert len(dynamic_files(coll)) == 2  # dropped files were deleted, nothing left in staging
    # Same URLs again: known files are skipped without a download, the rest are pHash duplicates.
    web.reset_stats()
    again = expand(coll, "sunflower", n=10, policy=policy, providers=StaticProvider(urls))
    assert again.kept == 0 and len(again.duplicates) == 5
    assert sum("already in the collection" in r for _, r in again.duplicates) == 2
    assert web.hits["/photos/sunflower_00.jpg"] == 0
    # A stricter threshold of 0 still catches the exact re-encodes; a different term is still deduped
    other = expand(coll, "helianthus", n=10, policy=policy, providers=StaticProvider(urls[:1]), phash_threshold=0)
    assert other.kept == 0 and "dynamic image dynamic_sunflower/" in other.duplicates[0][1]


def test_failures_recorded_not_raised(coll: Collection, web: LoopbackServer, policy: DownloadPolicy) -> None:
    bad = {
        web.url("/status/404"): "http 404",
        web.url("/corrupt.jpg"): "corrupt",
        web.url("/page.html"): "not an image",
        web.url("/bomb.png"): "bomb",
        "http://10.1.2.3/x.jpg": "",
        web.url("/loop"): "redirect",
    }
    urls = [*bad, web.url("/photos/sunflower_03.jpg")]
    rep = expand(coll, "mixed bag", n=3, policy=policy, providers=StaticProvider(urls))
    assert rep.kept == 1 and len(rep.failures) == len(bad)
    failures = dict(rep.failures)
    for url, word in bad.items():
        assert word in failures[url].lower()
    assert len(dynamic_files(coll)) == 1


def test_no_provider_answered_is_one_line(coll: Collection, policy: DownloadPolicy) -> None:
    class Down:
        name = "duckduckgo"

        def search(self, term: str, n: int) -> list[ImageHit]:
            raise NetworkError("DuckDuckGo image search failed: offline")

    dead_wiki = WikimediaProvider("http://127.0.0.1:9/w/api.php", None, timeout=1.0, allow_loopback=True)
    with pytest.raises(NetworkError) as err:
        expand(coll, "x", n=2, policy=policy, providers=[Down(), dead_wiki])
    msg = str(err.value)
    assert msg.startswith("no image provider answered for 'x': duckduckgo: DuckDuckGo image search failed")
    assert "; wikimedia: Wikimedia API at 127.0.0.1:9 unreachable" in msg and "\n" not in msg
    assert not list(Path(coll.dynamic_root).glob("dynamic_*"))  # no empty folder left behind
    # At search time the failure is reported, the collection's answer kept.
    from imrs.config import Settings
    from imrs.query import Query, run_query

    need(SUNFLOWER_QUERY)
    out = run_query(coll, Query(image=str(SUNFLOWER_QUERY), term="x", k=5, expand=True),
                    Settings.from_env(allow_loopback=True), providers=[Down()])
    assert out.verdict.weak and out.error and "no image provider answered" in out.summary()
    assert out.report is None and out.hits_before is None and len(out.hits) == 5
    # A provider that answers with nothing is not an error.
    empty = expand(coll, "nothing", n=2, policy=policy, providers=StaticProvider([]))
    assert empty.kept == 0 and empty.candidates == 0


@pytest.mark.parametrize("term", ["../../etc", "con", "x" * 500, "🌻 sunflower 🌻", "a/b\\c:d*?", ".."])
def test_hostile_terms_make_safe_folders(term: str, coll: Collection, web: LoopbackServer,
                                         policy: DownloadPolicy, tmp_path: Path) -> None:
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    rep = expand(coll, term, n=1, policy=policy, providers=StaticProvider(sun_urls(web)[5:6]))
    assert rep.kept == 1
    folder = Path(rep.folder)
    assert folder.parent == Path(coll.dynamic_root) and folder.is_dir() and not folder.is_symlink()
    assert re.fullmatch(r"dynamic_[a-z0-9]+(-[a-z0-9]+)*", folder.name) and len(folder.name) <= 80
    assert folder.name.lower() not in ("dynamic_con", "dynamic_")
    assert sorted(p.name for p in tmp_path.iterdir()) == outside_before
    assert [p.parent for p in dynamic_files(coll)] == [folder]
    assert coll.catalog.get(rep.added_ids[0]).term == " ".join(term.split())[:200]  # type: ignore[union-attr]


def test_symlinked_term_folder_is_refused(coll: Collection, web: LoopbackServer, policy: DownloadPolicy) -> None:
    (Path(coll.dynamic_root) / "dynamic_sunflower").symlink_to(coll.root / "airplanes")
    with pytest.raises(IMRSError, match="symbolic link"):
        expand(coll, "sunflower", n=1, policy=policy, providers=StaticProvider(sun_urls(web)[:1]))
    assert len(list((coll.root / "airplanes").iterdir())) == PER_CLASS


def test_separate_dynamic_root(tmp_path: Path, home: Path, encoder: Any, web: LoopbackServer,
                               policy: DownloadPolicy) -> None:
    """A read-only collection keeps its web images elsewhere; nothing is written beside the base."""
    root = make_base(tmp_path / "collection")
    coll = Collection(root, BACKBONE, "flat_ip", home=home, encoder=encoder, dynamic_root=str(tmp_path / "web-images"))
    coll.sync()
    rep = expand(coll, "sunflower", n=2, policy=policy, providers=StaticProvider(sun_urls(web)[:2]))
    assert rep.kept == 2 and Path(rep.folder).parent == tmp_path / "web-images"
    assert not list(root.glob("dynamic_*"))
    hit = coll.search_vectors(coll.embed_query_image(web.photos_dir / "sunflower_00.jpg"), 1)[0][0]
    assert hit.source == "dynamic" and hit.path.is_file() and hit.path.parent == Path(rep.folder)
    assert prune(coll, term="sunflower").files_deleted == 2 and not Path(rep.folder).exists()


def test_missing_base_phashes_are_filled(coll: Collection, web: LoopbackServer, policy: DownloadPolicy) -> None:
    base_ids = sorted(coll.catalog.ids_set("base"))
    rec = coll.catalog.get(base_ids[0])
    assert rec is not None
    # A catalog from before pHashes were stored: no hash anywhere.
    con = coll.catalog._con()
    con.execute("UPDATE images SET phash=NULL")
    assert coll.catalog.phashes() == ([], [])
    rep = expand(coll, "planes", n=2, policy=policy, providers=StaticProvider([web.url("/photos/base_copy.jpg")]))
    assert rep.kept == 0 and "base image airplanes/" in rep.duplicates[0][1]
    assert len(coll.catalog.phashes()[0]) == len(base_ids)


# ---------------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------------


def test_batch_continues_past_failures(coll: Collection, web: LoopbackServer) -> None:
    class Flaky:
        name = "flaky"

        def search(self, term: str, n: int) -> list[ImageHit]:
            if term == "broken":
                raise NetworkError("simulated outage")
            if term == "crash":
                raise RuntimeError("boom")
            urls = {"one": sun_urls(web)[0:2], "two": [*sun_urls(web)[2:4], web.url("/status/500")]}[term]
            return [ImageHit(url=u, license="CC0") for u in urls]

    calls: list[tuple[str, int, int]] = []
    report = grow_terms(coll, ["one", "broken", "crash", "two", "One"], Settings(allow_loopback=True), 2,
                        lambda stage, d, t: calls.append((stage, d, t)), providers=Flaky())
    by_term = {r.term: r for r in report.results}
    assert list(by_term) == ["one", "broken", "crash", "two"]  # "One" is the same folder as "one"
    assert by_term["one"].added == 2 and by_term["two"].added == 2 and by_term["two"].failed == 1
    assert "http 500" in by_term["two"].reasons[0]
    assert by_term["broken"].error and "simulated outage" in by_term["broken"].error
    assert by_term["crash"].error and "boom" in by_term["crash"].error
    assert report.added == 4 and len(report.failed_terms) == 2
    terms = [c for c in calls if c[0] == "terms"]
    assert terms == [("terms", i, 4) for i in range(5)]  # each term's start, then the end
    first_download = calls.index(next(c for c in calls if c[0] == "download"))
    assert calls.index(("terms", 1, 4)) > first_download  # the terms' own stages come in between
    summary = report.summary()
    assert "dynamic_one" in summary and "ERROR: no image provider answered" in summary
    assert "4 image(s) added" in summary
    json.dumps(report.as_dict())
    rows = {r["term"]: r for r in report.rows()}  # what the page's batch tab shows
    assert rows["two"]["added"] == 2 and rows["two"]["why"].startswith("http 500")
    assert rows["broken"]["why"].startswith("error: no image provider answered")


def test_batch_stops_when_progress_raises(coll: Collection, web: LoopbackServer) -> None:
    """A progress callback that raises (a cancel) stops the whole batch; it is not one term's failure."""
    class Stop(Exception):
        pass

    def cancel(stage: str, done: int, total: int) -> None:
        if stage == "download":
            raise Stop()

    before = counts(coll)
    with pytest.raises(Stop):
        grow_terms(coll, ["one", "two"], Settings(allow_loopback=True), 2, cancel,
                   providers=StaticProvider(sun_urls(web)[:2]))
    assert counts(coll) == before and not dynamic_files(coll)


# ---------------------------------------------------------------------------------------------
# Prune
# ---------------------------------------------------------------------------------------------


def test_prune_restores_counts_exactly(tmp_path: Path, home: Path, encoder: Any, web: LoopbackServer,
                                       policy: DownloadPolicy) -> None:
    coll = open_coll(make_base(tmp_path / "collection"), home, encoder, indexer="hnsw")
    coll.sync()
    before = counts(coll)
    base_files = sorted(p for p in coll.root.rglob("*.jpg") if "dynamic_" not in str(p))
    expand(coll, "sunflower", n=3, policy=policy, providers=StaticProvider(sun_urls(web)[:3]))
    expand(coll, "sun flower field", n=2, policy=policy, providers=StaticProvider(sun_urls(web)[3:5]))
    assert counts(coll) == tuple(x + 5 for x in before)
    rep = prune(coll, term="Sunflower")  # the term, any spelling, or the slug
    assert rep.removed == 3 and rep.files_deleted == 3 and rep.slugs == ["sunflower"]
    assert counts(coll) == tuple(x + 2 for x in before)
    assert not (Path(coll.dynamic_root) / "dynamic_sunflower").exists()
    ids = [r.id for r in list_dynamic(coll, "sun-flower-field")]
    rep = prune(coll, ids=[str(i) for i in ids] + ["12345"])
    assert rep.removed == 2 and rep.missing == [12345]
    assert counts(coll) == before == fresh_counts(coll, encoder)
    assert not dynamic_files(coll) and coll.catalog.count("dynamic") == 0
    assert sorted(p for p in coll.root.rglob("*.jpg") if "dynamic_" not in str(p)) == base_files
    assert all(p.is_file() for p in base_files)


def test_prune_never_deletes_base_images(coll: Collection, web: LoopbackServer, policy: DownloadPolicy,
                                          tmp_path: Path) -> None:
    expand(coll, "sunflower", n=2, policy=policy, providers=StaticProvider(sun_urls(web)[:2]))
    dyn_ids = [r.id for r in list_dynamic(coll)]
    base_ids = sorted(coll.catalog.ids_set("base"))
    base_files = {p: p.resolve() for p in coll.root.rglob("*.jpg") if "dynamic_" not in str(p)}
    before = counts(coll)

    with pytest.raises(IMRSError, match="refusing"):
        prune(coll, ids=base_ids[:2])
    with pytest.raises(IMRSError, match="refusing"):
        prune(coll, ids=[*dyn_ids, base_ids[0]])  # a mix is refused as a whole
    for term in ("../..", "../../etc", "airplanes", "", "/", "dynamic_../airplanes"):
        with pytest.raises(IMRSError, match="no dynamic images"):
            prune(coll, term=term)
    with pytest.raises(IMRSError, match="not an image id"):
        prune(coll, ids=["1; DROP TABLE images"])
    assert counts(coll) == before

    # Catalog rows that *claim* to be dynamic but point at base files, outside files, or through
    # symlinks: the rows go, the files they point at stay.
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    base_target = coll.root / "airplanes" / sorted(os.listdir(coll.root / "airplanes"))[0]
    link_dir = Path(coll.dynamic_root) / "dynamic_link"
    link_dir.symlink_to(coll.root / "airplanes")
    evil = Path(coll.dynamic_root) / "dynamic_evil"
    evil.mkdir()
    (evil / "to_base.jpg").symlink_to(base_target)
    crafted = [
        ImageRecord(id=101, relpath="dynamic_evil/../airplanes/" + base_target.name, source="dynamic"),
        ImageRecord(id=102, relpath="dynamic_evil/../../outside.txt", source="dynamic"),
        ImageRecord(id=103, relpath="dynamic_link/" + base_target.name, source="dynamic"),
        ImageRecord(id=104, relpath="dynamic_evil/to_base.jpg", source="dynamic"),
    ]
    coll.catalog.upsert(crafted)
    rep = prune(coll, ids=[101, 102, 103, 104])
    assert rep.removed == 4 and rep.files_deleted == 0
    assert outside.read_text() == "keep me"
    assert all(p.is_file() and p.resolve() == t for p, t in base_files.items())
    assert counts(coll) == before


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------


def _run_threads(targets: list[Any]) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


@pytest.mark.parametrize("shared", [True, False], ids=["one-collection", "two-collections"])
def test_two_threads_expand_consistently(shared: bool, tmp_path: Path, home: Path, encoder: Any,
                                         web: LoopbackServer, policy: DownloadPolicy) -> None:
    root = make_base(tmp_path / "collection")
    a = open_coll(root, home, encoder, indexer="hnsw")
    a.sync()
    b = a if shared else open_coll(root, home, encoder, indexer="hnsw")
    len(b.index)  # both load the index before either writes
    before = counts(a)
    reports: dict[str, Any] = {}
    errors = _run_threads([
        lambda: reports.setdefault("x", expand(a, "first", n=3, policy=policy,
                                               providers=StaticProvider(sun_urls(web)[:3]))),
        lambda: reports.setdefault("y", expand(b, "second", n=3, policy=policy,
                                               providers=StaticProvider(sun_urls(web)[3:6]))),
    ])
    assert not errors, errors
    assert reports["x"].kept == 3 and reports["y"].kept == 3
    expected = tuple(x + 6 for x in before)
    assert fresh_counts(a, encoder) == expected
    assert len(a.catalog) == expected[0] and npz_rows(a) == expected[2]
    assert len(fresh_index_ids(a, encoder)) == expected[1]


def fresh_index_ids(c: Collection, encoder: Any) -> set[int]:
    other = Collection(c.root, c.backbone, c.indexer, home=c.state_dir.parents[1], encoder=encoder)
    ids = set(other.index.ids().tolist())
    assert ids == other.catalog.ids_set()
    return ids


_CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
sys.path.insert(0, sys.argv[1])
from imrs.collection import Collection
from imrs.expansion import expand
from imrs.web import DownloadPolicy, StaticProvider


class PixelEncoder:
    # A torch-free stand-in (this test is about locking, not quality): 40x32 grey pixels, unit norm.
    supports_text = False
    has_classifier = False
    dim = 1280

    def embed_paths(self, paths, batch_size=None, progress=False):
        from imrs.encoders import EmbedResult

        vecs = [np.asarray(Image.open(p).convert("L").resize((40, 32)), np.float32).ravel() for p in paths]
        vecs = np.stack([v / max(np.linalg.norm(v), 1e-6) for v in vecs])
        return EmbedResult(vecs, np.arange(len(paths)), [])


root, home, term, urls = sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
barrier, me = Path(sys.argv[6]), sys.argv[7]
coll = Collection(root, "efficientnet_lite0", "hnsw", home=home, encoder=PixelEncoder())
len(coll.index)  # load the live index before the other process writes
(barrier / me).touch()
deadline = time.time() + 60
while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.02)
rep = expand(coll, term, n=len(urls), policy=DownloadPolicy(allow_loopback=True), providers=StaticProvider(urls))
print(json.dumps({"kept": rep.kept, "index": len(coll.index)}))
"""


@pytest.mark.slow
def test_two_processes_expand_consistently(tmp_path: Path, home: Path, encoder: Any, web: LoopbackServer) -> None:
    root = make_base(tmp_path / "collection")
    coll = open_coll(root, home, encoder, indexer="hnsw")
    coll.sync()
    before = counts(coll)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IMRS_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(REPO), str(root), str(home), term,
                               json.dumps(urls), str(barrier), term], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for term, urls in (("alpha", sun_urls(web)[:3]), ("beta", sun_urls(web)[3:7]))]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    kept = [json.loads(out.strip().splitlines()[-1])["kept"] for out, _ in outs]
    assert kept == [3, 4]
    expected = tuple(x + 7 for x in before)
    assert fresh_counts(coll, encoder) == expected
    assert len(fresh_index_ids(coll, encoder)) == expected[1]
