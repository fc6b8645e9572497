"""Where candidate image URLs come from: DuckDuckGo, Wikimedia, or a fixed list.

Providers only *find* URLs; nothing here downloads an image (``imrs.web.download`` does, with the
SSRF guard). A provider that cannot do its job raises ``NetworkError`` with one line, and
``ProviderChain`` turns that into a fallback to the next provider plus a report row, so the UI
can say "DuckDuckGo was rate-limited, used Wikimedia" instead of failing.

The sources live one per module (:mod:`.duckduckgo`, :mod:`.wikimedia`; the shared hit type and
checks in :mod:`.hits`); this module holds the fixed-list provider, the chain that asks them in
turn, and the default chain. Their names are re-exported here, where callers import them from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import IMRSError
from .download import DEFAULT_USER_AGENT
from .duckduckgo import DUCKDUCKGO_URL, DuckDuckGoProvider, GuardedDuckDuckGo
from .hits import (
    API_MAX_BYTES,
    ImageHit,
    ImageProvider,
    ProviderReport,
    api_limits,
    one_line,
    parse_json,
    strip_html,
    url_key,
    web_url_problem,
)
from .wikimedia import COMMONS_API, WIKIPEDIA_API, WikimediaProvider

__all__ = [
    "API_MAX_BYTES", "COMMONS_API", "DUCKDUCKGO_URL", "WIKIPEDIA_API", "DuckDuckGoProvider", "GuardedDuckDuckGo",
    "ImageHit", "ImageProvider", "ProviderChain", "ProviderReport", "StaticProvider", "WikimediaProvider",
    "api_limits", "default_chain", "parse_json", "strip_html", "url_key",
]

log = logging.getLogger(__name__)


# --- fixed lists -----------------------------------------------------------------------------------


class StaticProvider:
    """Hits from a list you already have (a mapping term -> URLs, or one list for every term).

    Entries that are not http(s) URLs are kept aside with a reason (``rejected_for``) so that the
    expansion report can name them, instead of dropping them without a word.
    """

    def __init__(
        self,
        hits: Iterable[ImageHit | str] | Mapping[str, Iterable[ImageHit | str]],
        name: str = "static",
    ) -> None:
        self.name = name
        self._rejected: list[tuple[str | None, str, str]] = []  # (term or None, entry, why)
        if isinstance(hits, Mapping):
            self._by_term: dict[str, list[ImageHit]] | None = {
                self._norm(t): self._hits(v, self._norm(t)) for t, v in hits.items()
            }
            self._all: list[ImageHit] = []
        else:
            self._by_term = None
            self._all = self._hits(hits, None)

    @staticmethod
    def _norm(term: str) -> str:
        return " ".join(term.casefold().split())

    def _hit(self, h: ImageHit | str) -> ImageHit:
        if isinstance(h, ImageHit):
            return replace(h, provider=h.provider or self.name)
        return ImageHit(url=str(h).strip(), provider=self.name)

    def _hits(self, entries: Iterable[ImageHit | str], term: str | None) -> list[ImageHit]:
        out = []
        for entry in entries:
            hit = self._hit(entry)
            why = web_url_problem(hit.url)
            if why is None:
                out.append(hit)
            else:
                self._rejected.append((term, hit.url, why))
        return out

    @classmethod
    def from_file(cls, path: str | Path, name: str = "static") -> StaticProvider:
        """One URL per line, or ``term<TAB>url`` lines for per-term lists; ``#`` starts a comment.

        A line that is not an http(s) URL is reported with its line number (``rejected_for``)."""
        numbered = [(n, ln.strip()) for n, ln in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1)]
        numbered = [(n, ln) for n, ln in numbered if ln and not ln.startswith("#")]
        bad: list[tuple[str | None, str, str]] = []
        if any("\t" in ln for _, ln in numbered):
            by_term: dict[str, list[ImageHit | str]] = {}
            for n, ln in numbered:
                term, _, url = ln.partition("\t")
                why = web_url_problem(url.strip()) if url.strip() else "no URL after the tab"
                if why is None:
                    by_term.setdefault(term, []).append(url.strip())
                else:
                    bad.append((cls._norm(term) if url.strip() else None, ln, f"line {n}: {why}"))
            provider = cls(by_term, name=name)
        else:
            good = []
            for n, ln in numbered:
                why = web_url_problem(ln)
                if why is None:
                    good.append(ln)
                else:
                    bad.append((None, ln, f"line {n}: {why}"))
            provider = cls(good, name=name)
        provider._rejected = bad + provider._rejected
        return provider

    def rejected_for(self, term: str) -> list[tuple[str, str]]:
        """(entry, why) for the unusable entries that concern ``term`` (all of a plain list)."""
        key = self._norm(term)
        return [(entry, why) for t, entry, why in self._rejected if t is None or t == key]

    def search(self, term: str, n: int) -> list[ImageHit]:
        pool = self._all if self._by_term is None else self._by_term.get(self._norm(term), [])
        return [replace(h) for h in pool[: max(0, n)]]


# --- chain -----------------------------------------------------------------------------------------


class ProviderChain:
    """Ask providers in order until enough distinct URLs are found; record how each one did."""

    def __init__(self, providers: Sequence[ImageProvider], min_results: int | None = None) -> None:
        if not providers:
            raise ValueError("ProviderChain needs at least one provider")
        self.providers = list(providers)
        self.min_results = min_results

    def search(self, term: str, n: int) -> tuple[list[ImageHit], list[ProviderReport]]:
        """Up to ``n`` distinct hits and one report row per provider asked.

        A provider is only asked when the earlier ones produced fewer than ``min_results``
        (default: ``n``) hits. Provider failures never raise here: when every provider fails
        the hits are empty and the report says why.
        """
        needed = n if self.min_results is None else min(self.min_results, n)
        hits: list[ImageHit] = []
        seen: set[str] = set()
        report: list[ProviderReport] = []
        for provider in self.providers:
            if len(hits) >= max(needed, 1):
                break
            t0 = time.monotonic()
            name = getattr(provider, "name", type(provider).__name__)
            try:
                found = provider.search(term, n)
                error = None
            except IMRSError as e:
                found, error = [], one_line(e)
            except Exception as e:  # noqa: BLE001 - one broken provider must not stop the others
                log.warning("provider %s crashed", name, exc_info=True)
                found, error = [], one_line(f"{type(e).__name__}: {e}")
            new = 0
            rejected_for = getattr(provider, "rejected_for", None)
            rejected: list[tuple[str, str]] = list(rejected_for(term)) if callable(rejected_for) else []
            for hit in found:
                why = web_url_problem(hit.url)
                if why is not None:
                    rejected.append((hit.url, why))
                    continue
                key = url_key(hit.url)
                if key in seen:
                    continue
                seen.add(key)
                hits.append(hit if hit.provider else replace(hit, provider=name))
                new += 1
            report.append(
                ProviderReport(
                    provider=name,
                    ok=error is None,
                    count=len(found),
                    new=new,
                    error=error,
                    seconds=round(time.monotonic() - t0, 3),
                    rejected=rejected,
                )
            )
            if error:
                log.info("image provider %s failed for %r: %s", name, term, error)
        return hits[:n], report


def default_chain(
    *,
    safesearch: str = "moderate",
    min_results: int | None = None,
    user_agent: str = DEFAULT_USER_AGENT,
    timeout: float = 10.0,
    ddg_retries: int = 2,
    ddg_max_total: float = 30.0,
    commons_api_url: str = COMMONS_API,
    wikipedia_api_url: str | None = WIKIPEDIA_API,
    allow_loopback: bool = False,
    ddg_client: str = "guarded",
) -> ProviderChain:
    """DuckDuckGo first (broad, photographic), Wikimedia as the fallback that rarely refuses."""
    return ProviderChain(
        [
            DuckDuckGoProvider(safesearch=safesearch, retries=ddg_retries, timeout=timeout, max_total=ddg_max_total,
                               allow_loopback=allow_loopback, client=ddg_client),
            WikimediaProvider(commons_api_url, wikipedia_api_url, user_agent=user_agent, timeout=timeout,
                              allow_loopback=allow_loopback),
        ],
        min_results=min_results,
    )
