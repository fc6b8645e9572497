"""``imrs index``, ``info``, ``backbones``, ``merge``, ``compact`` and ``snapshot``: the collection itself."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..active import read_active, remember_active
from ..encoders.int8 import describe_tag, is_int8_tag, recipe_plan
from .common import collection_args, open_collection, runtime_arg, settings_from
from .scale import add_engine_args, engine_from_args


def cmd_index(args: argparse.Namespace) -> int:
    coll = open_collection(args, root=args.folder)
    report = coll.sync(progress=not args.quiet, batch_size=args.batch_size, engine=engine_from_args(args, coll))
    if args.metadata:
        n = coll.catalog.import_metadata_csv(args.metadata, root=coll.root)
        print(f"metadata: {n} image(s) annotated from {args.metadata}")
    remember_active(settings_from(args).home, coll)
    print(f"indexed {coll.root} with {coll.backbone}/{coll.indexer}: {report.summary()}")
    print(f"vectors: {report.runtime}" + (f" (re-embedded, were {report.restamped})" if report.restamped else "")
          + (f"; {report.runtime_note}" if report.runtime_note else ""))
    print(f"index holds {len(coll.index)} vectors; snapshot in {coll.snap_dir}")
    for line in report.recovered:  # damaged stores found and what became of them
        print(f"repaired: {line}")
    from ..walk import format_skipped  # every entry left out, with its one reason

    for line in format_skipped(sorted(report.skipped + report.failed)):
        print(line)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    s = settings_from(args)
    home = s.home
    onnx_cache = s.model_cache_dir() / "onnx"
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
        coll = open_collection(args, settings=s)
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
            for tag in d.get("runtimes", []):
                if is_int8_tag(tag):
                    print(f"    {describe_tag(tag, onnx_cache)}")
        q = info["quarantine"]
        if q["web_images"] or q["damaged_files"]:
            print(f"  quarantine ({q['folder']}): {q['web_images']} web image(s) `imrs index` takes back, "
                  f"{len(q['damaged_files'])} damaged file(s) kept for inspection")
        if info.get("milvus"):
            print(f"  milvus: collection {info['milvus']['collection']} at {info['milvus']['uri']}")
        for s in info["snapshots"]:
            print(f"  snapshot {s['name']}: {s['backbone']}/{s['indexer']}, {s['count']} vectors, {s['created']}")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(recipe_plan())
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from ..encoders import WeightsPlace, backbone_info, backbone_status, list_backbones

    place = WeightsPlace.from_settings(settings_from(args))
    for name in list_backbones():
        info = backbone_info(name)
        state, why = backbone_status(name, place)
        text = "text+image" if info.supports_text else "image"
        print(f"{name:22s} {info.dim:5d}-d  {text:10s}  {state}: {why}")
    print(recipe_plan())
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    coll = open_collection(args)
    out, rows, added = coll.merge_caches(args.extra or [])
    print(f"wrote {out}: {rows} rows; {added} new vector(s) added to the live index")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    coll = open_collection(args)
    written = coll.compact()
    total = sum(written.values())
    print(f"compacted {len(written)} cache(s) of {coll.backbone}: {total / 1e6:.1f} MB rewritten"
          + ("" if total else " (nothing to compact)"))
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    coll = open_collection(args)
    if args.action == "save":
        m = coll.save_snapshot(args.name)
        print(f"saved snapshot {m.name}: {m.count} vectors ({m.backbone}/{m.indexer})")
    elif args.action == "load":
        m = coll.load_snapshot(args.name)
        remember_active(settings_from(args).home, coll)
        print(f"loaded snapshot {m.name}: {m.count} vectors ({m.backbone}/{m.indexer})")
    else:
        for m in coll.list_snapshots():
            print(f"{m.name:30s} {m.backbone}/{m.indexer:8s} {m.count:7d} vectors  {m.created}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("index", help="embed a folder (incrementally) and save its index")
    p.add_argument("folder")
    collection_args(p, with_root=False)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--metadata", help="CSV with a 'path' column and extra columns (title, caption, ...)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    runtime_arg(p)
    add_engine_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("info", help="what is indexed, per backbone")
    collection_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("backbones", help="list backbones and whether their weights are available")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("merge", help="merge embedding caches (base, dynamic, extra NPZs) into emb_merged_*.npz")
    p.add_argument("extra", nargs="*", help="more NPZ files of the same backbone")
    collection_args(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("compact", help="rewrite the embedding caches without their deleted and replaced rows")
    collection_args(p)
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("snapshot", help="save, load or list named snapshots")
    p.add_argument("action", choices=["save", "load", "list"])
    p.add_argument("name", nargs="?", default="default")
    collection_args(p)
    p.set_defaults(func=cmd_snapshot)
