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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import IMRSError

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

QUERY_KINDS = ("text", "image", "textmap", "metadata")


@dataclass(frozen=True)
class CoverageThresholds:
    """``best_min``: the top score must reach this; ``good_min``/``min_good``: at least ``min_good``
    hits must score ``good_min`` or more."""

    best_min: float
    good_min: float
    min_good: int = 3
    #: Web images kept by an expansion must score at least this against the query (None: good_min).
    keep_floor: float | None = None

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

    @property
    def floor(self) -> float:
        return self.good_min if self.keep_floor is None else self.keep_floor

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CoverageThresholds:
        return cls(float(d["best_min"]), float(d["good_min"]), int(d["min_good"]),
                   None if d.get("keep_floor") is None else float(d["keep_floor"]))

    def confidence(self, score: float) -> str:
        """A label a person can read next to a raw score: at or above the bar a best hit must
        reach is a likely match; between the two bars, uncertain; below both, no match."""
        if score >= max(self.best_min, self.good_min):
            return LIKELY
        if score >= min(self.best_min, self.good_min):
            return UNCERTAIN
        return NO_MATCH


LIKELY, UNCERTAIN, NO_MATCH = "likely match", "uncertain", "no match"


# (backbone name or family, query kind) -> thresholds; the name wins over the family.
_CLIP_TEXT = CoverageThresholds(best_min=0.25, good_min=0.22, min_good=3, keep_floor=0.20)
_CLIP_IMAGE = CoverageThresholds(best_min=0.75, good_min=0.70, min_good=3, keep_floor=0.60)
_EFFNET_IMAGE = CoverageThresholds(best_min=0.53, good_min=0.48, min_good=3, keep_floor=0.35)
#: Text on an image-only backbone goes through hierarchy-aware ConSE (``imrs.textsearch.conse``):
#: the query vector is a prototype of the best images, so its cosine scores are high whether or not
#: the collection has the concept. The class-space scores that chose those images, times how close
#: ImageNet's classes are to the query at all, do separate the two (median best 0.70-0.73 for
#: classes present, 0.04-0.09 for absent ones), so they are what is judged, on this scale.
_TEXTMAP = CoverageThresholds(best_min=0.34, good_min=0.14, min_good=4, keep_floor=0.05)
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

CLUTTER_WORDS = ("background", "clutter", "misc", "other", "unknown", "unsorted", "random")


def is_clutter_label(label: str) -> bool:
    """Folders like ``BACKGROUND_Google`` hold unrelated images on purpose: their images never
    name a concept (no expansion term, no small-class allowance)."""
    low = label.lower()
    return not low.strip() or any(w in low for w in CLUTTER_WORDS)


def effective_kind(backbone: str, kind: str) -> str:
    """"text" on a backbone without a text tower is judged as "textmap" (class-space scores)."""
    if kind not in QUERY_KINDS:
        raise IMRSError(f"query kind must be one of {QUERY_KINDS}, not {kind!r}")
    if kind == "text":
        try:
            from ..encoders import backbone_info

            if not backbone_info(backbone).supports_text:
                return "textmap"
        except IMRSError:
            pass
    return kind


def builtin_thresholds(backbone: str, kind: str) -> CoverageThresholds:
    kind = effective_kind(backbone, kind)
    try:
        from ..encoders import backbone_info

        family = backbone_info(backbone).family
    except IMRSError:
        family = ""
    return (DEFAULT_THRESHOLDS.get((backbone, kind)) or DEFAULT_THRESHOLDS.get((family, kind))
            or GENERIC_THRESHOLDS[kind])


def thresholds_for(backbone: str, kind: str = "image", *, calibrated: dict[str, CoverageThresholds] | None = None,
                   settings: Settings | None = None, use_env: bool = True) -> CoverageThresholds:
    """Thresholds for ``backbone`` and a query kind: the collection's calibration when it has one
    (``imrs calibrate``), else the built-in values, then the settings' overrides
    (``IMRS_COVERAGE_*``)."""
    return thresholds_with_source(backbone, kind, calibrated=calibrated, settings=settings, use_env=use_env)[0]


def thresholds_with_source(backbone: str, kind: str = "image", *,
                           calibrated: dict[str, CoverageThresholds] | None = None,
                           settings: Settings | None = None,
                           use_env: bool = True) -> tuple[CoverageThresholds, str]:
    kind = effective_kind(backbone, kind)
    if calibrated and kind in calibrated:
        base, source = calibrated[kind], "calibrated"
    else:
        base, source = builtin_thresholds(backbone, kind), "default"
    if not use_env:
        return base, source
    from ..config import Settings as _Settings

    overrides = (settings or _Settings.from_env()).coverage_overrides()
    if overrides:
        return base.with_overrides(**overrides), "env"
    return base, source


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


def check_coverage(hits: Sequence[Any], thresholds: CoverageThresholds, what: str = "score",
                   class_size: int | None = None) -> Coverage:
    """``hits``: SearchHits (anything with ``.score``) or plain scores, any order.

    ``class_size``: how many images the collection holds of the best hit's concept (its folder).
    A class smaller than ``min_good`` is covered when all of it is found: a demo folder of four
    watches cannot produce five good watch hits, and asking for more would fetch web images for a
    concept the collection already answers perfectly."""
    scores = sorted((_score(h) for h in hits), reverse=True)
    t = thresholds
    if not scores:
        return Coverage(True, "no results", float("nan"), 0, t)
    best = scores[0]
    n_good = sum(s >= t.good_min for s in scores)
    need = t.min_good if class_size is None else max(1, min(t.min_good, class_size))
    if best < t.best_min:
        return Coverage(True, f"best {what} {best:.3f} < {t.best_min:.2f}", best, n_good, t)
    if n_good < need:
        return Coverage(True, f"only {n_good} hit(s) with {what} >= {t.good_min:.2f} (want {need})",
                        best, n_good, t)
    return Coverage(False, f"best {what} {best:.3f}, {n_good} hit(s) >= {t.good_min:.2f}", best, n_good, t)
