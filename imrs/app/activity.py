"""Who is doing what to a collection right now, across the sessions of one server process.

``Activity`` is the notice board that lets a session say "another session is expanding this
collection" and refresh its counts when that ends; a writer lock held by another process (the CLI)
is reported the same way (``writer_busy``).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    from ..collection import Collection


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


@st.cache_resource(show_spinner=False)
def _board(state_dir: str) -> Activity:
    """One board per collection folder, made once per process (Streamlit's resource cache locks
    the making, so two sessions opening the collection at once still share one board)."""
    return Activity()


def activity_for(coll: Collection) -> Activity:
    return _board(str(coll.state_dir))


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
