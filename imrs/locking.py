"""One writer at a time per collection, across threads (Streamlit sessions) and processes (CLI + app).

``fcntl.flock`` excludes processes but not threads sharing one process, so a process-wide
re-entrant lock is taken first. Readers take no lock: every write lands by atomic replace or in an
SQLite transaction, so a reader sees either the old or the new state.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import IMRSError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: thread lock only
    fcntl = None  # type: ignore[assignment]

_thread_locks: dict[str, threading.RLock] = {}
_registry_guard = threading.Lock()


class WriterLock:
    def __init__(self, path: str | os.PathLike[str], timeout: float = 600.0):
        self.path = Path(path)
        self.timeout = timeout
        key = str(self.path.resolve())
        with _registry_guard:
            self._tlock = _thread_locks.setdefault(key, threading.RLock())
        self._local = threading.local()

    def busy(self) -> bool:
        """Whether another thread or process holds the lock right now: a probe that never waits
        (the app uses it to say "another session is writing"). The holder's own thread sees False."""
        if not self._tlock.acquire(blocking=False):
            return True
        try:
            if getattr(self._local, "depth", 0) or fcntl is None or not self.path.exists():
                return False
            with open(self.path, "a+") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                return False
        finally:
            self._tlock.release()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if not self._tlock.acquire(timeout=self.timeout):
            raise IMRSError(f"another task is still writing to this collection ({self.path.parent})")
        depth = getattr(self._local, "depth", 0)
        fh = None
        try:
            if depth == 0 and fcntl is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fh = open(self.path, "a+")  # noqa: SIM115 - held for the critical section
                deadline = time.monotonic() + self.timeout
                while True:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise IMRSError(f"another process is writing to {self.path.parent}") from None
                        time.sleep(0.05)
            self._local.depth = depth + 1
            yield
        finally:
            self._local.depth = depth
            if fh is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                fh.close()
            self._tlock.release()
