"""The Manage tab: web images grouped by the term that brought them, with their source, and removal
(files, catalog, index, caches) for editors. The user's own images are never listed here and never
deleted. Terms, titles, providers and licences came from people and the web: all shown as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from . import media
from . import workspace as W
from .text import plain
from .widgets import flash, short, shown_errors

COLS = 6


def _select_all(slug: str, ids: list[int]) -> None:
    value = bool(st.session_state.get(f"all_{slug}"))
    for i in ids:
        st.session_state[f"sel_{i}"] = value


def tab_manage(ctx: dict[str, Any]) -> None:
    from ..expansion import dynamic_groups, prune

    opened: W.Opened = ctx["opened"]
    coll = opened.coll
    groups = [(g, list(coll.catalog.iter_records(source="dynamic", slug=g.slug))) for g in dynamic_groups(coll)]
    groups = [(g, recs) for g, recs in groups if recs]
    total = sum(len(recs) for _, recs in groups)
    c1, c2, c3 = st.columns(3)
    c1.metric("Your images", coll.catalog.count("base"))
    c2.metric("Web images", total)
    c3.metric("Terms", len(groups))
    if not groups:
        st.info("No web images yet: they appear here after the collection grows (Batch expansion tab, or a weak "
                "search with growth). Your own images are never listed here and never deleted.")
        return
    editor = ctx["role"].editor
    if not editor:
        st.caption("Removing web images is for editors.")
    selected = [r.id for _, recs in groups for r in recs if st.session_state.get(f"sel_{r.id}")] if editor else []
    if editor and st.button(f"Remove selected ({len(selected)})", type="primary", disabled=not selected,
                            key="remove_sel"):
        with shown_errors("Removing images"):
            with opened.ws.activity.job(W.session_id(), "removing", f"{len(selected)} web image(s)"):
                rep = prune(coll, ids=selected)
            for i in selected:
                st.session_state.pop(f"sel_{i}", None)
            for g, _ in groups:
                st.session_state.pop(f"all_{g.slug}", None)
            flash("success", plain(rep.summary()))
            st.rerun()
    for g, recs in groups:
        with st.container(border=True):
            h1, h2 = st.columns([4, 1], vertical_alignment="center")
            h1.markdown(f"#### {plain(g.term or g.slug, 120)} · {len(recs)} image(s)")
            if editor:
                h2.checkbox("Select all", key=f"all_{g.slug}", on_change=_select_all,
                            args=(g.slug, [r.id for r in recs]))
            for start in range(0, len(recs), COLS):
                cols = st.columns(COLS)
                for col, r in zip(cols, recs[start:start + COLS], strict=False):
                    with col:
                        thumb = media.thumb_of(coll.abspath(r.relpath, "dynamic"), 192)
                        if thumb:
                            st.image(thumb, width="stretch")
                        name = plain(short(r.title or Path(r.relpath).name, 30))
                        if editor:
                            st.checkbox(name, key=f"sel_{r.id}")
                        else:
                            st.caption(name)
                        # the source as text (provider, licence), never a link a stored record chose
                        lic = f" · {plain(r.license, 20)}" if r.license else ""
                        st.caption(f"{plain(r.provider or 'source unknown', 20)}{lic}")
