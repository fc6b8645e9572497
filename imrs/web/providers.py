"""Where candidate image URLs come from: DuckDuckGo, Wikimedia, or a fixed list.

Providers only *find* URLs; nothing here downloads an image (``imrs.web.download`` does, with the
SSRF guard). A provider that cannot do its job raises ``NetworkError`` with one line, and
``ProviderChain`` turns that into a fallback to the next provider plus a report row, so the UI
can say "DuckDuckGo was rate-limited, used Wikimedia" instead of failing.
"""

from __future__ import annotations

import html
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol, TypedDict, runtime_checkable
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

from ..errors import IMRSError, NetworkError
from .download import DEFAULT_USER_AGENT

log = logging.getLogger(__name__)

COMMONS_API = "https://commons.wikimedia.org/w/api.php"
WIKIPEDIA_API = "https://en.wikipedia.org/w/api.php"


@dataclass
class ImageHit:
    url: str
    title: str = ""
    page_url: str = ""
    license: str = ""
    author: str = ""
    provider: str = ""
    thumbnail: str = ""


@runtime_checkable
class ImageProvider(Protocol):
    name: str

    def search(self, term: str, n: int) -> list[ImageHit]:
        """Up to ``n`` hits for ``term``; raises NetworkError when the source cannot be queried."""
        ...


class ProviderReport(TypedDict):
    provider: str
    ok: bool
    count: int  # hits the provider returned
    new: int  # of those, hits not already found by an earlier provider
    error: str | None
    seconds: float


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _is_web_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def url_key(url: str) -> str:
    """URLs that fetch the same thing compare equal: case-insensitive scheme/host, no fragment."""
    try:
        p = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    return urlunsplit((p.scheme.lower(), p.netloc.lower(), p.path or "/", p.query, ""))


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(value: str) -> str:
    """Plain text of an extmetadata field (Artist is usually a link with nested markup)."""
    parser = _TextOnly()
    try:
        parser.feed(value)
        parser.close()
        text = "".join(parser.parts)
    except Exception:  # noqa: BLE001 - malformed markup: fall back to the raw string
        text = value
    return " ".join(html.unescape(text).replace("\xa0", " ").split())


# --- DuckDuckGo ----------------------------------------------------------------------------------


class DuckDuckGoProvider:
    """Image search through the ``ddgs`` library, with bounded retries on rate limits.

    DuckDuckGo rate-limits scrapers readily, so failures are expected: each attempt runs under a
    hard timeout (in a daemon thread, because ddgs joins its own pool and could block), retries
    back off exponentially with jitter, and the whole call never exceeds ``max_total`` seconds.

    ``backend`` defaults to ddgs's "duckduckgo" engine, not "auto": ddgs 9.x also has a Bing
    images engine that ignores ``safesearch``, and safe search must hold whichever engine answers.
    """

    name = "duckduckgo"

    def __init__(
        self,
        *,
        safesearch: str = "moderate",
        region: str = "us-en",
        retries: int = 2,
        backoff: float = 1.0,
        backoff_max: float = 8.0,
        timeout: float = 10.0,
        max_total: float = 30.0,
        proxy: str | None = None,
        backend: str = "duckduckgo",
        client_factory: Callable[[], Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if safesearch.lower() not in ("on", "moderate", "off"):
            raise ValueError(f"safesearch must be on, moderate or off, not {safesearch!r}")
        self.safesearch = safesearch.lower()
        self.region = region
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.max_total = max_total
        self.proxy = proxy
        self.backend = backend
        self._client_factory = client_factory
        self._sleep = sleep

    def _client(self) -> Any:
        if self._client_factory is not None:
            return self._client_factory()
        from ddgs import DDGS  # imported lazily: it pulls in primp/lxml

        return DDGS(proxy=self.proxy, timeout=max(1, round(self.timeout)))

    def _attempt(self, term: str, n: int, timeout: float) -> list[dict[str, Any]]:
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = self._client().images(
                    term, region=self.region, safesearch=self.safesearch, max_results=n, backend=self.backend
                )
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = e

        worker = threading.Thread(target=run, name="imrs-ddgs", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            raise TimeoutError(f"no answer within {timeout:.1f} s")
        if "error" in box:
            raise box["error"]
        return list(box.get("result") or [])

    def search(self, term: str, n: int) -> list[ImageHit]:
        try:
            from ddgs.exceptions import DDGSException, RatelimitException
        except ImportError:  # pragma: no cover - ddgs is a hard dependency
            DDGSException = RatelimitException = RuntimeError  # type: ignore[misc,assignment]  # noqa: N806
        end = time.monotonic() + self.max_total
        last = "no attempt made"
        attempts = 0
        for attempt in range(self.retries + 1):
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            attempts += 1
            try:
                rows = self._attempt(term, n, min(self.timeout, remaining))
                return self._to_hits(rows, n)
            except RatelimitException as e:
                last = f"rate limited ({_one_line(e, 120)})"
            except DDGSException as e:
                if str(e).strip() == "No results found.":
                    return []
                last = _one_line(e, 160)
            except TimeoutError as e:
                last = f"timeout: {_one_line(e, 120)}"
            except Exception as e:  # noqa: BLE001 - ddgs scrapes HTML; its parse errors are not ours
                last = _one_line(f"{type(e).__name__}: {e}", 160)
            if attempt < self.retries:
                delay = min(self.backoff_max, self.backoff * 2**attempt) * random.uniform(0.5, 1.5)
                delay = min(delay, end - time.monotonic())
                if delay <= 0:
                    break
                log.info("duckduckgo attempt %d failed (%s); retrying in %.2f s", attempt + 1, last, delay)
                self._sleep(delay)
        raise NetworkError(
            f"DuckDuckGo image search failed after {attempts} attempt(s): {last}; "
            "check the internet connection or try again in a few minutes"
        )

    def _to_hits(self, rows: Iterable[Mapping[str, Any]], n: int) -> list[ImageHit]:
        hits = []
        for row in rows:
            url = str(row.get("image") or "").strip()
            if not _is_web_url(url):
                continue
            hits.append(
                ImageHit(
                    url=url,
                    title=_one_line(row.get("title") or ""),
                    page_url=str(row.get("url") or ""),
                    provider=self.name,
                    thumbnail=str(row.get("thumbnail") or ""),
                )
            )
            if len(hits) >= n:
                break
        return hits


# --- Wikimedia -----------------------------------------------------------------------------------


class WikimediaProvider:
    """Wikimedia Commons file search plus Wikipedia article lead images, via the MediaWiki API.

    Slower and less "photographic" than a web image search, but it does not rate-limit a polite
    client and every hit carries a licence and an author, which the UI shows for attribution.
    Downloads use the thumbnail URL (``thumb_width`` px), not the multi-megabyte original.
    """

    name = "wikimedia"

    def __init__(
        self,
        api_url: str = COMMONS_API,
        wikipedia_api_url: str | None = WIKIPEDIA_API,
        *,
        user_agent: str = DEFAULT_USER_AGENT,
        timeout: float = 10.0,
        thumb_width: int = 512,
        commons_filter: str = "filetype:bitmap",
        max_articles: int = 10,
        session: requests.Session | None = None,
    ) -> None:
        self.api_url = api_url
        self.wikipedia_api_url = wikipedia_api_url
        self.user_agent = user_agent
        self.timeout = timeout
        self.thumb_width = thumb_width
        self.commons_filter = commons_filter
        self.max_articles = max_articles
        self._session = session

    def _get(self, api: str, params: dict[str, Any]) -> dict[str, Any]:
        session = self._session or requests
        full = {"action": "query", "format": "json", "formatversion": "2", **params}
        host = urlsplit(api).netloc or api
        try:
            resp = session.get(api, params=full, headers={"User-Agent": self.user_agent}, timeout=self.timeout)
        except requests.RequestException as e:
            raise NetworkError(f"Wikimedia API at {host} unreachable: {_one_line(e, 160)}") from None
        if resp.status_code != 200:
            raise NetworkError(f"Wikimedia API at {host} answered HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise NetworkError(f"Wikimedia API at {host} did not answer JSON") from None
        if not isinstance(data, dict):
            raise NetworkError(f"Wikimedia API at {host} answered an unexpected shape")
        if "error" in data:
            err = data["error"] if isinstance(data["error"], dict) else {"info": data["error"]}
            raise NetworkError(f"Wikimedia API error: {_one_line(err.get('info') or err.get('code'), 160)}")
        return data

    @staticmethod
    def _pages(data: dict[str, Any]) -> list[dict[str, Any]]:
        pages = (data.get("query") or {}).get("pages") or []
        if isinstance(pages, dict):  # formatversion=1 shape
            pages = list(pages.values())
        pages = [p for p in pages if isinstance(p, dict)]
        return sorted(pages, key=lambda p: p.get("index", 1_000_000))

    @staticmethod
    def _meta(info: Mapping[str, Any], key: str) -> str:
        value = ((info.get("extmetadata") or {}).get(key) or {}).get("value", "")
        return strip_html(str(value)) if value else ""

    def _commons(self, term: str, n: int) -> list[ImageHit]:
        query = f"{term} {self.commons_filter}".strip() if self.commons_filter else term
        data = self._get(
            self.api_url,
            {
                "generator": "search",
                "gsrsearch": query,
                "gsrnamespace": 6,
                "gsrlimit": max(1, min(n, 50)),
                "prop": "imageinfo",
                "iiprop": "url|extmetadata|mime",
                "iiurlwidth": self.thumb_width,
                "iiextmetadatafilter": "LicenseShortName|Artist|ObjectName",
                "iiextmetadatalanguage": "en",
            },
        )
        hits = []
        for page in self._pages(data):
            info = (page.get("imageinfo") or [{}])[0]
            if not str(info.get("mime", "image/")).startswith("image/"):
                continue  # PDFs, videos and audio live in the File namespace too
            url = info.get("thumburl") or info.get("url")
            if not url:
                continue
            url = urljoin(self.api_url, str(url))
            title = self._meta(info, "ObjectName") or str(page.get("title", "")).removeprefix("File:")
            hits.append(
                ImageHit(
                    url=url,
                    title=title,
                    page_url=urljoin(self.api_url, str(info.get("descriptionurl") or "")),
                    license=self._meta(info, "LicenseShortName"),
                    author=self._meta(info, "Artist"),
                    provider=self.name,
                    thumbnail=urljoin(self.api_url, str(info.get("thumburl") or url)),
                )
            )
        return hits[:n]

    def _file_metadata(self, file_titles: list[str]) -> dict[str, dict[str, Any]]:
        if not file_titles:
            return {}
        data = self._get(
            self.api_url,
            {
                "titles": "|".join(file_titles[:50]),
                "prop": "imageinfo",
                "iiprop": "url|extmetadata",
                "iiextmetadatafilter": "LicenseShortName|Artist",
                "iiextmetadatalanguage": "en",
            },
        )
        out = {}
        for page in self._pages(data):
            info = (page.get("imageinfo") or [None])[0]
            if info:
                out[str(page.get("title", "")).replace("_", " ")] = info
        return out

    def _wikipedia(self, term: str, n: int) -> list[ImageHit]:
        assert self.wikipedia_api_url is not None
        data = self._get(
            self.wikipedia_api_url,
            {
                "generator": "search",
                "gsrsearch": term,
                "gsrnamespace": 0,
                "gsrlimit": max(1, min(n, self.max_articles)),
                "prop": "pageimages|info",
                "piprop": "thumbnail|name",
                "pithumbsize": self.thumb_width,
                "pilicense": "free",
                "inprop": "url",
            },
        )
        rows = []
        for page in self._pages(data):
            thumb = (page.get("thumbnail") or {}).get("source")
            if thumb:
                rows.append((page, urljoin(self.wikipedia_api_url, str(thumb))))
        titles = ["File:" + str(p["pageimage"]) for p, _ in rows if p.get("pageimage")]
        try:
            meta = self._file_metadata(titles)
        except NetworkError as e:  # the images are still usable without attribution details
            log.info("no licence data for Wikipedia page images: %s", e)
            meta = {}
        hits = []
        for page, url in rows:
            info = meta.get("File:" + str(page.get("pageimage", "")).replace("_", " "), {})
            hits.append(
                ImageHit(
                    url=url,
                    title=str(page.get("title", "")),
                    page_url=str(info.get("descriptionurl") or page.get("fullurl") or ""),
                    license=self._meta(info, "LicenseShortName") if info else "",
                    author=self._meta(info, "Artist") if info else "",
                    provider=self.name,
                    thumbnail=url,
                )
            )
        return hits

    def search(self, term: str, n: int) -> list[ImageHit]:
        """Article lead images first (usually the canonical picture of the term), then Commons."""
        if n <= 0 or not term.strip():
            return []
        hits: list[ImageHit] = []
        errors: list[str] = []
        sources: list[Callable[[str, int], list[ImageHit]]] = []
        if self.wikipedia_api_url:
            sources.append(self._wikipedia)
        sources.append(self._commons)
        seen: set[str] = set()
        for source in sources:
            try:
                found = source(term, n)
            except NetworkError as e:
                errors.append(str(e))
                continue
            for hit in found:
                key = url_key(hit.url)
                if key not in seen:
                    seen.add(key)
                    hits.append(hit)
        if not hits and errors:
            raise NetworkError(errors[-1] if len(errors) == 1 else "; ".join(dict.fromkeys(errors)))
        return hits[:n]


# --- fixed lists -----------------------------------------------------------------------------------


class StaticProvider:
    """Hits from a list you already have (a mapping term -> URLs, or one list for every term)."""

    def __init__(
        self,
        hits: Iterable[ImageHit | str] | Mapping[str, Iterable[ImageHit | str]],
        name: str = "static",
    ) -> None:
        self.name = name
        if isinstance(hits, Mapping):
            self._by_term: dict[str, list[ImageHit]] | None = {
                self._norm(t): [self._hit(h) for h in v] for t, v in hits.items()
            }
            self._all: list[ImageHit] = []
        else:
            self._by_term = None
            self._all = [self._hit(h) for h in hits]

    @staticmethod
    def _norm(term: str) -> str:
        return " ".join(term.casefold().split())

    def _hit(self, h: ImageHit | str) -> ImageHit:
        if isinstance(h, ImageHit):
            return replace(h, provider=h.provider or self.name)
        return ImageHit(url=str(h).strip(), provider=self.name)

    @classmethod
    def from_file(cls, path: str | Path, name: str = "static") -> StaticProvider:
        """One URL per line, or ``term<TAB>url`` lines for per-term lists; ``#`` starts a comment."""
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if any("\t" in ln for ln in lines):
            by_term: dict[str, list[ImageHit | str]] = {}
            for ln in lines:
                term, _, url = ln.partition("\t")
                if url.strip():
                    by_term.setdefault(term, []).append(url.strip())
            return cls(by_term, name=name)
        return cls(lines, name=name)

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
                found, error = [], _one_line(e)
            except Exception as e:  # noqa: BLE001 - one broken provider must not stop the others
                log.warning("provider %s crashed", name, exc_info=True)
                found, error = [], _one_line(f"{type(e).__name__}: {e}")
            new = 0
            for hit in found:
                key = url_key(hit.url)
                if key in seen or not _is_web_url(hit.url):
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
) -> ProviderChain:
    """DuckDuckGo first (broad, photographic), Wikimedia as the fallback that rarely refuses."""
    return ProviderChain(
        [
            DuckDuckGoProvider(safesearch=safesearch, retries=ddg_retries, timeout=timeout, max_total=ddg_max_total),
            WikimediaProvider(commons_api_url, wikipedia_api_url, user_agent=user_agent, timeout=timeout),
        ],
        min_results=min_results,
    )
