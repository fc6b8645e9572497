"""In CI mode (``CI`` set to true/1/yes) a test that cannot run is a failure, not a skip.

Locally a missing Chromium, Playwright, ``../shared`` data or backbone skips with its reason; a CI
host that lacks one of them is broken, and a skip there would hide it. Only skips the suite marks
as platform branches (:func:`platform_skip`: a case that cannot exist on this operating system)
stay skips. Loaded by ``tests/conftest.py``; separate so a test can run pytest with it alone.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

PLATFORM_BRANCH = "platform branch:"


def ci_mode() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def platform_skip(reason: str) -> None:
    """Skip, in CI too: what this test checks cannot exist on this platform."""
    pytest.skip(f"{PLATFORM_BRANCH} {reason}")


def _reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip(report: Any) -> None:
    if not ci_mode() or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report.longrepr)
    if reason.startswith(PLATFORM_BRANCH):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped in CI mode (CI={os.environ.get('CI')}), which counts as a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield  # a module-level skip (importorskip, allow_module_level) is a skipped collection
    _fail_skip(outcome.get_result())
