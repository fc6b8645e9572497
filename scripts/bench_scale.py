#!/usr/bin/env python
"""Scale benchmark: recall on real embeddings and on a synthetic set whose neighbours are not
copies (``--recall``), and the 1M x 1,280-d table per index kind.

Run by hand (not in CI):

    .venv/bin/python scripts/bench_scale.py --recall                 # ~15 min on 2 shared cores:
                                                                     # writes its section of docs/scale.md
    .venv/bin/python scripts/bench_scale.py --recall --n 50000 --kinds hnsw,ivf_pq

The 1M table (about 40 minutes on 2 cores):

    .venv/bin/python scripts/bench_scale.py                          # N=1,000,000, all kinds
    .venv/bin/python scripts/bench_scale.py --n 200000 --kinds flat_ip,ivf_pq_compressed
    .venv/bin/python scripts/bench_scale.py --kinds milvus     # re-measure one kind; the table
                                                               # shows every kind measured at this N

Data: Caltech-101 (9,143 images) embedded once with the project's EfficientNet-Lite0 encoder
(cached in runs/bench_scale/), then N perturbed copies: each row mixes one real embedding with a
random other image of the same class (weight 0-0.35) plus small Gaussian noise (norm ~0.15), so a
neighbourhood is "the same picture, and similar pictures of its class", not an isotropic cloud.
Queries are fresh copies made the same way (never in the base). Ground truth is exact search.

Each kind runs in its own child process (memory is measured per kind and one kind's arena cannot
inflate another's): build time, resident memory (the child's private RSS growth, ``RssAnon`` from
/proc: index structures, not the page cache of the data file), p50/p95 single-query latency,
batch QPS, recall@10 against exact search, and the time to remove then re-add 10k vectors. A kind
whose build would pass ``--budget`` seconds (or 7 GiB of RSS) stops adding there and is measured at the size it
reached (ground truth recomputed for that size); the table says so.

Kinds: flat_ip, hnsw, ivf_pq (raw vectors in memory for the exact re-rank), ivf_pq_compressed
(``compressed=1``: only PQ codes resident, the re-rank reads a mapped file), milvus (Milvus Lite,
in process, IVF_SQ8: Lite builds per 100k-row segment). The CPU is shared with other work:
absolute times are indicative, ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imrs.config import caltech_dir  # noqa: E402

DIM = 1280
KINDS = ["flat_ip", "hnsw", "ivf_pq", "ivf_pq_compressed", "milvus"]
#: Explicit build parameters: IVF training over 4*sqrt(1M)=4,000 lists on 1,280-d would take an
#: hour on 2 cores; 1,024 lists trained on 256 points each is the practical choice here.
PARAMS = {
    "flat_ip": ("flat_ip", {}),
    "hnsw": ("hnsw", {"M": 32, "efConstruction": 80, "efSearch": 128}),
    "ivf_pq": ("ivf_pq", {"nlist": 1024, "nprobe": 48, "k_factor": 10}),
    "ivf_pq_compressed": ("ivf_pq", {"nlist": 1024, "nprobe": 48, "k_factor": 10, "compressed": 1}),
    "milvus": ("milvus", {"index_type": "IVF_SQ8", "nlist": 256, "nprobe": 24}),
}
CHUNK = 50_000
#: A kind stops adding once its process holds this much (the machine's 24 GiB are shared).
MAX_RSS_KB = 7 * 2**20


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# -- data ---------------------------------------------------------------------------------------------
def caltech_embeddings(data: Path, caltech: Path) -> tuple[np.ndarray, np.ndarray]:
    cache = data / "caltech101_efficientnet_lite0.npz"
    if not cache.exists():
        from imrs.encoders import get_encoder

        files = sorted(caltech.glob("*/*.jpg"))
        if not files:
            sys.exit(f"no images under {caltech} (pass --caltech)")
        print(f"embedding {len(files)} Caltech-101 images once (cached in {cache}) ...", flush=True)
        res = get_encoder("efficientnet_lite0").embed_paths(files, progress=True)
        labels = np.array([files[i].parent.name for i in res.kept.tolist()])
        np.savez(cache, vectors=res.vectors, labels=labels)
    with np.load(cache, allow_pickle=False) as z:
        return z["vectors"].astype(np.float32), z["labels"]


def perturbed(real: np.ndarray, labels: np.ndarray, n: int, seed: int, sources: list | None = None) -> np.ndarray:
    """``n`` noisy copies of rows of ``real`` (row indices appended to ``sources`` when given)."""
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    src = rng.integers(0, len(real), n)
    partner = np.array([rng.choice(by_class[labels[s]]) for s in src.tolist()])
    if sources is not None:
        sources.extend(src.tolist())
    w = rng.uniform(0.0, 0.35, (n, 1)).astype(np.float32)
    x = (1 - w) * real[src] + w * real[partner]
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(0.15 / np.sqrt(real.shape[1]))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def read_rows(path: Path, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of a raw float32 matrix file, read (not mapped: mapped pages would count in RSS)."""
    with open(path, "rb") as fh:
        fh.seek(lo * DIM * 4)
        return np.fromfile(fh, dtype=np.float32, count=(hi - lo) * DIM).reshape(hi - lo, DIM)


def exact_truth(base: Path, n: int, queries: np.ndarray, k: int = 10) -> np.ndarray:
    import faiss

    best_d = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        d, i = faiss.knn(queries, read_rows(base, lo, hi), k, metric=faiss.METRIC_INNER_PRODUCT)
        best_d = np.concatenate([best_d, d], 1)
        best_i = np.concatenate([best_i, i + lo], 1)
        order = np.argsort(-best_d, axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(best_d, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def make_data(data: Path, n: int, n_queries: int, caltech: Path) -> tuple[Path, Path, Path]:
    base = data / f"base_{n}.f32"
    qpath = data / f"queries_{n_queries}.npy"
    truth = data / f"truth_{n}_{n_queries}.npy"
    if base.exists() and qpath.exists() and truth.exists():
        return base, qpath, truth
    real, labels = caltech_embeddings(data, caltech)
    t = time.perf_counter()
    if not base.exists():
        tmp = base.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            for lo in range(0, n, 100_000):
                perturbed(real, labels, min(100_000, n - lo), seed=lo + 1).tofile(fh)
        os.replace(tmp, base)
    queries = perturbed(real, labels, n_queries, seed=10**9)
    np.save(qpath, queries)
    np.save(truth, exact_truth(base, n, queries))
    print(f"data: {n} x {DIM} base + {n_queries} queries + exact truth in {time.perf_counter() - t:.0f}s", flush=True)
    return base, qpath, truth


# -- recall on real embeddings and on a mixture fitted to them (--recall) -------------------------------
RECALL_KINDS = ["hnsw", "ivf_flat", "ivf_pq", "annoy", "milvus"]
DOC = REPO / "docs" / "scale.md"
MARK_BEGIN, MARK_END = "<!-- bench_scale --recall: begin -->", "<!-- bench_scale --recall: end -->"


def fit_mixture(real: np.ndarray, labels: np.ndarray, rank: int = 64) -> dict[str, np.ndarray]:
    """A Gaussian mixture fitted to the real embeddings: one component per class (its mean, its
    share of the images as weight) with a covariance shared by all, fitted to the within-class
    residuals: their top ``rank`` principal directions with their variances, plus the remaining
    variance spread evenly over the other directions. Samples are independent draws, so no
    two rows are copies of one source image (the 1M generator's neighbours are)."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    means = np.stack([real[inverse == c].mean(axis=0) for c in range(len(classes))]).astype(np.float64)
    resid = real.astype(np.float64) - means[inverse]
    _, sv, vt = np.linalg.svd(resid, full_matrices=False)
    var = sv**2 / max(len(real) - 1, 1)
    rest = float(var[rank:].sum() / max(real.shape[1] - rank, 1))
    return {"means": means, "weights": counts / counts.sum(), "comps": vt[:rank], "std": np.sqrt(var[:rank]),
            "rest": np.array(np.sqrt(rest))}


def sample_mixture(m: dict[str, np.ndarray], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, m["means"].shape[1]), np.float32)
    for lo in range(0, n, 50_000):
        hi = min(n, lo + 50_000)
        comp = rng.choice(len(m["weights"]), hi - lo, p=m["weights"])
        z = rng.standard_normal((hi - lo, len(m["std"]))) * m["std"]
        x = m["means"][comp] + z @ m["comps"] + rng.standard_normal((hi - lo, m["means"].shape[1])) * float(m["rest"])
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    return faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)


def recall_of(kind: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, work: Path,
              k: int = 10) -> dict:
    """Build ``kind`` with IMRS's automatic parameters for this N (what a user gets), then recall@10
    of 500 queries against exact search, single-query p50 latency and build time."""
    import shutil

    from imrs.indexes import make_index

    extra = {"uri": str(work / "milvus.db"), "collection": "recall"} if kind == "milvus" else {}
    index = make_index(kind, base.shape[1], n_hint=len(base), **extra)
    ids = np.arange(len(base), dtype=np.int64)
    t0 = time.perf_counter()
    for lo in range(0, len(base), CHUNK):
        index.add(ids[lo : lo + CHUNK], base[lo : lo + CHUNK])
    if kind == "milvus":
        index.save(work / "milvus-meta")  # flush: sealed segments get their index built
    build_s = time.perf_counter() - t0
    singles = []
    for q in queries[:100]:
        t = time.perf_counter()
        index.search(q, k)
        singles.append(time.perf_counter() - t)
    _, found = index.search(queries, k)
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), truth.tolist(), strict=True)]))
    params = {p: v for p, v in index.get_params().items() if p not in ("uri", "collection")}
    if kind == "milvus":
        params["index_type"] = index.stats()["index_type"]
        index.close()
        shutil.rmtree(work / "milvus.db", ignore_errors=True)
    return {"kind": kind, "n": len(base), "build_s": build_s, "p50_ms": 1000 * float(np.median(singles)),
            "recall10": recall, "params": params}


def host_line() -> str:
    cpu, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni") if f in flags) or "no AVX2"
    return f"{cpu} ({simd}), {os.cpu_count()} logical CPUs"


def recall_bench(args: argparse.Namespace) -> None:
    """Real Caltech-101 embeddings (500 held out as queries) and ``--n`` mixture samples, every kind
    with its automatic parameters; the old generator's copies measured for comparison on ivf_pq."""
    import tempfile

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    real, labels = caltech_embeddings(data, Path(args.caltech))
    rng = np.random.default_rng(7)
    order = rng.permutation(len(real))
    q_rows, b_rows = order[: args.queries], order[args.queries :]
    load0, started = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    mixture = fit_mixture(real[b_rows], labels[b_rows])
    synth = sample_mixture(mixture, args.n, seed=1)
    synth_q = sample_mixture(mixture, args.queries, seed=2)
    base_src: list[int] = []
    q_src: list[int] = []
    copies = perturbed(real[b_rows], labels[b_rows], args.n, seed=3, sources=base_src)
    copies_q = perturbed(real[b_rows], labels[b_rows], args.queries, seed=4, sources=q_src)  # as the 1M table
    sets = {"real": (real[b_rows], real[q_rows]), "mixture": (synth, synth_q), "copies": (copies, copies_q)}
    kinds = [k.strip() for k in args.kinds.split(",")] if args.kinds != ",".join(KINDS) else RECALL_KINDS
    stats, rows = {}, []
    for name, (base, queries) in sets.items():
        d, truth = exact_knn(base, queries)
        stats[name] = {"n": len(base), "top1": float(d[:, 0].mean()), "top10": float(d[:, 9].mean())}
        if name == "copies":  # how often a true neighbour is a copy of the query's own source image
            same = np.asarray(base_src)[truth] == np.asarray(q_src)[:, None]
            stats[name]["same_source"] = float(same.mean())
        for kind in kinds if name != "copies" else [k for k in kinds if k == "ivf_pq"]:
            with tempfile.TemporaryDirectory(dir=data) as work:
                res = recall_of(kind, base, queries, truth, Path(work))
            res["set"] = name
            rows.append(res)
            print(f"{name:8s} {kind:9s} N={len(base):,} recall@10 {res['recall10']:.3f} build {res['build_s']:.0f}s "
                  f"p50 {res['p50_ms']:.2f}ms {res['params']}", flush=True)
    out = {"host": host_line(), "started": started, "load_before": load0, "load_after": os.getloadavg()[0],
           "n": args.n, "queries": args.queries, "stats": stats, "rows": rows}
    (data / f"recall_{args.n}.json").write_text(json.dumps(out, indent=2))
    write_recall_doc(out)


def write_recall_doc(res: dict) -> None:
    """Replace the --recall section of docs/scale.md with this run's numbers."""
    names = {"real": "real: Caltech-101 embeddings", "mixture": "synthetic: mixture fitted to them",
             "copies": "synthetic: perturbed copies (the 1M generator)"}
    lines = [MARK_BEGIN, "",
             f"Measured {res['started']} on {res['host']}, load average {res['load_before']:.1f} before and "
             f"{res['load_after']:.1f} after (the cores are shared with other work: build times and latencies "
             f"are indicative, recall is not affected). {res['queries']} queries, k = 10, truth by exact "
             f"search, every kind with the parameters IMRS picks by itself for that N.", "",
             "| data | N | kind | recall@10 | build s | p50 ms | parameters |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        p = ", ".join(f"{k}={v}" for k, v in sorted(r["params"].items()) if k not in ("exact_below",))
        lines.append(f"| {names[r['set']]} | {r['n']:,} | {r['kind']} | {r['recall10']:.3f} | {r['build_s']:.0f} | "
                     f"{r['p50_ms']:.2f} | {p} |")
    lines += ["", "How hard each set is (mean cosine of a query to its exact 1st and 10th neighbour): " + "; ".join(
        f"{k} {v['top1']:.3f} / {v['top10']:.3f}" for k, v in res["stats"].items()) + ".", ""]
    pq = {r["set"]: r["recall10"] for r in res["rows"] if r["kind"] == "ivf_pq"}
    if "copies" in pq:
        for name in ("real", "mixture"):
            if name in pq and pq["copies"] < 1.0:
                lines += [f"ivf_pq misses {(1 - pq[name]) / max(1 - pq['copies'], 1e-9):.0f}x as many true "
                          f"neighbours on the {name} set ({pq[name]:.3f}) as on the perturbed copies "
                          f"({pq['copies']:.3f}).", ""]
    if "same_source" in res["stats"].get("copies", {}):
        lines += [f"In the perturbed-copies set {res['stats']['copies']['same_source']:.1%} of the true top-10 "
                  "neighbours are copies of the query's own source image: it measures near-duplicate lookup, "
                  "so its recall is an upper bound; the real and mixture rows are what to plan with.", ""]
    lines += [MARK_END]
    text = DOC.read_text()
    block = "\n".join(lines)
    if MARK_BEGIN in text and MARK_END in text:
        text = text[: text.index(MARK_BEGIN)] + block + text[text.index(MARK_END) + len(MARK_END):]
    else:
        text += "\n" + block + "\n"
    DOC.write_text(text)
    print(f"wrote the --recall section of {DOC}")


# -- one kind, in a child process --------------------------------------------------------------------
def ids_of(rows: np.ndarray) -> np.ndarray:
    return rows.astype(np.int64) * 7919 - 10**12  # scattered, partly negative, like stable_id


def child(kind_name: str, base: Path, n: int, qpath: Path, tpath: Path, budget: float, work: Path) -> dict:
    import faiss

    from imrs.indexes import make_index

    kind, params = PARAMS[kind_name]
    if kind == "milvus":
        params = {**params, "uri": str(work / "milvus.db"), "collection": "bench"}
    if kind_name.endswith("compressed"):
        os.environ["IMRS_SPILL_DIR"] = str(work)
    queries = np.load(qpath)
    truth = np.load(tpath)
    anon0, hwm0 = status_kb("RssAnon"), status_kb("VmHWM")
    index = make_index(kind, DIM, n_hint=n, **params)
    t0 = time.perf_counter()
    built = 0
    # IVF trains on the first add: 64 points per list (FAISS wants >= 39) keeps k-means affordable
    first = 64 * int(params.get("nlist", 0)) if kind == "ivf_pq" else CHUNK
    chunk = 10_000 if kind == "hnsw" else CHUNK
    while built < n:
        hi = min(n, built + (first if built == 0 else chunk))
        index.add(ids_of(np.arange(built, hi)), read_rows(base, built, hi))
        built = hi
        if built < n and (time.perf_counter() - t0 > budget or status_kb("VmRSS") > MAX_RSS_KB):
            break
    if kind == "milvus":
        index.save(work / "milvus-meta")  # flush: sealed segments get their index built
    build_s = time.perf_counter() - t0
    anon = (status_kb("RssAnon") - anon0) * 1024
    if built < n:
        truth = exact_truth(base, built, queries)
    k = 10
    singles = []
    for q in queries[:200]:
        t = time.perf_counter()
        index.search(q, k)
        singles.append(time.perf_counter() - t)
    t = time.perf_counter()
    _, found = index.search(queries, k)
    batch_s = time.perf_counter() - t
    found_rows = (found + 10**12) // 7919
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found_rows.tolist(), truth.tolist(),
                                                                       strict=True)]))
    gone = ids_of(np.arange(0, 10_000))
    t = time.perf_counter()
    removed = index.remove(gone)
    remove_s = time.perf_counter() - t
    t = time.perf_counter()
    index.add(gone, read_rows(base, 0, 10_000))
    add_s = time.perf_counter() - t
    return {"kind": kind_name, "n": built, "target_n": n, "build_s": build_s, "memory_bytes": anon,
            "peak_rss_bytes": (status_kb("VmHWM") - hwm0) * 1024, "estimate_bytes": index.memory_bytes(),
            "p50_ms": 1000 * float(np.median(singles)), "p95_ms": 1000 * float(np.percentile(singles, 95)),
            "qps": len(queries) / batch_s, "recall10": recall, "remove10k_s": remove_s, "removed": int(removed),
            "add10k_s": add_s, "params": {k2: v for k2, v in index.get_params().items() if k2 != "uri"},
            "threads": faiss.omp_get_max_threads()}


def run_child(kind: str, args: argparse.Namespace, base: Path, qpath: Path, tpath: Path) -> dict | None:
    work = Path(args.data) / f"work_{kind}"
    subprocess.run(["rm", "-rf", str(work)], check=False)
    work.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", kind, "--base", str(base), "--n", str(args.n),
           "--qpath", str(qpath), "--tpath", str(tpath), "--budget", str(args.budget), "--work", str(work)]
    print(f"{kind}: building ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    if proc.returncode != 0:
        print(f"{kind}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{kind}: done: {json.dumps(res)}", flush=True)
    (Path(args.data) / f"result_{kind}_{args.n}.json").write_text(json.dumps(res, indent=2))
    return res


def table(results: list[dict]) -> str:
    flat = next((r for r in results if r["kind"] == "flat_ip"), None)
    head = ("kind", "N", "build s", "memory MiB", "vs flat", "p50 ms", "p95 ms", "batch QPS", "recall@10",
            "remove 10k s", "add 10k s")
    rows = [head]
    for r in results:
        ratio = f"{r['memory_bytes'] / flat['memory_bytes']:.1%}" if flat and flat["memory_bytes"] else "-"
        n = f"{r['n']:,}" + ("*" if r["n"] < r["target_n"] else "")
        rows.append((r["kind"], n, f"{r['build_s']:.0f}", f"{r['memory_bytes'] / 2**20:,.0f}", ratio,
                     f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['qps']:,.0f}", f"{r['recall10']:.3f}",
                     f"{r['remove10k_s']:.2f}", f"{r['add10k_s']:.2f}"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["| " + " | ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if any(r["n"] < r["target_n"] for r in results):
        lines.append("* build stopped at the time (or memory) budget; measured at that size, truth recomputed for it")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="vectors (default 1,000,000; --recall: 200,000)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of building per kind before it stops")
    ap.add_argument("--data", default=str(REPO / "runs" / "bench_scale"))
    ap.add_argument("--caltech", default=str(caltech_dir()))
    ap.add_argument("--recall", action="store_true",
                    help="recall on real embeddings and on a mixture fitted to them (default --n 200000); "
                         "writes its section of docs/scale.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--qpath", help=argparse.SUPPRESS)
    ap.add_argument("--tpath", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.n is None:
        args.n = 200_000 if args.recall else 1_000_000
    if args.recall:
        recall_bench(args)
        return
    if args.child:
        res = child(args.child, Path(args.base), args.n, Path(args.qpath), Path(args.tpath), args.budget,
                    Path(args.work))
        print(json.dumps(res))
        return
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    base, qpath, tpath = make_data(data, args.n, args.queries, Path(args.caltech))
    for kind in args.kinds.split(","):
        run_child(kind.strip(), args, base, qpath, tpath)
    # every kind measured at this N so far (also by earlier runs of a subset of kinds), in table order
    results = [json.loads(p.read_text()) for kind in KINDS if (p := data / f"result_{kind}_{args.n}.json").exists()]
    out = table(results)
    print(f"\nN={args.n:,} x {DIM}-d, {args.queries} queries, k=10; load average {os.getloadavg()[0]:.1f} "
          f"(the 2 cores are shared)\n{out}")
    (data / f"results_{args.n}.json").write_text(json.dumps(results, indent=2))
    (data / f"results_{args.n}.md").write_text(out + "\n")


if __name__ == "__main__":
    main()
