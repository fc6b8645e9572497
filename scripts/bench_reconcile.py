"""Cost of the crash-consistency check on open, on a Caltech-101-sized collection state.

    python scripts/bench_reconcile.py [--n 9144] [--dynamic 100] [--indexer hnsw] [--runs 7]

Builds a state folder like ``imrs index`` leaves for Caltech-101 (9,143 base images, 1280-d
EfficientNet-Lite0 caches, a live index) plus dynamic images in 10 terms, with random unit vectors:
what the check costs does not depend on what the vectors mean, and embedding 9k images would only
cost time. Prints medians of ``--runs``:

* the cheap check alone (``reconcile.check``: what every open pays when nothing is wrong), against
  the open it sits in (a new ``Collection`` loading its live index; the baseline of the ratio);
* the O(n) comparison when the check disagrees but nothing is wrong (e.g. another backbone wrote);
* the repair after a re-index killed between catalog commit and index save (+100 / -50 images).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imrs import reconcile  # noqa: E402
from imrs.catalog import ImageRecord  # noqa: E402
from imrs.collection import Collection  # noqa: E402
from imrs.ids import stable_id  # noqa: E402
from imrs.store import EmbeddingSet  # noqa: E402

BB = "efficientnet_lite0"
DIM = 1280


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build(root: Path, home: Path, n: int, n_dyn: int, indexer: str) -> None:
    rng = np.random.default_rng(0)
    rels = [f"class_{i % 101:03d}/image_{i:05d}.jpg" for i in range(n)]
    for c in {r.split("/")[0] for r in rels}:
        (root / c).mkdir(parents=True, exist_ok=True)
    coll = Collection(root, BB, indexer, home=home)
    EmbeddingSet(BB, [stable_id(r) for r in rels], rels, unit(rng, n)).save(coll.base_npz())
    recs = [ImageRecord.for_path(r, source="base", mtime=1.0, size=1) for r in rels]
    for t in range(10):
        slug = f"term-{t}"
        folder = root / f"dynamic_{slug}"
        folder.mkdir(exist_ok=True)
        dyn = [f"dynamic_{slug}/{hashlib.sha1(f'{t}-{i}'.encode()).hexdigest()[:20]}.jpg"
               for i in range(n_dyn // 10)]
        for r in dyn:
            (root / r).write_bytes(b"\xff\xd8\xff")
        EmbeddingSet(BB, [stable_id(r) for r in dyn], dyn, unit(rng, len(dyn))).save(coll.dynamic_npz(slug))
        recs += [ImageRecord.for_path(r, source="dynamic", slug=slug, term=slug) for r in dyn]
    coll._catalog.upsert(recs)
    coll.catalog  # noqa: B018 - the first open finds no commit record: builds the index, commits


def median_ms(fn: Callable[[], object], runs: int, setup: Callable[[], object] | None = None) -> float:
    samples = []
    for _ in range(runs):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=9143, help="base images (Caltech-101 has 9,143)")
    ap.add_argument("--dynamic", type=int, default=100, help="dynamic images, over 10 terms")
    ap.add_argument("--indexer", default="hnsw")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "coll", Path(tmp) / "home"
        t0 = time.perf_counter()
        build(root, home, args.n, args.dynamic, args.indexer)
        print(f"built {args.n} base + {args.dynamic} dynamic images, {args.indexer}, in "
              f"{time.perf_counter() - t0:.1f}s")

        def open_plain() -> None:  # the baseline: what an open costs anyway (catalog + live index)
            c = Collection(root, BB, args.indexer, home=home)
            c._checked = True
            len(c.index)

        def open_checked() -> None:
            c = Collection(root, BB, args.indexer, home=home)
            len(c.index)

        coll = Collection(root, BB, args.indexer, home=home)
        assert reconcile.check(coll).clean
        check = median_ms(lambda: reconcile.check(coll), args.runs * 3)
        plain = median_ms(open_plain, args.runs)
        checked = median_ms(open_checked, args.runs)
        print(f"cheap check (nothing wrong):         {check:8.2f} ms  "
              f"= {check / plain:.1%} of an open without it ({plain:.1f} ms); open with it {checked:.1f} ms")

        with coll.writer.hold():
            full = median_ms(lambda: reconcile.repair(coll), args.runs,
                             setup=lambda: reconcile.begin(coll, "bench"))
        print(f"O(n) comparison, nothing to repair:  {full:8.2f} ms  = {full / plain:.1f}x an open")

        rng = np.random.default_rng(1)

        def crash_after_catalog() -> None:
            """State of a re-index killed at sync.after_catalog: +100 new, -50 gone, index not saved."""
            c = Collection(root, BB, args.indexer, home=home)
            c._checked = True
            base = EmbeddingSet.load(c.base_npz())
            gone = base.ids[rng.choice(len(base), 50, replace=False)]
            rels = [f"class_new/image_{rng.integers(1 << 40)}.jpg" for _ in range(100)]
            new = EmbeddingSet(BB, [stable_id(r) for r in rels], rels, unit(rng, 100))
            reconcile.begin(c, "sync")
            c._catalog.delete(gone.tolist(), allow_base=True)
            base.without(gone).concat(new).save(c.base_npz())
            c._catalog.upsert([ImageRecord.for_path(r, source="base", mtime=1.0, size=1) for r in rels])

        reports = []

        def repair_crash() -> None:
            c = Collection(root, BB, args.indexer, home=home)
            with c.writer.hold():
                reports.append(reconcile.repair(c))

        fixed = median_ms(repair_crash, args.runs, setup=crash_after_catalog)
        print(f"repair after a killed re-index:      {fixed:8.2f} ms  = {fixed / plain:.1f}x an open  "
              f"({reports[-1].summary()})")
        c = Collection(root, BB, args.indexer, home=home)
        cat, idx = c.catalog.ids_set(), set(c.index.ids().tolist())
        assert cat == idx, (len(cat), len(idx))
        print(f"after {args.runs} crash/repair rounds: catalog {len(cat)} == index {len(idx)}")


if __name__ == "__main__":
    main()
