"""Download throughput with 8 workers vs 1 against a loopback server that waits 100 ms per response.

    python scripts/bench_download.py [--n 32] [--latency 0.1] [--runs 3]

Needs ../shared/photos (the images the loopback server serves). Images/s counts images kept
(downloaded, decoded, resized, written); median of ``--runs`` runs each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imrs.web.download import DownloadPolicy, fetch_many  # noqa: E402
from tests.webserver import PHOTOS_DIR, LoopbackServer  # noqa: E402


def run(server: LoopbackServer, policy: DownloadPolicy, n: int, out: Path) -> float:
    urls = server.photo_urls()
    jobs = [(f"{urls[i % len(urls)]}?i={i}", out / f"{i:04d}.jpg") for i in range(n)]
    t0 = time.perf_counter()
    results = fetch_many(jobs, policy)
    elapsed = time.perf_counter() - t0
    kept = sum(r.ok for r in results)
    if kept != n:
        raise SystemExit(f"only {kept}/{n} downloads succeeded: {[r.reason for r in results if not r.ok][:3]}")
    return kept / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="images per run")
    ap.add_argument("--latency", type=float, default=0.1, help="seconds the server waits per response")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    if not any(PHOTOS_DIR.glob("*.jpg")):
        raise SystemExit(f"{PHOTOS_DIR} is absent: it holds the photos the loopback server serves")
    # One loopback host, so the per-host cap is lifted to the worker count: this measures the pool.
    base = DownloadPolicy(allow_loopback=True, per_host=args.workers)
    rates: dict[int, float] = {}
    with LoopbackServer(PHOTOS_DIR, latency=args.latency, max_lifetime=600).start() as server:
        for workers in (args.workers, 1):
            samples = []
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory() as tmp:
                    samples.append(run(server, replace(base, workers=workers), args.n, Path(tmp)))
            rates[workers] = statistics.median(samples)
            print(f"workers={workers}: {rates[workers]:.1f} images/s kept "
                  f"(median of {args.runs} x {args.n} images, {args.latency * 1e3:.0f} ms latency)")
    print(f"speed-up {args.workers} vs 1 workers: {rates[args.workers] / rates[1]:.1f}x")


if __name__ == "__main__":
    main()
