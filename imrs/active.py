"""The "active collection" pointer: which collection ``imrs`` commands use when none is named.

One job: remember the last collection ``imrs index`` opened (``<home>/active.json``) and read it
back. It stores what reopening needs (folder, backbone, index kind) and nothing that opens it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .fsutil import atomic_write_json, read_json

ACTIVE_FILE = "active.json"


class _Named(Protocol):
    root: Path
    backbone: str

    @property
    def indexer(self) -> str: ...


def remember_active(home: Path, coll: _Named) -> None:
    atomic_write_json(home / ACTIVE_FILE, {"root": str(coll.root), "backbone": coll.backbone,
                                           "indexer": coll.indexer})


def read_active(home: Path) -> dict[str, str] | None:
    try:
        return read_json(home / ACTIVE_FILE)
    except (OSError, ValueError):
        return None
