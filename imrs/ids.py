"""Stable 64-bit image ids derived from the path relative to the collection root, and the text
forms of such paths.

The id must be identical on every machine and run (so caches, snapshots and NPZs from elsewhere
merge cleanly), hence a cryptographic hash of the relative path rather than Python's randomised
``hash`` or an autoincrement.

A relative path is the *exact* name the filesystem holds, as Python spells it (``os.fsdecode``):
bytes that are not UTF-8 appear as surrogate escapes, decomposed (NFD) and composed (NFC) names
stay what they are, and a backslash is part of a POSIX file name, not a separator. Normalising
any of those would make a file unreachable ("not found") or merge two different files into one
id. The id hashes the raw bytes, so it is defined for every name.

Three text forms exist, each for one job:

- the relpath itself (may hold surrogates): what ``root / relpath`` opens;
- :func:`storage_text` / :func:`from_storage_text`: a reversible, valid-UTF-8 spelling for SQLite,
  which refuses lone surrogates;
- :func:`display_path`: what a person sees (``bad\\xff.jpg``), printable on any terminal.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable

import numpy as np

from .errors import IDCollisionError

_SURROGATE_OR_CONTROL = re.compile("[\udc80-\udcff\x00-\x1f\x7f]")
_STORAGE_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def normalise_relpath(path: str | bytes | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """POSIX separators, no ``./``, empty parts or ``..``; the name itself is left exactly as is.

    On Windows the native separators become ``/``; on POSIX a backslash is an ordinary character.
    """
    text = os.fsdecode(path)
    if root is not None:
        text = os.path.relpath(os.path.abspath(text), os.path.abspath(os.fspath(root)))
    for sep in (os.sep, os.altsep):
        if sep and sep != "/":
            text = text.replace(sep, "/")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise ValueError(f"path {display_path(text)} is outside the collection root")
    return "/".join(parts)


def relpath_bytes(relpath: str) -> bytes:
    """The file name's bytes as the filesystem holds them (surrogate escapes undone)."""
    return relpath.encode("utf-8", "surrogateescape")


def stable_id(relpath: str) -> int:
    """Signed int64 (FAISS and SQLite both want signed) from the first 8 bytes of BLAKE2b."""
    digest = hashlib.blake2b(relpath_bytes(normalise_relpath(relpath)), digest_size=8).digest()
    value = int.from_bytes(digest, "little", signed=True)
    return value if value != -1 else 0  # -1 is FAISS's "no result" marker


def display_path(path: str | os.PathLike[str]) -> str:
    """A printable spelling: undecodable bytes as ``\\xNN``, control characters escaped.

    Not reversible and not unique (a file may really be called ``a\\xff``); only for people.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not _SURROGATE_OR_CONTROL.search(text):
        return text

    def esc(m: re.Match[str]) -> str:
        c = ord(m.group())
        return f"\\x{c - 0xDC00 if c >= 0xDC80 else c:02x}"

    return _SURROGATE_OR_CONTROL.sub(esc, text)


def storage_text(relpath: str) -> str:
    """Valid UTF-8 text for SQLite that :func:`from_storage_text` turns back into ``relpath``.

    Names that are valid UTF-8 (all but a few) are stored verbatim. The others get a leading
    ``/`` -- which no relpath can start with -- then backslashes doubled and each undecodable byte
    written as ``\\xNN``, so the mapping is one-to-one.
    """
    if not any(0xDC80 <= ord(c) <= 0xDCFF for c in relpath):
        return relpath
    out = relpath.replace("\\", "\\\\")
    return "/" + re.sub("[\udc80-\udcff]", lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", out)


def from_storage_text(text: str) -> str:
    if not text.startswith("/"):
        return text

    def unesc(m: re.Match[str]) -> str:
        tok = m.group(1)
        return "\\" if tok == "\\" else chr(0xDC00 + int(tok[1:], 16))

    return _STORAGE_ESCAPE.sub(unesc, text[1:])


def ids_for(relpaths: Iterable[str], known: dict[int, str] | None = None) -> np.ndarray:
    """Ids for many paths, raising on a collision instead of silently merging two images."""
    seen: dict[int, str] = dict(known or {})
    out = []
    for rel in relpaths:
        rel_n = normalise_relpath(rel)
        i = stable_id(rel_n)
        other = seen.get(i)
        if other is not None and other != rel_n:
            raise IDCollisionError(f"id collision: {display_path(other)!r} and {display_path(rel_n)!r} "
                                   f"both hash to {i}")
        seen[i] = rel_n
        out.append(i)
    return np.asarray(out, dtype=np.int64)
