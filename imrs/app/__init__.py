"""IMRS in the browser: a view over the search-and-grow pipeline and the collection.

    streamlit run app_streamlit.py          (or: make app)

Layout of the package:

- ``pipeline``  the only door into ``imrs.query`` (run_query, grow_term) and ``Settings``
- ``workspace`` what all sessions of the process share: collection, models, index, who is busy
- ``session``   this session's settings, query and results, and the part of them in the URL
- ``access``    who may change the collection (editors) and which folders it may index
- ``text``      every piece of text that did not come from the code goes through ``plain``
- ``timing``    the click-to-results figure, measured in the browser
- ``media``     query images in, thumbnails and the enlarged view out (no retrieval)
- ``widgets``   error boundary, messages, the progress adapter, the results grid
- ``sidebar``   per-session settings and the collection's tools
- ``tab_search``, ``tab_batch``, ``tab_manage``, ``tab_bench``: one module per tab

Every action is wrapped so an ``IMRSError`` shows as its one-line message and anything unexpected
as a short error box, never a traceback.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import streamlit as st

from .._pycompat import install_ast_parse_guard
from ..errors import IMRSError
from . import access, sidebar, timing
from . import backbones as B
from . import session as S
from . import workspace as W
from .media import DEMO_ROOT, is_demo, set_thumb_dir
from .pipeline import relabel
from .text import plain
from .widgets import ProgressBar, detail, flash, show_flashes, shown_errors

log = logging.getLogger("imrs.app")

install_ast_parse_guard()  # the page loads models and caches in threads (see imrs._pycompat)

TABS = ["Search", "Batch expansion", "Manage web images", "Benchmarks"]
WATCH_EVERY_S = 3.0


#: Less empty space above the title, so a 1000-px window shows more of the results.
STYLE = "<style>[data-testid='stMainBlockContainer'] {padding-top: 2.5rem;}</style>"


def main() -> None:
    st.set_page_config(page_title="IMRS — image search", page_icon=_icon(), layout="wide")
    st.html(STYLE)
    with st.sidebar:
        timing.install()  # the browser notes each click, so results can say how long the person waited
    ss = st.session_state
    ss["_full_run"] = True
    try:
        _page()
    finally:
        ss["_full_run"] = False


@functools.cache
def _icon() -> Any:
    """The tab's icon, drawn here and served by the app itself: a Material icon name would make
    every visitor's browser fetch it from Google's font server."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((6, 6, 42, 42), outline=(255, 75, 75, 255), width=7)
    d.line((36, 36, 58, 58), fill=(255, 75, 75, 255), width=9)
    return im


@st.cache_resource(show_spinner=False)
def configure_images_once(settings: Any) -> None:
    """The server's ingestion limits become the process's once (again only when the settings change)."""
    from ..imagelimits import configure_images

    configure_images(settings)


def _page() -> None:
    base = S.base_settings()
    home = Path(base.home).expanduser().resolve()
    set_thumb_dir(home / "app" / "thumbs")
    default_root = base.root or str(DEMO_ROOT)
    configure_images_once(base)
    S.init_session(base, lambda: B.default_backbone(base.backbone, base), default_root)
    role = access.current_role(base)
    st.session_state["_editor"] = role.editor  # read by the error boundary: visitors see no server path
    access.editor_panel(base, role)
    cfg = sidebar.collection_settings(role, base)
    root = default_root
    refusal = None
    if role.editor:
        try:
            root = access.resolve_folder(cfg["root"], base, default_root)
        except access.FolderRefused as exc:
            refusal = str(exc)
    choice = cfg["choices"].get(cfg["backbone"])
    if choice is None or not choice.supports_text:
        W.text_warmup()  # the sentence model behind text search loads while the page draws
    header = st.empty()
    if refusal:
        st.error(plain(refusal) + ": showing the default collection.", icon=":material/folder_off:")
    try:
        opened = W.open_workspace(root, cfg["backbone"], cfg["indexer"], cfg["device"], home, base)
    except IMRSError as exc:
        header.markdown("### :material/image_search: IMRS — image search")
        st.error(detail(exc), icon=":material/error:")
        st.info("Pick another collection folder or backbone in the sidebar.")
        return
    sidebar.backbone_status(cfg["status_slot"], opened, cfg["choices"], role)
    draw_header(header, opened, access.allowed_roots(base, default_root))
    try:
        ensure_indexed(opened)
    except IMRSError as exc:
        st.error(detail(exc), icon=":material/error:")
        st.info("Pick another collection folder or backbone in the sidebar.")
        return
    tunables = sidebar.search_settings(opened, role)
    sidebar.expansion_settings(role)
    sidebar.coverage_settings(opened, S.session_settings(base), role)
    sidebar.collection_tools(opened, home, role)
    with shown_errors("Opening the linked image"):
        missing = S.resolve_url_image(opened.coll, home)
        if missing:
            st.warning(missing)
    watcher(opened)
    show_flashes()
    ctx: dict[str, Any] = {"opened": opened, "home": home, "settings": S.session_settings(base, role.editor),
                           "tunables": tunables, "base": base, "role": role}
    sidebar.run_calibration(opened, role)  # in the main area, where its progress and result are seen
    from .tab_batch import tab_batch
    from .tab_bench import tab_bench
    from .tab_manage import tab_manage
    from .tab_search import tab_search

    tabs = st.tabs(TABS, key="tab", bind="query-params")
    for tab, (name, fn) in zip(tabs, [("Search", tab_search), ("Batch expansion", tab_batch),
                                      ("Manage web images", tab_manage), ("Benchmarks", tab_bench)], strict=True):
        with tab:
            if tab.open:
                with shown_errors(name):
                    fn(ctx)
    # counts change during the run (growth, removal): show them at once
    draw_header(header, opened, access.allowed_roots(base, default_root))
    st.session_state["_seen_sig"] = _signature(opened)


def draw_header(slot: Any, opened: W.Opened, roots: list[Path]) -> None:
    coll, ws = opened.coll, opened.ws
    name = "demo collection (Caltech-101 mini)" if is_demo(coll.root) else plain(access.display_root(coll.root, roots))
    if not ws.synced and W.needs_first_index(coll):
        done, total = ws.sync_progress
        counts = f"indexing {done}/{total} images" if total else "indexing ..."
    else:
        counts = f"{coll.catalog.count('base'):,} of your images + {coll.catalog.count('dynamic'):,} from the web"
    slot.markdown(f"### :material/image_search: IMRS — image search  \n"
                  f":gray[{name} · {counts} · {plain(coll.backbone)} / {plain(coll.indexer)}]")


def _signature(opened: W.Opened) -> tuple[Any, ...]:
    coll = opened.coll
    return (coll.catalog.count("base"), coll.catalog.count("dynamic"), opened.ws.activity.version)


def watcher(opened: W.Opened) -> None:
    """Every few seconds, cheaply: is another session (or process) working on this collection, and
    have the counts moved since this page was drawn? Shows the notice, and redraws the whole page
    once the other work has ended so every count is current."""

    @st.fragment(run_every=WATCH_EVERY_S)
    def _watch() -> None:
        ws = opened.ws
        if ws.load_error is None and not (ws.encoder_ready and ws.text_ready.is_set()):
            st.caption(f":material/hourglass_top: Loading {opened.backbone} and the text search model in the "
                       f"background — the first query after a start waits for them.")
        others = ws.activity.others(W.session_id())
        busy = [j for j in others if j.visible]
        if busy:
            st.info("Another session is " + "; ".join(plain(j.describe()) for j in busy) + ". The counts refresh "
                    "when it ends.", icon=":material/sync:")
        elif W.writer_busy(opened.coll):
            st.info("Another program is writing to this collection right now (for example `imrs expand`).",
                    icon=":material/sync:")
        ss = st.session_state
        if not ss.get("_full_run") and not busy and ss.get("_seen_sig") not in (None, _signature(opened)):
            st.rerun(scope="app")

    _watch()


def ensure_indexed(opened: W.Opened) -> None:
    """Bring the index in line with the folder once per server process. A first index waits for the
    model and shows a progress bar; a restart finds nothing new and needs no model at all."""
    ws = opened.ws
    if ws.synced:
        return
    first = W.needs_first_index(ws.coll)
    if ws.job_lock.locked():
        st.info("Another session is indexing this collection; waiting for it ...", icon=":material/hourglass_top:")
    if first:
        st.info(f"First start with {ws.coll.backbone}: every image is embedded once; later starts load the saved "
                f"index in seconds.", icon=":material/hourglass_top:")
        if not ws.encoder_ready:
            with st.spinner(f"Loading {ws.coll.backbone} ..."):
                ws.ensure_encoder()
    label = "Building the index" if first else "Checking the folder for new images"
    bar = ProgressBar(st.empty(), label + " ...")
    summary = W.sync_once(ws, relabel(bar, label))
    bar.close()
    if summary and first:
        flash("success", f"Indexed {plain(ws.coll.root.name)}: {plain(summary)}")
        st.rerun()  # redraw without the first-start notes
