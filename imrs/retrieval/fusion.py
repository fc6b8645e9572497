"""Multi-backbone fusion: concatenate each backbone's unit vectors (optionally weighted), then
normalise. The cosine of two fused vectors is the weighted mean of the per-backbone cosines, so
backbones that fail on different images cover for each other."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fuse_backbones(parts: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    if not parts:
        raise ValueError("nothing to fuse")
    n = len(parts[0])
    if any(len(p) != n for p in parts):
        raise ValueError("all backbones must embed the same rows, in the same order")
    w = [1.0] * len(parts) if weights is None else [float(x) for x in weights]
    cols = []
    for p, wi in zip(parts, w, strict=True):
        p = np.asarray(p, dtype=np.float32)
        p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        cols.append(p * np.sqrt(wi))
    out = np.concatenate(cols, axis=1)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
