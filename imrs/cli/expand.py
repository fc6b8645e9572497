"""``imrs expand``, ``imrs dynamic list`` and ``imrs prune``: the web-expansion commands.

Everything here is argument parsing and printing; the work is in ``imrs.expansion`` and
``imrs.query``, configured by the same ``Settings`` as ``imrs search --expand``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import PROVIDER_CHOICES, Settings
from ..errors import IMRSError
from ..expansion import batch_terms, dynamic_groups, list_dynamic, prune, read_terms
from ..expansion.prune import select as select_for_prune
from ..expansion.terms import clean_term
from ..layout import DYNAMIC_PREFIX
from ..progress import TqdmBars
from ..query import grow_terms
from .common import collection_args, int_in, open_collection, settings_from


# -- imrs expand ------------------------------------------------------------------------------------
def cmd_expand(args: argparse.Namespace) -> int:
    terms = list(args.terms or [])
    if args.csv:
        terms += read_terms(args.csv)
    if not terms:
        raise IMRSError("give at least one TERM, or --csv FILE with one term per line")
    if any(not clean_term(t) for t in terms):
        raise IMRSError("empty search term: every TERM needs at least one word")
    s = settings_from(args)
    coll = open_collection(args, settings=s)
    plan = batch_terms(terms)
    bars = TqdmBars(units={"terms": "term"}) if not args.quiet and not args.json else None

    def progress(stage: str, done: int, total: int) -> None:
        assert bars is not None
        if stage == "terms" and len(plan) < 2:
            return  # one term: its own bars say it all
        bars(stage, done, total)
        if stage == "terms" and done < total:
            bars.note(stage, f"expanding '{plan[done]}'"[:60])

    try:
        batch = grow_terms(coll, plan, s, s.expand_n, progress if bars is not None else None)
    finally:
        if bars is not None:
            bars.close()
    failed = batch.failed_terms
    if args.json:
        print(json.dumps(batch.as_dict(), indent=2))
    else:
        for r in batch.results:
            if r.report is not None:
                print(r.report.summary())
                if r.reasons:
                    print(f"  failures: {'; '.join(r.reasons[:3])}{' ...' if len(r.reasons) > 3 else ''}")
        if len(batch.results) > 1:
            print(batch.summary())
    if failed and len(failed) == len(batch.results):
        if len(failed) == 1:
            raise IMRSError(failed[0].error or "expansion failed")
        raise IMRSError(f"all {len(failed)} terms failed; first: '{failed[0].term}': {failed[0].error}")
    if not args.json:
        print(f"index holds {len(coll.index)} vectors ({coll.catalog.count('dynamic')} dynamic)")
    return 0


# -- imrs dynamic list ------------------------------------------------------------------------------
def cmd_dynamic(args: argparse.Namespace) -> int:
    coll = open_collection(args)
    if args.term:
        recs = list_dynamic(coll, args.term)
        if args.json:
            print(json.dumps([{"id": r.id, "relpath": r.relpath, "term": r.term, "slug": r.slug,
                               "source_url": r.source_url, "provider": r.provider, "license": r.license,
                               "author": r.author, "title": r.title, "added_at": r.added_at}
                              for r in recs], indent=2))
            return 0
        if not recs:
            print(f"no dynamic images for {args.term!r}")
            return 0
        for r in recs:
            lic = f"  [{r.license}]" if r.license else ""
            print(f"{r.id:>20d}  {r.relpath}  {r.source_url or ''}{lic}")
        return 0
    groups = dynamic_groups(coll)
    if args.json:
        print(json.dumps([{"slug": g.slug, "term": g.term, "count": g.count,
                           "folder": str(coll.dynamic_root / f"{DYNAMIC_PREFIX}{g.slug}")} for g in groups], indent=2))
        return 0
    if not groups:
        print(f"no dynamic images in {coll.root} yet: run `imrs expand TERM`")
        return 0
    width = max(len(g.slug) for g in groups)
    for g in groups:
        print(f"{g.slug.ljust(width)}  {g.count:5d} image(s)  term: {g.term}")
    print(f"{sum(g.count for g in groups)} dynamic image(s) in {len(groups)} term(s), under {coll.dynamic_root}")
    return 0


# -- imrs prune -------------------------------------------------------------------------------------
def cmd_prune(args: argparse.Namespace) -> int:
    coll = open_collection(args)
    if args.dry_run:
        found, missing = select_for_prune(coll, term=args.term, ids=args.ids)
        for r in found.values():
            print(f"would remove {r.id}  {r.relpath}  {r.source_url or ''}")
        if missing:
            print(f"{len(missing)} id(s) are not in the collection")
        return 0
    report = prune(coll, term=args.term, ids=args.ids)
    print(report.summary())
    print(f"index holds {len(coll.index)} vectors ({coll.catalog.count('dynamic')} dynamic)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("expand", help="add web images for one or more terms to the collection",
                       description="Search the web for each TERM, download up to N images in parallel "
                                   "(size, time and type limits, no private addresses), drop near-duplicates "
                                   "of images already in the collection, embed and add them to the index.")
    p.add_argument("terms", nargs="*", metavar="TERM", help="search term(s); quote multi-word terms")
    p.add_argument("--csv", metavar="FILE",
                   help="more terms from a file: one per line, or a CSV with a 'term' column (else the first)")
    d = Settings()
    p.add_argument("-n", type=int_in(1, 500, "-n"), default=None,
                   help=f"images to add per term (default $IMRS_EXPAND_N or {d.expand_n})")
    p.add_argument("--max-side", type=int_in(32, 4096, "--max-side"), default=None,
                   help=f"longer side of the stored images in pixels (default {d.expand_max_side})")
    p.add_argument("--quality", type=int_in(1, 95, "--quality"), default=None,
                   help=f"JPEG quality (default {d.expand_jpeg_quality})")
    p.add_argument("--phash", type=int_in(0, 64, "--phash"), default=None,
                   help="pHash Hamming distance at or below which an image is a near-duplicate "
                        f"(default {d.expand_phash_distance})")
    p.add_argument("--provider", choices=PROVIDER_CHOICES, default=None,
                   help="image search: DuckDuckGo, Wikimedia, or both in that order (default $IMRS_EXPAND_PROVIDER "
                        "or auto)")
    p.add_argument("--wikimedia-api", metavar="URL",
                   help="MediaWiki API for Commons search (a mirror; default $IMRS_WIKIMEDIA_API or Commons)")
    p.add_argument("--urls-file", metavar="FILE",
                   help="use a fixed list of image URLs instead of a search (one per line, or term<TAB>url)")
    p.add_argument("--allow-loopback", action="store_true",
                   help="let downloads reach 127.0.0.1 -- for local testing only (a loopback test server); "
                        "never needed for real web images")
    p.add_argument("--workers", type=int_in(1, 64, "--workers"), default=None,
                   help=f"parallel downloads (default {d.expand_workers})")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    collection_args(p)
    p.set_defaults(func=cmd_expand)

    p = sub.add_parser("dynamic", help="list the web images added by expansion")
    p.add_argument("action", choices=["list"], nargs="?", default="list")
    p.add_argument("--term", help="list the images of one term (or folder slug)")
    p.add_argument("--json", action="store_true")
    collection_args(p)
    p.set_defaults(func=cmd_dynamic)

    p = sub.add_parser("prune", help="remove web images (by term or id); never touches your own images")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--term", help="remove every image of this term (or folder slug)")
    group.add_argument("--ids", nargs="+", metavar="ID", help="remove these image ids (see `imrs dynamic list`)")
    p.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    collection_args(p)
    p.set_defaults(func=cmd_prune)
