"""The encoder a collection embeds with, and the runtime identity (fp32 / int8) of its vectors.

One job: hand out one encoder per collection, loaded once (two app sessions must not load the
model twice), whose vectors live in the same space as the cached ones. The base cache records the
runtime tag of its vectors. Under runtime "auto" the encoder follows it, so queries and new images
land in the same vector space; a sync whose encoder writes another tag (an explicit --runtime, or
an int8 model no longer cached) re-embeds every cache and rebuilds the index instead of mixing
(``imrs.syncpipe``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .config import Settings
    from .encoders import Encoder

log = logging.getLogger(__name__)


class EncoderSlot:
    """The collection's encoder (``given`` by the caller, or made on first use). ``cached_runtime()``
    reads the caches' tag; ``base_files()`` lists the base images (int8 calibrates on them).
    ``settings`` (the collection's) say where weights are found and from what size int8 pays."""

    def __init__(self, *, backbone: str, device: str | None, weights: str, checkpoint: str | None, runtime: str,
                 given: Encoder | None, cached_runtime: Callable[[], str | None],
                 base_files: Callable[[], list[Path]], settings: Settings) -> None:
        self.settings = settings
        self.backbone = backbone
        self.device = device
        self.weights = weights
        self.checkpoint = checkpoint
        self.runtime = runtime  # "auto" | "fp32" | "int8" | a float runtime name (see imrs.encoders)
        self._encoder = given
        self._given = given is not None
        self._lock = threading.Lock()
        self._cached_runtime = cached_runtime
        self._base_files = base_files
        self._warned = False

    @property
    def loaded(self) -> Encoder | None:
        """The encoder if one is loaded (or was given), else None: nothing is loaded to answer."""
        return self._encoder

    def get(self) -> Encoder:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = self._make(None)
        return self._encoder

    def for_sync(self, files: Sequence[Path]) -> Encoder:
        """The encoder that embeds for a sync: the one in use when it already writes the caches'
        runtime, else one made with the folder's files at hand (int8 calibrates on them)."""
        enc = self._encoder
        if enc is not None and (self._given or (
                self.runtime == "auto" and getattr(enc, "runtime_tag", "fp32") == self._cached_runtime())):
            return enc
        with self._lock:
            self._encoder = self._make(files)
            return self._encoder

    def may_change_runtime(self, base_runtime: str, base_rows: int) -> bool:
        """Whether a sync's encoder may write another runtime than the base cache holds (decided
        without loading a model: an unchanged folder under "auto" must stay instant)."""
        if not base_rows or self.runtime == "auto":
            return False
        return self.runtime == "int8" or base_runtime != "fp32"

    def warn_if_query_runtime_differs(self) -> None:
        tag = self._cached_runtime()
        enc_tag = getattr(self.get(), "runtime_tag", "fp32")
        if tag is not None and enc_tag != tag and not self._warned:
            self._warned = True
            log.warning("the index holds %s vectors but queries are embedded with %s: results are "
                        "approximate until `imrs index --runtime ...` re-embeds the collection", tag, enc_tag)

    def _make(self, sync_files: Sequence[Path] | None) -> Encoder:
        """The encoder for this collection. ``sync_files`` (when indexing) lets int8 be calibrated
        on the collection's own images; without them an int8 model is only reopened."""
        from .encoders import get_encoder
        from .encoders.int8 import CALIBRATION_IMAGES, HELD_IMAGES, is_int8_tag

        tag = self._cached_runtime()
        kw: dict[str, Any] = {"runtime": self.runtime}
        if self.runtime in ("auto", "int8") and is_int8_tag(tag):
            kw["int8_tag"] = tag
        elif self.runtime == "auto" and tag is not None:
            kw["runtime"] = "fp32"
        if kw["runtime"] in ("auto", "int8") and (sync_files is not None or self.runtime == "int8"):
            files = list(sync_files) if sync_files is not None else self._base_files()
            if self.runtime == "int8" or "int8_tag" in kw or len(files) >= self.settings.int8_min_images:
                kw["calibration"] = calibration_sample(files, CALIBRATION_IMAGES + HELD_IMAGES)
        return get_encoder(self.backbone, device=self.device, weights=self.weights, checkpoint=self.checkpoint,
                           settings=self.settings, **kw)


def calibration_sample(files: Sequence[Path], n: int, seed: int = 0) -> list[Path]:
    """Up to ``n`` of ``files``, a seeded random sample (the same for the same folder)."""
    ordered = sorted(files)
    if len(ordered) <= n:
        return ordered
    rng = np.random.default_rng(seed)
    return [ordered[i] for i in sorted(rng.choice(len(ordered), size=n, replace=False).tolist())]
