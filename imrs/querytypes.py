"""What goes into the search-and-grow loop and what comes out of it (``imrs.query``): a ``Query``,
the ``Verdict`` on its answer, the web terms proposed, and the ``QueryOutcome`` the CLI prints,
the page draws and the API returns. Plain data, so the loop and its callers share one shape."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import IMRSError
from .expansion.coverage import CoverageThresholds
from .expansion.terms import clean_term

if TYPE_CHECKING:
    from .expansion.grow import ExpansionReport
    from .layout import SearchHit


ImageInput = str | os.PathLike[str] | bytes | Any  # PIL.Image.Image


@dataclass(frozen=True)
class Query:
    """One question to the collection: exactly one of ``text`` / ``image``."""

    text: str | None = None
    image: ImageInput | None = None
    k: int = 10
    qe: int | None = None  # None: settings.qe
    expand: bool = False  # grow from the web when the verdict is weak
    term: str | None = None  # confirmed web search term (image queries grow only with one)
    n_images: int | None = None  # None: settings.expand_n
    exclude_ids: tuple[int, ...] = ()
    where: str | None = None  # filter: source == 'dynamic', label in ['a', 'b'], ... (imrs.filters)
    metadata: bool = True  # text: fuse what the collection says in words (labels, captions, ...)
    web_exemplars: bool = False  # text: also search with a few web images for it (not kept)
    ask_web: bool | None = None  # an uncertain verdict asks the web (None: when growth was asked for)

    def validate(self) -> None:
        if (self.text is None or not str(self.text).strip()) == (self.image is None):
            raise IMRSError("give exactly one of a text or an image query")
        if not 1 <= int(self.k) <= 1000:
            raise IMRSError(f"k must be between 1 and 1000, not {self.k}")
        if self.term is not None and not clean_term(self.term):
            raise IMRSError("the expansion term is empty")

    @property
    def kind(self) -> str:
        return "text" if self.text is not None and str(self.text).strip() else "image"


@dataclass
class Verdict:
    """Is the answer good enough? Always computed; growth only decides what to do with it."""

    weak: bool
    reason: str
    kind: str  # "image" | "text" | "textmap" | "metadata": which scores were judged
    scores: list[float]  # the judged scores, best first
    best: float
    source: str  # "calibrated" | "default" | "env": where the thresholds came from
    label: str  # "likely match" | "uncertain" | "no match"
    thresholds: CoverageThresholds | None = None
    n_good: int = 0
    probability: float | None = None  # the judge's p(covered), when a fitted judge decided
    folder: str = ""  # the folder the answer came from (its leading label)
    web: dict[str, Any] | None = None  # what asking the web said (``judge.WebTest``), when it was asked

    def line(self) -> str:
        word = "weak" if self.weak else "ok"
        return f"coverage {word}: {self.reason} [{self.kind} scores, {self.source} thresholds] -> {self.label}"

    def as_dict(self) -> dict[str, Any]:
        return {"weak": self.weak, "reason": self.reason, "kind": self.kind, "label": self.label,
                "best": _num(self.best), "n_good": self.n_good, "source": self.source,
                "probability": None if self.probability is None else round(self.probability, 4),
                "folder": self.folder, "web": self.web,
                "scores": [round(float(s), 4) for s in self.scores],
                "thresholds": self.thresholds.as_dict() if self.thresholds else None}


@dataclass
class TermCandidate:
    term: str
    score: float
    method: str  # "text" | "clip" | "imagenet" | "neighbours"


@dataclass
class QueryOutcome:
    query: Query
    hits: list[SearchHit]
    verdict: Verdict
    terms: list[TermCandidate] = field(default_factory=list)
    hits_before: list[SearchHit] | None = None
    verdict_before: Verdict | None = None
    report: ExpansionReport | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    stages: tuple[str, ...] = ()  # search improvements applied (``imrs improve``)

    @property
    def grew(self) -> bool:
        return self.report is not None

    def summary(self) -> str:
        """What happened, in the lines a terminal shows above the hits."""
        lines = []
        if self.verdict_before is not None:
            lines.append(f"before: {self.verdict_before.line()}")
        if self.report is not None:
            lines.append(f"grew: {self.report.summary()}")
        if self.error:
            lines.append(f"growth: {self.error}")
        lines.append(self.verdict.line())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        def hit(n: int, h: SearchHit) -> dict[str, Any]:
            return {"rank": n, "score": round(float(h.score), 4), "confidence": h.confidence, "why": list(h.why),
                    "id": h.id, "label": h.label, "source": h.source, "path": str(h.path)}

        return {
            "query": {"text": self.query.text, "image": None if self.query.image is None else
                      (str(self.query.image) if isinstance(self.query.image, str | os.PathLike) else "<image>"),
                      "k": self.query.k, "expand": self.query.expand, "term": self.query.term},
            "verdict": self.verdict.as_dict(),
            "terms": [{"term": t.term, "score": round(float(t.score), 4), "method": t.method} for t in self.terms],
            "hits": [hit(n, h) for n, h in enumerate(self.hits, 1)],
            "before": None if self.verdict_before is None else {
                "verdict": self.verdict_before.as_dict(),
                "hits": [hit(n, h) for n, h in enumerate(self.hits_before or [], 1)]},
            "growth": None if self.report is None else self.report.as_dict(),
            "error": self.error,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "stages": list(self.stages),
        }


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else round(float(x), 4)
