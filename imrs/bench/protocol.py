"""What a benchmark run is asked for (``BenchConfig``) and the protocol's fixed choices: which
improvements exist, the text prompt, how queries are drawn and how classes are split for the
supervised head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Settings, home_dir
from ..indexes.exact import exact_search
from ..progress import Progress
from .data import BenchData

IMPROVEMENTS = ("qe", "dba", "whiten", "head", "fusion", "conse", "hybrid")
PROMPT = "a photo of a {}"


@dataclass
class BenchConfig:
    data_root: Path
    out: Path
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    indexers: list[str] = field(default_factory=lambda: ["flat_ip", "hnsw", "ivf_flat", "ivf_pq", "annoy"])
    topk: int = 50
    sample_queries: int = 1500  # <= 0: every labelled image
    seed: int = 0
    improvements: tuple[str, ...] = ()
    home: Path | None = None
    cache_dir: Path | None = None
    emb_files: tuple[Path, ...] = ()
    device: str | None = None
    weights: str = "pretrained"
    batch_size: int | None = None
    background: str = "keep"
    background_labels: tuple[str, ...] = ("BACKGROUND_Google",)
    latency_queries: int = 200
    tune: bool = True
    tune_target: float = 0.95
    tune_queries: int = 1000
    index_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    map2d: str = "tsne"  # tsne | pca | none
    progress: bool = True
    #: (stage, done, total) after each step, for a page's progress bar (imrs.progress.Progress shape)
    stage_progress: Progress | None = None
    holdout_fraction: float = 0.5
    # improvement settings (defaults chosen on Caltech-101, see docs/benchmarks.md)
    qe_n: int = 5
    aqe_alpha: float = 3.0
    dba_k: int = 10
    whiten_dim: int = 128
    whiten_power: float = 0.25
    head_dim: int = 128
    head_hidden: int = 1024
    head_epochs: int = 60
    #: where model weights are found (the caller's settings; None: the environment's). Not a result:
    #: left out of the run's written configuration.
    settings: Settings | None = None

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else home_dir(self.home) / "bench" / "cache"


def sample_queries(data: BenchData, n: int, seed: int) -> np.ndarray:
    cand = data.query_candidates()
    if n <= 0 or n >= len(cand):
        return cand
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(cand, size=n, replace=False))


def holdout_split(label_ids: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): ``fraction`` of each class held out (at least one image each side
    when the class has two or more)."""
    rng = np.random.default_rng(seed + 1)
    train, test = [], []
    for c in np.unique(label_ids[label_ids >= 0]):
        rows = np.flatnonzero(label_ids == c)
        rows = rows[rng.permutation(len(rows))]
        n_test = int(round(len(rows) * fraction))
        n_test = min(max(n_test, 1), len(rows) - 1) if len(rows) > 1 else len(rows)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(xs)) if xs else np.zeros(0, np.int64)

    return cat(train), cat(test)


def exact_neighbours(db: np.ndarray, exclude_rows: np.ndarray | None = None
                     ) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """A neighbour function over ``db`` by exact search (what consensus re-scoring asks for)."""

    def fn(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(queries, db, k, exclude=exclude_rows)
    return fn
