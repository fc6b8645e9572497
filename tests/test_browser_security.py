"""The page is safe to share: hostile links, stored terms and file names opened by a visitor in a
fresh browser context.

Runs on the session's one app server (tests/browser_kit.py), after the main story when both run.
Every hostile link and term points at a loopback ``Recorder`` that notes any request reaching
it; Playwright's request log of the visitor's context must hold nothing but the app's own
address. Checked for each: no link or image from the hostile text, no colour, maths or icon
drawn from it, no growth switched on by the link, no write (the counts stay), and an
editor-only action is refused to the visitor. Shared links to collection images are opened for
a sample of negative and positive ids (the round trip of every demo id is in tests/test_app.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import pytest
from playwright.sync_api import expect

from tests.browser_kit import (
    ARTIFACTS,
    DESKTOP,
    EDITOR_TOKEN,
    HOSTILE_FILE,
    HOSTILE_FOLDER,
    START_TIMEOUT_S,
    STEP_TIMEOUT_MS,
    TEXT_BOX,
    AppHolder,
    Recorder,
    caption,
    no_tracebacks,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

JOINER = "\u2060"


def visible(page: Any, selector: str = "[data-testid='stMain']") -> str:
    """What a person reads (the invisible word joiners the page puts into hostile text removed)."""
    return page.locator(selector).inner_text().replace(JOINER, "")


def web_count(page: Any) -> int:
    m = re.search(r"\+ (\d+) from the web", visible(page, "[data-testid='stMainBlockContainer']"))
    assert m, visible(page)[:300]
    return int(m.group(1))


def assert_inert(page: Any, rec: Recorder, *words: str) -> None:
    """Nothing in the page came alive from hostile text: no link or image to the recorder or to a
    name the hostile text chose, no maths, no colour or icon whose text came from it."""
    main = page.locator("[data-testid='stMain']")
    hrefs = main.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href') || '')")
    assert not [h for h in hrefs if not h.startswith("#")], hrefs  # only Streamlit's heading anchors
    srcs = main.locator("img").evaluate_all("els => els.map(e => e.getAttribute('src') || '')")
    origin = re.match(r"https?://[^/]+", page.url).group(0)  # thumbnails come from the app's own media
    assert not [s for s in srcs if str(rec.port) in s or "kite" in s or "phish" in s
                or (s.startswith(("http:", "https:", "//")) and not s.startswith(origin + "/media/"))], srcs
    assert main.locator(".katex, math").count() == 0
    coloured = main.locator(".stMarkdownColoredText").all_inner_texts()
    assert not [c for c in coloured if c.strip() in ("r", "x", "warn")], coloured
    icons = main.locator("[data-testid='stMarkdownContainer'] span[role='img']").all_inner_texts()
    assert "home" not in icons, icons
    text = visible(page)
    assert "🚀" not in text  # no emoji from a shortcode in a hostile name
    for w in words:
        assert w in text, (w, text[:2000])


def open_link(page: Any, base: str, params: dict[str, str]) -> None:
    page.goto(base + "?" + urlencode(params, quote_via=quote))
    page.get_by_label(TEXT_BOX).or_(page.get_by_text("Image from")).first.wait_for(timeout=START_TIMEOUT_S * 1000)
    wait_idle(page)


def test_hostile_links_and_stored_text_stay_text(browser: Any, app: AppHolder, recorder: Recorder,  # noqa: PLR0915
                                                 app_env: dict[str, str]) -> None:
    server = app.running()
    base = server.url
    r = recorder.base
    term = f"kite [Log in to continue]({r}/phish) ![t]({r}/t.jpg) :red[warn] $x^2$"
    editor = browser.new_context(viewport=DESKTOP).new_page()
    visitor_ctx = browser.new_context(viewport=DESKTOP)
    requests: list[str] = []
    visitor_ctx.on("request", lambda req: requests.append(req.url))
    visitor = visitor_ctx.new_page()
    for pg in (editor, visitor):
        pg.set_default_timeout(STEP_TIMEOUT_MS)
    try:
        # an editor grows the collection with a hostile term (stored, then shown to everyone)
        editor.goto(base)
        editor.get_by_label(TEXT_BOX).wait_for(timeout=START_TIMEOUT_S * 1000)
        wait_idle(editor, START_TIMEOUT_S * 1000)
        editor.get_by_label("Editor token").fill(EDITOR_TOKEN)
        editor.get_by_role("button", name="Sign in as editor").click()
        editor.get_by_text("signed in as an editor").wait_for()
        wait_idle(editor)
        # calibration: its progress in view at the top of the page, its result in words
        editor.get_by_text("Coverage thresholds").click()
        # a small collection calibrates in a moment: the page itself notes where the bar first appears
        editor.evaluate("""() => { window.__bar = new Promise((resolve) => { const look = () => {
            const el = document.querySelector("[data-testid='stMainBlockContainer'] [data-testid='stProgress']");
            const r = el && el.getBoundingClientRect();
            if (r && r.height > 0) { resolve({y: r.y, height: r.height}); } else { requestAnimationFrame(look); }
          }; look(); }); }""")
        editor.get_by_role("button", name="Calibrate on this collection").click()
        bar = editor.evaluate("() => window.__bar")
        assert 0 <= bar["y"] and bar["y"] + bar["height"] <= DESKTOP["height"], bar  # in view, not below the fold
        editor.get_by_text("now count as covered when the best match scores at least").first.wait_for(
            timeout=STEP_TIMEOUT_MS)
        wait_idle(editor)
        editor.screenshot(path=str(ARTIFACTS / "21-calibrated-desktop.png"))
        editor.get_by_role("tab", name="Batch expansion").click()
        wait_idle(editor)
        editor.get_by_label("Terms (one per line)").fill(term)
        editor.get_by_label("Images per term").fill("1")
        editor.get_by_role("button", name="Run expansion").click()
        editor.get_by_text("Summary").wait_for(timeout=STEP_TIMEOUT_MS)
        wait_idle(editor)
        assert_inert(editor, recorder)
        grown = web_count(editor)
        assert grown >= 1

        # 1. a hostile text link that also tries to switch growth on for whoever opens it
        hostile_q = (f"[click here to log in]({r}/phish) ![x]({r}/kite.jpg) :red[r] $x^2$ :material/home: "
                     f"www.example.com ") + "padding " * 700
        open_link(visitor, base, {"q": hostile_q, "auto_expand": "true", "auto_confirm": "true"})
        caption(visitor, "“[click here to log in]").wait_for()
        wait_idle(visitor)
        cap = visitor.get_by_text(re.compile(r"\d+ results for ")).inner_text().replace(JOINER, "")
        assert (f"[click here to log in]({r}/phish) ![x]({r}/kite.jpg) :red[r] $x^2$ :material/home: "
                f"www.example.com") in cap, cap
        expect(visitor.get_by_label(TEXT_BOX)).to_have_value(hostile_q.strip())
        assert len(cap) < 400, len(cap)  # 5,000 characters are not echoed in full
        assert "auto_expand" not in visitor.url and "auto_confirm" not in visitor.url
        assert visitor.locator(".st-key-auto_expand").count() == 0  # growth switches are for editors
        assert visitor.locator(".st-key-grow_text").count() == 0
        assert_inert(visitor, recorder)
        assert web_count(visitor) == grown  # nothing was written
        no_tracebacks(visitor)
        visitor.screenshot(path=str(ARTIFACTS / "22-hostile-link-desktop.png"))

        # 2. the stored term, seen by a visitor in Manage, and the hostile folder and file names
        open_link(visitor, base, {"tab": "Manage web images"})
        visitor.get_by_text(re.compile(r"kite \[Log in to continue\]")).first.wait_for()
        wait_idle(visitor)
        assert_inert(visitor, recorder, f"kite [Log in to continue]({r}/phish) ![t]({r}/t.jpg) :red[warn] $x^2$")
        assert visitor.get_by_role("button", name=re.compile("Remove selected")).count() == 0
        visitor.get_by_text("Removing web images is for editors.").wait_for()
        visitor.screenshot(path=str(ARTIFACTS / "23-stored-term-desktop.png"))

        from imrs.ids import normalise_relpath, stable_id

        hostile_id = stable_id(normalise_relpath(f"{HOSTILE_FOLDER}/{HOSTILE_FILE}"))
        # the link shows the query image among its results: its own best match, labelled by its folder
        open_link(visitor, base, {"img": f"c:{hostile_id}", "mode": "Image", "top_k": "3", "hide_query": "false"})
        caption(visitor, "collection: ").wait_for()
        wait_idle(visitor)
        expect(visitor.locator("[data-testid='stMainBlockContainer']")).to_contain_text("#1 · :")
        assert_inert(visitor, recorder, f"#1 · {HOSTILE_FOLDER}", f"collection: {HOSTILE_FOLDER}"[:40])
        visitor.locator("[class*='st-key-view_res_'] button").first.click()
        dialog = visitor.get_by_role("dialog")
        dialog.get_by_text(re.compile(r"Original: \d+×\d+ px")).wait_for()
        about = dialog.inner_text().replace(JOINER, "")
        assert f"File: {HOSTILE_FOLDER}/{HOSTILE_FILE}" in about, about
        assert server.url not in about and "/tmp" not in about and "browser-collection" not in about, about
        assert dialog.locator("a").count() == 0 and dialog.locator(".katex").count() == 0
        visitor.keyboard.press("Escape")
        dialog.wait_for(state="hidden")

        # 3. editor-only actions are refused to a visitor: no folder box, no growth, no batch
        assert visitor.get_by_label("Collection folder").count() == 0
        open_link(visitor, base, {"tab": "Batch expansion"})
        visitor.get_by_text("Growing the collection from the web is for editors").first.wait_for()
        assert visitor.get_by_role("button", name="Run expansion").count() == 0
        open_link(visitor, base, {"img": "c:99999999999999999999999999", "mode": "Image"})
        visitor.get_by_text("the link's image reference is not one this app wrote").wait_for()
        no_tracebacks(visitor)

        # 4. shared links to collection images: negative ids as well as positive ones
        root = Path(app_env["IMRS_ROOT"])
        rels = sorted(p.relative_to(root).as_posix() for p in root.glob("[A-Za-z]*/*.jpg"))
        ids = {rel: stable_id(normalise_relpath(rel)) for rel in rels}
        sample = [r for r in rels if ids[r] < 0][:3] + [r for r in rels if ids[r] >= 0][:1]
        for rel in sample:
            ref = f"c:{ids[rel]}"
            open_link(visitor, base, {"img": ref, "mode": "Image"})
            caption(visitor, f"collection: {rel}").wait_for()
            wait_idle(visitor)
            expect(visitor.locator("span.imrs-timing").last).to_have_text("restored from the link")
            assert f"img={ref}" in unquote(visitor.url)  # the link the page keeps is the one opened
            no_tracebacks(visitor)
        assert web_count(visitor) == grown
    except BaseException:
        for i, pg in enumerate((editor, visitor)):
            pg.screenshot(path=str(ARTIFACTS / f"failure-security-{i}.png"))
        raise
    finally:
        editor.context.close()
        visitor_ctx.close()
    assert recorder.requests == [], recorder.requests
    outside = [u for u in requests if not u.startswith((base.rstrip("/"), "data:", "blob:", "about:"))]
    assert outside == [], outside
    # nothing fetched by a name the hostile text chose (the links themselves carry them in their query)
    assert not [u for u in requests if any(w in urlsplit(u).path for w in ("kite", "phish", "t.jpg"))], requests
