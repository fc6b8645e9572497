"""Coverage measured on the collection itself (``imrs calibrate``): the judge's model and thresholds.

Built-in thresholds were measured on one dataset; a collection of screenshots, of faces or of 20
images a folder scores differently. Calibration needs no extra data: every labelled folder can
play both parts of the question "does the collection cover this?".

- covered: a query of class C searched against everything but the query itself;
- not covered: the same query with every image of C *and of its family* taken out of the answer
  (folders whose names share a word: ``Faces``/``Faces_easy``, ``crocodile``/``crocodile_head``),
  which is what the collection would say if it had never held the concept.

Queries must look like what people really search with, not like the collection's own shots: each
image query is asked twice, as the indexed image and as an "external-style" view of it (a crop of
45-100% of the picture, rescaled, colour-shifted, re-encoded as a JPEG of quality 40-90), the view
that predicts how photos from outside the collection are judged. Text queries are the folders'
names in a few phrasings ("okapi", "a photo of a okapi", "okapi pictures"), embedded exactly as a
live query is.

The web check for uncertain answers (``judge.web_test``) is fitted here too. No web is asked:
the other-style views of a folder's other sampled images stand in for the handful of web images
of its concept (never the query's own image; when the concept is absent, nothing of its family is
in what they find). They are the closest thing to web photos of the concept a collection holds,
and closer to the collection's style than real web photos are, so the check measured here is an
upper estimate of the live one.

Classes are split in two at random: the judge is fitted on 70% (``training``) and everything
reported is measured on the last 30% (``report``): concepts it never saw. Its precision thresholds
and its forced decision are set on out-of-fold probabilities of the training cases (``FOLDS``
folds of whole folders, each case judged by a model fitted without its folder), so they rest on
every training folder, not on a held-back third of them: a bound over 30 concepts missed the
precision target on held-out folders, because the few concepts that defeat the judge (an absent
``schooner`` while ``ketch`` stays) were too often not among them. The report gives, for the
precision target, how precise the confident answers were and how many queries got one, and the
balanced accuracy of the forced decision, each with a 90% confidence interval. The threshold rule of
``imrs.expansion.coverage`` is fitted on the training folders (it sets the floor web images must
reach and is the fallback). Clutter folders (``BACKGROUND_Google``) are left out: they are no concept.
The result is stored per backbone in ``<state>/calibration.json`` and used by every later query.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import CALIBRATE_PER_CLASS, COVERAGE_CONFIDENCE
from ..errors import IMRSError
from ..fsutil import atomic_write_json, read_json
from ..progress import ProgressArg, Reporter
from .cases import (
    CaseBuilder,
    Cases,
    families,
    image_cases,
    members_of_classes,
    sample_views,
    subset,
    text_cases,
)
from .coverage import CoverageThresholds, builtin_thresholds
from .judge import (
    JudgeModel,
    fit_logistic,
    folds_of,
    labelled_classes,
    logit,
    out_of_fold,
)
from .risk import (
    MIN_GROUPS,
    balanced_accuracy,
    balanced_threshold,
    best_possible_answered,
    judge_metrics,
    outcome_metrics,
)

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
MIN_CLASSES = 4
#: Fewer classes than this in the fit or calibration part: the judge's model is not fitted (the
#: threshold rule judges), since its precision guarantee would rest on a handful of concepts.
MIN_JUDGE_CLASSES = 6
#: The judge's thresholds are set on probabilities from models that never saw the case's folder:
#: the training folders are dealt into this many folds.
FOLDS = 5


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
    judge: JudgeModel | None = None
    judge_report: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "thresholds": self.thresholds.as_dict(), "builtin": self.builtin.as_dict(),
                "judge": self.judge.as_dict() if self.judge else None, "judge_report": self.judge_report,
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
        """What a person reads: per kind, one line on confident answers, one on the forced decision."""
        out = []
        for r in self.results:
            j = r.judge_report
            name = {"image": "image queries", "text": "text queries", "textmap": "text queries"}.get(r.kind, r.kind)
            if j.get("fitted"):
                ext = j.get("external") or j["all"]
                out.append(f"{name}: confident answers {_pct(ext['precision'])} right "
                           f"({_ci(ext['precision_ci'])}), for {_pct(ext['answered'])} of queries "
                           f"({_ci(ext['answered_ci'])}); the rest are marked uncertain")
                out.append(f"{'':{len(name)}s}  grow-or-not decision right {_pct(ext['balanced_accuracy'])} "
                           f"(balanced, {_ci(ext['balanced_accuracy_ci'])}); target precision "
                           f"{_pct(j['precision_target'])} at confidence "
                           f"{_pct(j.get('confidence', COVERAGE_CONFIDENCE))}; "
                           f"measured on {j['classes_report']} folders never used "
                           + ("for fitting, on photos in other people's style" if j.get("external")
                              else "for fitting"))
                web = j.get("web")
                if web:
                    w = web.get("external") or web["all"]
                    out.append(f"{'':{len(name)}s}  with the web check for uncertain answers "
                               f"({_pct(w['asked_web'])} ask; simulated with other images of the folder): "
                               f"confident answers {_pct(w['precision'])} right ({_ci(w['precision_ci'])}) for "
                               f"{_pct(w['answered'])} of queries ({_ci(w['answered_ci'])}); grow-or-not right "
                               f"{_pct(w['balanced_accuracy'])} ({_ci(w['balanced_accuracy_ci'])})")
            else:
                out.append(f"{name}: {j.get('why', 'judged by thresholds')}; thresholds "
                           f"balanced accuracy {r.accuracy_held_out:.2f} on {r.classes_held_out} held-out folders")
        out.append(f"calibrated {self.backbone} in {self.seconds:.1f}s")
        return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _ci(ci: Sequence[float]) -> str:
    return f"90% CI {100 * ci[0]:.0f}-{100 * ci[1]:.0f}%"


# ---------------------------------------------------------------------------------------------
# Stored calibration
# ---------------------------------------------------------------------------------------------


def _stored(coll: Collection, key: str, parse: Any) -> dict[str, Any]:
    """``parse(kinds entry)`` of the collection's calibration file for its backbone, re-read only
    when the file changed (another process may calibrate while the app runs); {} when absent."""
    path = coll.state_dir / CALIBRATION_FILE
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    cache = coll.cache(key, dict)
    if cache.get("stamp") != stamp:
        try:
            entry = read_json(path).get(coll.backbone) or {}
            value = parse(entry.get("kinds", {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            value = {}
        cache.update(stamp=stamp, value=value)
    return dict(cache["value"])


def load_calibration(coll: Collection) -> dict[str, CoverageThresholds]:
    """The collection's calibrated thresholds for its backbone ({} when not calibrated)."""
    return _stored(coll, "calibration",
                   lambda kinds: {k: CoverageThresholds.from_dict(v["thresholds"]) for k, v in kinds.items()})


def load_judges(coll: Collection) -> dict[str, JudgeModel]:
    """The collection's fitted judge models per query kind ({} when not calibrated or not fitted)."""
    return _stored(coll, "judges",
                   lambda kinds: {k: JudgeModel.from_dict(v["judge"]) for k, v in kinds.items() if v.get("judge")})


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
    coll.forget("judges")


# ---------------------------------------------------------------------------------------------
# Judging many cases at once (the same rule as coverage.check_coverage)
# ---------------------------------------------------------------------------------------------


def judge_ok(cases: Cases, t: CoverageThresholds) -> np.ndarray:
    """Vectorised ``not check_coverage(...).weak`` over every case."""
    best = cases.scores[:, 0]
    n_good = (cases.scores >= t.good_min).sum(axis=1)
    need = np.where(cases.class_size > 0, np.maximum(1, np.minimum(t.min_good, cases.class_size)), t.min_good)
    return (best >= t.best_min) & (n_good >= need)


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


def _per_class(cls: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(cls, return_counts=True)
    return {int(v): int(n) for v, n in zip(values.tolist(), counts.tolist(), strict=True)}


def _name_errors(judge_report: dict[str, Any], names: Sequence[str]) -> None:
    """Class numbers to folder names in the web check's ``confident_errors``."""
    for part in ((judge_report.get("web") or {}).get(k) for k in ("all", "external")):
        errors = (part or {}).get("confident_errors")
        if errors:
            for side, counts in errors.items():
                errors[side] = {names[c]: n for c, n in sorted(counts.items(), key=lambda kv: -kv[1])}


def _web_X(p1: np.ndarray, web: np.ndarray) -> np.ndarray:
    return np.column_stack([[logit(x) for x in p1], web])


def fit_web(model: JudgeModel, train: Cases, report: Cases, precision: float, fold: np.ndarray,
            p1_oof: np.ndarray, p_rep: np.ndarray, confidence: float = COVERAGE_CONFIDENCE) -> dict[str, Any] | None:
    """The web check's model (``judge.web_test``): logistic over the first judgement's logit (the
    out-of-fold one, ``p1_oof``, as a live query's first judgement comes from a model that never
    saw its concept) and what the simulated web images said, fitted on ``train``. Its precision
    thresholds are set on the out-of-fold probabilities of the cases the first step leaves
    uncertain (the only ones that ask the web), or of all of them when those rest on too few
    folders. Returns the two-step report on ``report``: first-step confident answers stand, the
    rest are decided with the web check (``p_rep``: the first step's probabilities of ``report``)."""
    if train.web is None or report.web is None or train.features is None or report.features is None:
        return None
    ok = ~np.isnan(train.web).any(axis=1)
    if len(np.unique(train.cls[ok])) < 2 * MIN_JUDGE_CLASSES or len(np.unique(fold[ok])) < 2:
        return None
    X2, y2, g2 = _web_X(p1_oof[ok], train.web[ok]), train.covered[ok].astype(int), train.cls[ok].astype(int)
    mean, scale, coef, intercept = fit_logistic(X2, y2.astype(float))
    web = JudgeModel(model.kind + "+web", train.web_names, mean, scale, coef, intercept, np.zeros(0),
                     np.zeros(0, int), 0.5)
    p2_oof = out_of_fold(X2, y2, fold[ok])
    t_low1, t_high1 = model.thresholds(precision, confidence)
    unsure = (p1_oof[ok] > t_low1) & (p1_oof[ok] < t_high1)
    use = unsure if len(np.unique(g2[unsure])) >= MIN_GROUPS else np.ones(len(y2), bool)
    web.cal_p, web.cal_y, web.cal_g = p2_oof[use], y2[use], g2[use]
    web.t_mid = balanced_threshold(p2_oof, y2, groups=g2)
    t_low2, t_high2 = web.thresholds(precision, confidence)
    model.web = web

    def two_step(mask: np.ndarray) -> dict[str, Any]:
        p1, w, y = p_rep[mask], report.web[mask], report.covered[mask].astype(int)
        has = ~np.isnan(w).any(axis=1)
        p2 = np.full(len(p1), np.nan)
        if has.any():
            p2[has] = web.probabilities(_web_X(p1[has], w[has]))
        sure1 = (p1 >= t_high1) | (p1 <= t_low1)
        asks = ~sure1 & has
        said_cov = (sure1 & (p1 >= t_high1)) | (asks & (p2 >= t_high2))
        said_abs = (sure1 & (p1 <= t_low1)) | (asks & (p2 <= t_low2))
        forced = np.where(asks, p2 >= web.t_mid, p1 >= model.t_mid)
        m = outcome_metrics(said_cov, said_abs, forced, y, report.cls[mask])
        m["asked_web"] = float(asks.mean()) if len(asks) else 0.0
        m["best_possible_answered"] = best_possible_answered(np.where(asks, p2, p1), y, precision)
        # which folders the wrong confident answers came from (named by ``calibrate``): a few
        # concepts the backbone cannot tell from a neighbour usually account for most of them
        cls = report.cls[mask]
        m["confident_errors"] = {"absent_said_covered": _per_class(cls[said_cov & (y == 0)]),
                                 "covered_said_absent": _per_class(cls[said_abs & (y == 1)])}
        return m

    out: dict[str, Any] = {"t_low": t_low2, "t_high": t_high2, "t_mid": web.t_mid,
                           "all": two_step(np.ones(len(p_rep), bool))}
    if report.external is not None and report.external.any():
        out["external"] = two_step(report.external)
    web.metrics = {k: v for k, v in out.items() if k in ("all", "external")}
    return out


def fit_judge(kind: str, features: Sequence[str], train: Cases, report: Cases, precision: float,
              confidence: float = COVERAGE_CONFIDENCE) -> tuple[JudgeModel, dict[str, Any]]:
    """The model is fitted on all of ``train``; its thresholds and forced decision are set on
    ``train``'s out-of-fold probabilities (``FOLDS`` folds of whole folders), so they rest on
    every training folder rather than on a held-back third; everything is reported on ``report``."""
    assert train.features is not None and report.features is not None
    y = train.covered.astype(int)
    mean, scale, coef, intercept = fit_logistic(train.features, y.astype(float))
    model = JudgeModel(kind, tuple(features), mean, scale, coef, intercept, np.zeros(0), np.zeros(0, int), 0.5)
    fold = folds_of(train.cls, FOLDS)
    p1_oof = out_of_fold(train.features, y, fold)
    model.cal_p, model.cal_y, model.cal_g = p1_oof, y, train.cls.astype(int)
    model.t_mid = balanced_threshold(p1_oof, y, groups=train.cls)
    t_low, t_high = model.thresholds(precision, confidence)
    pr = model.probabilities(report.features)
    out: dict[str, Any] = {"fitted": True, "precision_target": precision, "confidence": confidence,
                           "features": list(features),
                           "classes_fit": int(len(np.unique(train.cls))), "folds": int(len(np.unique(fold))),
                           "classes_report": int(len(np.unique(report.cls))),
                           "t_low": t_low, "t_high": t_high, "t_mid": model.t_mid,
                           "all": judge_metrics(pr, report.covered.astype(int), report.cls, t_low, t_high,
                                                model.t_mid)}
    if report.external is not None and report.external.any():
        e = report.external
        out["external"] = judge_metrics(pr[e], report.covered[e].astype(int), report.cls[e], t_low, t_high,
                                        model.t_mid)
    web = fit_web(model, train, report, precision, fold, p1_oof, pr, confidence)
    if web is not None:
        out["web"] = web
    model.metrics = {k: v for k, v in out.items() if k in ("all", "external", "precision_target")}
    return model, out


def calibrate(coll: Collection, kinds: Sequence[str] = ("image", "text"), per_class: int = CALIBRATE_PER_CLASS,
              max_classes: int = 120, seed: int = 0, save: bool = True,
              progress: ProgressArg = None, precision: float | None = None,
              confidence: float | None = None) -> CalibrationReport:
    """Fit the judge and the threshold rule on ``coll`` (see the module docstring); store them when
    ``save``. ``precision``/``confidence``: the targets the report's confident answers are set for
    (None: the collection's settings, ``coverage_precision``/``coverage_confidence``; a live query
    applies its own settings to the same stored calibration cases)."""
    precision = coll.settings.coverage_precision if precision is None else precision
    confidence = coll.settings.coverage_confidence if confidence is None else confidence
    from .judge import JUDGE_DEPTH, context

    t0 = time.perf_counter()
    rep = Reporter(progress)
    classes = labelled_classes(coll, min_size=2)
    if len(classes) < MIN_CLASSES:
        raise IMRSError(f"calibration needs at least {MIN_CLASSES} labelled folders of 2+ images each "
                        f"(found {len(classes)}); the label of an image is its top-level folder")
    rng = random.Random(seed)
    names = sorted(classes)
    if len(names) > max_classes:
        names = sorted(rng.sample(names, max_classes))
        classes = {n: classes[n] for n in names}
    fam = families(names)
    order = list(range(len(names)))
    rng.shuffle(order)
    part = np.zeros(len(names), int)  # 0 training (the judge, its thresholds, the rule), 2 report
    n_train = int(round(0.4 * len(names))) + int(round(0.3 * len(names)))
    part[order[n_train:]] = 2
    ctx = context(coll)
    label_of = ctx.label_of
    sizes = coll.catalog.label_counts()
    report = CalibrationReport(coll.backbone)
    for kind in kinds:
        if kind not in ("image", "text"):
            raise IMRSError(f"unknown query kind {kind!r}: choose image or text")
    members_of = members_of_classes(classes, fam, names)
    try:
        # the sampled images and their other-style views serve as image queries and, for every
        # kind, as the simulated web images of their folder
        biggest = max(len(v) for v in members_of.values())
        views = sample_views(coll, classes, names, per_class, JUDGE_DEPTH + biggest + 1, rng, rep)
        for kind in kinds:
            if kind == "image":
                b = CaseBuilder("image", names, JUDGE_DEPTH, label_of, sizes, ctx)
                cases = image_cases(views, members_of, b)
                stored = "image"
            else:
                stored = "text" if coll.backbone_info.supports_text else "textmap"
                b = CaseBuilder(stored, names, JUDGE_DEPTH, label_of, sizes, ctx)
                cases = text_cases(coll, classes, members_of, JUDGE_DEPTH, b, rep, views)
            which = part[cases.cls]
            rule_fit = subset(cases, which != 2)
            fitted, ba_fit = fit_thresholds(rule_fit)
            held = subset(cases, which == 2)
            ba, tpr, tnr = balanced_accuracy(judge_ok(held, fitted), held.covered)
            builtin = builtin_thresholds(coll.backbone, stored)
            ba_builtin, _, _ = balanced_accuracy(judge_ok(held, builtin), held.covered)
            result = KindResult(stored, fitted, builtin, ba_fit, ba, ba_builtin, tpr, tnr,
                                len(cases.covered), int((part != 2).sum()), int((part == 2).sum()))
            if (part != 2).sum() < 2 * MIN_JUDGE_CLASSES or (part == 2).sum() < MIN_JUDGE_CLASSES:
                result.judge_report = {"fitted": False, "why": f"too few folders to fit the judge (need "
                                       f"{MIN_JUDGE_CLASSES * 10 // 3}+); judged by thresholds"}
            else:
                result.judge, result.judge_report = fit_judge(stored, b.features, subset(cases, which != 2), held,
                                                              precision, confidence)
                _name_errors(result.judge_report, names)
                # which folders the report is on: a live search can be measured on the same ones
                result.judge_report["folders_report"] = [n for c, n in enumerate(names) if part[c] == 2]
            report.results.append(result)
    finally:
        rep.close()
    report.seconds = time.perf_counter() - t0
    if save:
        save_calibration(coll, report)
    return report
