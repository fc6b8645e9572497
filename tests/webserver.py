"""A loopback stand-in for "the web": real photos, hostile servers and a MediaWiki API.

Binds 127.0.0.1 on a free port only; it shuts itself down after ``max_lifetime`` seconds even
if a test forgets to stop it. Import ``LoopbackServer`` directly (scripts/bench_download.py does)
or use the fixtures in ``tests/conftest_web.py``.

Routes (all GET; ``?delay=S`` on any route adds latency, on top of ``server.latency``):

- ``/photos/<name>.jpg``            a real photo (image/jpeg)
- ``/gen/<name>``                   generated images: rgba.png, palette.gif, palette-alpha.png,
                                    cmyk.jpg, gray.png, gray16.png, exif6.jpg (EXIF orientation 6),
                                    big.jpg (1600x1200), tiny.png (8x8)
- ``/bomb.png``                     ~200-byte PNG that claims 100000x100000 px (Pillow refuses)
- ``/bomb-mid.png``                 8000x8000 1-bit PNG: under Pillow's global limit, over 50 Mpx
- ``/corrupt.jpg``                  random bytes served as image/jpeg
- ``/truncated.jpg``                the first half of a real JPEG
- ``/page.html``                    text/html
- ``/chunked.jpg``                  a JPEG sent with Transfer-Encoding: chunked (HTTP/1.1)
- ``/gzip.jpg``                     a JPEG sent with Content-Encoding: gzip
- ``/huge.jpg``                     declares 50 MB in Content-Length and sends it
- ``/huge-nolength.jpg``            50 MB with no Content-Length (the reader must count)
- ``/drip.jpg?interval=0.2``        a real JPEG, one byte per interval (slow-drip)
- ``/stall.jpg?seconds=5``          headers, then silence
- ``/redirect?hops=N&to=URL``       N redirects through itself, then one to ``to``
- ``/loop``                         redirects to itself
- ``/status/<code>``                that status, empty body
- ``/w/api.php``                    MediaWiki API: generator=search over the photos (ns 6 = files,
                                    ns 0 = articles with pageimages), and titles=File:...|File:...
- ``/h/<case>``                     a server misbehaving in one named way (see ``HOSTILE_ROUTES``
                                    and ``_Handler.hostile``): drips, lies about length and type,
                                    redirect games, compression bombs, broken HTTP, huge headers
- ``/h/api/<case>/w/api.php``       the MediaWiki API misbehaving (redirects to the metadata
                                    address, huge or bottomless JSON, drips, wrong shapes)
- ``/big16/<i>.png?side=N``         a distinct N x N 16-bit grey PNG (small file, big picture)
- ``/ddg/`` and ``/ddg/i.js``       DuckDuckGo's image search protocol (vqd token, JSON pages);
                                    ``q`` starting with ``__`` picks a misbehaviour
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import random
import struct
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
from PIL import Image

from imrs.config import shared_data_dir

PHOTOS_DIR = shared_data_dir() / "photos"

LICENSES = ["CC BY-SA 4.0", "CC0", "Public domain", "CC BY 2.0"]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_header(width: int, height: int, idat: bytes) -> bytes:
    """A 1-bit grayscale PNG header claiming ``width`` x ``height`` around the given IDAT data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """Tiny file, absurd dimensions: only the header is plausible (a few zero rows of IDAT)."""
    return png_with_header(width, height, zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 4, 9))


def mid_bomb_png(side: int = 8000) -> bytes:
    """A *valid* all-black PNG of ``side``² pixels: ~10 kB on the wire, 64 Mpx decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return png_with_header(side, side, idat)


_BIG16: dict[tuple[int, int], bytes] = {}
_BIG16_LOCK = threading.Lock()


def big16_png(index: int, side: int = 7000) -> bytes:
    """A ``side`` x ``side`` 16-bit grey PNG, different for every ``index``, that compresses to a
    small file (smooth ramps: PNG's Sub/Up filters turn them into constants). Cached per process.

    49 Mpx at side 7000: 98 MB of pixels behind a file of about 100 kB -- the shape of picture
    that made parallel expansion use 7.5 GB before issue 11."""
    key = (index, side)
    with _BIG16_LOCK:
        data = _BIG16.get(key)
        if data is None:
            x = np.arange(side, dtype=np.uint32)
            a, b = 3 + 2 * index, 5 + 3 * (index % 5)
            out = np.empty((side, side), dtype=np.uint16)
            for y0 in range(0, side, 512):
                yy = np.arange(y0, min(side, y0 + 512), dtype=np.uint32)[:, None]
                out[y0 : y0 + len(yy)] = ((x[None, :] * a + yy * b) * 7) % 65536
            buf = io.BytesIO()
            Image.fromarray(out).save(buf, "PNG", compress_level=6)
            data = _BIG16[key] = buf.getvalue()
        return data


def lying_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A real 64x64 JPEG whose frame header claims ``width`` x ``height``: the scan data covers a
    sliver of that, and decoders paint the rest flat grey instead of failing."""
    rng = np.random.default_rng(seed)
    data = bytearray(_encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG",
                             quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def garbage_exif_jpeg(seed: int = 7) -> bytes:
    """A good JPEG whose APP1 "Exif" block is random bytes (no valid TIFF header inside)."""
    rng = random.Random(seed)
    data = _encode(Image.new("RGB", (120, 90), (30, 160, 90)), "JPEG", quality=90)
    payload = b"Exif\x00\x00" + rng.randbytes(400)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + app1 + data[2:]


def _encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


class LoopbackServer:
    """Threaded HTTP server on 127.0.0.1:<free port>; counts requests and concurrency."""

    def __init__(self, photos_dir: Path = PHOTOS_DIR, latency: float = 0.0, max_lifetime: float = 600.0) -> None:
        self.photos_dir = Path(photos_dir)
        self.latency = latency
        self.max_lifetime = max_lifetime
        self._lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        self.hits: Counter[str] = Counter()
        self.user_agents: list[str] = []
        self._generated: dict[str, tuple[bytes, str]] | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._killer: threading.Timer | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LoopbackServer:
        handler = type("Handler", (_Handler,), {"server_ref": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._killer = threading.Timer(self.max_lifetime, self.stop)
        self._killer.daemon = True
        self._killer.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if self._killer is not None and self._killer is not threading.current_thread():
            self._killer.cancel()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests ----------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @property
    def api_url(self) -> str:
        return self.url("/w/api.php")

    def photo_names(self) -> list[str]:
        return sorted(p.name for p in self.photos_dir.glob("*.jpg"))

    def photo_urls(self) -> list[str]:
        return [self.url("/photos/" + quote(n)) for n in self.photo_names()]

    def reset_stats(self) -> None:
        with self._lock:
            self.max_inflight = self.inflight
            self.hits.clear()
            self.user_agents.clear()

    def generated(self) -> dict[str, tuple[bytes, str]]:
        """Images in awkward modes, made once from the first photo."""
        with self._lock:
            if self._generated is None:
                self._generated = self._make_generated()
            return self._generated

    def _make_generated(self) -> dict[str, tuple[bytes, str]]:
        names = self.photo_names()
        base = Image.open(self.photos_dir / names[0]).convert("RGB") if names else Image.new("RGB", (320, 240), "red")
        rgba = base.convert("RGBA")
        alpha = Image.new("L", base.size, 0)
        alpha.paste(255, (0, 0, base.width // 2, base.height))  # right half fully transparent
        rgba.putalpha(alpha)
        pal_alpha = Image.new("P", (64, 48), 0)
        pal_alpha.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
        pal_alpha.paste(1, (0, 0, 32, 48))
        gray16 = Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16))
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
        wide = base.resize((400, 200))
        return {
            "rgba.png": (_encode(rgba, "PNG"), "image/png"),
            "palette.gif": (_encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), "image/gif"),
            "palette-alpha.png": (_encode(pal_alpha, "PNG", transparency=0), "image/png"),
            "cmyk.jpg": (_encode(base.convert("CMYK"), "JPEG"), "image/jpeg"),
            "gray.png": (_encode(base.convert("L"), "PNG"), "image/png"),
            "gray16.png": (_encode(gray16, "PNG"), "image/png"),
            "exif6.jpg": (_encode(wide, "JPEG", exif=exif.tobytes()), "image/jpeg"),
            "big.jpg": (_encode(base.resize((1600, 1200)), "JPEG", quality=80), "image/jpeg"),
            "tiny.png": (_encode(base.resize((8, 8)), "PNG"), "image/png"),
            "webp.webp": (_encode(base, "WEBP"), "image/webp"),
        }


class _Handler(BaseHTTPRequestHandler):
    server_ref: LoopbackServer
    protocol_version = "HTTP/1.0"
    timeout = 15  # a client that stops reading cannot hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output clean
        pass

    # -- plumbing -------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server_ref
        parts = urlsplit(self.path)
        self.q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with srv._lock:
            srv.inflight += 1
            srv.max_inflight = max(srv.max_inflight, srv.inflight)
            srv.hits[parts.path] += 1
            srv.user_agents.append(self.headers.get("User-Agent", ""))
        try:
            delay = srv.latency + float(self.q.get("delay", 0))
            if delay > 0:
                time.sleep(delay)
            self.route(parts.path)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the client gave up on us: that is what most of these routes are for
        finally:
            with srv._lock:
                srv.inflight -= 1

    def send(self, status: int, body: bytes, ctype: str | None, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        self.send(status, b"", None, {"Location": location})

    def photo_bytes(self, name: str = "") -> bytes:
        photos = self.server_ref.photos_dir
        path = photos / name if name else next(iter(sorted(photos.glob("*.jpg"))))
        if path.parent != photos or not path.is_file():
            raise FileNotFoundError(name)
        return path.read_bytes()

    # -- routes ---------------------------------------------------------------------------------
    def route(self, path: str) -> None:  # noqa: C901 - a flat routing table reads best
        if path.startswith("/photos/"):
            try:
                self.send(200, self.photo_bytes(path.removeprefix("/photos/")), "image/jpeg")
            except FileNotFoundError:
                self.send(404, b"no such photo", "text/plain")
        elif path.startswith("/gen/"):
            item = self.server_ref.generated().get(path.removeprefix("/gen/"))
            if item is None:
                self.send(404, b"", "text/plain")
            else:
                self.send(200, item[0], item[1])
        elif path == "/bomb.png":
            self.send(200, bomb_png(), "image/png")
        elif path == "/bomb-mid.png":
            self.send(200, mid_bomb_png(), "image/png")
        elif path == "/corrupt.jpg":
            self.send(200, random.Random(0).randbytes(5000), "image/jpeg")
        elif path == "/truncated.jpg":
            data = self.photo_bytes()
            self.send(200, data[: len(data) // 2], "image/jpeg")
        elif path == "/page.html":
            self.send(200, b"<!doctype html><title>not an image</title>", "text/html; charset=utf-8")
        elif path == "/chunked.jpg":
            self.chunked(self.photo_bytes())
        elif path == "/gzip.jpg":
            self.send(200, gzip.compress(self.photo_bytes()), "image/jpeg", {"Content-Encoding": "gzip"})
        elif path in ("/huge.jpg", "/huge-nolength.jpg"):
            self.huge(declare=path == "/huge.jpg")
        elif path == "/drip.jpg":
            self.drip(float(self.q.get("interval", 0.2)))
        elif path == "/stall.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.flush()
            time.sleep(float(self.q.get("seconds", 5)))
        elif path == "/redirect":
            hops = int(self.q.get("hops", 0))
            to = self.q.get("to", "/photos/" + self.photo_names()[0])
            if hops > 0:
                self.redirect(f"/redirect?hops={hops - 1}&to={quote(to, safe='')}")
            else:
                self.redirect(to, int(self.q.get("status", 302)))
        elif path == "/loop":
            self.redirect("/loop")
        elif path.startswith("/status/"):
            self.send(int(path.removeprefix("/status/")), b"", "text/plain")
        elif path == "/w/api.php":
            self.mediawiki()
        elif path.startswith("/h/api/"):
            self.hostile_api(path.removeprefix("/h/api/").split("/", 1)[0])
        elif path.startswith("/h/"):
            self.hostile(path.removeprefix("/h/"))
        elif path.startswith("/big16/"):
            index = int(Path(path).stem)
            self.send(200, big16_png(index, int(self.q.get("side", 7000))), "image/png")
        elif path.startswith("/ddg"):
            self.duckduckgo(path.removeprefix("/ddg"))
        else:
            self.send(404, b"not found", "text/plain")

    def photo_names(self) -> list[str]:
        return self.server_ref.photo_names()

    def huge(self, declare: bool, total: int = 50_000_000) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if declare:
            self.send_header("Content-Length", str(total))
        self.end_headers()
        block = b"\xff\xd8\xff" + b"\x00" * (64 * 1024 - 3)
        sent = 0
        while sent < total:
            self.wfile.write(block)
            sent += len(block)

    def chunked(self, data: bytes) -> None:
        self.protocol_version = "HTTP/1.1"  # chunked transfer needs 1.1; this response only
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for i in range(0, len(data), 4096):
            part = data[i : i + 4096]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def drip(self, interval: float) -> None:
        data = self.photo_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        deadline = time.monotonic() + 60  # bounded even if the client never hangs up
        for i in range(len(data)):
            if time.monotonic() > deadline:
                break
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            time.sleep(interval)

    # -- misbehaving servers ------------------------------------------------------------------------
    def raw(self, data: bytes) -> None:
        """Bytes straight onto the socket: no status line, headers or framing of ours."""
        self.close_connection = True
        self.wfile.write(data)
        self.wfile.flush()

    def hostile(self, case: str) -> None:  # noqa: C901 - one flat table of misbehaviours
        photo = self.photo_bytes()
        if case == "drip-headers":  # status line and headers one byte at a time
            head = b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100\r\n\r\n"
            deadline = time.monotonic() + 30
            for i in range(len(head)):
                if time.monotonic() > deadline:
                    break
                self.raw(head[i : i + 1])
                time.sleep(0.1)
        elif case == "short-body":  # Content-Length promises more than is sent
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(photo) * 2))
            self.end_headers()
            self.raw(photo)
        elif case == "long-body":  # Content-Length says less than is sent: the image is cut
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(photo) // 3))
            self.end_headers()
            self.raw(photo)
        elif case == "html-as-jpeg":
            self.send(200, b"<!doctype html><h1>gotcha</h1>" * 50, "image/jpeg")
        elif case == "jpeg-as-html":
            self.send(200, photo, "text/html")
        elif case == "no-type":
            self.send(200, photo, None)
        elif case == "bad-length":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "lots")
            self.end_headers()
            self.raw(photo)
        elif case in ("gzip-bomb", "deflate-bomb", "br"):
            zeros = b"\0" * 20_000_000  # 20 MB that compress to ~20 kB
            body = gzip.compress(zeros, 9) if case == "gzip-bomb" else zlib.compress(zeros, 9)
            encoding = {"gzip-bomb": "gzip", "deflate-bomb": "deflate", "br": "br"}[case]
            self.send(200, body, "image/png", {"Content-Encoding": encoding})
        elif case == "endless-chunked":
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b"\xff" * 65536
            for _ in range(2000):  # 128 MB at most, even if the client never stops reading
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        elif case == "garbage-status":
            self.raw(b"SPAM SPAM SPAM\r\n\r\n" + photo[:100])
        elif case == "reset":
            self.close_connection = True
            self.connection.shutdown(2)
        elif case == "huge-header":
            self.send(200, photo, "image/jpeg", {"X-Filler": "a" * 200_000})
        elif case == "many-headers":
            self.send(200, photo, "image/jpeg", {f"X-H{i}": "1" for i in range(300)})
        elif case == "to-metadata":
            self.redirect("http://169.254.169.254/latest/meta-data/iam/security-credentials/")
        elif case == "to-embedded-loopback":
            self.redirect(f"http://[::127.0.0.1]:{self.server_ref.port}/photos/cat.jpg")
        elif case == "to-file":
            self.redirect("file:///etc/passwd")
        elif case == "to-lan-v6":
            self.redirect("http://[fd00::1]/x.jpg")
        elif case == "ping":
            self.redirect("/h/pong")
        elif case == "pong":
            self.redirect("/h/ping")
        elif case == "no-location":
            self.send(302, b"", None)
        elif case == "relative-chain":
            self.redirect("../h/relative-2", 301)
        elif case == "relative-2":
            self.redirect("/photos/" + self.photo_names()[0], 307)
        elif case == "gif-bomb.gif":  # logical screen 65535 x 65535, one tiny frame
            self.send(200, b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00"
                      + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b", "image/gif")
        elif case == "lying-7000.jpg":
            self.send(200, lying_jpeg(7000, 7000), "image/jpeg")
        elif case == "exif-garbage.jpg":
            self.send(200, garbage_exif_jpeg(), "image/jpeg")
        elif case == "eps-as-jpeg":
            self.send(200, b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "image/jpeg")
        elif case == "status-206":
            self.send(206, photo[:1000], "image/jpeg")
        else:
            self.send(404, b"no such misbehaviour", "text/plain")

    def hostile_api(self, case: str) -> None:
        """The MediaWiki API misbehaving; ``ok-after-redirect`` is the one that works."""
        if case == "to-metadata":
            self.redirect("http://169.254.169.254/latest/meta-data/")
        elif case == "ok-after-redirect":
            query = urlsplit(self.path).query
            self.redirect("/w/api.php?" + query, 301)
        elif case == "huge":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"query": {"pages": [')
            item = json.dumps({"title": "x" * 1000, "imageinfo": [{"url": "http://e.example/x.jpg"}]}).encode()
            for _ in range(50_000):  # 50 MB, no Content-Length
                self.wfile.write(item + b",")
            self.wfile.write(b"{}]}}")
        elif case == "deep":  # nesting deep enough to blow a recursive parser's stack
            self.send(200, b"[" * 200_000 + b"]" * 200_000, "application/json")
        elif case == "drip":
            body = json.dumps({"batchcomplete": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):
                self.raw(body[i : i + 1])
                time.sleep(0.3)
        elif case == "gzip":
            self.send(200, gzip.compress(b'{"batchcomplete": true}'), "application/json", {"Content-Encoding": "gzip"})
        elif case == "html":
            self.send(200, b"<html>maintenance</html>", "text/html")
        elif case == "loop":
            self.redirect(f"/h/api/loop/w/api.php?n={int(self.q.get('n', 0)) + 1}")
        elif case == "shapes":  # every field the wrong type; URLs that are not http(s)
            pages = [
                "a string where a page should be",
                {"title": "File:A.jpg", "imageinfo": "not a list"},
                {"title": "File:B.jpg", "imageinfo": [{"url": "javascript:alert(1)", "mime": "image/jpeg"}]},
                {"title": "File:C.jpg", "imageinfo": [{"url": "file:///etc/passwd", "mime": "image/jpeg"}]},
                {"title": "File:D.jpg", "imageinfo": [{"url": self.abs("/photos/cat.jpg"), "mime": "image/jpeg",
                                                        "extmetadata": {"Artist": "not a dict"}}]},
            ]
            self.send(200, json.dumps({"query": {"pages": pages}}).encode(), "application/json")
        else:
            self.send(404, b"", "text/plain")

    # -- DuckDuckGo ---------------------------------------------------------------------------------
    def duckduckgo(self, sub: str) -> None:
        """``/ddg/?q=`` -> a page with a vqd token; ``/ddg/i.js`` -> JSON pages of photo hits."""
        term = self.q.get("q", "")
        if sub in ("", "/"):
            if term == "__novqd__":
                self.send(200, b"<html>no token here</html>", "text/html")
            else:
                self.send(200, b'<html><script>vqd="4-1234567890"</script></html>', "text/html; charset=utf-8")
            return
        if sub != "/i.js":
            self.send(404, b"", "text/plain")
            return
        if self.q.get("vqd") != "4-1234567890":
            self.send(403, b"", "text/plain")
        elif term == "__ratelimit__":
            self.send(403, b"", "text/html")
        elif term == "__to_metadata__":
            self.redirect("http://169.254.169.254/latest/meta-data/")
        elif term == "__huge__":
            self.huge_json()
        else:
            words = [w for w in term.lower().split() if w]
            names = [n for n in self.photo_names() if any(w in n for w in words)]
            offset = int(self.q.get("s", 0))
            rows = [{"title": n, "image": self.abs("/photos/" + quote(n)), "thumbnail": "", "url": self.abs("/p/" + n),
                     "width": 100, "height": 100, "source": "Bing"} for n in names][offset : offset + 2]
            rows.insert(0, {"title": "bad", "image": "javascript:alert(1)"})
            body: dict[str, Any] = {"results": rows}
            if offset + 2 < len(names):
                body["next"] = f"i.js?s={offset + 2}"
            self.send(200, json.dumps(body).encode(), "application/json")

    def huge_json(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        chunk = b'{"results": [' + b'{"image": "http://e.example/x.jpg"},' * 30_000
        for _ in range(50):
            self.wfile.write(chunk)

    # -- MediaWiki API ------------------------------------------------------------------------------
    def mediawiki(self) -> None:
        q = self.q
        if q.get("action") != "query" or q.get("format") != "json":
            self.send(400, json.dumps({"error": {"code": "badparams", "info": "bad"}}).encode(), "application/json")
            return
        term = q.get("gsrsearch", "")
        if term == "__error__":
            body = {"error": {"code": "internal_api_error", "info": "Simulated failure"}}
            self.send(200, json.dumps(body).encode(), "application/json")
            return
        if term == "__html__":
            self.send(200, b"<html>maintenance</html>", "text/html")
            return
        names = self.photo_names()
        if "titles" in q:
            wanted = {t.removeprefix("File:").replace("_", " ") for t in q["titles"].split("|")}
            pages = [self.file_page(i, n) for i, n in enumerate(names) if self.file_title(n)[5:] in wanted]
        elif q.get("generator") == "search":
            words = [w for w in term.lower().replace("-", " ").split() if w]
            matched = [n for n in names if any(w in n.lower() for w in words)]
            limit = int(q.get("gsrlimit", 10))
            ns = q.get("gsrnamespace", "0")
            if ns == "6":
                pages = [self.file_page(i, n) for i, n in enumerate(matched[:limit])]
                if matched and "nonimage" not in q:  # non-image files must be filtered by the client
                    pages.append(
                        {
                            "pageid": 99001,
                            "ns": 6,
                            "title": f"File:{words[0]} lecture.pdf",
                            "index": len(pages) + 1,
                            "imageinfo": [{"url": self.abs("/page.html"), "mime": "application/pdf",
                                           "descriptionurl": self.abs("/wiki/pdf")}],
                        }
                    )
            else:
                pages = [self.article_page(i, n) for i, n in enumerate(matched[:limit])]
        else:
            pages = []
        body: dict[str, Any] = {"batchcomplete": True}
        if pages:
            if q.get("formatversion") == "2":
                body["query"] = {"pages": pages}
            else:
                body["query"] = {"pages": {str(p["pageid"]): p for p in pages}}
        self.send(200, json.dumps(body).encode(), "application/json; charset=utf-8")

    def abs(self, path: str) -> str:
        return self.server_ref.url(path)

    @staticmethod
    def file_title(name: str) -> str:
        stem = Path(name).stem.replace("_", " ")
        return f"File:{stem.capitalize()} photo.jpg"

    def file_page(self, rank: int, name: str) -> dict[str, Any]:
        title = self.file_title(name)
        width = int(self.q.get("iiurlwidth", 0) or 0)
        index = self.photo_names().index(name)  # licence and author are per file, not per rank
        return {
            "pageid": 1000 + index,
            "ns": 6,
            "title": title,
            "index": rank + 1,
            "imagerepository": "local",
            "imageinfo": [
                {
                    "url": self.abs("/photos/" + quote(name)),
                    "descriptionurl": self.abs("/wiki/" + quote(title.replace(" ", "_"), safe=":")),
                    "descriptionshorturl": self.abs(f"/w/index.php?curid={1000 + index}"),
                    "mime": "image/jpeg",
                    **({"thumburl": self.abs(f"/photos/{quote(name)}?w={width}"), "thumbwidth": width}
                       if width else {}),
                    "extmetadata": {
                        "LicenseShortName": {"value": LICENSES[index % len(LICENSES)], "source": "commons-desc-page"},
                        "Artist": {
                            "value": f'<a href="//commons.example/wiki/User:P{index}" title="User:P{index}">'
                            f"Photographer&nbsp;<b>{index}</b></a>",
                            "source": "commons-desc-page",
                        },
                        "ObjectName": {"value": Path(name).stem},
                    },
                }
            ],
        }

    def article_page(self, index: int, name: str) -> dict[str, Any]:
        title = Path(name).stem.replace("_", " ").capitalize()
        size = int(self.q.get("pithumbsize", 320) or 320)
        return {
            "pageid": 5000 + index,
            "ns": 0,
            "title": title,
            "index": index + 1,
            "fullurl": self.abs("/wiki/" + quote(title.replace(" ", "_"))),
            "thumbnail": {"source": self.abs(f"/photos/{quote(name)}?pw={size}"), "width": size, "height": size},
            "pageimage": self.file_title(name)[5:].replace(" ", "_"),
        }


@contextlib.contextmanager
def serve(latency: float = 0.0, photos_dir: Path = PHOTOS_DIR, max_lifetime: float = 600.0):  # type: ignore[no-untyped-def]
    server = LoopbackServer(photos_dir, latency=latency, max_lifetime=max_lifetime).start()
    try:
        yield server
    finally:
        server.stop()
