"""The content checksum of a Milvus index: what a snapshot records about the vectors Milvus holds,
so a reload can tell the same rows from ten pruned and ten others added (a count cannot)."""

from __future__ import annotations

import functools

import numpy as np

from ..errors import SnapshotError


class ContentMismatch(SnapshotError):
    """What Milvus holds is not what a snapshot recorded (rows pruned, added or changed since)."""


#: Checksums are sums mod 2**64.
MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=8)  # one per dimension in use: bounded, and safe across threads
def _weights(dim: int) -> np.ndarray:
    w = np.random.default_rng(0x1A5).integers(1, 2**63, size=dim, dtype=np.uint64) | np.uint64(1)
    w.flags.writeable = False  # shared by every caller
    return w


def row_hashes(ids: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """One 64-bit hash per (id, vector bits) row: a keyed sum of the float bits, mixed with the id
    through splitmix64's finaliser, so moving a vector to another id changes the hash."""
    bits = np.ascontiguousarray(vecs, dtype=np.float32).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (bits * _weights(bits.shape[1])[None, :]).sum(axis=1, dtype=np.uint64)
        h ^= np.asarray(ids, dtype=np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def content_checksum(ids: np.ndarray, vecs: np.ndarray) -> int:
    """Order-free checksum of a set of rows (sum of row hashes mod 2**64): updated incrementally
    by adding and subtracting rows, equal for equal contents however they were inserted."""
    if not len(ids):
        return 0
    return int(row_hashes(ids, vecs).sum(dtype=np.uint64))


def checksum_as_stored(ids: np.ndarray, vecs: np.ndarray) -> int:
    """``content_checksum`` of rows as ``add`` would store them (L2-normalised the same way, to the
    bit): what a snapshot's checksum is compared with when its rows come back from the caches."""
    arr = np.asarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return content_checksum(ids, np.ascontiguousarray(arr / np.maximum(norms, np.float32(1e-12)), dtype=np.float32))
