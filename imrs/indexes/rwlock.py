"""Many readers or one writer, for an index shared by the threads of a server."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any


class ReadWriteLock:
    """Many readers or one writer. Readers (searches, vector reads) run together: FAISS and Annoy
    searches are safe in parallel, but not beside an add that resizes the structure under them.
    A waiting writer goes before new readers, so a growth never waits behind a stream of searches.
    The writing thread may read (a writer's own checks); nothing upgrades a read to a write."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        if self._writer == threading.get_ident():
            yield
            return
        with self._cond:
            while self._writer is not None or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                self._waiting += 1
                while self._writer is not None or self._readers:
                    self._cond.wait()
                self._waiting -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    self._cond.notify_all()


def reads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A method that runs under its object's ``_rw`` read lock."""
    @functools.wraps(fn)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._rw.read():
            return fn(self, *args, **kwargs)

    return locked


def writes(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A method that runs under its object's ``_rw`` write lock."""
    @functools.wraps(fn)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._rw.write():
            return fn(self, *args, **kwargs)

    return locked
