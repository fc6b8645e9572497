"""What every browser session of one server process shares: the collection, the models, the index.

Streamlit re-executes the page on every click, so anything expensive lives in ``st.cache_resource``
entries: one ``Workspace`` per (root, backbone, indexer, device, home), its model loading in a
background thread so the page appears at once. Settings are *not* here: each session keeps its own
in ``st.session_state`` (see ``imrs.app.session``) and passes them to the pipeline per call.

Who is doing what to a collection is on its board (``imrs.app.activity``); backbones, their
weights and recent load failures are in ``imrs.app.backbones``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from ..errors import IMRSError, WeightsUnavailableError
from ..ids import display_path
from .activity import Activity, activity_for, session_id, writer_busy
from .backbones import unobtainable, weights_failures
from .media import is_demo
from .pipeline import OFFLINE_BACKBONE, Progress, Settings

#: Names the tabs reach through this module (``W.session_id()``, ``W.writer_busy(...)``).
__all__ = ["OFFLINE_BACKBONE", "Opened", "Workspace", "available_devices", "merge_npz", "needs_first_index",
           "open_workspace", "session_id", "sync_once", "text_warmup", "writer_busy"]

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The sentence model behind text search on image-only backbones
# --------------------------------------------------------------------------------------------


class _TextWarmup:
    """Loads the sentence model once per process in the background, from the first page run on,
    so the first text query after a restart does not wait ~10 s for it."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="imrs-text-model", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            from .. import textmap

            textmap.embed_sentences(["warm up"])
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only means a slower first query
            self.error = str(exc)
            log.info("sentence model warm-up failed: %s", exc)
        self.seconds = time.perf_counter() - t0
        log.info("sentence model ready in %.1fs", self.seconds)

    @property
    def ready(self) -> bool:
        return not self.thread.is_alive()


@st.cache_resource(show_spinner=False)
def text_warmup() -> _TextWarmup:
    return _TextWarmup()


# --------------------------------------------------------------------------------------------
# The shared workspace: one Collection per (root, backbone, indexer, device, home) per process
# --------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """A ``Collection`` plus what the app remembers about it across sessions of this process.

    The model loads in a background thread (``loader``); whatever needs it calls
    ``ensure_encoder()``, which waits for that load instead of starting a second one. After it, the
    text path (sentence model + the collection's class map) is warmed the same way.
    """

    coll: Collection
    #: Serialises the first index, merges and rebuilds between sessions of this process.
    job_lock: threading.Lock = field(default_factory=threading.Lock)
    synced: bool = False
    merged: bool = False
    sync_summary: str = ""
    sync_progress: tuple[int, int] = (0, 0)
    #: (printable relpath, reason) of every file the last sync left out: not an image, a link it
    #: does not follow, a FIFO, did not decode, ... (``SyncReport.skipped`` + ``failed``).
    sync_left_out: list[tuple[str, str]] = field(default_factory=list)
    loader: threading.Thread | None = None
    load_error: BaseException | None = None
    load_s: float = 0.0
    text_ready: threading.Event = field(default_factory=threading.Event)
    synced_event: threading.Event = field(default_factory=threading.Event)
    encoder_loaded: threading.Event = field(default_factory=threading.Event)

    @property
    def activity(self) -> Activity:
        return activity_for(self.coll)

    @property
    def encoder_ready(self) -> bool:
        return self.loader is None or self.encoder_loaded.is_set()

    def ensure_encoder(self, timeout: float = 600.0) -> Any:
        """The loaded encoder; waits for the background load and re-raises its error."""
        if self.loader is not None and not self.encoder_loaded.wait(timeout):
            raise IMRSError(f"loading {self.coll.backbone} is taking more than {timeout:.0f}s; try again")
        if self.load_error is not None:
            if isinstance(self.load_error, WeightsUnavailableError):
                weights_failures().remember(self.coll.backbone, str(self.load_error))
            raise self.load_error
        return self.coll.encoder

    def wait_text(self, timeout: float = 120.0) -> None:
        """Let the text warm-up finish instead of racing it (two threads loading one model)."""
        self.ensure_encoder()
        self.text_ready.wait(timeout)

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            enc = self.coll.encoder
        except Exception as exc:  # noqa: BLE001 - handed to whoever waits in ensure_encoder()
            self.load_error = exc
            self.text_ready.set()
            if not isinstance(exc, IMRSError):
                log.exception("loading %s failed", self.coll.backbone)
            return
        finally:
            self.load_s = time.perf_counter() - t0
            self.encoder_loaded.set()
        log.info("loaded %s (%s) in %.2fs", self.coll.backbone, getattr(enc, "device", "?"), self.load_s)
        try:
            from ..textsearch import text_query_vector

            if not enc.supports_text:
                text_warmup().thread.join()
            # after the folder check: the class map is built over the indexed images
            if self.synced_event.wait(600.0) and len(self.coll.catalog):
                # one text query through the collection's own path builds (or loads) what the
                # first real one needs: the sentence model and the collection's class map
                text_query_vector(self.coll, "warm up")
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only means a slower first query
            log.info("text search warm-up skipped: %s", exc)
        finally:
            self.text_ready.set()

    def start_loading(self) -> None:
        self.loader = threading.Thread(target=self._load, name=f"imrs-load-{self.coll.backbone}", daemon=True)
        self.loader.start()


def dynamic_root_for(root: str, home: str) -> str | None:
    """The demo lives inside the git checkout: its web images go to the state folder, never into
    the repository. Other collections keep the facade's default (beside the base images)."""
    if is_demo(root):
        from ..config import state_dir_for

        return str(state_dir_for(Path(root), home) / "dynamic")
    return None


@st.cache_resource(show_spinner=False, max_entries=8)
def _workspace(root: str, backbone: str, indexer: str, device: str, home: str, generation: int = 0,
               settings: Settings | None = None) -> Workspace:
    """``generation`` changes after a failed model load, so a retry builds a fresh workspace.
    ``settings``: the server's (model files, Milvus, links followed), part of the cache key."""
    from ..collection import Collection

    coll = Collection(root, backbone, indexer, home=home, device=device,
                      dynamic_root=dynamic_root_for(root, home), settings=settings)
    ws = Workspace(coll=coll)
    ws.start_loading()
    return ws


@dataclass
class Opened:
    ws: Workspace
    requested: str
    fallback_reason: str | None = None  # why the requested backbone is not the one in use

    @property
    def coll(self) -> Collection:
        return self.ws.coll

    @property
    def backbone(self) -> str:
        return self.ws.coll.backbone


def open_workspace(root: str, backbone: str, indexer: str, device: str, home: str | os.PathLike[str],
                   settings: Settings | None = None) -> Opened:
    """The shared workspace for these settings (its model still loading in the background). A
    backbone whose weights cannot be had is replaced by the offline one; ``fallback_reason`` says
    why, for the status badge. ``settings``: the server's (None: the environment's, read now)."""
    settings = settings if settings is not None else Settings.from_env()
    home_s = str(Path(home).expanduser().resolve())
    root_s = str(Path(root).expanduser().resolve())

    def fallback(reason: str) -> Opened:
        return Opened(_workspace(root_s, OFFLINE_BACKBONE, indexer, device, home_s, 0, settings), backbone, reason)

    if backbone == OFFLINE_BACKBONE:
        return Opened(_workspace(root_s, backbone, indexer, device, home_s, 0, settings), backbone)
    failures = weights_failures()
    failed = failures.recent(backbone)
    if failed is not None:
        return fallback(failed)
    quick = unobtainable(backbone, settings)
    if quick is not None:
        failures.forget(backbone)  # an expired failure gives way to the newer reason
        failures.remember(backbone, quick, new_generation=False)
        return fallback(quick)
    ws = _workspace(root_s, backbone, indexer, device, home_s, failures.generation(backbone), settings)
    if ws.encoder_ready and isinstance(ws.load_error, WeightsUnavailableError):
        failures.remember(backbone, str(ws.load_error))
        return fallback(str(ws.load_error))
    return Opened(ws, backbone)


def needs_first_index(coll: Collection) -> bool:
    """True before the collection has ever been indexed with this backbone (no live snapshot and
    no cached embeddings): the page then says it is building, not just "loading"."""
    from .. import snapshot as snap

    return not snap.snapshot_exists(coll.snap_dir, coll.live_name) and not coll.base_npz().exists()


def sync_once(ws: Workspace, progress: Progress | None = None, force: bool = False) -> str | None:
    """Index new/changed files once per process (or again when ``force``); the summary of a sync
    that ran now, None when it had already been done (by this or another session)."""
    if needs_first_index(ws.coll):
        ws.ensure_encoder()

    def track(stage: str, done: int, total: int) -> None:
        ws.sync_progress = (done, total)
        if progress is not None:
            progress(stage, done, total)

    with ws.job_lock:
        if ws.synced and not force:
            return None
        try:
            with ws.activity.job(session_id(), "indexing", ws.coll.root.name):
                report = ws.coll.sync(progress=track)
        finally:
            ws.synced_event.set()  # the text warm-up waits for this, success or not
        ws.synced = True
        ws.sync_summary = report.summary()
        ws.sync_left_out = [(display_path(rel), reason) for rel, reason in sorted(report.skipped + report.failed)]
        for rel, reason in ws.sync_left_out[:5]:
            log.warning("not indexed: %s: %s", rel, reason)
        return ws.sync_summary


def benchmark_npzs(home: str | os.PathLike[str], backbone: str) -> list[Path]:
    """Embedding caches written by benchmark runs for this backbone (``<home>/bench/**``). Only rows
    whose image exists in this collection survive a merge, so foreign caches are harmless."""
    base = Path(home) / "bench"
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


def merge_npz(ws: Workspace, home: str | os.PathLike[str], override: str = "", once: bool = False) -> str | None:
    """Merge base + dynamic + benchmark (+ override) caches into the live index. With ``once`` it runs
    at most once per process (the "auto-merge on start" switch)."""
    with ws.job_lock:
        if once and ws.merged:
            return None
        extra = benchmark_npzs(home, ws.coll.backbone) + override_npzs(override)
        out, rows, added = ws.coll.merge_caches(extra)
        ws.merged = True
        return f"merged {rows} rows from {len(extra) + 1}+ cache file(s) into {out.name}; {added} new vector(s) indexed"


def available_devices() -> list[str]:
    return list(_devices())


@st.cache_data(show_spinner=False)
def _devices() -> tuple[str, ...]:
    import shutil

    if not (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
            or shutil.which("nvidia-smi")):
        return ("cpu",)  # no driver: do not import torch (seconds) to learn there is no GPU
    try:
        import torch

        if torch.cuda.is_available():
            return ("cuda", "cpu")
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install must not take the page down
        log.warning("CUDA probe failed: %s", exc)
    return ("cpu",)
