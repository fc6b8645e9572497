"""Fixtures for anything that talks HTTP: a loopback web server and a policy that may reach it.

Loaded for every test through ``pytest_plugins`` in tests/conftest.py; nothing to import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from imrs.web.download import DownloadPolicy
from tests.webserver import PHOTOS_DIR, LoopbackServer


def _need_photos() -> None:
    if not PHOTOS_DIR.is_dir() or not any(PHOTOS_DIR.glob("*.jpg")):
        pytest.skip(f"{PHOTOS_DIR} is absent (the shared photos the loopback server serves)")


@contextlib.contextmanager
def _serving(latency: float, max_lifetime: float) -> Iterator[LoopbackServer]:
    _need_photos()
    server = LoopbackServer(PHOTOS_DIR, latency=latency, max_lifetime=max_lifetime).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def web_server() -> Iterator[LoopbackServer]:
    """Module-wide loopback server, no added latency; call ``reset_stats()`` before counting."""
    with _serving(latency=0.0, max_lifetime=600.0) as server:
        yield server


@pytest.fixture
def slow_web_server() -> Iterator[LoopbackServer]:
    """A fresh server that waits 100 ms before every response (for concurrency tests)."""
    with _serving(latency=0.1, max_lifetime=120.0) as server:
        yield server


@pytest.fixture
def loopback_policy() -> DownloadPolicy:
    """Default limits, but loopback allowed and short timeouts so failing tests fail fast."""
    return DownloadPolicy(allow_loopback=True, connect_timeout=2.0, read_timeout=2.0, total_timeout=5.0)
