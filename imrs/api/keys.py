"""API keys: stored hashed in the state folder, with ``read`` and ``write`` scopes.

A key is ``imrs_<id>_<secret>``: the id finds the entry, the secret (32 random bytes) is only ever
stored as its SHA-256 (a high-entropy token needs no slow hash) and compared in constant time. The
file is re-read when it changes, so ``imrs serve keys revoke`` takes effect on a running server."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import IMRSError
from ..fsutil import atomic_write_json, read_json

KEYS_FILE = "api_keys.json"
SCOPES = ("read", "write")


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    created: float
    rate_per_minute: int | None = None  # this key's own rate limit (None: the server's)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or (scope == "read" and "write" in self.scopes)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes), "created": self.created,
                "rate_per_minute": self.rate_per_minute}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, home: str | Path) -> None:
        self.path = Path(home) / KEYS_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                self._stamp, self._entries = None, {}
                return self._entries
            if stamp != self._stamp:
                try:
                    data = read_json(self.path)
                except (OSError, ValueError) as exc:
                    raise IMRSError(f"API key file {self.path} is unreadable ({exc}): fix or remove it") from exc
                self._entries = {str(e["id"]): e for e in data.get("keys", []) if isinstance(e, dict) and "id" in e}
                self._stamp = stamp
            return self._entries

    def _save(self, entries: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"keys": list(entries.values())})
        self.path.chmod(0o600)

    def configured(self) -> bool:
        return bool(self._load())

    def add(self, name: str, scopes: tuple[str, ...] = ("read",), rate_per_minute: int | None = None) -> str:
        """Create a key; returns the full key (shown once, never stored)."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise IMRSError(f"scopes must be among {', '.join(SCOPES)}, not {', '.join(bad) or 'none'}")
        name = " ".join(str(name).split())[:80]
        if not name:
            raise IMRSError("give the key a name (who or what uses it)")
        entries = dict(self._load())
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        entries[key_id] = {"id": key_id, "name": name, "scopes": sorted(set(scopes)), "created": round(time.time()),
                           "sha256": _digest(secret), "rate_per_minute": rate_per_minute}
        self._save(entries)
        return f"imrs_{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        return [_key(e) for e in self._load().values()]

    def revoke(self, key_id_or_name: str) -> int:
        entries = dict(self._load())
        gone = [k for k, e in entries.items() if key_id_or_name in (k, e.get("name"))]
        if not gone:
            raise IMRSError(f"no API key with id or name {key_id_or_name!r} (`imrs serve keys list` shows them)")
        for k in gone:
            del entries[k]
        self._save(entries)
        return len(gone)

    def check(self, token: str) -> ApiKey | None:
        """The key ``token`` is, or None when it is not a current key."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "imrs":
            return None
        entry = self._load().get(parts[1])
        if entry is None or not hmac.compare_digest(str(entry.get("sha256", "")), _digest(parts[2])):
            return None
        return _key(entry)


def _key(e: dict[str, Any]) -> ApiKey:
    rate = e.get("rate_per_minute")
    return ApiKey(str(e["id"]), str(e.get("name", "")), tuple(e.get("scopes", ())), float(e.get("created", 0)),
                  int(rate) if rate is not None else None)
