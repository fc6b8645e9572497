"""CI mode: a skip is a failure unless it is a platform branch; locally skips stay skips.

Runs pytest itself (a subprocess, with only the CI plugin loaded) on a few tiny test files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CASES = {
    "test_skips.py": '''
import pytest
from tests.ci_skips import platform_skip

@pytest.fixture
def shared():
    pytest.skip("../shared is absent")

def test_needs_data(shared):
    pass

def test_needs_browser():
    pytest.skip("/usr/bin/chromium is absent")

@pytest.mark.skipif(True, reason="no backbone ready")
def test_marked():
    pass

def test_other_os():
    platform_skip("no FIFOs on this OS")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

def test_runs():
    assert True
''',
    "test_module_skip.py": '''
import pytest
pytest.importorskip("no_such_module_anywhere")

def test_never():
    pass
''',
}


def _pytest(folder: Path, ci: str | None, name: str = "test_skips.py") -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(REPO)
    if ci is not None:
        env["CI"] = ci
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "-p", "tests.ci_skips", "-c", os.devnull, "--rootdir", str(folder), str(folder / name)],
                          capture_output=True, text=True, env=env, cwd=folder, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ci-mode")
    for name, text in CASES.items():
        (d / name).write_text(text)
    return d


def test_locally_skips_stay_skips(folder: Path) -> None:
    rc, out = _pytest(folder, None)
    assert rc == 0, out
    assert "1 passed, 4 skipped, 1 xfailed" in out, out
    rc, out = _pytest(folder, None, "test_module_skip.py")
    assert rc in (0, 5) and "1 skipped" in out and "error" not in out, out  # 5: no test ran, none failed


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_skip_is_a_failure(folder: Path, ci: str) -> None:
    rc, out = _pytest(folder, ci)
    assert rc == 1, out
    # the fixture's and the marker's skips happen in setup: they are errors; the test body's is a failure
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 2 errors" in out, out
    for reason in ("../shared is absent", "/usr/bin/chromium is absent", "no backbone ready"):
        assert f"skipped in CI mode (CI={ci}), which counts as a failure: {reason}" in out, (reason, out)
    assert "platform branch: no FIFOs on this OS" in out  # the one skip that stays a skip
    rc, out = _pytest(folder, ci, "test_module_skip.py")  # a module-level skip: a collection error
    assert rc != 0 and "ERROR test_module_skip.py - skipped in CI mode" in out and "no_such_module" in out, out
