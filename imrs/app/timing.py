"""The time a person waited for their results, measured where they wait: in the browser.

The server only sees its own share (encoding, search, verdict); the person also waits for the
click to reach the server, the page to be sent back and the thumbnails to arrive and be drawn.
So the page records the moment of the last click on a button (or Enter in a box, or a picked
file) and, when a new result is drawn, waits for its images and writes the difference next to
the server's share. A result restored from a link or a reload had no click: it says "restored".

The script is code only (no text from anywhere else goes into it); the numbers are formatted
here, so nothing a person typed can reach it.
"""

from __future__ import annotations

import streamlit as st

_SCRIPT = """
<span class="imrs-timing" data-nonce="%(nonce)s" data-restored="%(restored)d">%(fallback)s</span>
<script>
(function () {
  const w = window;
  if (!w.__imrsTiming) {
    w.__imrsTiming = {click: null, shown: {}};
    const mark = (e) => {
      const t = e.target;
      if (!t || !t.closest) return;
      if ((e.type === "click" && t.closest("button")) || (e.type === "keydown" && e.key === "Enter" &&
          t.closest("input")) || (e.type === "change" && t.matches("input[type=file]"))) {
        w.__imrsTiming.click = performance.now();
      }
    };
    ["click", "keydown", "change"].forEach((k) => document.addEventListener(k, mark, true));
  }
  const st = w.__imrsTiming;
  for (const el of document.querySelectorAll("span.imrs-timing[data-nonce]")) {
    const nonce = el.dataset.nonce;
    if (!nonce) continue;
    if (st.shown[nonce]) { el.textContent = st.shown[nonce]; continue; }
    if (el.dataset.restored === "1" || st.click === null) {
      st.shown[nonce] = "restored from the link";
      el.textContent = st.shown[nonce];
      continue;
    }
    const clicked = st.click;
    const started = performance.now();
    const done = () => {
      const imgs = [...document.querySelectorAll("[data-testid='stMainBlockContainer'] [data-testid='stImage'] img")];
      if (imgs.every((i) => i.complete) || performance.now() - started > 20000) {
        const s = ((performance.now() - clicked) / 1000).toFixed(2);
        st.shown[nonce] = "answered in " + s + " s from your click";
        st.click = null;
        el.textContent = st.shown[nonce];
      } else {
        requestAnimationFrame(done);
      }
    };
    requestAnimationFrame(() => requestAnimationFrame(done));
  }
})();
</script>
"""


def click_to_results(nonce: int, restored: bool) -> None:
    """The in-page figure for result ``nonce`` (a counter the session owns)."""
    st.html(_SCRIPT % {"nonce": int(nonce), "restored": int(bool(restored)),
                       "fallback": "restored from the link" if restored else "measuring ..."},
            unsafe_allow_javascript=True)


def install() -> None:
    """The click recorder, drawn once at the top of every page run so the first click is seen."""
    st.html(_SCRIPT % {"nonce": "", "restored": 0, "fallback": ""}, unsafe_allow_javascript=True)
