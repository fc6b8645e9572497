"""The user's web images on disk: provenance sidecars, the quarantine, and which state folder owns them.

One job: the files growth downloaded, outside any store. Each image (``dynamic_<slug>/<20 hex>.jpg``)
has a provenance sidecar (``<20 hex>.json``) written at download time, so a lost catalog loses
nothing. Files no catalog lists are moved to ``<state>/quarantine/``, never deleted: they cost a
download; ``imrs index`` takes them back. One state folder owns a collection folder's ``dynamic_*``
folders (``<root>/.imrs-owner.json``); another one on the same collection never moves the owner's
files. ``imrs.reconcile`` calls this during repair, the sync when it adopts web images back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import ImageRecord
from .fsutil import atomic_write_json, read_json
from .layout import DYNAMIC_PREFIX, is_dynamic_folder

if TYPE_CHECKING:
    from .repairport import RepairTarget

log = logging.getLogger(__name__)

#: Names expansion gives downloaded files (``grow.url_filename``); only such files are ever moved.
DYNAMIC_FILE_RE = re.compile(r"^[0-9a-f]{20}\.jpg$")
QUARANTINE_DIR = "quarantine"
OWNER_FILE = ".imrs-owner.json"
#: Provenance fields a sidecar keeps beside each downloaded image (the catalog's dynamic columns).
PROVENANCE_FIELDS = ("label", "term", "slug", "source_url", "provider", "title", "license", "author", "page_url",
                     "phash", "width", "height", "added_at")


def stamp() -> str:
    """A unique, sortable suffix for quarantined names."""
    return time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:4]}"


def scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def dynamic_folders(dyn_root: Path) -> list[Path]:
    return [Path(e.path) for e in scandir(dyn_root)
            if is_dynamic_folder(e.name) and e.is_dir(follow_symlinks=False)]


def rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def quarantine_dir(coll: RepairTarget) -> Path:
    return coll.state_dir / QUARANTINE_DIR


def sidecar_of(image: Path) -> Path:
    return image.with_suffix(".json")


def write_provenance(image: Path, record: ImageRecord) -> None:
    """The sidecar of a downloaded image: where it came from, kept beside it so a lost catalog
    loses nothing (``rebuild_catalog``, ``Collection.sync`` read it back)."""
    atomic_write_json(sidecar_of(image), {k: getattr(record, k) for k in PROVENANCE_FIELDS}
                      | {"relpath": record.relpath})


def read_provenance(image: Path) -> dict[str, Any]:
    """The sidecar's fields ({} when there is none or it is unreadable: the folder names the term)."""
    try:
        data = read_json(sidecar_of(image))
    except (OSError, ValueError):
        return {}
    return {k: data[k] for k in PROVENANCE_FIELDS if isinstance(data, dict) and k in data}


def dynamic_record(coll: RepairTarget, relpath: str, image: Path) -> ImageRecord:
    """A catalog row for a web image found on disk: its sidecar's provenance, else its folder's term."""
    slug = relpath.split("/", 1)[0][len(DYNAMIC_PREFIX):]
    facts: dict[str, Any] = {"label": slug, "term": slug, "slug": slug}
    facts.update({k: v for k, v in read_provenance(image).items() if v is not None})
    with contextlib.suppress(OSError):
        st = image.stat()
        facts["mtime"], facts["size"] = st.st_mtime, st.st_size
    return ImageRecord.for_path(relpath, source="dynamic", **facts)


def _move_pair(src: Path, dest: Path) -> None:
    """Move an image and its sidecar (when there is one) to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    side = sidecar_of(src)
    if side.is_file():
        os.replace(side, sidecar_of(dest))


def quarantine_orphans(coll: RepairTarget, catalog_ids: set[int], release: str | None = None) -> int:
    """Web images an expansion moved into ``dynamic_<slug>/`` but never recorded (killed in between),
    or that a catalog no longer lists: moved with their sidecars to ``<state>/quarantine/``, never
    deleted. A state folder that does not own the collection's dynamic folders touches nothing."""
    from .ids import stable_id

    if not owns_dynamic_root(coll):
        return 0
    moved = 0
    target = quarantine_dir(coll) / f"released-{stamp()}" if release else quarantine_dir(coll)
    for folder in dynamic_folders(Path(coll.dynamic_root)):
        for entry in scandir(folder):
            if not DYNAMIC_FILE_RE.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            rel = f"{folder.name}/{entry.name}"
            if stable_id(rel) not in catalog_ids:
                _move_pair(Path(entry.path), target / rel)
                moved += 1
        rmdir_if_empty(folder)
    if moved and release:
        log.warning("%d web image(s) not in %s moved to %s (delete that folder to free the space)", moved,
                    release, target)
    elif moved:
        log.warning("%d web image(s) the catalog does not list moved to %s; `imrs index` takes them back",
                    moved, target)
    return moved


def quarantined(coll: RepairTarget) -> list[tuple[str, Path]]:
    """(relpath, file) of every web image waiting in the quarantine."""
    out = []
    for folder in dynamic_folders(quarantine_dir(coll)):
        out += [(f"{folder.name}/{e.name}", Path(e.path)) for e in scandir(folder)
                if DYNAMIC_FILE_RE.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
    return sorted(out)


def unquarantine(coll: RepairTarget, known: set[int]) -> list[str]:
    """Put quarantined web images back in their folders (``imrs index``). One whose name is back
    already and recorded (the expansion was re-run) is a second copy and goes. Returns relpaths."""
    from .ids import stable_id

    back = []
    for rel, path in quarantined(coll):
        dest = Path(coll.dynamic_root) / rel
        if dest.exists():
            if stable_id(rel) in known:
                path.unlink(missing_ok=True)
                sidecar_of(path).unlink(missing_ok=True)
            continue
        _move_pair(path, dest)
        back.append(rel)
    for folder in dynamic_folders(quarantine_dir(coll)):
        rmdir_if_empty(folder)
    return back


def unrecorded_dynamic(coll: RepairTarget, known: set[int]) -> list[str]:
    """Relpaths of web images (IMRS-named files in ``dynamic_*``) the catalog does not list."""
    from .ids import stable_id

    out = []
    for folder in dynamic_folders(Path(coll.dynamic_root)):
        out += [f"{folder.name}/{e.name}" for e in scandir(folder)
                if DYNAMIC_FILE_RE.fullmatch(e.name) and e.is_file(follow_symlinks=False)
                and stable_id(f"{folder.name}/{e.name}") not in known]
    return sorted(out)


def _marked_owner(root: Path) -> Path | None:
    try:
        return Path(str(read_json(root / OWNER_FILE)["state_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def other_owner(root: Path, state_dir: Path) -> Path | None:
    """The living state folder other than ``state_dir`` that owns ``root``'s web images, if any
    (read only: opening a collection writes nothing into the user's folder)."""
    owner = _marked_owner(root)
    if owner is not None and owner != state_dir and (owner / "catalog.sqlite").exists():
        return owner
    return None


def claim_owner(root: Path, state_dir: Path) -> Path | None:
    """Make ``state_dir`` the owner of ``root``'s dynamic folders (before it first writes web images
    there) unless another living state folder is. Returns that other owner, or None."""
    owner = _marked_owner(root)
    if owner is not None and owner != state_dir:
        if (owner / "catalog.sqlite").exists():
            return owner
        log.info("the state folder %s that owned %s is gone: %s takes its web images over", owner, root, state_dir)
    if owner != state_dir:
        try:
            atomic_write_json(root / OWNER_FILE, {"state_dir": str(state_dir),
                                                  "claimed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        except OSError as exc:  # a folder we cannot write: dynamic images live in the state folder anyway
            log.debug("cannot claim %s: %s", root, exc)
    return None


def owns_dynamic_root(coll: RepairTarget) -> bool:
    """Whether this state folder may move files in its dynamic root: its own (in the state folder),
    or the collection folder it owns."""
    root = Path(coll.dynamic_root)
    if root != coll.root:
        return True
    return _marked_owner(root) == coll.state_dir  # unclaimed: web images there are nobody's we know
