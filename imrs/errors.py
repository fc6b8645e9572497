"""One exception family so the CLI and the UI can turn any expected failure into one readable line.

Anything that is the user's input or environment (bad file, missing weights, no network, wrong
snapshot) raises an ``IMRSError`` subclass with a message that already says what to do; anything
else is a bug and is allowed to surface as a traceback.
"""

from __future__ import annotations


class IMRSError(Exception):
    """Base class: the message is shown to the user as-is, on one line."""


class UnknownBackboneError(IMRSError, KeyError):
    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else "unknown backbone"


class UnknownIndexError(IMRSError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown indexer"


class WeightsUnavailableError(IMRSError):
    """Pretrained weights are neither cached nor downloadable; never silently replaced by random ones."""


class ImageDecodeError(IMRSError):
    """A file or byte string is not a decodable image (corrupt, truncated, not an image, too large).

    ``reason`` is the message without the "cannot read NAME:" head, for reports that already
    name the file (the download report, the skipped list of ``imrs index``)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class EmptyCollectionError(IMRSError):
    """A folder holds no images, or an index is searched before anything was added."""


class SnapshotError(IMRSError):
    """A snapshot is missing, corrupt, of an unknown format, or made with another backbone or dim."""


class StoreError(IMRSError):
    """An embedding cache is malformed or incompatible (dims disagree, wrong backbone)."""


class IDCollisionError(IMRSError):
    """Two different relative paths hashed to the same 64-bit id."""


class NetworkError(IMRSError):
    """A remote service could not be reached or refused us."""
