"""Embedding on Ray: Ray Data reads the image files, an actor pool of IMRS encoders embeds them.

``RayEngine.embed_paths`` is a drop-in for ``Encoder.embed_paths``, so ``Collection.sync`` stays
the one place that decides what is new or changed and feeds catalog, NPZ caches and index. Why
this split:

* ``ray.data.read_binary_files`` spreads the file reads over the cluster (the paths must be
  readable from every node: a shared filesystem, or object storage mounted at the same path);
* each actor builds one encoder (``get_encoder``: model loaded once per actor, CPU or GPU as
  ``num_gpus`` says) and runs the very same decode + preprocessing + model code as the local
  engine on the bytes, which is why the vectors equal the local engine's;
* a file that does not decode is returned as a row with its one-line reason, never an exception,
  so one bad image cannot fail a million-image job; the driver reports it exactly like the local
  engine does (``EmbedResult.failures``).

The driver consumes the results as a stream (``iter_batches``), so its memory is the vectors it
returns plus one batch, and updates the same progress bar as the local engine.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import IMRSError

log = logging.getLogger(__name__)

#: Object store of a Ray that IMRS starts itself: the default (30% of RAM) would take gigabytes
#: from a shared machine for batches that need megabytes.
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20
#: Images per actor call when neither the caller nor the encoder says otherwise.
DEFAULT_BATCH_SIZE = 32


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs both; fail here, once, if it did not
    except ImportError as exc:
        raise IMRSError("the ray engine needs Ray Data: pip install 'imrs[scale]'") from exc
    return ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (a cluster), or start a local Ray; reuse one already running in this
    process. Returns True when this call started or joined it."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        kw["address"] = address
    else:
        kw["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
        # Ray nices its workers (15) by default; on a machine it shares with the driver and other
        # programs that starves the encoder actors, which are the whole point of this run
        kw["_system_config"] = {"worker_niceness": 0}
        if num_cpus:
            kw["num_cpus"] = num_cpus
    for attempt in (1, 2):
        try:
            ray.init(**kw)
            return True
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ... all mean "no Ray here"
            ray.shutdown()  # a local start that timed out (a busy machine) leaves a half-made session
            if address or attempt == 2:
                raise IMRSError(f"cannot start or join Ray{f' at {address}' if address else ''}: {exc}") from exc
            log.warning("starting a local Ray failed (%s); trying once more", str(exc).splitlines()[0][:200])
    return True


#: Seconds to wait for a Ray cluster's port to accept a connection before giving up.
CONNECT_TIMEOUT_S = 5.0


def _check_reachable(address: str) -> None:
    """Fail in seconds, with one line, when a ``host:port`` / ``ray://host:port`` address does not
    answer: ``ray.init`` would otherwise retry for minutes. ``auto`` and other forms go to Ray as is."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address.strip())
    if m is None:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise IMRSError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from exc


class EmbedActor:
    """One encoder per actor; ``__call__`` embeds a batch of file contents (Ray Data UDF)."""

    def __init__(self, backbone: str, device: str | None, weights: str, checkpoint: str | None,
                 threads: int) -> None:
        import torch

        from ..encoders import get_encoder

        torch.set_num_threads(max(1, threads))
        self.encoder = get_encoder(backbone, device=device, weights=weights, checkpoint=checkpoint)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        blobs = [bytes(b) for b in batch["bytes"]]
        res = self.encoder.embed_paths(blobs, batch_size=len(blobs))  # type: ignore[arg-type]
        vecs = np.zeros((len(paths), self.encoder.dim), np.float32)
        vecs[res.kept] = res.vectors
        errors = [""] * len(paths)
        for i, reason in res.failures:  # name the file, not "<1234 bytes>"
            errors[i] = reason.replace(f"<{len(blobs[i])} bytes>", paths[i])
        return {"path": np.asarray(paths, dtype=object), "vector": vecs, "error": np.asarray(errors, dtype=object)}


@dataclass
class RayEngine:
    """Embed with Ray Data; same call and result as ``Encoder.embed_paths``.

    ``concurrency`` actors (each ``num_cpus`` CPUs and ``num_gpus`` GPUs: 1 for a GPU per actor,
    0.25 to share one GPU between four) take ``batch_size`` images per call.
    """

    backbone: str
    device: str | None = None
    weights: str = "pretrained"
    checkpoint: str | None = None
    address: str | None = None
    batch_size: int | None = None
    concurrency: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise IMRSError(f"--ray-concurrency must be >= 1, got {self.concurrency}")
        if self.num_gpus < 0 or self.num_cpus <= 0:
            raise IMRSError("--ray-gpus must be >= 0 and CPUs per actor > 0")

    def embed_paths(self, paths: Sequence[str | os.PathLike[str]], batch_size: int | None = None,
                    progress: bool | Callable[[int, int], None] = False) -> Any:
        from ..encoders import EmbedResult
        from ..encoders.pipeline import _Progress, l2_normalise

        ray = _ray()
        n = len(paths)
        dim = _backbone_dim(self.backbone)
        if not n:
            return EmbedResult(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), [])
        # a local Ray gets one logical CPU more than the actors take, so read tasks always run
        # (with every CPU held by an encoder actor the reads would wait forever)
        ensure_ray(self.address, num_cpus=max(os.cpu_count() or 1, math.ceil(self.concurrency * self.num_cpus) + 1))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver shows one bar, the same as the local engine
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset execution banners
        strs = [os.fspath(p) for p in paths]
        index_of = {os.path.abspath(p): i for i, p in enumerate(strs)}
        bs = int(batch_size or self.batch_size or DEFAULT_BATCH_SIZE)
        device = self.device or ("cuda" if self.num_gpus > 0 else "cpu")
        # reads are I/O: a quarter CPU each, so they are never starved by the encoder actors
        ds = ray.data.read_binary_files(strs, include_paths=True, ignore_missing_paths=True, num_cpus=0.25)
        ds = ds.map_batches(EmbedActor, batch_size=bs, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=self.concurrency),
                            num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                            fn_constructor_kwargs={"backbone": self.backbone, "device": device,
                                                   "weights": self.weights, "checkpoint": self.checkpoint,
                                                   "threads": max(1, int(self.num_cpus))})
        vecs = np.zeros((n, dim), np.float32)
        ok = np.zeros(n, bool)
        seen = np.zeros(n, bool)
        failures: list[tuple[int, str]] = []
        bar = _Progress(progress, n, f"embed {self.backbone} on ray")
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for path, vec, err in zip(batch["path"], batch["vector"], batch["error"], strict=True):
                    i = index_of.get(os.path.abspath(_local(str(path))))
                    if i is None or seen[i]:
                        continue
                    seen[i] = True
                    if err:
                        log.warning("%s", err)
                        failures.append((i, str(err)))
                    else:
                        vecs[i], ok[i] = vec, True
                bar.update(len(batch["path"]))
        except Exception as exc:
            if isinstance(exc, IMRSError):
                raise
            raise IMRSError(f"Ray embedding failed: {str(exc).splitlines()[0][:300]}") from exc
        finally:
            bar.close()
        for i in np.flatnonzero(~seen).tolist():  # vanished between the folder scan and the read
            failures.append((i, f"cannot read {strs[i]}: file vanished"))
        failures.sort()
        kept = np.flatnonzero(ok)
        return EmbedResult(l2_normalise(vecs[kept]), kept.astype(np.int64), failures)


def _local(path: str) -> str:
    """Ray reports local files as plain paths (or with a ``local://`` scheme on some versions)."""
    return path[len("local://"):] if path.startswith("local://") else path


def _backbone_dim(backbone: str) -> int:
    from ..encoders import backbone_info

    return int(backbone_info(backbone).dim)
