"""Damaged and shared state, as a table: damage -> what the user sees -> what ``imrs index`` recovers.

A collection of 16 demo images is indexed and grown by 4 web images from a loopback server (real
``imrs`` commands, EfficientNet-Lite0), then copied per case and damaged the way disks and people
damage files. For each case: a search either answers from the whole collection (every image a
hit) or says in one line which file is damaged, never a traceback and never a silent partial
answer; then ``imrs index`` brings every image back, web images with their provenance, with
catalog, caches and index in step. Two state folders on one collection folder never delete each
other's web images.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from imrs import reconcile
from imrs.cli import main
from imrs.collection import Collection
from imrs.store import load_ids
from tests.conftest import REPO
from tests.webserver import LoopbackServer

BB = "efficientnet_lite0"
DEMO = REPO / "demo" / "caltech101-mini"
CLASSES = ["Leopards", "airplanes", "watch", "bonsai"]
WEB = "sunflower"
N_WEB = 4

pytestmark = [pytest.mark.skipif(not DEMO.is_dir(), reason=f"{DEMO} is absent"), pytest.mark.slow]


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue() + err.getvalue()


@dataclass
class Grown:
    top: Path
    urls: list[str]
    whole: int = 0  # hits of the test's search on the undamaged collection (every image it answers with)

    @property
    def root(self) -> Path:
        return self.top / "work" / "coll"

    @property
    def home(self) -> Path:
        return self.top / "work" / "home"

    def args(self, home: Path | None = None) -> list[str]:
        return ["--home", str(home or self.home), "--backbone", BB, "--indexer", "hnsw"]

    def index(self, home: Path | None = None) -> tuple[int, str]:
        return _run(["index", str(self.root), "-q", *self.args(home)])

    def search(self, home: Path | None = None) -> tuple[int, str]:
        query = sorted((self.root / CLASSES[0]).glob("*.jpg"))[0]
        return _run(["search", "--image", str(query), "-k", "100", "--json", "--root", str(self.root),
                     *self.args(home)])

    def open(self, home: Path | None = None) -> Collection:
        return Collection(self.root, BB, "hnsw", home=home or self.home)

    def restore(self) -> None:
        shutil.rmtree(self.top / "work", ignore_errors=True)
        shutil.copytree(self.top / "pristine", self.top / "work", symlinks=True)


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grown]:
    top = tmp_path_factory.mktemp("damage")
    served = top / "served"
    served.mkdir()
    for i, src in enumerate(sorted((DEMO / WEB).glob("*.jpg"))[:N_WEB]):
        shutil.copy2(src, served / f"{WEB}_{i:02d}.jpg")
    server = LoopbackServer(served, max_lifetime=900).start()
    try:
        g = Grown(top, [server.url(f"/photos/{WEB}_{i:02d}.jpg") for i in range(N_WEB)])
        for cls in CLASSES:
            (g.root / cls).mkdir(parents=True)
            for src in sorted((DEMO / cls).glob("*.jpg"))[:4]:
                shutil.copy2(src, g.root / cls / src.name)
        rc, out = g.index()
        assert rc == 0, out
        (top / "urls.txt").write_text("\n".join(g.urls) + "\n")
        rc, out = _run(["expand", WEB, "--urls-file", str(top / "urls.txt"), "--allow-loopback", "-n", str(N_WEB),
                        "-q", "--root", str(g.root), *g.args()])
        assert rc == 0 and f"{N_WEB} added" in out, out
        rc, out = g.search()
        assert rc == 0, out
        g.whole = len(json.loads(out[out.index("{"):])["hits"])
        assert g.whole >= len(CLASSES) * 4 + N_WEB - 1  # the query image itself may be left out
        coll = g.open()
        coll._catalog.close()
        _checkpoint(coll.state_dir / "catalog.sqlite")
        shutil.copytree(top / "work", top / "pristine", symlinks=True)
        yield g
    finally:
        server.stop()


def _checkpoint(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def _web_files(g: Grown) -> list[Path]:
    return sorted(g.root.glob("dynamic_*/*.jpg"))


def _state(g: Grown, home: Path | None = None) -> Path:
    return g.open(home).state_dir


# -- damage -------------------------------------------------------------------------------------------
def _garbage_page(g: Grown) -> None:
    """The page holding the images table's rows overwritten with random bytes."""
    db = _state(g) / "catalog.sqlite"
    con = sqlite3.connect(db)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='images'").fetchone()[0]
    con.close()
    with open(db, "r+b") as fh:
        fh.seek((root - 1) * page)
        fh.write(np.random.default_rng(1).bytes(page))


def _truncate(path_of: Callable[[Grown], Path], keep: float) -> Callable[[Grown], None]:
    def damage(g: Grown) -> None:
        p = path_of(g)
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])
    return damage


def _garbage(path_of: Callable[[Grown], Path]) -> Callable[[Grown], None]:
    def damage(g: Grown) -> None:
        p = path_of(g)
        p.write_bytes(np.random.default_rng(2).bytes(p.stat().st_size))
    return damage


def _catalog(g: Grown) -> Path:
    return _state(g) / "catalog.sqlite"


def _delta(kind: str) -> Callable[[Grown], Path]:
    def path(g: Grown) -> Path:
        emb = _state(g) / "emb"
        store = next(emb.glob("emb_*.store" if kind == "base" else "dyn_emb_*.store"))
        return store / json.loads((store / "manifest.json").read_text())["deltas"][0]["file"]
    return path


def _delete_catalog(g: Grown) -> None:
    for p in _state(g).glob("catalog.sqlite*"):
        p.unlink()


def _delete_everything_but_images(g: Grown) -> None:
    shutil.rmtree(g.home)


def _base_cache_and_live_index(g: Grown) -> None:
    _garbage(_delta("base"))(g)
    for p in (_state(g) / "snapshots").glob("live-*@*/index/*"):
        if p.is_file():
            p.write_bytes(b"garbage")


@dataclass
class Case:
    damage: Callable[[Grown], None]
    #: what a search shows before any repair: "whole" (every image is a hit), "one line" (rc 2, one
    #: line naming the damaged file) or "warned" (hits, and a warning that the index holds only part)
    search: str
    line: str = ""  # text the one line or the warning must contain


TABLE: dict[str, Case] = {
    "catalog deleted": Case(_delete_catalog, "whole"),
    "catalog emptied to 0 bytes": Case(_truncate(_catalog, 0.0), "whole"),
    "catalog garbage page": Case(_garbage_page, "one line", "catalog.sqlite is damaged"),
    "catalog half-written": Case(_truncate(_catalog, 0.5), "one line", "catalog.sqlite is damaged"),
    "catalog garbage": Case(_garbage(_catalog), "whole"),
    "base cache truncated": Case(_truncate(_delta("base"), 0.5), "whole"),
    "base cache garbage": Case(_garbage(_delta("base")), "whole"),
    "web cache garbage": Case(_garbage(_delta("dyn")), "whole"),
    "base cache and live index garbage": Case(_base_cache_and_live_index, "warned", "index holds 4 of the"),
    "state folder deleted": Case(_delete_everything_but_images, "one line", "the index is empty"),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_damage_then_search_then_index(name: str, grown: Grown, caplog: pytest.LogCaptureFixture) -> None:
    case = TABLE[name]
    grown.restore()
    web_before = {p.name: p.read_bytes() for p in _web_files(grown)}
    assert len(web_before) == N_WEB
    case.damage(grown)
    n_all = len(CLASSES) * 4 + N_WEB

    caplog.set_level(logging.WARNING)
    rc, out = grown.search()
    assert "Traceback" not in out, out
    if case.search == "one line":
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and case.line in lines[0], out
    else:
        assert rc == 0, out
        hits = json.loads(out[out.index("{"):])["hits"]
        if case.search == "whole":
            assert len(hits) == grown.whole, f"{name}: {len(hits)} of {grown.whole} images answer"
        else:
            assert len(hits) < grown.whole and case.line in caplog.text, caplog.text
    assert {p.name for p in _web_files(grown)} == set(web_before), "a web image was deleted"

    rc, out = grown.index()
    assert rc == 0 and "Traceback" not in out, out
    coll = grown.open()
    try:
        catalog = coll.catalog.relpaths_by_id()
        caches = set()
        for p in reconcile.cache_files(coll):
            caches |= set(load_ids(p, BB).tolist())
        assert set(catalog) == caches == set(coll.index.ids().tolist()) and len(catalog) == n_all, name
        web = list(coll.catalog.iter_records(source="dynamic"))
        assert sorted(r.source_url for r in web) == sorted(grown.urls), "provenance lost"
        assert {r.term for r in web} == {WEB}
        assert {Path(r.relpath).name: coll.abspath(r.relpath).read_bytes() for r in web} == web_before
        assert reconcile.check(coll).clean
        hits = coll.search_vectors(coll.index.get_vectors(np.asarray([next(iter(catalog))])), k=100)[0]
        assert len(hits) == n_all
    finally:
        coll._catalog.close()


def test_lost_catalog_of_a_grown_collection_gives_every_web_image_back(grown: Grown) -> None:
    """The catalog and every cache gone: `imrs index` re-embeds the folder and takes every web image
    back from its folder, with the provenance its sidecar kept."""
    grown.restore()
    state = _state(grown)
    for p in state.glob("catalog.sqlite*"):
        p.unlink()
    shutil.rmtree(state / "emb")
    rc, out = grown.index()
    assert rc == 0 and f"{N_WEB} web image(s) taken back with their provenance" in out, out
    coll = grown.open()
    try:
        web = {r.source_url: r for r in coll.catalog.iter_records(source="dynamic")}
        assert sorted(web) == sorted(grown.urls)
        assert all(r.provider and r.phash is not None and r.label == WEB for r in web.values())
        assert len(coll.index) == len(coll.catalog) == len(CLASSES) * 4 + N_WEB
    finally:
        coll._catalog.close()


def test_a_second_state_folder_never_deletes_the_owners_web_images(grown: Grown,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    grown.restore()
    other = grown.top / "work" / "home2"
    web_before = {p.name: p.read_bytes() for p in _web_files(grown)}
    caplog.set_level(logging.WARNING)
    rc, out = grown.index(other)
    assert rc == 0, out
    told = [r.getMessage() for r in caplog.records if "belongs to the state folder" in r.getMessage()]
    assert told and str(_state(grown)) in told[0] and "\n" not in told[0]
    for argv in (["snapshot", "save", "s1"], ["snapshot", "load", "s1"]):
        rc, out = _run([*argv, "--root", str(grown.root), *grown.args(other)])
        assert rc == 0, out
    coll2 = grown.open(other)
    reconcile.begin(coll2, "test")  # a full repair in the second state folder
    assert len(coll2.catalog) == len(CLASSES) * 4  # its own images: the owner's web images are not its
    coll2._catalog.close()
    assert {p.name: p.read_bytes() for p in _web_files(grown)} == web_before
    owner = grown.open()
    try:
        assert owner.catalog.count("dynamic") == N_WEB
        assert all(owner.abspath(r.relpath).is_file() for r in owner.catalog.iter_records(source="dynamic"))
    finally:
        owner._catalog.close()
