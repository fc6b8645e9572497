"""PNG figures for the benchmark report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_path

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_recall_qps(curve: Sequence[dict[str, Any]], tuned: Sequence[dict[str, Any]], target: float,
                    path: Path) -> Path:
    """Recall@10 vs batch QPS, one line per (backbone, index), chosen setting circled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in curve:
        groups.setdefault((r["backbone"], r["indexer"]), []).append(r)
    multi = len({b for b, _ in groups}) > 1
    for (b, kind), pts in groups.items():
        label = f"{b}/{kind}" if multi else kind
        if len(pts) == 1:
            ax.scatter([pts[0]["recall@10"]], [pts[0]["qps"]], marker="s", label=label, zorder=3)
            continue
        front = _pareto(pts)  # a 2-knob grid (IVF-PQ) would zig-zag: draw its best trade-offs
        line = ax.plot([p["recall@10"] for p in front], [p["qps"] for p in front], marker="o", ms=3, label=label)
        if len(front) < len(pts):
            ax.scatter([p["recall@10"] for p in pts], [p["qps"] for p in pts], s=6, alpha=0.3,
                       color=line[0].get_color())
    for t in tuned:
        if t.get("params"):
            ax.scatter([t["recall@10"]], [t["qps"]], s=120, facecolors="none", edgecolors="black", zorder=4)
    ax.axvline(target, color="grey", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 vs exact search")
    ax.set_ylabel("queries per second (batch)")
    ax.set_title(f"Recall vs speed (circled: fastest setting with recall@10 >= {target:g})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _pareto(pts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    best = -1.0
    for p in sorted(pts, key=lambda r: (-r["qps"], -r["recall@10"])):
        if p["recall@10"] > best:
            out.append(p)
            best = p["recall@10"]
    return sorted(out, key=lambda r: r["recall@10"])


def plot_quality(quality: Sequence[dict[str, Any]], text: Sequence[dict[str, Any]], path: Path) -> Path:
    """Grouped bars of P@10, mAP@10 and full mAP per (backbone, method), text mAP@10 alongside."""
    plt = _plt()
    rows = list(quality) + [{"backbone": t["backbone"], "method": f"text: {t['method']}", "p@10": np.nan,
                             "map@10": t["map@10"], "map": t["map"]} for t in text]
    if not rows:
        rows = [{"backbone": "-", "method": "-", "p@10": 0, "map@10": 0, "map": 0}]
    multi = len({r["backbone"] for r in rows}) > 1
    names = [f"{r['backbone']}: {r['method']}" if multi else r["method"] for r in rows]
    metrics = [("p@10", "P@10"), ("map@10", "mAP@10"), ("map", "mAP (full)")]
    y = np.arange(len(rows))
    h = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    for i, (key, lab) in enumerate(metrics):
        vals = np.array([float(r.get(key) if r.get(key) is not None else np.nan) for r in rows])
        ax.barh(y + (i - 1) * h, np.nan_to_num(vals), height=h, label=lab)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_title("Retrieval quality per backbone and method")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_map(xy: np.ndarray, labels: Sequence[str], n_dynamic: int, title: str, path: Path) -> Path:
    """The collection in 2-D, one colour per class (cycled), background grey, dynamic images as
    black crosses; the largest classes are named at their centroid."""
    plt = _plt()
    xy = np.asarray(xy)
    n_base = len(xy) - n_dynamic
    labs = np.asarray(labels)[:n_base]
    fig, ax = plt.subplots(figsize=(9, 8))
    classes = sorted(set(labs.tolist()))
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(classes):
        m = labs == c
        bg = c.upper().startswith("BACKGROUND") or c == ""
        ax.scatter(xy[:n_base][m, 0], xy[:n_base][m, 1], s=4, alpha=0.35 if bg else 0.8,
                   color="lightgrey" if bg else cmap(i % 20), linewidths=0)
    counts = sorted(((int((labs == c).sum()), c) for c in classes if not c.upper().startswith("BACKGROUND")),
                    reverse=True)
    for _, c in counts[:25]:
        cx, cy = np.median(xy[:n_base][labs == c], axis=0)
        ax.annotate(c, (cx, cy), fontsize=7, ha="center", alpha=0.9)
    if n_dynamic:
        ax.scatter(xy[n_base:, 0], xy[n_base:, 1], s=18, marker="x", color="black", label="dynamic (web) images")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)
