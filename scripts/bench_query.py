#!/usr/bin/env python
"""Query latency, start-up time and incremental-update cost, measured (run by hand, not in CI).

Needs an indexed collection (default: Caltech-101 with efficientnet_lite0):
    imrs index ../shared/datasets/caltech101 --backbone efficientnet_lite0 --indexer hnsw
    python scripts/bench_query.py --root ../shared/datasets/caltech101
Prints medians; ratios are against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imrs.collection import Collection
from imrs.errors import IMRSError
from imrs.indexes import INDEX_KINDS, make_index
from imrs.store import EmbeddingSet
from imrs.textsearch import text_query_vector


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def bench_updates(emb: EmbeddingSet, n_new: int = 100, cycles: int = 5) -> None:
    """Full build against incremental add/remove of ``n_new`` vectors on the same index. The first
    add after a build pays one-off costs (FAISS grows its arrays, Annoy starts its delta); the
    steady-state figure is the median over the following add/remove cycles."""
    print(f"\n## Index build vs incremental update ({len(emb)} vectors, +{n_new} / -{n_new})")
    print(f"{'index':10s} {'full build s':>12s} {'first add ms':>12s} {'add ms':>8s} {'remove ms':>9s} "
          f"{'add/full':>9s} {'n/N':>7s}")
    base = emb.select(np.arange(len(emb) - n_new))
    new = emb.select(np.arange(len(emb) - n_new, len(emb)))
    for kind in INDEX_KINDS:
        t = time.perf_counter()
        full = make_index(kind, emb.dim, n_hint=len(emb))
        full.add(emb.ids, emb.vectors)
        full.search(emb.vectors[:1], 1)  # some kinds finish building lazily
        build = time.perf_counter() - t
        idx = make_index(kind, emb.dim, n_hint=len(base))
        idx.add(base.ids, base.vectors)
        idx.search(base.vectors[:1], 1)
        adds, removes = [], []
        for _ in range(cycles + 1):
            t = time.perf_counter()
            idx.add(new.ids, new.vectors)
            idx.search(new.vectors[:1], 1)
            adds.append(time.perf_counter() - t)
            t = time.perf_counter()
            idx.remove(new.ids)
            idx.search(new.vectors[:1], 1)
            removes.append(time.perf_counter() - t)
        a, r = statistics.median(adds[1:]), statistics.median(removes[1:])
        print(f"{kind:10s} {build:12.3f} {adds[0] * 1e3:12.1f} {a * 1e3:8.1f} {r * 1e3:9.1f} {a / build:9.4f} "
              f"{n_new / len(emb):7.4f}")


def timed_query(coll: Collection, embed: Callable[[], np.ndarray]) -> tuple[float, float, float]:
    """(encode, index search, catalog lookup) seconds for one query, measured separately."""
    t0 = time.perf_counter()
    q = embed()
    t1 = time.perf_counter()
    _, ids = coll.index.search(q[None, :], 10)
    t2 = time.perf_counter()
    coll.catalog.get_many([int(x) for x in ids[0] if x != -1])
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def bench_queries(coll: Collection, n: int = 40) -> None:
    print(f"\n## End-to-end query latency ({len(coll.index)} vectors, {coll.backbone}/{coll.indexer})")
    recs = list(coll.catalog.iter_records(source="base"))
    rng = np.random.default_rng(0)
    picks = [recs[i] for i in rng.choice(len(recs), size=min(n, len(recs)), replace=False)]
    coll.search_image(coll.abspath(picks[0].relpath), 10)  # warm-up: model, caches
    labels = coll.catalog.labels()
    try:
        text_query_vector(coll, "a photo of a dog")  # warm-up: the text model loads once per process
    except IMRSError:
        pass
    rows: dict[str, list[tuple[float, float, float]]] = {"image": [], "text": []}
    for i, r in enumerate(picks):
        rows["image"].append(timed_query(coll, lambda r=r: coll.embed_query_image(coll.abspath(r.relpath))))
        try:
            prompt = f"a photo of a {labels[i % len(labels)]}"
            rows["text"].append(timed_query(coll, lambda p=prompt: text_query_vector(coll, p)))
        except IMRSError as exc:  # no text path for this backbone: report, keep measuring images
            if not rows["text"]:
                print(f"(text queries unavailable: {exc})")
    print(f"{'query':6s} {'total p50 ms':>12s} {'total p95 ms':>12s} {'encode p50':>10s} {'search p50':>10s} "
          f"{'catalog p50':>11s} {'search/encode':>13s}")
    for key, parts in rows.items():
        if not parts:
            continue
        e, s, c = (list(x) for x in zip(*parts, strict=True))
        tot = [sum(p) for p in parts]
        print(f"{key:6s} {pct(tot, 50) * 1e3:12.1f} {pct(tot, 95) * 1e3:12.1f} {pct(e, 50) * 1e3:10.1f} "
              f"{pct(s, 50) * 1e3:10.2f} {pct(c, 50) * 1e3:11.2f} {pct(s, 50) / pct(e, 50):13.4f}")


START_CODE = """
import sys, time
t0 = time.perf_counter()
from imrs.collection import Collection
coll = Collection(sys.argv[1], sys.argv[2], sys.argv[3])
n = len(coll.index)
t1 = time.perf_counter()
rec = next(coll.catalog.iter_records())
coll.search_image(coll.abspath(rec.relpath), 10)
t2 = time.perf_counter()
print(f"{n} {t1 - t0:.3f} {t2 - t0:.3f}")
"""


def bench_start(root: str, backbone: str, indexer: str, repeats: int = 3) -> None:
    loads, firsts = [], []
    n = 0
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", START_CODE, root, backbone, indexer], capture_output=True,
                             text=True, check=True, env=os.environ.copy()).stdout.split()
        n, load, first = int(out[0]), float(out[1]), float(out[2])
        loads.append(load)
        firsts.append(first)
    print(f"{root}: {n} vectors, restart -> index loaded {statistics.median(loads):.2f}s, "
          f"first result {statistics.median(firsts):.2f}s (median of {repeats} fresh processes)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default="../shared/datasets/caltech101")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--indexer", default="hnsw")
    ap.add_argument("--demo-root", default="demo/caltech101-mini")
    ap.add_argument("--queries", type=int, default=40)
    args = ap.parse_args()
    coll = Collection(args.root, args.backbone, args.indexer)
    emb = coll.load_base_embeddings()
    if not len(emb):
        sys.exit(f"no cached embeddings for {args.root}: run `imrs index {args.root} --backbone {args.backbone}`")
    bench_updates(emb)
    bench_queries(coll, args.queries)
    print("\n## Time to first result after a restart")
    bench_start(args.root, args.backbone, args.indexer)
    if Path(args.demo_root).is_dir():
        Collection(args.demo_root, args.backbone, args.indexer).sync()
        bench_start(args.demo_root, args.backbone, args.indexer)


if __name__ == "__main__":
    main()
