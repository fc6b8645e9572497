"""Near-duplicate detection with 64-bit perceptual hashes.

Web searches return the same picture many times (resized, recompressed, re-hosted). pHash maps
such copies to hashes a few bits apart, so "duplicate" means Hamming distance <= threshold.

Hashes are kept as *signed* int64 because SQLite INTEGER and numpy int64 are signed; the
bit pattern is what matters, and the index works on the same bits viewed as uint64.
A query is one vectorised XOR + popcount over a contiguous array: no Python loop over the
collection, so 1M hashes cost milliseconds (``scripts/bench_phash.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import imagehash
import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

_MASK64 = (1 << 64) - 1
NO_MATCH_DISTANCE = 65  # farther than any two 64-bit hashes can be

_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_lut(x: np.ndarray) -> np.ndarray:
    """Bit count per uint64 via a byte table: the numpy < 2.0 fallback."""
    return _BYTE_BITS[np.ascontiguousarray(x).view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


if not hasattr(np, "bitwise_count"):  # pragma: no cover - numpy 1.x
    _popcount = _popcount_lut  # noqa: F811


def to_signed(h: int) -> int:
    """Any 64-bit pattern (signed or unsigned int) as the signed int64 with the same bits."""
    h &= _MASK64
    return h - (1 << 64) if h >= 1 << 63 else h


def _u64(h: int) -> np.uint64:
    return np.uint64(int(h) & _MASK64)


def _as_u64_array(hashes: ArrayLike) -> np.ndarray:
    """Signed or unsigned 64-bit hashes as a contiguous uint64 array (same bits, no copy if possible)."""
    if isinstance(hashes, np.ndarray):
        arr = hashes.reshape(-1)
        if arr.dtype == np.uint64:
            return np.ascontiguousarray(arr)
        if arr.dtype.kind in "iu":
            return np.ascontiguousarray(arr.astype(np.int64, copy=False)).view(np.uint64)
        if arr.dtype.kind != "O" and arr.size:
            raise TypeError(f"hashes must be integers, not {arr.dtype}")
        values: Iterable[object] = arr.tolist()
    else:
        values = hashes if isinstance(hashes, Iterable) else [hashes]
    # Python ints may mix the signed and unsigned spellings of the same bits: mask each one.
    return np.fromiter((int(h) & _MASK64 for h in values), dtype=np.uint64)  # type: ignore[call-overload]


def phash(image: Image.Image | str | os.PathLike[str]) -> int:
    """64-bit pHash as a signed int64. A file is decoded at full size by the project's one
    decoder (EXIF-rotated, as the downloader saves images); an image object is hashed as it is.
    :func:`phash_file` is the cheaper reduced-size recipe the collection and expansion share."""
    if not isinstance(image, Image.Image):
        from .imageio import load_image

        image = load_image(image)
    bits = imagehash.phash(image).hash.reshape(-1)  # 64 booleans, row-major, like str(ImageHash)
    return int.from_bytes(np.packbits(bits).tobytes(), "big", signed=True)


def hamming(a: int, b: int) -> int:
    return ((int(a) ^ int(b)) & _MASK64).bit_count()


class HashIndex:
    """Id -> pHash with linear-scan lookups that stay fast at 1M entries.

    Ids are unique: adding an id that is present replaces its hash. Storage is two growable
    arrays (doubling), so adds are amortised O(batch); ``remove`` and replacing adds are O(n)
    vectorised, i.e. meant to be called with batches rather than one id at a time.
    """

    def __init__(self, hashes: ArrayLike = (), ids: ArrayLike = ()) -> None:
        self._h = np.empty(16, dtype=np.uint64)
        self._ids = np.empty(16, dtype=np.int64)
        self._n = 0
        self.add(ids, hashes)

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self._n].copy()

    @property
    def hashes(self) -> np.ndarray:
        """Signed int64 copy, ready for SQLite or an NPZ."""
        return self._h[: self._n].view(np.int64).copy()

    def _reserve(self, extra: int) -> None:
        need = self._n + extra
        if need <= len(self._h):
            return
        cap = max(need, 2 * len(self._h))
        h = np.empty(cap, dtype=np.uint64)
        i = np.empty(cap, dtype=np.int64)
        h[: self._n] = self._h[: self._n]
        i[: self._n] = self._ids[: self._n]
        self._h, self._ids = h, i

    def add(self, ids: ArrayLike, hashes: ArrayLike) -> None:
        new_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        new_h = _as_u64_array(hashes)
        if len(new_ids) != len(new_h):
            raise ValueError(f"{len(new_ids)} ids but {len(new_h)} hashes")
        if not len(new_ids):
            return
        # Last occurrence wins inside the batch, like repeated dict assignment.
        rev_unique, rev_first = np.unique(new_ids[::-1], return_index=True)
        if len(rev_unique) != len(new_ids):
            keep = np.sort(len(new_ids) - 1 - rev_first)
            new_ids, new_h = new_ids[keep], new_h[keep]
        if self._n:
            self.remove(new_ids)
        self._reserve(len(new_ids))
        self._h[self._n : self._n + len(new_ids)] = new_h
        self._ids[self._n : self._n + len(new_ids)] = new_ids
        self._n += len(new_ids)

    def remove(self, ids: ArrayLike) -> int:
        """Drop ``ids`` (unknown ids are ignored); returns how many entries were removed."""
        gone = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not self._n or not len(gone):
            return 0
        keep = ~np.isin(self._ids[: self._n], gone)
        kept = int(keep.sum())
        removed = self._n - kept
        if removed:
            self._h[:kept] = self._h[: self._n][keep]
            self._ids[:kept] = self._ids[: self._n][keep]
            self._n = kept
        return removed

    def distances(self, h: int) -> np.ndarray:
        """Hamming distance from ``h`` to every stored hash, in storage order (uint8)."""
        return _popcount(np.bitwise_xor(self._h[: self._n], _u64(h)))

    def nearest(self, h: int) -> tuple[int | None, int]:
        if not self._n:
            return None, NO_MATCH_DISTANCE
        d = self.distances(h)
        i = int(np.argmin(d))
        return int(self._ids[i]), int(d[i])

    def within(self, h: int, threshold: int) -> list[tuple[int, int]]:
        """All ``(id, distance)`` with distance <= threshold, closest first."""
        if not self._n:
            return []
        d = self.distances(h)
        idx = np.flatnonzero(d <= threshold)
        idx = idx[np.argsort(d[idx], kind="stable")]
        return [(int(i), int(k)) for i, k in zip(self._ids[idx], d[idx], strict=True)]

    def is_duplicate(self, h: int, threshold: int) -> bool:
        return bool(self._n) and bool((self.distances(h) <= threshold).any())


def dedupe_batch(candidate_hashes: Sequence[int] | Iterable[int], index: HashIndex, threshold: int = 4) -> list[bool]:
    """Which candidates to keep: not within ``threshold`` of the index nor of an earlier kept one.

    The index is not modified: add the kept hashes once their images are actually stored.
    """
    keep: list[bool] = []
    batch = HashIndex()
    for k, h in enumerate(candidate_hashes):
        dup = index.is_duplicate(h, threshold) or batch.is_duplicate(h, threshold)
        keep.append(not dup)
        if not dup:
            batch.add([k], [h])
    return keep


#: pHash looks at a 32x32 version: decoding at >= 64 px (JPEG draft, box reduce) loses nothing.
PHASH_MIN_SIDE = 64


def phash_file(path: str | os.PathLike[str], with_size: bool = False) -> Any:
    """pHash of an image file by the one recipe every caller shares (the project's decoder at a
    reduced size, EXIF-rotated, then pHash), so base and downloaded images hash alike. With
    ``with_size`` also returns the stored (width, height), read from the header for free.

    Raises ImageDecodeError (one line) for anything that is not a readable image."""
    from .imageio import open_image

    decoded = open_image(path, min_side=PHASH_MIN_SIDE)
    h = phash(decoded.image)
    return (h, (decoded.width, decoded.height)) if with_size else h
