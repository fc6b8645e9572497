"""Bytes written per change to a large embedding cache: shard store versus the single NPZ file.

Builds a shard store of ``--n`` vectors x ``--dim`` floats (in 100k-row deltas, so the build never
holds the whole cache in memory), then applies typical changes (an expansion adding 20 web
images, a re-index adding 100 and re-embedding 100 changed files, a prune of 20, a re-index
removing 100 vanished files) and measures, per change, the bytes the process wrote (``wchar``
of ``/proc/self/io``: every ``write`` call, manifest and temp files included) and the wall time.
The baseline, in the same run, is what a change cost before shard stores: the whole single-file
NPZ rewritten (measured on ``--baseline-n`` rows and scaled linearly in rows, since that write is
one ``np.savez`` of every row).

Writes docs/storage.md with the table, the host's CPU flags and load. Usage:
``python scripts/bench_store.py --n 1000000 --dim 1280`` (about 5.2 GB of disk in a temp folder).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imrs.shards import ShardStore  # noqa: E402
from imrs.store import EmbeddingSet  # noqa: E402

BB = "efficientnet_lite0"
CHUNK = 100_000


def wchar() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def cpu_line() -> str:
    model, flags = platform.processor() or "?", set()
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name") and model in ("?", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "sha_ni") if f in flags]
    load = os.getloadavg()
    return f"{model}; {os.cpu_count()} CPUs; flags: {' '.join(shown) or 'none of avx2/avx512'}; " \
           f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def rows(ids: np.ndarray, dim: int, rng: np.random.Generator, prefix: str = "c") -> EmbeddingSet:
    vecs = rng.standard_normal((len(ids), dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return EmbeddingSet(BB, ids, [f"{prefix}/{i:08d}.jpg" for i in ids.tolist()], vecs)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--baseline-n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5, help="times each change is applied (median reported)")
    ap.add_argument("--compact-max-gb", type=float, default=2.0,
                    help="measure `imrs compact` only for caches up to this size (it loads the live rows)")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder, removed at the end)")
    ap.add_argument("--doc", default=str(Path(__file__).resolve().parents[1] / "docs" / "storage.md"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    top = Path(args.dir or tempfile.mkdtemp(prefix="imrs-bench-store-"))
    top.mkdir(parents=True, exist_ok=True)
    try:
        # the baseline: one single-file cache rewritten whole (what every change did before stores)
        base_set = rows(np.arange(args.baseline_n, dtype=np.int64), args.dim, rng)
        w0, t0 = wchar(), time.perf_counter()
        base_set.save(top / "single.npz")
        single_w, single_t = wchar() - w0, time.perf_counter() - t0
        single_file = (top / "single.npz").stat().st_size
        per_row = single_w / args.baseline_n
        del base_set

        store = ShardStore(top / "emb.store")
        t0 = time.perf_counter()
        for start in range(0, args.n, CHUNK):
            ids = np.arange(start, min(start + CHUNK, args.n), dtype=np.int64)
            store.update(rows(ids, args.dim, rng), backbone=BB, dim=args.dim, compact=False)
        build_s = time.perf_counter() - t0
        cache_bytes = dir_bytes(store.path)
        web = ShardStore(top / "dyn.store")
        web.update(rows(np.arange(10**9, 10**9 + 200, dtype=np.int64), args.dim, rng, "dynamic_x"),
                   backbone=BB, dim=args.dim)

        next_id = [args.n]

        def expand() -> None:  # an expansion: 20 web images into a term's store
            ids = np.arange(10**9 + 10**6 + next_id[0], 10**9 + 10**6 + next_id[0] + 20, dtype=np.int64)
            next_id[0] += 20
            web.update(rows(ids, args.dim, rng, "dynamic_x"), backbone=BB, dim=args.dim)

        def reindex() -> None:  # 100 new files, 100 changed ones re-embedded
            new = np.arange(next_id[0], next_id[0] + 100, dtype=np.int64)
            next_id[0] += 100
            changed = rng.choice(args.n, 100, replace=False).astype(np.int64)
            store.update(rows(np.concatenate([new, changed]), args.dim, rng), backbone=BB, dim=args.dim)

        def prune() -> None:  # 20 web images removed
            live = web.load_ids()
            web.update(None, live[:20], backbone=BB, dim=args.dim)

        def vanish() -> None:  # 100 files gone from the folder
            gone = rng.choice(args.n, 100, replace=False).astype(np.int64)
            store.update(None, gone, backbone=BB, dim=args.dim)

        results = []
        for name, fn, target in (("expand: +20 web images", expand, web), ("index: +100 new, 100 re-embedded", reindex,
                                                                           store),
                                 ("prune: -20 web images", prune, web), ("index: -100 vanished files", vanish, store)):
            ws, ts = [], []
            for _ in range(args.repeats):
                w0, t0 = wchar(), time.perf_counter()
                fn()
                ws.append(wchar() - w0)
                ts.append(time.perf_counter() - t0)
            old_bytes = per_row * (args.n if target is store else 200)  # the whole file, rewritten
            results.append((name, statistics.median(ws), statistics.median(ts), old_bytes))
        total_cache = dir_bytes(store.path) + dir_bytes(web.path)
        compact_w = compact_t = None
        if args.n * args.dim * 4 <= args.compact_max_gb * 1e9:  # compaction holds the live rows in memory
            t0 = time.perf_counter()
            w0 = wchar()
            store.compact(backbone=BB, dim=args.dim)
            compact_w, compact_t = wchar() - w0, time.perf_counter() - t0
    finally:
        if args.dir is None:
            shutil.rmtree(top, ignore_errors=True)

    host = cpu_line()
    lines = [
        "# Embedding storage: bytes written per change",
        "",
        "Written by `scripts/bench_store.py` (do not edit by hand). A collection's embedding caches are",
        "append-only shard stores (`imrs/shards.py`): a change writes one delta file holding its rows and",
        "deleted ids, and a new manifest. Before, every change rewrote the whole single-file NPZ cache.",
        "Compaction (`imrs compact`, or automatic once dead rows pass 25% of a store, and a merge of small",
        "tail deltas once more than 24 pile up) is the only whole rewrite.",
        "",
        f"Command: `python scripts/bench_store.py --n {args.n} --dim {args.dim} --baseline-n {args.baseline_n} "
        f"--repeats {args.repeats}`",
        f"Host: {host}; Python {platform.python_version()}, NumPy {np.__version__}.",
        "",
        f"Base cache: {args.n:,} vectors x {args.dim}-d float32 = {cache_bytes / 1e9:.2f} GB in "
        f"{args.n // CHUNK + (args.n % CHUNK > 0)} deltas (built in {build_s:.0f} s). "
        f"Baseline measured in the same run: rewriting a {args.baseline_n:,}-row single-file cache wrote "
        f"{single_w / 1e6:.1f} MB ({single_file / 1e6:.1f} MB file) in {single_t:.2f} s, i.e. "
        f"{per_row:.0f} bytes per row; at {args.n:,} rows every change wrote {per_row * args.n / 1e9:.2f} GB.",
        "",
        "| change | bytes written (median of "
        f"{args.repeats}) | % of the cache | before (single file rewritten) | ratio | time (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, w, t, old in results:
        lines.append(f"| {name} | {w / 1e3:,.1f} kB | {100 * w / total_cache:.4f}% | {old / 1e6:,.1f} MB | "
                     f"{old / max(w, 1):,.0f}x less | {t:.2f} s |")
    lines += ["", (f"`imrs compact` of the base store afterwards: {compact_w / 1e9:.2f} GB written in "
                   f"{compact_t:.0f} s (the live rows once)." if compact_w is not None else
                   "`imrs compact` not measured at this size: it holds the live rows in memory "
                   f"(--compact-max-gb {args.compact_max_gb})."),
              "",
              "Target: one change to a 1M-vector collection writes <= 1% of the cache's bytes. "
              f"Largest change above: {100 * max(w for _, w, _, _ in results) / total_cache:.4f}%.",
              "", "Web-image stores are small per term; the 'before' column of their changes is the term's "
              "200-row file rewritten.", ""]
    text = "\n".join(lines)
    print(text)
    Path(args.doc).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
