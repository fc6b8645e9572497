"""Who may change the collection, and which folders the page may index.

Visitors search. Everything that writes to the collection or makes the server do heavy work on
it (growing from the web, batch expansion, removing web images, snapshots, calibration, choosing
the folder, backbone or index, re-indexing, benchmarks) is for editors. Editors are configured on
the server, never by a link or a visitor:

- ``oidc``: Streamlit's own login (``st.login``) when ``[auth]`` is configured in the server's
  secrets; with ``IMRS_EDITOR_EMAILS`` only those addresses edit, else anyone the provider admits;
- ``token``: a shared secret (``IMRS_EDITOR_TOKEN``, or ``IMRS_EDITOR_TOKEN_FILE``), typed once per
  browser session in the sidebar;
- ``local``: neither configured. The page is single-user: only a connection from this computer
  (the server on loopback, or a browser on it) may change anything, and the page says so.

The folders come from ``IMRS_ALLOWED_ROOTS`` (plus the configured collection and the demo); a
folder outside them gets one line that names no server path.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from ..errors import IMRSError
from .pipeline import Settings

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Token attempts per browser session before sign-in is refused; each failure also waits.
MAX_ATTEMPTS = 5
FAIL_DELAY_S = 1.0


class FolderRefused(IMRSError):
    """A collection folder outside the server's allowed roots (or not a folder at all)."""


@dataclass(frozen=True)
class Role:
    editor: bool
    mode: str  # "local" | "token" | "oidc"
    note: str  # one line: why this session may or may not change the collection


def decide(settings: Settings, *, oidc: bool, logged_in: bool = False, email: str | None = None,
           token_ok: bool = False, bound_loopback: bool = False, connection_local: bool = False) -> Role:
    """The role of one session, from facts the caller gathered (a pure function, so every branch
    is testable without a provider)."""
    if oidc:
        allowed = not settings.editor_emails or (email or "").strip().lower() in settings.editor_emails
        if logged_in and allowed:
            return Role(True, "oidc", "signed in as an editor")
        if logged_in:
            return Role(False, "oidc", "signed in, but not as one of this server's editors: you can search")
        return Role(False, "oidc", "you can search; editors log in to change the collection")
    if settings.editor_token:
        if token_ok:
            return Role(True, "token", "signed in as an editor")
        return Role(False, "token", "you can search; editors sign in with the server's token to change the collection")
    if bound_loopback or connection_local:
        return Role(True, "local", "single-user mode: no editors are configured, so only this computer can change "
                                   "the collection")
    return Role(False, "local", "no editors are configured on this server: you can search, and the collection can "
                                "only be changed from the server's own computer")


def oidc_configured() -> bool:
    """``[auth]`` with a redirect URI and cookie secret in the server's secrets (what st.login needs)."""
    try:
        if not st.secrets.load_if_toml_exists():
            return False
        auth = st.secrets.get("auth")
        if not (bool(auth) and "redirect_uri" in auth and "cookie_secret" in auth):
            return False
        import importlib.util

        if importlib.util.find_spec("authlib") is None:  # st.login needs it; without it, no login at all
            log.warning("[auth] is configured but Authlib is not installed (pip install Authlib): no st.login")
            return False
        return True
    except Exception as exc:  # noqa: BLE001 - unreadable secrets: no login, never a crash
        log.warning("secrets not readable, st.login is off: %s", exc)
        return False


def _bound_loopback() -> bool:
    return str(st.get_option("server.address") or "").strip() in LOOPBACK_HOSTS


def _connection_local() -> bool:
    """Streamlit reports no address for a loopback connection; a real remote one is a string (the
    headless test runner, in this process, has a stand-in that is neither)."""
    try:
        return not isinstance(st.context.ip_address, str)
    except Exception:  # noqa: BLE001 - no client context: the headless test runner, on this computer
        return True


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def current_role(settings: Settings) -> Role:
    ss = st.session_state
    if oidc_configured():
        user: Any = st.user
        logged_in = bool(getattr(user, "is_logged_in", False))
        return decide(settings, oidc=True, logged_in=logged_in, email=user.get("email") if logged_in else None)
    token_ok = bool(settings.editor_token) and ss.get("_editor_token") == _token_digest(settings.editor_token)
    return decide(settings, oidc=False, token_ok=token_ok, bound_loopback=_bound_loopback(),
                  connection_local=_connection_local())


def check_token(settings: Settings, given: str) -> bool:
    """Constant-time comparison; a wrong token waits a second and counts against this session."""
    ss = st.session_state
    if not settings.editor_token or ss.get("_token_fails", 0) >= MAX_ATTEMPTS:
        return False
    if hmac.compare_digest(given.strip().encode("utf-8"), settings.editor_token.encode("utf-8")):
        ss["_editor_token"] = _token_digest(settings.editor_token)
        return True
    ss["_token_fails"] = ss.get("_token_fails", 0) + 1
    time.sleep(FAIL_DELAY_S)
    return False


def editor_panel(settings: Settings, role: Role) -> None:
    """The sidebar's first lines: what this session may do, and how an editor signs in or out."""
    sb = st.sidebar
    if role.mode == "oidc":
        user: Any = st.user
        if getattr(user, "is_logged_in", False):
            sb.caption(role.note)
            sb.button("Log out", key="oidc_logout", on_click=st.logout)
        else:
            sb.caption(role.note)
            sb.button("Log in", key="oidc_login", on_click=st.login)
        return
    if role.mode == "token":
        if role.editor:
            sb.caption(role.note)
            if sb.button("Sign out", key="editor_sign_out"):
                st.session_state.pop("_editor_token", None)
                st.rerun()
            return
        sb.caption(role.note)
        with sb.form("editor_sign_in", border=False):
            given = st.text_input("Editor token", type="password", key="editor_token_input")
            if st.form_submit_button("Sign in as editor"):
                if st.session_state.get("_token_fails", 0) >= MAX_ATTEMPTS:
                    st.error("too many wrong tokens in this session: open a new one to try again")
                elif check_token(settings, given or ""):
                    st.session_state.pop("editor_token_input", None)
                    st.rerun()
                else:
                    st.error("that is not the editor token")
        return
    sb.caption(role.note)


def refused(role: Role, what: str) -> bool:
    """True (and one line on the page) when this session may not do ``what``."""
    if role.editor:
        return False
    st.info(f"{what} is for editors: {role.note}.", icon=":material/lock:")
    return True


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def allowed_roots(settings: Settings, default_root: str) -> list[Path]:
    """The folders under which a collection may be opened: the server's IMRS_ALLOWED_ROOTS, the
    configured collection and the built-in demo."""
    out: list[Path] = []
    for r in (*settings.allowed_roots, settings.root or "", default_root):
        if r:
            p = Path(r).expanduser().resolve()
            if p not in out:
                out.append(p)
    return out


def resolve_folder(asked: str, settings: Settings, default_root: str) -> str:
    """The folder an editor typed, as an absolute path inside an allowed root; relative names are
    looked up under each allowed root in turn. Refusals name no server path."""
    roots = allowed_roots(settings, default_root)
    asked = (asked or "").strip()
    if not asked:
        return default_root
    if "\0" in asked:
        raise FolderRefused("that folder name is not valid")
    given = Path(asked).expanduser()
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    inside = False
    for cand in candidates:
        try:
            real = cand.resolve()
        except (OSError, RuntimeError):
            continue
        if any(real == root or root in real.parents for root in roots):
            inside = True
            if real.is_dir():
                return str(real)
    if inside:
        raise FolderRefused("that folder does not exist in the folders this server allows")
    raise FolderRefused("that folder is not one this server allows (the server's IMRS_ALLOWED_ROOTS decide)")


def display_root(root: str | Path, roots: list[Path]) -> str:
    """A collection folder as people see it: relative to the allowed root it lies in."""
    p = Path(root)
    for r in roots:
        if p == r:
            return p.name
        if r in p.parents:
            return f"{r.name}/{p.relative_to(r).as_posix()}"
    return p.name
