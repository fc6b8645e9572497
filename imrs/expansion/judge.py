"""The one judge: is the query's concept in the collection, is it not, or can IMRS not tell?

Every query kind is judged here, and ``imrs calibrate`` fits exactly what is computed here, so what
is fitted is what runs. A judgement has three steps:

1. **Evidence** (:func:`gather`): named features of the judged answer, the same for live queries
   and calibration cases. One cosine is not enough on photos from outside the collection: a
   real sunflower photo and a real giraffe photo can have the same best cosine to Caltech-101.
   What separates them is whether the answer *agrees with itself* and with what the backbone's
   ImageNet classifier (trained on web photos, like the queries) sees:

   - ``s1``, ``s5``: the best judged score and the mean of the best five;
   - ``purity``: the share of the best ten that carry the leading label (an absent concept's
     neighbours come from many folders), ``s_label`` the mean score of the leading label's best
     hits and ``margin`` how far that label is ahead of the next one;
   - ``agree`` (backbones with a classifier): Bhattacharyya overlap of the query's ImageNet class
     distribution with the mean distribution of its best ten hits, and ``agree_label`` with the
     mean distribution of the leading label's images (a photo of a sunflower and a Caltech
     sunflower are both "daisy" to ImageNet; a giraffe and an okapi are not the same thing);
   - ``closeness`` (text on an image-only backbone): how well ImageNet's classes cover the words.

2. **Probability** (:class:`JudgeModel`): a logistic model over the features, fitted by
   ``imrs calibrate`` on the collection's own folders (``imrs.expansion.calibrate``).

3. **Three outcomes**: covered, not covered, or uncertain. The two confident outcomes use
   thresholds (``imrs.expansion.risk``) chosen so that, on the calibration cases, each meets the
   precision the person asks for (``IMRS_COVERAGE_PRECISION``, default 95%) with a finite-sample
   guarantee: the thresholds are scanned from the safest one outwards and accepted while a lower
   bound of their precision (a bootstrap over whole folders) stays at the target (fixed-sequence
   testing, as in Learn-then-Test risk control; it holds for concepts exchangeable with the
   calibration's folders at the confidence the person asks for, ``IMRS_COVERAGE_CONFIDENCE``,
   default 95%). Everything between asks. The forced decision (``weak``: should IMRS grow?) is the
   threshold of best balanced accuracy among those that call at most a tenth of covered concepts
   weak (at 90% confidence over the calibration's folders).

4. **Asking the web** (``imrs.expansion.webcheck``), for answers that stay uncertain when growth was asked
   for (``imrs search --expand``, the page's grow button): a handful of web images of the proposed
   term are embedded and compared with the collection. One photo is one noisy sample of a concept;
   ten web images of it are ten, and how well they find the collection, relative to how well they
   find each other, is a per-concept yardstick no single cosine has. ``imrs calibrate`` fits this
   second step too (``webcheck.WEB_FEATURES``, simulated web images: other-style views of other
   images of the folder), with its own precision thresholds on the cases the first step left
   uncertain.

A collection that was never calibrated, a kind calibration could not fit, or thresholds set by
hand (``IMRS_COVERAGE_*``) are judged by the threshold rule of ``imrs.expansion.coverage``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import COVERAGE_CONFIDENCE
from ..errors import IMRSError
from .coverage import LIKELY, NO_MATCH, UNCERTAIN, is_clutter_label
from .risk import precision_thresholds

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)

#: How many results the verdict looks at, whatever ``k`` was asked for.
JUDGE_DEPTH = 20
#: How many best judged results the label and ImageNet features look at.
TOP = 10

COSINE_FEATURES = ("s1", "s5", "purity", "s_label", "margin")
CLASSIFIER_FEATURES = ("agree", "agree_label")


def feature_names(kind: str, has_classifier: bool) -> tuple[str, ...]:
    """The features the judge reads for a kind (image queries on a backbone with an ImageNet
    classifier also compare class distributions; text on such a backbone adds closeness)."""
    if kind == "image" and has_classifier:
        return COSINE_FEATURES + CLASSIFIER_FEATURES
    if kind == "textmap":
        return COSINE_FEATURES + ("closeness",)
    return COSINE_FEATURES


# ---------------------------------------------------------------------------------------------
# Evidence
# ---------------------------------------------------------------------------------------------


@dataclass
class Evidence:
    kind: str
    values: dict[str, float]
    top_label: str = ""
    n_top: int = 0  # how many of the best TOP carry the leading label

    def vector(self, names: Sequence[str]) -> np.ndarray:
        return np.asarray([self.values.get(n, 0.0) for n in names], dtype=np.float64)

    def describe(self) -> str:
        v = self.values
        parts = [f"best {v.get('s1', float('nan')):.3f}"]
        if self.top_label:
            parts.append(f"{self.n_top}/{TOP} top hits {self.top_label!r}")
        if "agree_label" in v:
            parts.append(f"ImageNet agreement {v['agree_label']:.2f}")
        if "closeness" in v:
            parts.append(f"ImageNet closeness {v['closeness']:.2f}")
        return ", ".join(parts)


def labelled_classes(coll: Collection, min_size: int) -> dict[str, list[int]]:
    """Indexed image ids of every labelled folder with at least ``min_size`` of them (clutter and
    unlabelled images are no concept), ids sorted."""
    indexed = set(coll.index.ids().tolist())
    out = {}
    for label, ids in coll.catalog.ids_by_label().items():
        if is_clutter_label(label):
            continue
        ids = [i for i in ids if i in indexed]
        if len(ids) >= min_size:
            out[label] = sorted(ids)
    return out


class ClassContext:
    """What the judge needs of a collection beyond the answer: labels of images, how tight each
    folder is and, for backbones with an ImageNet classifier, each image's and each label's class
    distribution. Built once per collection state (``Collection.cache``), from the text-search
    class space."""

    #: Images per folder the tightness is measured on.
    TIGHTNESS_SAMPLE = 64

    def __init__(self, coll: Collection) -> None:
        self.label_of: dict[int, str] = {}
        for label, ids in coll.catalog.ids_by_label().items():
            for i in ids:
                self.label_of[int(i)] = label
        self.tightness: dict[str, float] = {}
        self.typical_tightness = 0.0
        self._measure_tightness(coll)
        self.mapper: Any = None
        self.row_of: dict[int, int] = {}
        self.label_dist: dict[str, np.ndarray] = {}
        if getattr(coll.backbone_info, "has_classifier", True) and not coll.backbone_info.supports_text:
            from ..textsearch import text_index

            try:
                self.mapper, ids = text_index(coll).conse()
            except IMRSError as exc:  # no classifier after all: cosine evidence only
                log.debug("judge without ImageNet evidence: %s", exc)
                self.mapper = None
            else:
                self.row_of = {int(i): n for n, i in enumerate(ids.tolist())}
                by_label: dict[str, list[int]] = {}
                for i, n in self.row_of.items():
                    by_label.setdefault(self.label_of.get(i, ""), []).append(n)
                rng = np.random.default_rng(0)
                for label, rows in by_label.items():
                    if not label or is_clutter_label(label):
                        continue
                    rows_a = np.asarray(rows)
                    if len(rows_a) > 256:  # the mean of a large folder needs no more than a sample
                        rows_a = rng.choice(rows_a, 256, replace=False)
                    self.label_dist[label] = self._dense_rows(rows_a).mean(axis=0)

    def _measure_tightness(self, coll: Collection) -> None:
        """Per folder, the median cosine of its images to their nearest neighbour in the same folder
        (on a sample). A web image's best cosine means little until it is set against how alike
        the folder it lands in is: a diverse folder (ants in every pose) is found at lower cosines
        than a tight one (cars from the side) even when it holds the concept. Clutter, unlabelled
        and one-image folders get the typical value."""
        rng = np.random.default_rng(0)
        picks = {label: (ids if len(ids) <= self.TIGHTNESS_SAMPLE else
                         rng.choice(ids, self.TIGHTNESS_SAMPLE, replace=False).tolist())
                 for label, ids in sorted(labelled_classes(coll, 2).items())}
        if not picks:
            return
        flat = np.asarray([i for ids in picks.values() for i in ids], np.int64)
        vectors = np.asarray(coll.index.get_vectors(flat), np.float32)
        start = 0
        for label, ids in picks.items():
            V = vectors[start:start + len(ids)]
            start += len(ids)
            S = V @ V.T
            np.fill_diagonal(S, -np.inf)
            self.tightness[label] = float(np.median(S.max(axis=1)))
        self.typical_tightness = float(np.median(list(self.tightness.values())))

    def tightness_of(self, label: str) -> float:
        return self.tightness.get(label, self.typical_tightness)

    @property
    def has_classifier(self) -> bool:
        return self.mapper is not None

    def _dense_rows(self, rows: np.ndarray) -> np.ndarray:
        m = self.mapper
        out = np.zeros((len(rows), len(m.class_names)), np.float32)
        if len(rows):
            np.put_along_axis(out, m.top_idx[rows].astype(np.int64), m.top_prob[rows], axis=1)
        return out

    def dist_of_ids(self, ids: Sequence[int]) -> np.ndarray:
        rows = np.asarray([self.row_of[i] for i in ids if i in self.row_of], dtype=np.int64)
        return self._dense_rows(rows)

    def dist_of_vector(self, vector: np.ndarray) -> np.ndarray:
        idx, prob = self.mapper.class_probs(np.asarray(vector, np.float32).reshape(1, -1))
        out = np.zeros(len(self.mapper.class_names), np.float32)
        out[idx[0].astype(np.int64)] = prob[0]
        return out


def context(coll: Collection) -> ClassContext:
    """The collection's judge context, rebuilt when the indexed set changes."""
    from ..textsearch.index import fingerprint

    fp = fingerprint(coll.index.ids())
    holder = coll.cache("judge_context", dict)
    if holder.get("fp") != fp:
        holder.clear()
        holder.update(fp=fp, ctx=ClassContext(coll))
    return holder["ctx"]


def _bhattacharyya(p: np.ndarray, q: np.ndarray) -> float:
    sp, sq = float(p.sum()), float(q.sum())
    if sp <= 0 or sq <= 0:
        return 0.0
    return float(np.sqrt((p / sp) * (q / sq)).sum())


def gather(ctx: ClassContext, kind: str, ids: Sequence[int], scores: Sequence[float],
           query_vector: np.ndarray | None = None, closeness: float | None = None) -> Evidence:
    """Evidence from a judged answer: ``ids``/``scores`` best first (the query image and anything
    the caller left out already removed)."""
    ids = [int(i) for i in ids]
    s = np.asarray(scores, dtype=np.float64)
    values: dict[str, float] = {}
    if not len(s):
        values.update(s1=0.0, s5=0.0, purity=0.0, s_label=0.0, margin=0.0)
        return Evidence(kind, values)
    values["s1"] = float(s[0])
    values["s5"] = float(s[:5].mean())
    labels = [ctx.label_of.get(i, "") for i in ids]
    votes: dict[str, float] = {}
    for lb, sc in zip(labels[:TOP], s[:TOP], strict=False):
        if lb and not is_clutter_label(lb):
            votes[lb] = votes.get(lb, 0.0) + float(sc)
    top = max(votes, key=lambda k: votes[k]) if votes else ""
    n_top = sum(1 for lb in labels[:TOP] if top and lb == top)
    values["purity"] = n_top / min(TOP, len(s))
    mine = s[[n for n, lb in enumerate(labels) if top and lb == top]][:5]
    values["s_label"] = float(mine.mean()) if len(mine) else float(s[0])
    others = s[[n for n, lb in enumerate(labels) if lb != top and lb and not is_clutter_label(lb)]][:5]
    values["margin"] = values["s_label"] - (float(others.mean()) if len(others) else 0.0)
    if kind == "image" and ctx.has_classifier and query_vector is not None:
        pq = ctx.dist_of_vector(query_vector)
        hits = ctx.dist_of_ids(ids[:TOP])
        values["agree"] = _bhattacharyya(pq, hits.mean(axis=0)) if len(hits) else 0.0
        lab = ctx.label_dist.get(top)
        values["agree_label"] = _bhattacharyya(pq, lab) if lab is not None else values["agree"]
    if closeness is not None:
        values["closeness"] = float(closeness)
    return Evidence(kind, values, top, n_top)


# ---------------------------------------------------------------------------------------------
# The model and its thresholds
# ---------------------------------------------------------------------------------------------


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, coef, intercept) of an L2-regularised logistic regression (Newton steps):
    a few features and a few thousand cases need nothing bigger, and the query path only takes a
    dot product."""
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-9] = 1.0
    Z = np.hstack([(X - mean) / scale, np.ones((len(X), 1))])
    w = np.zeros(Z.shape[1])
    reg = np.full(Z.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(Z @ w, -30, 30)))
        grad = Z.T @ (p - y) + reg * w
        H = (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return mean, scale, w[:-1], float(w[-1])


def folds_of(cls: np.ndarray, k: int) -> np.ndarray:
    """Fold number of each case: whole folders to a fold, dealt out in a fixed random order."""
    ug = np.unique(cls)
    order = np.random.default_rng(0).permutation(len(ug))
    fold_of = {int(ug[j]): n % k for n, j in enumerate(order)}
    return np.asarray([fold_of[int(c)] for c in cls], dtype=int)


def logistic_probs(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float
                   ) -> np.ndarray:
    """p(covered) of each row of ``X`` under a model ``fit_logistic`` returned."""
    z = (X - mean) / scale @ coef + intercept
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def out_of_fold(X: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each case's probability from a model fitted on the other folds: what a model that never saw
    the case's folder says of it, the way it will judge a concept it has never seen."""
    p = np.full(len(y), np.nan)
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        p[test] = logistic_probs(X[test], *fit_logistic(X[train], y[train].astype(float)))
    return p


@dataclass
class JudgeModel:
    """A fitted judge for one query kind. The calibration cases' probabilities are kept (a few
    hundred numbers) so a new precision target needs no new calibration."""

    kind: str
    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    cal_p: np.ndarray  # probabilities of the threshold-calibration cases
    cal_y: np.ndarray  # their truth (1 covered, 0 absent)
    t_mid: float
    cal_g: np.ndarray | None = None  # the folder each calibration case came from
    metrics: dict[str, Any] = field(default_factory=dict)
    web: JudgeModel | None = None  # the web check's model, for answers this one leaves uncertain
    _thresholds: dict[tuple[float, float], tuple[float, float]] = field(default_factory=dict, repr=False, compare=False)

    def probability(self, ev: Evidence) -> float:
        return float(self.probabilities(ev.vector(self.features)[None, :])[0])

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """``probability`` for many cases at once: rows of ``X`` hold the values of ``features``."""
        return logistic_probs(X, self.mean, self.scale, self.coef, self.intercept)

    def thresholds(self, precision: float, confidence: float = COVERAGE_CONFIDENCE) -> tuple[float, float]:
        """(t_low, t_high) meeting ``precision`` with probability ``confidence`` (``precision_thresholds``)."""
        key = (round(float(precision), 6), round(float(confidence), 6))
        cached = self._thresholds.get(key)
        if cached is None:
            cached = self._thresholds[key] = precision_thresholds(self.cal_p, self.cal_y, precision, self.cal_g,
                                                                  delta=1.0 - float(confidence))
        return cached

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "features": list(self.features), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept,
                "cal_p": [round(float(x), 5) for x in self.cal_p], "cal_y": self.cal_y.astype(int).tolist(),
                "cal_g": None if self.cal_g is None else np.asarray(self.cal_g).astype(int).tolist(),
                "t_mid": self.t_mid, "metrics": self.metrics,
                "web": self.web.as_dict() if self.web is not None else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JudgeModel:
        return cls(str(d["kind"]), tuple(d["features"]), np.asarray(d["mean"], float),
                   np.asarray(d["scale"], float), np.asarray(d["coef"], float), float(d["intercept"]),
                   np.asarray(d["cal_p"], float), np.asarray(d["cal_y"], int), float(d["t_mid"]),
                   None if d.get("cal_g") is None else np.asarray(d["cal_g"], int), dict(d.get("metrics") or {}),
                   cls.from_dict(d["web"]) if d.get("web") else None)


@dataclass
class Decision:
    outcome: str  # LIKELY (covered) | UNCERTAIN | NO_MATCH (not covered)
    weak: bool  # the forced decision: should the collection grow?
    probability: float | None
    reason: str


def decide(model: JudgeModel, ev: Evidence, precision: float, confidence: float = COVERAGE_CONFIDENCE) -> Decision:
    p = model.probability(ev)
    t_low, t_high = model.thresholds(precision, confidence)
    if p >= t_high:
        outcome = LIKELY
    elif p <= t_low:
        outcome = NO_MATCH
    else:
        outcome = UNCERTAIN
    weak = p < model.t_mid
    word = {LIKELY: "covered", NO_MATCH: "not covered", UNCERTAIN: "uncertain"}[outcome]
    return Decision(outcome, weak, p, f"{word} (p={p:.2f}): {ev.describe()}")


def logit(p: float) -> float:
    q = min(max(float(p), 1e-6), 1.0 - 1e-6)
    return math.log(q / (1.0 - q))
