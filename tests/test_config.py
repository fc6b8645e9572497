"""``Settings``: every default and environment variable in one place, validated once."""

from __future__ import annotations

import ast
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
])
def test_bad_values_are_one_line_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(IMRSError) as err:
        Settings.from_env(env)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_no_environment_reads_outside_config() -> None:
    """The CLI, the app and the library read settings, never ``os.environ`` (IMRS_* or otherwise),
    except where a third-party library is steered (offline switches while a model loads)."""
    allowed = {"imrs/config.py", "imrs/textmap.py", "imrs/cli/__init__.py"}
    offenders = []
    for path in sorted((REPO / "imrs").rglob("*.py")) + [REPO / "app_streamlit.py"]:
        rel = path.relative_to(REPO).as_posix()
        if rel in allowed or rel.startswith("imrs/encoders/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders
