"""Where a collection's Milvus vectors live and how to reach them: Lite file or server URI, the
collection name, the location remembered in the state folder, and one-line connection errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import IMRSError
from ..fsutil import atomic_write_json


def is_lite_uri(uri: str) -> bool:
    """A local path (Milvus Lite) rather than ``http(s)://`` / ``tcp://`` / ``unix:`` (a server)."""
    return "://" not in uri and not uri.startswith("unix:")


def default_collection_name(state_dir: Path, backbone: str) -> str:
    """One Milvus collection per (IMRS collection, backbone): the state folder's name already is
    unique per collection root (it carries a hash of the absolute path), so two IMRS collections
    can share one Milvus server without ever touching each other's vectors."""
    raw = f"imrs_{state_dir.name}_{backbone}"
    return "".join(c if c.isalnum() or c == "_" else "_" for c in raw)[:255]


#: Where a collection's Milvus vectors live, remembered in its state folder (see ``remember_location``).
LOCATION_FILE = "milvus.json"


def remembered_location(state_dir: Path, backbone: str) -> dict[str, str] | None:
    """The URI and collection this state folder's vectors were last put in (None: never). A Lite
    file inside the state folder is stored relative to it, so a copied state folder names its own
    copy, never the original's file."""
    from ..fsutil import read_json

    try:
        loc = read_json(state_dir / LOCATION_FILE)[backbone]
        uri, collection = str(loc["uri"]), str(loc["collection"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if is_lite_uri(uri) and not Path(uri).expanduser().is_absolute():
        uri = str(state_dir / uri)
    return {"uri": uri, "collection": collection}


def remember_location(state_dir: Path, backbone: str, uri: str, collection: str) -> None:
    """Record where ``backbone``'s vectors now live (written only when it changed)."""
    from ..fsutil import read_json

    path = state_dir / LOCATION_FILE
    if is_lite_uri(uri):
        try:
            uri = str(Path(uri).expanduser().resolve().relative_to(state_dir.resolve()))
        except ValueError:
            uri = str(Path(uri).expanduser().resolve())
    try:
        data = dict(read_json(path))
    except (OSError, ValueError, TypeError):
        data = {}
    if data.get(backbone) != {"uri": uri, "collection": collection}:
        data[backbone] = {"uri": uri, "collection": collection}
        atomic_write_json(path, data)


def connection_params(state_dir: Path, backbone: str, params: dict[str, Any],
                      settings: Settings | None = None) -> dict[str, Any]:
    """``params`` plus the URI and collection name, for ``make_index("milvus", ...)``: the URI
    from ``--milvus-uri`` (in ``params``), else ``settings.milvus_uri`` (IMRS_MILVUS_URI), else
    where this collection's vectors were last put (``remembered_location``), else a Lite file in
    the state folder. ``settings``: the collection's (None: the environment's, read now)."""
    out = dict(params)
    known = remembered_location(state_dir, backbone) or {}
    uri = out.get("uri") or (settings if settings is not None else Settings.from_env()).milvus_uri
    if uri and is_lite_uri(uri):
        uri = str(Path(uri).expanduser().resolve())
    out["uri"] = uri or known.get("uri") or str(state_dir.resolve() / "milvus.db")
    if "collection" not in out:
        same = known and known.get("uri") == out["uri"]
        out["collection"] = known["collection"] if same else default_collection_name(state_dir, backbone)
    return out


def client(uri: str) -> Any:
    """A ``MilvusClient``; turns every way of failing to connect into one readable IMRSError."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:  # the optional extra is missing
        raise IMRSError("the milvus index needs pymilvus and milvus-lite: pip install 'imrs[scale]'") from exc
    from ..config import milvus_token

    if is_lite_uri(uri):
        Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
        uri = str(Path(uri).expanduser())
    try:
        with quiet_library_logs():
            return MilvusClient(uri=uri, token=milvus_token())
    except Exception as exc:  # noqa: BLE001 - pymilvus raises several families for "cannot connect"
        if is_lite_uri(uri):
            raise IMRSError(f"cannot open the Milvus Lite file {uri} ({reason(exc)}); Milvus Lite allows one "
                            f"process at a time: close the app or the other imrs command, or use a Milvus "
                            f"server (--milvus-uri / IMRS_MILVUS_URI)") from exc
        raise IMRSError(f"cannot connect to Milvus at {uri}: {reason(exc)}") from exc


@contextlib.contextmanager
def quiet_library_logs() -> Iterator[None]:
    """milvus_lite logs a failure to open its file (another process holds it) as a full traceback
    before pymilvus raises; IMRS says it in one line instead. ``--debug`` (imrs at DEBUG) shows it."""
    if logging.getLogger("imrs").isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("milvus_lite", "pymilvus")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def reason(exc: BaseException) -> str:
    return str(getattr(exc, "message", "") or exc).strip().splitlines()[0][:300] if str(exc) else type(exc).__name__
