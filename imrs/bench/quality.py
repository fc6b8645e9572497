"""Retrieval-quality measurements beyond the indexes: the improvements (query expansion, DBA,
whitening, the projection head), text queries (text tower, ConSE, hybrid) and backbone fusion, each
as rows of the benchmark's tables."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..indexes.exact import exact_search
from . import metrics as M
from .data import BenchData
from .protocol import PROMPT, BenchConfig, exact_neighbours, holdout_split


def quality_row(backbone: str, method: str, split: str, q: dict[str, float], dim: int, note: str = "",
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
    out = [quality_row(backbone, "plain kNN", "all", plain, dim, "cosine, exact", k)]
    qv = db[qrows]
    nq = max(cfg.qe_n, 10)

    def qe_rows(space: np.ndarray, prefix: str, split: str, q_rows: np.ndarray, note: str) -> list[dict]:
        s, r = exact_search(space[q_rows], space, nq, exclude=q_rows)
        res = []
        for name, alpha in (("AQE", 0.0), ("αQE", cfg.aqe_alpha)):
            q2 = expand_queries(space[q_rows], space, s, r, cfg.qe_n, alpha=alpha)
            res.append(quality_row(backbone, f"{prefix}{name}", split,
                                    M.label_quality(space, labels, q_rows, q2, k=k), space.shape[1],
                                    f"{note}n={cfg.qe_n}" + (f", alpha={alpha:g}" if alpha else ""), k))
        return res

    if "qe" in imp:
        out += qe_rows(db, "", "all", qrows, "")
    dba = None
    if "dba" in imp:
        s, r = exact_search(db, db, cfg.dba_k, exclude=np.arange(len(db)))
        dba = database_augment(db, s, r, k=cfg.dba_k, alpha=cfg.aqe_alpha)
        out.append(quality_row(backbone, "DBA", "all", M.label_quality(dba, labels, qrows, k=k), dim,
                                f"k={cfg.dba_k}, alpha={cfg.aqe_alpha:g}", k))
        out += qe_rows(dba, "DBA + ", "all", qrows, f"DBA k={cfg.dba_k}; ")
    wh = None
    if "whiten" in imp:
        wfit = PCAWhitening.fit(db, dim=cfg.whiten_dim, power=cfg.whiten_power)
        wh = wfit.transform(db)
        out.append(quality_row(backbone, f"PCA-whiten {wfit.dim}", "all", M.label_quality(wh, labels, qrows, k=k),
                                wfit.dim, f"learned on the collection, power={cfg.whiten_power:g}", k))
        if "qe" in imp or "dba" in imp:
            s, r = exact_search(wh, wh, cfg.dba_k, exclude=np.arange(len(wh)))
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
    rows = [quality_row(backbone, "plain kNN (held-out)", split, M.label_quality(tdb, tlab, tq, k=k), db.shape[1],
                         note, k)]
    t0 = time.perf_counter()
    head = train_head(db[train], labels[train], dim=cfg.head_dim, hidden=cfg.head_hidden, epochs=cfg.head_epochs,
                      seed=cfg.seed)
    secs = time.perf_counter() - t0
    hdb = head.transform(tdb)
    hq = M.label_quality(hdb, tlab, tq, k=k)
    rows.append(quality_row(backbone, f"projection head {head.dim}", split, hq, head.dim,
                             f"trained {secs:.0f}s on the train half only", k))
    s, r = exact_search(hdb[tq], hdb, max(cfg.qe_n, 1), exclude=tq)
    q2 = expand_queries(hdb[tq], hdb, s, r, cfg.qe_n, alpha=cfg.aqe_alpha)
    rows.append(quality_row(backbone, f"projection head {head.dim} + αQE", split,
                             M.label_quality(hdb, tlab, tq, q2, k=k), head.dim, f"n={cfg.qe_n}", k))
    s, r = exact_search(hdb, hdb, cfg.dba_k, exclude=np.arange(len(hdb)))
    hd = database_augment(hdb, s, r, k=cfg.dba_k, alpha=cfg.aqe_alpha)
    s, r = exact_search(hd[tq], hd, max(cfg.qe_n, 1), exclude=tq)
    q2 = expand_queries(hd[tq], hd, s, r, cfg.qe_n, alpha=cfg.aqe_alpha)
    rows.append(quality_row(backbone, f"projection head {head.dim} + DBA + αQE", split,
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
    enc = get_encoder(backbone, device=cfg.device, weights=cfg.weights, settings=cfg.settings)
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
        nb = exact_neighbours(db)
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

        nb = exact_neighbours(db)
        bench_text_search(db, labels, present, prompts, data.relpaths, enc, norm,
                          lambda r, kk: nb(db[r], kk)[1], record, conse=want_conse, hybrid=want_hybrid)
    return summary, per_class


# -- fusion ------------------------------------------------------------------------------------------

def bench_fusion(vectors: dict[str, np.ndarray], labels: np.ndarray, qrows: np.ndarray, cfg: BenchConfig,
                 ) -> list[dict[str, Any]]:
    from ..retrieval import fuse_backbones

    names = sorted(vectors)
    fused = fuse_backbones([vectors[n] for n in names])
    q = M.label_quality(fused, labels, qrows, k=cfg.topk)
    return [quality_row("+".join(names), "fusion (concat)", "all", q, fused.shape[1],
                         "normalised features concatenated", cfg.topk)]
