"""Peak memory of ingestion, and a hostile-folder check of ``imrs index`` (issue 11).

1. ``imrs expand`` against a loopback server serving N large 16-bit PNGs (default 8 x 49 Mpx,
   ~100 kB each on the wire): the peak RSS of the expanding process with ``--workers 8`` and
   ``--workers 1``, each in a fresh child process (``os.wait4`` reports that child's own peak).
   Target: 8 workers <= 1.5 x the 1-worker peak.
2. ``imrs index`` on a generated folder holding every hostile case of tests/hostile.py: every
   good image must be indexed, and every bad entry listed with its reason.

    PYTHONPATH=. python scripts/bench_ingest_memory.py [--images 8] [--side 7000] [--repeats 1]

Both parts run the real CLI (``python -m imrs.cli``) with the offline EfficientNet-Lite0 backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from imrs.ids import display_path  # noqa: E402
from tests.hostile import make_hostile_folder  # noqa: E402
from tests.webserver import LoopbackServer, big16_png  # noqa: E402

BACKBONE = "efficientnet_lite0"


# The child reports its own VmHWM (the high-water mark of its address space) at exit. ru_maxrss
# from wait4() would be max(child, this process at fork time): Linux carries the pre-exec peak over.
_CHILD = r"""
import atexit, os, runpy, sys
def report():
    hwm = next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    with open(os.environ["IMRS_BENCH_HWM_FILE"], "w") as fh:
        fh.write(hwm)
atexit.register(report)
sys.argv = ["imrs", *sys.argv[1:]]
runpy.run_module("imrs.cli", run_name="__main__", alter_sys=True)
"""


def run_child(args: list[str], env: dict[str, str]) -> tuple[int, float, float, str]:
    """(exit code, peak RSS in MB, seconds, output) of ``imrs ARGS`` in a fresh child process."""
    with tempfile.NamedTemporaryFile(suffix=".hwm") as hwm:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=REPO,
                              env={**env, "IMRS_BENCH_HWM_FILE": hwm.name},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - t0
        peak_kb = float(Path(hwm.name).read_text() or 0)
    return proc.returncode, peak_kb / 1024.0, seconds, proc.stdout.decode("utf-8", "replace")


def child_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMRS_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("IMRS_DECODE_MEMORY_MB", None)
    return env


def base_collection(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        Image.new("RGB", (160, 120), colour).save(folder / f"base_{i}.jpg")
    return folder


def expand_peak(server: LoopbackServer, tmp: Path, workers: int, n_images: int, side: int) -> dict[str, float]:
    """Index a tiny base collection, then measure only the ``imrs expand`` child."""
    run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix=f"w{workers}-"))
    root = base_collection(run_dir / "collection")
    env = child_env(run_dir / "home")
    rc, _, _, out = run_child(["index", str(root), "--backbone", BACKBONE, "--indexer", "flat_ip", "-q"], env)
    if rc != 0:
        raise SystemExit(f"index failed:\n{out}")
    urls = run_dir / "urls.txt"
    urls.write_text("".join(server.url(f"/big16/{i}.png?side={side}") + "\n" for i in range(n_images)))
    rc, peak, secs, out = run_child(["expand", "big16", "--urls-file", str(urls), "--allow-loopback", "-n",
                                     str(n_images), "--workers", str(workers), "--phash", "0", "-q",
                                     "--root", str(root)], env)
    if rc != 0:
        raise SystemExit(f"expand failed:\n{out}")
    added = int(out.split(" added", 1)[0].rsplit(" ", 1)[-1]) if " added" in out else -1
    return {"peak_mb": peak, "seconds": secs, "added": added}


def memory_part(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    with LoopbackServer(max_lifetime=3600) as server:
        t0 = time.perf_counter()
        sizes = [len(big16_png(i, args.side)) for i in range(args.images)]  # generated before timing
        print(f"{args.images} x {args.side}x{args.side} 16-bit PNGs ({args.side ** 2 / 1e6:.0f} Mpx, "
              f"{statistics.mean(sizes) / 1e3:.0f} kB each) made in {time.perf_counter() - t0:.1f}s")
        small = expand_peak(server, tmp, 1, args.images, 64)
        print(f"  reference: the same expansion with 64x64 PNGs, 1 worker: peak RSS {small['peak_mb']:.0f} MB "
              "(interpreter, torch, model)")
        runs: dict[int, list[dict[str, float]]] = {1: [], 8: []}
        for _ in range(args.repeats):
            for workers in (1, 8):
                r = expand_peak(server, tmp, workers, args.images, args.side)
                runs[workers].append(r)
                print(f"  workers={workers}: peak RSS {r['peak_mb']:.0f} MB, {r['seconds']:.1f}s, "
                      f"{r['added']} added")
    one = statistics.median(r["peak_mb"] for r in runs[1])
    eight = statistics.median(r["peak_mb"] for r in runs[8])
    ratio = eight / one
    print(f"imrs expand peak RSS (median of {args.repeats}): 1 worker {one:.0f} MB, 8 workers {eight:.0f} MB, "
          f"ratio {ratio:.2f} (target <= 1.5): {'PASS' if ratio <= 1.5 else 'FAIL'}")
    return {"one_worker_mb": one, "eight_workers_mb": eight, "ratio": ratio, "small_images_mb": small["peak_mb"],
            "runs": runs}


def hostile_part(tmp: Path) -> dict[str, object]:
    base = tmp / "hostile"
    cases = make_hostile_folder(base / "collection", base / "outside")
    env = child_env(base / "home")
    rc, peak, secs, out = run_child(["index", str(base / "collection"), "--backbone", BACKBONE,
                                     "--indexer", "flat_ip", "-q"], env)
    print(out.rstrip())
    if rc != 0:
        raise SystemExit(f"imrs index failed (exit {rc})")
    sys.path.insert(0, str(REPO))
    from imrs.collection import Collection

    coll = Collection(base / "collection", BACKBONE, "flat_ip", home=base / "home")
    indexed = set(coll.catalog.file_stats())
    problems = []
    for c in cases:
        shown = display_path(c.relpath)
        if c.outcome == "indexed" and c.relpath not in indexed:
            problems.append(f"good image not indexed: {shown}")
        elif c.outcome in ("skipped", "failed"):
            lines = [ln for ln in out.splitlines() if ln.startswith(f"  skipped {shown}: ")]
            if len(lines) != 1 or c.reason not in lines[0]:
                problems.append(f"bad entry not listed once with '{c.reason}': {shown} -> {lines}")
            if c.relpath in indexed:
                problems.append(f"bad entry indexed: {shown}")
        elif c.outcome == "ignored" and c.relpath in indexed:
            problems.append(f"ignored entry indexed: {shown}")
    counts = {k: sum(c.outcome == k for c in cases) for k in ("indexed", "skipped", "failed", "ignored")}
    print(f"hostile folder: {len(cases)} cases {counts}; index took {secs:.1f}s, peak RSS {peak:.0f} MB; "
          f"{'PASS' if not problems else 'FAIL'}")
    for p in problems:
        print("  " + p)
    return {"cases": counts, "problems": problems, "seconds": secs, "peak_mb": peak}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--side", type=int, default=7000, help="pixels per side of each PNG (7000 = 49 Mpx)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-hostile", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="imrs-ingest-") as td:
        if not args.skip_memory:
            out["memory"] = memory_part(args, Path(td))
        if not args.skip_hostile:
            out["hostile"] = hostile_part(Path(td))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    ok = (args.skip_memory or out["memory"]["ratio"] <= 1.5) and (  # type: ignore[index]
        args.skip_hostile or not out["hostile"]["problems"])  # type: ignore[index]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
