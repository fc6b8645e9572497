"""Find the images of a collection folder without ever crashing, hanging or reading the world.

A folder a user points IMRS at may hold anything a filesystem can: symbolic links that loop or
dangle or lead to ``/`` or ``/dev/zero``, FIFOs and sockets with image names, folders it may not
list, names that are not UTF-8. The walk:

- never follows a link into a loop, and never walks a folder outside the collection (see
  ``config.follow_links()`` for which links are followed: by default links to *files* anywhere, so
  link farms of a dataset work, and no links to folders);
- takes only regular files (and links to them): FIFOs, devices and sockets are listed as skipped,
  never opened;
- skips files that are empty or larger than ``ImageLimits.max_bytes`` from their size alone;
- reports every entry it leaves out that looked like an image (or a folder it could not enter)
  with ONE reason, so ``imrs index`` and the app can say what was not indexed and why;
- keeps names exactly as the filesystem holds them (see ``imrs.ids``), and never lets two files
  share one id.

Only ``lstat``/``stat`` calls happen here (cached by ``os.scandir`` where the kernel reports
file types), so a rescan of 30k unchanged files stays well under a second. Reading a file, with
its own size and time caps, is ``imageio.read_image_file``'s job.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import config
from .ids import display_path, stable_id
from .imageio import IMAGE_EXTENSIONS, file_kind, image_limits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundFile:
    relpath: str  # exact name, "/"-separated, may hold surrogate escapes
    mtime: float
    size: int


@dataclass(frozen=True)
class Skipped:
    relpath: str
    reason: str

    @property
    def display(self) -> str:
        return display_path(self.relpath)


@dataclass
class WalkResult:
    files: list[FoundFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _link_target_error(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "broken symbolic link: its target does not exist"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(exc, PermissionError):
        return "symbolic link: permission denied on its target"
    return f"symbolic link: cannot reach its target ({exc.strerror or exc})"


def walk_images(root: str | os.PathLike[str], *, follow_links: str | None = None,
                max_bytes: int | None = None,
                skip_top: Callable[[str], bool] | None = None) -> WalkResult:
    """Every image file under ``root`` (sorted by relpath) and every entry left out, with why.

    ``follow_links``: "none", "inside", "files" or "all" (default: ``config.follow_links()``).
    ``skip_top(name)``: top-level folders to leave out silently (the dynamic image folders).
    Hidden entries (dot names) are left out silently, as are files without an image extension.
    """
    mode = follow_links or config.follow_links()
    if mode not in config.FOLLOW_LINKS_CHOICES:
        raise ValueError(f"follow_links must be one of {config.FOLLOW_LINKS_CHOICES}, not {mode!r}")
    cap = max_bytes if max_bytes is not None else image_limits().max_bytes
    root_real = os.path.realpath(os.fspath(root))
    out = WalkResult()
    skip = out.skipped.append
    try:
        st_root = os.stat(root_real)
    except OSError as exc:
        skip(Skipped(".", f"cannot open the collection folder: {exc.strerror or exc}"))
        return out
    visited = {(st_root.st_dev, st_root.st_ino)}
    stack: list[tuple[str, str]] = [(root_real, "")]

    def add_file(rel: str, st: os.stat_result) -> None:
        if st.st_size == 0:
            skip(Skipped(rel, "empty file"))
        elif st.st_size > cap:
            skip(Skipped(rel, f"file too large: {st.st_size / 2**20:.1f} MB > {cap / 2**20:.1f} MB limit"))
        else:
            out.files.append(FoundFile(rel, st.st_mtime, st.st_size))

    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skip(Skipped(prefix.rstrip("/") or ".", f"cannot list folder: {exc.strerror or exc}"))
            continue
        for e in entries:
            name = e.name
            if name.startswith("."):
                continue
            rel = prefix + name
            image_name = _is_image_name(name)
            try:
                if e.is_symlink():
                    _visit_link(e, rel, image_name, mode, root_real, visited, stack, add_file, skip)
                elif e.is_dir(follow_symlinks=False):
                    if not prefix and skip_top is not None and skip_top(name):
                        continue
                    st = e.stat(follow_symlinks=False)
                    key = (st.st_dev, st.st_ino)
                    if key in visited:  # a bind mount of an ancestor: a loop without links
                        skip(Skipped(rel, "folder loop: this folder was already walked"))
                        continue
                    visited.add(key)
                    stack.append((e.path, rel + "/"))
                elif image_name:
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        add_file(rel, st)
                    else:
                        skip(Skipped(rel, f"not a regular file: {file_kind(st.st_mode)}"))
            except OSError as exc:  # vanished or unreadable between listing and stat
                if image_name:
                    skip(Skipped(rel, f"cannot stat: {exc.strerror or exc}"))
    out.files.sort(key=lambda f: f.relpath)
    _drop_id_collisions(out)
    out.skipped.sort(key=lambda s: s.relpath)
    return out


def _visit_link(e: os.DirEntry[str], rel: str, image_name: bool, mode: str, root_real: str,
                visited: set[tuple[int, int]], stack: list[tuple[str, str]],
                add_file: Callable[[str, os.stat_result], None], skip: Callable[[Skipped], None]) -> None:
    try:
        st = os.stat(e.path)  # follows the whole chain; ELOOP / ENOENT end here
    except OSError as exc:
        if image_name or exc.errno == errno.ELOOP:
            skip(Skipped(rel, _link_target_error(exc)))
        return
    target = os.path.realpath(e.path)
    inside = _inside(target, root_real)
    if stat.S_ISDIR(st.st_mode):
        here = os.path.realpath(os.path.dirname(e.path))
        if _inside(here, target) or _inside(root_real, target):  # an ancestor: walking it never ends
            skip(Skipped(rel, "symbolic link loop: it leads back to a folder it is in"))
        elif inside:
            skip(Skipped(rel, "link to a folder inside the collection: not followed (its images are "
                              "indexed under their own path)"))
        elif (st.st_dev, st.st_ino) in visited:
            skip(Skipped(rel, "symbolic link loop: it leads to a folder already walked"))
        elif mode != "all":
            skip(Skipped(rel, "link to a folder outside the collection: not followed "
                              "(IMRS_FOLLOW_LINKS=all follows it)"))
        else:
            visited.add((st.st_dev, st.st_ino))
            stack.append((e.path, rel + "/"))
        return
    if not image_name:
        return
    if not stat.S_ISREG(st.st_mode):
        skip(Skipped(rel, f"link to {file_kind(st.st_mode)}, not a regular file"))
    elif mode == "none":
        skip(Skipped(rel, "symbolic link: not followed (IMRS_FOLLOW_LINKS=none)"))
    elif mode == "inside" and not inside:
        skip(Skipped(rel, "link to a file outside the collection: not followed (IMRS_FOLLOW_LINKS=inside)"))
    else:
        add_file(rel, st)


def _drop_id_collisions(result: WalkResult) -> None:
    """Two different names hashing to one 64-bit id would share one catalog row and one vector:
    the second is skipped with a reason instead (astronomically rare, but never silent)."""
    seen: dict[int, str] = {}
    kept: list[FoundFile] = []
    for f in result.files:
        i = stable_id(f.relpath)
        other = seen.get(i)
        if other is not None:
            result.skipped.append(Skipped(f.relpath, f"id collision with {display_path(other)}: rename one of them"))
            continue
        seen[i] = f.relpath
        kept.append(f)
    result.files = kept


def scan_folder(root: Path, skip_top: Callable[[str], bool] | None = None) -> list[tuple[str, float, int]]:
    """(relpath, mtime, size) of every image under ``root``; what was left out is only logged."""
    result = walk_images(root, skip_top=skip_top)
    for s in result.skipped:
        log.warning("skipped %s: %s", s.display, s.reason)
    return [(f.relpath, f.mtime, f.size) for f in result.files]


def format_skipped(skipped: list[tuple[str, str]] | list[Skipped], limit: int = 200) -> list[str]:
    """One printable line per skipped entry (at most ``limit``, then a count of the rest)."""
    rows = [(s.relpath, s.reason) if isinstance(s, Skipped) else s for s in skipped]
    lines = [f"  skipped {display_path(rel)}: {reason}" for rel, reason in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more")
    return lines
