"""What an image provider answers, and the checks every provider shares.

A leaf of the provider modules (:mod:`.duckduckgo`, :mod:`.wikimedia`, :mod:`.providers`): the hit
type and the provider protocol, the report row a chain writes, and the small guards for what comes
back from the web (one-line errors, http(s)-only URLs, JSON that is really JSON, HTML reduced to
text, URL identity for de-duplication).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, NotRequired, Protocol, TypedDict, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from ..errors import NetworkError
from . import netguard
from .download import DEFAULT_USER_AGENT

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


def one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_web_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: API answers are not trusted to have
    the shape the documentation promises."""
    return value if isinstance(value, dict) else {}


def web_url_problem(url: str) -> str | None:
    """None for a usable http(s) URL, else why not (one line)."""
    if is_web_url(url):
        return None
    return f"not an http(s) URL: {one_line(url, 80)!r}"


def api_limits(timeout: float, allow_loopback: bool, user_agent: str | None = DEFAULT_USER_AGENT) -> netguard.Limits:
    """The guard's limits for a search-API call: the same rules as image downloads, with a body
    cap sized for JSON and a wall-clock cap of twice the per-read timeout."""
    return netguard.Limits(max_bytes=API_MAX_BYTES, connect_timeout=min(timeout, 5.0), read_timeout=timeout,
                           total_timeout=2 * timeout, max_redirects=_API_REDIRECTS, allow_loopback=allow_loopback,
                           user_agent=user_agent)


def json_type_problem(ctype: str) -> str | None:
    if ctype in ("application/json", "text/json", "application/x-javascript", "text/javascript") or \
            ctype.endswith("+json"):
        return None
    return f"did not answer JSON ({one_line(ctype, 40) or 'no Content-Type'})"


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
