"""What every browser session of one server process shares: the collection, the models, the index,
and who is doing what to them right now.

Streamlit re-executes the page on every click, so anything expensive lives in ``st.cache_resource``
entries: one ``Workspace`` per (root, backbone, indexer, device, home), its model loading in a
background thread so the page appears at once. Settings are *not* here: each session keeps its own
in ``st.session_state`` (see ``imrs.app.session``) and passes them to the pipeline per call.

``Activity`` is the process-wide notice board that lets a session say "another session is
expanding this collection" and refresh its counts when that ends; a writer lock held by another
process (the CLI) is reported the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from ..errors import IMRSError, WeightsUnavailableError
from ..ids import display_path
from .media import is_demo
from .pipeline import OFFLINE_BACKBONE

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Who is doing what (process-wide, per collection)
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    session: str
    kind: str  # "expanding" | "batch expansion" | "indexing" | "benchmark" | ...
    label: str
    started: float = field(default_factory=time.monotonic)
    stage: str = ""
    done: int = 0
    total: int = 0

    @property
    def visible(self) -> bool:
        """Worth telling other sessions about: anything but a search, and a search once it grows
        (the pipeline reports progress only while growing)."""
        return self.kind != "searching" or bool(self.stage)

    def describe(self) -> str:
        step = f" — {self.stage} {self.done}/{self.total}" if self.stage and self.total else (
            f" — {self.stage}" if self.stage else "")
        kind = "growing the collection for" if self.kind == "searching" else self.kind
        return f"{kind} {self.label}{step} ({time.monotonic() - self.started:.0f}s)"


class Activity:
    """Jobs running on one collection in this process; ``version`` moves when one ends, so a page
    that drew counts before can tell they are stale."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self.version = 0

    @contextlib.contextmanager
    def job(self, session: str, kind: str, label: str) -> Iterator[Job]:
        j = Job(uuid.uuid4().hex[:8], session, kind, label)
        with self._lock:
            self._jobs[j.id] = j
        try:
            yield j
        finally:
            with self._lock:
                self._jobs.pop(j.id, None)
                self.version += 1

    def others(self, session: str) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.session != session]

    def mine(self, session: str) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.session == session]


_ACTIVITY: dict[str, Activity] = {}
_ACTIVITY_GUARD = threading.Lock()


def activity_for(coll: Collection) -> Activity:
    with _ACTIVITY_GUARD:
        return _ACTIVITY.setdefault(str(coll.state_dir), Activity())


def writer_busy(coll: Collection) -> bool:
    """True while someone (another session's commit, or another process such as ``imrs expand``)
    holds the collection's writer lock. A probe, never a wait."""
    probe = getattr(coll.writer, "busy", None)
    if probe is None:
        return False
    try:
        return bool(probe())
    except OSError:
        return False


def session_id() -> str:
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        return ctx.session_id if ctx is not None else "no-session"
    except Exception:  # noqa: BLE001 - outside a Streamlit run (tests calling helpers)
        return "no-session"


# --------------------------------------------------------------------------------------------
# Backbones: state, the offline default, downloading weights
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneChoice:
    name: str
    state: str  # "ready" | "needs download" | "failed"
    reason: str
    dim: int
    supports_text: bool
    download_host: str  # "" when the weights ship with a package

    @property
    def downloadable(self) -> bool:
        return self.state != "ready" and bool(self.download_host)


@st.cache_data(ttl=30, show_spinner=False)
def backbone_choices() -> list[BackboneChoice]:
    """Every registered backbone with its weights state (cheap: no model is loaded)."""
    from ..encoders import backbone_info, backbone_status, list_backbones
    from ..encoders.base import get_spec

    out = []
    for name in list_backbones():
        info = backbone_info(name)
        state, reason = backbone_status(name)
        out.append(BackboneChoice(name, state, reason, int(info.dim), bool(info.supports_text),
                                  get_spec(name).download_host))
    return out


def unobtainable(backbone: str) -> str | None:
    """Why ``backbone``'s weights certainly cannot be had now (without importing its library)."""
    if backbone == OFFLINE_BACKBONE:
        return None
    try:
        from ..encoders.base import weights_unobtainable

        return weights_unobtainable(backbone)
    except IMRSError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - only a shortcut: the real load decides when unsure
        log.debug("weights pre-check for %s failed: %s", backbone, exc)
        return None


def default_backbone(configured: str) -> str:
    """The configured backbone when its weights can be had, else the offline one. The page then
    says plainly which backbone it runs on instead of pretending to be CLIP."""
    return configured if unobtainable(configured) is None else OFFLINE_BACKBONE


@dataclass
class Download:
    name: str
    thread: threading.Thread | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


_DOWNLOADS: dict[str, Download] = {}
_DOWNLOADS_GUARD = threading.Lock()


def download_weights(name: str) -> None:
    """Fetch ``name``'s pretrained weights into its library's cache (a real load, on CPU). Refuses
    at once, with the reason, when offline is forced or the host does not answer."""
    from ..encoders.base import get_encoder, get_spec, host_reachable, offline_forced

    spec = get_spec(name)
    if not spec.download_host:
        return
    if offline_forced():
        raise IMRSError(f"cannot download {name}: offline mode is on (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE or "
                        f"IMRS_OFFLINE is set for this server); restart it without that to download")
    if not host_reachable(spec.download_host):
        raise IMRSError(f"cannot download {name}: {spec.download_host} is not reachable from this server "
                        f"(no network?)")
    get_encoder(name, device="cpu")


def start_download(name: str) -> Download:
    """One download per backbone per process, in the background; the first failure is kept."""
    with _DOWNLOADS_GUARD:
        job = _DOWNLOADS.get(name)
        if job is not None and job.running:
            return job
        job = _DOWNLOADS[name] = Download(name)

    def work() -> None:
        t0 = time.perf_counter()
        try:
            download_weights(name)
        except Exception as exc:  # noqa: BLE001 - shown on the page as one line
            job.error = str(exc) if isinstance(exc, IMRSError) else f"{type(exc).__name__}: {exc}"
        finally:
            job.seconds = time.perf_counter() - t0
            backbone_choices.clear()
            forget_weights_failure(name)

    job.thread = threading.Thread(target=work, name=f"imrs-download-{name}", daemon=True)
    job.thread.start()
    # offline answers come back at once: wait a moment so the click shows the result, not "started"
    job.thread.join(3.0)
    return job


def download_state(name: str) -> Download | None:
    with _DOWNLOADS_GUARD:
        return _DOWNLOADS.get(name)


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
                _remember_failure(self.coll.backbone, str(self.load_error))
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
def _workspace(root: str, backbone: str, indexer: str, device: str, home: str, generation: int = 0) -> Workspace:
    """``generation`` changes after a failed model load, so a retry builds a fresh workspace."""
    from ..collection import Collection

    coll = Collection(root, backbone, indexer, home=home, device=device,
                      dynamic_root=dynamic_root_for(root, home))
    ws = Workspace(coll=coll)
    ws.start_loading()
    return ws


#: backbone -> (time, reason): a backbone whose weights failed is not retried on every rerun.
_WEIGHTS_FAILED: dict[str, tuple[float, str]] = {}
_GENERATION: dict[str, int] = {}
_RETRY_AFTER_S = 300.0


def _remember_failure(backbone: str, reason: str) -> None:
    if backbone not in _WEIGHTS_FAILED:
        _WEIGHTS_FAILED[backbone] = (time.monotonic(), reason)
        _GENERATION[backbone] = _GENERATION.get(backbone, 0) + 1


def forget_weights_failure(backbone: str) -> None:
    _WEIGHTS_FAILED.pop(backbone, None)


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


def open_workspace(root: str, backbone: str, indexer: str, device: str, home: str | os.PathLike[str]) -> Opened:
    """The shared workspace for these settings (its model still loading in the background). A
    backbone whose weights cannot be had is replaced by the offline one; ``fallback_reason`` says
    why, for the status badge."""
    home_s = str(Path(home).expanduser().resolve())
    root_s = str(Path(root).expanduser().resolve())

    def fallback(reason: str) -> Opened:
        return Opened(_workspace(root_s, OFFLINE_BACKBONE, indexer, device, home_s), backbone, reason)

    if backbone == OFFLINE_BACKBONE:
        return Opened(_workspace(root_s, backbone, indexer, device, home_s), backbone)
    failed = _WEIGHTS_FAILED.get(backbone)
    if failed and time.monotonic() - failed[0] < _RETRY_AFTER_S:
        return fallback(failed[1])
    quick = unobtainable(backbone)
    if quick is not None:
        _WEIGHTS_FAILED[backbone] = (time.monotonic(), quick)
        return fallback(quick)
    ws = _workspace(root_s, backbone, indexer, device, home_s, _GENERATION.get(backbone, 0))
    if ws.encoder_ready and isinstance(ws.load_error, WeightsUnavailableError):
        _remember_failure(backbone, str(ws.load_error))
        return fallback(str(ws.load_error))
    return Opened(ws, backbone)


def needs_first_index(coll: Collection) -> bool:
    """True before the collection has ever been indexed with this backbone (no live snapshot and
    no cached embeddings): the page then says it is building, not just "loading"."""
    from .. import snapshot as snap

    return not snap.snapshot_exists(coll.snap_dir, coll.live_name) and not coll.base_npz().exists()


def sync_once(ws: Workspace, progress: Callable[[int, int], None] | None = None, force: bool = False) -> str | None:
    """Index new/changed files once per process (or again when ``force``); the summary of a sync
    that ran now, None when it had already been done (by this or another session)."""
    if needs_first_index(ws.coll):
        ws.ensure_encoder()

    def track(done: int, total: int) -> None:
        ws.sync_progress = (done, total)
        if progress is not None:
            progress(done, total)

    with ws.job_lock:
        if ws.synced and not force:
            return None
        try:
            with ws.activity.job(session_id(), "indexing", ws.coll.root.name):
                report = ws.coll.sync(progress=lambda _stage, done, total: track(done, total))
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
