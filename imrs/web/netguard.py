"""SSRF guard: only public http(s) hosts are reachable from the downloader.

URLs come from web search results, i.e. from strangers, so a URL (or a redirect, or a DNS answer)
may point at the metadata service (169.254.169.254), the LAN, or the machine itself. Two layers:

1. ``check_url`` resolves the host up front and refuses non-public addresses with a readable
   reason (that is what the user sees in the download report).
2. The connection classes mounted by ``GuardedAdapter`` resolve the host *again at connect time*,
   validate every address and then connect to the validated IP literal itself (TLS still uses
   the hostname for SNI and certificate checks). The address that is checked is therefore the
   address that is connected to: a DNS answer that changes between layer 1 and the connect
   (DNS rebinding) is validated again and refused, it never slips through.

Proxies from the environment are ignored (``trust_env = False``): with a proxy the socket would go
to the proxy and the proxy would resolve the name, which defeats the check.

A per-thread wall-clock deadline (``deadline``) arms a timer per connection that shuts the socket
down when the deadline passes, which bounds slow-drip servers that trickle a byte just often
enough to never trip the per-read timeout, even while headers are still being received.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..errors import NetworkError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BlockedURLError(NetworkError):
    """The URL's scheme or the address its host resolves to is not allowed (SSRF guard)."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """IPv4 addresses smuggled inside IPv6 forms that reach the IPv4 host on many networks."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    # Deprecated IPv4-compatible form ::a.b.c.d (not ::, ::1 which are handled as v6 below).
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip))
    return None


def classify_ip(ip: IPAddress) -> str | None:
    """The kind of non-public address ``ip`` is ("loopback", "private", ...), or None if public.

    Only 127.0.0.0/8, ::1 and the IPv4-mapped ::ffff:127.x (which a dual-stack socket connects to
    127.x) are "loopback". Loopback wrapped in any other IPv6 form (``::127.0.0.1``, 6to4, NAT64,
    Teredo) is "embedded-loopback": it never reaches this machine's loopback interface, so
    ``allow_loopback`` -- which exists for local test servers -- does not open it.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "link-local"
        inner = _embedded_ipv4(ip)
        if inner is not None:
            kind = classify_ip(inner)
            if kind == "loopback" and ip.ipv4_mapped is None:
                return "embedded-loopback"
            return kind
    # Order matters: the most specific word first (127.0.0.1 is also "private" to ipaddress).
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "private"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


def check_ip(address: str, allow_loopback: bool = False) -> str | None:
    """None when connecting to ``address`` is allowed, else a one-line reason.

    ``allow_loopback`` opens exactly the loopback range (for tests and a local mirror); every
    other private range stays closed.
    """
    if "%" in address:  # an IPv6 zone id only makes sense for link-local, never for public hosts
        return f"blocked: link-local address {address}"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"blocked: not an IP address {address!r}"
    kind = classify_ip(ip)
    if kind is None:
        return None
    if kind == "loopback" and allow_loopback:
        return None
    return f"blocked: {kind} address {address}"


def resolve_checked(host: str, port: int, allow_loopback: bool = False) -> list[str]:
    """Resolve ``host`` and return its addresses, refusing if any of them is not allowed.

    Refusing on *any* bad address (rather than filtering) is deliberate: a name that resolves to
    both a public and a private address is either misconfigured or an attack.
    """
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise NetworkError(f"cannot resolve host {host!r}: {e}") from None
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = str(sockaddr[0])
        if addr not in addresses:
            addresses.append(addr)
    if not addresses:
        raise NetworkError(f"cannot resolve host {host!r}: no addresses")
    for addr in addresses:
        reason = check_ip(addr, allow_loopback)
        if reason is not None:
            raise BlockedURLError(reason)
    return addresses


def check_url(url: str, allow_loopback: bool = False) -> tuple[str, str, int]:
    """Validate scheme and host of ``url``; return ``(scheme, host, port)`` or raise BlockedURLError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise BlockedURLError(f"blocked: malformed URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BlockedURLError(f"blocked: scheme {scheme or '(none)'!r} is not http/https")
    host = parts.hostname
    if not host:
        raise BlockedURLError("blocked: URL has no host")
    if port is None:
        port = 443 if scheme == "https" else 80
    resolve_checked(host, port, allow_loopback)
    return scheme, host, port


# --- deadline watchdog -------------------------------------------------------------------------

_local = threading.local()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _arm(sock: socket.socket | None) -> None:
    end = getattr(_local, "deadline", None)
    if sock is None or end is None:
        return
    timer = threading.Timer(max(0.0, end - time.monotonic()), _shutdown, args=(sock,))
    timer.daemon = True
    timer.start()
    _local.timers.append(timer)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Within this block, sockets opened or reused by this thread die ``seconds`` from now.

    Yields the absolute ``time.monotonic()`` deadline so callers can check it between reads.
    """
    prev_deadline = getattr(_local, "deadline", None)
    prev_timers = getattr(_local, "timers", None)
    end = time.monotonic() + seconds
    _local.deadline = end if prev_deadline is None else min(end, prev_deadline)
    _local.timers = []
    try:
        yield _local.deadline
    finally:
        for timer in _local.timers:
            timer.cancel()
        _local.deadline = prev_deadline
        _local.timers = prev_timers


# --- guarded connections -----------------------------------------------------------------------


class _GuardMixin:
    """Resolve, validate, then connect to the validated IP literal (see module docstring)."""

    allow_loopback: bool = False
    # Attributes provided by urllib3's HTTPConnection:
    _dns_host: str
    port: int
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        name = self._dns_host
        addresses = resolve_checked(name, self.port, self.allow_loopback)
        last: Exception | None = None
        try:
            for addr in addresses:
                self._dns_host = addr  # only used for the TCP connect; TLS keeps self.host
                try:
                    sock = super()._new_conn()  # type: ignore[misc]
                except Exception as e:  # noqa: BLE001 - try the next validated address
                    last = e
                    continue
                peer = sock.getpeername()[0]
                reason = check_ip(str(peer), self.allow_loopback)
                if reason is not None:  # belt and braces: never talk to an unchecked peer
                    sock.close()
                    raise BlockedURLError(reason)
                _arm(sock)
                return sock
        finally:
            self._dns_host = name
        assert last is not None
        raise last

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.sock is not None:  # a kept-alive connection: arm it for this request's deadline
            _arm(self.sock)
        return super().request(*args, **kwargs)  # type: ignore[misc]


def _pool_classes(allow_loopback: bool) -> dict[str, type[HTTPConnectionPool]]:
    http_conn = type("GuardedHTTPConnection", (_GuardMixin, HTTPConnection), {"allow_loopback": allow_loopback})
    https_conn = type(
        "GuardedHTTPSConnection", (_GuardMixin, HTTPSConnection), {"allow_loopback": allow_loopback}
    )
    http_pool = type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
    https_pool = type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})
    return {"http": http_pool, "https": https_pool}


_POOLS = {flag: _pool_classes(flag) for flag in (False, True)}


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose every TCP connection goes through the address check."""

    def __init__(self, allow_loopback: bool = False, pool_maxsize: int = 10) -> None:
        self.allow_loopback = bool(allow_loopback)
        super().__init__(pool_connections=10, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS[self.allow_loopback])

    def proxy_manager_for(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise BlockedURLError("blocked: proxies are not supported by the guarded downloader")


def guarded_session(
    allow_loopback: bool = False, user_agent: str | None = None, pool_maxsize: int = 10
) -> requests.Session:
    """A Session that ignores environment proxies and can only reach allowed addresses."""
    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(allow_loopback, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if user_agent:
        session.headers["User-Agent"] = user_agent
    return session


def is_guarded(session: requests.Session, allow_loopback: bool) -> bool:
    """True when both schemes of ``session`` go through a GuardedAdapter at least as strict."""
    for prefix in ("http://", "https://"):
        adapter = session.get_adapter(prefix + "x")
        if not isinstance(adapter, GuardedAdapter) or (adapter.allow_loopback and not allow_loopback):
            return False
    return session.trust_env is False


def ensure_guarded(session: requests.Session, allow_loopback: bool, pool_maxsize: int = 10) -> requests.Session:
    """``session`` with the guard mounted on both schemes (a caller's own session included)."""
    if not is_guarded(session, allow_loopback):
        adapter = GuardedAdapter(allow_loopback, pool_maxsize=pool_maxsize)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.trust_env = False
    return session


# --- the one guarded GET -----------------------------------------------------------------------

_REDIRECT_CODES = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What any single outbound request may cost: bytes, seconds, redirects, reachable addresses.

    Image downloads (``DownloadPolicy``), MediaWiki API calls and DuckDuckGo queries all pass
    one of these to :func:`fetch`, so every request the project makes obeys the same rules.
    """

    max_bytes: int = 10_000_000
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    #: Wall-clock cap per URL, redirects included: stops servers that drip a byte per second.
    total_timeout: float = 30.0
    max_redirects: int = 3
    #: Lets exactly the loopback range through (tests, a local mirror); 10/8 etc. stay blocked.
    allow_loopback: bool = False
    user_agent: str | None = None


class FetchRefused(NetworkError):
    """A request was refused or failed; ``reason`` is one line, ``final_url`` where it ended."""

    def __init__(self, reason: str, final_url: str | None = None, redirects: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final_url = final_url
        self.redirects = redirects


@dataclass
class Fetched:
    data: bytes
    final_url: str
    content_type: str
    redirects: int = 0


def short(text: object, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _request_error(exc: BaseException, end: float, limits: Limits) -> str:
    if isinstance(exc, BlockedURLError):
        return str(exc)
    if time.monotonic() >= end:
        return f"timeout: exceeded {limits.total_timeout:g} s overall"
    if isinstance(exc, requests.exceptions.ConnectTimeout | urllib3.exceptions.ConnectTimeoutError):
        return f"timeout: connect took > {limits.connect_timeout:g} s"
    if isinstance(exc, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return f"timeout: no data for {limits.read_timeout:g} s"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"tls error: {short(exc, 120)}"
    return f"connection failed: {short(type(exc).__name__ + ': ' + str(exc), 140)}"


def _read_body(resp: requests.Response, limits: Limits, end: float) -> bytes:
    declared = resp.headers.get("Content-Length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise FetchRefused(f"bad Content-Length: {short(declared, 40)}") from None
        if size > limits.max_bytes:
            raise FetchRefused(f"too large: > {limits.max_bytes} bytes (declared {size})")
    buf = bytearray()
    while True:
        # read1 returns whatever has arrived, so the size and deadline checks run between
        # small reads instead of after a 64 KiB read that a drip-feeding server never fills.
        # decode_content=False: a compressed body is never inflated here (see fetch()).
        chunk = resp.raw.read1(_CHUNK, decode_content=False)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limits.max_bytes:
            raise FetchRefused(f"too large: > {limits.max_bytes} bytes")
        if time.monotonic() >= end:
            raise FetchRefused(f"timeout: exceeded {limits.total_timeout:g} s overall")
    if time.monotonic() >= end:
        raise FetchRefused(f"timeout: exceeded {limits.total_timeout:g} s overall")
    return bytes(buf)


def fetch(url: str, limits: Limits, session: requests.Session, *, params: Mapping[str, Any] | None = None,
          headers: Mapping[str, str] | None = None,
          content_type_ok: Callable[[str], str | None] | None = None) -> Fetched:
    """GET ``url`` through the guard: every hop checked, at most ``max_redirects`` of them, no
    loops, the body capped at ``max_bytes`` and the whole exchange at ``total_timeout`` seconds.

    ``content_type_ok(ctype)`` returns None to accept, else the refusal reason. Compressed
    bodies are refused, never inflated: ``Accept-Encoding: identity`` is asked for, and a server
    that compresses anyway would otherwise turn the byte cap into a decompression bomb.
    Raises :class:`FetchRefused` (a NetworkError) with a one-line reason.
    """
    ensure_guarded(session, limits.allow_loopback)
    if params:
        prepared = requests.models.PreparedRequest()
        prepared.prepare_url(url, dict(params))
        url = str(prepared.url)
    hdrs = {"Accept-Encoding": "identity", **dict(headers or {})}
    if limits.user_agent:
        hdrs.setdefault("User-Agent", limits.user_agent)
    current = url
    seen = {url}
    redirects = 0
    with deadline(limits.total_timeout) as end:
        while True:
            try:
                check_url(current, limits.allow_loopback)
                try:
                    resp = session.get(current, headers=hdrs, stream=True, allow_redirects=False,
                                       timeout=(limits.connect_timeout, limits.read_timeout))
                except (requests.exceptions.RequestException, BlockedURLError, OSError) as e:
                    raise FetchRefused(_request_error(e, end, limits)) from None
                if time.monotonic() >= end:  # the watchdog cut the headers short: what arrived is not an answer
                    resp.close()
                    raise FetchRefused(f"timeout: exceeded {limits.total_timeout:g} s overall")
                try:
                    if resp.status_code in _REDIRECT_CODES:
                        location = resp.headers.get("Location")
                        if not location:
                            raise FetchRefused(f"http {resp.status_code} without Location")
                        redirects += 1
                        if redirects > limits.max_redirects:
                            raise FetchRefused(f"too many redirects: > {limits.max_redirects}")
                        nxt = urljoin(current, location.strip())
                        if nxt in seen:
                            raise FetchRefused(f"redirect loop: {short(nxt, 100)}")
                        seen.add(nxt)
                        current = nxt
                        continue
                    if resp.status_code != 200:
                        raise FetchRefused(f"http {resp.status_code}")
                    ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                    if content_type_ok is not None:
                        why = content_type_ok(ctype)
                        if why:
                            raise FetchRefused(why)
                    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
                    if encoding not in ("", "identity"):
                        raise FetchRefused(f"unsupported Content-Encoding: {short(encoding, 40)}")
                    try:
                        data = _read_body(resp, limits, end)
                    except FetchRefused:
                        raise
                    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                        raise FetchRefused(_request_error(e, end, limits)) from None
                    return Fetched(data, current, ctype, redirects)
                finally:
                    resp.close()
            except FetchRefused as e:
                e.final_url, e.redirects = current, redirects
                raise
            except NetworkError as e:  # BlockedURLError or unresolvable, from check_url
                raise FetchRefused(str(e), current, redirects) from None
