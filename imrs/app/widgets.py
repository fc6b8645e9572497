"""Pieces every tab draws with: the error boundary, messages that survive a rerun, the one progress
bar adapter for the pipeline's ``Progress`` callback, and the results grid with its enlarged view.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from ..errors import IMRSError
from . import media
from .text import plain, public

log = logging.getLogger("imrs.app")

#: The calibrated confidence the pipeline puts on every hit, as a coloured badge.
CONFIDENCE_COLOURS = {"likely match": "green", "uncertain": "orange", "no match": "gray"}


# --------------------------------------------------------------------------------------------
# Errors and messages
# --------------------------------------------------------------------------------------------


def detail(msg: object) -> str:
    """An error's words (which may quote a file name, a URL or a server's answer) as text; for a
    session that is not an editor's, without server paths."""
    text = str(msg)
    return plain(text if st.session_state.get("_editor") else public(text))


@contextlib.contextmanager
def shown_errors(what: str) -> Iterator[None]:
    """The page's error boundary: one readable line in an error box, the traceback only in the log."""
    try:
        yield
    except IMRSError as exc:
        st.error(detail(exc), icon=":material/error:")
    except Exception as exc:  # noqa: BLE001 - the UI must never show a raw traceback
        log.exception("%s failed", what)
        st.error(f"{what} failed unexpectedly: {detail(f'{type(exc).__name__}: {exc}')} (details are in the server "
                 f"log)", icon=":material/report:")


def flash(kind: str, text: str) -> None:
    """A message that survives the ``st.rerun`` that follows an action. ``text`` is Markdown the
    caller built: anything in it not from the code has been through ``plain``."""
    st.session_state.setdefault("_flash", []).append((kind, text))


def show_flashes() -> None:
    for kind, text in st.session_state.pop("_flash", []):
        getattr(st, kind)(text)


# --------------------------------------------------------------------------------------------
# Progress: the pipeline's (stage, done, total) callback drawn as one bar
# --------------------------------------------------------------------------------------------


class ProgressBar:
    """A ``Progress`` callback that draws into ``slot``: throttled (a 30k-image index must not flood
    the socket) and safe to call from the pipeline's worker threads (they get the page's context).
    ``job``: also posted on the activity board, so other sessions can see how far it is."""

    def __init__(self, slot: Any, first: str = "starting ...", job: Any = None) -> None:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        self.slot = slot
        self.job = job
        self._ctx = get_script_run_ctx()
        self._last = 0.0
        self._lock = threading.Lock()
        self.stages: list[str] = []
        self.bar = slot.progress(0.0, text=first)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.job is not None:
            self.job.stage, self.job.done, self.job.total = stage, done, total
        if stage not in self.stages:
            self.stages.append(stage)
        now = time.monotonic()
        with self._lock:
            if 0 < done < total and now - self._last < 0.15:
                return
            self._last = now
        if self._ctx is not None:
            from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

            if get_script_run_ctx() is None:
                add_script_run_ctx(threading.current_thread(), self._ctx)
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        text = f"{stage}: {done}/{total}" if total > 0 else f"{stage} ..."
        try:
            self.bar.progress(frac, text=text)
        except Exception as exc:  # noqa: BLE001 - a closed page must not fail the work
            log.debug("progress not drawn: %s", exc)

    def close(self) -> None:
        self.slot.empty()


# --------------------------------------------------------------------------------------------
# Results grid
# --------------------------------------------------------------------------------------------


def confidence_badge(conf: str) -> str:
    if not conf:
        return ""
    return f":{CONFIDENCE_COLOURS.get(conf, 'gray')}-badge[{conf}]"


def short(text: str, n: int = 34) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def card_name(h: dict[str, Any]) -> str:
    """One line under the label: the web image's title, else the file name (as text)."""
    return plain(short(h.get("title") or Path(h["relpath"]).name))


def render_grid(hits: Sequence[dict[str, Any]], key: str, cols: int = 4, *, actions: bool = True,
                on_search_with: Callable[[dict[str, Any]], None] | None = None,
                query_marks: set[int] | None = None) -> None:
    """Cards of equal height: a 4:3 letterboxed thumbnail, the label, the calibrated confidence next
    to the raw score, one line of name, and the actions (enlarge, search with this)."""
    if not hits:
        st.info("No results.")
        return
    for start in range(0, len(hits), cols):
        row = st.columns(cols)
        for col, (rank, h) in zip(row, enumerate(hits[start:start + cols], start + 1), strict=False):
            with col, st.container(border=True, key=f"card_{key}_{rank}"):
                thumb = media.thumb_of(h["path"])
                if thumb is None:
                    st.warning(f"missing file {plain(short(h['relpath']))}")
                else:
                    st.image(thumb, width="stretch")
                st.markdown(f"**#{rank}** · {plain(h['label'] or '—')}")
                src = ":violet-badge[web]" if h["source"] == "dynamic" else ":gray-badge[yours]"
                mark = " :blue-badge[query image]" if query_marks and h["id"] in query_marks else ""
                st.markdown(f"{confidence_badge(h.get('confidence', ''))} `{h['score']:.3f}` {src}{mark}")
                st.caption(card_name(h))
                if actions:
                    with st.container(horizontal=True, gap="small"):
                        if st.button("View", key=f"view_{key}_{h['id']}", icon=":material/zoom_in:",
                                     help="enlarge: original size, file, source and licence"):
                            image_dialog(h, on_search_with)
                        if on_search_with is not None:
                            st.button("Similar", key=f"use_{key}_{h['id']}", icon=":material/image_search:",
                                      on_click=on_search_with, args=(h,), help="search with this image")


@st.dialog("Image", width="large")
def image_dialog(h: dict[str, Any], on_search_with: Callable[[dict[str, Any]], None] | None = None) -> None:
    """The enlarged view: the picture as large as the window allows, and everything known about it."""
    try:
        view = media.view_image(h["path"])
    except IMRSError as exc:
        st.error(detail(exc))
        return
    pic, about = st.columns([3, 2], gap="medium")
    # small originals (the demo's are ~300 px) are shown at twice their size, large ones fill the column
    pic.image(view.image, width=min(2 * view.image.width, 900) if view.image.width < 450 else "stretch")
    kb = view.file_size / 1024
    # the file by its place in the collection (never the server's absolute path); every web-given
    # field as text: a page address is shown, not linked, so a hostile record cannot make a link
    facts = [f"**{plain(h['label'] or '—')}** · {confidence_badge(h.get('confidence', ''))} score `{h['score']:.3f}`",
             f"Original: {view.width}×{view.height} px, {plain(view.format)}, {kb:,.0f} kB",
             f"File: {plain(h['relpath'])}"]
    if h["source"] == "dynamic":
        facts.append(f"From the web ({plain(h['provider'] or 'source unknown', 40)})" +
                     (f" for “{plain(h['term'], 80)}”" if h.get("term") else ""))
        if h.get("url"):
            facts.append(f"Page: {plain(h['url'], 200)}")
        facts.append(f"Licence: {plain(h.get('license') or 'not stated', 80)}" +
                     (f" · by {plain(h['author'], 60)}" if h.get("author") else ""))
        if h.get("image_url") and h.get("image_url") != h.get("url"):
            facts.append(f"Image file: {plain(h['image_url'], 200)}")
    else:
        facts.append("Source: your collection")
    if h.get("title"):
        facts.append(f"Title: {plain(h['title'], 120)}")
    if h.get("caption") and h.get("caption") != h.get("title"):
        facts.append(f"Caption: {plain(h['caption'], 200)}")
    if h.get("why"):
        facts.append(f"Matched on: {plain(', '.join(h['why']))}")
    if h.get("added"):
        facts.append(f"Added: {plain(h['added'][:19].replace('T', ' '))}")
    about.markdown("  \n".join(facts))
    if on_search_with is not None and about.button("Search with this image", key=f"dlg_use_{h['id']}",
                                                   icon=":material/image_search:", type="primary"):
        on_search_with(h)
        st.rerun()
