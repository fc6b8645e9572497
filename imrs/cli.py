"""The ``imrs`` command. Thin: parses arguments, calls the ``Collection`` facade, prints tables.

Every expected failure is an ``IMRSError`` and ends as one line on stderr with exit code 2; the
traceback is only shown with ``--debug``. Subcommands of other parts of the package (expansion,
benchmarks) register themselves through ``register(subparsers)`` functions listed in ``PLUGINS``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .collection import Collection, SearchHit, read_active, remember_active
from .config import DEFAULT_BACKBONE, DEFAULT_INDEXER, home_dir
from .errors import IMRSError

log = logging.getLogger("imrs")

# Modules that add subcommands: each has ``register(subparsers) -> None``.
PLUGINS: list[str] = ["imrs.expansion_cli", "imrs.bench.cli"]


def _common_collection_args(p: argparse.ArgumentParser, with_root: bool = True) -> None:
    if with_root:
        p.add_argument("--root", help="collection folder (default: the last one indexed)")
    p.add_argument("--backbone", help=f"embedding model (default: the collection's, else {DEFAULT_BACKBONE})")
    p.add_argument("--indexer", help=f"index kind (default: the collection's, else {DEFAULT_INDEXER})")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--weights", default="pretrained", choices=["pretrained", "random"],
                   help="'random' is for tests only: results are meaningless")
    p.add_argument("--checkpoint", help="local weights file for the backbone (else IMRS_CHECKPOINT_* env vars)")
    p.add_argument("--home", help="state folder (default: $IMRS_HOME or ./runs)")


def open_collection(args: argparse.Namespace, root: str | None = None) -> Collection:
    """Resolve the collection from the arguments, falling back to the last one indexed."""
    home = home_dir(getattr(args, "home", None))
    active = read_active(home) or {}
    root = root or getattr(args, "root", None) or active.get("root")
    if not root:
        raise IMRSError("no collection yet: run `imrs index FOLDER` first, or pass --root")
    same = active.get("root") == str(Path(root).expanduser().resolve())
    backbone = args.backbone or (active.get("backbone") if same else None) or DEFAULT_BACKBONE
    indexer = args.indexer or (active.get("indexer") if same else None) or DEFAULT_INDEXER
    params = {}
    for key in ("efSearch", "nprobe", "search_k"):
        val = getattr(args, key, None)
        if val is not None:
            params[key] = val
    return Collection(root, backbone, indexer, home=home, device=args.device, weights=args.weights,
                      checkpoint=args.checkpoint, index_params=params, runtime=getattr(args, "runtime", None) or "auto")


def _runtime_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="auto", choices=["auto", "fp32", "int8"],
                   help="auto (default): int8 on CPU for collections of 1000+ images when its quality gate "
                        "passes, else fp32 (an indexed collection keeps the runtime its vectors were made with); "
                        "int8/fp32: force one (indexing re-embeds when the runtime changes)")


# -- commands ----------------------------------------------------------------------------------------
def cmd_index(args: argparse.Namespace) -> int:
    coll = open_collection(args, root=args.folder)
    report = coll.sync(progress=not args.quiet, batch_size=args.batch_size)
    if args.metadata:
        n = coll.catalog.import_metadata_csv(args.metadata, root=coll.root)
        print(f"metadata: {n} image(s) annotated from {args.metadata}")
    remember_active(home_dir(args.home), coll)
    print(f"indexed {coll.root} with {coll.backbone}/{coll.indexer}: {report.summary()}")
    print(f"vectors: {report.runtime}" + (f" (re-embedded, were {report.restamped})" if report.restamped else "")
          + (f"; {report.runtime_note}" if report.runtime_note else ""))
    print(f"index holds {len(coll.index)} vectors; snapshot in {coll.snap_dir}")
    for rel, reason in report.failed[:10]:
        print(f"  skipped {rel}: {reason}")
    if len(report.failed) > 10:
        print(f"  ... and {len(report.failed) - 10} more")
    return 0


def load_query_image(spec: str) -> Any:
    """A path or an http(s) URL; URLs go through the safe downloader (never a raw fetch)."""
    if spec.startswith(("http://", "https://")):
        from .web.download import DownloadPolicy, fetch_image_bytes

        return fetch_image_bytes(spec, DownloadPolicy(max_side=1024))
    if not Path(spec).exists():
        raise IMRSError(f"query image not found: {spec}")
    return spec


def format_hits(hits: Sequence[SearchHit]) -> str:
    rows = [("rank", "score", "label", "source", "path")]
    rows += [(str(n), f"{h.score:.3f}", h.label or "-", h.source, str(h.path)) for n, h in enumerate(hits, 1)]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * min(120, len(lines[0]) + 20))
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace) -> int:
    if bool(args.text) == bool(args.image):
        raise IMRSError("give exactly one of --text or --image")
    coll = open_collection(args)
    if args.text:
        query = coll.embed_query_text(args.text)
    else:
        query = coll.embed_query_image(load_query_image(args.image))
    hits = coll.search_vectors(query, args.k, qe=args.qe)[0]
    if getattr(args, "expand", False):
        from .expansion import expand_if_weak

        outcome = expand_if_weak(coll, query_text=args.text, query_vector=query, hits=hits, k=args.k,
                                 progress=True)
        if outcome is not None:
            print(outcome.summary())
            hits = outcome.hits_after
    if args.json:
        print(json.dumps([{"rank": n, "score": h.score, "id": h.id, "label": h.label, "source": h.source,
                           "path": str(h.path)} for n, h in enumerate(hits, 1)], indent=2))
    else:
        print(format_hits(hits))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    home = home_dir(args.home)
    roots = [args.root] if args.root else []
    if not roots:
        coll_dir = home / "collections"
        for cj in sorted(coll_dir.glob("*/collection.json")) if coll_dir.is_dir() else []:
            try:
                roots.append(json.loads(cj.read_text())["root"])
            except (OSError, ValueError, KeyError):
                continue
    if not roots:
        print(f"nothing indexed yet under {home}: run `imrs index FOLDER`")
        return 0
    active = (read_active(home) or {}).get("root")
    out = []
    for root in roots:
        if not Path(root).is_dir():
            print(f"{root}: folder no longer exists")
            continue
        args.root = root
        coll = open_collection(args)
        info = coll.info()
        out.append(info)
        if args.json:
            continue
        mark = " (active)" if info["root"] == active else ""
        print(f"{info['root']}{mark}")
        print(f"  images: {info['images']} ({info['base']} base, {info['dynamic']} dynamic), "
              f"{info['labels']} labels; state in {info['state_dir']}")
        for bb, d in info["embeddings"].items():
            mb = d["bytes"] / 1e6
            print(f"  {bb}: {d['rows']} embeddings x {d['dim']}-d ({', '.join(d.get('runtimes', []))}), "
                  f"{mb:.1f} MB in {len(d['files'])} file(s)")
        for s in info["snapshots"]:
            print(f"  snapshot {s['name']}: {s['backbone']}/{s['indexer']}, {s['count']} vectors, {s['created']}")
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from .encoders import backbone_info, backbone_status, list_backbones

    for name in list_backbones():
        info = backbone_info(name)
        state, why = backbone_status(name)
        text = "text+image" if info.supports_text else "image"
        print(f"{name:22s} {info.dim:5d}-d  {text:10s}  {state}: {why}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    coll = open_collection(args)
    out, rows, added = coll.merge_caches(args.extra or [])
    print(f"wrote {out}: {rows} rows; {added} new vector(s) added to the live index")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    coll = open_collection(args)
    if args.action == "save":
        m = coll.save_snapshot(args.name)
        print(f"saved snapshot {m.name}: {m.count} vectors ({m.backbone}/{m.indexer})")
    elif args.action == "load":
        m = coll.load_snapshot(args.name)
        remember_active(home_dir(args.home), coll)
        print(f"loaded snapshot {m.name}: {m.count} vectors ({m.backbone}/{m.indexer})")
    else:
        for m in coll.list_snapshots():
            print(f"{m.name:30s} {m.backbone}/{m.indexer:8s} {m.count:7d} vectors  {m.created}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imrs", description="Image retrieval that grows from the web.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="embed a folder (incrementally) and save its index")
    p.add_argument("folder")
    _common_collection_args(p, with_root=False)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--metadata", help="CSV with a 'path' column and extra columns (title, caption, ...)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _runtime_arg(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search by text or by an example image")
    p.add_argument("--text")
    p.add_argument("--image", help="path or http(s) URL")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--efSearch", type=int)
    p.add_argument("--nprobe", type=int)
    p.add_argument("--search_k", type=int)
    p.add_argument("--qe", type=int, default=0, metavar="N",
                   help="alpha query expansion over the top N hits (5 is a good start; 0 = off)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--expand", action="store_true", help="grow the collection from the web when coverage is weak")
    _common_collection_args(p)
    _runtime_arg(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="what is indexed, per backbone")
    _common_collection_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("backbones", help="list backbones and whether their weights are available")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("merge", help="merge embedding caches (base, dynamic, extra NPZs) into emb_merged_*.npz")
    p.add_argument("extra", nargs="*", help="more NPZ files of the same backbone")
    _common_collection_args(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("snapshot", help="save, load or list named snapshots")
    p.add_argument("action", choices=["save", "load", "list"])
    p.add_argument("name", nargs="?", default="default")
    _common_collection_args(p)
    p.set_defaults(func=cmd_snapshot)

    for mod in PLUGINS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if not exc.name or not mod.startswith(exc.name):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.func(args) or 0)
    except IMRSError as exc:
        if args.debug:
            raise
        print(f"imrs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imrs: interrupted; state on disk is unchanged or complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
