"""Stable 64-bit image ids derived from the path relative to the collection root.

The id must be identical on every machine and run (so caches, snapshots and NPZs from elsewhere
merge cleanly), hence a cryptographic hash of a normalised POSIX path rather than Python's
randomised ``hash`` or an autoincrement.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import IDCollisionError


def normalise_relpath(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """POSIX separators, NFC unicode, no ``./`` or ``..``: one spelling per file on every OS."""
    p = Path(path)
    if root is not None:
        p = Path(os.path.relpath(os.path.abspath(p), os.path.abspath(root)))
    text = unicodedata.normalize("NFC", str(p).replace("\\", "/"))
    parts = [part for part in PurePosixPath(text).parts if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise ValueError(f"path {path!s} is outside the collection root")
    return "/".join(parts)


def stable_id(relpath: str) -> int:
    """Signed int64 (FAISS and SQLite both want signed) from the first 8 bytes of BLAKE2b."""
    digest = hashlib.blake2b(normalise_relpath(relpath).encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little", signed=True)
    return value if value != -1 else 0  # -1 is FAISS's "no result" marker


def ids_for(relpaths: Iterable[str], known: dict[int, str] | None = None) -> np.ndarray:
    """Ids for many paths, raising on a collision instead of silently merging two images."""
    seen: dict[int, str] = dict(known or {})
    out = []
    for rel in relpaths:
        rel_n = normalise_relpath(rel)
        i = stable_id(rel_n)
        other = seen.get(i)
        if other is not None and other != rel_n:
            raise IDCollisionError(f"id collision: {other!r} and {rel_n!r} both hash to {i}")
        seen[i] = rel_n
        out.append(i)
    return np.asarray(out, dtype=np.int64)
