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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..config import home_dir
from ..errors import IMRSError
from ..progress import Progress, relabel
from . import metrics as M
from .data import BenchData, dynamic_vectors, load_embeddings, scan_dataset
from .tuning import TUNABLE, search_without_self, tune_index

log = logging.getLogger(__name__)

IMPROVEMENTS = ("qe", "dba", "whiten", "head", "fusion", "conse", "hybrid")
PROMPT = "a photo of a {}"


@dataclass
class BenchConfig:
    data_root: Path
    out: Path
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    indexers: list[str] = field(default_factory=lambda: ["flat_ip", "hnsw", "ivf_flat", "ivf_pq", "annoy"])
    topk: int = 50
    sample_queries: int = 1500  # <= 0: every labelled image
    seed: int = 0
    improvements: tuple[str, ...] = ()
    home: Path | None = None
    cache_dir: Path | None = None
    emb_files: tuple[Path, ...] = ()
    device: str | None = None
    weights: str = "pretrained"
    batch_size: int | None = None
    background: str = "keep"
    background_labels: tuple[str, ...] = ("BACKGROUND_Google",)
    latency_queries: int = 200
    tune: bool = True
    tune_target: float = 0.95
    tune_queries: int = 1000
    index_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    map2d: str = "tsne"  # tsne | pca | none
    progress: bool = True
    #: (stage, done, total) after each step, for a page's progress bar
    stage_progress: Progress | None = None
    holdout_fraction: float = 0.5
    # improvement settings (defaults chosen on Caltech-101, see docs/benchmarks.md)
    qe_n: int = 5
    aqe_alpha: float = 3.0
    dba_k: int = 10
    whiten_dim: int = 128
    whiten_power: float = 0.25
    head_dim: int = 128
    head_hidden: int = 1024
    head_epochs: int = 60

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else home_dir(self.home) / "bench" / "cache"


def sample_queries(data: BenchData, n: int, seed: int) -> np.ndarray:
    cand = data.query_candidates()
    if n <= 0 or n >= len(cand):
        return cand
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(cand, size=n, replace=False))


def holdout_split(label_ids: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): ``fraction`` of each class held out (at least one image each side
    when the class has two or more)."""
    rng = np.random.default_rng(seed + 1)
    train, test = [], []
    for c in np.unique(label_ids[label_ids >= 0]):
        rows = np.flatnonzero(label_ids == c)
        rows = rows[rng.permutation(len(rows))]
        n_test = int(round(len(rows) * fraction))
        n_test = min(max(n_test, 1), len(rows) - 1) if len(rows) > 1 else len(rows)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(xs)) if xs else np.zeros(0, np.int64)

    return cat(train), cat(test)


def _exact_neighbours(db: np.ndarray, exclude_rows: np.ndarray | None = None):
    def fn(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return M.exact_search(db, queries, k, exclude=exclude_rows)
    return fn


# -- indexes ---------------------------------------------------------------------------------------

def bench_indexes(backbone: str, db: np.ndarray, labels: np.ndarray, qrows: np.ndarray, cfg: BenchConfig,
                  exact_map: float) -> tuple[list[dict], list[dict], list[dict]]:
    from ..indexes import make_index

    k = cfg.topk
    n, dim = db.shape
    qv = db[qrows]
    truth = M.exact_search(db, qv, k, exclude=qrows)[1]
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
        if cfg.tune and kind in TUNABLE:
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
                               "default_setting": _fmt_setting({p: row["params"].get(p) for p in TUNABLE[kind]}),
                               "default_recall@10": row["recall@10"]})
        elif kind == "flat_ip":
            curve_rows.append({"backbone": backbone, "indexer": kind, "setting": "exact",
                               "recall@10": row["recall@10"], "qps": row["qps"]})
        del index
    return rows, curve_rows, tuned_rows


def _fmt_setting(s: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in s.items())


# -- quality and improvements ---------------------------------------------------------------------------

def _quality_row(backbone: str, method: str, split: str, q: dict[str, float], dim: int, note: str = "",
                 k: int = 50) -> dict[str, Any]:
    return {"backbone": backbone, "method": method, "split": split, "queries": q.get("queries"),
            "p@1": q["p@1"], "p@10": q["p@10"], "map@10": q["map@10"], f"map@{k}": q.get(f"map@{k}"),
            "map": q["map"], "dim": dim, "bytes_per_vector": 4 * dim, "note": note}


def bench_improvements(backbone: str, db: np.ndarray, labels: np.ndarray, qrows: np.ndarray, cfg: BenchConfig,
                       plain: dict[str, float]) -> list[dict[str, Any]]:
    """Unsupervised improvements over the whole collection, then supervised ones on a held-out split."""
    from ..retrieval import PCAWhitening, database_augment, expand_queries

    k = cfg.topk
    imp = set(cfg.improvements)
    dim = db.shape[1]
    out = [_quality_row(backbone, "plain kNN", "all", plain, dim, "cosine, exact", k)]
    qv = db[qrows]
    nq = max(cfg.qe_n, 10)

    def qe_rows(space: np.ndarray, prefix: str, split: str, q_rows: np.ndarray, note: str) -> list[dict]:
        s, r = M.exact_search(space, space[q_rows], nq, exclude=q_rows)
        res = []
        for name, alpha in (("AQE", 0.0), ("αQE", cfg.aqe_alpha)):
            q2 = expand_queries(space[q_rows], space, s, r, cfg.qe_n, alpha=alpha)
            res.append(_quality_row(backbone, f"{prefix}{name}", split,
                                    M.label_quality(space, labels, q_rows, q2, k=k), space.shape[1],
                                    f"{note}n={cfg.qe_n}" + (f", alpha={alpha:g}" if alpha else ""), k))
        return res

    if "qe" in imp:
        out += qe_rows(db, "", "all", qrows, "")
    dba = None
    if "dba" in imp:
        s, r = M.exact_search(db, db, cfg.dba_k, exclude=np.arange(len(db)))
        dba = database_augment(db, s, r, k=cfg.dba_k, alpha=cfg.aqe_alpha)
        out.append(_quality_row(backbone, "DBA", "all", M.label_quality(dba, labels, qrows, k=k), dim,
                                f"k={cfg.dba_k}, alpha={cfg.aqe_alpha:g}", k))
        out += qe_rows(dba, "DBA + ", "all", qrows, f"DBA k={cfg.dba_k}; ")
    wh = None
    if "whiten" in imp:
        wfit = PCAWhitening.fit(db, dim=cfg.whiten_dim, power=cfg.whiten_power)
        wh = wfit.transform(db)
        out.append(_quality_row(backbone, f"PCA-whiten {wfit.dim}", "all", M.label_quality(wh, labels, qrows, k=k),
                                wfit.dim, f"learned on the collection, power={cfg.whiten_power:g}", k))
        if "qe" in imp or "dba" in imp:
            s, r = M.exact_search(wh, wh, cfg.dba_k, exclude=np.arange(len(wh)))
            whd = database_augment(wh, s, r, k=cfg.dba_k, alpha=cfg.aqe_alpha)
            out += [row for row in qe_rows(whd, f"PCA-whiten {wfit.dim} + DBA + ", "all", qrows,
                                           f"DBA k={cfg.dba_k}; ") if "αQE" in row["method"]]
    if "head" in imp:
        out += bench_head(backbone, db, labels, cfg)
    del qv, dba, wh
    return out


def bench_head(backbone: str, db: np.ndarray, labels: np.ndarray, cfg: BenchConfig) -> list[dict[str, Any]]:
    """Raw features vs the projection head, both on the held-out half of every class."""
    from ..retrieval import database_augment, expand_queries, train_head

    k = cfg.topk
    train, test = holdout_split(labels, cfg.holdout_fraction, cfg.seed)
    if len(train) == 0 or len(np.unique(labels[train])) < 2:
        return []
    distract = np.flatnonzero(labels < 0)
    test_db_rows = np.sort(np.concatenate([test, distract]))
    tdb, tlab = db[test_db_rows], labels[test_db_rows]
    tq = np.flatnonzero(tlab >= 0)
    if cfg.sample_queries > 0 and len(tq) > cfg.sample_queries:
        tq = np.sort(np.random.default_rng(cfg.seed + 2).choice(tq, cfg.sample_queries, replace=False))
    split = f"held-out {cfg.holdout_fraction:g}"
    note = f"{len(train)} train / {len(test)} test images; database = test + distractors"
    rows = [_quality_row(backbone, "plain kNN (held-out)", split, M.label_quality(tdb, tlab, tq, k=k), db.shape[1],
                         note, k)]
    t0 = time.perf_counter()
    head = train_head(db[train], labels[train], dim=cfg.head_dim, hidden=cfg.head_hidden, epochs=cfg.head_epochs,
                      seed=cfg.seed)
    secs = time.perf_counter() - t0
    hdb = head.transform(tdb)
    hq = M.label_quality(hdb, tlab, tq, k=k)
    rows.append(_quality_row(backbone, f"projection head {head.dim}", split, hq, head.dim,
                             f"trained {secs:.0f}s on the train half only", k))
    s, r = M.exact_search(hdb, hdb[tq], max(cfg.qe_n, 1), exclude=tq)
    q2 = expand_queries(hdb[tq], hdb, s, r, cfg.qe_n, alpha=cfg.aqe_alpha)
    rows.append(_quality_row(backbone, f"projection head {head.dim} + αQE", split,
                             M.label_quality(hdb, tlab, tq, q2, k=k), head.dim, f"n={cfg.qe_n}", k))
    s, r = M.exact_search(hdb, hdb, cfg.dba_k, exclude=np.arange(len(hdb)))
    hd = database_augment(hdb, s, r, k=cfg.dba_k, alpha=cfg.aqe_alpha)
    s, r = M.exact_search(hd, hd[tq], max(cfg.qe_n, 1), exclude=tq)
    q2 = expand_queries(hd[tq], hd, s, r, cfg.qe_n, alpha=cfg.aqe_alpha)
    rows.append(_quality_row(backbone, f"projection head {head.dim} + DBA + αQE", split,
                             M.label_quality(hd, tlab, tq, q2, k=k), head.dim,
                             f"DBA k={cfg.dba_k} over the held-out database; n={cfg.qe_n}", k))
    return rows


# -- text --------------------------------------------------------------------------------------------

def bench_text(backbone: str, db: np.ndarray, data: BenchData, cfg: BenchConfig
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Class-name prompts as text queries: the backbone's text tower, and ConSE when asked."""
    from ..encoders import backbone_info, get_encoder

    labels = data.label_ids
    present = np.unique(labels[labels >= 0])
    names = [data.classes[c] for c in present]
    prompts = [PROMPT.format(n.replace("_", " ")) for n in names]
    summary, per_class = [], []

    def record(method: str, m: dict[str, np.ndarray], note: str) -> None:
        summary.append({"backbone": backbone, "method": method, "queries": len(names),
                        "map@10": float(np.nanmean(m["ap@10"])), "map": float(np.nanmean(m["ap"])),
                        "p@1": float(np.nanmean(m["p@1"])), "p@10": float(np.nanmean(m["p@10"])), "note": note})
        for i, name in enumerate(names):
            per_class.append({"backbone": backbone, "method": method, "class": name,
                              "ap@10": float(m["ap@10"][i]), "ap": float(m["ap"][i]), "p@10": float(m["p@10"][i])})

    info = backbone_info(backbone)
    want_conse = "conse" in cfg.improvements
    want_hybrid = "hybrid" in cfg.improvements
    if not info.supports_text and not want_conse and not want_hybrid:
        return summary, per_class
    enc = get_encoder(backbone, device=cfg.device, weights=cfg.weights)
    if enc.supports_text:
        record("text tower", M.text_quality(db, labels, enc.embed_texts(prompts), present, k=10),
               "the backbone's own text encoder")
    norm = 0.0
    if (want_conse or want_hybrid) and getattr(enc, "has_classifier", False) and not enc.supports_text:
        from ..textmap import estimate_feature_norm

        probe = [data.root / str(r) for r in data.relpaths[:: max(1, len(data) // 16)]]
        norm = estimate_feature_norm(enc, probe, limit=16)
    if want_conse and getattr(enc, "has_classifier", False):
        from ..textmap import ConseMapper, ConseParams

        base = ConseMapper.from_encoder(enc, feature_norm=norm).fit(db)
        tvecs = [base.text_vectors(p) for p in prompts]  # prompt or WordNet glosses, as in search
        # class-space scores alone (no image-space step): the classic ConSE ranking
        raw = ConseMapper(base.weight, base.bias, base.class_names, norm, ConseParams(consensus_k=0))
        raw.fit(db, base.top_idx, base.top_prob)
        scores = np.stack([raw.scores(p, text_vec=t) for p, t in zip(prompts, tvecs, strict=True)])
        record("ConSE class space", M.score_quality(scores, labels, present, k=10),
               f"MiniLM -> top-{raw.params.top_classes} ImageNet classes x classifier probabilities")
        nb = _exact_neighbours(db)
        scores = np.stack([base.scores(p, neighbours=lambda r, kk: nb(db[r], kk)[1], text_vec=t)
                           for p, t in zip(prompts, tvecs, strict=True)])
        record("ConSE + consensus", M.score_quality(scores, labels, present, k=10),
               f"scores averaged over {base.params.consensus_k} image-space neighbours")
        qv = np.stack([base.query_vector(p, neighbours=lambda r, kk: nb(db[r], kk)[1], text_vec=t)
                       for p, t in zip(prompts, tvecs, strict=True)])
        record("ConSE query vector", M.text_quality(db, labels, qv, present, k=10),
               f"plain ConSE's query vector: weighted mean of the top-{base.params.prototype_size} "
               "images, searched in image space")
    if want_conse or want_hybrid:  # hierarchy-aware ConSE and hybrid search (imrs.textsearch)
        from ..textsearch.bench import bench_text_search

        nb = _exact_neighbours(db)
        bench_text_search(db, labels, present, prompts, data.relpaths, enc, norm,
                          lambda r, kk: nb(db[r], kk)[1], record, conse=want_conse, hybrid=want_hybrid)
    return summary, per_class


# -- fusion ------------------------------------------------------------------------------------------

def bench_fusion(vectors: dict[str, np.ndarray], labels: np.ndarray, qrows: np.ndarray, cfg: BenchConfig,
                 ) -> list[dict[str, Any]]:
    from ..retrieval import fuse

    names = sorted(vectors)
    fused = fuse([vectors[n] for n in names])
    q = M.label_quality(fused, labels, qrows, k=cfg.topk)
    return [_quality_row("+".join(names), "fusion (concat)", "all", q, fused.shape[1],
                         "normalised features concatenated", cfg.topk)]


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
                                       progress=embed_progress)
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
