"""The sidebar: this session's settings (collection, backbone, search, web expansion) and the
collection's tools (index, caches, snapshots). Every widget's value is per session; what changes
the collection (or makes the server index, download or calibrate) is drawn for editors only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from ..indexes.params import tunables
from . import backbones as B
from . import workspace as W
from .access import Role
from .pipeline import PROVIDER_CHOICES, Settings, calibrate, collection_thresholds, relabel
from .text import plain
from .widgets import ProgressBar, detail, flash, shown_errors


def collection_settings(role: Role, settings: Settings | None = None) -> dict[str, Any]:
    """Which collection, backbone, index and device this session uses (before anything opens).
    Only an editor picks them: a new folder, backbone or index means indexing on the server."""
    from ..indexes import INDEX_KINDS

    sb = st.sidebar
    sb.header("Collection")
    root = ""
    if role.editor:
        root = sb.text_input("Collection folder", key="root",
                             help="A folder of images (sub-folders are labels) inside the folders this server allows "
                                  "(IMRS_ALLOWED_ROOTS); a name is looked up in each of them. Empty: the default.")
    locked = not role.editor
    choices = {c.name: c for c in B.backbone_choices(settings)}
    if st.session_state.get("backbone") not in choices:
        st.session_state["backbone"] = W.OFFLINE_BACKBONE
    icons = {"ready": "●", "needs download": "○", "failed": "✕"}
    backbone = sb.selectbox("Backbone", list(choices), key="backbone",
                            format_func=lambda n: f"{icons.get(choices[n].state, '?')} {n}",
                            help="● ready here · ○ weights need a download · ✕ failed", disabled=locked)
    status_slot = sb.container()
    sb.selectbox("Indexer", list(INDEX_KINDS), key="indexer", disabled=locked)
    devices = W.available_devices()
    if st.session_state.get("device") not in devices:
        st.session_state["device"] = devices[0]
    sb.selectbox("Device", devices, key="device", help="cuda is offered when a GPU is detected", disabled=locked)
    return {"root": (root or "").strip(), "backbone": backbone, "indexer": st.session_state["indexer"],
            "device": st.session_state["device"], "status_slot": status_slot, "choices": choices}


def backbone_status(slot: Any, opened: W.Opened, choices: dict[str, B.BackboneChoice], role: Role) -> None:
    """A one-line badge; what it means, the fix and the download button in an expander."""
    in_use = choices.get(opened.backbone)
    asked = choices.get(opened.requested)
    kind = "text + image" if in_use and in_use.supports_text else "image model; text via class names"
    with slot:
        if opened.fallback_reason:
            st.markdown(f":orange-badge[{opened.requested}: not available] → :green-badge[{opened.backbone}]")
        else:
            st.markdown(f":green-badge[{opened.backbone} · in use] :gray[{kind}]")
        with st.expander("Backbone details", icon=":material/info:"):
            if opened.fallback_reason:
                st.caption(f"{opened.requested} could not be loaded, so this session runs on "
                           f"{opened.backbone}. {detail(opened.fallback_reason.rstrip('.'))}.")
            target = asked if asked is not None else in_use
            if target is not None and target.downloadable and role.editor:
                job = B.download_state(target.name)
                if job is not None and job.running:
                    st.info(f"downloading {target.name} ...", icon=":material/downloading:")
                elif st.button(f"Download {target.name} weights", key="dl_weights", icon=":material/download:",
                               help=f"fetch them from {target.download_host} into the local cache"):
                    job = B.start_download(target.name, opened.coll.settings)
                    if job.error:
                        st.error(detail(job.error), icon=":material/cloud_off:")
                    elif job.running:
                        st.info(f"downloading {target.name} in the background ...", icon=":material/downloading:")
                    else:
                        flash("success", f"{target.name} weights downloaded ({job.seconds:.0f}s)")
                        st.rerun()
                elif job is not None and job.error:
                    st.caption(f"Last download attempt: {detail(job.error)}")
            rows = [{"backbone": c.name, "state": c.state, "text": "yes" if c.supports_text else "via class names",
                     "dim": c.dim} for c in choices.values()]
            st.dataframe(rows, hide_index=True, width="stretch")


def search_settings(opened: W.Opened, role: Role) -> dict[str, Any]:
    """Top-k, query expansion and this session's own index search settings. The harmless ones are
    bound to the URL, so a reload or a shared link keeps them; sources and folders never are."""
    coll = opened.coll
    sb = st.sidebar
    sb.header("Search")
    sb.slider("Results (top-k)", 1, 60, key="top_k", bind="query-params")
    sb.number_input("Query expansion (top N)", min_value=0, max_value=20, key="qe", bind="query-params",
                    help="alpha query expansion: re-search with the query blended with its top N hits; 0 = off")
    sb.toggle("Hide the query image from results", value=True, key="hide_query", bind="query-params",
              help="when the query is an image of this collection, leave it out of its own results")
    params: dict[str, int] = {}
    shared = coll.index.get_params() if opened.ws.synced else {}
    for tunable in tunables(coll.indexer):  # search-time only: build parameters need a rebuild
        name = tunable.name
        key = f"tune_{coll.indexer}_{name}"
        if key not in st.session_state and name in shared:
            st.session_state[key] = int(shared[name])
        if key in st.session_state:
            params[name] = int(sb.number_input(name, min_value=tunable.lo, max_value=tunable.hi, key=key,
                                               help="this session's search-time trade-off: higher = "
                                                    "better recall, slower"))
    return params


def expansion_settings(role: Role) -> None:
    """Growth switches: per session, never in the URL (a link must not switch a write on)."""
    sb = st.sidebar
    sb.header("Web expansion")
    if not role.editor:
        sb.caption("Growing the collection from the web is for editors.")
        return
    sb.toggle("Auto-expand on weak coverage", key="auto_expand",
              help="when the answer is weak, fetch web images for the query, add them, and search again")
    sb.toggle("Auto-confirm the term for image queries", key="auto_confirm",
              help="grow with the best proposed term without asking (otherwise you pick it)")
    sb.number_input("Images per growth", 1, 200, key="expand_n")
    with sb.expander("Image sources"):
        st.selectbox("Provider", PROVIDER_CHOICES, key="provider",
                     help="auto: DuckDuckGo, then Wikimedia when DuckDuckGo fails or finds too few")
        st.text_input("Wikimedia API URL", key="wikimedia_api", placeholder="https://commons.wikimedia.org/w/api.php",
                      help="a MediaWiki API endpoint (a mirror, or a test server)")
        st.toggle("Allow loopback downloads (testing)", key="allow_loopback",
                  help="lets downloads reach 127.0.0.1, for a local test server only; it weakens the SSRF guard")


def coverage_settings(opened: W.Opened, base: Any, role: Role) -> None:
    """What "weak" means on this collection (the pipeline's thresholds and where they come from), a
    button that calibrates them on the collection itself, and this session's own override."""
    coll = opened.coll
    with st.sidebar.expander("Coverage thresholds", icon=":material/tune:"):
        kinds = [("image", "image queries"), ("text", "text queries")]
        for kind, what in kinds:
            t, source = collection_thresholds(coll, kind, base)
            st.caption(f"{what}: best ≥ {t.best_min:.2f}, {t.min_good} hit(s) ≥ {t.good_min:.2f} ({source})")
        if role.editor:
            st.button("Calibrate on this collection", key="calibrate", on_click=_ask_calibration,
                      help="hold classes out of the collection and measure which thresholds tell covered from "
                           "absent concepts; stored with the collection, used by every session")
        if st.toggle("Override for this session", key="cov_override"):
            t, _ = collection_thresholds(coll, "image", base)
            st.slider("Best score at least", 0.0, 1.0, float(t.best_min), 0.01, key="cov_best")
            st.slider("“Good” score at least", 0.0, 1.0, float(t.good_min), 0.01, key="cov_good")
            st.number_input("Good hits needed", 0, 100, int(t.min_good), key="cov_n_good")


def _ask_calibration() -> None:
    st.session_state["_calibrate"] = True


def run_calibration(opened: W.Opened, role: Role) -> None:
    """A calibration asked for in the sidebar runs here, at the top of the page, so its progress
    is in view; its result is said in plain words."""
    if not st.session_state.pop("_calibrate", False) or not role.editor:
        return
    coll = opened.coll
    with shown_errors("Calibrating"):
        bar = ProgressBar(st.empty(), "Calibrating the coverage thresholds on this collection ...")
        try:
            with opened.ws.activity.job(W.session_id(), "calibrating", coll.root.name):
                report = calibrate(coll, progress=bar)
        finally:
            bar.close()
        flash("success", calibration_summary(report))
        st.rerun()


def calibration_summary(report: Any) -> str:
    """The calibration report for people: what counts as weak now, and how often that call is
    right on classes the measurement held out."""
    parts = []
    for r in report.results:
        t = r.thresholds
        what = "Image queries" if r.kind == "image" else "Text queries" if r.kind == "text" else r.kind.capitalize()
        parts.append(f"**{what}** now count as covered when the best match scores at least {t.best_min:.2f} "
                     f"and {t.min_good} result(s) score at least {t.good_min:.2f}. On {r.classes_held_out} classes "
                     f"held out of the measurement this is right {r.accuracy_held_out:.0%} of the time "
                     f"(the built-in thresholds: {r.builtin_held_out:.0%}).")
    parts.append(f"Measured in {report.seconds:.0f} s; every session uses these thresholds from now on.")
    return "Calibrated. " + "  \n".join(parts)


def collection_tools(opened: W.Opened, home: Path, role: Role) -> None:
    """Index, caches and snapshots: actions on the shared collection (every session sees them),
    for editors only. The once-per-start merge of the server's own caches happens for anyone."""
    coll, ws = opened.coll, opened.ws
    if not role.editor:
        if not ws.merged:
            with shown_errors("Merging embedding caches"):
                W.merge_npz(ws, home, "", once=True)
        return
    with st.sidebar.expander("Collection tools", icon=":material/build:"):
        if st.button("Rebuild index", key="rebuild", help="rebuild from cached embeddings (nothing is re-embedded)"):
            with shown_errors("Rebuilding the index"), st.spinner("Rebuilding the index ..."):
                with ws.job_lock:
                    coll.rebuild_index(coll.indexer)
                flash("success", f"index rebuilt: {len(coll.index)} vectors ({plain(coll.indexer)})")
                st.rerun()
        st.toggle("Merge embedding caches on start", value=True, key="auto_merge",
                  help="benchmark caches of this backbone and web-image caches are merged into the live index "
                       "once per server start")
        override = st.text_input("Extra NPZ caches", value="", key="npz_override",
                                 help="an .npz file or a folder of them (separate several with ';')")
        if st.button("Rescan folder and merge now", key="rescan"):
            with shown_errors("Rescanning"):
                bar = ProgressBar(st.empty(), "scanning ...")
                summary = W.sync_once(ws, relabel(bar, "embedding"), force=True)
                bar.close()
                flash("success", plain(f"{summary}; {W.merge_npz(ws, home, override)}"))
                st.rerun()
        if ws.sync_left_out:
            with st.popover(f"{len(ws.sync_left_out)} file(s) left out of the index"):
                st.dataframe([{"file": rel, "why": why} for rel, why in ws.sync_left_out], hide_index=True)
        if st.session_state.get("auto_merge", True) and not ws.merged:
            with shown_errors("Merging embedding caches"):
                W.merge_npz(ws, home, override, once=True)
        snapshots(opened)


def snapshots(opened: W.Opened) -> None:
    """Save / load named snapshots. The list is read after every save, and the picked name is kept
    valid, so Load never sees a name the list does not show."""
    coll, ws = opened.coll, opened.ws
    st.markdown("**Snapshots**")
    name = st.text_input("Snapshot name", value="my-snapshot", key="snap_name")
    if st.button("Save snapshot", key="snap_save"):
        with shown_errors("Saving the snapshot"):
            m = coll.save_snapshot(name.strip())
            st.session_state["snap_pick"] = m.name
            flash("success", plain(f"saved snapshot {m.name}: {m.count} vectors ({m.backbone}/{m.indexer})"))
            st.rerun()
    snaps = [m.name for m in coll.list_snapshots() if m.backbone == coll.backbone]
    if st.session_state.get("snap_pick") not in snaps:
        st.session_state["snap_pick"] = snaps[0] if snaps else None
    pick = st.selectbox("Saved snapshots", snaps, key="snap_pick", placeholder="none yet")
    if st.button("Load snapshot", key="snap_load", disabled=pick is None):
        with shown_errors("Loading the snapshot"):
            with ws.job_lock:
                m = coll.load_snapshot(pick)
            flash("success", plain(f"loaded snapshot {m.name}: {m.count} vectors ({m.backbone}/{m.indexer})"))
            st.rerun()
