"""``imrs search`` and ``imrs calibrate``: the search-and-grow loop from a terminal.

Everything here is parsing and printing; the loop is ``imrs.query.run_query``. The coverage
verdict is printed for every search (and is in ``--json``); ``--expand`` only decides whether a
weak answer grows the collection.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import CALIBRATE_PER_CLASS
from ..errors import IMRSError
from ..layout import SearchHit
from ..query import Query, QueryOutcome, run_query
from .common import collection_args, int_in, open_collection, runtime_arg, settings_from
from .scale import add_where_arg

#: ``imrs search --expand``: the answer was weak and the collection did not grow (no confirmed term,
#: offline, nothing found); the reason is the "growth:" line.
GROWTH_FAILED = 3


def query_image_arg(spec: str) -> Any:
    """A path or an http(s) URL; URLs go through the safe downloader (never a raw fetch)."""
    if spec.startswith(("http://", "https://")):
        from ..web.download import DownloadPolicy, fetch_image_bytes

        return fetch_image_bytes(spec, DownloadPolicy(max_side=1024))
    if not Path(spec).exists():
        raise IMRSError(f"query image not found: {spec}")
    return spec


def format_hits(hits: Sequence[SearchHit]) -> str:
    from ..ids import display_path  # a non-UTF-8 file name must not crash print()

    why = any(h.why not in (("visual",), ("same image",)) for h in hits)  # text search says why
    rows = [("rank", "score", "confidence", "label", "source", *(("why",) if why else ()), "path")]
    rows += [(str(n), f"{h.score:.3f}", h.confidence or "-", h.label or "-",
              h.source + (" (same image)" if h.why == ("same image",) else ""),
              *(("+".join(h.why),) if why else ()), display_path(h.path))
             for n, h in enumerate(hits, 1)]
    n = len(rows[0]) - 1
    widths = [max(len(r[c]) for r in rows) for c in range(n)]
    lines = ["  ".join(r[c].ljust(widths[c]) for c in range(n)) + "  " + r[n] for r in rows]
    lines.insert(1, "-" * min(120, len(lines[0]) + 20))
    return "\n".join(lines)


def describe(outcome: QueryOutcome) -> str:
    lines = [outcome.summary()]
    if outcome.query.kind == "image" and outcome.terms:
        lines.append("proposed terms: " + ", ".join(f"{t.term} ({t.score:.2f}, {t.method})"
                                                   for t in outcome.terms))
    if outcome.verdict.weak and not outcome.query.expand:
        hint = "--expand" if outcome.query.kind == "text" else "--expand --term TERM"
        lines.append(f"to grow the collection from the web: add {hint}")
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace) -> int:
    if bool(args.text) == bool(args.image):
        raise IMRSError("give exactly one of --text or --image")
    s = settings_from(args)
    coll = open_collection(args, settings=s)
    query = Query(text=args.text, image=query_image_arg(args.image) if args.image else None, k=args.k, qe=args.qe,
                  expand=args.expand, term=args.term, n_images=args.n, where=args.where,
                  metadata=not getattr(args, "no_metadata", False),
                  web_exemplars=bool(getattr(args, "web_exemplars", False)),
                  ask_web=True if getattr(args, "ask_web", False) else None)
    outcome = run_query(coll, query, s, progress=bool(args.expand and not args.json))
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        print(describe(outcome))
        print(format_hits(outcome.hits))
    if query.expand and outcome.verdict.weak and outcome.report is None:
        return GROWTH_FAILED  # scripts can tell an answer that should have grown and could not
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..expansion.calibrate import calibrate

    coll = open_collection(args)
    kinds = ["image", "text"] if args.kind == "both" else [args.kind]
    report = calibrate(coll, kinds=kinds, per_class=args.per_class, max_classes=args.max_classes, seed=args.seed,
                       save=not args.dry_run, progress=not args.json)
    if args.json:
        print(json.dumps({"backbone": report.backbone, "seconds": round(report.seconds, 2),
                          "kinds": [r.as_dict() for r in report.results]}, indent=2))
    else:
        print("\n".join(report.lines()))
        if not args.dry_run:
            print(f"stored in {coll.state_dir / 'calibration.json'}; every later query uses it")
    return 0


def cmd_improve(args: argparse.Namespace) -> int:
    from ..retrieval.stages import improve

    coll = open_collection(args)
    report = improve(coll, queries_per_class=args.per_class, max_queries=args.max_queries, seed=args.seed,
                     save=not args.dry_run)
    if args.json:
        print(json.dumps({"rows": report.rows, "chosen": list(report.chosen), "queries": report.queries,
                          "seconds": round(report.seconds, 2)}, indent=2))
    else:
        print("\n".join(report.lines()))
        if not args.dry_run:
            print(f"live search now uses: {'+'.join(report.chosen) or 'plain nearest neighbours'}")
    return 0


def _measurement_args(p: argparse.ArgumentParser, keeps: str) -> None:
    """What ``calibrate`` and ``improve`` share: they measure on the collection, then store."""
    p.add_argument("--seed", type=int, default=0, help="which classes and images are held out")
    p.add_argument("--dry-run", action="store_true", help=f"measure and print, but keep {keeps}")
    p.add_argument("--json", action="store_true")
    collection_args(p)


def register(sub: Any) -> None:
    p = sub.add_parser("search", help="search by text or by an example image; grow from the web with --expand")
    p.add_argument("--text")
    p.add_argument("--image", help="path or http(s) URL")
    p.add_argument("-k", type=int_in(1, 1000, "-k"), default=10)
    p.add_argument("--efSearch", type=int)
    p.add_argument("--nprobe", type=int)
    p.add_argument("--search_k", type=int)
    p.add_argument("--qe", type=int_in(0, 100, "--qe"), default=None, metavar="N",
                   help="alpha query expansion over the top N hits (5 is a good start; default $IMRS_QE or 0)")
    p.add_argument("--json", action="store_true", help="print hits, verdict, proposed terms and timings as JSON")
    p.add_argument("--expand", action="store_true",
                   help="grow the collection from the web when coverage is weak (exit status 3 when it could not)")
    p.add_argument("--term", help="the web search term to grow with (image queries: pick one of the proposed)")
    p.add_argument("--auto-term", action="store_true",
                   help="image queries: grow with the best proposed term without asking")
    p.add_argument("-n", type=int_in(1, 500, "-n"), default=None, help="web images to add when growing")
    p.add_argument("--allow-loopback", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-metadata", action="store_true",
                   help="text search by pixels only (ignore folder labels, file names, captions, web terms)")
    p.add_argument("--ask-web", action="store_true",
                   help="an uncertain verdict asks the web: a few images of the proposed term are compared with "
                        "the collection, then deleted (on by default with --expand)")
    p.add_argument("--web-exemplars", action="store_true",
                   help="text: also search with a few web images for the text (downloaded, used, not kept)")
    collection_args(p)
    runtime_arg(p)
    add_where_arg(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("calibrate", help="measure coverage thresholds on this collection (held-out classes)",
                       description="Uses each labelled folder as a covered concept and, with its images taken "
                                   "out of the answers, as an absent one, asked in other people's photo "
                                   "style; fits the judge on 70% of the folders (its precision thresholds "
                                   "from models that never saw the folder) and reports on the last 30%: "
                                   "precision of the confident answers, the share answered, balanced "
                                   "accuracy, and the same with the web check for uncertain answers.")
    p.add_argument("--kind", choices=["image", "text", "both"], default="both")
    p.add_argument("--per-class", type=int_in(1, 50, "--per-class"), default=CALIBRATE_PER_CLASS,
                   help="images sampled per folder: queries, and stand-ins for web images in the web check "
                        f"(default {CALIBRATE_PER_CLASS}: {CALIBRATE_PER_CLASS - 1} stand-ins per query, as many "
                        "as a live check fetches)")
    p.add_argument("--max-classes", type=int_in(4, 10000, "--max-classes"), default=120)
    _measurement_args(p, keeps="the current thresholds")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("improve", help="measure DBA, whitening and a label-trained head on this collection; "
                                       "keep the best for live search",
                       description="Fits each improvement on the collection, measures P@10 and mAP@10 of every "
                                   "combination on held-out images of each labelled folder, and keeps the best "
                                   "for live search only when it beats plain nearest neighbours.")
    p.add_argument("--per-class", type=int_in(1, 100, "--per-class"), default=5, help="held-out queries per class")
    p.add_argument("--max-queries", type=int_in(10, 100000, "--max-queries"), default=600)
    _measurement_args(p, keeps="the current choice")
    p.set_defaults(func=cmd_improve)
