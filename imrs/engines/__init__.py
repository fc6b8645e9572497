"""Embedding engines: who turns a list of image paths into vectors during ``Collection.sync``.

The local engine is the collection's own encoder (``Encoder.embed_paths``: threads in this
process). ``ray_engine.RayEngine`` does the same job on a Ray cluster (or a local Ray), so a
collection of millions of images is embedded by many machines while the catalog, the caches and
the index are fed exactly as by the local path. An engine's only job is "these paths ->
(kept indices, vectors, failures)", which keeps ``sync``'s incremental logic in one place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..encoders import EmbedResult
    from ..progress import ProgressArg

ENGINES: tuple[str, ...] = ("local", "ray")


class Embedder(Protocol):
    def embed_paths(self, paths: Sequence[str | os.PathLike[str]], batch_size: int | None = None,
                    progress: ProgressArg = False) -> EmbedResult: ...
