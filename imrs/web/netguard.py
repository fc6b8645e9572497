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
from collections.abc import Iterator
from urllib.parse import urlsplit

import requests
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
    """The kind of non-public address ``ip`` is ("loopback", "private", ...), or None if public."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "link-local"
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return classify_ip(inner)
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
