"""Writer jobs: growth, indexing, pruning and snapshots run one at a time, in the background.

Jobs live in a small SQLite file in the collection's state folder, so every worker process of one
server sees the same queue: a request in any worker enqueues, each worker's runner thread tries to
claim the oldest queued job while none runs (one ``BEGIN IMMEDIATE`` transaction decides), and
progress, result, error and the cancel flag are rows the others read. The collection's writer lock
still guards every write; the queue only makes the waiting visible and orderly.

Cancelling a queued job drops it; a running one stops at its next progress report (before its
commit: the library reports no progress while committing), and what it had staged is cleaned
up by the library like any failed write."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import IMRSError
from ..progress import Progress

log = logging.getLogger(__name__)

JOBS_FILE = "api_jobs.sqlite"
#: Finished jobs kept for the job list.
KEEP_FINISHED = 200
FINISHED = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL,
  created REAL NOT NULL, started REAL, finished REAL, owner INTEGER,
  stage TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0,
  result TEXT, error TEXT, cancel INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL DEFAULT 0, key TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created);
"""


class Cancelled(Exception):
    """Raised inside a running job when its cancel flag is seen."""


class JobStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        con = self._con()
        con.executescript(_SCHEMA)

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.row_factory = sqlite3.Row
            self._local.con = con
        return con

    # -- requests --------------------------------------------------------------------------------
    def submit(self, kind: str, params: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        job_id = f"{int(time.time() * 1000):x}-{secrets.token_hex(4)}"
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("INSERT INTO jobs(id, kind, params, status, created, key) VALUES (?, ?, ?, 'queued', ?, ?)",
                        (job_id, kind, json.dumps(params), time.time(), key))
            con.execute(f"DELETE FROM jobs WHERE status IN {FINISHED} AND id NOT IN (SELECT id FROM jobs WHERE "
                        f"status IN {FINISHED} ORDER BY finished DESC LIMIT {KEEP_FINISHED})")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        got = self.get(job_id)
        assert got is not None
        return got

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self._con().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._public(row)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """Running and queued jobs first (queue order), then the latest finished ones."""
        rows = self._con().execute(
            "SELECT * FROM jobs ORDER BY CASE status WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, "
            "CASE WHEN status IN ('running', 'queued') THEN created ELSE -finished END LIMIT ?", (limit,)).fetchall()
        return [self._public(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._con().execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {r["status"]: int(r["n"]) for r in rows}

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        con = self._con()
        con.execute("UPDATE jobs SET status = 'cancelled', finished = ?, error = 'cancelled before it started', "
                    "seq = seq + 1 WHERE id = ? AND status = 'queued'", (time.time(), job_id))
        con.execute("UPDATE jobs SET cancel = 1, seq = seq + 1 WHERE id = ? AND status = 'running'", (job_id,))
        return self.get(job_id)

    def _public(self, row: sqlite3.Row) -> dict[str, Any]:
        queued_ahead = None
        if row["status"] == "queued":
            queued_ahead = int(self._con().execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'running' OR (status = 'queued' AND created < ?)",
                (row["created"],)).fetchone()[0])
        return {"id": row["id"], "kind": row["kind"], "status": row["status"], "params": json.loads(row["params"]),
                "created": row["created"], "started": row["started"], "finished": row["finished"],
                "progress": {"stage": row["stage"], "done": row["done"], "total": row["total"]},
                "ahead": queued_ahead, "cancel_requested": bool(row["cancel"]),
                "result": json.loads(row["result"]) if row["result"] else None, "error": row["error"],
                "seq": row["seq"]}

    # -- the runner's side ----------------------------------------------------------------------------
    def claim(self) -> dict[str, Any] | None:
        """The oldest queued job, now running in this process, when no job runs anywhere."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            running = con.execute("SELECT id, owner FROM jobs WHERE status = 'running'").fetchall()
            for r in running:  # a worker that died mid-job leaves it 'running': it ended with that worker
                if r["owner"] is not None and not _alive(int(r["owner"])):
                    con.execute("UPDATE jobs SET status = 'failed', finished = ?, seq = seq + 1, error = "
                                "'the server process running it stopped' WHERE id = ?", (time.time(), r["id"]))
                else:
                    con.execute("COMMIT")
                    return None
            row = con.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                con.execute("COMMIT")
                return None
            con.execute("UPDATE jobs SET status = 'running', started = ?, owner = ?, seq = seq + 1 WHERE id = ?",
                        (time.time(), os.getpid(), row["id"]))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return self.get(row["id"])

    def progress(self, job_id: str, stage: str, done: int, total: int) -> bool:
        """Record progress; returns whether a cancel was asked for."""
        con = self._con()
        con.execute("UPDATE jobs SET stage = ?, done = ?, total = ?, seq = seq + 1 WHERE id = ?",
                    (stage[:40], int(done), int(total), job_id))
        row = con.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel"])

    def finish(self, job_id: str, status: str, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        self._con().execute("UPDATE jobs SET status = ?, finished = ?, result = ?, error = ?, seq = seq + 1 "
                            "WHERE id = ?", (status, time.time(), json.dumps(result) if result is not None else None,
                                             error, job_id))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


JobFn = Callable[[dict[str, Any], Progress], dict[str, Any]]


class Runner:
    """One thread per server process that runs claimed jobs with the kinds' functions."""

    def __init__(self, store: JobStore, kinds: dict[str, JobFn], poll: float = 0.2,
                 on_finish: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.kinds = kinds
        self.poll = poll
        self.on_finish = on_finish
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="imrs-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim()
            except sqlite3.Error as exc:
                log.warning("job queue: %s", exc)
                job = None
            if job is None:
                self._wake.wait(self.poll)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        last = [0.0, ""]

        def progress(stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            if stage != last[1] or now - last[0] >= 0.2 or (total and done >= total):
                last[0], last[1] = now, stage
                if self.store.progress(job_id, stage, done, total):
                    raise Cancelled()

        log.info("job %s (%s) started", job_id, job["kind"])
        try:
            result = self.kinds[job["kind"]](job["params"], progress)
        except Cancelled:
            status, result, error = "cancelled", None, "cancelled while running; nothing of it was kept"
        except IMRSError as exc:
            status, result, error = "failed", None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a job's bug must not end the runner
            log.exception("job %s failed", job_id)
            status, result, error = "failed", None, f"internal error: {type(exc).__name__}"
        else:
            status, error = "done", None
        self.store.finish(job_id, status, result, error)
        log.info("job %s (%s) %s", job_id, job["kind"], status)
        if self.on_finish is not None:
            self.on_finish(job["kind"], status)
