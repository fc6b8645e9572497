"""Download images found on the web without trusting a single byte of them.

Every URL here comes from a search engine, so it is treated as hostile: it may point into the
LAN (SSRF, see ``netguard``), redirect forever, trickle bytes, send gigabytes, claim to be a JPEG
and be HTML, or be a 200-byte PNG that decodes to 10 gigapixels. Each of those ends as a
``DownloadResult`` with ``ok=False`` and a one-line ``reason``; ``fetch_image`` never raises
for anything the remote side does.

What is written is never the remote file: it is our own re-encoding (decoded, EXIF-rotated,
RGB, shrunk to ``max_side``, JPEG), so metadata and any payload after the image data are gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import requests
from PIL import Image

from ..errors import ImageDecodeError, NetworkError
from ..fsutil import atomic_path
from ..imageio import IMAGE_FORMATS, open_image
from ..progress import Progress
from . import netguard

log = logging.getLogger(__name__)

try:
    __version__ = metadata.version("imrs")
except metadata.PackageNotFoundError:  # running from a source tree without `pip install -e`
    __version__ = "0.0.0+dev"

#: Where people reach the project; Wikimedia's User-Agent policy asks for contact information.
PROJECT_URL = "https://github.com/imrs-project/imrs"
DEFAULT_USER_AGENT = (
    f"IMRS/{__version__} (self-hosted image retrieval; +{PROJECT_URL}) python-requests/{requests.__version__}"
)

#: Decoders we let touch remote bytes: the same short list as for files on disk.
WEB_FORMATS = IMAGE_FORMATS


@dataclass(frozen=True)
class DownloadPolicy(netguard.Limits):
    """Limits for one download; the defaults suit thumbnails for an image index.

    The network limits (bytes, timeouts, redirects, loopback) are the guard's own ``Limits``,
    shared with every other outbound request; the rest is about images and parallelism."""

    #: Decompression-bomb cap, checked from the header before any pixel is decoded.
    max_pixels: int = 50_000_000
    max_side: int = 256
    jpeg_quality: int = 85
    workers: int = 8
    per_host: int = 2
    user_agent: str = DEFAULT_USER_AGENT
    #: ``type/*`` wildcards or exact types, matched against the response's Content-Type.
    allowed_content_types: tuple[str, ...] = ("image/*",)

    def content_type_allowed(self, ctype: str) -> bool:
        for pattern in self.allowed_content_types:
            pattern = pattern.lower()
            if pattern.endswith("/*") and ctype.startswith(pattern[:-1]):
                return True
            if ctype == pattern:
                return True
        return False


@dataclass
class DownloadResult:
    url: str
    ok: bool
    path: Path | None = None
    reason: str | None = None
    final_url: str | None = None
    content_type: str | None = None
    n_bytes: int = 0
    width: int | None = None
    height: int | None = None
    seconds: float = 0.0
    redirects: int = 0


class _Refused(Exception):
    """Internal: the download or decode was refused; ``kind`` is "network" or "decode"."""

    def __init__(self, reason: str, kind: str = "network") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.final_url: str | None = None
        self.redirects = 0


_short = netguard.short


def make_session(policy: DownloadPolicy | None = None) -> requests.Session:
    """A guarded session for ``policy`` (reuse it across calls to keep connections alive)."""
    policy = policy or DownloadPolicy()
    return netguard.guarded_session(policy.allow_loopback, policy.user_agent, pool_maxsize=policy.per_host)


def _session_for(policy: DownloadPolicy, session: requests.Session | None) -> tuple[requests.Session, bool]:
    """Return ``(session, owned)``; a caller's session gets the guard mounted if it lacks it."""
    if session is None:
        return make_session(policy), True
    return netguard.ensure_guarded(session, policy.allow_loopback, policy.per_host), False


_ACCEPT = {"Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8"}


def _fetch(url: str, policy: DownloadPolicy, session: requests.Session) -> netguard.Fetched:
    """GET ``url`` through the one guarded fetch, with the policy's limits and type allow-list."""

    def type_ok(ctype: str) -> str | None:
        return None if policy.content_type_allowed(ctype) else f"not an image: {_short(ctype, 60) or 'no Content-Type'}"

    try:
        return netguard.fetch(url, policy, session, headers=_ACCEPT, content_type_ok=type_ok)
    except netguard.FetchRefused as e:
        refused = _Refused(e.reason)
        refused.final_url, refused.redirects = e.final_url, e.redirects
        raise refused from None


def decode_image(data: bytes, max_pixels: int, max_side: int | None) -> Image.Image:
    """Decode untrusted bytes to a bounded RGB image, or raise ``_Refused`` (kind "decode").

    The project's one decoder (``imrs.imageio``), restricted to web formats; the pixel cap is
    checked from the header, per call, before decoding.
    """
    try:
        return open_image(data, max_pixels=max_pixels, max_side=max_side, formats=WEB_FORMATS).image
    except ImageDecodeError as e:
        raise _Refused(e.reason, "decode") from None


def fetch_image(
    url: str, dest: Path, policy: DownloadPolicy | None = None, session: requests.Session | None = None
) -> DownloadResult:
    """Download ``url`` and write it to ``dest`` as an RGB JPEG; never raises for hostile input."""
    policy = policy or DownloadPolicy()
    t0 = time.monotonic()
    result = DownloadResult(url=url, ok=False)
    sess: requests.Session | None = None
    owned = False
    try:
        sess, owned = _session_for(policy, session)
        fetched = _fetch(url, policy, sess)
        result.final_url = fetched.final_url
        result.content_type = fetched.content_type
        result.n_bytes = len(fetched.data)
        result.redirects = fetched.redirects
        im = decode_image(fetched.data, policy.max_pixels, policy.max_side)
        dest = Path(dest)
        with atomic_path(dest) as tmp:
            im.save(tmp, format="JPEG", quality=policy.jpeg_quality)
        result.ok = True
        result.path = dest
        result.width, result.height = im.size
    except _Refused as e:
        result.reason = e.reason
        if e.final_url is not None:
            result.final_url = e.final_url
            result.redirects = e.redirects
    except Exception as e:  # noqa: BLE001 - the contract is "never raises"; log it as a bug
        log.warning("unexpected error downloading %s", _short(url, 200), exc_info=True)
        result.reason = f"error: {_short(type(e).__name__ + ': ' + str(e), 140)}"
    finally:
        if owned and sess is not None:
            sess.close()
    result.seconds = time.monotonic() - t0
    if not result.ok:
        log.info("download refused %s: %s", _short(url, 200), result.reason)
    return result


def _raise_for(url: str, refused: _Refused) -> NoReturn:
    if refused.kind == "decode":
        raise ImageDecodeError(f"{_short(url, 100)} is not a usable image: {refused.reason}") from None
    raise NetworkError(
        f"could not download {_short(url, 100)}: {refused.reason} (only public http/https image URLs work)"
    ) from None


def fetch_image_bytes(
    url: str, policy: DownloadPolicy | None = None, session: requests.Session | None = None
) -> bytes:
    """The raw bytes of an image URL (e.g. one pasted as a query), checked to decode safely.

    Raises NetworkError (blocked, unreachable, too large, not an image type) or ImageDecodeError.
    """
    policy = policy or DownloadPolicy()
    sess, owned = _session_for(policy, session)
    try:
        fetched = _fetch(url, policy, sess)
        decode_image(fetched.data, policy.max_pixels, policy.max_side)  # proves it decodes; reduced is enough
        return fetched.data
    except _Refused as e:
        _raise_for(url, e)
    finally:
        if owned:
            sess.close()


def fetch_pil_image(
    url: str, policy: DownloadPolicy | None = None, session: requests.Session | None = None
) -> Image.Image:
    """Like ``fetch_image_bytes`` but returns the sanitised RGB image (longer side <= max_side)."""
    policy = policy or DownloadPolicy()
    sess, owned = _session_for(policy, session)
    try:
        fetched = _fetch(url, policy, sess)
        return decode_image(fetched.data, policy.max_pixels, policy.max_side)
    except _Refused as e:
        _raise_for(url, e)
    finally:
        if owned:
            sess.close()


def _host_key(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _interleave_by_host(urls: Sequence[str]) -> list[int]:
    """Indices in round-robin host order, so one busy host does not park every worker."""
    queues: dict[str, deque[int]] = defaultdict(deque)
    for i, url in enumerate(urls):
        queues[_host_key(url)].append(i)
    order: list[int] = []
    active = list(queues.values())
    while active:
        for q in active:
            order.append(q.popleft())
        active = [q for q in active if q]
    return order


def fetch_many(
    urls_with_dest: Sequence[tuple[str, Path]],
    policy: DownloadPolicy | None = None,
    progress: Progress | None = None,
    stage: str = "download",
) -> list[DownloadResult]:
    """Download in a thread pool, at most ``policy.per_host`` at a time per host; results in input order.

    ``progress(stage, done, total)`` (``imrs.progress``) is called from the calling thread; if it
    raises, pending downloads are cancelled and the exception propagates (a UI's way to cancel).
    """
    policy = policy or DownloadPolicy()
    items = list(urls_with_dest)
    total = len(items)
    results: list[DownloadResult | None] = [None] * total
    if not total:
        return []
    host_limits: dict[str, threading.BoundedSemaphore] = {}
    limits_lock = threading.Lock()
    local = threading.local()
    sessions: list[requests.Session] = []

    def limit_for(host: str) -> threading.BoundedSemaphore:
        with limits_lock:
            sem = host_limits.get(host)
            if sem is None:
                sem = host_limits[host] = threading.BoundedSemaphore(max(1, policy.per_host))
            return sem

    def work(index: int) -> DownloadResult:
        url, dest = items[index]
        sess = getattr(local, "session", None)
        if sess is None:
            sess = local.session = make_session(policy)
            with limits_lock:
                sessions.append(sess)
        with limit_for(_host_key(url)):
            return fetch_image(url, Path(dest), policy, sess)

    order = _interleave_by_host([u for u, _ in items])
    done = 0
    executor = ThreadPoolExecutor(max_workers=max(1, policy.workers), thread_name_prefix="imrs-dl")
    try:
        futures: dict[Future[DownloadResult], int] = {executor.submit(work, i): i for i in order}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as e:  # noqa: BLE001 - fetch_image does not raise; belt and braces
                    results[i] = DownloadResult(url=items[i][0], ok=False, reason=f"error: {_short(e, 140)}")
                done += 1
                if progress is not None:
                    progress(stage, done, total)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        for sess in sessions:
            sess.close()
    return [r if r is not None else DownloadResult(url=items[i][0], ok=False, reason="cancelled")
            for i, r in enumerate(results)]
