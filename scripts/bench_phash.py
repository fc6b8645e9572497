"""Median near-duplicate lookup time of HashIndex vs a pure-Python loop, at 100k and 1M hashes.

    python scripts/bench_phash.py [--sizes 100000 1000000] [--queries 50]

Both run in this process on the same random hashes; the ratio is what to look at.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imrs.dedupe import HashIndex  # noqa: E402


def python_nearest(hashes: list[int], q: int) -> tuple[int, int]:
    best_i, best_d = -1, 65
    for i, h in enumerate(hashes):
        d = (h ^ q).bit_count()
        if d < best_d:
            best_i, best_d = i, d
    return best_i, best_d


def median_seconds(fn, queries: list[int]) -> float:  # type: ignore[no-untyped-def]
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--python-queries", type=int, default=5, help="the loop baseline is slow; fewer queries")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, popcount: {'np.bitwise_count' if hasattr(np, 'bitwise_count') else 'byte LUT'}")
    print(f"{'hashes':>10} {'HashIndex ms':>13} {'python ms':>10} {'speed-up':>9}")
    for n in args.sizes:
        hashes = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
        t0 = time.perf_counter()
        index = HashIndex(hashes, np.arange(n, dtype=np.int64))
        build = time.perf_counter() - t0
        queries = [int(h) for h in rng.integers(-(2**63), 2**63 - 1, size=args.queries, dtype=np.int64)]
        unsigned = (hashes.view(np.uint64)).tolist()
        t_index = median_seconds(index.nearest, queries)
        py_queries = [q & ((1 << 64) - 1) for q in queries[: args.python_queries]]
        t_py = median_seconds(lambda q, table=unsigned: python_nearest(table, q), py_queries)
        for q, uq in zip(queries, py_queries, strict=False):  # same answer, or the comparison means nothing
            assert index.nearest(q)[1] == python_nearest(unsigned, uq)[1]
        print(f"{n:>10} {t_index * 1e3:>13.3f} {t_py * 1e3:>10.1f} {t_py / t_index:>8.0f}x   (build {build:.2f} s)")


if __name__ == "__main__":
    main()
