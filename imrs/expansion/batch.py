"""Growth for many terms in one run: one report, and one failing term never stops the others.

The door for one term is ``imrs.query.grow_term``; ``imrs.query.grow_terms`` runs it over a list
through ``run_batch`` for ``imrs expand`` and the page's batch tab, which print and show the same
``BatchReport``. Progress goes through ``imrs.progress``: stage ``"terms"`` counts the terms
(``done`` is the index of the term starting, ``batch_terms`` names it), each term's own stages
("download", "embed", ...) come in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import IMRSError
from ..layout import DYNAMIC_PREFIX
from ..progress import Progress, ProgressArg, Reporter
from ..slug import safe_slug
from .grow import ExpansionReport
from .terms import clean_term

log = logging.getLogger(__name__)

#: ``(term, progress) -> report`` for one term: ``imrs.query.grow_term`` with its settings bound.
GrowOne = Callable[[str, Progress | None], ExpansionReport]


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
            rows.append((r.term or "''", f"{DYNAMIC_PREFIX}{r.slug}", str(r.added), str(r.duplicates), str(r.failed),
                         note))
        widths = [max(len(row[c]) for row in rows) for c in range(5)]
        lines = ["  ".join(row[c].ljust(widths[c]) for c in range(5)) + "  " + row[5] for row in rows]
        lines.insert(1, "-" * min(120, len(lines[0]) + 10))
        lines.append(f"{len(self.results)} term(s): {self.added} image(s) added, "
                     f"{sum(r.duplicates for r in self.results)} duplicate(s), "
                     f"{sum(r.failed for r in self.results)} failed download(s), "
                     f"{len(self.failed_terms)} term(s) failed, in {self.elapsed:.1f}s")
        return "\n".join(lines)

    def rows(self) -> list[dict[str, Any]]:
        """One row per term for a table (the page's summary)."""
        return [{"term": r.term, "added": r.added, "duplicates": r.duplicates, "failed": r.failed,
                 "why": f"error: {r.error}" if r.error else "; ".join(r.reasons[:3]),
                 "seconds": round(r.elapsed, 1)} for r in self.results]

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


def batch_terms(terms: Iterable[str]) -> list[str]:
    """The terms a batch grows, in order: cleaned, and each folder once ("One" and "one" are one)."""
    todo: list[str] = []
    seen: set[str] = set()
    for t in terms:
        term = clean_term(t)
        slug = safe_slug(term)
        if slug not in seen:
            seen.add(slug)
            todo.append(term)
    return todo


def run_batch(terms: Iterable[str], grow: GrowOne, progress: ProgressArg = None,
              on_term: Callable[[TermResult], None] | None = None) -> BatchReport:
    """``grow`` each of ``batch_terms(terms)`` in turn; a term that fails (no provider answered, a
    bug) is a result with its error, and the next term runs. ``on_term`` sees each result as soon
    as its term is done. An exception raised by ``progress`` itself stops the batch (a cancel)."""
    t0 = time.perf_counter()
    todo = batch_terms(terms)
    report = Reporter(progress)
    stop: list[BaseException] = []

    def inner(stage: str, done: int, total: int) -> None:
        try:
            report(stage, done, total)
        except Exception as exc:
            stop.append(exc)
            raise

    out = BatchReport()
    try:
        for i, term in enumerate(todo):
            report("terms", i, len(todo))
            result = TermResult(term=term, slug=safe_slug(term))
            t1 = time.perf_counter()
            try:
                rep = grow(term, inner if report.active else None)
                result.report = rep
                result.added, result.duplicates, result.failed = rep.kept, len(rep.duplicates), len(rep.failures)
                result.reasons = _reasons(rep)
            except Exception as exc:  # noqa: BLE001 - a bug for one term must not lose the others' work
                if stop:  # not the term's failure: the caller's progress callback asked to stop
                    raise stop[0] from None
                if isinstance(exc, IMRSError):
                    result.error = " ".join(str(exc).split())
                else:
                    log.warning("expansion of %r crashed", term, exc_info=True)
                    result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            result.elapsed = time.perf_counter() - t1
            out.results.append(result)
            if on_term is not None:
                on_term(result)
        report("terms", len(todo), len(todo))
    finally:
        report.close()
    out.elapsed = time.perf_counter() - t0
    return out
