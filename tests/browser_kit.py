"""What the browser tests share: the system Chromium driven by Playwright, the loopback web
servers, one ``streamlit run`` of the app for the whole session, and the page helpers.

Loaded through ``pytest_plugins`` in tests/conftest.py. The app server is session-wide
(``app``): the main story, its restart and the security story all use one process at a time,
so the slow start is paid once.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

CHROMIUM = Path(os.environ.get("IMRS_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
START_TIMEOUT_S = 180
STEP_TIMEOUT_MS = 90_000
DESKTOP = {"width": 1400, "height": 1000}
PHONE = {"width": 390, "height": 844}
TEXT_BOX = "Describe what you are looking for"
DEMO = REPO / "demo" / "caltech101-mini"
#: A slice of the demo: 12 classes x 4 images. No birds, no dragonflies: those are what the web adds.
CLASSES = ("Leopards", "airplanes", "sunflower", "watch", "pizza", "Motorbikes", "car_side", "elephant", "lotus",
           "chair", "laptop", "butterfly")


#: A folder and a file name a person could create: Markdown, Streamlit's colour, maths and icon
#: syntax, and images/links relative to the page (a name cannot hold "//").
HOSTILE_FOLDER = ":red[x] [f](phish.html) ![i](kite.jpg) $x^2$"
HOSTILE_FILE = "![j](kite2.jpg) :rocket: _b_ $y$.jpg"
EDITOR_TOKEN = "browser-test-editor-token"


class Recorder:
    """A loopback HTTP server that answers everything with a tiny image and remembers each request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                rec.requests.append(self.path)
                body = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> Recorder:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def need_browser() -> Any:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium, or `make sysdeps`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (Python) is not installed: pip install playwright")
    return sync_playwright


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppServer:
    """``streamlit run app_streamlit.py`` on a free loopback port, in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app_streamlit.py"), "--server.headless", "true",
               "--server.port", str(self.port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
        self.started = time.monotonic()
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"streamlit exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "_stcore/health", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"streamlit did not answer within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    sync_playwright = need_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def slow_web() -> Iterator[Any]:
    """The loopback MediaWiki server, answering after 0.4 s, so growth lasts long enough to be seen."""
    from tests.webserver import PHOTOS_DIR, LoopbackServer

    if not PHOTOS_DIR.is_dir() or not any(PHOTOS_DIR.glob("*.jpg")):
        pytest.skip(f"{PHOTOS_DIR} is absent (the shared photos the loopback server serves)")
    server = LoopbackServer(PHOTOS_DIR, latency=0.4, max_lifetime=600.0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def recorder() -> Iterator[Recorder]:
    """The address hostile links and stored terms point at: any request reaching it is a failure."""
    rec = Recorder().start()
    try:
        yield rec
    finally:
        rec.stop()


@pytest.fixture(scope="session")
def app_env(tmp_path_factory: pytest.TempPathFactory, slow_web: Any) -> dict[str, str]:
    """A fresh state folder, a 48-image slice of the demo plus one image whose folder and file names
    are hostile Markdown, expansion pointed at the loopback server, editors by token."""
    home = tmp_path_factory.mktemp("browser-home")
    root = tmp_path_factory.mktemp("browser-collection")
    for cls in CLASSES:
        (root / cls).mkdir()
        for f in sorted((DEMO / cls).glob("*.jpg")):
            (root / cls / f.name).symlink_to(f)
    (root / HOSTILE_FOLDER).mkdir()
    (root / HOSTILE_FOLDER / HOSTILE_FILE).symlink_to(sorted((DEMO / "pagoda").glob("*.jpg"))[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMRS_")}
    env.update(IMRS_HOME=str(home), IMRS_ROOT=str(root), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               IMRS_EXPAND_PROVIDER="wikimedia", IMRS_WIKIMEDIA_API=slow_web.api_url, IMRS_EXPAND_ALLOW_LOOPBACK="1",
               IMRS_EXPAND_N="4", IMRS_EDITOR_TOKEN=EDITOR_TOKEN, PYTHONPATH=str(REPO))
    ARTIFACTS.mkdir(exist_ok=True)
    return env


class AppHolder:
    """The session's one app server: started on first use, replaced by a restart."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.server: AppServer | None = None

    def running(self, log_name: str = "streamlit-first.log") -> AppServer:
        if self.server is None or self.server.proc.poll() is not None:
            self.server = AppServer(self.env, ARTIFACTS / log_name)
            self.server.wait_healthy()
        return self.server

    def restart(self, log_name: str) -> AppServer:
        self.stop()
        return self.running(log_name)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="session")
def app(app_env: dict[str, str]) -> Iterator[AppHolder]:
    holder = AppHolder(app_env)
    try:
        yield holder
    finally:
        holder.stop()


# --------------------------------------------------------------------------------------------
# Page helpers
# --------------------------------------------------------------------------------------------


def shots(page: Any, name: str, phone: bool = True) -> None:
    """The page as a person sees it: the 1400x1000 window, then the same state at phone width."""
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"))
    if phone:
        page.set_viewport_size(PHONE)
        page.wait_for_timeout(700)
        page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"))
        page.set_viewport_size(DESKTOP)
        page.wait_for_timeout(300)


def wait_idle(page: Any, timeout_ms: int = STEP_TIMEOUT_MS) -> None:
    """Until the app's script run is over (Streamlit marks it on the root element)."""
    page.wait_for_timeout(200)
    page.wait_for_function(
        "() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
        " return a && a.dataset.testScriptState === 'notRunning'; }", timeout=timeout_ms)


def labels(page: Any) -> list[str]:
    """The label of every result card ("#1 · Leopards"), in rank order."""
    texts = page.eval_on_selector_all("[data-testid='stMainBlockContainer'] [data-testid='stMarkdownContainer'] p",
                                      "els => els.map(e => e.innerText)")
    return [t.split(" · ", 1)[1].strip() for t in texts if re.match(r"^#\d+ · ", t)]


def images_loaded(page: Any, min_count: int) -> None:
    sel = "[data-testid='stMainBlockContainer'] [data-testid='stImage'] img"
    page.wait_for_function(f"""() => {{ const imgs = [...document.querySelectorAll("{sel}")];
        return imgs.length >= {min_count} && imgs.every(i => i.complete); }}""", timeout=STEP_TIMEOUT_MS)
    widths = page.eval_on_selector_all(sel, "els => els.map(e => e.naturalWidth)")
    assert all(w > 0 for w in widths), widths


def no_tracebacks(page: Any) -> None:
    exc = page.locator("[data-testid='stException']")
    assert exc.count() == 0, exc.first.inner_text()
    errs = page.locator("[data-testid='stAlertContentError']")
    assert errs.count() == 0, errs.first.inner_text()


def caption(page: Any, desc: str) -> Any:
    return page.get_by_text(re.compile(r"\d+ results for " + re.escape(desc)))


#: Timestamps, on the browser's own clock, of the click and of the first frame holding the answer's
#: caption: what a person waits, without the test driver's share (locating the button, polling).
_WATCH = """(pattern) => {
  const w = window, re = new RegExp(pattern);
  w.__imrsWait = {click: null, seen: null};
  document.addEventListener("click", () => { if (w.__imrsWait.click === null) w.__imrsWait.click = performance.now(); },
                            {capture: true, once: true});
  const obs = new MutationObserver(() => {
    if (w.__imrsWait.click !== null && w.__imrsWait.seen === null && re.test(document.body.textContent)) {
      w.__imrsWait.seen = performance.now();
      obs.disconnect();
    }
  });
  obs.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def text_search(page: Any, query: str) -> float:
    """Type, click, wait for the answer; seconds from the click to the results on screen, as the
    browser saw them (the driver's own delays under load are not the person's wait)."""
    wait_idle(page)
    page.get_by_label(TEXT_BOX).fill(query)
    pattern = r"\d+ results for " + re.escape(f"“{query}”")
    page.evaluate(_WATCH, pattern)
    t0 = time.monotonic()
    page.get_by_role("button", name="Search", exact=True).click()
    caption(page, f"“{query}”").wait_for(timeout=STEP_TIMEOUT_MS)
    took = time.monotonic() - t0
    seen = page.evaluate("() => window.__imrsWait")
    if seen and seen.get("click") is not None and seen.get("seen") is not None:
        took = (seen["seen"] - seen["click"]) / 1000
    wait_idle(page)
    return took


def mode(page: Any, mode: str) -> None:
    page.locator("[data-testid='stButtonGroup'] button", has_text=mode).first.click()
    wait_idle(page)


def image_source(page: Any, source: str) -> None:
    page.get_by_test_id("stRadio").get_by_text(source, exact=True).click()
    wait_idle(page)


def example(page: Any, label: str) -> float:
    t0 = time.monotonic()
    page.locator(f".st-key-ex_{label} button").click()
    caption(page, f"example: {label}").wait_for(timeout=STEP_TIMEOUT_MS)
    took = time.monotonic() - t0
    wait_idle(page)
    return took


def toggle(page: Any, key: str) -> None:
    page.locator(f".st-key-{key} label").first.click()
    wait_idle(page)


def progress_in_view(page: Any, name: str) -> None:
    """Waits for the progress bar of the work just started, checks it is inside the window, and
    takes its screenshot."""
    bar = page.locator("[data-testid='stMainBlockContainer'] [data-testid='stProgress']").first
    bar.wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
    box = bar.bounding_box()
    page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"))
    assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= DESKTOP["height"], box
    try:  # best effort: a later frame that names its stage ("download: 1/4")
        page.locator("[data-testid='stMainBlockContainer']").get_by_text(re.compile(r"^\S.*: \d+/\d+$")).first.wait_for(
            timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"))
    except Exception:  # noqa: BLE001 - the stage passed before it could be caught: the first frame stays
        pass


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


