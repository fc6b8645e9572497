"""The web layer against a loopback server: SSRF guard, hostile responses, concurrency, providers.

Nothing here reaches the internet: the loopback server (tests/webserver.py) plays every remote
party, and "private" targets such as 10.0.0.1 are refused before any packet is sent.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from imrs.errors import ImageDecodeError, NetworkError
from imrs.web import netguard
from imrs.web.download import (
    DownloadPolicy,
    fetch_image,
    fetch_image_bytes,
    fetch_many,
    fetch_pil_image,
    make_session,
)
from imrs.web.providers import (
    DuckDuckGoProvider,
    ImageHit,
    ProviderChain,
    StaticProvider,
    WikimediaProvider,
    default_chain,
    strip_html,
)
from tests.webserver import LoopbackServer


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- SSRF ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/photos/cat.jpg",
        "http://localhost:{port}/photos/cat.jpg",
        "http://[::1]:{port}/photos/cat.jpg",
        "http://[::ffff:127.0.0.1]:{port}/photos/cat.jpg",
        "http://2130706433:{port}/photos/cat.jpg",  # 127.0.0.1 spelled as one integer
        "http://0.0.0.0:{port}/photos/cat.jpg",
        "http://10.0.0.1/image.jpg",
        "http://192.168.1.1/image.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/image.jpg",
        "http://224.0.0.1/image.jpg",
        "ftp://example.com/image.jpg",
        "file:///etc/passwd",
    ],
)
def test_non_public_targets_are_refused_by_default(web_server: LoopbackServer, tmp_path: Path, template: str):
    web_server.reset_stats()
    url = template.format(port=web_server.port)
    result = fetch_image(url, tmp_path / "x.jpg", DownloadPolicy(connect_timeout=1, read_timeout=1))
    assert not result.ok
    assert result.reason and result.reason.startswith("blocked:"), result.reason
    assert "\n" not in result.reason
    assert not (tmp_path / "x.jpg").exists()
    assert sum(web_server.hits.values()) == 0, "the server must not even see the request"


@pytest.mark.parametrize(
    ("address", "allowed_default", "allowed_loopback"),
    [
        ("8.8.8.8", True, True),
        ("2606:4700:4700::1111", True, True),
        ("127.0.0.1", False, True),
        ("127.8.9.10", False, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("10.0.0.1", False, False),
        ("172.16.5.4", False, False),
        ("192.168.0.10", False, False),
        ("100.64.0.1", False, False),  # carrier-grade NAT
        ("169.254.169.254", False, False),
        ("0.0.0.0", False, False),
        ("224.0.0.1", False, False),
        ("240.0.0.1", False, False),
        ("255.255.255.255", False, False),
        ("fe80::1", False, False),
        ("fe80::1%eth0", False, False),
        ("fc00::1", False, False),
        ("ff02::1", False, False),
        ("::", False, False),
        ("::ffff:10.0.0.1", False, False),
        ("::ffff:169.254.169.254", False, False),
        ("2002:a00:1::", False, False),  # 6to4 wrapping 10.0.0.1
        ("64:ff9b::a9fe:a9fe", False, False),  # NAT64 wrapping 169.254.169.254
    ],
)
def test_address_classification(address: str, allowed_default: bool, allowed_loopback: bool):
    assert (netguard.check_ip(address) is None) is allowed_default
    assert (netguard.check_ip(address, allow_loopback=True) is None) is allowed_loopback


def test_allow_loopback_reaches_the_test_server(web_server: LoopbackServer, tmp_path: Path, loopback_policy):
    result = fetch_image(web_server.url("/photos/cat.jpg"), tmp_path / "cat.jpg", loopback_policy)
    assert result.ok, result.reason
    assert result.content_type == "image/jpeg" and result.n_bytes > 1000


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://10.0.0.1/secret.jpg", "blocked: private address 10.0.0.1"),
        ("http://169.254.169.254/latest/meta-data/", "blocked: link-local address 169.254.169.254"),
        ("http://[fc00::5]/x.jpg", "blocked: private address fc00::5"),
        ("gopher://127.0.0.1:6379/_INFO", "blocked: scheme 'gopher' is not http/https"),
    ],
)
def test_redirect_into_private_range_is_refused(web_server, tmp_path: Path, loopback_policy, target, reason):
    result = fetch_image(web_server.url(f"/redirect?to={target}"), tmp_path / "x.jpg", loopback_policy)
    assert not result.ok
    assert result.reason == reason
    assert result.redirects == 1
    assert result.final_url == target


def test_guard_is_enforced_at_connect_time_not_only_before(web_server: LoopbackServer):
    """A plain request through the guarded session (no pre-check) still cannot reach loopback."""
    web_server.reset_stats()
    with make_session(DownloadPolicy()) as session, pytest.raises(netguard.BlockedURLError, match="loopback"):
        session.get(web_server.url("/photos/cat.jpg"), timeout=2)
    assert sum(web_server.hits.values()) == 0


def test_https_goes_through_the_same_guard(web_server: LoopbackServer, tmp_path: Path, loopback_policy):
    url = f"https://127.0.0.1:{web_server.port}/photos/cat.jpg"
    with make_session(DownloadPolicy()) as session, pytest.raises(netguard.BlockedURLError, match="loopback"):
        session.get(url, timeout=2)
    # Allowed through, it reaches the (plain-HTTP) server and the TLS handshake fails: recorded, not raised.
    result = fetch_image(url, tmp_path / "x.jpg", loopback_policy)
    assert not result.ok and result.reason and result.reason.startswith(("tls error", "connection failed"))


def test_dns_rebinding_between_check_and_connect_is_refused(monkeypatch, tmp_path: Path):
    """First answer public (passes the pre-check), second answer private: the connect refuses it."""
    real = socket.getaddrinfo
    calls = []

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.example":
            return real(host, port, *args, **kwargs)
        calls.append(host)
        ip = "93.184.216.34" if len(calls) == 1 else "10.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    result = fetch_image("http://rebind.example/x.jpg", tmp_path / "x.jpg", DownloadPolicy(connect_timeout=1))
    assert len(calls) == 2
    assert result.reason == "blocked: private address 10.0.0.1"


def test_environment_proxies_are_ignored(web_server, tmp_path: Path, loopback_policy, monkeypatch):
    """With a proxy the proxy resolves names, which would bypass the address check."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("NO_PROXY", "")
    result = fetch_image(web_server.url("/photos/cat.jpg"), tmp_path / "cat.jpg", loopback_policy)
    assert result.ok, result.reason


# -- hostile responses -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/huge.jpg", "too large: > 10000000 bytes (declared 50000000)"),
        ("/huge-nolength.jpg", "too large: > 10000000 bytes"),
        ("/bomb.png", "decompression bomb"),
        ("/bomb-mid.png", "decompression bomb: 8000x8000 px > 50000000 px"),
        ("/corrupt.jpg", "corrupt image"),
        ("/truncated.jpg", "corrupt image"),
        ("/page.html", "not an image: text/html"),
        ("/gzip.jpg", "unsupported Content-Encoding: gzip"),
        ("/status/404", "http 404"),
        ("/status/500", "http 500"),
        ("/loop", "redirect loop"),
        ("/redirect?hops=5", "too many redirects: > 3"),
        ("/stall.jpg?seconds=3", "timeout: no data for 0.5 s"),
        ("/drip.jpg?interval=0.05", "timeout: exceeded 1.5 s overall"),
    ],
)
def test_hostile_responses_become_recorded_failures(web_server, tmp_path: Path, path: str, reason: str):
    policy = DownloadPolicy(allow_loopback=True, connect_timeout=1, read_timeout=0.5, total_timeout=1.5)
    t0 = time.monotonic()
    result = fetch_image(web_server.url(path), tmp_path / "out.jpg", policy)
    elapsed = time.monotonic() - t0
    assert not result.ok
    assert result.reason is not None and result.reason.startswith(reason), result.reason
    assert "\n" not in result.reason and len(result.reason) < 200
    assert not (tmp_path / "out.jpg").exists()
    assert not list(tmp_path.iterdir()), "no temp files left behind"
    assert elapsed < 1.5 + 1.0, f"{path} took {elapsed:.1f} s"


def test_chunked_transfer_is_read(web_server, tmp_path: Path, loopback_policy):
    result = fetch_image(web_server.url("/chunked.jpg"), tmp_path / "c.jpg", loopback_policy)
    assert result.ok, result.reason
    small = DownloadPolicy(allow_loopback=True, max_bytes=10_000)
    assert fetch_image(web_server.url("/chunked.jpg"), tmp_path / "c2.jpg", small).reason == "too large: > 10000 bytes"


def test_byte_cap_counts_bytes_not_only_the_header(web_server, tmp_path: Path, loopback_policy):
    policy = DownloadPolicy(allow_loopback=True, max_bytes=20_000)
    result = fetch_image(web_server.url("/photos/dog.jpg"), tmp_path / "d.jpg", policy)  # 132 kB, no lie
    assert result.reason == "too large: > 20000 bytes (declared 132498)"
    result = fetch_image(web_server.url("/huge-nolength.jpg"), tmp_path / "d.jpg", policy)
    assert result.reason == "too large: > 20000 bytes"


def test_content_type_allow_list_is_configurable(web_server, tmp_path: Path):
    policy = DownloadPolicy(allow_loopback=True, allowed_content_types=("image/png",))
    assert fetch_image(web_server.url("/gen/tiny.png"), tmp_path / "a.jpg", policy).ok
    assert fetch_image(web_server.url("/photos/cat.jpg"), tmp_path / "b.jpg", policy).reason == (
        "not an image: image/jpeg"
    )


def test_redirects_are_followed_and_counted(web_server, tmp_path: Path, loopback_policy):
    result = fetch_image(web_server.url("/redirect?hops=2&to=/photos/kite.jpg"), tmp_path / "k.jpg", loopback_policy)
    assert result.ok, result.reason
    assert result.redirects == 3
    assert result.final_url == web_server.url("/photos/kite.jpg")
    strict = DownloadPolicy(allow_loopback=True, max_redirects=2)
    result = fetch_image(web_server.url("/redirect?hops=2&to=/photos/kite.jpg"), tmp_path / "k2.jpg", strict)
    assert result.reason == "too many redirects: > 2"


# -- what gets written -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/photos/parrot.jpg",
        "/gen/big.jpg",
        "/gen/rgba.png",
        "/gen/palette.gif",
        "/gen/palette-alpha.png",
        "/gen/cmyk.jpg",
        "/gen/gray.png",
        "/gen/gray16.png",
        "/gen/webp.webp",
        "/gen/exif6.jpg",
    ],
)
def test_images_are_saved_as_rgb_jpeg_within_max_side(web_server, tmp_path: Path, loopback_policy, path: str):
    dest = tmp_path / "sub" / "out.jpg"
    result = fetch_image(web_server.url(path), dest, loopback_policy)
    assert result.ok, result.reason
    assert result.path == dest
    with Image.open(dest) as im:
        assert im.format == "JPEG"
        assert im.mode == "RGB"
        assert max(im.size) <= loopback_policy.max_side
        assert im.size == (result.width, result.height)
        assert not im.getexif(), "metadata is not carried over"


def test_resize_keeps_aspect_and_exif_rotation_is_applied(web_server, tmp_path: Path, loopback_policy):
    big = fetch_image(web_server.url("/gen/big.jpg"), tmp_path / "big.jpg", loopback_policy)
    assert (big.width, big.height) == (256, 192)
    small = fetch_image(web_server.url("/gen/tiny.png"), tmp_path / "tiny.jpg", loopback_policy)
    assert (small.width, small.height) == (8, 8), "never upscaled"
    rotated = fetch_image(web_server.url("/gen/exif6.jpg"), tmp_path / "rot.jpg", loopback_policy)
    assert (rotated.width, rotated.height) == (128, 256), "400x200 stored with orientation 6 is portrait"


def test_transparency_is_composited_on_white(web_server, tmp_path: Path, loopback_policy):
    fetch_image(web_server.url("/gen/palette-alpha.png"), tmp_path / "p.jpg", loopback_policy)
    with Image.open(tmp_path / "p.jpg") as im:
        r, g, b = im.getpixel((8, 24))
        assert r > 200 and g < 60 and b < 60, "opaque palette red"
        assert min(im.getpixel((56, 24))) > 240, "transparent -> white"
    fetch_image(web_server.url("/gen/rgba.png"), tmp_path / "a.jpg", loopback_policy)
    with Image.open(tmp_path / "a.jpg") as im:
        assert min(im.getpixel((im.width * 3 // 4, im.height // 2))) > 240


# -- bytes / PIL for a pasted URL ----------------------------------------------------------------------
def test_fetch_for_pasted_url(web_server, loopback_policy):
    data = fetch_image_bytes(web_server.url("/photos/cat.jpg"), loopback_policy)
    assert data[:2] == b"\xff\xd8"
    im = fetch_pil_image(web_server.url("/gen/big.jpg"), loopback_policy)
    assert im.mode == "RGB" and max(im.size) == loopback_policy.max_side
    with pytest.raises(NetworkError, match="blocked: loopback address 127.0.0.1") as err:
        fetch_image_bytes(web_server.url("/photos/cat.jpg"))
    assert "\n" not in str(err.value)
    with pytest.raises(NetworkError, match="not an image: text/html"):
        fetch_image_bytes(web_server.url("/page.html"), loopback_policy)
    with pytest.raises(ImageDecodeError, match="corrupt image"):
        fetch_pil_image(web_server.url("/corrupt.jpg"), loopback_policy)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        fetch_image_bytes(web_server.url("/bomb.png"), loopback_policy)


def test_requests_carry_a_descriptive_user_agent(web_server, tmp_path: Path, loopback_policy):
    web_server.reset_stats()
    fetch_image(web_server.url("/photos/cat.jpg"), tmp_path / "c.jpg", loopback_policy)
    assert web_server.user_agents and web_server.user_agents[-1].startswith("IMRS/")


# -- fetch_many --------------------------------------------------------------------------------------
def _jobs(server: LoopbackServer, tmp_path: Path, n: int) -> list[tuple[str, Path]]:
    urls = server.photo_urls()
    return [(f"{urls[i % len(urls)]}?i={i}", tmp_path / f"{i:03d}.jpg") for i in range(n)]


def test_fetch_many_parallel_is_faster_and_keeps_order(slow_web_server: LoopbackServer, tmp_path: Path):
    jobs = _jobs(slow_web_server, tmp_path, 16)
    base = DownloadPolicy(allow_loopback=True, per_host=8)  # one loopback host: lift the host cap
    t0 = time.monotonic()
    serial = fetch_many(jobs, replace(base, workers=1))
    t_serial = time.monotonic() - t0
    t0 = time.monotonic()
    parallel = fetch_many(jobs, replace(base, workers=8))
    t_parallel = time.monotonic() - t0
    assert all(r.ok for r in serial + parallel), [r.reason for r in serial + parallel if not r.ok]
    assert [r.url for r in parallel] == [u for u, _ in jobs]
    assert [r.path for r in parallel] == [d for _, d in jobs]
    assert t_serial >= 16 * 0.1
    assert t_serial / t_parallel >= 2.0, f"serial {t_serial:.2f} s vs 8 workers {t_parallel:.2f} s"


def test_fetch_many_respects_the_per_host_limit(slow_web_server: LoopbackServer, tmp_path: Path):
    slow_web_server.reset_stats()
    policy = DownloadPolicy(allow_loopback=True, workers=8, per_host=2)
    results = fetch_many(_jobs(slow_web_server, tmp_path, 10), policy)
    assert all(r.ok for r in results)
    assert slow_web_server.max_inflight == 2


def test_fetch_many_reports_progress_and_failures(web_server, tmp_path: Path, loopback_policy):
    jobs = _jobs(web_server, tmp_path, 5) + [
        (web_server.url("/page.html"), tmp_path / "html.jpg"),
        ("http://10.0.0.1/x.jpg", tmp_path / "lan.jpg"),
    ]
    seen: list[tuple[str, int, int]] = []
    results = fetch_many(jobs, loopback_policy, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert seen == [("download", k, 7) for k in range(1, 8)]
    assert [r.ok for r in results] == [True] * 5 + [False, False]
    assert results[6].reason == "blocked: private address 10.0.0.1"
    assert fetch_many([], loopback_policy) == []


def test_fetch_many_stops_when_progress_raises(slow_web_server, tmp_path: Path):
    def cancel(stage: str, done: int, total: int) -> None:
        raise KeyboardInterrupt("user pressed stop")

    policy = DownloadPolicy(allow_loopback=True, workers=2, per_host=2)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fetch_many(_jobs(slow_web_server, tmp_path, 40), policy, progress=cancel)
    assert time.monotonic() - t0 < 2.0, "pending downloads were cancelled, not all run"


# -- providers ---------------------------------------------------------------------------------------
def _wikimedia(server: LoopbackServer, **kw) -> WikimediaProvider:
    return WikimediaProvider(api_url=server.api_url, wikipedia_api_url=server.api_url, timeout=5, allow_loopback=True,
                             **kw)


def test_wikimedia_provider_parses_commons_files(web_server: LoopbackServer):
    web_server.reset_stats()
    provider = WikimediaProvider(api_url=web_server.api_url, wikipedia_api_url=None, timeout=5, allow_loopback=True)
    hits = provider.search("giraffe horses", 10)
    assert [h.title for h in hits] == ["giraffe", "horses"], "ranked as the API ranked them; the PDF is dropped"
    giraffe = hits[0]
    assert giraffe.provider == "wikimedia"
    assert giraffe.url == web_server.url("/photos/giraffe.jpg?w=512"), "the thumbnail, not the original"
    assert giraffe.license == "CC0"
    assert giraffe.author == "Photographer 5", "HTML and &nbsp; stripped"
    assert giraffe.page_url == web_server.url("/wiki/File:Giraffe_photo.jpg")
    assert hits[1].license == "CC BY 2.0"
    assert all(ua.startswith("IMRS/") for ua in web_server.user_agents)


def test_wikimedia_provider_puts_article_images_first(web_server: LoopbackServer):
    hits = _wikimedia(web_server).search("cat", 5)
    assert hits[0].title == "Cat" and "pw=512" in hits[0].url
    assert hits[0].license == "CC0" and hits[0].author == "Photographer 1"
    assert hits[0].page_url == web_server.url("/wiki/File:Cat_photo.jpg")
    assert len({h.url for h in hits}) == len(hits) == 2  # article image + Commons file


def test_wikimedia_provider_errors_are_one_line(web_server: LoopbackServer):
    with pytest.raises(NetworkError, match="Simulated failure"):
        _wikimedia(web_server).search("__error__", 5)
    with pytest.raises(NetworkError, match="did not answer JSON"):
        _wikimedia(web_server).search("__html__", 5)
    dead = f"http://127.0.0.1:{_closed_port()}/w/api.php"
    t0 = time.monotonic()
    with pytest.raises(NetworkError, match="unreachable"):
        WikimediaProvider(api_url=dead, wikipedia_api_url=dead, timeout=2, allow_loopback=True).search("cat", 5)
    assert time.monotonic() - t0 < 2
    assert _wikimedia(web_server).search("zebra", 5) == []


def test_wikimedia_hits_download_end_to_end(web_server: LoopbackServer, tmp_path: Path, loopback_policy):
    hits = _wikimedia(web_server).search("bird eagle parrot", 10)
    results = fetch_many([(h.url, tmp_path / f"{i}.jpg") for i, h in enumerate(hits)], loopback_policy)
    assert len(results) == 6 and all(r.ok for r in results)


def test_strip_html():
    assert strip_html('<a href="x">Jane&nbsp;<b>Doe</b></a> &amp; co') == "Jane Doe & co"
    assert strip_html("plain") == "plain"


class _Failing:
    name = "failing"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    def search(self, term: str, n: int) -> list[ImageHit]:
        self.calls += 1
        raise self.exc


def test_provider_chain_falls_back_and_reports():
    first = _Failing(NetworkError("rate limited"))
    second = StaticProvider(["https://a.example/1.jpg", "https://a.example/2.jpg"], name="backup")
    hits, report = ProviderChain([first, second], min_results=2).search("cat", 5)
    assert [h.url for h in hits] == ["https://a.example/1.jpg", "https://a.example/2.jpg"]
    assert [h.provider for h in hits] == ["backup", "backup"]
    assert [r["provider"] for r in report] == ["failing", "backup"]
    assert report[0]["ok"] is False and report[0]["error"] == "rate limited" and report[0]["count"] == 0
    assert report[1]["ok"] is True and report[1]["count"] == 2
    assert all(r["seconds"] >= 0 for r in report)


def test_provider_chain_survives_a_buggy_provider_and_total_failure():
    hits, report = ProviderChain([_Failing(RuntimeError("bug")), _Failing(NetworkError("offline"))]).search("x", 3)
    assert hits == []
    assert [r["error"] for r in report] == ["RuntimeError: bug", "offline"]


def test_provider_chain_stops_when_enough_and_dedupes():
    a = StaticProvider(["https://x.example/1.jpg", "https://X.example/2.jpg#frag"], name="a")
    b = StaticProvider(["https://x.example/2.jpg", "https://x.example/3.jpg"], name="b")
    c = _Failing(NetworkError("should not be asked"))
    hits, report = ProviderChain([a, b, c], min_results=3).search("t", 10)
    assert [h.url for h in hits] == ["https://x.example/1.jpg", "https://X.example/2.jpg#frag", "https://x.example/3.jpg"]
    assert [r["new"] for r in report] == [2, 1]
    assert c.calls == 0
    hits, report = ProviderChain([a, b], min_results=1).search("t", 10)
    assert len(report) == 1 and len(hits) == 2


def test_static_provider_by_term_and_from_file(tmp_path: Path):
    p = StaticProvider({"Hot Dog": ["https://h.example/1.jpg"]})
    assert [h.url for h in p.search("hot  dog", 5)] == ["https://h.example/1.jpg"]
    assert p.search("cat", 5) == []
    f = tmp_path / "urls.txt"
    f.write_text("# mine\ncat\thttps://c.example/1.jpg\ncat\thttps://c.example/2.jpg\ndog\thttps://d.example/1.jpg\n")
    p = StaticProvider.from_file(f)
    assert [h.url for h in p.search("cat", 1)] == ["https://c.example/1.jpg"]
    f.write_text("https://u.example/1.jpg\n\nhttps://u.example/2.jpg\n")
    assert len(StaticProvider.from_file(f).search("anything", 5)) == 2


def test_default_chain_order():
    chain = default_chain()
    assert [p.name for p in chain.providers] == ["duckduckgo", "wikimedia"]
    assert chain.providers[0].safesearch == "moderate"


# -- DuckDuckGo ----------------------------------------------------------------------------------------
def test_duckduckgo_without_network_fails_fast_after_bounded_retries():
    # A proxy on a closed loopback port: refused instantly, never the real internet.
    provider = DuckDuckGoProvider(
        retries=2, backoff=0.01, backoff_max=0.05, timeout=3, max_total=5, proxy=f"http://127.0.0.1:{_closed_port()}"
    )
    t0 = time.monotonic()
    with pytest.raises(NetworkError, match=r"after 3 attempt\(s\)") as err:
        provider.search("cat", 5)
    assert time.monotonic() - t0 < 5
    assert "\n" not in str(err.value)


class _FakeDDGS:
    def __init__(self, script: list, log: list) -> None:
        self.script, self.log = script, log

    def images(self, query: str, **kwargs):
        self.log.append(kwargs)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, float):
            time.sleep(step)
            return []
        return step


def test_duckduckgo_backs_off_on_rate_limits_then_maps_results():
    from ddgs.exceptions import RatelimitException

    rows = [
        {"title": "A cat", "image": "https://img.example/cat.jpg", "thumbnail": "https://t.example/c.jpg",
         "url": "https://page.example/cat", "height": 10, "width": 10, "source": "Bing"},
        {"title": "broken", "image": "javascript:alert(1)"},
    ]
    calls: list[dict] = []
    script = [RatelimitException("202 Ratelimit"), RatelimitException("202 Ratelimit"), rows]
    sleeps: list[float] = []
    provider = DuckDuckGoProvider(
        retries=3, backoff=0.1, backoff_max=1.0, client_factory=lambda: _FakeDDGS(script, calls), sleep=sleeps.append
    )
    hits = provider.search("cat", 5)
    assert hits == [ImageHit(url="https://img.example/cat.jpg", title="A cat", page_url="https://page.example/cat",
                             provider="duckduckgo", thumbnail="https://t.example/c.jpg")]
    assert len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.15 and 0.1 <= sleeps[1] <= 0.3, sleeps
    assert all(c["safesearch"] == "moderate" and c["max_results"] == 5 for c in calls)


def test_duckduckgo_gives_up_within_max_total_even_if_ddgs_hangs():
    from ddgs.exceptions import DDGSException

    calls: list[dict] = []
    provider = DuckDuckGoProvider(
        retries=5, backoff=0.01, timeout=0.3, max_total=1.0, client_factory=lambda: _FakeDDGS([5.0] * 6, calls)
    )
    t0 = time.monotonic()
    with pytest.raises(NetworkError, match="timeout"):
        provider.search("cat", 5)
    assert time.monotonic() - t0 < 1.5
    empty = DuckDuckGoProvider(client_factory=lambda: _FakeDDGS([DDGSException("No results found.")], []))
    assert empty.search("qwzx", 5) == []
    with pytest.raises(ValueError):
        DuckDuckGoProvider(safesearch="none")


def test_no_stray_threads_from_downloads(web_server, tmp_path: Path, loopback_policy):
    before = {t.ident for t in threading.enumerate()}
    fetch_many(_jobs(web_server, tmp_path, 4), loopback_policy)
    time.sleep(0.05)
    extra = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("imrs-dl")]
    assert not extra


def test_duckduckgo_client_choice_comes_from_the_settings_passed_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Settings.ddg_client`` given in code (not in the environment) decides which client asks."""
    from imrs.config import Settings
    from imrs.expansion.sources import providers_for

    monkeypatch.delenv("IMRS_DDG_CLIENT", raising=False)
    for choice, kind in (("ddgs", "DDGS"), ("guarded", "GuardedDuckDuckGo")):
        chain = providers_for(Settings(provider="ddg", ddg_client=choice))
        (ddg,) = chain.providers
        client = ddg._client()
        assert isinstance(ddg, DuckDuckGoProvider)
        assert type(client).__name__ == kind, choice
    with pytest.raises(ValueError, match="guarded or ddgs"):
        DuckDuckGoProvider(client="bing")
