"""What one process may spend on images: the per-image limits and the decode gate.

Both come from ``Settings`` (``IMRS_MAX_IMAGE_MB``, ``IMRS_FILE_READ_TIMEOUT``,
``IMRS_MAX_IMAGE_PIXELS``, ``IMRS_MIN_DECODED_FRACTION``, ``IMRS_DECODE_MEMORY_MB``), resolved once
into an :class:`ImageLimits`: the decoder takes one per call (``limits=``), and a call without one
uses the process's, which an entry point sets with :func:`configure_images` when it builds its
settings (and which is otherwise read from the environment once, on first use, never per image).
They are process-wide by nature: the gate bounds the memory of every decoding thread together, so
two parts of one process cannot each have their own.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from .config import Settings

T = TypeVar("T")


def decode_memory_bytes(mb: float) -> int:
    """Decoded bytes in flight in the whole process (``IMRS_DECODE_MEMORY_MB``); 0 = 1/64 of
    physical memory, between 256 and 512 MiB: two or three 50-megapixel 16-bit pictures at once
    however many threads decode (a big machine gets more cores, not a license to hold eight)."""
    if mb > 0:
        return int(mb * 2**20)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        physical = 8 * 2**30
    return int(min(512 * 2**20, max(256 * 2**20, physical // 64)))


@dataclass(frozen=True)
class ImageLimits:
    """The limits every image read and decode obeys, resolved from ``Settings`` once."""

    #: largest file read (read whole before decoding: this bounds memory per file)
    max_bytes: int
    #: wall-clock cap on reading one file: a stuck network filesystem fails one file, not the job
    read_timeout: float
    #: decoded-pixel cap, checked on the header before any pixel is decoded
    max_pixels: int
    #: a truncated JPEG is kept only when at least this fraction of its rows decoded
    min_decoded_fraction: float
    #: decoded bytes in flight in the whole process (sizes the gate)
    decode_memory: int

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ImageLimits:
        """The limits ``settings`` give (None: the defaults, without looking at the environment)."""
        s = settings if settings is not None else Settings()
        return cls(max_bytes=max(1, int(s.max_image_mb * 2**20)),
                   read_timeout=s.file_read_timeout or Settings.file_read_timeout,
                   max_pixels=max(1, int(s.max_image_pixels)), min_decoded_fraction=s.min_decoded_fraction,
                   decode_memory=decode_memory_bytes(s.decode_memory_mb))


class DecodeGate:
    """Bounds the decoded bytes in flight in the whole process (all threads together).

    Two mechanisms, because either alone leaks memory with many threads:

    - Every decode runs on one of ``slots`` threads owned by the gate (Pillow decodes without the
      GIL, so more than the cores only adds memory). glibc keeps freed memory in the arena of the
      thread that freed it; if eight download threads each decoded a 98 MB picture, eight arenas
      would each keep ~100 MB after the pictures are gone. With the gate's threads doing all
      decoding, at most ``slots`` arenas ever hold picture memory.
    - A decode estimates its peak from the header (after JPEG draft) and holds that many bytes of
      ``budget`` while it runs. A decode larger than the whole budget still runs, alone. Small
      images -- nearly all of them -- never wait.
    """

    def __init__(self, budget: int, slots: int) -> None:
        self.budget = max(1, int(budget))
        self.slots = max(1, int(slots))
        self._cond = threading.Condition()
        self._used = 0
        self._active = 0
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.peak_used = 0
        self.peak_active = 0

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on one of the gate's threads (inline when already on one)."""
        if getattr(self._local, "worker", False):
            return fn()
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="imrs-image",
                                                initializer=self._mark_worker)
            pool = self._pool
        return pool.submit(fn).result()

    def _mark_worker(self) -> None:
        self._local.worker = True

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        if getattr(self._local, "held", False):  # nested decode in this thread: already counted
            yield
            return
        cost = max(1, min(int(cost), self.budget))
        with self._cond:
            while self._active and (self._active >= self.slots or self._used + cost > self.budget):
                self._cond.wait()
            self._used += cost
            self._active += 1
            self.peak_used = max(self.peak_used, self._used)
            self.peak_active = max(self.peak_active, self._active)
        self._local.held = True
        try:
            yield
        finally:
            self._local.held = False
            with self._cond:
                self._used -= cost
                self._active -= 1
                self._cond.notify_all()


_LIMITS: ImageLimits | None = None
_GATE: DecodeGate | None = None
_LOCK = threading.Lock()


def image_limits() -> ImageLimits:
    """The process's limits: as :func:`configure_images` set them, else the environment's, read
    once on first use."""
    global _LIMITS
    with _LOCK:
        if _LIMITS is None:
            _LIMITS = ImageLimits.from_settings(Settings.from_env())
        return _LIMITS


def configure_images(settings: Settings) -> ImageLimits:
    """Make ``settings``' limits the process's (called by an entry point once it has its settings).
    The gate is rebuilt only when its memory budget changes; decodes already running keep theirs."""
    global _LIMITS, _GATE
    limits = ImageLimits.from_settings(settings)
    with _LOCK:
        _LIMITS = limits
        if _GATE is not None and _GATE.budget != max(1, limits.decode_memory):
            _GATE.close()
            _GATE = None
    return limits


def decode_gate() -> DecodeGate:
    """The process's gate, sized from the process's limits and the core count."""
    global _GATE
    budget = image_limits().decode_memory
    with _LOCK:
        if _GATE is None:
            _GATE = DecodeGate(budget, os.cpu_count() or 2)
        return _GATE


def _forget_gate_in_child() -> None:
    """A forked child has none of the parent's threads: it must build its own gate and pool."""
    global _GATE
    _GATE = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_gate_in_child)


def set_decode_limits(budget: int | None = None, slots: int | None = None) -> DecodeGate:
    """Replace the process's gate (tests, benchmarks); decodes already running keep the old one."""
    global _GATE
    default = image_limits().decode_memory
    with _LOCK:
        if _GATE is not None:
            _GATE.close()
        _GATE = DecodeGate(budget if budget is not None else default,
                           slots if slots is not None else os.cpu_count() or 2)
        return _GATE
