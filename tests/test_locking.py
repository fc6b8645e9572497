"""The writer lock: threads of one process and separate processes exclude each other, a thread may
nest holds (also through two lock objects of one file), and a killed holder frees the lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imrs.errors import IMRSError
from imrs.locking import WriterLock
from tests.conftest import REPO

_HOLDER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from imrs.locking import WriterLock
with WriterLock(sys.argv[2], timeout=float(sys.argv[3])).hold():
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
print("released", flush=True)
"""


def _holder(path: Path, hold_s: float, timeout: float = 10.0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _HOLDER, str(REPO), str(path), str(timeout), str(hold_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_held(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read() if proc.stderr else line


def test_two_threads_exclude_each_other_and_nest(tmp_path: Path) -> None:
    path = tmp_path / "write.lock"
    a, b = WriterLock(path), WriterLock(path, timeout=0.2)
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with a.hold():
            order.append("a in")
            with WriterLock(path).hold():  # nested through a second object of the same file
                assert a.depth == 2
            inside.set()
            release.wait(10)
            order.append("a out")

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)
    assert a.depth == 0  # this thread holds nothing
    with pytest.raises(IMRSError, match="another task is still writing to this collection"):
        with b.hold():
            pass

    def second() -> None:
        with WriterLock(path).hold():  # waits (default timeout) until the first thread is done
            order.append("b in")

    t2 = threading.Thread(target=second)
    t2.start()
    time.sleep(0.2)
    assert order == ["a in"]
    release.set()
    t.join(10)
    t2.join(10)
    assert order == ["a in", "a out", "b in"]
    with b.hold(timeout=0):
        assert b.depth == 1


def test_two_processes_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "write.lock"
    proc = _holder(path, hold_s=1.5)
    try:
        _wait_held(proc)
        start = time.monotonic()
        with pytest.raises(IMRSError, match=f"another process is writing to {tmp_path}"):
            with WriterLock(path, timeout=0.3).hold():
                pass
        assert time.monotonic() - start < 1.2  # gave up after its timeout, not after the holder
        with WriterLock(path, timeout=20).hold():  # waits for the holder to finish
            assert proc.poll() is not None or proc.wait(5) == 0
    finally:
        proc.kill()
        proc.wait()

    # The other direction: a process waits while this one holds.
    with WriterLock(path).hold():
        waiter = _holder(path, hold_s=0, timeout=20)
        time.sleep(0.5)
        assert waiter.poll() is None  # still waiting
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 0 and out.split() == ["held", "released"], err


def test_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "write.lock"
    proc = _holder(path, hold_s=60)
    try:
        _wait_held(proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        lock = WriterLock(path, timeout=5)
        assert not lock.busy()  # the kernel dropped the dead holder's lock
        with lock.hold():  # no stale lock to break by hand (a held one would time out and raise)
            assert lock.busy() is False  # the holder never sees itself as "someone else"
    finally:
        proc.kill()
        proc.wait()


def test_busy_probe_sees_other_holders_never_itself_or_other_probes(tmp_path: Path) -> None:
    """``busy()`` (the app's "someone else is writing" notice) is True while another thread or
    process holds the lock, False for the holder itself, and two probes at once never see each other."""
    lock = WriterLock(tmp_path / "write.lock")
    assert not lock.busy()  # no lock file yet
    seen: list[bool] = []
    with lock.hold():
        assert not lock.busy()
        t = threading.Thread(target=lambda: seen.append(lock.busy()))
        t.start()
        t.join()
    assert seen == [True] and not lock.busy()
    results: list[bool] = []
    probes = [threading.Thread(target=lambda: results.extend(lock.busy() for _ in range(200))) for _ in range(4)]
    for p in probes:
        p.start()
    for p in probes:
        p.join()
    assert results and not any(results)
    proc = _holder(tmp_path / "write.lock", hold_s=2.0)
    try:
        _wait_held(proc)
        assert lock.busy()
    finally:
        proc.wait(10)
    assert not lock.busy()
