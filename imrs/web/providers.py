"""Where candidate image URLs come from: DuckDuckGo, Wikimedia, or a fixed list.

Providers only *find* URLs; nothing here downloads an image (``imrs.web.download`` does, with the
SSRF guard). A provider that cannot do its job raises ``NetworkError`` with one line, and
``ProviderChain`` turns that into a fallback to the next provider plus a report row, so the UI
can say "DuckDuckGo was rate-limited, used Wikimedia" instead of failing.
"""

from __future__ import annotations

import html
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict, runtime_checkable
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit

import requests

from .. import config
from ..errors import IMRSError, NetworkError
from . import netguard
from .download import DEFAULT_USER_AGENT

log = logging.getLogger(__name__)

COMMONS_API = "https://commons.wikimedia.org/w/api.php"
WIKIPEDIA_API = "https://en.wikipedia.org/w/api.php"
DUCKDUCKGO_URL = "https://duckduckgo.com"

#: Largest search-API answer read (a 50-file imageinfo query is ~100 kB).
API_MAX_BYTES = 4_000_000
_API_REDIRECTS = 3


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
    #: (what, why) for entries the provider had but that are not usable URLs (a line of a URL
    #: list that is not http/https, ...): reported, never silently dropped.
    rejected: NotRequired[list[tuple[str, str]]]


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _is_web_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: API answers are not trusted to have
    the shape the documentation promises."""
    return value if isinstance(value, dict) else {}


def _web_url_problem(url: str) -> str | None:
    """None for a usable http(s) URL, else why not (one line)."""
    if _is_web_url(url):
        return None
    return f"not an http(s) URL: {_one_line(url, 80)!r}"


def api_limits(timeout: float, allow_loopback: bool, user_agent: str | None = DEFAULT_USER_AGENT) -> netguard.Limits:
    """The guard's limits for a search-API call: the same rules as image downloads, with a body
    cap sized for JSON and a wall-clock cap of twice the per-read timeout."""
    return netguard.Limits(max_bytes=API_MAX_BYTES, connect_timeout=min(timeout, 5.0), read_timeout=timeout,
                           total_timeout=2 * timeout, max_redirects=_API_REDIRECTS, allow_loopback=allow_loopback,
                           user_agent=user_agent)


def _json_type(ctype: str) -> str | None:
    if ctype in ("application/json", "text/json", "application/x-javascript", "text/javascript") or \
            ctype.endswith("+json"):
        return None
    return f"did not answer JSON ({_one_line(ctype, 40) or 'no Content-Type'})"


def parse_json(data: bytes, what: str) -> Any:
    """JSON from an API body; anything else (HTML, nesting deep enough to blow the stack, invalid
    UTF-8) is one NetworkError line."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise NetworkError(f"{what} did not answer JSON") from None


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

_VQD = re.compile(rb"""vqd=["']?([0-9A-Za-z_-]+)""")
_DDG_SAFE = {"on": "1", "moderate": "1", "off": "-1"}
_DDG_HEADERS = {
    "Accept": "*/*",
    "Accept-Language": "en-US,en;q=0.5",
    "Referer": "https://duckduckgo.com/",
    "Sec-Fetch-Dest": "empty",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Site": "same-origin",
}


class GuardedDuckDuckGo:
    """DuckDuckGo image search through the SSRF guard, in the shape of ``ddgs.DDGS().images``.

    The protocol ddgs uses: the search page gives a ``vqd`` token, ``/i.js`` gives JSON pages of
    results. Both requests obey the same :class:`netguard.Limits` as every other request.
    """

    max_pages = 5

    def __init__(self, limits: netguard.Limits, base_url: str = DUCKDUCKGO_URL) -> None:
        self.limits = limits
        self.base_url = base_url.rstrip("/")

    def _get(self, session: Any, path: str, params: dict[str, Any],
             type_ok: Callable[[str], str | None] | None) -> bytes:
        try:
            return netguard.fetch(self.base_url + path, self.limits, session, params=params, headers=_DDG_HEADERS,
                                  content_type_ok=type_ok).data
        except netguard.FetchRefused as e:
            if e.reason in ("http 403", "http 418", "http 429", "http 202"):
                raise NetworkError(f"rate limited ({e.reason})") from None
            raise NetworkError(e.reason) from None

    def images(self, query: str, region: str = "us-en", safesearch: str = "moderate",
               max_results: int | None = None, **_: Any) -> list[dict[str, Any]]:
        want = max(1, int(max_results or 100))
        with netguard.guarded_session(self.limits.allow_loopback) as session:
            page = self._get(session, "/", {"q": query}, None)
            found = _VQD.search(page)
            if not found:
                raise NetworkError("DuckDuckGo answered without a search token (vqd)")
            params = {"o": "json", "q": query, "l": region, "vqd": found.group(1).decode(),
                      "p": _DDG_SAFE.get(safesearch, "1"), "ct": "AT"}
            rows: list[dict[str, Any]] = []
            for _page in range(self.max_pages):
                data = parse_json(self._get(session, "/i.js", params, _json_type), "DuckDuckGo")
                if not isinstance(data, dict):
                    raise NetworkError("DuckDuckGo answered an unexpected shape")
                items = [r for r in (data.get("results") or []) if isinstance(r, dict)]
                rows += items
                nxt = data.get("next")
                if len(rows) >= want or not items or not isinstance(nxt, str):
                    break
                offset = parse_qs(urlsplit(nxt).query).get("s", [str(len(rows))])[-1]
                params["s"] = offset if offset.isdigit() else str(len(rows))
        return rows[:want]


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
        base_url: str = DUCKDUCKGO_URL,
        allow_loopback: bool = False,
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
        self.base_url = base_url
        self.limits = api_limits(timeout, allow_loopback)

    def _client(self) -> Any:
        """Our guarded client by default; the ddgs library (browser impersonation, its own HTTP
        stack, not the guard: it only ever talks to DuckDuckGo's fixed hosts) when a proxy is
        configured or ``$IMRS_DDG_CLIENT=ddgs``."""
        if self._client_factory is not None:
            return self._client_factory()
        if self.proxy is None and config.ddg_client() == "guarded":
            return GuardedDuckDuckGo(self.limits, self.base_url)
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
            except NetworkError as e:  # the guarded client: already one line
                last = _one_line(e, 160)
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
        allow_loopback: bool = False,
    ) -> None:
        self.api_url = api_url
        self.wikipedia_api_url = wikipedia_api_url
        self.user_agent = user_agent
        self.timeout = timeout
        self.thumb_width = thumb_width
        self.commons_filter = commons_filter
        self.max_articles = max_articles
        self._session = session
        #: Every API call goes through the SSRF guard with these limits (issue 11): a redirect to
        #: 169.254.169.254 is refused, a 200 MB answer is cut off at API_MAX_BYTES.
        self.limits = api_limits(timeout, allow_loopback, user_agent)

    def _get(self, api: str, params: dict[str, Any]) -> dict[str, Any]:
        full = {"action": "query", "format": "json", "formatversion": "2", **params}
        host = urlsplit(api).netloc or api
        session = self._session or netguard.guarded_session(self.limits.allow_loopback)
        try:
            fetched = netguard.fetch(api, self.limits, session, params=full, headers={"Accept": "application/json"},
                                     content_type_ok=_json_type)
        except netguard.FetchRefused as e:
            if e.reason.startswith("http "):
                raise NetworkError(f"Wikimedia API at {host} answered HTTP {e.reason[5:]}") from None
            if e.reason.startswith("did not answer JSON"):
                raise NetworkError(f"Wikimedia API at {host} {e.reason}") from None
            if e.reason.startswith(("connection failed", "timeout", "tls error")):
                raise NetworkError(f"Wikimedia API at {host} unreachable: {e.reason}") from None
            raise NetworkError(f"Wikimedia API at {host} refused: {e.reason}") from None
        finally:
            if self._session is None:
                session.close()
        data = parse_json(fetched.data, f"Wikimedia API at {host}")
        if not isinstance(data, dict):
            raise NetworkError(f"Wikimedia API at {host} answered an unexpected shape")
        if "error" in data:
            err = data["error"] if isinstance(data["error"], dict) else {"info": data["error"]}
            raise NetworkError(f"Wikimedia API error: {_one_line(err.get('info') or err.get('code'), 160)}")
        return data

    @staticmethod
    def _pages(data: dict[str, Any]) -> list[dict[str, Any]]:
        pages = _dict(data.get("query")).get("pages") or []
        if isinstance(pages, dict):  # formatversion=1 shape
            pages = list(pages.values())
        if not isinstance(pages, list):
            return []
        pages = [p for p in pages if isinstance(p, dict)]
        return sorted(pages, key=lambda p: p["index"] if isinstance(p.get("index"), int) else 1_000_000)

    @staticmethod
    def _meta(info: Mapping[str, Any], key: str) -> str:
        value = _dict(_dict(info.get("extmetadata")).get(key)).get("value", "")
        return strip_html(str(value)) if value else ""

    @staticmethod
    def _imageinfo(page: Mapping[str, Any]) -> dict[str, Any]:
        infos = page.get("imageinfo")
        return _dict(infos[0]) if isinstance(infos, list) and infos else {}

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
            info = self._imageinfo(page)
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
            info = self._imageinfo(page)
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
            thumb = _dict(page.get("thumbnail")).get("source")
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
            why = _web_url_problem(hit.url)
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
                why = _web_url_problem(url.strip()) if url.strip() else "no URL after the tab"
                if why is None:
                    by_term.setdefault(term, []).append(url.strip())
                else:
                    bad.append((cls._norm(term) if url.strip() else None, ln, f"line {n}: {why}"))
            provider = cls(by_term, name=name)
        else:
            good = []
            for n, ln in numbered:
                why = _web_url_problem(ln)
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
                found, error = [], _one_line(e)
            except Exception as e:  # noqa: BLE001 - one broken provider must not stop the others
                log.warning("provider %s crashed", name, exc_info=True)
                found, error = [], _one_line(f"{type(e).__name__}: {e}")
            new = 0
            rejected_for = getattr(provider, "rejected_for", None)
            rejected: list[tuple[str, str]] = list(rejected_for(term)) if callable(rejected_for) else []
            for hit in found:
                why = _web_url_problem(hit.url)
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
) -> ProviderChain:
    """DuckDuckGo first (broad, photographic), Wikimedia as the fallback that rarely refuses."""
    return ProviderChain(
        [
            DuckDuckGoProvider(safesearch=safesearch, retries=ddg_retries, timeout=timeout, max_total=ddg_max_total,
                               allow_loopback=allow_loopback),
            WikimediaProvider(commons_api_url, wikipedia_api_url, user_agent=user_agent, timeout=timeout,
                              allow_loopback=allow_loopback),
        ],
        min_results=min_results,
    )
