"""Retrieval improvements applied in live search, chosen per collection by its own measurement.

``imrs bench`` showed that DBA, PCA whitening and a projection head trained on folder labels can
lift quality a lot on Caltech-101 -- and that none helps everywhere (whitening lowers mAP on some
landmark sets; QE and DBA lower P@1 on CIFAR-10). So they are not switched on by default: ``imrs
improve`` fits each one on the collection, measures every combination with the collection's own
labels on images the fitting never saw, and keeps the best only when it beats plain search.

In search they work as a re-ranking of the plain nearest neighbours (``rerank``): the index keeps
the backbone's vectors, so adding or removing images stays incremental and nothing is rebuilt when
a stage changes; the top ``pool`` candidates are re-scored in the improved space, which is where
nearly all of the measured gain lies.

- ``dba``: each candidate is replaced by the alpha-weighted mean of itself and its ``k`` nearest
  images (database-side augmentation, computed for the candidates only);
- ``whiten``: PCA whitening fitted on the collection's vectors (no labels);
- ``head``: the 128-d projection head trained on the folder labels (supervised).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IMRSError, StoreError
from ..fsutil import atomic_write_json, read_json
from .head import ProjectionHead, train_head
from .qe import expand_queries
from .whiten import PCAWhitening

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)

STAGE_NAMES = ("dba", "whiten", "head")
#: Combinations measured by ``imrs improve`` (a transform after DBA, as in ``imrs bench``).
CANDIDATES: tuple[tuple[str, ...], ...] = ((), ("dba",), ("whiten",), ("head",), ("dba", "whiten"),
                                           ("dba", "head"))
MIN_GAIN = 0.005  # mAP@10 a combination must add over plain search to be kept


@dataclass
class Stages:
    """What a collection's search applies after the plain nearest-neighbour search."""

    names: tuple[str, ...] = ()
    whitening: PCAWhitening | None = None
    head: ProjectionHead | None = None
    dba_k: int = 5
    dba_alpha: float = 3.0
    pool: int = 100

    @property
    def active(self) -> bool:
        return bool(self.names)

    def transform(self, x: np.ndarray) -> np.ndarray:
        if "whiten" in self.names and self.whitening is not None:
            return self.whitening.transform(x)
        if "head" in self.names and self.head is not None:
            return self.head.transform(x)
        return np.asarray(x, np.float32)

    def rerank(self, coll: Collection, query: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of ``ids`` re-ordered by the improved similarity to ``query``."""
        ids = np.asarray([i for i in ids.tolist() if i != -1], dtype=np.int64)
        if not self.active or not len(ids):
            return ids, np.zeros(len(ids), np.float32)
        vecs = coll.index.get_vectors(ids).astype(np.float32)
        if "dba" in self.names:
            sims, nn = coll.index.search(vecs, self.dba_k + 1)
            vecs = _augment(coll, vecs, ids, sims, nn, self.dba_k, self.dba_alpha)
        q = self.transform(np.atleast_2d(query))[0]
        scores = self.transform(vecs) @ q
        order = np.argsort(-scores, kind="stable")
        return ids[order], scores[order]

    # -- storage ---------------------------------------------------------------------------------
    def save(self, folder: Path, backbone: str, report: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        if self.whitening is not None and "whiten" in self.names:
            files["whiten"] = self.whitening.save(folder / f"whiten_{backbone}.npz").name
        if self.head is not None and "head" in self.names:
            files["head"] = self.head.save(folder / f"head_{backbone}.npz").name
        atomic_write_json(folder / f"stages_{backbone}.json",
                          {"names": list(self.names), "files": files, "dba_k": self.dba_k,
                           "dba_alpha": self.dba_alpha, "pool": self.pool, "report": report})

    @classmethod
    def load(cls, folder: Path, backbone: str) -> Stages:
        path = folder / f"stages_{backbone}.json"
        if not path.exists():
            return cls()
        try:
            d = read_json(path)
            files = d.get("files", {})
            return cls(tuple(d.get("names", ())),
                       PCAWhitening.load(folder / files["whiten"]) if "whiten" in files else None,
                       ProjectionHead.load(folder / files["head"]) if "head" in files else None,
                       int(d.get("dba_k", 5)), float(d.get("dba_alpha", 3.0)), int(d.get("pool", 100)))
        except (OSError, ValueError, KeyError, TypeError, StoreError) as exc:
            log.warning("ignoring unreadable search stages in %s: %s", path, exc)
            return cls()


def _augment(coll: Collection, vecs: np.ndarray, ids: np.ndarray, sims: np.ndarray, nn: np.ndarray, k: int,
             alpha: float) -> np.ndarray:
    """DBA of ``vecs`` (rows of the index with ids ``ids``) from a search that includes themselves."""
    rows = np.full((len(ids), k), -1, dtype=np.int64)
    srt = np.zeros((len(ids), k), np.float32)
    flat: list[int] = []
    for r, (i, srow, nrow) in enumerate(zip(ids.tolist(), sims, nn, strict=True)):
        pairs = [(s, j) for s, j in zip(srow.tolist(), nrow.tolist(), strict=True) if j != -1 and j != i][:k]
        for c, (s, j) in enumerate(pairs):
            rows[r, c] = len(flat)
            srt[r, c] = s
            flat.append(j)
    db = coll.index.get_vectors(np.asarray(flat, dtype=np.int64)).astype(np.float32) if flat else \
        np.zeros((0, vecs.shape[1]), np.float32)
    return expand_queries(vecs, db, srt, rows, k, alpha=alpha)


def stages_for(coll: Collection) -> Stages:
    """The collection's chosen stages (empty until ``imrs improve`` kept some), re-read when the
    choice changed on disk."""
    path = coll.state_dir / f"stages_{coll.backbone}.json"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return Stages()
    cache = coll.cache("search_stages", dict)
    if cache.get("stamp") != stamp:
        cache.update(stamp=stamp, stages=Stages.load(coll.state_dir, coll.backbone))
    return cache["stages"]


# ---------------------------------------------------------------------------------------------
# Choosing: measure every combination on the collection itself
# ---------------------------------------------------------------------------------------------


@dataclass
class ImproveReport:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per combination
    chosen: tuple[str, ...] = ()
    queries: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"{'stages':14s} {'P@10':>6s} {'mAP@10':>7s}"]
        for r in self.rows:
            mark = "  <- chosen" if tuple(r["stages"]) == self.chosen else ""
            out.append(f"{'+'.join(r['stages']) or 'plain':14s} {r['p@10']:6.3f} {r['map@10']:7.3f}{mark}")
        if not self.chosen:
            out.append(f"none beats plain search by {MIN_GAIN} mAP@10: live search stays plain")
        out.append(f"{self.queries} held-out queries in {self.seconds:.1f}s")
        return out


def _ap_at(rel: np.ndarray, k: int, n_rel: int) -> float:
    hits = rel[:k].astype(np.float64)
    if not hits.any() or n_rel == 0:
        return 0.0
    prec = np.cumsum(hits) / (np.arange(len(hits)) + 1)
    return float((prec * hits).sum() / min(n_rel, k))


def improve(coll: Collection, candidates: Sequence[tuple[str, ...]] = CANDIDATES, queries_per_class: int = 5,
            max_queries: int = 600, seed: int = 0, save: bool = True, pool: int = 100) -> ImproveReport:
    """Fit every stage, measure each combination on held-out images, keep the best (or none)."""
    from ..expansion.coverage import is_clutter_label

    t0 = time.perf_counter()
    rng = random.Random(seed)
    ids_all = coll.index.ids()
    if len(ids_all) < 20:
        raise IMRSError("too few images to measure search improvements (index at least 20)")
    label_of = {i: lb for lb, ids in coll.catalog.ids_by_label().items() for i in ids}
    by_label: dict[str, list[int]] = {}
    for i in ids_all.tolist():
        lb = label_of.get(i, "")
        if lb and not is_clutter_label(lb):
            by_label.setdefault(lb, []).append(i)
    by_label = {lb: v for lb, v in by_label.items() if len(v) >= 4}
    if len(by_label) < 2:
        raise IMRSError("measuring improvements needs labelled folders (2+ folders of 4+ images)")
    # Half of each class trains the head; queries come from the other half only.
    train_ids, query_ids = [], []
    for _, members in sorted(by_label.items()):
        m = members[:]
        rng.shuffle(m)
        half = len(m) // 2
        train_ids += m[:half]
        query_ids += m[half:][:queries_per_class]
    rng.shuffle(query_ids)
    query_ids = query_ids[:max_queries]
    vecs_all = coll.index.get_vectors(ids_all).astype(np.float32)
    whitening = PCAWhitening.fit(vecs_all, dim=min(128, len(ids_all) - 1))
    names = sorted(by_label)
    lab_idx = {lb: n for n, lb in enumerate(names)}
    tv = coll.index.get_vectors(np.asarray(train_ids, dtype=np.int64)).astype(np.float32)
    ty = np.asarray([lab_idx[label_of[i]] for i in train_ids])
    head = train_head(tv, ty, dim=128, seed=seed)
    sizes = {lb: len(v) for lb, v in by_label.items()}

    qv = coll.index.get_vectors(np.asarray(query_ids, dtype=np.int64)).astype(np.float32)
    _, cand = coll.index.search(qv, pool + 1)
    report = ImproveReport(queries=len(query_ids))
    for combo in candidates:
        st = Stages(tuple(combo), whitening, head, pool=pool)
        p10, ap = [], []
        for qid, q, row in zip(query_ids, qv, cand, strict=True):
            row = row[(row != -1) & (row != qid)]
            ranked = st.rerank(coll, q, row)[0] if st.active else row
            lb = label_of[qid]
            rel = np.asarray([label_of.get(int(i), "") == lb for i in ranked[:10]])
            p10.append(rel.mean() if len(rel) else 0.0)
            ap.append(_ap_at(rel, 10, sizes[lb] - 1))
        report.rows.append({"stages": list(combo), "p@10": float(np.mean(p10)), "map@10": float(np.mean(ap))})
    plain = next(r for r in report.rows if not r["stages"])
    best = max(report.rows, key=lambda r: r["map@10"])
    report.chosen = tuple(best["stages"]) if best["map@10"] >= plain["map@10"] + MIN_GAIN else ()
    if save:
        final_head = head
        if "head" in report.chosen:  # the kept head learns every labelled image
            all_lab = [i for i in ids_all.tolist() if label_of.get(i, "") in lab_idx]
            final_head = train_head(coll.index.get_vectors(np.asarray(all_lab, dtype=np.int64)).astype(np.float32),
                                    np.asarray([lab_idx[label_of[i]] for i in all_lab]), dim=128, seed=seed)
        Stages(report.chosen, whitening, final_head, pool=pool).save(
            coll.state_dir, coll.backbone, {"rows": report.rows, "queries": report.queries})
        coll.forget("search_stages")
    report.seconds = time.perf_counter() - t0
    return report
