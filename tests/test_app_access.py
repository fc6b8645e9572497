"""Who may change the collection, which folders the page may open, and the text helpers: the
decisions on their own (fast; the pages that use them are driven in test_app.py and in Chromium)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imrs.app.access import FolderRefused, decide, display_root, resolve_folder
from imrs.app.text import WORD_JOINER, plain, public
from imrs.config import Settings
from imrs.errors import IMRSError


def test_editor_settings_come_from_the_environment_only(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("  a-long-enough-token\n")
    s = Settings.from_env({"IMRS_EDITOR_TOKEN_FILE": str(secret), "IMRS_ALLOWED_ROOTS": f"/srv/a{os.pathsep}~/b",
                           "IMRS_EDITOR_EMAILS": "Ann@Example.org, bob@example.org"})
    assert s.editor_token == "a-long-enough-token"
    assert s.allowed_roots == ("/srv/a", str(Path("~/b").expanduser()))
    assert s.editor_emails == ("ann@example.org", "bob@example.org")
    assert "a-long-enough-token" not in repr(s)  # never in a log line or a traceback
    assert Settings.from_env({"IMRS_EDITOR_TOKEN": "direct-token-wins", "IMRS_EDITOR_TOKEN_FILE": "/nope"}
                             ).editor_token == "direct-token-wins"
    for env, says in (({"IMRS_EDITOR_TOKEN_FILE": str(tmp_path / "missing")}, "cannot be read"),
                      ({"IMRS_EDITOR_TOKEN": "short"}, "shorter than 12"),
                      ({"IMRS_EDITOR_TOKEN_FILE": str(tmp_path)}, "cannot be read")):
        with pytest.raises(IMRSError, match=says) as err:
            Settings.from_env(env)
        assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)


def test_roles() -> None:
    none = Settings()
    assert decide(none, oidc=False, bound_loopback=True).editor
    assert decide(none, oidc=False, connection_local=True).editor
    remote = decide(none, oidc=False)
    assert not remote.editor and "no editors are configured" in remote.note
    token = Settings(editor_token="x" * 16)
    assert not decide(token, oidc=False, bound_loopback=True, connection_local=True).editor  # a token is needed
    assert decide(token, oidc=False, token_ok=True).editor
    assert decide(none, oidc=True, logged_in=True, email="a@b.c").editor
    assert not decide(none, oidc=True, logged_in=False).editor
    listed = Settings(editor_emails=("ann@example.org",))
    assert decide(listed, oidc=True, logged_in=True, email="Ann@Example.org").editor
    assert not decide(listed, oidc=True, logged_in=True, email="eve@example.org").editor


def test_folders_inside_the_allowed_roots_only(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "pets" / "cats").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)  # a link inside pointing out is still outside
    default = tmp_path / "default"
    default.mkdir()
    s = Settings(allowed_roots=(str(allowed),))
    assert resolve_folder("", s, str(default)) == str(default)
    assert resolve_folder("pets", s, str(default)) == str((allowed / "pets").resolve())
    assert resolve_folder(str(allowed / "pets" / "cats"), s, str(default)) == str((allowed / "pets" / "cats").resolve())
    for bad in ("/etc", "/proc/self", str(outside), "escape", "../outside", "pets/../../outside", "/", "~"):
        with pytest.raises(FolderRefused) as err:
            resolve_folder(bad, s, str(default))
        assert "/" not in str(err.value).replace("IMRS_ALLOWED_ROOTS", ""), str(err.value)
    with pytest.raises(FolderRefused, match="does not exist"):
        resolve_folder("pets/dogs", s, str(default))
    assert display_root(allowed / "pets" / "cats", [allowed.resolve()]) == "allowed/pets/cats"


def test_plain_and_public() -> None:
    assert plain("car_side/image_0001.jpg") == "car_side/image_0001.jpg"  # ordinary names stay as they are
    assert plain("[a](http://x.y) ![i](http://x.y/i.png)") == \
        f"\\[a\\](http:{WORD_JOINER}//x.y) !\\[i\\](http:{WORD_JOINER}//x.y/i.png)"
    assert plain(":red[r] $x$ **b** `c` <b>") == f":{WORD_JOINER}red\\[r\\] \\$x\\$ \\*\\*b\\*\\* \\`c\\` \\<b\\>"
    assert plain("1. one") == "1\\. one" and plain("# h") == "\\# h" and plain("- i") == "\\- i"
    assert plain("www.example.org a@b.c") == f"www{WORD_JOINER}.example.org a@{WORD_JOINER}b.c"
    assert plain("two\nlines\n\n![x](y)") == "two lines !\\[x\\](y)"
    assert plain("x" * 50, 10) == "x" * 9 + "…"
    assert public("cannot open /srv/photos/private/cat.jpg: denied") == "cannot open …/cat.jpg: denied"
    assert public("see https://example.org/a/b") == "see https://example.org/a/b"  # URLs are not paths
