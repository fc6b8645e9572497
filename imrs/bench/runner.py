"""``imrs bench``: index speed and memory, retrieval quality, text search and the improvements, on a
labelled folder (one sub-folder per class, e.g. Caltech-101).

Protocol (kept identical to the plain reference script so numbers compare):

* every image of a class folder is a potential query; ``sample_queries`` of them are drawn with
  ``seed`` (0 = all). The query image itself is excluded from its own ranking.
* ``BACKGROUND_Google`` (and files at the top level) are never queries and never relevant. By
  default they stay in the database as distractors, as they would in a real collection
  (``background="drop"`` removes them).
* label quality of the *embedding* (P@1, P@10, mAP@10, mAP@k, full mAP) is computed by exact
  search over the full ranking; each index's own top-k gives its P@1, P@10, mAP@10/@k and its
  recall@k against exact search. Full mAP needs the full ranking, which an ANN index does not
  give: the index table repeats the exact value for reference.
* supervised improvements (the projection head) are trained on half of each class and evaluated
  with the other half as queries *and* database, next to raw features on the same half.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IMRSError
from ..indexes.exact import exact_search
from ..indexes.params import tunable_names
from ..progress import relabel
from . import metrics as M
from .data import dynamic_vectors, load_embeddings, scan_dataset
from .protocol import IMPROVEMENTS, BenchConfig, holdout_split, sample_queries
from .quality import bench_fusion, bench_improvements, bench_text
from .tuning import search_without_self, tune_index

__all__ = ["IMPROVEMENTS", "BenchConfig", "holdout_split", "mark_kept", "run_bench", "sample_queries"]

log = logging.getLogger(__name__)

# -- indexes ---------------------------------------------------------------------------------------

def bench_indexes(backbone: str, db: np.ndarray, labels: np.ndarray, qrows: np.ndarray, cfg: BenchConfig,
                  exact_map: float) -> tuple[list[dict], list[dict], list[dict]]:
    from ..indexes import make_index

    k = cfg.topk
    n, dim = db.shape
    qv = db[qrows]
    truth = exact_search(qv, db, k, exclude=qrows)[1]
    tq = qrows[: cfg.tune_queries] if cfg.tune_queries > 0 else qrows
    truth10 = truth[: len(tq), :10]
    rows, curve_rows, tuned_rows = [], [], []
    for i, kind in enumerate(cfg.indexers):
        _stage(cfg, f"{backbone}: index {kind}", i, len(cfg.indexers))
        params = dict(cfg.index_params.get(kind, {}))
        t0 = time.perf_counter()
        index = make_index(kind, dim, n_hint=n, **params)
        index.add(np.arange(n, dtype=np.int64), db)
        build_s = time.perf_counter() - t0
        mem = int(index.memory_bytes())
        for r in qrows[:5]:  # warm-up: first calls pay for lazy allocations and thread start-up
            index.search(db[r:r + 1], k + 1)
        lat = []
        for r in qrows[: cfg.latency_queries]:
            t1 = time.perf_counter()
            index.search(db[r:r + 1], k + 1)
            lat.append((time.perf_counter() - t1) * 1000.0)
        t1 = time.perf_counter()
        _, ids = search_without_self(index, qv, qrows, k)
        batch_s = time.perf_counter() - t1
        quality = M.topk_label_quality(ids, labels, qrows, k)
        row = {"backbone": backbone, "indexer": kind, "n": n, "dim": dim,
               "params": {p: v for p, v in sorted(index.get_params().items())},
               "build_s": build_s, "memory_bytes": mem, "bytes_per_vector": mem / max(n, 1),
               "latency_p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
               "latency_p95_ms": float(np.percentile(lat, 95)) if lat else float("nan"),
               "qps": len(qrows) / max(batch_s, 1e-9),
               "recall@10": M.recall_at_k(ids, truth, min(10, k)), f"recall@{k}": M.recall_at_k(ids, truth, k),
               **quality, "map_exact": exact_map}
        rows.append(row)
        log.info("%s/%s: build %.1fs, %.1f MB, p50 %.2f ms, %.0f QPS, recall@10 %.3f", backbone, kind, build_s,
                 mem / 1e6, row["latency_p50_ms"], row["qps"], row["recall@10"])
        if cfg.tune and tunable_names(kind):
            res = tune_index(index, kind, db[tq], truth10, k=10, target=cfg.tune_target, self_ids=tq)
            for p in res.curve:
                curve_rows.append({"backbone": backbone, "indexer": kind, **p.setting,
                                   "setting": _fmt_setting(p.setting), "recall@10": p.recall, "qps": p.qps})
            best = res.best
            tuned_rows.append({"backbone": backbone, "indexer": kind, "target": cfg.tune_target,
                               "reached": res.reached,
                               "setting": _fmt_setting(best.setting) if best else "",
                               "params": best.setting if best else {},
                               "recall@10": best.recall if best else float("nan"),
                               "qps": best.qps if best else float("nan"),
                               "default_setting": _fmt_setting({p: row["params"].get(p) for p in tunable_names(kind)}),
                               "default_recall@10": row["recall@10"]})
        elif kind == "flat_ip":
            curve_rows.append({"backbone": backbone, "indexer": kind, "setting": "exact",
                               "recall@10": row["recall@10"], "qps": row["qps"]})
        del index
    return rows, curve_rows, tuned_rows


def _fmt_setting(s: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in s.items())


# -- 2-D map -------------------------------------------------------------------------------------------

def map2d(db: np.ndarray, dyn: np.ndarray, method: str, seed: int) -> np.ndarray:
    x = db if not len(dyn) else np.concatenate([db, dyn])
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    pca = u * s
    if method == "pca" or len(x) < 10:
        return pca[:, :2].astype(np.float32)
    try:
        from sklearn.manifold import TSNE
    except ImportError:  # scikit-learn comes with sentence-transformers; without it, PCA will do
        log.warning("t-SNE needs scikit-learn; drawing the PCA map instead")
        return pca[:, :2].astype(np.float32)

    init = pca[:, :2] / max(float(np.std(pca[:, 0])), 1e-12) * 1e-4
    tsne = TSNE(n_components=2, perplexity=min(30.0, max(2.0, (len(x) - 1) / 3.0)), init=init.astype(np.float32),
                random_state=seed, n_jobs=1, max_iter=750)
    return tsne.fit_transform(pca[:, :50].astype(np.float32)).astype(np.float32)


# -- driver --------------------------------------------------------------------------------------------

def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run everything ``cfg`` asks for and write the report into ``cfg.out``; returns the results."""
    from ..encoders import backbone_info
    from ..indexes import INDEX_KINDS
    from . import report

    t_start = time.perf_counter()
    unknown = [i for i in cfg.improvements if i not in IMPROVEMENTS]
    if unknown:
        raise IMRSError(f"unknown improvement(s) {', '.join(unknown)}; choose from {', '.join(IMPROVEMENTS)}")
    bad = [k for k in cfg.indexers if k not in INDEX_KINDS]
    if bad:
        raise IMRSError(f"unknown indexer(s) {', '.join(bad)}; choose from {', '.join(INDEX_KINDS)}")
    for b in cfg.backbones:
        backbone_info(b)  # unknown backbone: one clear error before any work
    if cfg.topk < 10:
        raise IMRSError("--topk must be at least 10 (P@10 and recall@10 are always reported)")
    data = scan_dataset(cfg.data_root, cfg.background, cfg.background_labels)
    cache_dir = cfg.resolved_cache_dir()
    vectors: dict[str, np.ndarray] = {}
    row_sets: dict[str, np.ndarray] = {}
    emb_reports = []
    for b in cfg.backbones:
        _stage(cfg, f"{b}: embeddings", 0, len(data))
        embed_progress = cfg.progress if cfg.stage_progress is None else relabel(cfg.stage_progress,
                                                                                  f"{b}: embedding images")
        v, rows, rep = load_embeddings(data, b, cache_dir=cache_dir, home=cfg.home, extra=tuple(cfg.emb_files),
                                       weights=cfg.weights, device=cfg.device, batch_size=cfg.batch_size,
                                       progress=embed_progress, settings=cfg.settings)
        vectors[b], row_sets[b] = v, rows
        emb_reports.append(asdict(rep))
    common = row_sets[cfg.backbones[0]]
    for b in cfg.backbones[1:]:
        common = np.intersect1d(common, row_sets[b])
    for b in cfg.backbones:
        vectors[b] = vectors[b][np.searchsorted(row_sets[b], common)]
    data = data.select(common)
    labels = data.label_ids
    qrows = sample_queries(data, cfg.sample_queries, cfg.seed)
    if not len(qrows):
        raise IMRSError("no labelled images to use as queries")
    k = cfg.topk

    results: dict[str, Any] = {
        "meta": {"data_root": str(data.root), "images": len(data), "classes": len(data.classes),
                 "labelled": int((labels >= 0).sum()), "distractors": int((labels < 0).sum()),
                 "background": cfg.background, "background_labels": data.background, "queries": len(qrows),
                 "topk": k, "seed": cfg.seed, "improvements": list(cfg.improvements),
                 "backbones": cfg.backbones, "indexers": cfg.indexers,
                 "created": datetime.now(UTC).isoformat(timespec="seconds"),
                 "machine": f"{platform.machine()} {platform.system()}, {_cores()} core(s)",
                 "tune_target": cfg.tune_target},
        "embeddings": emb_reports, "indexes": [], "tuning": [], "tuned": [], "quality": [], "text": [],
        "text_per_class": [], "maps": {},
    }
    for b in cfg.backbones:
        db = vectors[b]
        t0 = time.perf_counter()
        plain = M.label_quality(db, labels, qrows, k=k)
        log.info("%s plain kNN: P@1 %.3f P@10 %.3f mAP %.3f (%.1fs)", b, plain["p@1"], plain["p@10"],
                 plain["map"], time.perf_counter() - t0)
        idx_rows, curve, tuned = bench_indexes(b, db, labels, qrows, cfg, plain["map"])
        results["indexes"] += idx_rows
        results["tuning"] += curve
        results["tuned"] += tuned
        _stage(cfg, f"{b}: retrieval quality", 0, 0)
        results["quality"] += bench_improvements(b, db, labels, qrows, cfg, plain)
        _stage(cfg, f"{b}: text queries", 0, 0)
        summary, per_class = bench_text(b, db, data, cfg)
        results["text"] += summary
        results["text_per_class"] += per_class
        if cfg.map2d != "none":
            _stage(cfg, f"{b}: collection map ({cfg.map2d})", 0, 0)
            dyn = dynamic_vectors(data, b, cfg.home)
            xy = map2d(db, dyn if dyn.size else np.zeros((0, db.shape[1]), np.float32), cfg.map2d, cfg.seed)
            results["maps"][b] = {"xy": xy, "labels": data.labels, "dynamic": len(dyn) if dyn.size else 0}
    if "fusion" in cfg.improvements:
        if len(cfg.backbones) > 1:
            results["quality"] += bench_fusion(vectors, labels, qrows, cfg)
        else:
            results["meta"]["fusion_skipped"] = "only one backbone given (--backbones a b to fuse)"
    mark_kept(results["quality"])
    results["meta"]["seconds"] = time.perf_counter() - t_start
    _stage(cfg, "writing the report", 0, 0)
    report.write_report(results, Path(cfg.out), cfg.home, config=cfg)
    _stage(cfg, "done", 1, 1)
    return results


def _stage(cfg: BenchConfig, stage: str, done: int, total: int) -> None:
    if cfg.stage_progress is not None:
        cfg.stage_progress(stage, done, total)


def mark_kept(rows: list[dict[str, Any]]) -> None:
    """An improvement is kept when it beats the plain baseline of the same backbone and split on both
    P@10 and full mAP."""
    base: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r["method"].startswith("plain kNN"):
            base[(r["backbone"], r["split"])] = r
    for r in rows:
        b = base.get((r["backbone"], r["split"])) or base.get((r["backbone"].split("+")[0], r["split"]))
        if r["method"].startswith("plain kNN") or b is None:
            r["kept"] = ""
            continue
        r["d_p@10"] = r["p@10"] - b["p@10"]
        r["d_map"] = r["map"] - b["map"]
        r["kept"] = "yes" if r["d_p@10"] > 0 and r["d_map"] > 0 else "no"


def _cores() -> int:
    from ..encoders.pipeline import cpu_count

    return cpu_count()
