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
and image queries, measured by the test from the click, beside the figure the page itself shows)
to ``test-artifacts/timings.json``.

The server has an editor token: the main page signs in as an editor, the second session is a
visitor. The security story (tests/test_browser_security.py) runs on the same server after the
restart.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser_kit import (
    ARTIFACTS,
    DESKTOP,
    EDITOR_TOKEN,
    START_TIMEOUT_S,
    STEP_TIMEOUT_MS,
    TEXT_BOX,
    AppHolder,
    caption,
    example,
    image_source,
    images_loaded,
    labels,
    median,
    mode,
    no_tracebacks,
    progress_in_view,
    shots,
    text_search,
    toggle,
    wait_idle,
)
from tests.conftest import PHOTOS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


TIMINGS: dict[str, Any] = {}
TEXT_S: list[float] = []
IMAGE_S: list[float] = []
SHOWN_S: list[tuple[float, float]] = []  # (the test's click-to-results, the figure the page shows)


def sign_in_as_editor(page: Any) -> None:
    page.get_by_label("Editor token").fill(EDITOR_TOKEN)
    page.get_by_role("button", name="Sign in as editor").click()
    page.get_by_text("signed in as an editor").wait_for()
    wait_idle(page)


def shown_seconds(page: Any) -> float:
    """The click-to-results figure the page measured and shows."""
    fig = page.locator("span.imrs-timing", has_text=re.compile(r"answered in [\d.]+ s from your click")).last
    fig.wait_for(timeout=STEP_TIMEOUT_MS)
    return float(re.search(r"answered in ([\d.]+) s", fig.inner_text()).group(1))


def test_app_in_chromium(browser: Any, app: AppHolder) -> None:  # noqa: PLR0915 - one story
    timings, text_s, image_s = TIMINGS, TEXT_S, IMAGE_S
    page = other = None
    t_start = time.monotonic()
    server = app.running()
    try:
        page = browser.new_page(viewport=DESKTOP)
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.goto(server.url)
        page.get_by_label(TEXT_BOX).wait_for(timeout=START_TIMEOUT_S * 1000)
        wait_idle(page, START_TIMEOUT_S * 1000)
        timings["first_start_to_ready_s"] = round(time.monotonic() - min(server.started, t_start), 2)
        no_tracebacks(page)
        assert page.get_by_text("efficientnet_lite0 · in use").count() == 1  # the honest offline default
        sign_in_as_editor(page)
        shots(page, "01-first-start")

        # text search; the answer comes with its verdict, confidences and the time from the click,
        # measured in the page (the wait the person had), beside the server's share
        took = text_search(page, "leopard")
        text_s.append(took)
        images_loaded(page, 12)
        first = labels(page)
        assert first[0] == "Leopards" and first[:4].count("Leopards") >= 3, first
        SHOWN_S.append((took, shown_seconds(page)))
        assert page.get_by_text(re.compile(r"server share \d+ ms")).count() == 1
        no_tracebacks(page)
        shots(page, "02-text-search")
        for q in ("a pizza", "an elephant"):
            took = text_search(page, q)
            text_s.append(took)
            assert len(labels(page)) == 12, labels(page)
            SHOWN_S.append((took, shown_seconds(page)))

        # enlarge: the original, its size and where it lives
        text_search(page, "leopard")
        page.locator("[class*='st-key-view_res_'] button").first.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text(re.compile(r"Original: \d+×\d+ px")).wait_for()
        assert dialog.get_by_text(re.compile("File: .*Leopards/")).count() == 1
        shots(page, "03-enlarge")
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden")

        # reload: the query and its results come back from the URL
        page.reload()
        caption(page, "“leopard”").wait_for(timeout=STEP_TIMEOUT_MS)
        wait_idle(page)
        from playwright.sync_api import expect

        # the box is filled in the same run that restores the results; the DOM may trail the caption
        expect(page.get_by_label(TEXT_BOX)).to_have_value("leopard", timeout=STEP_TIMEOUT_MS)
        assert labels(page) == first
        expect(page.locator("span.imrs-timing").last).to_have_text("restored from the link")
        shots(page, "04-reload-keeps-query")

        # a second session with other settings: neither moves the other
        other = browser.new_context(viewport=DESKTOP).new_page()
        other.set_default_timeout(STEP_TIMEOUT_MS)
        other.goto(server.url)
        other.get_by_label(TEXT_BOX).wait_for()
        wait_idle(other)
        thumb = other.locator(".st-key-top_k input[type='range']")
        thumb.focus()
        thumb.press("Home")
        for _ in range(4):
            thumb.press("ArrowRight")
        wait_idle(other)
        text_search(other, "a watch")
        assert len(labels(other)) == 5 and "top_k=5" in other.url
        text_search(page, "a watch")
        assert len(labels(page)) == 12 and "top_k" not in page.url
        shots(other, "05-second-session-top5")

        # a weak text query with auto-expand grows from the loopback server, progress in view
        sign_in_as_editor(page)  # the reload opened a new session: sign in again
        toggle(page, "auto_expand")
        page.get_by_label(TEXT_BOX).fill("parrot")
        t0 = time.monotonic()
        page.get_by_role("button", name="Search", exact=True).click()
        progress_in_view(page, "06-growing-progress")
        page.get_by_text("the collection grew").wait_for(timeout=STEP_TIMEOUT_MS)
        timings["weak_text_with_growth_s"] = round(time.monotonic() - t0, 2)
        wait_idle(page)
        assert page.get_by_text(re.compile(r"\+ 1 from the web")).count() == 1
        assert labels(page)[0] == "parrot"
        no_tracebacks(page)
        shots(page, "07-grown-text")
        # the other session's counts refresh by themselves once the growth is over
        other.get_by_text(re.compile(r"\+ 1 from the web")).wait_for(timeout=20_000)
        toggle(page, "auto_expand")

        # an image query the collection does not cover: the proposed term, confirmed with one click
        mode(page, "Image")
        page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(PHOTOS / "dragonfly.jpg"))
        page.locator(".st-key-term_0 button").first.wait_for(timeout=STEP_TIMEOUT_MS)
        wait_idle(page)
        term = page.locator(".st-key-term_0 button").first
        assert "dragonfly" in term.inner_text().lower(), term.inner_text()
        shots(page, "08-image-terms-proposed")
        term.click()
        page.get_by_text("the collection grew").wait_for(timeout=STEP_TIMEOUT_MS)
        wait_idle(page)
        assert page.get_by_text(re.compile(r"\+ 2 from the web")).count() == 1
        no_tracebacks(page)
        shots(page, "09-image-term-grown")

        # examples (image click-to-results) and a drag on the crop box
        image_source(page, "Example")
        for label in ("sunflower", "airplanes", "watch"):
            image_s.append(example(page, label))
            assert labels(page)[0] == label, (label, labels(page))
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
        caption(page, "example: watch (cropped)").wait_for(timeout=STEP_TIMEOUT_MS)
        wait_idle(page)
        assert "crop=" in page.url
        no_tracebacks(page)
        shots(page, "10-crop")

        # snapshot: save, then load, in one session
        page.get_by_text("Collection tools").click()
        page.get_by_label("Snapshot name").fill("browser-test")
        page.get_by_label("Snapshot name").press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Save snapshot").click()
        page.get_by_text("saved snapshot browser-test").wait_for()
        wait_idle(page)
        page.get_by_role("button", name="Load snapshot").click()
        page.get_by_text("loaded snapshot browser-test").wait_for()
        wait_idle(page)
        no_tracebacks(page)
        shots(page, "11-snapshot-save-load")

        # a benchmark of this collection from the Benchmarks tab, with progress, then its plots
        page.get_by_role("tab", name="Benchmarks").click()
        wait_idle(page)
        page.get_by_text("No benchmark results yet").wait_for()
        page.get_by_label("Queries (sampled)").fill("40")
        toggle(page, "bench_tune")
        page.get_by_role("button", name="Run benchmark").click()
        progress_in_view(page, "12-benchmark-progress")
        page.get_by_text("Benchmark done").wait_for(timeout=STEP_TIMEOUT_MS)
        wait_idle(page)
        assert "tab=Benchmarks" in page.url
        images_loaded(page, 2)
        no_tracebacks(page)
        shots(page, "13-benchmark-results")

        # the two web images, grouped by the term that brought them, with their source
        page.get_by_role("tab", name="Manage web images").click()
        page.get_by_text("dragonfly · 1 image(s)").wait_for()
        wait_idle(page)
        assert page.get_by_text("parrot · 1 image(s)").count() == 1
        images_loaded(page, 2)
        shots(page, "15-manage-web-images")
    except BaseException:
        for i, pg in enumerate(p for p in (page, other) if p is not None):
            pg.screenshot(path=str(ARTIFACTS / f"failure-{i}.png"))
        raise
    finally:
        for pg in (page, other):
            if pg is not None:
                pg.context.close()


def test_restart_finds_the_index_and_answers_quickly(browser: Any, app: AppHolder, app_env: dict[str, str]) -> None:
    """Restart on the same state: nothing is embedded again, and the first text query is quick.
    The restarted server stays up for the security story."""
    timings, text_s = TIMINGS, TEXT_S
    app.running()  # when run alone: the first start indexes the collection
    caches = sorted(Path(app_env["IMRS_HOME"]).glob("collections/*/emb/emb_efficientnet_lite0.store/manifest.json"))
    mtime = caches[0].stat().st_mtime_ns
    server = app.restart("streamlit-restart.log")
    page = browser.new_page(viewport=DESKTOP)
    try:
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.goto(server.url)
        page.get_by_label(TEXT_BOX).wait_for(timeout=START_TIMEOUT_S * 1000)
        t_box = time.monotonic()
        # the page says while the models load in the background; a person types meanwhile
        page.get_by_text("in the background").wait_for(state="hidden", timeout=START_TIMEOUT_S * 1000)
        t_models = time.monotonic()
        took = text_search(page, "a sunflower")
        t_result = time.monotonic()
        assert labels(page)[0] == "sunflower", labels(page)
        # the page's first query after a start ran without PyTorch: its libraries would stay mapped
        # in the server process once imported
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text(errors="replace")
        assert "libtorch" not in maps and "/torch/_C" not in maps
        text_s.append(text_search(page, "a lotus"))
        shots(page, "14-after-restart-text")
        timings.update(restart_to_search_box_s=round(t_box - server.started, 2),
                       restart_to_models_ready_s=round(t_models - server.started, 2),
                       restart_to_first_text_result_s=round(t_result - server.started, 2),
                       restart_first_text_click_to_results_s=round(took, 2))
        assert caches[0].stat().st_mtime_ns == mtime
    finally:
        page.context.close()
    timings.update(text_click_to_results_s=[round(x, 2) for x in text_s],
                   text_click_to_results_median_s=median(text_s) if text_s else None,
                   image_click_to_results_s=[round(x, 2) for x in IMAGE_S],
                   image_click_to_results_median_s=median(IMAGE_S) if IMAGE_S else None,
                   page_shown_vs_measured_s=[[round(a, 2), round(b, 2)] for a, b in SHOWN_S])
    (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=2))
    print("timings:", json.dumps(timings))
    # the figure the page shows is the person's wait (click to drawn results, thumbnails included),
    # not the server's share: it is never far below what the test measured from outside
    for measured, shown in SHOWN_S:
        assert shown >= 0.8 * measured - 0.2, SHOWN_S
