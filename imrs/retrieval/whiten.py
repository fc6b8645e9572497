"""PCA whitening learned on the collection itself (no labels).

Pooled CNN features are strongly anisotropic: a few directions (lighting, background clutter)
carry much of the variance and dominate cosine similarity. Centring, rotating onto the principal
axes and dividing each axis by ``eigenvalue^(power/2)`` equalises them; ``power=1`` is full
whitening, smaller values shrink toward plain PCA (full whitening also amplifies noise axes, so
dropping the smallest ones with ``dim`` helps twice: better and smaller vectors).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..fsutil import atomic_savez


class PCAWhitening:
    def __init__(self, mean: np.ndarray, projection: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.projection = np.asarray(projection, dtype=np.float32)  # (d_in, d_out)

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    @classmethod
    def fit(cls, x: np.ndarray, dim: int | None = None, power: float = 1.0, eps: float = 1e-6) -> PCAWhitening:
        x = np.asarray(x, dtype=np.float64)
        if len(x) < 2:
            raise ValueError("whitening needs at least two vectors")
        mean = x.mean(axis=0)
        xc = x - mean
        cov = xc.T @ xc / max(len(x) - 1, 1)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]
        eigval, eigvec = np.maximum(eigval[order], 0.0), eigvec[:, order]
        rank = int(min(len(x) - 1, x.shape[1]))
        d = rank if dim is None else max(1, min(int(dim), rank))
        scale = (eigval[:d] + eps * max(float(eigval[0]), 1e-12)) ** (-power / 2.0)
        return cls(mean.astype(np.float32), (eigvec[:, :d] * scale).astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.projection
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)

    def save(self, path: str | os.PathLike[str]) -> Path:
        atomic_savez(path, mean=self.mean, projection=self.projection)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PCAWhitening:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mean"], z["projection"])
        except (OSError, ValueError, KeyError) as exc:
            raise StoreError(f"{path}: unreadable whitening file ({exc})") from exc
