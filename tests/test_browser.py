"""The app in a real browser: ``streamlit run`` driven by Playwright with the system Chromium (never a
downloaded one), headless, loopback only.

One server on a 48-image slice of the demo (12 classes, a fresh state folder), and a restart of it:

- text search, the enlarged view, a reload that keeps query and results, two sessions whose
  settings stay their own;
- a weak text query with auto-expand growing from a (slowed) loopback MediaWiki server, with the
  progress bar inside the 1000-px window, and the other session's counts refreshing by themselves;
- an image query whose proposed term is confirmed with one click, a drag on the crop box,
  snapshot save then load, a benchmark run from the Benchmarks tab;
- after a restart, the first text query (the sentence model loads in the background at start).

Screenshots of each step at 1400x1000 and at phone width 390x844 go to ``test-artifacts/``
(git-ignored), and the timings (restart to first text result, click-to-results medians for text
and image queries, measured in the browser from the click) to ``test-artifacts/timings.json``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PHOTOS, REPO

pytestmark = [pytest.mark.browser, pytest.mark.slow]

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


def _need_browser() -> Any:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium, or `make sysdeps`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (Python) is not installed: pip install playwright")
    return sync_playwright


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppServer:
    """``streamlit run app_streamlit.py`` on a free loopback port, in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = _free_port()
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _need_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def app_env(tmp_path_factory: pytest.TempPathFactory, slow_web: Any) -> dict[str, str]:
    """A fresh state folder, a 48-image slice of the demo, expansion pointed at the loopback server."""
    home = tmp_path_factory.mktemp("browser-home")
    root = tmp_path_factory.mktemp("browser-collection")
    for cls in CLASSES:
        (root / cls).mkdir()
        for f in sorted((DEMO / cls).glob("*.jpg")):
            (root / cls / f.name).symlink_to(f)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMRS_")}
    env.update(IMRS_HOME=str(home), IMRS_ROOT=str(root), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               IMRS_EXPAND_PROVIDER="wikimedia", IMRS_WIKIMEDIA_API=slow_web.api_url, IMRS_EXPAND_ALLOW_LOOPBACK="1",
               IMRS_EXPAND_N="4", PYTHONPATH=str(REPO))
    ARTIFACTS.mkdir(exist_ok=True)
    return env


# --------------------------------------------------------------------------------------------
# Page helpers
# --------------------------------------------------------------------------------------------


def _shots(page: Any, name: str, phone: bool = True) -> None:
    """The page as a person sees it: the 1400x1000 window, then the same state at phone width."""
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"))
    if phone:
        page.set_viewport_size(PHONE)
        page.wait_for_timeout(700)
        page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"))
        page.set_viewport_size(DESKTOP)
        page.wait_for_timeout(300)


def _wait_idle(page: Any, timeout_ms: int = STEP_TIMEOUT_MS) -> None:
    """Until the app's script run is over (Streamlit marks it on the root element)."""
    page.wait_for_timeout(200)
    page.wait_for_function(
        "() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
        " return a && a.dataset.testScriptState === 'notRunning'; }", timeout=timeout_ms)


def _labels(page: Any) -> list[str]:
    """The label of every result card ("#1 · Leopards"), in rank order."""
    texts = page.eval_on_selector_all("[data-testid='stMainBlockContainer'] [data-testid='stMarkdownContainer'] p",
                                      "els => els.map(e => e.innerText)")
    return [t.split(" · ", 1)[1].strip() for t in texts if re.match(r"^#\d+ · ", t)]


def _images_loaded(page: Any, min_count: int) -> None:
    sel = "[data-testid='stMainBlockContainer'] [data-testid='stImage'] img"
    page.wait_for_function(f"""() => {{ const imgs = [...document.querySelectorAll("{sel}")];
        return imgs.length >= {min_count} && imgs.every(i => i.complete); }}""", timeout=STEP_TIMEOUT_MS)
    widths = page.eval_on_selector_all(sel, "els => els.map(e => e.naturalWidth)")
    assert all(w > 0 for w in widths), widths


def _no_tracebacks(page: Any) -> None:
    exc = page.locator("[data-testid='stException']")
    assert exc.count() == 0, exc.first.inner_text()
    errs = page.locator("[data-testid='stAlertContentError']")
    assert errs.count() == 0, errs.first.inner_text()


def _caption(page: Any, desc: str) -> Any:
    return page.get_by_text(re.compile(r"\d+ results for " + re.escape(desc)))


def _text_search(page: Any, query: str) -> float:
    """Type, click, wait for the answer; seconds from the click to the results on screen."""
    _wait_idle(page)
    page.get_by_label(TEXT_BOX).fill(query)
    t0 = time.monotonic()
    page.get_by_role("button", name="Search", exact=True).click()
    _caption(page, f"“{query}”").wait_for(timeout=STEP_TIMEOUT_MS)
    took = time.monotonic() - t0
    _wait_idle(page)
    return took


def _mode(page: Any, mode: str) -> None:
    page.locator("[data-testid='stButtonGroup'] button", has_text=mode).first.click()
    _wait_idle(page)


def _image_source(page: Any, source: str) -> None:
    page.get_by_test_id("stRadio").get_by_text(source, exact=True).click()
    _wait_idle(page)


def _example(page: Any, label: str) -> float:
    t0 = time.monotonic()
    page.locator(f".st-key-ex_{label} button").click()
    _caption(page, f"example: {label}").wait_for(timeout=STEP_TIMEOUT_MS)
    took = time.monotonic() - t0
    _wait_idle(page)
    return took


def _toggle(page: Any, key: str) -> None:
    page.locator(f".st-key-{key} label").first.click()
    _wait_idle(page)


def _progress_in_view(page: Any, name: str) -> None:
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


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


# --------------------------------------------------------------------------------------------


def test_app_in_chromium(browser: Any, app_env: dict[str, str]) -> None:  # noqa: PLR0915 - one story
    timings: dict[str, Any] = {}
    text_s: list[float] = []
    image_s: list[float] = []
    server = AppServer(app_env, ARTIFACTS / "streamlit-first.log")
    page = other = None
    try:
        server.wait_healthy()
        page = browser.new_page(viewport=DESKTOP)
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.goto(server.url)
        page.get_by_label(TEXT_BOX).wait_for(timeout=START_TIMEOUT_S * 1000)
        _wait_idle(page, START_TIMEOUT_S * 1000)
        timings["first_start_to_ready_s"] = round(time.monotonic() - server.started, 2)
        _no_tracebacks(page)
        assert page.get_by_text("efficientnet_lite0 · in use").count() == 1  # the honest offline default
        _shots(page, "01-first-start")

        # text search; the answer comes with its verdict, confidences and the time from the click
        text_s.append(_text_search(page, "leopard"))
        _images_loaded(page, 12)
        first = _labels(page)
        assert first[0] == "Leopards" and first[:4].count("Leopards") >= 3, first
        assert page.get_by_text(re.compile("answered in .* s from your click")).count() == 1
        _no_tracebacks(page)
        _shots(page, "02-text-search")
        for q in ("a pizza", "an elephant"):
            text_s.append(_text_search(page, q))
            assert len(_labels(page)) == 12, _labels(page)

        # enlarge: the original, its size and where it lives
        _text_search(page, "leopard")
        page.locator("[class*='st-key-view_res_'] button").first.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text(re.compile(r"Original: \d+×\d+ px")).wait_for()
        assert dialog.get_by_text(re.compile("File: .*Leopards/")).count() == 1
        _shots(page, "03-enlarge")
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden")

        # reload: the query and its results come back from the URL
        page.reload()
        _caption(page, "“leopard”").wait_for(timeout=STEP_TIMEOUT_MS)
        _wait_idle(page)
        from playwright.sync_api import expect

        # the box is filled in the same run that restores the results; the DOM may trail the caption
        expect(page.get_by_label(TEXT_BOX)).to_have_value("leopard", timeout=STEP_TIMEOUT_MS)
        assert _labels(page) == first
        _shots(page, "04-reload-keeps-query")

        # a second session with other settings: neither moves the other
        other = browser.new_context(viewport=DESKTOP).new_page()
        other.set_default_timeout(STEP_TIMEOUT_MS)
        other.goto(server.url)
        other.get_by_label(TEXT_BOX).wait_for()
        _wait_idle(other)
        thumb = other.locator(".st-key-top_k input[type='range']")
        thumb.focus()
        thumb.press("Home")
        for _ in range(4):
            thumb.press("ArrowRight")
        _wait_idle(other)
        _text_search(other, "a watch")
        assert len(_labels(other)) == 5 and "top_k=5" in other.url
        _text_search(page, "a watch")
        assert len(_labels(page)) == 12 and "top_k" not in page.url
        _shots(other, "05-second-session-top5")

        # a weak text query with auto-expand grows from the loopback server, progress in view
        _toggle(page, "auto_expand")
        page.get_by_label(TEXT_BOX).fill("parrot")
        t0 = time.monotonic()
        page.get_by_role("button", name="Search", exact=True).click()
        _progress_in_view(page, "06-growing-progress")
        page.get_by_text("the collection grew").wait_for(timeout=STEP_TIMEOUT_MS)
        timings["weak_text_with_growth_s"] = round(time.monotonic() - t0, 2)
        _wait_idle(page)
        assert page.get_by_text(re.compile(r"\+ 1 from the web")).count() == 1
        assert _labels(page)[0] == "parrot"
        _no_tracebacks(page)
        _shots(page, "07-grown-text")
        # the other session's counts refresh by themselves once the growth is over
        other.get_by_text(re.compile(r"\+ 1 from the web")).wait_for(timeout=20_000)
        _toggle(page, "auto_expand")

        # an image query the collection does not cover: the proposed term, confirmed with one click
        _mode(page, "Image")
        page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(PHOTOS / "dragonfly.jpg"))
        page.locator(".st-key-term_0 button").first.wait_for(timeout=STEP_TIMEOUT_MS)
        _wait_idle(page)
        term = page.locator(".st-key-term_0 button").first
        assert "dragonfly" in term.inner_text().lower(), term.inner_text()
        _shots(page, "08-image-terms-proposed")
        term.click()
        page.get_by_text("the collection grew").wait_for(timeout=STEP_TIMEOUT_MS)
        _wait_idle(page)
        assert page.get_by_text(re.compile(r"\+ 2 from the web")).count() == 1
        _no_tracebacks(page)
        _shots(page, "09-image-term-grown")

        # examples (image click-to-results) and a drag on the crop box
        _image_source(page, "Example")
        for label in ("sunflower", "airplanes", "watch"):
            image_s.append(_example(page, label))
            assert _labels(page)[0] == label, (label, _labels(page))
        frame = page.locator("iframe[title*='cropper']").first
        frame.wait_for()
        page.wait_for_timeout(800)  # the component draws its canvas after the iframe loads
        canvas = page.frame_locator("iframe[title*='cropper']").locator("canvas").last
        box, outer = canvas.bounding_box(), frame.bounding_box()
        assert box is not None and outer is not None
        assert box["x"] + box["width"] <= outer["x"] + outer["width"] + 1, (box, outer)  # the whole box is reachable
        page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] - 3)  # the bottom-right handle
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.6, steps=8)
        page.mouse.up()
        _caption(page, "example: watch (cropped)").wait_for(timeout=STEP_TIMEOUT_MS)
        _wait_idle(page)
        assert "crop=" in page.url
        _no_tracebacks(page)
        _shots(page, "10-crop")

        # snapshot: save, then load, in one session
        page.get_by_text("Collection tools").click()
        page.get_by_label("Snapshot name").fill("browser-test")
        page.get_by_label("Snapshot name").press("Enter")
        _wait_idle(page)
        page.get_by_role("button", name="Save snapshot").click()
        page.get_by_text("saved snapshot browser-test").wait_for()
        _wait_idle(page)
        page.get_by_role("button", name="Load snapshot").click()
        page.get_by_text("loaded snapshot browser-test").wait_for()
        _wait_idle(page)
        _no_tracebacks(page)
        _shots(page, "11-snapshot-save-load")

        # a benchmark of this collection from the Benchmarks tab, with progress, then its plots
        page.get_by_role("tab", name="Benchmarks").click()
        _wait_idle(page)
        page.get_by_text("No benchmark results yet").wait_for()
        page.get_by_label("Queries (sampled)").fill("40")
        _toggle(page, "bench_tune")
        page.get_by_role("button", name="Run benchmark").click()
        _progress_in_view(page, "12-benchmark-progress")
        page.get_by_text("Benchmark done").wait_for(timeout=STEP_TIMEOUT_MS)
        _wait_idle(page)
        assert "tab=Benchmarks" in page.url
        _images_loaded(page, 2)
        _no_tracebacks(page)
        _shots(page, "13-benchmark-results")

        # the two web images, grouped by the term that brought them, with their source
        page.get_by_role("tab", name="Manage web images").click()
        page.get_by_text("dragonfly · 1 image(s)").wait_for()
        _wait_idle(page)
        assert page.get_by_text("parrot · 1 image(s)").count() == 1
        _images_loaded(page, 2)
        _shots(page, "15-manage-web-images")
    except BaseException:
        for i, pg in enumerate(p for p in (page, other) if p is not None):
            pg.screenshot(path=str(ARTIFACTS / f"failure-{i}.png"))
        raise
    finally:
        server.stop()

    # restart on the same state: nothing is embedded again, and the first text query is quick
    caches = sorted(Path(app_env["IMRS_HOME"]).glob("collections/*/emb/emb_efficientnet_lite0.npz"))
    mtime = caches[0].stat().st_mtime_ns
    server = AppServer(app_env, ARTIFACTS / "streamlit-restart.log")
    try:
        page = browser.new_page(viewport=DESKTOP)
        page.set_default_timeout(STEP_TIMEOUT_MS)
        server.wait_healthy()
        page.goto(server.url)
        page.get_by_label(TEXT_BOX).wait_for(timeout=START_TIMEOUT_S * 1000)
        t_box = time.monotonic()
        # the page says while the models load in the background; a person types meanwhile
        page.get_by_text("in the background").wait_for(state="hidden", timeout=START_TIMEOUT_S * 1000)
        t_models = time.monotonic()
        took = _text_search(page, "a sunflower")
        t_result = time.monotonic()
        assert _labels(page)[0] == "sunflower", _labels(page)
        # the page's first query after a start ran without PyTorch: its libraries would stay mapped
        # in the server process once imported
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text(errors="replace")
        assert "libtorch" not in maps and "/torch/_C" not in maps
        text_s.append(_text_search(page, "a lotus"))
        _shots(page, "14-after-restart-text")
        timings.update(restart_to_search_box_s=round(t_box - server.started, 2),
                       restart_to_models_ready_s=round(t_models - server.started, 2),
                       restart_to_first_text_result_s=round(t_result - server.started, 2),
                       restart_first_text_click_to_results_s=round(took, 2))
        assert caches[0].stat().st_mtime_ns == mtime
    finally:
        server.stop()
    timings.update(text_click_to_results_s=[round(x, 2) for x in text_s],
                   text_click_to_results_median_s=_median(text_s),
                   image_click_to_results_s=[round(x, 2) for x in image_s],
                   image_click_to_results_median_s=_median(image_s))
    (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=2))
    print("timings:", json.dumps(timings))
