"""``imrs expand``, ``imrs dynamic list`` and ``imrs prune``: the web-expansion commands.

Registered into the main parser by ``imrs.cli`` (see ``PLUGINS``). Everything here is argument
parsing and printing; the work is in ``imrs.expansion``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .cli import _common_collection_args, open_collection
from .config import ENV_PROVIDER, ENV_WIKIMEDIA_API, PROVIDER_CHOICES
from .errors import IMRSError

# imrs.expansion (and with it the HTTP stack) is imported by the commands, not at registration:
# every `imrs` command registers these options, only expansion commands need the machinery.


def _int_in(lo: int, hi: int, what: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, not {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be between {lo} and {hi}, not {value}")
        return value

    return parse


# -- imrs expand ------------------------------------------------------------------------------------
def cmd_expand(args: argparse.Namespace) -> int:
    from .expansion import expand_batch, make_providers, policy_from_env, read_terms

    terms = list(args.terms or [])
    if args.csv:
        terms += read_terms(args.csv)
    if not terms:
        raise IMRSError("give at least one TERM, or --csv FILE with one term per line")
    coll = open_collection(args)
    providers = make_providers(args.provider or os.environ.get(ENV_PROVIDER, "auto") or "auto",
                               args.wikimedia_api or os.environ.get(ENV_WIKIMEDIA_API) or None,
                               args.urls_file)
    policy = policy_from_env(max_side=args.max_side, jpeg_quality=args.quality, workers=args.workers,
                             allow_loopback=True if args.allow_loopback else None)
    show = not args.quiet and not args.json
    outer = None
    if show and len(terms) > 1:
        from tqdm import tqdm

        outer = tqdm(total=len(terms), desc="terms", unit="term", dynamic_ncols=True)

    def progress(i: int, total: int, message: str) -> None:
        if outer is not None:
            outer.n = i
            outer.set_postfix_str(message[:60])
            outer.refresh()

    try:
        batch = expand_batch(coll, terms, n=args.n, policy=policy, phash_threshold=args.phash,
                             providers=providers, progress=progress, term_progress=show)
    finally:
        if outer is not None:
            outer.close()
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
    from .expansion import dynamic_groups, list_dynamic

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
                           "folder": str(coll.dynamic_root / f"dynamic_{g.slug}")} for g in groups], indent=2))
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
    from .expansion import prune
    from .expansion.prune import select as select_for_prune

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
    p.add_argument("-n", type=_int_in(1, 500, "-n"), default=20, help="images to add per term (default 20)")
    p.add_argument("--max-side", type=_int_in(32, 4096, "--max-side"), default=256,
                   help="longer side of the stored images in pixels (default 256)")
    p.add_argument("--quality", type=_int_in(1, 95, "--quality"), default=85, help="JPEG quality (default 85)")
    p.add_argument("--phash", type=_int_in(0, 64, "--phash"), default=4,
                   help="pHash Hamming distance at or below which an image is a near-duplicate (default 4)")
    p.add_argument("--provider", choices=PROVIDER_CHOICES, default=None,
                   help=f"image search: DuckDuckGo, Wikimedia, or both in that order (default ${ENV_PROVIDER} "
                        "or auto)")
    p.add_argument("--wikimedia-api", metavar="URL",
                   help=f"MediaWiki API for Commons search (a mirror; default ${ENV_WIKIMEDIA_API} or Commons)")
    p.add_argument("--urls-file", metavar="FILE",
                   help="use a fixed list of image URLs instead of a search (one per line, or term<TAB>url)")
    p.add_argument("--allow-loopback", action="store_true",
                   help="let downloads reach 127.0.0.1 -- for local testing only (a loopback test server); "
                        "never needed for real web images")
    p.add_argument("--workers", type=_int_in(1, 64, "--workers"), default=8, help="parallel downloads (default 8)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _common_collection_args(p)
    p.set_defaults(func=cmd_expand)

    p = sub.add_parser("dynamic", help="list the web images added by expansion")
    p.add_argument("action", choices=["list"], nargs="?", default="list")
    p.add_argument("--term", help="list the images of one term (or folder slug)")
    p.add_argument("--json", action="store_true")
    _common_collection_args(p)
    p.set_defaults(func=cmd_dynamic)

    p = sub.add_parser("prune", help="remove web images (by term or id); never touches your own images")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--term", help="remove every image of this term (or folder slug)")
    group.add_argument("--ids", nargs="+", metavar="ID", help="remove these image ids (see `imrs dynamic list`)")
    p.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    _common_collection_args(p)
    p.set_defaults(func=cmd_prune)


if __name__ == "__main__":  # pragma: no cover - `python -m imrs.expansion_cli` for debugging
    from .cli import main

    sys.exit(main(["expand", *sys.argv[1:]]))
