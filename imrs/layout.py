"""A collection's folder layout and the plain result types its operations hand back.

One job: say where things live and what a hit or a report looks like, with no behaviour behind it.
It is a leaf (it imports only the catalog's record type and, when asked to scan, the folder walk),
so any module that needs the dynamic-folder prefix or a ``SearchHit`` imports this and never the
``Collection`` facade: that is what keeps the import graph one-way.

Web images live in ``<dynamic root>/dynamic_<slug>/``; everything else under the collection folder
is the user's own ("base") images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .catalog import ImageRecord

#: first path part of every web ("dynamic") image: ``dynamic_<slug>/<file>``; defined here only
DYNAMIC_PREFIX = "dynamic_"


@dataclass
class SearchHit:
    id: int
    score: float
    relpath: str
    path: Path
    label: str
    source: str
    record: ImageRecord | None = None
    #: "likely match" | "uncertain" | "no match", from the collection's coverage thresholds
    confidence: str = ""
    #: why it matched: ("visual",), ("visual", "label"), ("same image",) ...; text search adds
    #: "label", "filename", "caption", "term" and "web" (imrs.textsearch)
    why: tuple[str, ...] = ("visual",)

    @property
    def title(self) -> str:
        if self.record is None:
            return ""
        return self.record.title or self.record.extra.get("title", "") or self.record.extra.get("caption", "")


@dataclass
class SyncReport:
    scanned: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relpath, why): did not decode
    #: (relpath, why): left out by the folder walk (links, special files, too large, ...)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    runtime: str = ""  # runtime tag of the vectors now cached ("fp32", "int8-<key>")
    restamped: str = ""  # the previous tag, when a runtime change re-embedded everything
    runtime_note: str = ""  # the int8 gate's verdict, or why int8 is not in use, when it was considered
    adopted: int = 0  # web images found on disk or in the quarantine and taken (back) into the catalog
    recovered: list[str] = field(default_factory=list)  # damaged stores found and rebuilt, one line each

    def summary(self) -> str:
        adopted = f"; {self.adopted} web image(s) taken back with their provenance" if self.adopted else ""
        return (f"{self.scanned} files: {self.added} new, {self.changed} changed, {self.removed} removed, "
                f"{self.unchanged} unchanged; embedded {self.embedded}, {len(self.failed)} failed, "
                f"{len(self.skipped)} skipped{adopted} in {self.seconds:.1f}s")


@dataclass
class RemoveReport:
    removed: int = 0
    files_deleted: int = 0
    missing: int = 0


def is_dynamic_relpath(relpath: str) -> bool:
    return relpath.split("/", 1)[0].startswith(DYNAMIC_PREFIX)


def is_dynamic_folder(name: str) -> bool:
    """Whether a top-level folder name is one of the web-image folders (the folder walk skips them)."""
    return name.startswith(DYNAMIC_PREFIX)


def slug_of(relpath: str) -> str | None:
    """The term slug of a dynamic image's relpath, None for a base image."""
    return relpath.split("/", 1)[0][len(DYNAMIC_PREFIX):] if is_dynamic_relpath(relpath) else None


def safe_dynamic_file(dynamic_root: Path, relpath: str) -> Path | None:
    """Resolve a dynamic image's file and prove it sits inside a dynamic_* folder of the dynamic
    root; anything else (symlink games, '..') is never deleted."""
    root = dynamic_root.resolve()
    path = (root / relpath).resolve()
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    if len(rel.parts) < 2 or not is_dynamic_folder(rel.parts[0]):
        return None
    return path


def scan_folder(root: Path) -> list[tuple[str, float, int]]:
    """(relpath, mtime, size) of every image under ``root`` except dynamic and hidden folders
    (``imrs.walk`` does the walking; what it leaves out is logged)."""
    from .walk import scan_folder as walk_scan

    return walk_scan(root, skip_top=is_dynamic_folder)
