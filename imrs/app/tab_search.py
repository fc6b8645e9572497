"""The Search tab: a text or image query in, the pipeline's answer out.

The page asks ``run_query`` and shows what comes back: hits with their calibrated confidence, the
coverage verdict, the proposed web-search terms (one click grows the collection with one of them),
and after a growth the before/after the pipeline reports. Progress is drawn at the top of the
results area, where the eye already is. Nothing here judges coverage or picks a term.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import streamlit as st

from ..errors import IMRSError
from ..ids import normalise_relpath, stable_id
from . import media, timing
from . import session as S
from . import workspace as W
from .pipeline import Query, QueryOutcome, run_query
from .text import plain
from .widgets import ProgressBar, detail, flash, render_grid, shown_errors

IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
TEXT_BOX = "Describe what you are looking for"
PREVIEW_SIDE = 220  # the crop box is drawn on a preview this large (the crop applies to the original)
#: A query is echoed (caption, grow button) up to this many characters; the search uses all of it.
ECHO_CHARS = 160
_RESULTS = itertools.count(1)  # numbers each drawn result, so the page times each one once


# --------------------------------------------------------------------------------------------
# The tab
# --------------------------------------------------------------------------------------------


def tab_search(ctx: dict[str, Any]) -> None:
    opened: W.Opened = ctx["opened"]
    mode = st.segmented_control("Query by", list(S.MODES), key="mode", bind="query-params",
                                label_visibility="collapsed") or "Text"
    if mode == "Text":
        text_inputs(opened.coll)
        results_area(ctx, mode, cols=4)
    else:
        left, right = st.columns([1.25, 3], gap="medium")
        with left:
            image_inputs(ctx)
        with right:
            results_area(ctx, mode, cols=3)


def text_inputs(coll: Any) -> None:
    with st.form("text_form", border=False):
        c1, c2 = st.columns([5, 1], vertical_alignment="bottom")
        text = c1.text_input(TEXT_BOX, key="q_text", placeholder="e.g. a sunflower, an airplane in the sky, a leopard")
        if c2.form_submit_button("Search", type="primary", width="stretch"):
            if text.strip():
                S.request_search("text")
                S.set_text_url(text.strip())
            else:  # an empty search clears the previous answer: no results under a question not asked
                st.session_state.pop("result", None)
                st.session_state.pop("_pending", None)
                if "q" in st.query_params:
                    del st.query_params["q"]
                st.warning("Type something to search for.")
    if not coll.backbone_info.supports_text:
        st.caption(f"{coll.backbone} has no text encoder: a text query is matched to ImageNet class names and "
                   f"from them to images (approximate). A CLIP backbone embeds text directly.")


# --------------------------------------------------------------------------------------------
# Image query: sources, the crop box
# --------------------------------------------------------------------------------------------


def use_hit_as_query(h: dict[str, Any]) -> None:
    """"Similar" on a result (a callback): the result becomes the image query."""
    try:
        data = media.read_query_file(h["path"])  # bounded read: the file may have become a FIFO since
    except IMRSError as exc:
        flash("error", f"cannot read {plain(h['relpath'])}: {detail(exc)}")
        return
    S.set_query_image(data, f"result: {h['relpath']}", S.collection_ref(h["id"]))
    st.session_state["mode"] = "Image"
    st.session_state["img_src"] = "Result"


def _collection_ref(coll: Any, path: Path) -> str:
    """``c:<id>`` for a file of this collection (its id is a function of its relative path): the
    path as found under the root first (a collection of symbolic links resolves elsewhere)."""
    for candidate in (Path(os.path.abspath(path)), path.resolve()):
        try:
            return S.collection_ref(stable_id(normalise_relpath(candidate.relative_to(coll.root).as_posix())))
        except ValueError:
            continue
    return ""


def image_inputs(ctx: dict[str, Any]) -> None:
    coll, home = ctx["opened"].coll, ctx["home"]
    src = st.radio("Image from", list(S.IMAGE_SOURCES), horizontal=True, key="img_src",
                   help="Result: press “Similar” under any result")
    if src == "Upload":
        up = st.file_uploader("Upload a query image", type=IMAGE_TYPES, key="upload")
        if up is not None and st.session_state.get("_upload_id") != up.file_id:
            st.session_state["_upload_id"] = up.file_id
            data = up.getvalue()
            forget_query()  # a bad upload must not leave the previous query's results under its error
            with shown_errors("Reading the upload"):
                media.decode_query(data, f"upload: {up.name}")  # refuse non-images before keeping them
                S.set_query_image(data, f"upload: {up.name}", "u:" + media.store_query(home, data))
                S.request_search("image")
    elif src == "URL":
        with st.form("url_form", border=False):
            url = st.text_input("Image URL", key="q_url", placeholder="https://example.org/photo.jpg")
            if st.form_submit_button("Fetch"):
                forget_query()
                with shown_errors("Fetching the image"), st.spinner("Downloading ..."):
                    data = media.fetch_query_url(url, allow_loopback=bool(st.session_state.get("allow_loopback")))
                    S.set_query_image(data, f"url: {url.strip()}", "u:" + media.store_query(home, data))
                    S.request_search("image")
    elif src == "Webcam":
        shot = st.camera_input("Take a photo", key="camera")
        if shot is not None and st.session_state.get("_camera_id") != shot.file_id:
            st.session_state["_camera_id"] = shot.file_id
            data = shot.getvalue()
            S.set_query_image(data, "webcam", "u:" + media.store_query(home, data))
            S.request_search("image")
    elif src == "Example":
        examples = media.example_images(coll.root)
        if not examples:
            st.info("No example images in this collection.")
        for start in range(0, len(examples), 2):
            cols = st.columns(2)
            for col, (label, path) in zip(cols, examples[start:start + 2], strict=False):
                with col:
                    thumb = media.thumb_of(path, 192)
                    if thumb:
                        st.image(thumb, width="stretch")
                    if st.button(plain(label), key=f"ex_{label}", width="stretch"):
                        S.set_query_image(media.read_query_file(path), f"example: {label}",
                                          _collection_ref(coll, path))
                        S.request_search("image")
    elif "query_image" not in st.session_state:
        st.info("Press “Similar” under a result to search with it.")
    q = st.session_state.get("query_image")
    if q is None:
        return
    with shown_errors("Reading the query image"):
        img = media.decode_query(q["bytes"], q["origin"])
        box = crop_box(img)
        cropped = media.crop(img, box)
        st.caption(f"{plain(q['origin'], 48)} · {img.width}×{img.height}"
                   + (f" · searching the box {cropped.width}×{cropped.height}" if box != media.FULL_BOX else
                      " · drag the box corners to search a part"))
        key = (q["digest"], box)
        if st.session_state.get("_image_key") != key and "_pending" not in st.session_state:
            S.request_search("image")  # a new crop is a new query
        st.session_state["_image_key"] = key
        st.session_state["_image_query"] = {"image": cropped, "ref": q["ref"], "box": box, "digest": q["digest"],
                                            "desc": q["origin"] + (" (cropped)" if box != media.FULL_BOX else "")}
        if st.button("Search with this image", type="primary", key="img_search", width="stretch"):
            S.request_search("image")


def forget_query() -> None:
    for key in ("query_image", "result", "_image_query", "_image_key"):
        st.session_state.pop(key, None)


def crop_box(img: Any) -> media.Box:
    """The drag box (streamlit-cropper) on a small preview; its rectangle as fractions of the image.
    Without the component (not installed) the whole image is searched."""
    ss = st.session_state
    box: media.Box = ss.get("crop_box", media.FULL_BOX)
    try:
        from streamlit_cropper import st_cropper
    except ImportError:
        st.image(img, width="stretch")
        return media.FULL_BOX
    preview = img.copy()
    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    pw, ph = preview.size
    coords = (round(box[0] * pw), round(box[2] * pw), round(box[1] * ph), round(box[3] * ph))
    rect = st_cropper(preview, realtime_update=True, default_coords=coords, box_color="#ff4b4b",
                      return_type="box", should_resize_image=False, key=f"cropper_{ss.get('crop_gen', 0)}",
                      stroke_width=2)
    given = {"left": coords[0], "top": coords[2], "width": coords[1] - coords[0], "height": coords[3] - coords[2]}
    if rect and any(abs(float(rect[k]) - given[k]) > 1 for k in given):  # moved: not just pixel rounding
        box = media.box_from_rect(rect, pw, ph)
    ss["crop_box"] = box
    return box


# --------------------------------------------------------------------------------------------
# Running a query
# --------------------------------------------------------------------------------------------


def build_query(kind: str, pending: S.Pending) -> tuple[Query, dict[str, Any]]:
    """The pipeline's Query for this session's inputs, and what the results view needs to know."""
    ss = st.session_state
    k = int(ss.get("top_k", 12))
    if kind == "text":
        text = (ss.get("q_text") or "").strip()
        if not text:
            raise IMRSError("type something to search for")
        return (Query(text=text, k=k, expand=pending.expand and not pending.restored and bool(ss.get("_editor"))),
                {"mode": "Text", "desc": f"“{text}”", "text": text})
    iq = ss.get("_image_query")
    if iq is None:
        raise IMRSError("choose a query image first")
    exclude: tuple[int, ...] = ()
    parsed = S.parse_image_ref(iq["ref"])
    if parsed is not None and parsed[0] == "c" and ss.get("hide_query", True):
        exclude = (int(parsed[1]),)
    # growth for an image needs a confirmed term (or the auto-confirm setting); without one the
    # pipeline's proposed terms are offered instead
    grow = (pending.expand and not pending.restored and bool(ss.get("_editor"))
            and (pending.term is not None or bool(ss.get("auto_confirm"))))
    query = Query(image=iq["image"], k=k, expand=grow, term=pending.term, exclude_ids=exclude)
    return query, {"mode": "Image", "desc": iq["desc"], "digest": iq["digest"], "ref": iq["ref"], "box": iq["box"]}


def run_search(ctx: dict[str, Any], pending: S.Pending, progress_slot: Any) -> None:
    """Run one query through the pipeline; the outcome goes to session state as plain data."""
    from ..liveindex import caller_search_params

    opened: W.Opened = ctx["opened"]
    ws, coll = opened.ws, opened.coll
    query, meta = build_query(pending.kind, pending)
    if not ws.encoder_ready:
        with progress_slot, st.spinner(f"Loading {coll.backbone} (first query after a start) ..."):
            ws.ensure_encoder()
    ws.ensure_encoder()
    if query.text and not coll.backbone_info.supports_text and not ws.text_ready.is_set():
        with progress_slot, st.spinner("Loading the text model (first text query after a start) ..."):
            ws.wait_text()
    if meta["mode"] == "Text":
        S.set_text_url(meta["text"])
    else:
        S.set_image_url(meta["ref"], meta["box"])
    with ws.activity.job(W.session_id(), "searching", meta["desc"]) as job:
        bar = ProgressBar(progress_slot, "searching ..." if not query.expand else "searching, growing if weak ...",
                          job=job)
        try:
            with caller_search_params(**ctx["tunables"]):
                outcome = run_query(coll, query, ctx["settings"], progress=bar)
        finally:
            bar.close()
    st.session_state["result"] = outcome_to_state(outcome, meta, bool(query.expand))


def outcome_to_state(out: QueryOutcome, meta: dict[str, Any], asked_to_grow: bool) -> dict[str, Any]:
    """What the results view keeps between reruns: plain data only."""
    rep = out.report
    report = None
    if rep is not None:
        report = {"term": rep.term, "added": int(rep.kept), "duplicates": len(rep.duplicates),
                  "failed": len(rep.failures), "off_topic": len(rep.off_topic), "candidates": int(rep.candidates),
                  "summary": rep.summary()}
    return {**meta, "hits": [media.hit_to_dict(h) for h in out.hits], "verdict": verdict_dict(out.verdict),
            "terms": [{"term": t.term, "score": float(t.score), "method": t.method} for t in out.terms],
            "before": None if out.hits_before is None else [media.hit_to_dict(h) for h in out.hits_before],
            "verdict_before": verdict_dict(out.verdict_before), "report": report, "error": out.error,
            "timings": dict(out.timings), "asked_to_grow": asked_to_grow, "nonce": next(_RESULTS)}


def verdict_dict(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    return {"weak": bool(v.weak), "reason": v.reason, "label": v.label, "kind": v.kind, "best": float(v.best),
            "source": v.source}


# --------------------------------------------------------------------------------------------
# The results area
# --------------------------------------------------------------------------------------------


def results_area(ctx: dict[str, Any], mode: str, cols: int) -> None:
    progress_slot = st.empty()  # first thing in the results area: progress is where the eye is
    pending = S.take_pending()
    if pending is not None and pending.kind == mode.lower():
        st.session_state.pop("result", None)  # never leave old results under a new query's error
        with shown_errors("Search"):
            run_search(ctx, pending, progress_slot)
    res = st.session_state.get("result")
    if res is None or res["mode"] != mode or (mode == "Image" and res.get("digest") != _current_digest()):
        return
    with shown_errors("Showing results"):
        show_results(ctx, res, cols, restored=pending is not None and pending.restored)


def _current_digest() -> str | None:
    q = st.session_state.get("query_image")
    return q["digest"] if q else None


def show_results(ctx: dict[str, Any], res: dict[str, Any], cols: int, restored: bool) -> None:
    verdict, rep = res["verdict"], res.get("report")
    if rep is not None:
        vb = res.get("verdict_before") or verdict
        dropped = f", {rep['off_topic']} off-topic left out" if rep["off_topic"] else ""
        term = plain(rep["term"], ECHO_CHARS)
        what = (f"{rep['added']} web image(s) for “{term}” were added" if rep["added"] else
                f"no new image for “{term}” could be added (of {rep['candidates']} found)")
        say = st.success if rep["added"] else st.warning
        say(f"Coverage was weak ({plain(vb.get('reason', '?'))}), so the collection grew: {what} "
            f"({rep['duplicates']} duplicate(s), {rep['failed']} failed download(s){dropped}). Best score "
            f"{vb.get('best', 0.0):.3f} → {verdict['best']:.3f}; now: {plain(verdict['label'])}.",
            icon=":material/trending_up:")
        if verdict["weak"] and rep["added"]:
            st.info(f"Still weak after growing: {plain(verdict['reason'])}")
    elif verdict["weak"]:
        st.warning(f"Weak coverage: {plain(verdict['reason'])}.", icon=":material/search_off:")
    if res.get("error"):
        st.error(f"Growing the collection failed: {detail(res['error'])}", icon=":material/cloud_off:")
    if verdict["weak"] and rep is None:
        propose_terms(res, ctx["role"].editor)
    caption = st.empty()
    marks = {h["id"] for h in res["hits"] if "same image" in h["why"]}
    render_grid(res["hits"], "res", cols, on_search_with=use_hit_as_query, query_marks=marks)
    if res.get("before") is not None:
        with st.expander(f"Results before growing ({len(res['before'])})"):
            render_grid(res["before"], "before", cols, actions=False)
    if restored:
        res["restored"] = True
    t = res["timings"]
    parts = [f"{name} {_secs(t[name])}" for name in ("encode", "search", "verdict", "grow") if name in t]
    server = sum(float(t[name]) for name in ("encode", "search", "verdict", "grow") if name in t)
    with caption.container():
        st.caption(f"{len(res['hits'])} results for {plain(res['desc'], ECHO_CHARS)} · "
                   f"{plain(ctx['opened'].backbone)} · coverage: {plain(verdict['label'])} · server share "
                   f"{_secs(server)} ({' · '.join(parts)})")
        timing.click_to_results(res["nonce"], bool(res.get("restored")))


def _secs(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def propose_terms(res: dict[str, Any], editor: bool) -> None:
    """The pipeline's proposed web-search terms, one click each; a text query offers itself. Only
    an editor grows the collection; a visitor is told so."""
    terms = res.get("terms") or []
    if not editor:
        st.caption("An editor can grow the collection from the web for this query.")
        return
    with st.container(border=True, key="term_box"):
        if res["mode"] == "Text":
            if not res.get("asked_to_grow"):
                st.button(f"Grow the collection with “{plain(res['text'], ECHO_CHARS)}”", key="grow_text",
                          type="primary", icon=":material/add_photo_alternate:", on_click=_grow, args=("text", None))
            return
        if not terms:
            st.caption("No term could be proposed for this image: type one below.")
        else:
            st.markdown("**Grow the collection from the web?** Pick the words that describe this image:")
            with st.container(horizontal=True, gap="small"):
                for i, t in enumerate(terms[:5]):
                    st.button(plain(t["term"], ECHO_CHARS), key=f"term_{i}", on_click=_grow, args=("image", t["term"]),
                              type="primary" if i == 0 else "secondary",
                              help=f"proposed by {plain(t['method'])} (score {t['score']:.2f})")
        with st.form("custom_term", border=False):
            c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
            c1.text_input("Or another term", key="custom_term_text", placeholder="e.g. red panda")
            if c2.form_submit_button("Grow", width="stretch"):
                term = (st.session_state.get("custom_term_text") or "").strip()
                if term:
                    _grow("image", term)
                    st.rerun()


def _grow(kind: str, term: str | None) -> None:
    S.request_search(kind, expand=True, term=term)
