"""The embedding pipeline: decode + resize in threads while the model runs, in input order.

Everything users notice about a long embedding job -- overlap of decoding with the model, one bad
file never killing the job, progress, L2-normalised output -- lives here once, whatever backbone
or runtime computes the features.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ImageDecodeError
from ..progress import Counter, ProgressArg
from .preprocess import ImageLike, Preprocess, single_threaded_torch_worker

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]  # (B, H, W, 3) uint8 -> (B, dim) float32 raw features
Failures = list[tuple[int, ImageDecodeError]]


@dataclass
class EmbedResult:
    """Embeddings of the decodable subset of a path list, with the reason for each file left out."""

    vectors: np.ndarray  # (m, dim) float32, rows L2-normalised
    kept: np.ndarray  # (m,) int64 indices into the input paths
    failures: list[tuple[int, str]] = field(default_factory=list)  # (index, one-line reason)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def cpu_count() -> int:
    """Cores this process may use (cgroup/affinity aware, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def decode_workers_for(cores: int) -> int:
    """Decoding is ~10-20% of a small CNN's CPU time: one thread hides it; more only steal the
    model's cores. Big machines get a few more (many small JPEGs per batch)."""
    return 1 if cores <= 4 else min(8, cores // 4)


def _safe_prepare(pre: Preprocess, item: ImageLike) -> np.ndarray | ImageDecodeError:
    try:
        return pre.load(item)
    except ImageDecodeError as exc:
        return exc
    except Exception as exc:  # a bug in resize etc.: still one bad image must not kill a 1M-image job
        return ImageDecodeError(f"cannot read {item!s}: {type(exc).__name__}: {exc}")


@dataclass
class Batch:
    indices: list[int]
    array: np.ndarray  # (b, H, W, 3) uint8
    failures: Failures


def iter_batches(items: Sequence[ImageLike], pre: Preprocess, batch_size: int, workers: int,
                 pin: bool = False) -> Iterator[Batch]:
    """Yield batches in input order while up to ~2 batches ahead are decoding in the background.

    Pillow releases the GIL while decoding and resampling, so threads overlap with the model
    without the fork/pickle cost of worker processes (which dominates for the small batches a
    search query or a UI upload makes). ``pin`` allocates page-locked host memory for CUDA copies.
    """
    n = len(items)
    if n == 0:
        return
    size = pre.size
    lookahead = max(batch_size * 2, workers * 4)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imrs-decode",
                              initializer=single_threaded_torch_worker) if workers > 0 else None
    pending: deque[tuple[int, Future[np.ndarray | ImageDecodeError]]] = deque()
    next_submit = 0

    def submit_until(limit: int) -> None:
        nonlocal next_submit
        while next_submit < n and next_submit < limit:
            assert pool is not None
            pending.append((next_submit, pool.submit(_safe_prepare, pre, items[next_submit])))
            next_submit += 1

    try:
        done = 0
        while done < n:
            if pool is not None:
                submit_until(done + lookahead)
            idx: list[int] = []
            arrays: list[np.ndarray] = []
            fails: Failures = []
            while done < n and len(idx) + len(fails) < batch_size:
                if pool is not None:
                    i, fut = pending.popleft()
                    res = fut.result()
                    submit_until(done + 1 + lookahead)
                else:
                    i, res = done, _safe_prepare(pre, items[done])
                done += 1
                if isinstance(res, ImageDecodeError):
                    fails.append((i, res))
                else:
                    idx.append(i)
                    arrays.append(res)
            if arrays:
                if pin:
                    import torch

                    t = torch.empty((len(arrays), size, size, 3), dtype=torch.uint8).pin_memory()
                    np.stack(arrays, out=t.numpy())
                    arr = t.numpy()
                else:
                    arr = np.stack(arrays)
            else:
                arr = np.empty((0, size, size, 3), dtype=np.uint8)
            yield Batch(idx, arr, fails)
    finally:
        if pool is not None:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def embed_items(items: Sequence[ImageLike], runner: Runner, pre: Preprocess, dim: int, batch_size: int, *,
                concurrency: int, decode_workers: int, pin: bool, progress: ProgressArg, skip_errors: bool,
                desc: str) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(raw features (m, dim), kept indices (m,), failures) for ``items``, in input order.

    With ``skip_errors`` an undecodable item is logged and reported; without, the first one raises.
    """
    n = len(items)
    bs = max(1, int(batch_size))
    feats: list[np.ndarray] = []
    kept: list[int] = []
    failures: list[tuple[int, str]] = []
    bar = Counter(progress, desc, n)

    def collect(indices: list[int], out: np.ndarray | None, fails: Failures) -> None:
        if fails:
            if not skip_errors:
                raise fails[0][1]
            for i, exc in fails:
                log.warning("%s", exc)
                failures.append((i, str(exc)))
        if out is not None and len(indices):
            feats.append(out)
            kept.extend(indices)
        bar.update(len(indices) + len(fails))

    try:
        if concurrency > 1 and n > 1:
            _run_parallel(items, runner, pre, bs, concurrency, skip_errors, collect)
        else:
            # A handful of images: decode inline, a thread pool would cost more than it hides.
            workers = decode_workers if n > 4 else 0
            for batch in iter_batches(items, pre, bs, workers, pin=pin):
                if batch.failures and not skip_errors:
                    collect([], None, batch.failures)
                out = runner(batch.array) if batch.indices else None
                collect(batch.indices, out, batch.failures)
    finally:
        bar.close()
    raw = np.concatenate(feats) if feats else np.zeros((0, dim), dtype=np.float32)
    return raw.astype(np.float32, copy=False), np.asarray(kept, dtype=np.int64), failures


def _run_parallel(items: Sequence[ImageLike], runner: Runner, pre: Preprocess, bs: int, k: int,
                  skip_errors: bool, collect: Callable[[list[int], np.ndarray | None, Failures], None]) -> None:
    """``k`` workers, each decoding a whole batch and then running the model on it.

    The workers drift out of phase by themselves, so while one decodes the others compute;
    there is no hand-off queue and no per-op thread barrier. Results are collected in order.
    """
    n = len(items)
    bs = max(1, min(bs, -(-n // k)))  # small jobs: every worker gets a share

    def work(start: int) -> tuple[list[int], np.ndarray | None, Failures]:
        idx: list[int] = []
        arrays: list[np.ndarray] = []
        fails: Failures = []
        for i in range(start, min(n, start + bs)):
            res = _safe_prepare(pre, items[i])
            if isinstance(res, ImageDecodeError):
                fails.append((i, res))
                if not skip_errors:
                    return idx, None, fails
            else:
                idx.append(i)
                arrays.append(res)
        out = runner(np.stack(arrays)) if arrays else None
        return idx, out, fails

    starts = iter(range(0, n, bs))
    pending: deque[Future[Any]] = deque()
    with ThreadPoolExecutor(max_workers=k, thread_name_prefix="imrs-embed",
                            initializer=single_threaded_torch_worker) as pool:
        try:
            for start in starts:
                pending.append(pool.submit(work, start))
                if len(pending) >= k + 1:
                    break
            while pending:
                idx, out, fails = pending.popleft().result()
                nxt = next(starts, None)
                if nxt is not None:
                    pending.append(pool.submit(work, nxt))
                collect(idx, out, fails)
        finally:
            for fut in pending:
                fut.cancel()
