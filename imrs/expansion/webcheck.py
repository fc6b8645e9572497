"""Asking the web, for coverage answers that stay uncertain (step 4 of ``imrs.expansion.judge``).

One photo is one noisy sample of a concept; ten web images of it are ten, and how well they find the
collection, relative to how well they find each other, is a per-concept yardstick no single cosine
has. ``web_evidence`` computes what the web images say, the same for a live check
(``imrs.query.ask_web``) and for calibration (``imrs.expansion.cases``, where other-style views of a
folder's other images stand in for web images); ``web_test`` decides with the web check
``imrs calibrate`` fitted (``JudgeModel.web``), or with a fixed rule on an uncalibrated collection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config import COVERAGE_CONFIDENCE
from .coverage import LIKELY, NO_MATCH, UNCERTAIN
from .judge import ClassContext, Evidence, JudgeModel, decide, logit

#: Fewest web exemplars the web test decides on.
WEB_MIN_EXEMPLARS = 3
#: Web images this alike count once (the same photo on several sites is one sample of the concept).
WEB_SAME_IMAGE = 0.95
#: What the fitted web check reads: the first judgement (as a logit) and what the exemplars say.
WEB_FEATURES = ("p1", "to_collection", "to_each_other", "on_label", "same_folder", "apart", "vs_folder")
#: ...and, when the query lives in the images' space (an image, or text on a backbone with a text
#: tower), how close the query is to the web images.
WEB_QUERY_FEATURE = "to_query"


def web_feature_names(kind: str) -> tuple[str, ...]:
    """What the web check reads for a query kind: ``textmap`` queries have no vector in the
    images' space, so they have no ``to_query``."""
    return WEB_FEATURES if kind == "textmap" else WEB_FEATURES + (WEB_QUERY_FEATURE,)


def _majority(labels: Sequence[str]) -> str:
    """The most frequent label, a tie going to the one ranked first ("" for none)."""
    if not labels:
        return ""
    return max(dict.fromkeys(labels), key=lambda lb: (labels.count(lb), -labels.index(lb)))


def distinct_exemplars(exemplars: np.ndarray) -> np.ndarray:
    """Row numbers of the web images to judge on: a near-copy of an earlier one counts once."""
    E = np.asarray(exemplars, np.float32)
    keep: list[int] = []
    for n in range(len(E)):
        if not keep or float((E[keep] @ E[n]).max()) < WEB_SAME_IMAGE:
            keep.append(n)
    return np.asarray(keep, np.int64)


def web_evidence(ctx: ClassContext, exemplars: np.ndarray, score_rows: Sequence[Sequence[float]],
                 id_rows: Sequence[Sequence[int]], top_label: str, query_vector: np.ndarray | None = None,
                 keep: np.ndarray | None = None) -> dict[str, float] | None:
    """What a handful of web images of the proposed term say, the same for a live check and for
    calibration. ``score_rows``/``id_rows``: each exemplar's best collection hits, best first.
    None: too few distinct images (``keep``: their row numbers, when the caller already has them).

    - ``to_collection``: how well they find the collection (median best cosine);
    - ``to_each_other``: how well they find each other (median of each one's mean cosine to the others);
    - ``on_label``: the share of them whose best five land mostly on the answer's leading folder;
    - ``same_folder``: the share whose best hit is in the folder most of them land in (web images
      of a concept the collection holds agree on where it is; those of an absent one scatter
      over the folders that merely resemble it);
    - ``apart``: median over the images of (best collection cosine - best cosine to another web
      image): a concept the collection lacks is closer to its own web images than to anything held;
    - ``vs_folder``: median over the images of (best collection cosine - how tight the folder of
      that best hit is, ``ClassContext.tightness_of``): found as well as the folder's own images
      find each other, or not;
    - ``to_query`` (with ``query_vector``): median cosine of the query to the web images. A query
      much closer to the web images of its concept than to its best collection hit has found the
      concept outside the collection."""
    keep = distinct_exemplars(exemplars) if keep is None else keep
    if len(keep) < WEB_MIN_EXEMPLARS:
        return None
    E = np.asarray(exemplars, np.float32)[keep]
    score_rows = [list(score_rows[n]) for n in keep]
    id_rows = [[int(i) for i in id_rows[n] if int(i) != -1] for n in keep]
    S = (E @ E.T).astype(np.float64)
    np.fill_diagonal(S, np.nan)
    each_other = float(np.median(np.nanmean(S, axis=1)))
    best = np.asarray([float(r[0]) if len(r) else 0.0 for r in score_rows])
    on_label = 0.0
    if top_label:
        on_label = float(np.mean([_majority([ctx.label_of.get(i, "") for i in row[:5]]) == top_label
                                  for row in id_rows]))
    firsts = [ctx.label_of.get(row[0], "") if row else "" for row in id_rows]
    named = [lb for lb in firsts if lb]
    same_folder = named.count(_majority(named)) / len(firsts) if named else 0.0
    tight = np.asarray([ctx.tightness_of(lb) for lb in firsts])
    out = {"to_collection": float(np.median(best)), "to_each_other": each_other, "on_label": on_label,
           "same_folder": float(same_folder), "apart": float(np.median(best - np.nanmax(S, axis=1))),
           "vs_folder": float(np.median(best - tight))}
    if query_vector is not None:
        out[WEB_QUERY_FEATURE] = float(np.median(E @ np.asarray(query_vector, np.float32).reshape(-1)))
    return out


@dataclass
class WebTest:
    """What a handful of web images of the proposed term said (``web_evidence``) and the outcome,
    with the fitted web check's p(covered) when the collection was calibrated."""

    term: str
    exemplars: int  # distinct web images judged on
    evidence: dict[str, float]
    outcome: str  # LIKELY | NO_MATCH | UNCERTAIN
    probability: float | None = None
    weak: bool | None = None  # the forced decision after the check (None: the rule had no opinion)

    @property
    def to_collection(self) -> float:
        return self.evidence["to_collection"]

    @property
    def to_each_other(self) -> float:
        return self.evidence["to_each_other"]

    @property
    def on_label(self) -> float:
        return self.evidence["on_label"]

    def describe(self) -> str:
        word = {LIKELY: "covered", NO_MATCH: "not covered", UNCERTAIN: "still uncertain"}[self.outcome]
        p = f", p={self.probability:.2f}" if self.probability is not None else ""
        return (f"web check of '{self.term}': {word}{p} ({self.exemplars} web images find the collection at "
                f"{self.to_collection:.2f}, each other at {self.to_each_other:.2f}; "
                f"{self.on_label:.0%} land on the answer's folder, "
                f"{self.evidence['same_folder']:.0%} agree on one folder)")


def web_test(ctx: ClassContext, exemplars: np.ndarray, collection_scores: np.ndarray,
             collection_ids: np.ndarray, top_label: str, term: str, model: JudgeModel | None = None,
             p1: float | None = None, precision: float = 0.95, confidence: float = COVERAGE_CONFIDENCE,
             query_vector: np.ndarray | None = None) -> WebTest | None:
    """A per-concept, self-calibrating test for answers that stay uncertain. Web images of a
    concept resemble each other about as much as the concept's photos ever will; if the
    collection holds the concept, they find its images about as well as they find each other, and
    in the folder the answer came from. If it does not, they find each other much better than
    anything in the collection, and the query is closer to them than to what it found.

    With a calibrated judge (``model.web``, fitted by ``imrs calibrate`` on simulated web images:
    other-style views of other images of the folder) the first judgement ``p1`` and the
    exemplars' evidence are combined and decided at the person's precision; without one (or
    without a value the fitted check reads, e.g. no ``query_vector``), a fixed rule decides.
    ``collection_scores``/``collection_ids``: each exemplar's best collection hits;
    ``query_vector``: the query in the images' space (None for text on an image-only backbone)."""
    keep = distinct_exemplars(exemplars)
    ev = web_evidence(ctx, exemplars, collection_scores, collection_ids, top_label, query_vector, keep)
    if ev is None:
        return None
    m = len(keep)
    stage = model.web if model is not None else None
    if stage is not None and p1 is not None and all(f in ev for f in stage.features if f != "p1"):
        d = decide(stage, Evidence("web", {"p1": logit(p1), **ev}), precision, confidence)
        return WebTest(term, m, ev, d.outcome, d.probability, d.weak)
    to_coll, each_other, on_label = ev["to_collection"], ev["to_each_other"], ev["on_label"]
    if to_coll >= each_other and on_label >= 0.5:
        outcome = LIKELY
    elif to_coll < 0.85 * each_other or (top_label and on_label < 0.25 and to_coll < each_other):
        outcome = NO_MATCH
    else:
        outcome = UNCERTAIN
    return WebTest(term, m, ev, outcome)
