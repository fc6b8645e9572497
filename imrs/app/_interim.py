"""TEMPORARY stand-in for the pipeline contract (imrs/query.py, imrs/config.Settings, imrs/progress.py)
until it lands on main; ``imrs.app.pipeline`` imports from here only while those modules are absent.
Delete this file when merging main. It is deliberately minimal: the app must never rely on anything
here that the contract does not promise.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Progress = Callable[[str, int, int], None]


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    home: Path = Path("runs")
    backbone: str = "clip_vit_b32"
    indexer: str = "hnsw"
    device: str | None = None
    expand_n: int = 8
    expand_max_side: int = 512
    expand_phash_distance: int = 6
    expand_workers: int = 8
    provider: str = "auto"
    allow_loopback: bool = False
    wikimedia_api: str | None = None
    urls_file: str | None = None
    coverage_best_min: float | None = None
    coverage_good_min: float | None = None
    coverage_min_good: int | None = None
    auto_confirm_term: bool = False
    qe: int = 0
    root: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        e = os.environ if env is None else env
        s = cls(home=Path(e.get("IMRS_HOME", "runs")), backbone=e.get("IMRS_BACKBONE", "clip_vit_b32"),
                indexer=e.get("IMRS_INDEXER", "hnsw"), provider=e.get("IMRS_EXPAND_PROVIDER", "auto") or "auto",
                allow_loopback=_truthy(e.get("IMRS_EXPAND_ALLOW_LOOPBACK")),
                wikimedia_api=e.get("IMRS_WIKIMEDIA_API") or None, urls_file=e.get("IMRS_EXPAND_URLS_FILE") or None,
                root=e.get("IMRS_ROOT") or None)
        return s.replace(**overrides) if overrides else s

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Query:
    text: str | None = None
    image: Any = None
    k: int = 10
    qe: int | None = None
    expand: bool = False
    term: str | None = None
    n_images: int | None = None
    exclude_ids: tuple[int, ...] = ()


@dataclass
class Verdict:
    weak: bool
    reason: str
    kind: str
    scores: list[float]
    best: float
    source: str
    label: str


@dataclass
class TermCandidate:
    term: str
    score: float
    method: str


@dataclass
class QueryOutcome:
    query: Query
    hits: list[Any]
    verdict: Verdict
    terms: list[TermCandidate] = field(default_factory=list)
    hits_before: list[Any] | None = None
    verdict_before: Verdict | None = None
    report: Any = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _verdict(coll: Any, hits: list[Any], text: str | None, k: int) -> Verdict:
    from ..expansion.coverage import query_coverage

    cov = query_coverage(coll, hits, text, k=k)
    kind = ("text" if coll.encoder.supports_text else "textmap") if text else "image"
    label = "no match" if cov.weak and cov.n_good == 0 else "uncertain" if cov.weak else "likely match"
    return Verdict(cov.weak, cov.reason, kind, [h.score for h in hits], cov.best, "default", label)


def _label_hits(hits: list[Any], verdict: Verdict, coll: Any) -> None:
    from ..expansion.coverage import thresholds_for

    t = thresholds_for(coll.backbone, "image")
    for h in hits:
        good = h.score >= t.good_min
        h.confidence = ("likely match" if good and verdict.kind != "textmap" else
                        verdict.label if verdict.kind == "textmap" else "uncertain" if h.score >= t.good_min * 0.85
                        else "no match")
        h.why = ("visual",)


def _policy(s: Settings) -> Any:
    from ..web.download import DownloadPolicy

    return DownloadPolicy(max_side=s.expand_max_side, allow_loopback=s.allow_loopback)


def _providers(s: Settings) -> Any:
    from ..expansion import make_providers

    return make_providers(s.provider, s.wikimedia_api, s.urls_file)


def run_query(coll: Any, query: Query, settings: Settings | None = None, progress: Progress | None = None
              ) -> QueryOutcome:
    from ..expansion import expand
    from ..expansion.terms import infer_term

    s = settings or Settings.from_env()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    vec = coll.embed_query_text(query.text) if query.text else coll.embed_query_image(query.image)
    timings["encode"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    k = query.k + len(query.exclude_ids)
    hits = [h for h in coll.search_vectors(vec, k, qe=query.qe if query.qe is not None else s.qe)[0]
            if h.id not in query.exclude_ids][: query.k]
    timings["search"] = time.perf_counter() - t1
    verdict = _verdict(coll, hits, query.text, query.k)
    _label_hits(hits, verdict, coll)
    if query.text:
        terms = [TermCandidate(query.text, 1.0, "text")]
    else:
        g = infer_term(coll, vec, hits)
        terms = [TermCandidate(t, sc, "imagenet") for t, sc in (g.candidates if g else [])]
    out = QueryOutcome(query, hits, verdict, terms, timings=timings)
    term = query.term or (terms[0].term if query.text or (s.auto_confirm_term and terms) else None)
    if query.expand and verdict.weak and term:
        t2 = time.perf_counter()
        try:
            rep = expand(coll, term, n=query.n_images or s.expand_n, policy=_policy(s),
                         phash_threshold=s.expand_phash_distance, providers=_providers(s), progress=progress,
                         query_vector=vec, k=k)
            out.report = rep
            out.hits_before, out.verdict_before = hits, verdict
            out.hits = [h for h in coll.search_vectors(vec, k)[0] if h.id not in query.exclude_ids][: query.k]
            out.verdict = _verdict(coll, out.hits, query.text, query.k)
            _label_hits(out.hits, out.verdict, coll)
        except Exception as exc:  # noqa: BLE001 - growth failure is reported, hits stay valid
            out.error = str(exc)
        timings["grow"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    return out


def grow_term(coll: Any, term: str, settings: Settings | None = None, n: int | None = None,
              progress: Progress | None = None) -> Any:
    from ..expansion import expand

    s = settings or Settings.from_env()
    return expand(coll, term, n=n or s.expand_n, policy=_policy(s), phash_threshold=s.expand_phash_distance,
                  providers=_providers(s), progress=progress)
