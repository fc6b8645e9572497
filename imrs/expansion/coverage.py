"""Is a result list good enough, or should the collection grow?

A query is *weakly covered* when its best hit is poor, or when only a handful of hits are decent
(one lucky near-match among unrelated images is not coverage). Cosine scores mean different
things per backbone and per query kind -- CLIP text->image scores of 0.3 are excellent while
image->image scores of 0.3 are noise -- so the thresholds are looked up per (backbone, kind).

The EfficientNet-Lite0 numbers were measured on Caltech-101 (``scripts/bench_expand.py
--thresholds``): 40 classes indexed (8 and 28 images each); queries were held-out images (or the
class names, for text) of those classes -- covered -- versus 40 other classes and the shared photos
-- not covered. The thresholds maximise the balanced accuracy over both collection sizes: 0.84 for
image queries (0.82 / 0.86), 0.78 for text through hierarchy-aware ConSE (0.79 / 0.76; class-space
scores times closeness, re-measured for ``imrs.textsearch``). CLIP numbers are the
usual ranges for ViT-B/32 (its weights are not available offline here, so they are not measured).
Every value can be overridden per call, or globally with ``IMRS_COVERAGE_BEST_MIN``,
``IMRS_COVERAGE_GOOD_MIN`` and ``IMRS_COVERAGE_MIN_GOOD``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import IMRSError

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)

QUERY_KINDS = ("text", "image", "textmap", "metadata")


@dataclass(frozen=True)
class CoverageThresholds:
    """``best_min``: the top score must reach this; ``good_min``/``min_good``: at least ``min_good``
    hits must score ``good_min`` or more."""

    best_min: float
    good_min: float
    min_good: int = 3

    def __post_init__(self) -> None:
        if self.min_good < 0:
            raise IMRSError(f"min_good must be >= 0, not {self.min_good}")

    def with_overrides(self, best_min: float | None = None, good_min: float | None = None,
                       min_good: int | None = None) -> CoverageThresholds:
        changes: dict[str, Any] = {}
        if best_min is not None:
            changes["best_min"] = float(best_min)
        if good_min is not None:
            changes["good_min"] = float(good_min)
        if min_good is not None:
            changes["min_good"] = int(min_good)
        return replace(self, **changes) if changes else self

    def describe(self) -> str:
        return f"best >= {self.best_min:.2f} and {self.min_good} hit(s) >= {self.good_min:.2f}"


# (backbone name or family, query kind) -> thresholds; the name wins over the family.
_CLIP_TEXT = CoverageThresholds(best_min=0.25, good_min=0.22, min_good=3)
_CLIP_IMAGE = CoverageThresholds(best_min=0.75, good_min=0.70, min_good=3)
_EFFNET_IMAGE = CoverageThresholds(best_min=0.53, good_min=0.48, min_good=3)
#: Text on an image-only backbone goes through hierarchy-aware ConSE (``imrs.textsearch.conse``):
#: the query vector is a prototype of the best images, so its cosine scores are high whether or not
#: the collection has the concept. The class-space scores that chose those images, times how close
#: ImageNet's classes are to the query at all, do separate the two (median best 0.70-0.73 for
#: classes present, 0.04-0.09 for absent ones), so they are what is judged, on this scale.
_TEXTMAP = CoverageThresholds(best_min=0.34, good_min=0.14, min_good=4)
DEFAULT_THRESHOLDS: dict[tuple[str, str], CoverageThresholds] = {
    ("open_clip", "text"): _CLIP_TEXT,
    ("open_clip", "image"): _CLIP_IMAGE,
    ("efficientnet_lite0", "image"): _EFFNET_IMAGE,
    ("efficientnet_lite0", "textmap"): _TEXTMAP,
}
#: For backbones not measured here (ResNet/VGG/ViT weights are not available offline): their pooled
#: features behave like EfficientNet's, so its numbers are the starting point. Override as needed.
#: Text answered by the collection's own words (``imrs.textsearch.hybrid``): the judged scores are
#: match strengths in [0, 1] (1 = every query word in a label or caption, 0.9 = a label naming a
#: kind of the query); two strong matches are coverage whatever the backbone.
_METADATA = CoverageThresholds(best_min=0.8, good_min=0.8, min_good=2)
GENERIC_THRESHOLDS = {"image": _EFFNET_IMAGE, "text": _CLIP_TEXT, "textmap": _TEXTMAP, "metadata": _METADATA}

ENV_BEST_MIN = "IMRS_COVERAGE_BEST_MIN"
ENV_GOOD_MIN = "IMRS_COVERAGE_GOOD_MIN"
ENV_MIN_GOOD = "IMRS_COVERAGE_MIN_GOOD"


def _env_number(name: str, cast: type) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return cast(raw)
    except ValueError:
        raise IMRSError(f"{name}={raw!r} is not a {cast.__name__}; unset it or give a number") from None


def thresholds_for(backbone: str, kind: str = "image", family: str | None = None,
                   use_env: bool = True) -> CoverageThresholds:
    """Default thresholds for ``backbone`` and a query kind, then env overrides.

    ``kind``: "image", "text", or "textmap" (text on a backbone without a text tower; asking for
    "text" on such a backbone gives these)."""
    if kind not in QUERY_KINDS:
        raise IMRSError(f"query kind must be one of {QUERY_KINDS}, not {kind!r}")
    supports_text = True
    try:
        from ..encoders import backbone_info

        info = backbone_info(backbone)
        family = family if family is not None else info.family
        supports_text = info.supports_text
    except IMRSError:
        family = family or ""
    if kind == "text" and not supports_text:
        kind = "textmap"
    base = (DEFAULT_THRESHOLDS.get((backbone, kind)) or DEFAULT_THRESHOLDS.get((family, kind))
            or GENERIC_THRESHOLDS[kind])
    if not use_env:
        return base
    return base.with_overrides(_env_number(ENV_BEST_MIN, float), _env_number(ENV_GOOD_MIN, float),
                               _env_number(ENV_MIN_GOOD, int))


@dataclass(frozen=True)
class Coverage:
    weak: bool
    reason: str
    best: float
    n_good: int
    thresholds: CoverageThresholds | None = None

    def __str__(self) -> str:
        return ("weak" if self.weak else "ok") + f": {self.reason}"


def _score(h: Any) -> float:
    return float(h if isinstance(h, int | float) else h.score)


def check_coverage(hits: Sequence[Any], thresholds: CoverageThresholds, what: str = "score") -> Coverage:
    """``hits``: SearchHits (anything with ``.score``) or plain scores, any order."""
    scores = sorted((_score(h) for h in hits), reverse=True)
    t = thresholds
    if not scores:
        return Coverage(True, "no results", float("nan"), 0, t)
    best = scores[0]
    n_good = sum(s >= t.good_min for s in scores)
    if best < t.best_min:
        return Coverage(True, f"best {what} {best:.3f} < {t.best_min:.2f}", best, n_good, t)
    if n_good < t.min_good:
        return Coverage(True, f"only {n_good} hit(s) with {what} >= {t.good_min:.2f} (want {t.min_good})",
                        best, n_good, t)
    return Coverage(False, f"best {what} {best:.3f}, {n_good} hit(s) >= {t.good_min:.2f}", best, n_good, t)


def textmap_scores(coll: Collection, text: str, k: int = 10) -> list[float]:
    """The ``k`` best class-space scores of ``text`` over the collection, times how close ImageNet's
    vocabulary is to the query (image-only backbones; see ``imrs.textsearch.conse``)."""
    from ..textsearch.search import conse_scores, judged_textmap

    scores, _, plan = conse_scores(coll, text)
    return judged_textmap(scores, plan, k)


def query_coverage(coll: Collection, hits: Sequence[Any], query_text: str | None = None,
                   thresholds: CoverageThresholds | None = None, k: int = 10) -> Coverage:
    """Coverage of one query's results, judged on the scores that mean something for the
    collection's backbone: cosine for image queries and CLIP text, class-space scores for text on
    an image-only backbone (falling back to cosine when that mapping is unavailable)."""
    if query_text and not coll.backbone_info.supports_text:
        try:
            scores = textmap_scores(coll, query_text, max(k, len(hits)))
            return check_coverage(scores, thresholds or thresholds_for(coll.backbone, "textmap"),
                                  what="class-space score")
        except (ImportError, IMRSError, AttributeError) as exc:
            log.info("no class-space scores for %r (%s); judging cosine scores", query_text, exc)
            return check_coverage(hits, thresholds or thresholds_for(coll.backbone, "image"))
    return check_coverage(hits, thresholds or thresholds_for(coll.backbone, "text" if query_text else "image"))
