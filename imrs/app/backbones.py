"""Backbones as the page offers them: their weights state, the offline fallback, downloading
weights in the background, and which backbones recently failed to load (so a rerun does not try
again every time)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import streamlit as st

from ..errors import IMRSError
from .pipeline import OFFLINE_BACKBONE, Settings

log = logging.getLogger(__name__)


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
def backbone_choices(settings: Settings | None = None) -> list[BackboneChoice]:
    """Every registered backbone with its weights state (cheap: no model is loaded), where
    ``settings`` (the server's; None: the environment's) say weights are found."""
    from ..encoders import WeightsPlace, backbone_info, backbone_status, list_backbones
    from ..encoders.base import get_spec

    place = WeightsPlace.from_settings(settings)
    out = []
    for name in list_backbones():
        info = backbone_info(name)
        state, reason = backbone_status(name, place)
        out.append(BackboneChoice(name, state, reason, int(info.dim), bool(info.supports_text),
                                  get_spec(name).download_host))
    return out


def unobtainable(backbone: str, settings: Settings | None = None) -> str | None:
    """Why ``backbone``'s weights certainly cannot be had now (without importing its library),
    where ``settings`` (None: the environment's) say weights are found."""
    if backbone == OFFLINE_BACKBONE:
        return None
    try:
        from ..encoders import WeightsPlace
        from ..encoders.base import weights_unobtainable

        return weights_unobtainable(backbone, WeightsPlace.from_settings(settings))
    except IMRSError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - only a shortcut: the real load decides when unsure
        log.debug("weights pre-check for %s failed: %s", backbone, exc)
        return None


def default_backbone(configured: str, settings: Settings | None = None) -> str:
    """The configured backbone when its weights can be had, else the offline one. The page then
    says plainly which backbone it runs on instead of pretending to be CLIP."""
    return configured if unobtainable(configured, settings) is None else OFFLINE_BACKBONE


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


def download_weights(name: str, settings: Settings | None = None) -> None:
    """Fetch ``name``'s pretrained weights into its library's cache (a real load, on CPU), where
    ``settings`` (the server's; None: the environment's) say. Refuses at once, with the reason,
    when offline is forced or the host does not answer."""
    from ..encoders import WeightsPlace
    from ..encoders.base import get_encoder, get_spec, host_reachable, offline_forced

    spec = get_spec(name)
    if not spec.download_host:
        return
    place = WeightsPlace.from_settings(settings)
    if offline_forced(place):
        raise IMRSError(f"cannot download {name}: offline mode is on (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE or "
                        f"IMRS_OFFLINE is set for this server); restart it without that to download")
    if not host_reachable(spec.download_host, place=place):
        raise IMRSError(f"cannot download {name}: {spec.download_host} is not reachable from this server "
                        f"(no network?)")
    get_encoder(name, device="cpu", settings=settings)


def start_download(name: str, settings: Settings | None = None) -> Download:
    """One download per backbone per process, in the background; the first failure is kept."""
    with _DOWNLOADS_GUARD:
        job = _DOWNLOADS.get(name)
        if job is not None and job.running:
            return job
        job = _DOWNLOADS[name] = Download(name)

    def work() -> None:
        t0 = time.perf_counter()
        try:
            download_weights(name, settings)
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


class WeightsFailures:
    """backbone -> (time, reason) of a failed weights load, and a generation per backbone that moves
    with each new failure so the next open builds a fresh workspace. Sessions' threads and the
    model-loading threads report here at once: every change holds the lock."""

    #: A failed backbone is offered again after this long.
    RETRY_AFTER_S = 300.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: dict[str, tuple[float, str]] = {}
        self._generation: dict[str, int] = {}

    def remember(self, backbone: str, reason: str, *, new_generation: bool = True) -> None:
        """Keep the first reason; ``new_generation``: a loaded workspace failed, build the next fresh."""
        with self._lock:
            if backbone in self._failed:
                return
            self._failed[backbone] = (time.monotonic(), reason)
            if new_generation:
                self._generation[backbone] = self._generation.get(backbone, 0) + 1

    def forget(self, backbone: str) -> None:
        with self._lock:
            self._failed.pop(backbone, None)

    def recent(self, backbone: str) -> str | None:
        """Why ``backbone`` failed within the retry window, else None."""
        with self._lock:
            failed = self._failed.get(backbone)
        return failed[1] if failed and time.monotonic() - failed[0] < self.RETRY_AFTER_S else None

    def generation(self, backbone: str) -> int:
        with self._lock:
            return self._generation.get(backbone, 0)


_FAILURES = WeightsFailures()


def weights_failures() -> WeightsFailures:
    """The process's record, one for all sessions and their threads (keyed by backbone; plain
    Python, so a download thread can clear it without a Streamlit context)."""
    return _FAILURES


def forget_weights_failure(backbone: str) -> None:
    weights_failures().forget(backbone)
