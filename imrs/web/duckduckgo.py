"""DuckDuckGo image search: our guarded client (the default) or the ``ddgs`` library.

DuckDuckGo rate-limits scrapers readily, so failures are expected and bounded: see
:class:`DuckDuckGoProvider`. Which client asks is a setting (``Settings.ddg_client``), passed in.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import NetworkError
from . import netguard
from .hits import ImageHit, api_limits, is_web_url, json_type_problem, one_line, parse_json

log = logging.getLogger(__name__)

DUCKDUCKGO_URL = "https://duckduckgo.com"

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
                data = parse_json(self._get(session, "/i.js", params, json_type_problem), "DuckDuckGo")
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
    ``client``: "guarded" (our client, through the SSRF guard) or "ddgs" (``Settings.ddg_client``).
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
        client: str = "guarded",
    ) -> None:
        if safesearch.lower() not in ("on", "moderate", "off"):
            raise ValueError(f"safesearch must be on, moderate or off, not {safesearch!r}")
        if client not in ("guarded", "ddgs"):
            raise ValueError(f"client must be guarded or ddgs, not {client!r}")
        self.client = client
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
        configured or ``client="ddgs"`` was asked for (``IMRS_DDG_CLIENT=ddgs``)."""
        if self._client_factory is not None:
            return self._client_factory()
        if self.proxy is None and self.client == "guarded":
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
                last = f"rate limited ({one_line(e, 120)})"
            except DDGSException as e:
                if str(e).strip() == "No results found.":
                    return []
                last = one_line(e, 160)
            except TimeoutError as e:
                last = f"timeout: {one_line(e, 120)}"
            except NetworkError as e:  # the guarded client: already one line
                last = one_line(e, 160)
            except Exception as e:  # noqa: BLE001 - ddgs scrapes HTML; its parse errors are not ours
                last = one_line(f"{type(e).__name__}: {e}", 160)
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
            if not is_web_url(url):
                continue
            hits.append(
                ImageHit(
                    url=url,
                    title=one_line(row.get("title") or ""),
                    page_url=str(row.get("url") or ""),
                    provider=self.name,
                    thumbnail=str(row.get("thumbnail") or ""),
                )
            )
            if len(hits) >= n:
                break
        return hits
