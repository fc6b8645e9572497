"""The Batch expansion tab: grow the collection for many terms at once through the pipeline's
``grow_terms`` (the same run and report as ``imrs expand``), with the overall and the current
term's progress."""

from __future__ import annotations

import logging
from typing import Any

import streamlit as st

from ..errors import IMRSError
from . import access
from . import workspace as W
from .pipeline import TermResult, batch_terms, grow_terms
from .text import plain
from .widgets import ProgressBar

log = logging.getLogger(__name__)


def parse_terms(text: str = "", csv_bytes: bytes | None = None) -> list[str]:
    """Terms from the text box (one per line) and an uploaded CSV, in order (the batch grows each
    folder once)."""
    from ..expansion import parse_terms as _parse

    terms = _parse(text or "", csv_mode=False)
    if csv_bytes:
        try:
            body = csv_bytes.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise IMRSError("the uploaded term list is not UTF-8 text") from None
        terms += _parse(body)
    return terms


def tab_batch(ctx: dict[str, Any]) -> None:
    opened: W.Opened = ctx["opened"]
    if access.refused(ctx["role"], "Growing the collection from the web"):
        return
    st.markdown("Fetch web images for many terms at once. Each image goes through the safe downloader, is checked "
                "for near-duplicates against the collection, embedded and added to the live index. Image sources "
                "are in the sidebar (Web expansion → Image sources).")
    base = ctx["settings"]
    with st.form("batch_form"):
        c1, c2 = st.columns([3, 2])
        text = c1.text_area("Terms (one per line)", key="batch_terms", height=150,
                            placeholder="red panda\nlighthouse\nhot air balloon")
        csv_file = c2.file_uploader("…or a CSV (a 'term' column, else the first column)", type=["csv", "txt", "tsv"],
                                    key="batch_csv")
        a, b, c = st.columns(3)
        per_term = a.number_input("Images per term", 1, 200, int(base.expand_n), key="batch_n")
        max_side = b.number_input("Max side (px)", 64, 2048, int(base.expand_max_side), step=64, key="batch_side")
        phash = c.number_input("Duplicate distance (pHash)", 0, 64, int(base.expand_phash_distance), key="batch_phash",
                               help="Hamming distance (of 64 bits) at or under which a download counts as a duplicate "
                                    "of an image already in the collection")
        go = st.form_submit_button("Run expansion", type="primary")
    if go:
        terms = parse_terms(text, csv_file.getvalue() if csv_file is not None else None)
        if not terms:
            st.warning("Give at least one term (in the box or in a CSV).")
            return
        settings = base.replace(expand_max_side=int(max_side), expand_phash_distance=int(phash))
        st.session_state["batch_summary"] = run_batch(opened, terms, settings, int(per_term))
    rows = st.session_state.get("batch_summary")
    if rows:
        st.subheader("Summary")
        st.dataframe(rows, hide_index=True, width="stretch",
                     column_config={"why": st.column_config.TextColumn("why (failures)", width="large")})


def run_batch(opened: W.Opened, terms: list[str], settings: Any, n: int) -> list[dict[str, Any]]:
    """The pipeline's batch growth (the same run as ``imrs expand``), drawn as it goes: the overall
    bar counts the terms (stage "terms"), each term gets a status box with its own bar, and a failed
    term is a row with its reason, never the end of the run."""
    ws = opened.ws
    ws.ensure_encoder()
    plan = batch_terms(terms)
    overall = st.progress(0.0, text=f"0/{len(plan)} terms")
    with ws.activity.job(W.session_id(), "running a batch expansion", f"of {len(plan)} term(s)") as job:
        shown: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage != "terms":
                shown["bar"](stage, done, total)
            elif done < total:  # the term ``plan[done]`` starts
                name = plain(plan[done], 80)
                overall.progress(done / total, text=f"{done}/{total} terms — “{name}”")
                shown["status"] = st.status(f"“{name}”", expanded=True)
                shown["bar"] = ProgressBar(shown["status"].empty(), "asking image providers ...", job=job)

        def finished(r: TermResult) -> None:
            shown["bar"].close()
            name = plain(r.term, 80)
            if r.ok:
                shown["status"].update(label=f"“{name}”: {r.added} added", state="complete", expanded=False)
            else:
                shown["status"].update(label=f"“{name}”: failed: {plain(r.error or '', 300)}", state="error",
                                       expanded=False)

        report = grow_terms(opened.coll, plan, settings, n, progress, on_term=finished)
        overall.progress(1.0, text=f"{len(plan)}/{len(plan)} terms done")
    return report.rows()
