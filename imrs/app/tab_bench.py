"""The Benchmarks tab: run ``imrs bench`` on the collection in use (its cached embeddings, so nothing
is embedded again) with a progress bar, then show the latest run's plots and tables."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import streamlit as st

from . import workspace as W
from .text import plain
from .widgets import ProgressBar

log = logging.getLogger(__name__)

#: Tables in the order a reader wants them; the long sweeps last.
TABLE_TITLES = {"quality": "Retrieval quality", "text": "Text → image", "indexes": "Indexes",
                "tuned": "Auto-tuned search settings", "tuning": "Tuning sweep",
                "text_per_class": "Text → image per class"}
PLOT_TITLES = {"recall_qps": "Recall@10 against queries per second", "quality": "Retrieval quality"}


def tab_bench(ctx: dict[str, Any]) -> None:
    from ..bench.runner import IMPROVEMENTS
    from ..indexes import INDEX_KINDS

    opened: W.Opened = ctx["opened"]
    coll, home = opened.coll, ctx["home"]
    st.markdown(f"Measure this collection ({plain(coll.root.name)}, {coll.catalog.count('base'):,} images, one "
                f"sub-folder per label) with {coll.backbone}: speed, memory and recall of every index, retrieval "
                f"quality, and a map of the collection. Embeddings come from the collection's own caches.")
    with st.form("bench_form"):
        a, b = st.columns(2)
        indexers = a.multiselect("Indexes", list(INDEX_KINDS), default=list(INDEX_KINDS), key="bench_indexers")
        improvements = b.multiselect("Improvements to measure", list(IMPROVEMENTS), default=["qe"],
                                     key="bench_improvements",
                                     help="qe: query expansion, dba, whiten: PCA whitening, head: a learned 128-d "
                                          "projection, conse: text via class names")
        c, d, e = st.columns(3)
        queries = c.number_input("Queries (sampled)", 20, 5000, 300, step=20, key="bench_queries")
        tune = d.toggle("Tune search settings", value=True, key="bench_tune",
                        help="sweep efSearch / nprobe / search_k for the recall-speed curve")
        map2d = e.selectbox("Collection map", ["tsne", "pca", "none"], key="bench_map")
        go = st.form_submit_button("Run benchmark", type="primary", icon=":material/speed:")
    if go and not ctx["role"].editor:
        st.info("Running a benchmark is for editors: it works the server hard and writes its results.",
                icon=":material/lock:")
    elif go:
        if not indexers:
            st.warning("Pick at least one index.")
        else:
            run(opened, home, indexers, improvements, int(queries), bool(tune), map2d)
    show_latest(home, coll.root)


def run(opened: W.Opened, home: Path, indexers: list[str], improvements: list[str], queries: int, tune: bool,
        map2d: str) -> None:
    from ..bench.runner import BenchConfig, run_bench

    coll = opened.coll
    with opened.ws.activity.job(W.session_id(), "running a benchmark", f"on {coll.root.name}") as job:
        bar = ProgressBar(st.empty(), "starting the benchmark ...", job=job)
        try:
            cfg = BenchConfig(data_root=coll.root, out=home / "bench" / coll.root.name, backbones=[coll.backbone],
                              indexers=indexers, improvements=tuple(improvements), sample_queries=queries,
                              topk=max(10, min(50, coll.catalog.count("base") - 1)),
                              latency_queries=min(200, queries), tune=tune, map2d=map2d, home=home,
                              device=coll.device, progress=False, stage_progress=bar, settings=coll.settings)
            results = run_bench(cfg)
        finally:
            bar.close()
    st.success(f"Benchmark done in {results['meta']['seconds']:.0f} s: {results['meta']['images']} images, "
               f"{results['meta']['queries']} queries.", icon=":material/check_circle:")


def show_latest(home: Path, root: Path) -> None:
    from ..bench.report import latest_run

    run = latest_run(home)
    if not run:
        st.info("No benchmark results yet: press “Run benchmark” above.")
        return
    meta = run.get("meta") or {}
    where = Path(run.get("data_root") or meta.get("data_root") or "?")
    other = "" if where.resolve() == Path(root).resolve() else " (another collection)"
    st.markdown(f"#### Latest run: {plain(where.name)}{other}  \n"
                f":gray[{plain((run.get('created') or '')[:19].replace('T', ' '))} · {plain(meta.get('images', '?'))} "
                f"images · {plain(meta.get('queries', '?'))} queries · {plain(', '.join(meta.get('backbones') or []))} "
                f"· {plain(meta.get('machine', ''))}]")
    plots = [(name, Path(p)) for name, p in (run.get("plots") or {}).items() if Path(p).is_file()]
    for start in range(0, len(plots), 2):
        for col, (name, path) in zip(st.columns(2), plots[start:start + 2], strict=False):
            title = PLOT_TITLES.get(name) or ("Collection map: " + name[4:] if name.startswith("map_") else name)
            col.image(str(path), caption=title, width="stretch")
    for i, (title, rows) in enumerate(tables(run)):
        with st.expander(f"{title} ({len(rows)} rows)", expanded=i < 2):
            st.dataframe(rows, hide_index=True, width="stretch")


def tables(run: dict[str, Any]) -> list[tuple[str, list[dict[str, str]]]]:
    """(title, rows) for every non-empty CSV table of a run."""
    found: dict[str, str] = run.get("tables") or {}
    order = [n for n in TABLE_TITLES if n in found] + [n for n in found if n not in TABLE_TITLES]
    out = []
    for name in order:
        try:
            with open(found[name], newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as exc:
            log.warning("cannot read %s: %s", found[name], exc)
            continue
        if rows:
            out.append((TABLE_TITLES.get(name, name), rows))
    return out
