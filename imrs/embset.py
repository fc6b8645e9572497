"""Rows of embeddings and their single-file NPZ format: the leaf both cache layouts build on.

:mod:`imrs.shards` (append-only stores) and :mod:`imrs.store` (a cache at a path, either layout, and
merging) both need the row type and the runtime tag; keeping them here lets the store use the shards
without the shards reaching back into the store.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import StoreError

FORMAT_VERSION = 1
#: The runtime tag of every float runtime (int8 runtimes are "int8-<model key>").
FP32 = "fp32"


def check_same_runtime(sets: Sequence[EmbeddingRows]) -> str:
    """The one runtime tag of ``sets`` (empty sets do not count); StoreError if they differ."""
    tags = {s.runtime for s in sets if len(s)} or {s.runtime for s in sets}
    if len(tags) > 1:
        raise StoreError(f"refusing to mix embeddings of different runtimes: {sorted(tags)} "
                         "(re-embed with one runtime: `imrs index --runtime ...`)")
    return tags.pop() if tags else FP32


@dataclass
class EmbeddingRows:
    """Rows of one backbone's embeddings as arrays; :class:`imrs.store.EmbeddingSet` adds the files."""

    backbone: str
    ids: np.ndarray  # int64 (n,)
    relpaths: np.ndarray  # unicode (n,)
    vectors: np.ndarray  # float32 (n, dim)
    runtime: str = FP32  # the encoder's runtime tag: which numerics made these vectors

    def __post_init__(self) -> None:
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int64).reshape(-1)
        self.relpaths = np.asarray(self.relpaths, dtype=str).reshape(-1)
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            self.vectors = self.vectors.reshape(len(self.ids), -1)
        if not (len(self.ids) == len(self.relpaths) == len(self.vectors)):
            raise StoreError(
                f"embedding set rows disagree: {len(self.ids)} ids, {len(self.relpaths)} paths, "
                f"{len(self.vectors)} vectors")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, backbone: str, dim: int, runtime: str = FP32) -> Any:
        return cls(backbone, np.zeros(0, np.int64), np.zeros(0, dtype="<U1"), np.zeros((0, dim), np.float32),
                   runtime)

    def select(self, mask_or_idx: np.ndarray) -> Any:
        return type(self)(self.backbone, self.ids[mask_or_idx], self.relpaths[mask_or_idx],
                          self.vectors[mask_or_idx], self.runtime)

    def without(self, ids: Iterable[int]) -> Any:
        drop = np.fromiter((int(i) for i in ids), dtype=np.int64)
        return self.select(~np.isin(self.ids, drop))

    def concat(self, other: EmbeddingRows) -> Any:
        if len(other) and len(self) and other.dim != self.dim:
            raise StoreError(f"cannot combine {self.dim}-d and {other.dim}-d embeddings")
        runtime = check_same_runtime([self, other])
        vecs = other.vectors if not len(self) else (self.vectors if not len(other)
                                                    else np.concatenate([self.vectors, other.vectors]))
        return type(self)(self.backbone, np.concatenate([self.ids, other.ids]),
                          np.concatenate([self.relpaths, other.relpaths]), vecs, runtime)


def read_npz(path: str | os.PathLike[str], backbone: str | None, wanted: Sequence[str]
             ) -> tuple[str, list[Any]]:
    """(file's backbone, the ``wanted`` arrays) of a validated single-file cache; older key names
    accepted (and files from before the runtime tag are fp32)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            names = {"ids": "ids", "relpaths": "relpaths" if "relpaths" in keys else "paths",
                     "vectors": "vectors" if "vectors" in keys else "embeddings"}
            missing = set(names.values()) - keys
            if missing:
                raise StoreError(f"{path}: not an IMRS embedding file (missing {sorted(missing)})")
            file_backbone = str(z["backbone"]) if "backbone" in keys else (backbone or "unknown")
            arrays: list[Any] = [(str(z["runtime"]) if "runtime" in keys else FP32) if k == "runtime"
                                 else z[names[k]] for k in wanted]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        # truncated or garbage zip, a bad CRC, or an object array that would need pickle
        raise StoreError(f"{path}: unreadable embedding file ({type(exc).__name__}: {exc})") from exc
    if backbone is not None and file_backbone not in (backbone, "unknown"):
        raise StoreError(f"{path} holds {file_backbone} embeddings, not {backbone}")
    return file_backbone, arrays


def load_npz(path: str | os.PathLike[str], backbone: str | None = None) -> EmbeddingRows:
    """All rows of a single-file cache."""
    file_backbone, (ids, relpaths, vectors, runtime) = read_npz(
        path, backbone, ("ids", "relpaths", "vectors", "runtime"))
    return EmbeddingRows(file_backbone, ids, relpaths, vectors, str(runtime))
