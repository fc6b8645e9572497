"""The Batch expansion tab: grow the collection for many terms at once, one ``grow_term`` call per
term (the pipeline's batch expansion), with the overall and the current term's progress."""

from __future__ import annotations

import logging
from typing import Any

import streamlit as st

from ..errors import IMRSError
from . import access
from . import workspace as W
from .pipeline import grow_term
from .text import plain
from .widgets import ProgressBar, detail

log = logging.getLogger(__name__)


def parse_terms(text: str = "", csv_bytes: bytes | None = None) -> list[str]:
    """Terms from the text box (one per line) and an uploaded CSV, de-duplicated, in order."""
    from ..expansion import parse_terms as _parse

    terms = _parse(text or "", csv_mode=False)
    if csv_bytes:
        try:
            body = csv_bytes.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise IMRSError("the uploaded term list is not UTF-8 text") from None
        terms += _parse(body)
    seen: set[str] = set()
    return [t for t in terms if not (t.casefold() in seen or seen.add(t.casefold()))]


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
    """Every term in turn; a failed term is a row with its reason, never the end of the run."""
    ws = opened.ws
    ws.ensure_encoder()
    overall = st.progress(0.0, text=f"0/{len(terms)} terms")
    rows = []
    with ws.activity.job(W.session_id(), "running a batch expansion", f"of {len(terms)} term(s)") as job:
        for i, term in enumerate(terms):
            overall.progress(i / len(terms), text=f"{i}/{len(terms)} terms — “{plain(term, 80)}”")
            with st.status(f"“{plain(term, 80)}”", expanded=True) as status:
                bar = ProgressBar(st.empty(), "asking image providers ...", job=job)
                try:
                    rep = grow_term(opened.coll, term, settings, n=n, progress=bar)
                except Exception as exc:  # noqa: BLE001 - one term's failure is its row, not the end of the run
                    if not isinstance(exc, IMRSError):
                        log.exception("expanding %r failed", term)
                    bar.close()
                    status.update(label=f"“{plain(term, 80)}”: failed: {detail(exc)}", state="error", expanded=False)
                    rows.append({"term": term, "added": 0, "duplicates": 0, "failed": 0, "why": f"error: {exc}",
                                 "seconds": None})
                    continue
                bar.close()
                reasons = [why for _, why in (rep.failures or [])][:3]
                status.update(label=f"“{plain(term, 80)}”: {rep.kept} added", state="complete", expanded=False)
                rows.append({"term": term, "added": rep.kept, "duplicates": len(rep.duplicates),
                             "failed": len(rep.failures), "why": "; ".join(reasons),
                             "seconds": round(rep.elapsed, 1)})
        overall.progress(1.0, text=f"{len(terms)}/{len(terms)} terms done")
    return rows
