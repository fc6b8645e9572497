"""Small on-disk caches that make a repeated text query cheap in a brand-new process.

Every ``imrs search --text`` from a shell is a new Python process: whatever the text path needs
must come off disk quickly or it is recomputed every time. Two things are collection-independent
and live in the user cache (``$IMRS_CACHE_DIR`` or ``~/.cache/imrs/textsearch``):

- ``SentenceCache``: sentence embeddings by exact text (queries, sense glosses, metadata strings),
  so a repeated query never loads the sentence model at all;
- the ImageNet class-gloss embeddings (``class_embeddings``).

Files are NPZ without pickles, written atomically; a damaged or foreign file is ignored and
rebuilt. Two processes writing at once can only lose each other's newest entries (both merge
what is on disk before writing), never corrupt the file. They are written off the query path
(``later``): a server answering a new text does not wait for a file write, and a one-shot CLI
process still writes them when it exits.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..fsutil import atomic_savez

log = logging.getLogger(__name__)

EmbedFn = Callable[[Sequence[str]], np.ndarray]


#: Seconds a cache change waits before it is written; changes meanwhile share the one write.
WRITE_DELAY = 2.0


class _WriteBehind:
    """Runs cache writes in a daemon thread, ``WRITE_DELAY`` after the first request; what is still
    pending when the process exits is written then. They are caches: a crash before the write
    only costs recomputing them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # one flush at a time: the flush at exit waits for one the timer thread has under way (a
        # daemon thread is abandoned mid-write when the interpreter ends)
        self._writing = threading.Lock()
        self._pending: dict[Callable[[], None], None] = {}
        self._timer: threading.Timer | None = None

    def later(self, write: Callable[[], None]) -> None:
        with self._lock:
            self._pending[write] = None
            if self._timer is None:
                self._timer = threading.Timer(WRITE_DELAY, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._writing:
            with self._lock:
                pending, self._pending = list(self._pending), {}
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = None
            for write in pending:
                try:
                    write()
                except Exception:  # noqa: BLE001 - a cache that cannot be written costs only speed
                    log.warning("could not write a text-search cache", exc_info=log.isEnabledFor(logging.DEBUG))


_WRITER = _WriteBehind()
atexit.register(_WRITER.flush)


def later(write: Callable[[], None]) -> None:
    """Write a cache off the query path (see the module docstring)."""
    _WRITER.later(write)


def flush() -> None:
    """Write every pending cache now (a test, or a caller about to copy the state)."""
    _WRITER.flush()


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where text search keeps its machine-wide files: under ``cache_dir`` (a collection's
    ``settings.model_cache_dir()``), else the environment's model cache."""
    if cache_dir is None:
        from ..encoders.weights import user_cache_dir

        cache_dir = user_cache_dir()
    return cache_dir / "textsearch"


def _load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring damaged cache %s: %s", path, exc)
        return None


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    try:
        atomic_savez(path, **arrays)
    except OSError as exc:  # a read-only home only costs speed
        log.warning("cannot write cache %s: %s", path, exc)


class SentenceCache:
    """text -> unit sentence embedding, in memory and in one NPZ (at most ``limit`` entries; the
    oldest are dropped first)."""

    def __init__(self, path: Path | None, embed: EmbedFn, model: str, dim: int, limit: int = 50_000) -> None:
        self.path = path
        self.embed_fn = embed
        self.model = model
        self.dim = dim
        self.limit = limit
        self._lock = threading.Lock()
        self._mem: dict[str, np.ndarray] | None = None
        self._dirty = False

    def _load(self) -> dict[str, np.ndarray]:
        if self._mem is None:
            self._mem = {}
            z = _load_npz(self.path, ("model", "texts", "vectors")) if self.path else None
            if z is not None and str(z["model"]) == self.model and z["vectors"].shape[1:] == (self.dim,):
                self._mem = dict(zip(z["texts"].tolist(), z["vectors"], strict=True))
        return self._mem

    def get(self, texts: Sequence[str], save: bool = True) -> np.ndarray:
        """(n, dim) embeddings; only texts never seen before reach the sentence model."""
        texts = [str(t) for t in texts]
        with self._lock:
            mem = self._load()
            missing = list(dict.fromkeys(t for t in texts if t not in mem))
        if missing:
            vecs = np.asarray(self.embed_fn(missing), dtype=np.float32)
            with self._lock:
                mem.update(zip(missing, vecs, strict=True))
                self._dirty = True
            if save:
                later(self.save)
        with self._lock:
            return (np.stack([mem[t] for t in texts]) if texts
                    else np.zeros((0, self.dim), np.float32))

    def __contains__(self, text: str) -> bool:
        with self._lock:
            return text in self._load()

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            if not self._dirty or self._mem is None:
                return
            on_disk = _load_npz(self.path, ("model", "texts", "vectors"))
            merged: dict[str, np.ndarray] = {}
            if on_disk is not None and str(on_disk["model"]) == self.model:
                merged.update(zip(on_disk["texts"].tolist(), on_disk["vectors"], strict=True))
            merged.update(self._mem)
            items = list(merged.items())[-self.limit:]
            self._dirty = False
        if not items:
            return
        _save_npz(self.path, model=np.asarray(self.model), texts=np.asarray([t for t, _ in items]),
                  vectors=np.stack([v for _, v in items]).astype(np.float32))


def class_embeddings(texts: Callable[[], Sequence[str]], n: int, embed: EmbedFn, model: str, tag: str = "",
                     cache_dir: Path | None = None) -> np.ndarray:
    """Sentence embeddings of the ``n`` ImageNet class descriptions, computed once per machine (the
    key covers the model and a digest of the descriptions' source, ``tag``; ``texts()`` is only
    called when the cache misses). ``cache_dir``: see :func:`cache_root`."""
    key = hashlib.sha1(f"{model}\n{tag}\n{n}".encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"classes_{key}.npz"
    z = _load_npz(path, ("emb",))
    if z is not None and len(z["emb"]) == n:
        return z["emb"].astype(np.float32)
    emb = np.asarray(embed(list(texts())), dtype=np.float32)
    _save_npz(path, emb=emb)
    return emb
