"""Load on ``imrs serve``: warm latency of one client, then N concurrent clients searching by text and
by uploaded image while one growth job runs. Bounded (a fixed request budget and duration) and
loopback only: the server, and the "web" the growth downloads from (tests/webserver.py), listen on
127.0.0.1.

Prints p50/p95 latency, QPS, errors and whether every answer came from a consistent index (k hits,
no duplicates, every hit a catalogued image, the index size either the one before the growth or
the one after it, never in between), and writes the figures with the host's CPU and load into
docs/api.md (between its bench_api markers).

    python scripts/bench_api.py                               # the demo collection, 32 clients, 60 s
    python scripts/bench_api.py --root ../shared/datasets/caltech101 --clients 32 --duration 60
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.webserver import PHOTOS_DIR, LoopbackServer  # noqa: E402

DOC = REPO / "docs" / "api.md"
START, END = "<!-- bench_api:start -->", "<!-- bench_api:end -->"
TEXTS = ["sunflower", "leopard", "airplane", "a wrist watch", "motorbike", "face", "piano", "camera", "dolphin",
         "butterfly", "lotus flower", "grand piano", "helicopter", "kangaroo", "ketch", "laptop"]


def cpu_facts() -> dict[str, str]:
    model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile"]
    return {"cpu": model, "cores": str(os.cpu_count()), "flags": " ".join(f for f in wanted if f in flags) or "none"}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def imrs(home: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMRS_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "imrs.cli", *args], cwd=REPO, env=env, check=True, **kw)


def mirror(root: Path, dest: Path) -> Path:
    """A folder of links to ``root``'s images: growth writes its dynamic_* folders here, not into the repo."""
    for src in sorted(root.rglob("*")):
        if src.is_file() and not src.name.startswith("."):
            dst = dest / src.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve())
    return dest


class Run:
    """What the clients saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lat: dict[str, list[float]] = {"text": [], "image": []}
        self.errors: list[str] = []
        self.inconsistent: list[str] = []
        self.sizes: set[int] = set()
        self.hit_ids: set[int] = set()
        self.sent = 0

    def take(self, budget: int) -> bool:
        with self.lock:
            if self.sent >= budget:
                return False
            self.sent += 1
            return True


def check(body: dict[str, Any], k: int, run: Run) -> None:
    hits = body["hits"]
    ids = [h["id"] for h in hits]
    problem = None
    if len(hits) != k:
        problem = f"{len(hits)} hits for k={k}"
    elif len(set(ids)) != len(ids):
        problem = "duplicate hits"
    elif [h["rank"] for h in hits] != list(range(1, k + 1)):
        problem = "ranks out of order"
    with run.lock:
        run.sizes.add(body["index"]["vectors"])
        run.hit_ids.update(ids)
        if problem:
            run.inconsistent.append(problem)


def client(base: str, images: list[bytes], k: int, run: Run, budget: int, until: float, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=60.0) as c:
        while time.monotonic() < until and run.take(budget):
            kind = "text" if rng.random() < 0.5 else "image"
            t0 = time.perf_counter()
            try:
                if kind == "text":
                    resp = c.post("/v1/search", json={"text": rng.choice(TEXTS), "k": k})
                else:
                    resp = c.post("/v1/search/image", files={"file": ("q.jpg", rng.choice(images), "image/jpeg")},
                                  data={"k": str(k)})
                dt = time.perf_counter() - t0
                if resp.status_code != 200:
                    with run.lock:
                        run.errors.append(f"{resp.status_code} {resp.text[:120]}")
                    continue
                check(resp.json(), k, run)
                with run.lock:
                    run.lat[kind].append(dt)
            except httpx.HTTPError as exc:
                with run.lock:
                    run.errors.append(f"{type(exc).__name__}: {exc}")


def warm_latency(base: str, images: list[bytes], k: int, n: int) -> dict[str, list[float]]:
    """One client, one request at a time: the latency a person sees on an idle server. ``new text``
    is each text's first search (its query plan is built), ``text`` the searches after that."""
    out: dict[str, list[float]] = {"new text": [], "text": [], "image": []}
    pipeline = {kind: [] for kind in out}
    with httpx.Client(base_url=base, timeout=60.0) as c:
        def timed(kind: str, **kw: Any) -> None:
            t0 = time.perf_counter()
            resp = c.post(**kw)
            out[kind].append(time.perf_counter() - t0)
            resp.raise_for_status()
            pipeline[kind].append(sum(v for key, v in resp.json()["timings"].items() if key != "total"))

        for text in TEXTS:
            timed("new text", url="/v1/search", json={"text": text, "k": k})
        for i in range(n):  # one kind at a time: a person does not send both at once
            timed("text", url="/v1/search", json={"text": TEXTS[i % len(TEXTS)], "k": k})
        for i in range(n):
            timed("image", url="/v1/search/image", files={"file": ("q.jpg", images[i % len(images)], "image/jpeg")},
                  data={"k": str(k)})
    for kind, values in pipeline.items():
        out[f"{kind} (server)"] = values
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / "demo" / "caltech101-mini"))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--indexer", default="hnsw")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (at most)")
    ap.add_argument("--requests", type=int, default=20000, help="request budget of the load phase (at most)")
    ap.add_argument("--warm", type=int, default=40, help="sequential requests of each kind, idle server")
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--term", default="sunflower", help="what the growth job grows")
    ap.add_argument("-n", type=int, default=5, help="images the growth job adds")
    ap.add_argument("--home", help="state folder (default: a temporary one, removed after)")
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/api.md as it is")
    args = ap.parse_args()
    if not PHOTOS_DIR.is_dir():
        sys.exit(f"{PHOTOS_DIR} is absent: the loopback web server serves those photos for the growth job")

    facts = cpu_facts()
    load_before = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="imrs-bench-api-"))
    home = Path(args.home) if args.home else tmp / "home"
    root = mirror(Path(args.root).resolve(), tmp / "collection")
    print(f"host: {facts['cpu']}, {facts['cores']} cores, flags: {facts['flags']}; load average {load_before}")
    t0 = time.perf_counter()
    imrs(home, "index", str(root), "--backbone", args.backbone, "--indexer", args.indexer, capture_output=True)
    print(f"indexed {root} in {time.perf_counter() - t0:.1f}s")
    files = sorted(root.rglob("*.jpg"))
    images = [p.read_bytes() for p in files[:: max(1, len(files) // 40)]]

    web = LoopbackServer(PHOTOS_DIR, max_lifetime=args.duration + 900).start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMRS_HOME": str(home), "IMRS_EXPAND_PROVIDER": "wikimedia",
           "IMRS_WIKIMEDIA_API": web.api_url, "IMRS_EXPAND_ALLOW_LOOPBACK": "1"}
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen([sys.executable, "-m", "imrs.cli", "serve", "--root", str(root), "--backbone",
                               args.backbone, "--indexer", args.indexer, "--port", str(port), "--rate", "0", "-q",
                               "--workers", str(args.workers)], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"server did not start: {(tmp / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        health = httpx.get(f"{base}/v1/health").json()
        before = health["vectors"]
        print(f"serving {health['images']} images on {base}")

        warm = warm_latency(base, images, args.k, args.warm)
        print(f"warm, one client: text p50 {1000 * statistics.median(warm['text']):.1f} ms, "
              f"image p50 {1000 * statistics.median(warm['image']):.1f} ms")

        run = Run()
        job = httpx.post(f"{base}/v1/jobs/grow", json={"term": args.term, "n": args.n}, timeout=30).json()
        load_start = load_average()
        until = time.monotonic() + args.duration
        t_load = time.perf_counter()
        threads = [threading.Thread(target=client, args=(base, images, args.k, run, args.requests, until, seed))
                   for seed in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t_load
        load_end = load_average()
        for _ in range(600):
            job = httpx.get(f"{base}/v1/jobs/{job['id']}").json()
            if job["status"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.5)
        kept = (job.get("result") or {}).get("kept", 0)
        after = before + kept
        partial = sorted(s for s in run.sizes if s not in (before, after))
        # the job's images must be visible right after its commit
        dyn = httpx.post(f"{base}/v1/search", json={"text": args.term, "k": max(1, min(kept, 100)),
                                                    "where": "source == 'dynamic'"}).json() if kept else {"hits": []}
        seen_new = {h["id"] for h in dyn["hits"]} == set((job.get("result") or {}).get("added_ids", []))
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=20)
        if server.poll() is None:
            server.kill()
        log.close()
        web.stop()
        if not args.home:
            shutil.rmtree(tmp, ignore_errors=True)

    n_ok = len(run.lat["text"]) + len(run.lat["image"])
    inconsistent = len(run.inconsistent) + len(partial)
    row = {k: (1000 * statistics.median(v) if v else float("nan"), 1000 * pct(v, 0.95)) for k, v in run.lat.items()}
    warm_row = {k: (1000 * statistics.median(v), 1000 * pct(v, 0.95)) for k, v in warm.items()}
    server = {k: warm_row[f"{k} (server)"][0] for k in ("new text", "text", "image")}
    lines = [
        f"Host: {facts['cpu']}, {facts['cores']} cores (shared with other work), flags: {facts['flags']}. "
        f"Load average before: {load_before}; during the load: {load_start} -> {load_end}.",
        f"Collection: {Path(args.root).name} ({before} images), {args.backbone} / {args.indexer}, k={args.k}, "
        f"{args.workers} server worker(s).",
        "",
        "| phase | query | requests | p50 ms | p95 ms | p50 ms in the server's pipeline |",
        "|---|---|---:|---:|---:|---:|",
        f"| warm, one client | text, first time | {len(warm['new text'])} | {warm_row['new text'][0]:.1f} | "
        f"{warm_row['new text'][1]:.1f} | {server['new text']:.1f} |",
        f"| warm, one client | text, seen before | {len(warm['text'])} | {warm_row['text'][0]:.1f} | "
        f"{warm_row['text'][1]:.1f} | {server['text']:.1f} |",
        f"| warm, one client | image (upload) | {len(warm['image'])} | {warm_row['image'][0]:.1f} | "
        f"{warm_row['image'][1]:.1f} | {server['image']:.1f} |",
        f"| {args.clients} clients during growth | text (a fixed list of {len(TEXTS)}) | {len(run.lat['text'])} | "
        f"{row['text'][0]:.1f} | {row['text'][1]:.1f} | |",
        f"| {args.clients} clients during growth | image (upload) | {len(run.lat['image'])} | {row['image'][0]:.1f} | "
        f"{row['image'][1]:.1f} | |",
        "",
        f"Load phase: {n_ok} answers in {elapsed:.1f}s = {n_ok / elapsed:.1f} QPS, {len(run.errors)} errors, "
        f"{inconsistent} inconsistent answers; growth job: {job['status']}, {kept} image(s) added while the "
        f"clients searched; index sizes answered from: {sorted(run.sizes)}; new images found right after the "
        f"commit: {'yes' if seen_new else 'no'}.",
        f"Targets (warm, one client): text p50 <= 30 ms: {'met' if warm_row['text'][0] <= 30 else 'NOT met'} "
        f"({'met' if warm_row['new text'][0] <= 30 else 'not met'} for first-time texts); "
        f"image p50 <= 60 ms: {'met' if warm_row['image'][0] <= 60 else 'NOT met'}.",
        "",
        f"Command: `python scripts/bench_api.py --root {shown_root(args.root)} --clients {args.clients} "
        f"--duration {args.duration:g} --workers {args.workers}`",
    ]
    text = "\n".join(lines)
    print(text)
    if run.errors:
        print("first errors:", *run.errors[:5], sep="\n  ")
    if run.inconsistent:
        print("first inconsistencies:", *run.inconsistent[:5], sep="\n  ")
    if not args.no_doc:
        write_doc(Path(args.root).name, text)
    return 0 if not run.errors and not inconsistent else 1


def shown_root(root: str) -> str:
    path = Path(root).resolve()
    for anchor, shown in ((REPO, ""), (REPO.parent, "../")):
        with contextlib.suppress(ValueError):
            return shown + path.relative_to(anchor).as_posix()
    return root


def write_doc(name: str, block: str) -> None:
    """Replace this collection's section between the markers of docs/api.md (other runs stay)."""
    doc = DOC.read_text() if DOC.exists() else f"{START}\n{END}\n"
    if START not in doc:
        doc += f"\n{START}\n{END}\n"
    head, rest = doc.split(START, 1)
    body, tail = rest.split(END, 1)
    sections = dict(re.findall(r"#### (.+?)\n(.*?)(?=\n#### |\Z)", body.strip("\n"), flags=re.S))
    sections[name] = block
    new = "\n\n".join(f"#### {k}\n{v.strip()}" for k, v in sorted(sections.items()))
    DOC.write_text(f"{head}{START}\n{new}\n{END}{tail}")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    sys.exit(main())
