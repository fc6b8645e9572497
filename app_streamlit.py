"""IMRS in the browser: search by text or image, grow the collection from the web, manage what was added.

    .venv/bin/streamlit run app_streamlit.py          (or: make app)

Thin on purpose: every action is one call on the ``Collection`` facade or the expansion module,
through ``imrs.app_state`` (which keeps the model and index loaded once per process). Each action
is wrapped so an ``IMRSError`` shows as its one-line message and anything unexpected as a short
error box, never a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import streamlit as st

from imrs import app_state as S
from imrs.errors import IMRSError

log = logging.getLogger("imrs.app")

TABS = ["Search", "Batch expansion", "Manage dynamic images", "Benchmarks"]
GRID_COLS = 5
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]


# --------------------------------------------------------------------------------------------
# Small page helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def shown_errors(what: str) -> Iterator[None]:
    """The page's error boundary: one readable line in an error box, the traceback only in the log."""
    try:
        yield
    except IMRSError as exc:
        st.error(str(exc), icon=":material/error:")
    except Exception as exc:  # noqa: BLE001 - the UI must never show a raw traceback
        log.exception("%s failed", what)
        st.error(f"{what} failed unexpectedly: {type(exc).__name__}: {exc} (details are in the server log)",
                 icon=":material/report:")


def flash(kind: str, text: str) -> None:
    """A message that survives the ``st.rerun`` that follows an action."""
    st.session_state.setdefault("_flash", []).append((kind, text))


def show_flashes() -> None:
    for kind, text in st.session_state.pop("_flash", []):
        getattr(st, kind)(text)


def progress_callback(bar: Any, text: str) -> Any:
    """(done, total) -> st.progress update, throttled so a 30k-image index does not flood the socket."""
    last = [0.0]

    def cb(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.2:
            return
        last[0] = now
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        bar.progress(frac, text=f"{text} {done}/{total}")

    return cb


# --------------------------------------------------------------------------------------------
# Sidebar: which collection, model, index
# --------------------------------------------------------------------------------------------


def sidebar_collection() -> dict[str, Any]:
    sb = st.sidebar
    sb.header("Collection")
    # Defaults go through session_state (not the widgets' value/index), so a test or a callback can
    # preset them without Streamlit's "default and session state both set" warning.
    st.session_state.setdefault("root", S.default_root())
    root = sb.text_input("Collection folder", key="root",
                         help="A folder of images (sub-folders are labels). Empty: the built-in demo "
                              "(Caltech-101 mini). Also settable with the IMRS_ROOT environment variable.")
    root = root.strip() or str(S.DEMO_ROOT)
    devices = S.available_devices()
    st.session_state.setdefault("device", devices[0])
    device = sb.selectbox("Device", devices, key="device", help="cuda is offered when a GPU is detected")
    choices = {c.name: c for c in S.backbone_choices()}
    names = list(choices)
    st.session_state.setdefault("backbone", S.DEFAULT_BACKBONE if S.DEFAULT_BACKBONE in choices else names[0])
    backbone = sb.selectbox("Backbone", names, key="backbone",
                            format_func=lambda n: choices[n].label if n in choices else n)
    if backbone in choices:
        c = choices[backbone]
        sb.caption(f"{c.dim}-d, {'text + image' if c.supports_text else 'image only (text via class names)'}; "
                   f"{c.state}: {c.reason}")
    fallback_slot = sb.empty()
    kinds = list(S.index_kinds())
    st.session_state.setdefault("indexer", S.DEFAULT_INDEXER if S.DEFAULT_INDEXER in kinds else kinds[0])
    indexer = sb.selectbox("Indexer", kinds, key="indexer")
    return {"root": root, "device": device, "backbone": backbone, "indexer": indexer,
            "fallback_slot": fallback_slot}


def sidebar_search(opened: S.Opened) -> dict[str, Any]:
    coll = opened.coll
    sb = st.sidebar
    sb.header("Search")
    top_k = sb.slider("Results (top-k)", 1, 60, 15, key="top_k")
    qe = sb.number_input("Query expansion (top N)", min_value=0, max_value=20, value=0, key="qe",
                         help="alpha query expansion: re-search with the query blended with its top N hits; "
                              "0 = off, 5 raised mAP on Caltech-101 (imrs bench)")
    n = max(len(coll.catalog), 1)
    params: dict[str, int] = {}
    for name, default in S.default_tunables(coll.indexer, n, coll.dim).items():
        lo = -1 if name == "search_k" else 1
        params[name] = int(sb.number_input(name, min_value=lo, max_value=100_000, value=default,
                                           key=f"tune_{coll.indexer}_{name}",
                                           help="search-time trade-off: higher = better recall, slower"))
    if params:
        coll.set_search_params(**params)
    if sb.button("Rebuild index", key="rebuild", help="rebuild from cached embeddings (nothing is re-embedded)"):
        with shown_errors("Rebuilding the index"), st.spinner("Rebuilding the index ..."):
            with opened.ws.job_lock:
                coll.rebuild_index(coll.indexer)
            flash("success", f"index rebuilt: {len(coll.index)} vectors ({coll.indexer})")
            st.rerun()

    with sb.expander("Snapshots"):
        name = st.text_input("Snapshot name", value="my-snapshot", key="snap_name")
        if st.button("Save snapshot", key="snap_save"):
            with shown_errors("Saving the snapshot"):
                m = coll.save_snapshot(name.strip())
                flash("success", f"saved snapshot {m.name}: {m.count} vectors ({m.backbone}/{m.indexer})")
                st.rerun()
        snaps = [m.name for m in coll.list_snapshots() if m.backbone == coll.backbone]
        pick = st.selectbox("Saved snapshots", snaps, key="snap_pick", placeholder="none yet")
        if st.button("Load snapshot", key="snap_load", disabled=not snaps):
            with shown_errors("Loading the snapshot"):
                with opened.ws.job_lock:
                    m = coll.load_snapshot(pick)
                flash("success", f"loaded snapshot {m.name}: {m.count} vectors ({m.backbone}/{m.indexer})")
                st.rerun()

    with sb.expander("Embedding caches (NPZ)"):
        auto_merge = st.toggle("Auto-merge caches on start", value=True, key="auto_merge",
                               help="benchmark caches of this backbone + dynamic-image NPZs (+ the override "
                                    "below) are merged into the live index once per server start")
        override = st.text_input("NPZ override path", value="", key="npz_override",
                                 help="an extra .npz file or a folder of them (separate several with ';')")
        if st.button("Rescan folder and merge now", key="rescan"):
            with shown_errors("Rescanning"):
                bar = st.progress(0.0, text="scanning ...")
                summary = S.sync_once(opened.ws, progress_callback(bar, "embedding"), force=True)
                bar.empty()
                msg = S.merge_npz(opened.ws, S.home_dir(), override)
                flash("success", f"{summary}; {msg}")
                st.rerun()
    return {"top_k": top_k, "qe": int(qe), "auto_merge": auto_merge, "npz_override": override}


def sidebar_expansion(opened: S.Opened) -> dict[str, Any]:
    sb = st.sidebar
    sb.header("Web expansion")
    auto = sb.toggle("Auto-expand on weak coverage", value=False, key="auto_expand",
                     help="when a search finds only weak matches, fetch web images for the query term, add "
                          "them to the collection, and search again")
    overrides: dict[str, Any] | None = None
    with sb.expander("Coverage thresholds"):
        with shown_errors("Reading coverage thresholds"):
            from imrs.query import collection_thresholds

            t_text, src_text = collection_thresholds(opened.coll, "text")
            t_img, src_img = collection_thresholds(opened.coll, "image")
            st.caption(f"{opened.backbone} — text queries: {t_text.describe()} ({src_text}); "
                       f"image queries: {t_img.describe()} ({src_img})")
            if st.toggle("Override the defaults", value=False, key="cov_override"):
                best = st.slider("Best score at least", 0.0, 1.0, float(t_img.best_min), 0.01, key="cov_best")
                good = st.slider("“Good” score at least", 0.0, 1.0, float(t_img.good_min), 0.01, key="cov_good")
                n_good = st.number_input("Good hits needed", 0, 100, int(t_img.min_good), key="cov_n_good")
                overrides = {"best_min": best, "good_min": good, "min_good": int(n_good)}
    with sb.expander("Image sources"):
        st.session_state.setdefault("provider", S.default_provider())
        st.session_state.setdefault("wikimedia_api", S.default_wikimedia_api())
        st.session_state.setdefault("allow_loopback", S.default_allow_loopback())
        provider = st.selectbox("Provider", S.PROVIDERS, key="provider",
                                help="auto: DuckDuckGo, then Wikimedia when DuckDuckGo fails or finds too few")
        api = st.text_input("Wikimedia API URL override", key="wikimedia_api",
                            placeholder="https://commons.wikimedia.org/w/api.php",
                            help="a MediaWiki API endpoint (a mirror, or the tests' loopback server)")
        loopback = st.toggle("Allow loopback downloads (test only)", key="allow_loopback",
                             help="lets downloads reach 127.0.0.1 — only for local testing against a loopback "
                                  "server; leave it off otherwise (it weakens the SSRF guard)")
    return {"auto_expand": auto, "coverage_overrides": overrides, "provider": provider,
            "wikimedia_api": api.strip(), "allow_loopback": loopback}


# --------------------------------------------------------------------------------------------
# Opening the collection: model load, first index with a progress bar, auto-merge
# --------------------------------------------------------------------------------------------


def ensure_indexed(opened: S.Opened) -> None:
    """Bring the index in line with the folder once per server process. A first index waits for the
    model and shows a progress bar; a restart finds nothing new and needs no model at all."""
    ws = opened.ws
    if ws.synced:
        return
    first = S.needs_first_index(ws.coll)
    if ws.job_lock.locked():
        st.info(f"Another session is {ws.busy_with or 'working on this collection'}; waiting for it ...")
    if first:
        st.info(f"First start with {ws.coll.backbone}: the collection is indexed once (every image is embedded); "
                f"later starts load the saved index in seconds.", icon=":material/hourglass_top:")
        if not ws.encoder_ready:
            with st.spinner(f"Loading {ws.coll.backbone} ..."):
                ws.ensure_encoder()
    label = "Building the index" if first else "Checking the folder for new images"
    bar = st.progress(0.0, text=label + " ...")
    summary = S.sync_once(ws, progress_callback(bar, label + ":"))
    bar.empty()
    if summary and first:
        flash("success", f"Indexed {ws.coll.root.name}: {summary}")
        st.rerun()  # redraw without the first-start notes


def wait_for_model(opened: S.Opened) -> None:
    if not opened.ws.encoder_ready:
        with st.spinner(f"Loading {opened.backbone} (first query after start) ..."):
            opened.ws.ensure_encoder()
    else:
        opened.ws.ensure_encoder()  # re-raises a failed load as its readable message


# --------------------------------------------------------------------------------------------
# Results grid
# --------------------------------------------------------------------------------------------


def use_result_as_query(hit: dict[str, Any]) -> None:
    """Callback of "search with this": the result becomes the image query."""
    try:
        data = S.read_query_file(hit["path"])  # bounded read: the file may have become a FIFO since
    except IMRSError as exc:
        flash("error", f"cannot read {hit['relpath']}: {exc}")
        return
    set_query(data, f"result: {hit['relpath']}")
    st.session_state["q_mode"] = "Image"
    st.session_state["img_src"] = "Result"


def render_grid(hits: list[dict[str, Any]], key: str, with_actions: bool = True) -> None:
    if not hits:
        st.info("No results.")
        return
    for start in range(0, len(hits), GRID_COLS):
        cols = st.columns(GRID_COLS)
        for col, (rank, h) in zip(cols, enumerate(hits[start:start + GRID_COLS], start + 1), strict=False):
            with col, st.container(border=True):
                thumb = S.thumb_of(h["path"])
                if thumb is None:
                    st.warning(f"missing file {h['relpath']}")
                else:
                    st.image(thumb, width="stretch")
                badge = ":orange-badge[dynamic]" if h["source"] == "dynamic" else ":gray-badge[base]"
                st.markdown(f"**#{rank}** `{h['score']:.3f}` {badge}  \n{h['label'] or '—'}")
                meta = h.get("title") or h.get("caption")
                if meta:
                    st.caption(meta[:120])
                if h["source"] == "dynamic" and h.get("url"):
                    lic = f" · {h['license']}" if h.get("license") else ""
                    by = f" · {h['author'][:40]}" if h.get("author") else ""
                    st.markdown(f"[source ↗]({h['url']}){lic}{by}")
                if with_actions:
                    st.button("Search with this", key=f"use_{key}_{h['id']}", on_click=use_result_as_query,
                              args=(h,), width="stretch")


# --------------------------------------------------------------------------------------------
# Tab: Search
# --------------------------------------------------------------------------------------------


CROP_KEYS = ("crop_l", "crop_t", "crop_r", "crop_b")


def set_query(data: bytes, origin: str) -> None:
    """A new query image (called before the crop sliders exist in this run, or from a callback):
    the crop starts again from the whole image."""
    st.session_state["query_image"] = {"bytes": data, "origin": origin,
                                       "digest": hashlib.sha1(data).hexdigest()[:16]}
    for k in CROP_KEYS:
        st.session_state[k] = 0


def image_query_inputs(root: Path, allow_loopback: bool) -> None:
    src = st.radio("Image from", ["Upload", "URL", "Webcam", "Example", "Result"], horizontal=True, key="img_src",
                   help="'Result': press \"Search with this\" under any result")
    if src == "Upload":
        up = st.file_uploader("Upload a query image", type=IMAGE_TYPES, key="upload")
        if up is not None and st.session_state.get("_upload_id") != up.file_id:
            st.session_state["_upload_id"] = up.file_id
            set_query(up.getvalue(), f"upload: {up.name}")
    elif src == "URL":
        with st.form("url_form", border=False):
            url = st.text_input("Image URL", key="q_url", placeholder="https://example.org/photo.jpg")
            if st.form_submit_button("Fetch"):
                with shown_errors("Fetching the image"), st.spinner("Downloading ..."):
                    set_query(S.fetch_query_url(url, allow_loopback=allow_loopback), f"url: {url.strip()}")
    elif src == "Webcam":
        shot = st.camera_input("Take a photo", key="camera")
        if shot is not None and st.session_state.get("_camera_id") != shot.file_id:
            st.session_state["_camera_id"] = shot.file_id
            set_query(shot.getvalue(), "webcam")
    elif src == "Example":
        examples = S.example_images(root)
        if not examples:
            st.info("No example images in this collection.")
        cols = st.columns(max(len(examples), 1))
        for col, (label, path) in zip(cols, examples, strict=False):
            with col:
                thumb = S.thumb_of(path, 160)
                if thumb:
                    st.image(thumb, width="stretch")
                if st.button(label, key=f"ex_{label}", width="stretch"):
                    set_query(S.read_query_file(path), f"example: {label}")
    else:
        if "query_image" not in st.session_state:
            st.info("Press \"Search with this\" under a result to use it as the query.")


def crop_controls(q: dict[str, Any]) -> Any:
    """Margins in percent with a live preview; returns the cropped PIL image."""
    img = S.decode_query(q["bytes"], q["origin"])
    c1, c2 = st.columns([1, 2])
    with c2:
        st.markdown(f"**Query image** — {q['origin']} ({img.width}×{img.height})")
        a, b = st.columns(2)
        left = a.slider("Crop left %", 0, 90, key="crop_l")
        right = a.slider("Crop right %", 0, 90, key="crop_r")
        top = b.slider("Crop top %", 0, 90, key="crop_t")
        bottom = b.slider("Crop bottom %", 0, 90, key="crop_b")
    cropped = S.crop_percent(img, left, top, right, bottom)
    with c1:
        preview = cropped.copy()
        preview.thumbnail((320, 320))
        st.image(preview, caption="what will be searched", width="content")
    return cropped, (left, top, right, bottom)


def stage_callback(bar: Any) -> Any:
    """(stage, done, total) from the expansion engine -> one progress bar whose text names the stage."""
    last = [0.0]

    def cb(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.2:
            return
        last[0] = now
        bar.progress(0.0 if total <= 0 else min(1.0, done / total), text=f"{stage}: {done}/{total}")

    return cb


def expand_options(cfg: dict[str, Any], **kw: Any) -> S.ExpandOptions:
    return S.ExpandOptions(provider=cfg["provider"], wikimedia_api=cfg["wikimedia_api"],
                           allow_loopback=cfg["allow_loopback"], **kw)


def run_search(opened: S.Opened, query: dict[str, Any], cfg: dict[str, Any]) -> None:
    """One call into the pipeline (``imrs.query.run_query``); the answer goes to session_state."""
    from imrs.query import Query, run_query

    coll = opened.coll
    t0 = time.perf_counter()
    wait_for_model(opened)
    if query["kind"] == "text" and opened.ws.warmup is not None and opened.ws.warmup.is_alive():
        with st.spinner("Loading the text model (first text query only) ..."):
            opened.ws.wait_warm()
    ov = cfg["coverage_overrides"] or {}
    # auto-expand on: the person asked for growth, so the best proposed term is taken
    settings = S.session_settings(cfg, coverage_best_min=ov.get("best_min"), coverage_good_min=ov.get("good_min"),
                                  coverage_min_good=ov.get("min_good"), auto_confirm_term=bool(cfg["auto_expand"]))
    q = Query(text=query.get("text"), image=query.get("image"), k=cfg["top_k"], qe=cfg.get("qe", 0),
              expand=bool(cfg["auto_expand"]))
    with st.status("Searching ...", expanded=True) as status:
        bar = st.progress(0.0, text="searching ...")
        with opened.ws.job_lock:
            out = run_query(coll, q, settings, progress=stage_callback(bar))
        label = "Coverage was weak — grew the collection from the web" if out.grew else "Done"
        status.update(label=label, state="error" if out.error else "complete", expanded=False)
    res: dict[str, Any] = {"query": query["desc"], "kind": query["kind"], "hits": S.hits_to_dicts(out.hits),
                           "ms": (time.perf_counter() - t0) * 1000.0, "backbone": coll.backbone,
                           "coverage": out.verdict.as_dict()}
    if out.error:
        res["expand_error"] = out.error
    if out.grew and out.report is not None:
        rep = out.report
        res["before"] = S.hits_to_dicts(out.hits_before or [])
        res["before_coverage"] = out.verdict_before.as_dict() if out.verdict_before else None
        res["expansion"] = {"term": rep.term, "added": rep.kept, "duplicates": len(rep.duplicates),
                            "failed": len(rep.failures), "off_topic": len(rep.off_topic)}
    st.session_state["results"] = res


def show_results(res: dict[str, Any]) -> None:
    cov = res.get("coverage")
    if res.get("before") is not None:
        before, after = res["before"], res["hits"]
        b1 = before[0]["score"] if before else 0.0
        a1 = after[0]["score"] if after else 0.0
        rep = res.get("expansion") or {}
        say = st.success if rep.get("added") else st.warning
        was = res.get("before_coverage") or {}
        say(f"Coverage was weak ({was.get('reason', '?')}), so {rep.get('added', 0)} web image(s) "
                   f"for “{rep.get('term', '')}” were added ({rep.get('duplicates', 0)} duplicates, "
                   f"{rep.get('failed', 0)} failed downloads). Top score {b1:.3f} → {a1:.3f}; mean of the top "
                   f"{len(after)} {_mean(before):.3f} → {_mean(after):.3f}.")
        if cov and cov["weak"]:
            st.info(f"Still weak after expanding: {cov['reason']}")
    elif cov is not None and cov["weak"]:
        hint = "" if st.session_state.get("auto_expand") else " Turn on “Auto-expand on weak coverage” in the " \
                                                               "sidebar, or use the Batch expansion tab."
        st.warning(f"Weak coverage: {cov['reason']}.{hint}")
    if res.get("expand_error"):
        st.error(f"Expansion failed: {res['expand_error']}")
    if cov is not None:
        st.caption(f"Verdict: {cov['label']} ({cov['reason']})")
    st.caption(f"{len(res['hits'])} results for {res['query']} · {res['backbone']} · {res['ms']:.0f} ms from the click")
    render_grid(res["hits"], "res")
    if res.get("before") is not None:
        with st.expander("Results before expansion"):
            render_grid(res["before"], "before", with_actions=False)


def _mean(hits: list[dict[str, Any]]) -> float:
    return sum(h["score"] for h in hits) / len(hits) if hits else 0.0


def tab_search(opened: S.Opened, cfg: dict[str, Any]) -> None:
    coll = opened.coll
    st.session_state.setdefault("q_mode", "Text")
    mode = st.segmented_control("Query by", ["Text", "Image"], key="q_mode", label_visibility="collapsed") or "Text"
    query: dict[str, Any] | None = None
    if mode == "Text":
        if not coll.backbone_info.supports_text:
            st.caption(f"{coll.backbone} has no text encoder: a text query is mapped to ImageNet class names "
                       f"and from them to images (approximate; no folder names are used). A CLIP backbone "
                       f"embeds text directly.")
        with st.form("text_form", border=False):
            c1, c2 = st.columns([5, 1], vertical_alignment="bottom")
            text = c1.text_input("Describe what you are looking for", key="q_text",
                                 placeholder="e.g. a sunflower, an airplane in the sky, a leopard")
            if c2.form_submit_button("Search", type="primary", width="stretch"):
                if text.strip():
                    query = {"kind": "text", "text": text.strip(), "desc": f"“{text.strip()}”"}
                else:
                    st.warning("Type something to search for.")
    else:
        image_query_inputs(coll.root, cfg["allow_loopback"])
        q = st.session_state.get("query_image")
        if q is not None:
            with shown_errors("Reading the query image"):
                cropped, box = crop_controls(q)
                key = (q["digest"], box, cfg["top_k"])
                again = st.button("Search with this image", type="primary", key="img_search")
                if again or st.session_state.get("_last_image_query") != key:
                    st.session_state["_last_image_query"] = key
                    crop_note = "" if box == (0, 0, 0, 0) else " (cropped)"
                    query = {"kind": "image", "image": cropped, "desc": f"{q['origin']}{crop_note}"}
    if query is not None:
        with shown_errors("Search"), st.spinner("Searching ..."):
            run_search(opened, query, cfg)
    res = st.session_state.get("results")
    if res is not None:
        with shown_errors("Showing results"):
            show_results(res)


# --------------------------------------------------------------------------------------------
# Tab: Batch expansion
# --------------------------------------------------------------------------------------------


def tab_batch(opened: S.Opened, cfg: dict[str, Any]) -> None:
    st.markdown("Fetch web images for many terms at once. Each image is downloaded through the safe "
                "downloader, re-encoded, checked for near-duplicates (pHash) against the collection, embedded "
                "and added to the live index. Image source settings are in the sidebar (“Image sources”).")
    with st.form("batch_form"):
        c1, c2 = st.columns([3, 2])
        text = c1.text_area("Terms (one per line)", key="batch_terms", height=150,
                            placeholder="red panda\nlighthouse\nhot air balloon")
        csv_file = c2.file_uploader("…or a CSV (a 'term' column, else the first column)",
                                    type=["csv", "txt", "tsv"], key="batch_csv")
        a, b, c, d = st.columns(4)
        dflt = S.session_settings(cfg)
        per_term = a.number_input("Images per term", 1, 200, dflt.expand_n, key="batch_n")
        max_side = b.number_input("Max side (px)", 64, 2048, dflt.expand_max_side, step=64, key="batch_side")
        quality = c.number_input("JPEG quality", 50, 95, dflt.expand_jpeg_quality, key="batch_q")
        phash_thr = d.number_input("pHash threshold", 0, 64, dflt.expand_phash_distance, key="batch_phash",
                                   help="Hamming distance (of 64 bits) at or under which a download counts as a "
                                        "duplicate of an image already in the collection")
        go = st.form_submit_button("Run expansion", type="primary")
    if go:
        with shown_errors("Batch expansion"):
            terms = S.parse_terms(text, csv_file.getvalue() if csv_file is not None else None)
            if not terms:
                st.warning("Give at least one term (in the box or in a CSV).")
                return
            opts = expand_options(cfg, n=int(per_term), max_side=int(max_side), jpeg_quality=int(quality),
                                  phash_threshold=int(phash_thr))
            overall = st.progress(0.0, text=f"0/{len(terms)} terms")
            current: dict[str, Any] = {}

            def on_term(i: int, total: int, msg: str) -> None:
                """expand_batch calls this twice per term: before it (open a status box) and after it
                (close the box with the term's outcome)."""
                overall.progress(min(1.0, i / max(total, 1)), text=f"{i}/{total} terms — {msg}")
                if "status" not in current:
                    current["status"] = st.status(msg, expanded=True)
                    current["bar"] = current["status"].progress(0.0, text="asking image providers ...")
                else:
                    failed = "': failed:" in msg or "': crashed:" in msg
                    current["status"].update(label=msg, state="error" if failed else "complete", expanded=False)
                    current.clear()

            def on_stage(stage: str, done: int, total: int) -> None:
                if "bar" in current:
                    current["bar"].progress(0.0 if total <= 0 else min(1.0, done / total),
                                            text=f"{stage}: {done}/{total}")

            st.session_state["batch_summary"] = S.run_batch(opened.ws, terms, opts, on_term, on_stage)
    rows = st.session_state.get("batch_summary")
    if rows:
        st.subheader("Summary")
        st.dataframe(rows, hide_index=True, width="stretch",
                     column_config={"why": st.column_config.TextColumn("why (failures)", width="large")})


# --------------------------------------------------------------------------------------------
# Tab: Manage dynamic images
# --------------------------------------------------------------------------------------------


def _select_all(slug: str, ids: list[int]) -> None:
    value = bool(st.session_state.get(f"all_{slug}"))
    for i in ids:
        st.session_state[f"sel_{i}"] = value


def tab_manage(opened: S.Opened) -> None:
    coll = opened.coll
    groups = S.dynamic_groups(coll)
    total = sum(len(g.records) for g in groups)
    c1, c2, c3 = st.columns(3)
    c1.metric("Base images", coll.catalog.count("base"))
    c2.metric("Dynamic images", total)
    c3.metric("Terms", len(groups))
    if not groups:
        st.info("No dynamic images yet: they appear here after a web expansion (Batch expansion tab, or "
                "auto-expand on a weak search). Base images are never listed here and never deleted.")
        return
    selected = [r.id for g in groups for r in g.records if st.session_state.get(f"sel_{r.id}")]
    if st.button(f"Remove selected ({len(selected)})", type="primary", disabled=not selected, key="remove_sel"):
        with shown_errors("Removing images"):
            msg = S.remove_dynamic(opened.ws, selected)
            for i in selected:
                st.session_state.pop(f"sel_{i}", None)
            for g in groups:
                st.session_state.pop(f"all_{g.slug}", None)
            flash("success", msg)
            st.rerun()
    for g in groups:
        with st.container(border=True):
            h1, h2 = st.columns([4, 1], vertical_alignment="center")
            h1.markdown(f"#### {g.term} · {len(g.records)} image(s)")
            h2.checkbox("Select all", key=f"all_{g.slug}", on_change=_select_all,
                        args=(g.slug, [r.id for r in g.records]))
            for start in range(0, len(g.records), 6):
                cols = st.columns(6)
                for col, r in zip(cols, g.records[start:start + 6], strict=False):
                    with col:
                        thumb = S.thumb_of(coll.abspath(r.relpath, "dynamic"), 160)
                        if thumb:
                            st.image(thumb, width="stretch")
                        label = (r.title or Path(r.relpath).name)[:40]
                        st.checkbox(label, key=f"sel_{r.id}")
                        if r.page_url or r.source_url:
                            st.caption(f"[{r.provider or 'source'} ↗]({r.page_url or r.source_url})")


# --------------------------------------------------------------------------------------------
# Tab: Benchmarks
# --------------------------------------------------------------------------------------------


def tab_benchmarks() -> None:
    run = S.latest_benchmark(S.home_dir())
    if not run:
        st.info("No benchmark results yet. Run the benchmark from the repository, then reload this tab:")
        st.code(S.BENCH_COMMAND, language="bash")
        return
    meta = run.get("meta") or {}
    st.markdown(f"**Latest run** on `{run.get('data_root', '?')}` · {run.get('created', '')} · "
                f"{meta.get('images', '?')} images, {meta.get('queries', '?')} queries · folder `{run['run_dir']}`")
    plots = S.benchmark_plots(run)
    for start in range(0, len(plots), 2):
        for col, p in zip(st.columns(2), plots[start:start + 2], strict=False):
            col.image(str(p), caption=p.stem.replace("_", " "), width="stretch")
    for i, (title, rows) in enumerate(S.benchmark_tables(run)):
        with st.expander(f"{title} ({len(rows)} rows)", expanded=i < 3):
            st.dataframe(rows, hide_index=True, width="stretch")


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def main() -> None:
    st.set_page_config(page_title="IMRS — image search", page_icon=":material/image_search:", layout="wide")
    cfg = sidebar_collection()
    try:
        opened = S.open_workspace(cfg["root"], cfg["backbone"], cfg["indexer"], cfg["device"])
    except IMRSError as exc:
        st.markdown("### :material/image_search: IMRS — image search")
        st.error(str(exc), icon=":material/error:")
        st.info("Pick another collection folder or backbone in the sidebar.")
        return
    coll = opened.coll
    header = st.empty()
    show_header(header, coll)
    if opened.banner:
        st.warning(opened.banner, icon=":material/warning:")
        cfg["fallback_slot"].caption(f":orange[In use: **{opened.backbone}** (fallback, see the banner)]")
    try:
        ensure_indexed(opened)
    except IMRSError as exc:
        st.error(str(exc), icon=":material/error:")
        st.info("Pick another collection folder or backbone in the sidebar.")
        return
    show_header(header, coll)
    cfg.update(sidebar_search(opened))
    cfg.update(sidebar_expansion(opened))
    ws = opened.ws
    if cfg["auto_merge"] and not ws.merged:
        with shown_errors("Merging embedding caches"):
            msg = S.merge_npz(ws, S.home_dir(), cfg["npz_override"], once=True)
            if msg:
                log.info("%s", msg)
    show_flashes()

    tabs = st.tabs(TABS, key="tab", on_change="rerun")
    with tabs[0]:
        if tabs[0].open:
            with shown_errors("Search"):
                tab_search(opened, cfg)
    with tabs[1]:
        if tabs[1].open:
            with shown_errors("Batch expansion"):
                tab_batch(opened, cfg)
    with tabs[2]:
        if tabs[2].open:
            with shown_errors("Managing dynamic images"):
                tab_manage(opened)
    with tabs[3]:
        if tabs[3].open:
            with shown_errors("Benchmarks"):
                tab_benchmarks()
    show_header(header, coll)  # counts change during the run (expansion, removal): show them at once


def show_header(slot: Any, coll: Any) -> None:
    name = "demo collection: Caltech-101 mini" if S.is_demo(coll.root) else str(coll.root)
    slot.markdown(f"### :material/image_search: IMRS — image search  \n"
                  f":gray[{name} · {coll.catalog.count('base')} base + {coll.catalog.count('dynamic')} dynamic "
                  f"images · {coll.backbone} / {coll.indexer} · {coll.device or 'cpu'}]")


with shown_errors("IMRS"):  # last line of defence: anything missed above is still one readable line
    main()
