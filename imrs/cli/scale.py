"""Command-line options of the scale-out features: ``--milvus-uri``/``--milvus-index`` (any command
that opens a collection), ``--engine ray`` and its options (``imrs index``), ``--where`` (``imrs
search``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..engines import ENGINES

if TYPE_CHECKING:
    from ..collection import Collection
    from ..engines import Embedder


def add_milvus_arg(p: argparse.ArgumentParser) -> None:
    from ..indexes.params import MILVUS_INDEX_TYPES

    p.add_argument("--milvus-uri", help="Milvus server (http://host:19530) or Milvus Lite .db path for "
                                        "--indexer milvus (default: $IMRS_MILVUS_URI, else a Lite file in "
                                        "the state folder; token in $IMRS_MILVUS_TOKEN)")
    p.add_argument("--milvus-index", type=str.upper, choices=MILVUS_INDEX_TYPES,
                   help="Milvus index type (default AUTO: HNSW, DISKANN above 10M vectors on a server); "
                        "changing it rebuilds the Milvus index from the caches, embedding nothing")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="who embeds: this process (local) or a Ray cluster / local Ray (ray)")
    p.add_argument("--ray-address", help="Ray cluster to join (auto, ray://host:10001; default: "
                                         "$IMRS_RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--ray-concurrency", type=int, default=2, metavar="N", help="encoder actors (default 2)")
    p.add_argument("--ray-batch-size", type=int, metavar="N", help="images per actor call (default 32)")
    p.add_argument("--ray-gpus", type=float, default=0.0, metavar="G",
                   help="GPUs per actor (1 = one each, 0.25 = four share one; default 0: CPU)")
    p.add_argument("--ray-cpus", type=float, default=1.0, metavar="C", help="CPUs per actor (default 1)")


def add_where_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--where", metavar="EXPR",
                   help="keep only matching images: source == 'dynamic', label in ['a', 'b'], term != 'x', "
                        "joined with and / or")


def milvus_params(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "milvus_uri", None):
        out["uri"] = args.milvus_uri
    if getattr(args, "milvus_index", None):
        out["index_type"] = args.milvus_index
    return out


def engine_from_args(args: argparse.Namespace, coll: Collection) -> Embedder | None:
    """None for the local engine (the collection's own encoder), else a RayEngine."""
    if getattr(args, "engine", "local") != "ray":
        return None
    from ..engines.ray_engine import RayEngine

    engine = RayEngine(coll.backbone, device=coll.device, weights=coll.weights, checkpoint=coll.checkpoint,
                       address=args.ray_address or coll.settings.ray_address,
                       batch_size=args.ray_batch_size or args.batch_size, concurrency=args.ray_concurrency,
                       num_cpus=args.ray_cpus, num_gpus=args.ray_gpus, settings=coll.settings)
    engine.prepare()  # a misconfigured cluster fails now, in seconds, before any other work
    return engine
