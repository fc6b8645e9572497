"""Expand many terms in one run; one failing term never stops the others."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import IMRSError
from ..progress import ProgressArg
from ..slug import safe_slug
from ..web.download import DownloadPolicy
from .grow import ExpansionReport, expand
from .sources import as_chain
from .terms import clean_term

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)

BatchProgress = Callable[[int, int, str], None]  # (term index, total, message)


@dataclass
class TermResult:
    term: str
    slug: str
    added: int = 0
    duplicates: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)  # distinct failure reasons, most common first
    error: str | None = None  # the whole term failed (no provider answered, ...)
    report: ExpansionReport | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchReport:
    results: list[TermResult] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def added(self) -> int:
        return sum(r.added for r in self.results)

    @property
    def failed_terms(self) -> list[TermResult]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> str:
        rows = [("term", "folder", "added", "dups", "failed", "notes")]
        for r in self.results:
            note = f"ERROR: {r.error}" if r.error else "; ".join(r.reasons[:3])
            rows.append((r.term or "''", f"dynamic_{r.slug}", str(r.added), str(r.duplicates), str(r.failed),
                         note))
        widths = [max(len(row[c]) for row in rows) for c in range(5)]
        lines = ["  ".join(row[c].ljust(widths[c]) for c in range(5)) + "  " + row[5] for row in rows]
        lines.insert(1, "-" * min(120, len(lines[0]) + 10))
        lines.append(f"{len(self.results)} term(s): {self.added} image(s) added, "
                     f"{sum(r.duplicates for r in self.results)} duplicate(s), "
                     f"{sum(r.failed for r in self.results)} failed download(s), "
                     f"{len(self.failed_terms)} term(s) failed, in {self.elapsed:.1f}s")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"elapsed": round(self.elapsed, 3),
                "terms": [{"term": r.term, "slug": r.slug, "added": r.added, "duplicates": r.duplicates,
                           "failed": r.failed, "reasons": r.reasons, "error": r.error,
                           "report": r.report.as_dict() if r.report else None} for r in self.results]}


def _reasons(report: ExpansionReport) -> list[str]:
    counts: dict[str, int] = {}
    for _, why in report.failures:
        key = why.split(":", 1)[0] if why.startswith(("http ", "timeout", "too large", "corrupt")) else why
        counts[key] = counts.get(key, 0) + 1
    return [f"{why} (x{n})" if n > 1 else why for why, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def expand_batch(coll: Collection, terms: Iterable[str], n: int = 20, policy: DownloadPolicy | None = None,
                 phash_threshold: int = 4, providers: Any = None, progress: BatchProgress | None = None,
                 term_progress: ProgressArg = None) -> BatchReport:
    """Expand each term in turn (downloads within a term run in parallel). Terms that reduce to the
    same folder are expanded once."""
    t0 = time.perf_counter()
    chain = as_chain(providers)
    todo: list[str] = []
    seen: set[str] = set()
    for t in terms:
        term = clean_term(t)
        slug = safe_slug(term)
        if slug not in seen:
            seen.add(slug)
            todo.append(term)
    out = BatchReport()
    total = len(todo)
    for i, term in enumerate(todo):
        if progress:
            progress(i, total, f"expanding '{term}'")
        result = TermResult(term=term, slug=safe_slug(term))
        t1 = time.perf_counter()
        try:
            rep = expand(coll, term, n=n, policy=policy, phash_threshold=phash_threshold, providers=chain,
                         progress=term_progress)
            result.report = rep
            result.added, result.duplicates, result.failed = rep.kept, len(rep.duplicates), len(rep.failures)
            result.reasons = _reasons(rep)
            msg = f"'{term}': {rep.kept} added, {len(rep.duplicates)} duplicate(s), {len(rep.failures)} failed"
        except IMRSError as exc:
            result.error = " ".join(str(exc).split())
            msg = f"'{term}': failed: {result.error}"
        except Exception as exc:  # noqa: BLE001 - a bug for one term must not lose the others' work
            log.warning("expansion of %r crashed", term, exc_info=True)
            result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            msg = f"'{term}': crashed: {result.error}"
        result.elapsed = time.perf_counter() - t1
        out.results.append(result)
        if progress:
            progress(i + 1, total, msg)
    out.elapsed = time.perf_counter() - t0
    return out
