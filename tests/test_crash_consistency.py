"""Kill ``imrs`` at every fault point and check that the collection recovers, the way databases test
their commit path.

For each point of ``imrs.faults.POINTS`` the real command (``python -m imrs.cli index / expand /
prune / merge / snapshot``) runs in a child process with ``IMRS_FAULT=<point>`` and SIGKILLs itself
there. Then the collection must open, with catalog ids == cache ids == index ids, no staging
folders, temp files, unreferenced snapshot versions or unrecorded dynamic files left; re-running
the command must complete and reach exactly the state an uninterrupted run reaches, and a third
run must change nothing.

Cost: the collections (40 demo images, EfficientNet-Lite0) are embedded once per module and copied
per trial (state folder included: nothing is re-embedded); only the killed run is a child process,
the re-runs are in-process ``imrs.cli.main`` calls sharing one model load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from imrs import reconcile
from imrs import snapshot as snap
from imrs.cli import main
from imrs.collection import Collection
from imrs.faults import POINTS
from imrs.ids import stable_id
from imrs.store import EmbeddingSet
from tests.conftest import REPO
from tests.webserver import LoopbackServer

BB = "efficientnet_lite0"
INDEXER = "hnsw"
DEMO = REPO / "demo" / "caltech101-mini"
BASE_CLASSES = ["Leopards", "airplanes", "watch", "Faces", "ant", "bonsai", "chair", "ketch", "pizza", "wrench"]
SYNC_ADD = "crab"  # appears in the folder before a re-index
MERGE_ADD = "lotus"  # appears in the folder with its vectors in an extra NPZ
WEB = "sunflower"  # what the loopback "web" serves
N_WEB = 4

pytestmark = pytest.mark.skipif(not DEMO.is_dir(), reason=f"{DEMO} is absent")


# ---------------------------------------------------------------------------------------------
# Fixture collections, built once and copied per trial
# ---------------------------------------------------------------------------------------------


@dataclass
class Lab:
    work: Path  # the trial's root + home live here, at fixed paths (the state folder is keyed by them)
    pristine: Path  # saved copies of each prepared state
    urls: Path
    extra_npz: Path

    @property
    def root(self) -> Path:
        return self.work / "coll"

    @property
    def home(self) -> Path:
        return self.work / "home"

    def cli(self, *argv: str) -> list[str]:
        head, rest = argv[0], list(argv[1:])
        if head == "snapshot":
            head, rest = f"snapshot {rest[0]}", rest[1:]
        where = [] if head == "index" else ["--root", str(self.root)]  # index takes the folder itself
        return [*head.split(), *rest, *where, "--home", str(self.home), "--backbone", BB, "--indexer", INDEXER]

    def save(self, name: str) -> None:
        dest = self.pristine / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.work, dest, symlinks=True)

    def restore(self, name: str) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.copytree(self.pristine / name, self.work, symlinks=True)

    def open(self) -> Collection:
        return Collection(self.root, BB, INDEXER, home=self.home)


def _copy_class(cls: str, dest: Path) -> list[Path]:
    out = []
    for src in sorted((DEMO / cls).glob("*.jpg")):
        (dest / cls).mkdir(parents=True, exist_ok=True)
        out.append(Path(shutil.copy2(src, dest / cls / src.name)))
    return out


def _run(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    folder = tmp_path_factory.mktemp("web")
    for i, src in enumerate(sorted((DEMO / WEB).glob("*.jpg"))[:N_WEB]):
        shutil.copy2(src, folder / f"{WEB}_{i:02d}.jpg")
    server = LoopbackServer(folder, max_lifetime=900).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, web: LoopbackServer) -> Lab:
    top = tmp_path_factory.mktemp("crash")
    lab = Lab(top / "work", top / "pristine", top / "urls.txt", top / "extra.npz")
    lab.urls.write_text("\n".join(web.url(f"/photos/{WEB}_{i:02d}.jpg") for i in range(N_WEB)) + "\n")
    for cls in BASE_CLASSES:
        _copy_class(cls, lab.root)
    rc, out = _run(lab.cli("index", str(lab.root), "-q"))
    assert rc == 0, out
    lab.save("indexed")

    # merge: new files in the folder whose vectors come in an extra NPZ
    files = _copy_class(MERGE_ADD, lab.root)
    coll = lab.open()
    res = coll.encoder.embed_paths(files)
    rels = [f.relative_to(lab.root).as_posix() for f in files]
    EmbeddingSet(BB, [stable_id(r) for r in rels], rels, res.vectors).save(lab.extra_npz)
    lab.save("merge")

    # expanded: a named snapshot of the base collection, then web images added
    lab.restore("indexed")
    rc, out = _run(lab.cli("snapshot", "save", "before"))
    assert rc == 0, out
    rc, out = _run(lab.cli("expand", WEB, "--urls-file", str(lab.urls), "--allow-loopback", "-n", str(N_WEB), "-q"))
    assert rc == 0 and f"{N_WEB} added" in out, out
    lab.save("expanded")
    return lab


def _prepare_reindex(lab: Lab) -> None:
    """+4 new files, -2 vanished, 1 rewritten: a re-index adds, removes and re-embeds."""
    for f in sorted((lab.root / "watch").glob("*.jpg"))[:2]:
        f.unlink()
    _copy_class(SYNC_ADD, lab.root)
    target = sorted((lab.root / "chair").glob("*.jpg"))[0]
    shutil.copyfile(sorted((DEMO / "pizza").glob("*.jpg"))[0], target)


@dataclass
class Scenario:
    state: str
    argv: Callable[[Lab], list[str]]
    prepare: Callable[[Lab], None] | None = None
    #: text of a re-run's error that still means "converged" (a prune whose images are already gone)
    done_error: str | None = None


SCENARIOS: dict[str, Scenario] = {
    "index": Scenario("indexed", lambda lab: lab.cli("index", str(lab.root), "-q"), _prepare_reindex),
    "expand": Scenario("indexed", lambda lab: lab.cli("expand", WEB, "--urls-file", str(lab.urls),
                                                      "--allow-loopback", "-n", str(N_WEB), "-q")),
    "prune": Scenario("expanded", lambda lab: lab.cli("prune", "--term", WEB), done_error="no dynamic images"),
    "merge": Scenario("merge", lambda lab: lab.cli("merge", str(lab.extra_npz))),
    "snapshot save": Scenario("expanded", lambda lab: lab.cli("snapshot", "save", "before")),
    "snapshot load": Scenario("expanded", lambda lab: lab.cli("snapshot", "load", "before")),
    "compact": Scenario("merge", lambda lab: lab.cli("compact"), lambda lab: _index_in_process(lab)),
}


def _index_in_process(lab: Lab) -> None:
    """A second delta in the base store (the merge state's new files indexed), so compaction has work."""
    rc, out = _run(lab.cli("index", str(lab.root), "-q"))
    assert rc == 0, out


def scenario_for(point: str) -> str:
    prefix = point.split(".")[0]
    if prefix == "snapshot":
        return "snapshot " + point.split(".")[1]
    return {"sync": "index", "commit": "index", "store": "compact"}.get(prefix, prefix)


# ---------------------------------------------------------------------------------------------
# What a consistent collection looks like
# ---------------------------------------------------------------------------------------------


def state_of(lab: Lab) -> dict[str, object]:
    """Open the collection (which repairs it) and check every invariant; returns its id sets and
    files, for comparing runs."""
    coll = lab.open()
    try:
        catalog = coll.catalog.relpaths_by_id()
        rows = [EmbeddingSet.load(p, BB) for p in reconcile.cache_files(coll)]
        cache_ids = np.concatenate([r.ids for r in rows]) if rows else np.zeros(0, np.int64)
        index_ids = coll.index.ids()
        assert len(set(cache_ids.tolist())) == len(cache_ids), "an id cached twice"
        assert set(catalog) == set(cache_ids.tolist()) == set(index_ids.tolist()), (
            f"catalog {len(catalog)}, caches {len(cache_ids)}, index {len(index_ids)}")
        assert reconcile.check(coll).clean
        assert not reconcile.intent_path(coll).exists()
        staging = [*lab.root.glob("dynamic_*/.staging-*"), *(coll.state_dir / "staging").glob("*")]
        assert not staging, staging
        temp = [p for d in (coll.emb_dir, coll.snap_dir) for p in d.glob(".*.tmp")]
        assert not temp, temp
        for store in coll.emb_dir.glob("*.store"):  # no delta of a change killed before its manifest
            named = {d["file"] for d in json.loads((store / "manifest.json").read_text())["deltas"]}
            assert {p.name for p in store.iterdir()} == named | {"manifest.json"}, store
        pointed = {snap.pointed_version(coll.snap_dir, p.stem) for p in coll.snap_dir.glob("*.json")}
        assert None not in pointed, "a snapshot pointer names an incomplete version"
        versions = {d.name for d in coll.snap_dir.iterdir() if d.is_dir()}
        assert versions == pointed, f"unreferenced snapshot versions: {versions - pointed}"
        dynamic_files = {p.relative_to(lab.root).as_posix() for p in lab.root.glob("dynamic_*/*.jpg")}
        dynamic_rows = {r for r in catalog.values() if r.startswith("dynamic_")}
        assert dynamic_files == dynamic_rows, "dynamic files and catalog rows differ"
        assert all((lab.root / r).is_file() for r in catalog.values()), "a catalog row without its file"
        named = {m.name: m.count for m in coll.list_snapshots()}
        return {"ids": frozenset(catalog), "files": frozenset(p.relative_to(lab.root).as_posix()
                                                             for p in lab.root.rglob("*") if p.is_file()),
                "snapshots": named}
    finally:
        coll._catalog.close()


@pytest.fixture(scope="module")
def reference(lab: Lab) -> dict[str, dict[str, object]]:
    """The state each command reaches when nothing interrupts it."""
    out = {}
    for name, sc in SCENARIOS.items():
        lab.restore(sc.state)
        if sc.prepare:
            sc.prepare(lab)
        rc, text = _run(sc.argv(lab))
        assert rc == 0, f"{name}: {text}"
        out[name] = state_of(lab)
    return out


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def test_every_fault_point_is_registered_used_and_tried() -> None:
    called = set()
    for path in (REPO / "imrs").rglob("*.py"):
        called |= set(re.findall(r"fault_point\(\"([a-z_.]+)\"\)", path.read_text(encoding="utf-8")))
    assert called == set(POINTS), f"unregistered: {called - set(POINTS)}, never called: {set(POINTS) - called}"
    assert {scenario_for(p) for p in POINTS} <= set(SCENARIOS)
    assert len(POINTS) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(POINTS))
def test_kill_at_fault_point_then_recover(point: str, lab: Lab, reference: dict[str, dict[str, object]]) -> None:
    name = scenario_for(point)
    sc = SCENARIOS[name]
    lab.restore(sc.state)
    if sc.prepare:
        sc.prepare(lab)
    base_before = {p for p in lab.root.rglob("*") if p.is_file() and not p.relative_to(lab.root).parts[0]
                   .startswith("dynamic_")}
    env = {**os.environ, "IMRS_FAULT": point, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-m", "imrs.cli", *sc.argv(lab)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, (f"{point}: the child was not killed there (rc {child.returncode})"
                                                 f"\n{child.stdout[-1500:]}{child.stderr[-3000:]}")
    assert f"fault point {point} reached" in child.stderr

    # The user's files are never harmed, then the collection opens consistent.
    assert all(p.is_file() for p in base_before)
    state_of(lab)

    rc, text = _run(sc.argv(lab))  # re-run: completes and reaches the uninterrupted state
    assert rc == 0 or (sc.done_error and rc == 2 and sc.done_error in text), f"{point}: {text}"
    second = state_of(lab)
    assert second == reference[name], f"{point}: re-run did not converge to the uninterrupted state"

    rc, text = _run(sc.argv(lab))  # and a third run changes nothing
    assert rc == 0 or (sc.done_error and rc == 2 and sc.done_error in text), f"{point}: {text}"
    assert state_of(lab) == second
