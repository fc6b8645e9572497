"""``imrs bench``: the command-line face of :mod:`imrs.bench.runner`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import IMRSError
from .common import settings_from

log = logging.getLogger(__name__)


def _csv(text: str | list[str]) -> list[str]:
    """``a,b c`` and ``["a,b", "c"]`` alike: the flags take space- or comma-separated lists."""
    parts = text if isinstance(text, list) else [text]
    return [t.strip() for p in parts for t in p.replace(" ", ",").split(",") if t.strip()]


def _index_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """``hnsw.M=32`` style overrides, one per flag."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        kind, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise IMRSError(f"--index-param {item!r}: write KIND.PARAM=VALUE, e.g. hnsw.M=32")
        try:
            val: Any = int(value)
        except ValueError:
            try:
                val = float(value)
            except ValueError as exc:
                raise IMRSError(f"--index-param {item!r}: value must be a number") from exc
        out.setdefault(kind, {})[name] = val
    return out


def register(subparsers: Any) -> None:
    from ..bench.runner import IMPROVEMENTS

    p = subparsers.add_parser(
        "bench", help="benchmark backbones x indexes on a labelled folder (speed, memory, recall, mAP)",
        description="Embeds each image once (cached), then measures every index and the retrieval "
                    "improvements. Writes JSON, CSV, Markdown and PNG plots into --out.")
    p.add_argument("--data-root", required=True, help="folder with one sub-folder of images per class")
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0"], help="backbone names")
    p.add_argument("--indexers", nargs="+", default=["flat_ip,hnsw,ivf_flat,ivf_pq,annoy"], help="index kinds")
    p.add_argument("--topk", type=int, default=50)
    p.add_argument("--sample-queries", type=int, default=1500, help="queries drawn with --seed (0 = every image)")
    p.add_argument("--out", default=None, help="run folder (default: <home>/bench/<data folder name>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--improvements", nargs="*", default=[],
                   help=f"comma-separated: {','.join(IMPROVEMENTS)}, or 'all' (default: none)")
    p.add_argument("--background", choices=["keep", "drop"], default="keep",
                   help="BACKGROUND_Google: keep as distractors in the database (default) or drop")
    p.add_argument("--emb", action="append", default=[], help="extra EmbeddingSet NPZ to reuse (repeatable)")
    p.add_argument("--cache-dir", help="where benchmark embedding caches live (default <home>/bench/cache)")
    p.add_argument("--no-tune", action="store_true", help="skip the search-setting sweep")
    p.add_argument("--tune-target", type=float, default=0.95, help="recall@10 the tuned setting must reach")
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--index-param", action="append", default=[], metavar="KIND.PARAM=VALUE",
                   help="build/search parameter override, e.g. hnsw.M=32 (repeatable)")
    p.add_argument("--map", choices=["tsne", "pca", "none"], default="tsne", help="2-D map of the collection")
    p.add_argument("--device", help="cpu or cuda, for embedding images not cached yet")
    p.add_argument("--weights", default="pretrained", choices=["pretrained", "random"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--home", help="state folder (default: $IMRS_HOME or ./runs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true",
                   help="print latest_run() (paths of tables and plots) as JSON instead of the summary")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench.report import latest_run
    from ..bench.runner import IMPROVEMENTS, BenchConfig, run_bench
    from ..config import home_dir

    imps = _csv(args.improvements)
    if imps in (["all"], ["ALL"]):
        imps = list(IMPROVEMENTS)
    if imps == ["none"]:
        imps = []
    out = Path(args.out) if args.out else home_dir(args.home) / "bench" / Path(args.data_root).resolve().name
    cfg = BenchConfig(data_root=Path(args.data_root), out=out, backbones=_csv(args.backbones),
                      indexers=_csv(args.indexers), topk=args.topk, sample_queries=args.sample_queries,
                      seed=args.seed, improvements=tuple(imps), home=Path(args.home) if args.home else None,
                      cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                      emb_files=tuple(Path(e) for e in args.emb), device=args.device, weights=args.weights,
                      batch_size=args.batch_size, background=args.background,
                      latency_queries=args.latency_queries, tune=not args.no_tune, tune_target=args.tune_target,
                      index_params=_index_params(args.index_param), map2d=args.map, progress=not args.quiet,
                      settings=settings_from(args))
    if not cfg.backbones or not cfg.indexers:
        raise IMRSError("give at least one backbone and one indexer")
    results = run_bench(cfg)
    if args.json:
        print(json.dumps(latest_run(args.home), indent=2))
        return 0
    print((Path(results["files"]["summary"])).read_text(encoding="utf-8"))
    print(f"wrote {results['files']['run_dir']} (latest pointer: {home_dir(args.home) / 'bench' / 'latest.json'})")
    return 0
