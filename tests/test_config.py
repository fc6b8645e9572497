"""``Settings``: every default and environment variable in one place, validated once."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from imrs.config import Settings
from imrs.errors import IMRSError
from tests.conftest import REPO


def test_defaults_and_environment() -> None:
    s = Settings.from_env({})
    assert (s.expand_n, s.expand_max_side, s.expand_phash_distance, s.provider) == (20, 512, 4, "auto")
    assert s.home == Path("runs") and not s.allow_loopback and s.coverage_overrides() == {}
    env = {"IMRS_HOME": "/tmp/x", "IMRS_EXPAND_N": "7", "IMRS_EXPAND_ALLOW_LOOPBACK": "yes",
           "IMRS_EXPAND_PROVIDER": "Wikimedia", "IMRS_COVERAGE_MIN_GOOD": "2", "IMRS_CHECKPOINT_RESNET50": "/w.pth",
           "IMRS_CHECKPOINT_DIR": "/ckpt", "IMRS_QE": "5"}
    s = Settings.from_env(env)
    assert s.home == Path("/tmp/x") and s.expand_n == 7 and s.allow_loopback and s.provider == "wikimedia"
    assert s.coverage_overrides() == {"min_good": 2} and s.qe == 5
    assert s.checkpoint_for("resnet50") == "/w.pth" and s.checkpoint_dir == "/ckpt"
    assert s.checkpoint_for("dir") is None  # IMRS_CHECKPOINT_DIR is not a backbone


def test_model_file_places_and_offline() -> None:
    """Where model files live and whether the network is tried: every variable the loaders once
    read themselves, now fields of one Settings."""
    s = Settings.from_env({"XDG_CACHE_HOME": "/x", "HF_HUB_OFFLINE": "1", "IMRS_SKIP_RUNTIME_CHECK": "yes"})
    assert s.model_cache_dir() == Path("/x/imrs") and s.torch_hub_dir() == Path("/x/torch/hub/checkpoints")
    assert s.offline and s.skip_runtime_check
    s = Settings.from_env({"XDG_CACHE_HOME": "/x", "IMRS_CACHE_DIR": "/c", "TORCH_HOME": "/t",
                           "IMRS_CHECKPOINT_CLIP_VIT_B32": "/w.safetensors"})
    assert s.model_cache_dir() == Path("/c") and s.torch_hub_dir() == Path("/t/hub/checkpoints") and not s.offline
    assert s.checkpoint_for("clip_vit_b32") == "/w.safetensors"
    assert Settings.from_env({}).model_cache_dir() == Path("~/.cache/imrs").expanduser()


def test_defaults_are_read_when_asked_and_imports_survive_bad_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    import imrs.config as config

    monkeypatch.setenv("IMRS_BACKBONE", "resnet18")
    monkeypatch.setenv("IMRS_EXPAND_N", "many")  # bad, but not this module's business at import time
    assert config.DEFAULT_BACKBONE == "resnet18" and config.DEFAULT_INDEXER == Settings.indexer
    monkeypatch.setenv("IMRS_FAULT", "commit.after_record")
    assert config.fault_point_name() == "commit.after_record"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    config.prepare_library_env()  # what the user set is kept
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"


def test_overrides_ignore_none_and_reject_unknown() -> None:
    s = Settings.from_env({"IMRS_EXPAND_N": "7"}, expand_n=None, expand_workers=2)
    assert s.expand_n == 7 and s.expand_workers == 2
    assert s.replace(home="~/h").home == Path("~/h").expanduser()
    with pytest.raises(TypeError, match="nonsense"):
        s.replace(nonsense=1)


@pytest.mark.parametrize("env,name", [
    ({"IMRS_EXPAND_N": "many"}, "IMRS_EXPAND_N"),
    ({"IMRS_EXPAND_N": "0"}, "IMRS_EXPAND_N"),
    ({"IMRS_EXPAND_ALLOW_LOOPBACK": "perhaps"}, "IMRS_EXPAND_ALLOW_LOOPBACK"),
    ({"IMRS_EXPAND_PROVIDER": "bing"}, "IMRS_EXPAND_PROVIDER"),
    ({"IMRS_COVERAGE_BEST_MIN": "high"}, "IMRS_COVERAGE_BEST_MIN"),
    ({"IMRS_OFFLINE": "maybe"}, "IMRS_OFFLINE"),
    ({"IMRS_SKIP_RUNTIME_CHECK": "2"}, "IMRS_SKIP_RUNTIME_CHECK"),
    ({"IMRS_DDG_CLIENT": "bing"}, "IMRS_DDG_CLIENT"),
])
def test_bad_values_are_one_line_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(IMRSError) as err:
        Settings.from_env(env)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_no_environment_reads_outside_config() -> None:
    """The CLI, the app and the library read settings, never ``os.environ`` (IMRS_* or otherwise):
    ``imrs/config.py`` is the one module that reads or writes the environment, with no exemption."""
    offenders = []
    for path in sorted((REPO / "imrs").rglob("*.py")) + [REPO / "app_streamlit.py"]:
        rel = path.relative_to(REPO).as_posix()
        if rel == "imrs/config.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv", "putenv",
                                                                  "unsetenv"):
                offenders.append(f"{rel}:{node.lineno}")
            elif isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                    a.name in ("environ", "environb", "getenv", "putenv", "unsetenv") for a in node.names):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


def test_benchmark_data_place_and_seeded_sample(tmp_path: Path) -> None:
    """The benchmarks' data: ``$IMRS_SHARED`` when set, else ``shared/`` beside the repository; a
    ``--limit`` sample is the same images, in the same order, every time it is drawn."""
    from imrs.bench.data import labelled_images
    from imrs.config import caltech_dir, shared_data_dir

    assert shared_data_dir({"IMRS_SHARED": str(tmp_path)}) == tmp_path
    assert shared_data_dir({}) == REPO.parent / "shared"
    assert caltech_dir({"IMRS_SHARED": str(tmp_path)}) == tmp_path / "datasets" / "caltech101"
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for n in range(6):
            (tmp_path / label / f"{n}.jpg").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    every = labelled_images(tmp_path)
    assert len(every) == 12 and every == sorted(every) and all(p.suffix == ".jpg" for p in every)
    five = labelled_images(tmp_path, 5, seed=3)
    assert len(five) == 5 and five == sorted(five) and set(five) <= set(every)
    assert labelled_images(tmp_path, 5, seed=3) == five
    assert labelled_images(tmp_path, 50) == every  # a limit above the count takes them all
