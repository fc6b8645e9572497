"""What every ``imrs`` command shares: the collection options, settings from arguments, opening
the collection, argument types."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..active import read_active
from ..collection import Collection
from ..config import Settings
from ..errors import IMRSError
from .scale import add_milvus_arg, milvus_params


def collection_args(p: argparse.ArgumentParser, with_root: bool = True) -> None:
    if with_root:
        p.add_argument("--root", help="collection folder (default: the last one indexed)")
    p.add_argument("--backbone", help="embedding model (default: the collection's, else $IMRS_BACKBONE or "
                                      f"{Settings.backbone})")
    p.add_argument("--indexer",
                   help=f"index kind (default: the collection's, else $IMRS_INDEXER or {Settings.indexer})")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--weights", default="pretrained", choices=["pretrained", "random"],
                   help="'random' is for tests only: results are meaningless")
    p.add_argument("--checkpoint", help="local weights file for the backbone (else IMRS_CHECKPOINT_* env vars)")
    p.add_argument("--home", help="state folder (default: $IMRS_HOME or ./runs)")
    add_milvus_arg(p)


def int_in(lo: int, hi: int, what: str) -> Any:
    """An argparse type: an integer in [lo, hi], with a one-line message otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, not {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be between {lo} and {hi}, not {value}")
        return value

    return parse


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings with this command's options applied (unset options keep them)."""
    pick = {name: getattr(args, attr, None) for name, attr in (
        ("home", "home"), ("device", "device"), ("qe", "qe"), ("expand_n", "n"),
        ("expand_max_side", "max_side"), ("expand_jpeg_quality", "quality"), ("expand_phash_distance", "phash"),
        ("expand_workers", "workers"), ("provider", "provider"), ("wikimedia_api", "wikimedia_api"),
        ("urls_file", "urls_file"))}
    if getattr(args, "allow_loopback", False):
        pick["allow_loopback"] = True
    if getattr(args, "auto_term", False):
        pick["auto_confirm_term"] = True
    return Settings.from_env(**pick)


def open_collection(args: argparse.Namespace, root: str | None = None,
                    settings: Settings | None = None) -> Collection:
    """Resolve the collection from the arguments, falling back to the last one indexed."""
    s = settings or settings_from(args)
    active = read_active(s.home) or {}
    root = root or getattr(args, "root", None) or active.get("root")
    if not root:
        raise IMRSError("no collection yet: run `imrs index FOLDER` first, or pass --root")
    same = active.get("root") == str(Path(root).expanduser().resolve())
    backbone = args.backbone or (active.get("backbone") if same else None) or s.backbone
    indexer = args.indexer or (active.get("indexer") if same else None) or s.indexer
    params = {}
    for key in ("efSearch", "nprobe", "search_k"):
        val = getattr(args, key, None)
        if val is not None:
            params[key] = val
    params.update(milvus_params(args))
    return Collection(root, backbone, indexer, home=s.home, device=s.device, weights=args.weights,
                      checkpoint=args.checkpoint, index_params=params, runtime=getattr(args, "runtime", None) or "auto",
                      settings=s)


def runtime_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="auto", choices=["auto", "fp32", "int8"],
                   help="auto (default): int8 on CPU for collections of 1000+ images when its quality gate "
                        "passes, else fp32 (an indexed collection keeps the runtime its vectors were made with); "
                        "int8/fp32: force one (indexing re-embeds when the runtime changes)")
