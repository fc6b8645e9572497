"""Coverage thresholds measured on the collection itself (``imrs calibrate``).

Built-in thresholds were measured on one dataset; a collection of screenshots, of faces or of 20
images a folder scores differently. Calibration needs no extra data: every labelled folder can
play both parts of the question "does the collection cover this?".

- covered: a query of class C (an image of C, or C's name for text) searched against everything
  but the query itself;
- not covered: the same query with every image of C taken out of the answer, which is exactly
  what the collection would say if it had never held C.

Classes are split in two at random: thresholds are chosen on one half (the grid of best-score bar,
good-hit bar and number of good hits that maximises balanced accuracy) and reported on the other,
so the printed accuracy is for concepts the thresholds never saw. Clutter folders
(``BACKGROUND_Google``) are left out: they are no concept. The result is stored per backbone in
``<state>/calibration.json`` and used by every later query (``imrs.query``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IMRSError
from ..fsutil import atomic_write_json, read_json
from ..progress import ProgressArg, Reporter
from .coverage import CoverageThresholds, builtin_thresholds, is_clutter_label
from .terms import readable_label

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
MIN_CLASSES = 4


@dataclass
class Cases:
    """One row per query: its judged scores (best first, padded with -inf), the size of the class
    its best hit belongs to (None: clutter or unlabelled), and whether the concept was present."""

    scores: np.ndarray
    class_size: np.ndarray  # -1 = unknown
    covered: np.ndarray
    cls: np.ndarray  # which class the query came from (for the split)


@dataclass
class KindResult:
    kind: str
    thresholds: CoverageThresholds
    builtin: CoverageThresholds
    accuracy_fit: float
    accuracy_held_out: float
    builtin_held_out: float
    covered_ok_rate: float  # held out: covered queries judged ok
    absent_weak_rate: float  # held out: absent queries judged weak
    queries: int
    classes_fit: int
    classes_held_out: int

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "thresholds": self.thresholds.as_dict(), "builtin": self.builtin.as_dict(),
                "balanced_accuracy_fit": round(self.accuracy_fit, 4),
                "balanced_accuracy_held_out": round(self.accuracy_held_out, 4),
                "builtin_balanced_accuracy_held_out": round(self.builtin_held_out, 4),
                "covered_judged_ok": round(self.covered_ok_rate, 4),
                "absent_judged_weak": round(self.absent_weak_rate, 4),
                "queries": self.queries, "classes_fit": self.classes_fit,
                "classes_held_out": self.classes_held_out}


@dataclass
class CalibrationReport:
    backbone: str
    results: list[KindResult] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = []
        for r in self.results:
            t = r.thresholds
            out.append(f"{r.kind:8s} best >= {t.best_min:.3f}, {t.min_good} hit(s) >= {t.good_min:.3f}, "
                       f"keep web images >= {t.floor:.3f}")
            out.append(f"{'':8s} balanced accuracy on {r.classes_held_out} held-out classes: "
                       f"{r.accuracy_held_out:.3f} (covered judged ok {r.covered_ok_rate:.2f}, absent judged weak "
                       f"{r.absent_weak_rate:.2f}); built-in thresholds: {r.builtin_held_out:.3f}; "
                       f"fit on {r.classes_fit} classes: {r.accuracy_fit:.3f}; {r.queries} queries")
        out.append(f"calibrated {self.backbone} in {self.seconds:.1f}s")
        return out


# ---------------------------------------------------------------------------------------------
# Stored calibration
# ---------------------------------------------------------------------------------------------


def load_calibration(coll: Collection) -> dict[str, CoverageThresholds]:
    """The collection's calibrated thresholds for its backbone ({} when not calibrated). Re-read
    only when the file changed (another process may calibrate while the app runs)."""
    path = coll.state_dir / CALIBRATION_FILE
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    cache = coll.cache("calibration", dict)
    if cache.get("stamp") != stamp:
        try:
            entry = read_json(path).get(coll.backbone) or {}
            kinds = {k: CoverageThresholds.from_dict(v["thresholds"]) for k, v in entry.get("kinds", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            kinds = {}
        cache.update(stamp=stamp, kinds=kinds)
    return dict(cache["kinds"])


def save_calibration(coll: Collection, report: CalibrationReport) -> None:
    path = coll.state_dir / CALIBRATION_FILE
    try:
        data = read_json(path)
    except (OSError, ValueError):
        data = {}
    data[coll.backbone] = {"kinds": {r.kind: r.as_dict() for r in report.results},
                           "images": len(coll.catalog), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(path, data)
    coll.forget("calibration")


# ---------------------------------------------------------------------------------------------
# Judging many cases at once (the same rule as coverage.check_coverage)
# ---------------------------------------------------------------------------------------------


def judge_ok(cases: Cases, t: CoverageThresholds) -> np.ndarray:
    """Vectorised ``not check_coverage(...).weak`` over every case."""
    best = cases.scores[:, 0]
    n_good = (cases.scores >= t.good_min).sum(axis=1)
    need = np.where(cases.class_size > 0, np.maximum(1, np.minimum(t.min_good, cases.class_size)), t.min_good)
    return (best >= t.best_min) & (n_good >= need)


def balanced_accuracy(ok: np.ndarray, covered: np.ndarray) -> tuple[float, float, float]:
    """(balanced accuracy, covered judged ok, absent judged weak)."""
    tpr = float(ok[covered].mean()) if covered.any() else 0.0
    tnr = float((~ok[~covered]).mean()) if (~covered).any() else 0.0
    return (tpr + tnr) / 2, tpr, tnr


def fit_thresholds(cases: Cases, max_good: int = 6, grid: int = 48) -> tuple[CoverageThresholds, float]:
    """The (best_min, good_min, min_good) that maximise balanced accuracy on ``cases``."""
    finite = cases.scores[np.isfinite(cases.scores)]
    if not len(finite):
        raise IMRSError("no scores to calibrate on")
    best_grid = np.unique(np.quantile(cases.scores[:, 0][np.isfinite(cases.scores[:, 0])],
                                      np.linspace(0, 1, grid)))
    good_grid = np.unique(np.quantile(finite, np.linspace(0, 1, grid)))
    covered = cases.covered
    top = (-1.0, None)
    best = cases.scores[:, 0]
    for g in good_grid:
        n_good = (cases.scores >= g).sum(axis=1)
        for m in range(1, max_good + 1):
            need = np.where(cases.class_size > 0, np.maximum(1, np.minimum(m, cases.class_size)), m)
            cond = n_good >= need
            # every best-score bar at once: ok[b, case]
            ok = (best[None, :] >= best_grid[:, None]) & cond[None, :]
            tpr = ok[:, covered].mean(axis=1) if covered.any() else np.zeros(len(best_grid))
            tnr = (~ok[:, ~covered]).mean(axis=1) if (~covered).any() else np.zeros(len(best_grid))
            ba = (tpr + tnr) / 2
            i = int(np.argmax(ba))
            if ba[i] > top[0] + 1e-9:
                top = (float(ba[i]), (float(best_grid[i]), float(g), m))
    assert top[1] is not None
    b, g, m = top[1]
    # The floor for web images: what the weakest needed good hit of a covered query scores,
    # at its 10th percentile (nine in ten genuine images of a concept clear it).
    rank = np.clip(np.where(cases.class_size > 0, np.minimum(m, cases.class_size), m) - 1, 0, cases.scores.shape[1] - 1)
    at_rank = cases.scores[np.arange(len(cases.scores)), rank][covered]
    at_rank = at_rank[np.isfinite(at_rank)]
    floor = float(min(g, np.quantile(at_rank, 0.1))) if len(at_rank) else g
    return CoverageThresholds(best_min=b, good_min=g, min_good=m, keep_floor=floor), top[0]


# ---------------------------------------------------------------------------------------------
# Building the cases from the collection
# ---------------------------------------------------------------------------------------------


def _labelled_classes(coll: Collection, min_size: int) -> dict[str, list[int]]:
    indexed = set(coll.index.ids().tolist())
    out = {}
    for label, ids in coll.catalog.ids_by_label().items():
        if is_clutter_label(label):
            continue
        ids = [i for i in ids if i in indexed]
        if len(ids) >= min_size:
            out[label] = sorted(ids)
    return out


def _row(scores: Sequence[float], depth: int) -> np.ndarray:
    row = np.full(depth, -np.inf, dtype=np.float64)
    s = np.asarray(sorted(scores, reverse=True)[:depth], dtype=np.float64)
    row[:len(s)] = s
    return row


def _image_cases(coll: Collection, classes: dict[str, list[int]], per_class: int, depth: int, rng: random.Random,
                 label_of: dict[int, str], sizes: dict[str, int], rep: Reporter) -> Cases:
    """Image queries: cached vectors of the collection's own images (nothing is re-embedded)."""
    names = sorted(classes)
    queries: list[tuple[int, int]] = []  # (class number, image id)
    for c, name in enumerate(names):
        ids = classes[name]
        for i in rng.sample(ids, min(per_class, len(ids))):
            queries.append((c, i))
    vecs = coll.index.get_vectors(np.asarray([i for _, i in queries], dtype=np.int64))
    biggest = max(len(v) for v in classes.values())
    rows, size, covered, cls = [], [], [], []
    chunk = 256
    for s in range(0, len(queries), chunk):
        part = queries[s:s + chunk]
        scores, ids = coll.index.search(np.asarray(vecs[s:s + chunk], np.float32), depth + biggest + 1)
        for (c, qid), srow, irow in zip(part, scores, ids, strict=True):
            members = set(classes[names[c]])
            for present in (True, False):
                keep = [(float(sc), int(i)) for sc, i in zip(srow.tolist(), irow.tolist(), strict=True)
                        if i != -1 and i != qid and (present or i not in members)][:depth]
                rows.append(_row([sc for sc, _ in keep], depth))
                top = label_of.get(keep[0][1], "") if keep else ""
                size.append(sizes.get(top, -1) if top and not is_clutter_label(top) else -1)
                covered.append(present)
                cls.append(c)
        rep("calibrate image", min(s + chunk, len(queries)), len(queries))
    return Cases(np.stack(rows), np.asarray(size), np.asarray(covered), np.asarray(cls))


def _text_cases(coll: Collection, classes: dict[str, list[int]], depth: int, label_of: dict[int, str],
                sizes: dict[str, int], rep: Reporter) -> Cases:
    """Text queries: each class's readable name, judged on the same scores live queries are."""
    from ..query import text_class_space

    names = sorted(classes)
    textmap = not coll.backbone_info.supports_text
    rows, size, covered, cls = [], [], [], []
    if not textmap:
        tvecs = coll.encoder.embed_texts([f"a photo of a {readable_label(n)}" for n in names])
        all_scores, all_ids = coll.index.search(np.asarray(tvecs, np.float32),
                                                depth + max(len(v) for v in classes.values()) + 1)
    for c, name in enumerate(names):
        members = set(classes[name])
        if textmap:
            ids, scores = text_class_space(coll, readable_label(name))
            pairs = sorted(zip(scores.tolist(), ids.tolist(), strict=True), reverse=True)
        else:
            pairs = [(float(s), int(i)) for s, i in zip(all_scores[c].tolist(), all_ids[c].tolist(), strict=True)
                     if i != -1]
        for present in (True, False):
            keep = [(s, i) for s, i in pairs if present or i not in members][:depth]
            rows.append(_row([s for s, _ in keep], depth))
            top = label_of.get(keep[0][1], "") if keep else ""
            size.append(sizes.get(top, -1) if top and not is_clutter_label(top) else -1)
            covered.append(present)
            cls.append(c)
        rep("calibrate text", c + 1, len(names))
    return Cases(np.stack(rows), np.asarray(size), np.asarray(covered), np.asarray(cls))


def _subset(cases: Cases, mask: np.ndarray) -> Cases:
    return Cases(cases.scores[mask], cases.class_size[mask], cases.covered[mask], cases.cls[mask])


def calibrate(coll: Collection, kinds: Sequence[str] = ("image", "text"), per_class: int = 3,
              max_classes: int = 120, seed: int = 0, save: bool = True,
              progress: ProgressArg = None) -> CalibrationReport:
    """Measure coverage thresholds on ``coll`` (see the module docstring); store them when ``save``."""
    from ..query import JUDGE_DEPTH

    t0 = time.perf_counter()
    rep = Reporter(progress)
    classes = _labelled_classes(coll, min_size=2)
    if len(classes) < MIN_CLASSES:
        raise IMRSError(f"calibration needs at least {MIN_CLASSES} labelled folders of 2+ images each "
                        f"(found {len(classes)}); the label of an image is its top-level folder")
    rng = random.Random(seed)
    names = sorted(classes)
    if len(names) > max_classes:
        names = sorted(rng.sample(names, max_classes))
        classes = {n: classes[n] for n in names}
    order = list(range(len(names)))
    rng.shuffle(order)
    fit_classes = np.zeros(len(names), bool)
    fit_classes[order[: len(order) // 2]] = True
    label_of = {i: lb for lb, ids in coll.catalog.ids_by_label().items() for i in ids}
    sizes = coll.catalog.label_counts()
    report = CalibrationReport(coll.backbone)
    try:
        for kind in kinds:
            if kind == "image":
                cases = _image_cases(coll, classes, per_class, JUDGE_DEPTH, rng, label_of, sizes, rep)
                stored = "image"
            elif kind == "text":
                cases = _text_cases(coll, classes, JUDGE_DEPTH, label_of, sizes, rep)
                stored = "text" if coll.backbone_info.supports_text else "textmap"
            else:
                raise IMRSError(f"unknown query kind {kind!r}: choose image or text")
            fit_mask = fit_classes[cases.cls]
            fitted, ba_fit = fit_thresholds(_subset(cases, fit_mask))
            held = _subset(cases, ~fit_mask)
            ba, tpr, tnr = balanced_accuracy(judge_ok(held, fitted), held.covered)
            builtin = builtin_thresholds(coll.backbone, stored)
            ba_builtin, _, _ = balanced_accuracy(judge_ok(held, builtin), held.covered)
            report.results.append(KindResult(stored, fitted, builtin, ba_fit, ba, ba_builtin, tpr, tnr,
                                             len(cases.covered), int(fit_classes.sum()),
                                             int((~fit_classes).sum())))
    finally:
        rep.close()
    report.seconds = time.perf_counter() - t0
    if save:
        save_calibration(coll, report)
    return report
