"""Shared fixtures. Real data lives in ../shared (read in place, never copied into the repo);
tests that need it skip with a reason when it is absent -- and fail in CI mode (``CI=true``, see
``tests/ci_skips.py``), where every test must run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imrs.config import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_data_dir()  # $IMRS_SHARED, else shared/ beside the repository
CALTECH = SHARED / "datasets" / "caltech101"
PHOTOS = SHARED / "photos"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.ci_skips"] + [f"tests.{m}" for m in ("conftest_web", "conftest_engines", "browser_kit")
                                        if (REPO / "tests" / f"{m}.py").exists()]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder beside the repo)")
    return path


@pytest.fixture(scope="session")
def caltech() -> Path:
    return need(CALTECH)


@pytest.fixture(scope="session")
def photos() -> Path:
    return need(PHOTOS)


def caltech_subset(classes: list[str], per_class: int) -> list[Path]:
    need(CALTECH)
    out: list[Path] = []
    for c in classes:
        files = sorted((CALTECH / c).glob("*.jpg"))[:per_class]
        if not files:
            pytest.skip(f"class {c} missing from {CALTECH}")
        out += files
    return out


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated IMRS state folder per test."""
    h = tmp_path / "imrs-home"
    monkeypatch.setenv("IMRS_HOME", str(h))
    return h


@pytest.fixture
def small_collection(tmp_path: Path) -> Path:
    """A writable collection: symlinks to 4 Caltech-101 classes x 6 images (so dynamic folders can be
    created beside them without touching the read-only shared data)."""
    root = tmp_path / "collection"
    for src in caltech_subset(["sunflower", "airplanes", "Leopards", "watch"], 6):
        dst = root / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
    return root
