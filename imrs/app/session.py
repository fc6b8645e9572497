"""One browser session's own state: its settings, its query, its results, and the part of them that
lives in the URL.

Settings are widget values in ``st.session_state`` (so two people on one server never move each
other's top-k, indexer or providers), seeded once per session from ``Settings.from_env()`` and turned
back into a ``Settings`` for every pipeline call (``session_settings``). The query, the query mode
and the tab are in the URL: ``?q=...`` for text, ``?img=c:<id>`` (a collection image) or
``?img=u:<digest>`` (an upload kept on this server) plus ``&crop=l,t,r,b`` for images; ``mode`` and
``tab`` (and top-k and query expansion) are bound widgets. A reload, or the link sent to someone
else, shows the same search with the same settings.

A link says what to look at, never what to do: growth, auto-confirm and every other write are
session settings no URL can switch on, and a restored search never grows the collection.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from . import media
from .pipeline import Settings

MODES = ("Text", "Image")
#: URL parameters that once switched writes on; a link that still carries them has them dropped.
ACTION_PARAMS = ("auto_expand", "auto_confirm")
#: ``c:<id>``: a catalog id is any signed 64-bit integer (``imrs.ids.stable_id``).
_COLLECTION_REF = re.compile(r"^c:(-?[0-9]{1,19})$")
_ID_MIN, _ID_MAX = -(2**63), 2**63 - 1
BAD_REF = "the link's image reference is not one this app wrote"
IMAGE_SOURCES = ("Upload", "URL", "Webcam", "Example", "Result")


def base_settings() -> Settings:
    """The environment's settings (every default lives in Settings); read per page run, which is
    a few dictionary look-ups, so a changed environment is never served stale."""
    return Settings.from_env()


def init_session(base: Settings, default_backbone: Callable[[], str], default_root: str) -> None:
    """Seed this session's widget state once: from the settings, then from the URL."""
    ss = st.session_state
    if ss.get("_seeded"):
        return
    ss["_seeded"] = True
    ss.setdefault("root", default_root)
    if "backbone" not in ss:
        ss["backbone"] = default_backbone()
    ss.setdefault("indexer", base.indexer)
    ss.setdefault("top_k", 12)
    ss.setdefault("qe", int(base.qe))
    # "hide_query" gets its default from its widget: a seeded boolean would make Streamlit ignore
    # the link's value for it
    ss.setdefault("auto_expand", False)
    ss.setdefault("auto_confirm", bool(base.auto_confirm_term))
    ss.setdefault("expand_n", int(base.expand_n))
    ss.setdefault("provider", base.provider)
    ss.setdefault("wikimedia_api", base.wikimedia_api or "")
    ss.setdefault("allow_loopback", bool(base.allow_loopback))
    ss.setdefault("img_src", "Upload")
    restore_from_url()


def session_settings(base: Settings, editor: bool = True) -> Settings:
    """This session's settings for a pipeline call. A visitor's never weaken the download guard
    or point the server at another image source: those are the server's (or an editor's)."""
    ss = st.session_state
    if not editor:
        return base.replace(qe=int(ss.get("qe", base.qe)), auto_confirm_term=False)
    if ss.get("cov_override"):
        base = base.replace(coverage_best_min=ss.get("cov_best"), coverage_good_min=ss.get("cov_good"),
                            coverage_min_good=ss.get("cov_n_good"))
    return base.replace(qe=int(ss.get("qe", base.qe)), auto_confirm_term=bool(ss.get("auto_confirm")),
                        expand_n=int(ss.get("expand_n", base.expand_n)), provider=str(ss.get("provider")),
                        wikimedia_api=(str(ss.get("wikimedia_api") or "").strip() or None),
                        allow_loopback=bool(ss.get("allow_loopback")))


# -- the query and the URL ----------------------------------------------------------------------------


@dataclass
class Pending:
    """A search to run in this script run."""

    kind: str  # "text" | "image"
    expand: bool = False
    term: str | None = None
    restored: bool = False  # from the URL (reload / shared link): never grows the collection


def request_search(kind: str, *, expand: bool | None = None, term: str | None = None) -> None:
    """Ask for a search in this run (or, from a callback, in the next one)."""
    ss = st.session_state
    wanted = ss.get("auto_expand", False) if expand is None else expand
    ss["_pending"] = Pending(kind, bool(wanted) and bool(ss.get("_editor")), term)


def take_pending() -> Pending | None:
    return st.session_state.pop("_pending", None)


def set_text_url(text: str) -> None:
    qp = st.query_params
    qp["q"] = text
    for k in ("img", "crop"):
        if k in qp:
            del qp[k]


def set_image_url(ref: str | None, box: media.Box) -> None:
    qp = st.query_params
    if "q" in qp:
        del qp["q"]
    if ref:
        qp["img"] = ref
    elif "img" in qp:
        del qp["img"]
    if box != media.FULL_BOX:
        qp["crop"] = media.format_box(box)
    elif "crop" in qp:
        del qp["crop"]


def collection_ref(image_id: int) -> str:
    """``c:<id>`` for a catalog image: what the page writes into ``?img=``."""
    return f"c:{int(image_id)}"


def parse_image_ref(ref: str) -> tuple[str, int | str] | None:
    """``("c", id)`` or ``("u", digest)`` for a reference this app writes, None for anything else
    (out-of-range numbers included: they are not ids, and must never reach SQLite)."""
    ref = (ref or "").strip()
    m = _COLLECTION_REF.fullmatch(ref)
    if m:
        value = int(m.group(1))
        return ("c", value) if _ID_MIN <= value <= _ID_MAX else None
    kind, _, value = ref.partition(":")
    if kind == "u" and re.fullmatch(r"[0-9a-f]{16}", value):
        return ("u", value)
    return None


def restore_from_url() -> None:
    """A fresh session (reload, shared link): the URL's query becomes this session's query, and is
    searched once the collection is open (``Pending.restored``)."""
    qp = st.query_params
    ss = st.session_state
    for k in ACTION_PARAMS:
        if k in qp:
            del qp[k]
    text = (qp.get("q") or "").strip()
    img = (qp.get("img") or "").strip()
    if text:
        ss["q_text"] = text
        ss["mode"] = "Text"
        ss["_pending"] = Pending("text", restored=True)
    elif img:
        ss["mode"] = "Image"
        ss["_url_image"] = (img, media.parse_box(qp.get("crop")))


def set_query_image(data: bytes, origin: str, ref: str) -> None:
    """A new query image; the crop starts again from the whole image."""
    st.session_state["query_image"] = {"bytes": data, "origin": origin, "digest": media.digest_of(data),
                                       "ref": ref}
    st.session_state["crop_box"] = media.FULL_BOX
    st.session_state["crop_gen"] = st.session_state.get("crop_gen", 0) + 1


def resolve_url_image(coll: Any, home: Path) -> str | None:
    """Turn ``?img=`` into the session's query image once the collection is open; a readable line
    when the linked image is gone."""
    ss = st.session_state
    item = ss.pop("_url_image", None)
    if item is None:
        return None
    ref, box = item
    parsed = parse_image_ref(ref)
    if parsed is None:
        return BAD_REF
    kind, value = parsed
    if kind == "c":
        found = media.collection_image(coll, int(value))
        if found is None:
            return "the linked image is no longer in this collection"
        path, rel = found
        set_query_image(media.read_query_file(path), f"collection: {rel}", collection_ref(int(value)))
    else:
        data = media.load_stored(home, str(value))
        if data is None:
            return "the linked query image is no longer kept on this server: upload it again"
        set_query_image(data, "linked image", ref)
    ss["crop_box"] = box
    ss["_pending"] = Pending("image", restored=True)
    return None
