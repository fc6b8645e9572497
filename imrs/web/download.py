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

import io
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NoReturn
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests
import urllib3.exceptions
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError, NetworkError
from ..fsutil import atomic_path
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

#: Decoders we let touch remote bytes. Pillow can open far more (EPS even shells out to
#: Ghostscript); web images are these, and a smaller attack surface is the point.
WEB_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

_REDIRECT_CODES = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class DownloadPolicy:
    """Limits for one download; the defaults suit thumbnails for an image index."""

    max_bytes: int = 10_000_000
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    #: Wall-clock cap per URL, redirects included: stops servers that drip a byte per second.
    total_timeout: float = 30.0
    max_redirects: int = 3
    #: Decompression-bomb cap, checked from the header before any pixel is decoded.
    max_pixels: int = 50_000_000
    max_side: int = 256
    jpeg_quality: int = 85
    #: Lets exactly the loopback range through (tests, a local mirror); 10/8 etc. stay blocked.
    allow_loopback: bool = False
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


@dataclass
class _Fetched:
    data: bytes
    final_url: str
    content_type: str
    redirects: int = 0


def _short(text: object, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def make_session(policy: DownloadPolicy | None = None) -> requests.Session:
    """A guarded session for ``policy`` (reuse it across calls to keep connections alive)."""
    policy = policy or DownloadPolicy()
    return netguard.guarded_session(policy.allow_loopback, policy.user_agent, pool_maxsize=policy.per_host)


def _session_for(policy: DownloadPolicy, session: requests.Session | None) -> tuple[requests.Session, bool]:
    """Return ``(session, owned)``; a caller's session gets the guard mounted if it lacks it."""
    if session is None:
        return make_session(policy), True
    if not netguard.is_guarded(session, policy.allow_loopback):
        adapter = netguard.GuardedAdapter(policy.allow_loopback, pool_maxsize=policy.per_host)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.trust_env = False
    return session, False


def _request_error(exc: BaseException, end: float, policy: DownloadPolicy) -> _Refused:
    if isinstance(exc, netguard.BlockedURLError):
        return _Refused(str(exc))
    if time.monotonic() >= end:
        return _Refused(f"timeout: exceeded {policy.total_timeout:g} s overall")
    if isinstance(exc, requests.exceptions.ConnectTimeout | urllib3.exceptions.ConnectTimeoutError):
        return _Refused(f"timeout: connect took > {policy.connect_timeout:g} s")
    if isinstance(exc, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return _Refused(f"timeout: no data for {policy.read_timeout:g} s")
    if isinstance(exc, requests.exceptions.SSLError):
        return _Refused(f"tls error: {_short(exc, 120)}")
    return _Refused(f"connection failed: {_short(type(exc).__name__ + ': ' + str(exc), 140)}")


def _read_body(resp: requests.Response, policy: DownloadPolicy, end: float) -> bytes:
    declared = resp.headers.get("Content-Length")
    if declared is not None:
        try:
            if int(declared) > policy.max_bytes:
                raise _Refused(f"too large: > {policy.max_bytes} bytes (declared {int(declared)})")
        except ValueError:
            raise _Refused(f"bad Content-Length: {_short(declared, 40)}") from None
    buf = bytearray()
    while True:
        # read1 returns whatever has arrived, so the size and deadline checks run between
        # small reads instead of after a 64 KiB read that a drip-feeding server never fills.
        chunk = resp.raw.read1(_CHUNK, decode_content=False)
        if not chunk:
            break
        buf += chunk
        if len(buf) > policy.max_bytes:
            raise _Refused(f"too large: > {policy.max_bytes} bytes")
        if time.monotonic() >= end:
            raise _Refused(f"timeout: exceeded {policy.total_timeout:g} s overall")
    if time.monotonic() >= end:
        raise _Refused(f"timeout: exceeded {policy.total_timeout:g} s overall")
    return bytes(buf)


def _fetch(url: str, policy: DownloadPolicy, session: requests.Session) -> _Fetched:
    """GET ``url`` following at most ``max_redirects`` redirects, each one re-checked."""
    state = {"url": url, "redirects": 0}
    try:
        return _fetch_inner(url, policy, session, state)
    except _Refused as e:
        e.final_url = str(state["url"])
        e.redirects = int(state["redirects"])
        raise


def _fetch_inner(url: str, policy: DownloadPolicy, session: requests.Session, state: dict) -> _Fetched:
    current = url
    seen = {url}
    redirects = 0
    headers = {
        "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8",
        # Compressed transfer would let a small body inflate past the byte cap inside urllib3.
        "Accept-Encoding": "identity",
        "User-Agent": policy.user_agent,
    }
    with netguard.deadline(policy.total_timeout) as end:
        while True:
            try:
                netguard.check_url(current, policy.allow_loopback)
            except NetworkError as e:  # BlockedURLError or unresolvable
                raise _Refused(str(e)) from None
            try:
                resp = session.get(
                    current,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(policy.connect_timeout, policy.read_timeout),
                )
            except (requests.exceptions.RequestException, netguard.BlockedURLError, OSError) as e:
                raise _request_error(e, end, policy) from None
            try:
                if resp.status_code in _REDIRECT_CODES:
                    location = resp.headers.get("Location")
                    if not location:
                        raise _Refused(f"http {resp.status_code} without Location")
                    redirects += 1
                    state["redirects"] = redirects
                    if redirects > policy.max_redirects:
                        raise _Refused(f"too many redirects: > {policy.max_redirects}")
                    nxt = urljoin(current, location.strip())
                    if nxt in seen:
                        raise _Refused(f"redirect loop: {_short(nxt, 100)}")
                    seen.add(nxt)
                    current = state["url"] = nxt
                    state["redirects"] = redirects
                    continue
                if resp.status_code != 200:
                    raise _Refused(f"http {resp.status_code}")
                ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                if not policy.content_type_allowed(ctype):
                    raise _Refused(f"not an image: {_short(ctype, 60) or 'no Content-Type'}")
                encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise _Refused(f"unsupported Content-Encoding: {_short(encoding, 40)}")
                try:
                    data = _read_body(resp, policy, end)
                except _Refused:
                    raise
                except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                    raise _request_error(e, end, policy) from None
                return _Fetched(data, current, ctype, redirects)
            finally:
                resp.close()


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB for every mode a web image comes in; transparency is composited on white."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        if hi > 255:
            arr = arr * (255.0 / hi)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if im.mode == "P" or (im.mode in ("L", "RGB", "1") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def _web_formats() -> list[str]:
    Image.init()
    return [f for f in WEB_FORMATS if f in Image.OPEN]  # AVIF/MPO depend on the Pillow build


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=_web_formats())
    except Image.DecompressionBombError as e:
        raise _Refused(f"decompression bomb: {_short(str(e).split(',')[0], 100)}", "decode") from None
    except UnidentifiedImageError:
        raise _Refused("corrupt image: not a supported image format", "decode") from None
    except Exception as e:  # noqa: BLE001 - any parser failure on hostile bytes is "corrupt"
        raise _Refused(f"corrupt image: {_short(type(e).__name__ + ': ' + str(e), 100)}", "decode") from None


def decode_image(data: bytes, max_pixels: int, max_side: int | None) -> Image.Image:
    """Decode untrusted bytes to a bounded RGB image, or raise ``_Refused`` (kind "decode").

    The pixel cap is checked from the header, per call, before decoding: Pillow's own
    ``MAX_IMAGE_PIXELS`` is process-global and left alone.
    """
    im = _open(data)
    width, height = im.size
    if width <= 0 or height <= 0:
        raise _Refused("corrupt image: empty dimensions", "decode")
    if width * height > max_pixels:
        raise _Refused(f"decompression bomb: {width}x{height} px > {max_pixels} px", "decode")
    try:
        im.verify()
    except Exception as e:  # noqa: BLE001
        raise _Refused(f"corrupt image: {_short(type(e).__name__ + ': ' + str(e), 100)}", "decode") from None
    im = _open(data)  # verify() leaves the image unusable; open again to decode
    try:
        if max_side:
            im.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2..1/8 scale, much less work
        im.load()
    except Image.DecompressionBombError as e:
        raise _Refused(f"decompression bomb: {_short(e, 100)}", "decode") from None
    except Exception as e:  # noqa: BLE001
        raise _Refused(f"corrupt image: {_short(type(e).__name__ + ': ' + str(e), 100)}", "decode") from None
    try:
        rotated = ImageOps.exif_transpose(im)
        if rotated is not None:
            im = rotated
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth losing the image
        log.debug("ignoring unreadable EXIF orientation")
    try:
        im = _to_rgb(im)
        if max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    except Exception as e:  # noqa: BLE001
        raise _Refused(f"corrupt image: {_short(type(e).__name__ + ': ' + str(e), 100)}", "decode") from None
    return im


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
        decode_image(fetched.data, policy.max_pixels, None)
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
    progress: Callable[[int, int], None] | None = None,
) -> list[DownloadResult]:
    """Download in a thread pool, at most ``policy.per_host`` at a time per host; results in input order.

    ``progress(done, total)`` is called from the calling thread; if it raises, pending downloads
    are cancelled and the exception propagates (a UI's way to cancel).
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
                    progress(done, total)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        for sess in sessions:
            sess.close()
    return [r if r is not None else DownloadResult(url=items[i][0], ok=False, reason="cancelled")
            for i, r in enumerate(results)]
