"""What the Streamlit app shares between reruns and browser sessions, and small UI-facing helpers.

Streamlit re-executes ``app_streamlit.py`` top to bottom on every click, so anything expensive (the
model, the live index, the catalog connection) must live outside the script: here, in
``st.cache_resource`` entries keyed by (root, backbone, indexer, device, home). Every browser session
of one server process therefore sees the same ``Collection`` and the same in-memory index, and a
removal or expansion made in one tab is visible in the other at its next rerun.

Nothing here does retrieval itself: it picks the collection, opens the ``Collection`` facade,
serialises its answers for ``st.session_state`` and adapts the expansion / benchmark modules to the
shapes the page wants. Helpers that do not need a Streamlit runtime are plain functions so the tests
can call them directly.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from .config import DEFAULT_BACKBONE, DEFAULT_INDEXER, OFFLINE_BACKBONE, home_dir, state_dir_for
from .errors import IMRSError, WeightsUnavailableError
from .ids import display_path

if TYPE_CHECKING:
    from PIL import Image

    from .collection import Collection, SearchHit

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_ROOT = REPO_ROOT / "demo" / "caltech101-mini"
ROOT_ENV = "IMRS_ROOT"

#: Demo classes whose first image makes a good "example query" button (present in Caltech-101).
EXAMPLE_CLASSES = ("sunflower", "airplanes", "Leopards", "watch", "butterfly", "pizza")
#: Pasted query URLs: a query only needs enough pixels for the encoder, not the original file.
QUERY_MAX_SIDE = 1024
PROVIDERS = ("auto", "ddg", "wikimedia")  # = imrs.expansion.PROVIDER_CHOICES


# --------------------------------------------------------------------------------------------
# Which collection, which backbone
# --------------------------------------------------------------------------------------------


def default_root() -> str:
    """``$IMRS_ROOT`` if set, else the demo collection shipped in the repository."""
    from .config import Settings

    return Settings.from_env().root or str(DEMO_ROOT)


def is_demo(root: str | os.PathLike[str]) -> bool:
    try:
        return Path(root).expanduser().resolve() == DEMO_ROOT.resolve()
    except OSError:
        return False


def dynamic_root_for(root: str | os.PathLike[str], home: str | os.PathLike[str] | None) -> str | None:
    """The demo lives inside the git checkout: its web images go to the state folder, never into
    the repository. Other collections keep the facade's default (beside the base images)."""
    if is_demo(root):
        return str(state_dir_for(Path(root).expanduser().resolve(), home) / "dynamic")
    return None


@dataclass(frozen=True)
class BackboneChoice:
    name: str
    state: str  # "ready" | "needs download" | "failed"
    reason: str
    dim: int
    supports_text: bool

    @property
    def label(self) -> str:
        return f"{self.name} · {self.state}"


@st.cache_data(ttl=60, show_spinner=False)
def backbone_choices() -> list[BackboneChoice]:
    """Every registered backbone with its weights state (cheap: no model is loaded)."""
    from .encoders import backbone_info, backbone_status, list_backbones

    out = []
    for name in list_backbones():
        info = backbone_info(name)
        state, reason = backbone_status(name)
        out.append(BackboneChoice(name, state, reason, int(info.dim), bool(info.supports_text)))
    return out


def index_kinds() -> tuple[str, ...]:
    from .indexes import INDEX_KINDS

    return tuple(INDEX_KINDS)


#: Search-time tunables per index kind, shown in the sidebar (build parameters need a rebuild).
TUNABLES: dict[str, tuple[str, ...]] = {"hnsw": ("efSearch",), "ivf_flat": ("nprobe",),
                                        "ivf_pq": ("nprobe", "k_factor"), "annoy": ("search_k",)}


def default_tunables(kind: str, n: int, dim: int) -> dict[str, int]:
    try:
        from .indexes import auto_params
    except ImportError:  # pragma: no cover - indexes package without the helper
        return {}
    params = auto_params(kind, n, dim)
    return {k: int(params[k]) for k in TUNABLES.get(kind, ()) if k in params}


def _nvidia_driver_present() -> bool:
    """Cheap hint before importing torch (seconds) just to learn there is no GPU."""
    import shutil

    return (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
            or shutil.which("nvidia-smi") is not None)


@st.cache_data(show_spinner=False)
def available_devices() -> list[str]:
    if not _nvidia_driver_present():
        return ["cpu"]
    try:
        import torch

        if torch.cuda.is_available():
            return ["cuda", "cpu"]
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install must not take the page down
        log.warning("CUDA probe failed: %s", exc)
    return ["cpu"]


# --------------------------------------------------------------------------------------------
# The shared workspace: one Collection per (root, backbone, indexer, device, home) per process
# --------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """A ``Collection`` plus what the app remembers about it across sessions of this process.

    The model loads in a background thread (``loader``) so the page, the sidebar and the search box
    appear at once; whatever needs the model calls ``ensure_encoder()``, which waits for that load
    instead of starting a second one.
    """

    coll: Collection
    #: Serialises long jobs (first index, expansion, merge, rebuild) between browser sessions.
    job_lock: threading.Lock = field(default_factory=threading.Lock)
    synced: bool = False
    merged: bool = False
    sync_summary: str = ""
    #: (printable relpath, reason) of every file the last sync left out: not an image, a link it
    #: does not follow, a FIFO, did not decode, ... (``SyncReport.skipped`` + ``failed``).
    sync_left_out: list[tuple[str, str]] = field(default_factory=list)
    busy_with: str = ""
    loader: threading.Thread | None = None
    load_error: BaseException | None = None
    load_s: float = 0.0
    warmup: threading.Thread | None = None

    @property
    def encoder_ready(self) -> bool:
        return self.loader is None or not self.loader.is_alive()

    def ensure_encoder(self, timeout: float = 600.0) -> Any:
        """The loaded encoder; waits for the background load, re-raises its error (a missing-weights
        error is remembered so the next page run falls back to the offline backbone)."""
        if self.loader is not None:
            self.loader.join(timeout)
            if self.loader.is_alive():
                raise IMRSError(f"loading {self.coll.backbone} is taking more than {timeout:.0f}s; try again")
        if self.load_error is not None:
            if isinstance(self.load_error, WeightsUnavailableError):
                bb = self.coll.backbone
                if bb not in _WEIGHTS_FAILED:
                    _WEIGHTS_FAILED[bb] = (time.monotonic(), str(self.load_error))
                    _GENERATION[bb] = _GENERATION.get(bb, 0) + 1
            raise self.load_error
        return self.coll.encoder

    def wait_warm(self, timeout: float = 120.0) -> None:
        """Let the text-model warm-up finish instead of racing it (two threads loading one model)."""
        self.ensure_encoder()
        t = self.warmup
        if t is not None and t.is_alive():
            t.join(timeout)

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            enc = self.coll.encoder
        except Exception as exc:  # noqa: BLE001 - handed to whoever waits in ensure_encoder()
            self.load_error = exc
            if not isinstance(exc, IMRSError):
                log.exception("loading %s failed", self.coll.backbone)
            return
        finally:
            self.load_s = time.perf_counter() - t0
        log.info("loaded %s (%s) in %.2fs", self.coll.backbone, getattr(enc, "device", "?"), self.load_s)
        if not enc.supports_text:
            # Text queries on an image-only backbone go through a sentence model and a class map
            # (imrs.textsearch): load them next, so the first text query does not pay for them. Not in
            # parallel with the image model: on a small CPU that delays the first image search.
            self.warmup = threading.Thread(target=self._warm_text, name="imrs-textmap-warmup", daemon=True)
            self.warmup.start()

    def _warm_text(self) -> None:
        """Sentence model, then the collection's class map (after the image model has loaded)."""
        try:
            from .textsearch.minilm import model

            model().encode(["warm up"])
            if len(self.coll.catalog):
                self.coll.text_index.conse()
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only means a slower first query
            log.info("text bridge warm-up skipped: %s", exc)


@st.cache_resource(show_spinner=False, max_entries=8)
def _workspace(root: str, backbone: str, indexer: str, device: str, home: str, generation: int = 0) -> Workspace:
    """``generation`` changes after a failed model load, so a retry builds a fresh workspace."""
    from .collection import Collection

    coll = Collection(root, backbone, indexer, home=home, device=device,
                      dynamic_root=dynamic_root_for(root, home))
    ws = Workspace(coll=coll)
    ws.loader = threading.Thread(target=ws._load, name=f"imrs-load-{backbone}", daemon=True)
    ws.loader.start()
    return ws


#: backbone -> (time, reason): a backbone whose weights failed is not retried on every rerun.
_WEIGHTS_FAILED: dict[str, tuple[float, str]] = {}
#: backbone -> how many of its workspaces failed to load (part of the cache key, see _workspace).
_GENERATION: dict[str, int] = {}
_RETRY_AFTER_S = 300.0


@dataclass
class Opened:
    ws: Workspace
    requested: str
    banner: str | None = None  # why the requested backbone is not the one in use

    @property
    def coll(self) -> Collection:
        return self.ws.coll

    @property
    def backbone(self) -> str:
        return self.ws.coll.backbone


def fallback_banner(requested: str, reason: str) -> str:
    return (f"**{requested} is not available — running on the offline backbone {OFFLINE_BACKBONE} instead.** "
            f"Image search works as usual; text search goes through class names and is approximate.  \n"
            f"Why, and how to get {requested}: {reason.rstrip('.')}.")


def open_workspace(root: str, backbone: str, indexer: str, device: str,
                   home: str | os.PathLike[str] | None = None) -> Opened:
    """The shared workspace for these settings (its model still loading in the background); a
    backbone whose weights cannot be had (offline, nothing cached) is replaced by the offline one,
    with a banner that says why and how to fix it."""
    home_s = str(home_dir(home).resolve())
    root_s = str(Path(root).expanduser().resolve())

    def fallback(reason: str) -> Opened:
        return Opened(_workspace(root_s, OFFLINE_BACKBONE, indexer, device, home_s), backbone,
                      fallback_banner(backbone, reason))

    if backbone == OFFLINE_BACKBONE:
        return Opened(_workspace(root_s, backbone, indexer, device, home_s), backbone)
    failed = _WEIGHTS_FAILED.get(backbone)
    if failed and time.monotonic() - failed[0] < _RETRY_AFTER_S:
        return fallback(failed[1])
    quick = _known_unobtainable(backbone)
    if quick is not None:
        log.warning("%s unavailable, falling back to %s: %s", backbone, OFFLINE_BACKBONE, quick)
        _WEIGHTS_FAILED[backbone] = (time.monotonic(), quick)
        return fallback(quick)
    ws = _workspace(root_s, backbone, indexer, device, home_s, _GENERATION.get(backbone, 0))
    if ws.encoder_ready and isinstance(ws.load_error, WeightsUnavailableError):
        _WEIGHTS_FAILED[backbone] = (time.monotonic(), str(ws.load_error))
        _GENERATION[backbone] = _GENERATION.get(backbone, 0) + 1  # a retry later loads afresh
        return fallback(str(ws.load_error))
    return Opened(ws, backbone)


def _known_unobtainable(backbone: str) -> str | None:
    """Why ``backbone``'s weights certainly cannot be had right now, decided without importing its
    model library: not cached and no local checkpoint (its status), and its download host is not
    reachable. Importing open_clip just to learn that costs seconds on every offline start."""
    try:
        from .encoders.weights import weights_unobtainable

        return weights_unobtainable(backbone)
    except Exception as exc:  # noqa: BLE001 - only a shortcut: the real load decides when unsure
        log.debug("weights pre-check for %s failed: %s", backbone, exc)
        return None


def forget_weights_failure(backbone: str | None = None) -> None:
    if backbone is None:
        _WEIGHTS_FAILED.clear()
    else:
        _WEIGHTS_FAILED.pop(backbone, None)


def needs_first_index(coll: Collection) -> bool:
    """True before the collection has ever been indexed with this backbone (no live snapshot and
    no cached embeddings): the page then says it is building, not just "loading"."""
    from . import snapshot as snap

    return not snap.snapshot_exists(coll.snap_dir, coll.live_name) and not coll.base_npz().exists()


def sync_once(ws: Workspace, progress: Callable[[int, int], None] | None = None,
              force: bool = False) -> str | None:
    """Index new/changed files once per process (or again when ``force``); returns the summary of a
    sync that ran now, None when it had already been done (by this or another session).

    On a restart nothing has changed and the sync needs no model, so it does not wait for the
    background load; a first index waits for it (rather than loading the model a second time)."""
    if needs_first_index(ws.coll):
        ws.ensure_encoder()
    with ws.job_lock:
        if ws.synced and not force:
            return None
        ws.busy_with = "indexing"
        try:
            report = ws.coll.sync(progress=progress or False)
        finally:
            ws.busy_with = ""
        ws.synced = True
        ws.sync_summary = report.summary()
        ws.sync_left_out = [(display_path(rel), reason) for rel, reason in sorted(report.skipped + report.failed)]
        for rel, reason in ws.sync_left_out[:5]:
            log.warning("not indexed: %s: %s", rel, reason)
        return ws.sync_summary


def benchmark_npzs(home: str | os.PathLike[str] | None, backbone: str) -> list[Path]:
    """Embedding caches written by benchmark runs for this backbone (``<home>/bench/**``). Only rows
    whose image exists in this collection survive a merge, so foreign caches are harmless."""
    base = home_dir(home) / "bench"
    if not base.is_dir():
        return []
    return sorted(p for p in base.rglob(f"*{backbone}*.npz") if p.is_file())


def override_npzs(spec: str) -> list[Path]:
    """An NPZ path typed in the sidebar: a file, a folder of NPZs, or several separated by ``;``."""
    out: list[Path] = []
    for part in (s.strip() for s in spec.split(";")):
        if not part:
            continue
        p = Path(part).expanduser()
        if p.is_dir():
            out += sorted(p.glob("*.npz"))
        elif p.is_file():
            out.append(p)
        else:
            raise IMRSError(f"NPZ override {part!r} is neither a file nor a folder")
    return out


def merge_npz(ws: Workspace, home: str | os.PathLike[str] | None, override: str = "",
              once: bool = False) -> str | None:
    """Merge base + dynamic + benchmark (+ override) caches into the live index. With ``once`` it runs
    at most once per process (the "auto-merge on start" switch)."""
    with ws.job_lock:
        if once and ws.merged:
            return None
        extra = benchmark_npzs(home, ws.coll.backbone) + override_npzs(override)
        out, rows, added = ws.coll.merge_caches(extra)
        ws.merged = True
        return f"merged {rows} rows from {len(extra) + 1}+ cache file(s) into {out.name}; {added} new vector(s) indexed"


# --------------------------------------------------------------------------------------------
# Queries and results
# --------------------------------------------------------------------------------------------


def decode_query(data: bytes, origin: str = "the query image") -> Image.Image:
    """Uploaded / pasted / captured bytes -> RGB image, with the project's safe decoder."""
    from .errors import ImageDecodeError
    from .imageio import load_image

    try:
        return load_image(data)
    except ImageDecodeError as exc:
        log.info("query image %s not decodable: %s", origin, exc)
        raise ImageDecodeError(f"{origin} is not a readable image ({len(data)} bytes): use a JPEG, PNG, WebP, "
                               f"GIF, BMP or TIFF file") from None


def read_query_file(path: str | os.PathLike[str]) -> bytes:
    """A collection file's bytes for use as a query, with the decoder's caps (regular files only,
    size and time limits): a file may have changed into anything since it was indexed."""
    from .imageio import read_image_file

    return read_image_file(path)


def crop_percent(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """Crop by margins in percent of the width/height (what the sliders give)."""
    w, h = img.size
    x0, x1 = round(w * left / 100.0), round(w * (1.0 - right / 100.0))
    y0, y1 = round(h * top / 100.0), round(h * (1.0 - bottom / 100.0))
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise IMRSError("the crop leaves less than 8 pixels: make the margins smaller")
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return img
    return img.crop((x0, y0, x1, y1))


def fetch_query_url(url: str, allow_loopback: bool = False) -> bytes:
    """A pasted image URL, through the SSRF-safe downloader (never a raw ``requests.get``)."""
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise IMRSError("paste an http:// or https:// image URL")
    from .web.download import DownloadPolicy, fetch_image_bytes

    return fetch_image_bytes(url, DownloadPolicy(max_side=QUERY_MAX_SIDE, allow_loopback=allow_loopback))


def hit_to_dict(hit: SearchHit) -> dict[str, Any]:
    """A search hit as plain data for ``st.session_state`` (survives reruns, holds no objects)."""
    r = hit.record
    extra = dict(r.extra) if r is not None else {}
    # "relpath" is for people (a non-UTF-8 name must not reach the browser as a lone surrogate);
    # "path" is what opens the file.
    return {"id": int(hit.id), "score": float(hit.score), "relpath": display_path(hit.relpath),
            "path": str(hit.path),
            "label": hit.label, "source": hit.source, "title": hit.title or "",
            "caption": extra.get("caption", ""),
            "url": (r.page_url or r.source_url or "") if r is not None else "",
            "provider": (r.provider or "") if r is not None else "",
            "license": (r.license or "") if r is not None else "",
            "author": (r.author or "") if r is not None else "",
            "term": (r.term or "") if r is not None else ""}


def hits_to_dicts(hits: Iterable[SearchHit]) -> list[dict[str, Any]]:
    return [hit_to_dict(h) for h in hits]


@st.cache_data(max_entries=4000, show_spinner=False)
def thumbnail(path: str, mtime: float, side: int = 256) -> bytes | None:
    """A small JPEG of an image file for the result grid (the browser gets ~15 kB, not the original),
    letterboxed to 4:3 so grid cells line up. ``mtime`` is part of the cache key so an edited file is
    not shown stale."""
    from PIL import Image, ImageOps

    from .imageio import load_image

    try:
        im = load_image(path, max_side=side)  # the one decoder: capped read, draft, EXIF once
        im = ImageOps.pad(im, (side, side * 3 // 4), method=Image.Resampling.LANCZOS, color=(255, 255, 255))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue()
    except Exception as exc:  # noqa: BLE001 - one unreadable file must not break the grid
        log.warning("no thumbnail for %s: %s", display_path(path), exc)
        return None


def thumb_of(path: str | os.PathLike[str], side: int = 256) -> bytes | None:
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return thumbnail(str(path), mtime, side)


def example_images(root: str | os.PathLike[str], n: int = 4) -> list[tuple[str, Path]]:
    """A few (label, path) query examples: the demo's well-known classes when present, else the
    first image of the first folders."""
    root = Path(root)
    out: list[tuple[str, Path]] = []
    for cls in EXAMPLE_CLASSES:
        files = sorted((root / cls).glob("*.jpg")) if (root / cls).is_dir() else []
        if files:
            out.append((cls, files[0]))
        if len(out) >= n:
            return out
    if not out and root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("dynamic_", "."))):
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if files:
                out.append((d.name, files[0]))
            if len(out) >= n:
                break
    return out


# --------------------------------------------------------------------------------------------
# Coverage and web expansion (the engine is imrs.expansion; this only adapts its answers)
# --------------------------------------------------------------------------------------------


def session_settings(cfg: dict[str, Any], **extra: Any) -> Any:
    """This browser session's settings: the environment's, with the sidebar's choices on top."""
    from .config import Settings

    return Settings.from_env(provider=cfg.get("provider") or None, wikimedia_api=cfg.get("wikimedia_api") or None,
                             allow_loopback=bool(cfg.get("allow_loopback")) or None, **extra)


def default_provider() -> str:
    from .config import Settings

    return Settings.from_env().provider


def default_wikimedia_api() -> str:
    from .config import Settings

    return Settings.from_env().wikimedia_api or ""


def default_allow_loopback() -> bool:
    """Test-only switch; off unless IMRS_EXPAND_ALLOW_LOOPBACK is set."""
    from .config import Settings

    return Settings.from_env().allow_loopback


@dataclass(frozen=True)
class ExpandOptions:
    """The sidebar's provider settings plus the batch form's download settings; what is left
    unset comes from ``Settings`` (the same defaults as ``imrs expand``)."""

    provider: str | None = None
    wikimedia_api: str | None = None
    allow_loopback: bool | None = None
    n: int | None = None
    max_side: int | None = None
    jpeg_quality: int | None = None
    phash_threshold: int | None = None

    def settings(self) -> Any:
        from .config import Settings

        return Settings.from_env(provider=self.provider or None, wikimedia_api=self.wikimedia_api or None,
                                 allow_loopback=self.allow_loopback or None, expand_n=self.n,
                                 expand_max_side=self.max_side, expand_jpeg_quality=self.jpeg_quality,
                                 expand_phash_distance=self.phash_threshold)

    def policy(self) -> Any:
        from .expansion import policy_for

        return policy_for(self.settings())

    def providers(self) -> Any:
        from .expansion import providers_for

        return providers_for(self.settings())


StageCallback = Callable[[str, int, int], None]


def run_batch(ws: Workspace, terms: Sequence[str], opts: ExpandOptions,
              on_term: Callable[[int, int, str], None] | None = None,
              on_stage: StageCallback | None = None) -> list[dict[str, Any]]:
    """Expand every term; one summary row per term (added, duplicates, failed, and why)."""
    from .expansion import expand_batch

    if not terms:
        raise IMRSError("no terms given: type one per line, or upload a CSV with a 'term' column")
    ws.ensure_encoder()
    with ws.job_lock:
        ws.busy_with = "running a batch expansion"
        try:
            s = opts.settings()
            rep = expand_batch(ws.coll, terms, n=s.expand_n, policy=opts.policy(),
                               phash_threshold=s.expand_phash_distance, providers=opts.providers(),
                               progress=on_term, term_progress=on_stage)
        finally:
            ws.busy_with = ""
    rows = []
    for r in rep.results:
        why = f"error: {r.error}" if r.error else "; ".join(r.reasons[:3])
        rows.append({"term": r.term, "folder": f"dynamic_{r.slug}", "added": r.added, "duplicates": r.duplicates,
                     "failed": r.failed, "why": why, "seconds": round(r.elapsed, 1)})
    return rows


def parse_terms(text: str = "", csv_bytes: bytes | None = None) -> list[str]:
    """Terms from the textarea (one per line) and an uploaded CSV, de-duplicated, in order."""
    from .expansion import parse_terms as _parse

    terms = _parse(text or "", csv_mode=False)
    if csv_bytes:
        try:
            body = csv_bytes.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise IMRSError("the uploaded term list is not UTF-8 text") from None
        terms += _parse(body)
    seen: set[str] = set()
    return [t for t in terms if not (t.casefold() in seen or seen.add(t.casefold()))]


# --------------------------------------------------------------------------------------------
# Batch expansion input, dynamic images
# --------------------------------------------------------------------------------------------


@dataclass
class DynamicGroup:
    slug: str
    term: str
    records: list[Any]  # ImageRecord


def dynamic_groups(coll: Collection) -> list[DynamicGroup]:
    """Dynamic images grouped by term, largest group first; base images never appear here."""
    groups = []
    for slug, term, _count in coll.catalog.dynamic_terms():
        recs = [r for r in coll.catalog.iter_records(source="dynamic", slug=slug)]
        if recs:
            groups.append(DynamicGroup(slug=slug, term=term or slug, records=recs))
    return groups


def remove_dynamic(ws: Workspace, ids: Sequence[int]) -> str:
    """Remove dynamic images everywhere (files, catalog, index, NPZ); refuses base images."""
    from .expansion import prune

    with ws.job_lock:
        return prune(ws.coll, ids=list(ids)).summary()


# --------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------


BENCH_COMMAND = (".venv/bin/imrs bench --data-root ../shared/datasets/caltech101 --sample-queries 300\n"
                 "# or on your own labelled folder: .venv/bin/imrs bench --data-root /path/to/folder")
#: Tables in the order a reader wants them; the long sweeps last.
TABLE_TITLES = {"quality": "Retrieval quality", "text": "Text → image", "indexes": "Indexes",
                "tuned": "Auto-tuned settings", "tuning": "Tuning sweep", "text_per_class": "Text → image per class"}


def latest_benchmark(home: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The newest benchmark run (see ``imrs.bench.report.latest_run``), or None when there is none
    or the benchmark package is not installed."""
    try:
        from .bench.report import latest_run
    except ImportError:
        return None
    return latest_run(home_dir(home))


def benchmark_tables(run: dict[str, Any]) -> list[tuple[str, list[dict[str, str]]]]:
    """(title, rows) for every non-empty CSV table of a run."""
    import csv

    tables: dict[str, str] = run.get("tables") or {}
    order = [n for n in TABLE_TITLES if n in tables] + [n for n in tables if n not in TABLE_TITLES]
    out = []
    for name in order:
        try:
            with open(tables[name], newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as exc:
            log.warning("cannot read %s: %s", tables[name], exc)
            continue
        if rows:
            out.append((TABLE_TITLES.get(name, name), rows))
    return out


def benchmark_plots(run: dict[str, Any]) -> list[Path]:
    return [Path(p) for p in (run.get("plots") or {}).values() if Path(p).is_file()]


__all__ = [
    "BENCH_COMMAND", "DEFAULT_BACKBONE", "DEFAULT_INDEXER", "DEMO_ROOT", "OFFLINE_BACKBONE", "PROVIDERS",
    "ExpandOptions", "Opened", "Workspace", "available_devices", "backbone_choices",
    "benchmark_plots", "benchmark_tables", "crop_percent", "decode_query",
    "default_root", "default_tunables", "dynamic_groups", "example_images", "fetch_query_url", "hits_to_dicts",
    "home_dir", "index_kinds", "is_demo", "latest_benchmark", "merge_npz", "needs_first_index", "open_workspace",
    "parse_terms", "read_query_file", "remove_dynamic", "run_batch", "session_settings", "sync_once",
    "thumb_of",
]
