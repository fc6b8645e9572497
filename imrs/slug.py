"""Folder names for search terms: safe on Linux, macOS and Windows, distinct for distinct terms.

Decisions:

* Output is ASCII ``[a-z0-9-]`` only (plus a hash suffix, also ``[a-z0-9]``): no case or
  Unicode-normalisation surprises on macOS/Windows file systems, nothing a shell or URL needs to
  quote. Accented letters are transliterated (``Café`` -> ``cafe``); scripts without an ASCII
  spelling (``猫``) fall back to ``term-<hash>``.
* Two terms share a folder only when they are the same words: equal after NFKC, case folding
  and treating runs of spaces/``-``/``_`` as one separator (``Hot Dog`` = ``hot_dog`` =
  ``hot-dog``). Any other lossy step (transliteration, dropped symbols, truncation, a Windows
  reserved name) appends a hash of that canonical form, so ``cafe`` and ``Café`` stay apart.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}
# Letters NFKD does not decompose but that have a conventional ASCII spelling.
_EXTRA_TRANSLIT = str.maketrans(
    {"æ": "ae", "ø": "o", "đ": "d", "ð": "d", "ł": "l", "þ": "th", "œ": "oe", "ı": "i", "ŋ": "ng", "ħ": "h"}
)
_SEPARATORS = re.compile(r"[\s_\-\u2010-\u2015\u2212]+")  # whitespace, _, hyphens and dashes
_CANONICAL_OK = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_HASH_LEN = 10
MIN_LEN = _HASH_LEN + 6


def canonical_term(term: str) -> str:
    """The spelling-independent form of a term: the key two terms must share to share a folder."""
    text = unicodedata.normalize("NFKC", term).casefold()
    return _SEPARATORS.sub("-", text).strip("-")


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.translate(_EXTRA_TRANSLIT))
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.encode("ascii", "ignore").decode("ascii").lower()


def _digest(key: str) -> str:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest()[:_HASH_LEN]


def safe_slug(term: str, max_len: int = 60) -> str:
    """A deterministic folder name for ``term`` of at most ``max_len`` characters."""
    if max_len < MIN_LEN:
        raise ValueError(f"max_len must be at least {MIN_LEN}, got {max_len}")
    key = canonical_term(term)
    if _CANONICAL_OK.fullmatch(key) and len(key) <= max_len and key not in _WINDOWS_RESERVED:
        return key  # lossless: the folder name *is* the term
    base = re.sub(r"[^a-z0-9]+", "-", _ascii(key)).strip("-")
    suffix = _digest(key)
    if not base:
        base = "term"
    base = base[: max_len - _HASH_LEN - 1].rstrip("-") or "term"
    return f"{base}-{suffix}"
