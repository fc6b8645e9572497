"""Benchmark outputs: JSON (everything), CSV (one per table), a Markdown summary, PNG plots, and a
``latest`` pointer the app's Benchmarks tab reads through :func:`latest_run`.

Layout of a run directory (``imrs bench --out DIR``)::

    results.json       all numbers + config + the list of files below
    summary.md         the tables a person reads
    indexes.csv        per backbone x index: build time, memory, latency, QPS, recall, label quality
    tuning.csv         the recall/QPS sweep behind auto-tuning
    tuned.csv          per ANN index: fastest setting with recall@10 >= target
    quality.csv        plain kNN and every improvement (P@1, P@10, mAP@10, mAP@k, mAP)
    text.csv           text -> image per backbone and method; text_per_class.csv per class
    recall_qps.png, quality.png, map_<backbone>.png

``<home>/bench/latest.json`` names the most recent run directory.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from ..config import home_dir
from ..fsutil import atomic_write_json, atomic_write_text, read_json
from . import plots
from .data import dump_json

log = logging.getLogger(__name__)

LATEST = "latest.json"
TABLES = ("indexes", "tuning", "tuned", "quality", "text", "text_per_class")


def _cell(v: Any) -> Any:
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    cols: list[str] = []
    for r in rows:
        for c in r:
            if c not in cols:
                cols.append(c)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: _cell(r.get(c, "")) for c in cols})
    atomic_write_text(path, buf.getvalue())
    return path


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _mb(b: float) -> str:
    return f"{b / 2**20:.1f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(results: dict[str, Any]) -> str:
    m = results["meta"]
    k = m["topk"]
    out = [f"# IMRS benchmark: {Path(m['data_root']).name}", "",
           f"{m['images']} images ({m['labelled']} labelled in {m['classes']} classes, {m['distractors']} "
           f"distractors: {', '.join(m['background_labels']) or 'none'} — background policy `{m['background']}`: "
           "never a query or relevant" + (", kept in the database" if m["background"] == "keep" else ", dropped")
           + f"); {m['queries']} queries (seed {m['seed']}), each excluded from its own ranking; top-k = {k}.",
           f"Machine: {m['machine']}. Created {m['created']}; took {m.get('seconds', 0):.0f}s.", ""]
    if results["embeddings"]:
        out += ["## Embeddings", "", md_table(
            ["backbone", "rows", "from cache", "embedded now", "failed", "cache file"],
            [[e["backbone"], str(e["rows"]), str(e["from_cache"]), str(e["embedded"]), str(e["failed"]),
              f"`{e['cache']}`"] for e in results["embeddings"]]), ""]
    q = results["quality"]
    text_by_bb: dict[str, dict[str, Any]] = {}
    for t in results["text"]:
        text_by_bb.setdefault(t["backbone"], {})[t["method"]] = t
    if q:
        rows = []
        for r in q:
            rows.append([r["backbone"], r["method"], r["split"], _f(r["p@1"]), _f(r["p@10"]), _f(r["map@10"]),
                         *([_f(r.get(f"map@{k}"))] if k != 10 else []), _f(r["map"]), str(r["dim"]),
                         r.get("kept", ""), r.get("note", "")])
        out += ["## Retrieval quality (exact search, full ranking)", "",
                md_table(["backbone", "method", "split", "P@1", "P@10", "mAP@10", *([f"mAP@{k}"] if k != 10 else []),
                          "mAP", "dim", "kept", "note"], rows), "",
                "`kept` = beats plain kNN of the same split on both P@10 and full mAP. Held-out rows: the "
                "head is trained on the other half of every class and never sees these images.", ""]
    if results["text"]:
        out += ["## Text -> image (class-name prompts \"a photo of a {label}\")", "",
                md_table(["backbone", "method", "mAP@10", "mAP", "P@1", "P@10", "note"],
                         [[t["backbone"], t["method"], _f(t["map@10"]), _f(t["map"]), _f(t["p@1"]), _f(t["p@10"]),
                           t.get("note", "")] for t in results["text"]]), ""]
        for method in ("ConSE query vector", "hierarchical ConSE query vector"):
            worst = sorted((r for r in results["text_per_class"] if r["method"] == method),
                           key=lambda r: r["ap@10"])[:10]
            if worst:
                out += [f"Hardest classes for {method} (AP@10): "
                        + ", ".join(f"{r['class']} {r['ap@10']:.2f}" for r in worst), ""]
    if results["indexes"]:
        rows = [[r["backbone"], r["indexer"], _f(r["build_s"], 2), _mb(r["memory_bytes"]),
                 _f(r["bytes_per_vector"], 0), _f(r["latency_p50_ms"], 2), _f(r["latency_p95_ms"], 2),
                 _f(r["qps"], 0), _f(r["recall@10"]), *([_f(r.get(f"recall@{k}"))] if k != 10 else []),
                 _f(r["p@1"]), _f(r["p@10"]), _f(r["map@10"]), *([_f(r.get(f"map@{k}"))] if k != 10 else []),
                 _f(r["map_exact"])] for r in results["indexes"]]
        kcols = [f"recall@{k}"] if k != 10 else []
        out += ["## Indexes (default auto parameters)", "",
                md_table(["backbone", "index", "build s", "memory MiB", "B/vector", "p50 ms", "p95 ms", "QPS",
                          "recall@10", *kcols, "P@1", "P@10", "mAP@10", *([f"mAP@{k}"] if k != 10 else []),
                          "mAP (exact)"], rows),
                "", "Latency: one query at a time; QPS: all queries in one batch call. "
                "Full mAP needs the full ranking, which an ANN index does not produce; the exact value is shown.", ""]
    if results["tuned"]:
        rows = [[t["backbone"], t["indexer"], t["default_setting"], _f(t["default_recall@10"]), t["setting"],
                 _f(t["recall@10"]), _f(t["qps"], 0), "yes" if t["reached"] else "NO"] for t in results["tuned"]]
        out += [f"## Auto-tuning (fastest setting with recall@10 >= {m['tune_target']:g})", "",
                md_table(["backbone", "index", "default", "recall@10", "tuned", "recall@10", "QPS", "reached"],
                         rows), "", "Full curves in `tuning.csv` and `recall_qps.png`.", ""]
    if m.get("fusion_skipped"):
        out += [f"Fusion skipped: {m['fusion_skipped']}.", ""]
    files = results.get("files", {})
    if files.get("plots"):
        out += ["## Plots", ""] + [f"![{name}]({Path(p).name})" for name, p in files["plots"].items()] + [""]
    return "\n".join(out)


def write_report(results: dict[str, Any], out: Path, home: str | os.PathLike[str] | None,
                 config: Any = None) -> dict[str, Any]:
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    tables = {name: str(write_csv(out / f"{name}.csv", results.get(name, []))) for name in TABLES}
    plot_files: dict[str, str] = {}
    try:
        plot_files["recall_qps"] = str(plots.plot_recall_qps(results["tuning"], results["tuned"],
                                                             results["meta"]["tune_target"], out / "recall_qps.png"))
        plot_files["quality"] = str(plots.plot_quality(results["quality"], results["text"], out / "quality.png"))
        for b, mp in results.get("maps", {}).items():
            plot_files[f"map_{b}"] = str(plots.plot_map(
                mp["xy"], mp["labels"], mp["dynamic"], f"{Path(results['meta']['data_root']).name}: {b} "
                f"({len(mp['xy'])} images, coloured by class)", out / f"map_{b}.png"))
    except Exception as exc:  # noqa: BLE001 - a plotting failure must not lose the numbers
        log.warning("plots failed: %s", exc)
    results["files"] = {"run_dir": str(out.resolve()), "results": str(out / "results.json"),
                        "summary": str(out / "summary.md"), "tables": tables, "plots": plot_files}
    if config is not None:
        # shallow: asdict() deep-copies, and a progress callback (a page's bar) cannot be copied
        cfg = {f.name: getattr(config, f.name) for f in fields(config)} if is_dataclass(config) else dict(config)
        results["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()
                             if not callable(v) and k != "settings"}
    atomic_write_text(out / "summary.md", summary_markdown(results))
    serialisable = {k: v for k, v in results.items() if k != "maps"}
    dump_json(out / "results.json", serialisable)
    bench_dir = home_dir(home) / "bench"
    atomic_write_json(bench_dir / LATEST, {"run_dir": str(out.resolve()), "created": results["meta"]["created"],
                                           "data_root": results["meta"]["data_root"]})
    return results["files"]


def latest_run(home: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The most recent benchmark run: ``{"run_dir", "created", "data_root", "summary", "results",
    "tables": {name: csv path}, "plots": {name: png path}, "meta"}``, paths absolute and existing;
    None when no run exists (or its folder was deleted)."""
    pointer = home_dir(home) / "bench" / LATEST
    try:
        latest = read_json(pointer)
        run_dir = Path(latest["run_dir"])
        res = read_json(run_dir / "results.json")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    files = res.get("files", {})
    tables = {n: p for n, p in files.get("tables", {}).items() if Path(p).is_file()}
    plots_ = {n: p for n, p in files.get("plots", {}).items() if Path(p).is_file()}
    summary = run_dir / "summary.md"
    return {"run_dir": str(run_dir), "created": latest.get("created"), "data_root": latest.get("data_root"),
            "summary": str(summary) if summary.is_file() else None, "results": str(run_dir / "results.json"),
            "tables": tables, "plots": plots_, "meta": res.get("meta", {})}
