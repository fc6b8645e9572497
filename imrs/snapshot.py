"""Snapshots: index + catalog + ids + a JSON manifest, saved and swapped atomically.

A snapshot is a directory, and directories cannot be replaced atomically. So each save writes a
fresh version directory ``<name>@<stamp>`` and then atomically replaces a small pointer file
``<name>.json`` that names it; the old version is deleted only after the pointer moved. A crash at
any moment leaves the pointer naming a complete version, so the previous state stays loadable.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import IMRSError, SnapshotError
from .faults import fault_point
from .fsutil import atomic_write_json, read_json

if TYPE_CHECKING:
    from .catalog import Catalog
    from .indexes import VectorIndex

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}")
#: Names the collection keeps for itself: the live index's pointer is ``live-<backbone>-<indexer>``.
RESERVED_PREFIX = "live-"


@dataclass
class Manifest:
    name: str
    backbone: str
    dim: int
    indexer: str
    params: dict[str, Any]
    count: int
    created: str
    format_version: int = FORMAT_VERSION
    collection_root: str = ""
    has_catalog: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def check_name(name: str) -> str:
    """A whole-string match (``$`` would let a trailing newline through into a file name)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise SnapshotError(f"invalid snapshot name {name!r}: use letters, digits, '_', '-', '.' (max 81)")
    return name


def check_user_name(name: str) -> str:
    """A name a person may give a snapshot: valid, and not one the collection keeps for itself."""
    check_name(name)
    if name.lower().startswith(RESERVED_PREFIX):
        raise SnapshotError(f"snapshot names starting with {RESERVED_PREFIX!r} are reserved for the live index")
    return name


def save_snapshot(snap_dir: str | Path, name: str, index: VectorIndex, backbone: str,
                  catalog: Catalog | None = None, collection_root: str = "",
                  extra: dict[str, Any] | None = None) -> Manifest:
    snap_dir = Path(snap_dir)
    check_name(name)
    snap_dir.mkdir(parents=True, exist_ok=True)
    version = f"{name}@{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    vdir = snap_dir / version
    vdir.mkdir()
    try:
        index.save(vdir / "index")
        location = index.location()  # vectors held by a server (Milvus): record where, copy nothing
        if location is None or catalog is not None:  # a live Milvus pointer skips the O(n) id dump
            np.save(vdir / "ids.npy", np.asarray(index.ids(), dtype=np.int64), allow_pickle=False)
        extra = {**(extra or {}), **({"vectors_at": location} if location else {})}
        manifest = Manifest(name=name, backbone=backbone, dim=int(index.dim), indexer=index.kind,
                            params=_jsonable(index.get_params()), count=int(len(index)),
                            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), collection_root=collection_root,
                            has_catalog=catalog is not None, extra=extra)
        if catalog is not None:
            catalog.backup_to(vdir / "catalog.sqlite")
        atomic_write_json(vdir / "manifest.json", asdict(manifest))
    except BaseException:
        shutil.rmtree(vdir, ignore_errors=True)
        raise
    fault_point("snapshot.save.after_files")
    pointer = snap_dir / f"{name}.json"
    old = _pointed_dir(snap_dir, name)
    atomic_write_json(pointer, {"version": version})  # the commit point
    fault_point("snapshot.save.after_pointer")
    if old is not None and old.name != version:
        shutil.rmtree(old, ignore_errors=True)
    _collect_orphans(snap_dir, name, keep=version)
    log.info("saved snapshot %s (%d vectors, %s/%s)", name, manifest.count, backbone, index.kind)
    return manifest


def snapshot_exists(snap_dir: str | Path, name: str) -> bool:
    return _pointed_dir(Path(snap_dir), name) is not None


def read_manifest(snap_dir: str | Path, name: str) -> Manifest:
    vdir = _pointed_dir(Path(snap_dir), name)
    if vdir is None:
        raise SnapshotError(f"no snapshot named {name!r} in {snap_dir}")
    try:
        data = read_json(vdir / "manifest.json")
        manifest = Manifest(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise SnapshotError(f"snapshot {name!r} has a corrupt manifest: {exc}") from exc
    if manifest.format_version > FORMAT_VERSION:
        raise SnapshotError(f"snapshot {name!r} has format {manifest.format_version}; this IMRS reads "
                            f"up to {FORMAT_VERSION}: upgrade IMRS")
    return manifest


def load_snapshot(snap_dir: str | Path, name: str, expect_backbone: str | None = None,
                  expect_dim: int | None = None, mmap: bool = False, remote: dict[str, Any] | None = None
                  ) -> tuple[VectorIndex, Manifest, Path | None]:
    """Return (index, manifest, catalog copy path or None). Refuses a snapshot of another backbone or
    dim: vectors from two embedding spaces are meaningless together, and would fail only later.

    A snapshot of vectors held by a server (Milvus) copies none: it records where they are and a
    checksum of its content (ids and vector bits), and loading it checks that Milvus still holds
    exactly that (``remote={"verify": "full"}`` reads every row back; see ``MilvusIndex._load``);
    a ``ContentMismatch`` (a ``SnapshotError``) says it does not."""
    from .indexes import load_index

    snap_dir = Path(snap_dir)
    manifest = read_manifest(snap_dir, name)
    if expect_backbone is not None and manifest.backbone != expect_backbone:
        raise SnapshotError(f"snapshot {name!r} was made with backbone {manifest.backbone}, "
                            f"not {expect_backbone}: switch backbone or rebuild")
    if expect_dim is not None and manifest.dim != expect_dim:
        raise SnapshotError(f"snapshot {name!r} holds {manifest.dim}-d vectors, the backbone gives "
                            f"{expect_dim}-d: rebuild the index")
    vdir = _pointed_dir(snap_dir, name)
    assert vdir is not None
    try:
        index = load_index(vdir / "index", mmap=mmap, remote=remote)
    except IMRSError:  # a damaged snapshot, or vectors on a server that cannot be reached now
        raise
    except Exception as exc:  # native readers raise RuntimeError and friends on damaged files
        raise SnapshotError(f"snapshot {name!r}: index files unreadable ({exc})") from exc
    cat = vdir / "catalog.sqlite"
    return index, manifest, (cat if cat.exists() else None)


def snapshot_ids(snap_dir: str | Path, name: str) -> np.ndarray | None:
    """The ids a snapshot recorded (None when it recorded none: an older live pointer)."""
    vdir = _pointed_dir(Path(snap_dir), name)
    if vdir is None or not (vdir / "ids.npy").exists():
        return None
    try:
        return np.load(vdir / "ids.npy", allow_pickle=False).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"snapshot {name!r}: ids.npy unreadable ({exc})") from exc


def list_snapshots(snap_dir: str | Path) -> list[Manifest]:
    snap_dir = Path(snap_dir)
    out = []
    if not snap_dir.is_dir():
        return out
    for pointer in sorted(snap_dir.glob("*.json")):
        with contextlib.suppress(SnapshotError):
            out.append(read_manifest(snap_dir, pointer.stem))
    return out


def pointed_version(snap_dir: str | Path, name: str) -> str | None:
    """The version folder name the pointer of ``name`` names, when that version is complete."""
    vdir = _pointed_dir(Path(snap_dir), name)
    return vdir.name if vdir is not None else None


def collect_garbage(snap_dir: str | Path) -> int:
    """Remove what interrupted saves leave behind: version folders no pointer names, and temp files
    of atomic writes. Only safe under the collection's writer lock (a save in progress looks alike)."""
    snap_dir = Path(snap_dir)
    if not snap_dir.is_dir():
        return 0
    pointed = {v for p in snap_dir.glob("*.json") if (v := pointed_version(snap_dir, p.stem)) is not None}
    removed = 0
    for entry in snap_dir.iterdir():
        if entry.is_dir() and "@" in entry.name and entry.name not in pointed:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        elif entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def _pointed_dir(snap_dir: Path, name: str) -> Path | None:
    pointer = snap_dir / f"{name}.json"
    try:
        version = read_json(pointer)["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    vdir = snap_dir / str(version)
    if not version.startswith(f"{name}@") or not (vdir / "manifest.json").exists():
        return None
    return vdir


def _collect_orphans(snap_dir: Path, name: str, keep: str) -> None:
    """Versions left behind by a crash between writing and committing are garbage."""
    for d in snap_dir.glob(f"{name}@*"):
        if d.name != keep and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out
