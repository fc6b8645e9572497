"""One writer at a time per collection, across threads (Streamlit sessions) and processes (CLI + app).

Two layers, one per kind of competitor. Threads of one process share a re-entrant ``RLock`` per
lock file (so a thread may nest writes, also through two ``Collection`` objects of one folder);
the thread that holds it then takes the inter-process lock, ``filelock.FileLock`` (``flock`` on
POSIX, ``msvcrt`` on Windows), once, at the outermost level. The kernel drops that lock when the
holder dies, even by ``kill -9``, so a crash never leaves a stale lock for anyone to break.

Readers take no lock: every write lands by atomic replace or in an SQLite transaction, so a reader
sees either the old or the new state of each file (``imrs.reconcile`` puts the files back in step
after a crash between them).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import IMRSError

#: Seconds a writer waits for another one before giving up with a clear message.
DEFAULT_TIMEOUT = 600.0


class _Shared:
    """Per lock file, per process: the thread lock, the file lock and the nesting depth. Only the
    thread holding ``rlock`` touches ``depth`` and ``flock``."""

    def __init__(self, path: Path) -> None:
        self.rlock = threading.RLock()
        # fallback_to_soft=False: a soft (marker-file) lock would outlive a killed holder and need
        # breaking by hand; a filesystem without flock fails loudly instead.
        self.flock = FileLock(path, thread_local=False, fallback_to_soft=False)
        self.depth = 0
        self.owner: int | None = None
        self.scratch: dict[str, object] = {}


_shared: dict[str, _Shared] = {}
_registry_guard = threading.Lock()


class WriterLock:
    def __init__(self, path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT):
        self.path = Path(path)
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        with _registry_guard:
            self._shared = _shared.setdefault(key, _Shared(Path(key)))

    @property
    def depth(self) -> int:
        """How deeply the calling thread holds this lock (0: not at all). Lets a writer tell its
        outermost hold, where state checks belong, from nested ones."""
        s = self._shared
        return s.depth if s.owner == threading.get_ident() else 0

    @property
    def scratch(self) -> dict[str, object]:
        """Per-lock notes of the holding thread (e.g. the write operation in progress), shared by
        every ``WriterLock`` of this file in the process so nested writes through two objects agree."""
        return self._shared.scratch

    @contextlib.contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock; wait at most ``timeout`` seconds (default: the lock's), 0 = one try.
        Raises IMRSError naming who is in the way: a thread of this process or another process."""
        wait = self.timeout if timeout is None else max(0.0, float(timeout))
        start = time.monotonic()
        s = self._shared
        got = s.rlock.acquire(timeout=wait) if wait > 0 else s.rlock.acquire(blocking=False)
        if not got:
            raise IMRSError(f"another task is still writing to this collection ({self.path.parent})")
        try:
            if s.depth == 0:
                try:
                    s.flock.acquire(timeout=max(0.0, wait - (time.monotonic() - start)), poll_interval=0.05)
                except Timeout:
                    raise IMRSError(f"another process is writing to {self.path.parent}") from None
                s.owner = threading.get_ident()
            s.depth += 1
            try:
                yield
            finally:
                s.depth -= 1
                if s.depth == 0:
                    s.owner = None
                    s.flock.release()
        finally:
            s.rlock.release()
