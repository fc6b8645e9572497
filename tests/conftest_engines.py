"""Session fixtures for real engines started as separate processes on loopback (see tests/engines.py):
``milvus_server`` (the Milvus 2.3.5 standalone), ``milvus_lite_server`` (``milvus-lite server``)
and ``ray_head`` (``ray start --head``, 2 CPUs). Each starts once per session, on first use, and
is stopped by its own process ids at the end.

An engine that cannot be installed or started skips its tests on a workstation and FAILS them in
CI (``CI=true``): there, a test that cannot run is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.engines import Engine, EngineUnavailable, start_milvus_lite_server, start_milvus_server, start_ray_head


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(why: str) -> None:
    if in_ci():
        pytest.fail(f"in CI every engine must run: {why}")
    pytest.skip(why)


def _started(start, grace: float = 20.0) -> Iterator[Engine]:  # noqa: ANN001 - a tests.engines.start_*
    try:
        eng = start()
    except EngineUnavailable as exc:
        unavailable(str(exc).splitlines()[0])
        return
    try:
        yield eng
    finally:
        eng.stop(grace)


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[Engine]:
    """A Milvus 2.3.5 standalone (~30 s to start, ~400 MB); ``.address`` is its http:// URI."""
    pytest.importorskip("pymilvus")
    yield from _started(start_milvus_server)


@pytest.fixture(scope="session")
def milvus_lite_server() -> Iterator[Engine]:
    """``milvus-lite server`` as its own process; ``.address`` is its http:// URI."""
    pytest.importorskip("pymilvus")
    yield from _started(start_milvus_lite_server)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[Engine]:
    """A Ray head with 2 CPUs on 127.0.0.1; ``.address`` is its GCS host:port."""
    pytest.importorskip("ray")
    yield from _started(lambda: start_ray_head(num_cpus=2), grace=5.0)
