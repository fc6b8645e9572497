"""Wikimedia image search: Commons files and Wikipedia article lead images, via the MediaWiki API."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import NetworkError
from . import netguard
from .download import DEFAULT_USER_AGENT
from .hits import ImageHit, api_limits, as_dict, json_type_problem, one_line, parse_json, strip_html, url_key

log = logging.getLogger(__name__)

COMMONS_API = "https://commons.wikimedia.org/w/api.php"
WIKIPEDIA_API = "https://en.wikipedia.org/w/api.php"

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
                                     content_type_ok=json_type_problem)
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
            raise NetworkError(f"Wikimedia API error: {one_line(err.get('info') or err.get('code'), 160)}")
        return data

    @staticmethod
    def _pages(data: dict[str, Any]) -> list[dict[str, Any]]:
        pages = as_dict(data.get("query")).get("pages") or []
        if isinstance(pages, dict):  # formatversion=1 shape
            pages = list(pages.values())
        if not isinstance(pages, list):
            return []
        pages = [p for p in pages if isinstance(p, dict)]
        return sorted(pages, key=lambda p: p["index"] if isinstance(p.get("index"), int) else 1_000_000)

    @staticmethod
    def _meta(info: Mapping[str, Any], key: str) -> str:
        value = as_dict(as_dict(info.get("extmetadata")).get(key)).get("value", "")
        return strip_html(str(value)) if value else ""

    @staticmethod
    def _imageinfo(page: Mapping[str, Any]) -> dict[str, Any]:
        infos = page.get("imageinfo")
        return as_dict(infos[0]) if isinstance(infos, list) and infos else {}

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
            thumb = as_dict(page.get("thumbnail")).get("source")
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
