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

import contextlib
import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Settings
from ..errors import IMRSError
from ..progress import Counter, ProgressArg

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


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(address: str | None = None, num_cpus: int | None = None, probe: bool = True) -> bool:
    """Connect to ``address`` (a cluster), or start a local Ray; reuse one already running in this
    process. Returns True when this call started or joined it. A cluster is probed first
    (``probe_cluster``): what would make ``ray.init`` retry for minutes fails here in seconds."""
    if address and address.strip() != "auto":
        if _is_loopback(address):
            _driver_on_loopback()  # before Ray is imported: it reads the switch once
        ray = _ray()
        if ray.is_initialized():
            return False
        if probe:
            probe_cluster(address)
    else:
        ray = _ray()
        if ray.is_initialized():
            return False
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        kw["address"] = address
        if _is_loopback(address):
            kw["_node_ip_address"] = "127.0.0.1"
    else:
        kw["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
        # Ray nices its workers (15) by default; on a machine it shares with the driver and other
        # programs that starves the encoder actors, which are the whole point of this run
        kw["_system_config"] = {"worker_niceness": 0}
        if num_cpus:
            kw["num_cpus"] = num_cpus
    for attempt in (1, 2):
        try:
            with _quiet_native_logs():
                ray.init(**kw)
            return True
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ... all mean "no Ray here"
            ray.shutdown()  # a local start that timed out (a busy machine) leaves a half-made session
            if address or attempt == 2:
                raise IMRSError(f"cannot start or join Ray{f' at {address}' if address else ''}: "
                                f"{_first_line(exc)}") from exc
            log.warning("starting a local Ray failed (%s); trying once more", _first_line(exc))
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet_native_logs() -> Iterator[None]:
    """Ray's C++ core writes its connection retries straight to file descriptor 2; unless IMRS
    logs at debug level (``--debug``) they go to /dev/null while Ray starts or joins."""
    if logging.getLogger("imrs").isEnabledFor(logging.DEBUG) or logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


#: Seconds to wait for a Ray cluster's port to accept a connection before giving up.
CONNECT_TIMEOUT_S = 5.0
_ADDRESS_RE = re.compile(r"(ray://)?\[?([^\]/]+?)\]?:(\d+)")


def _split(address: str) -> tuple[str, str, int] | None:
    m = _ADDRESS_RE.fullmatch(address.strip())
    return (m.group(1) or "", m.group(2), int(m.group(3))) if m else None


def _is_loopback(address: str) -> bool:
    parts = _split(address)
    return parts is not None and (parts[1] in ("localhost", "::1") or parts[1].startswith("127."))


def _driver_on_loopback() -> None:
    """A cluster on 127.0.0.1 is on this machine, and this driver must join it as 127.0.0.1:
    Ray otherwise replaces a loopback address by the machine's network address (where nothing
    listens) and retries for minutes. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's switch for
    that; it is read when Ray is imported, so an already imported Ray gets the same value set."""
    from ..config import steer_library_env

    steer_library_env(LOOPBACK_ENV, "0")
    import sys

    consts = sys.modules.get("ray._private.ray_constants")
    if consts is not None:
        consts.ENABLE_RAY_CLUSTER = False


def _check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds, with one line, when a ``host:port`` address does not answer, or is the
    ``ray://`` Ray Client form: ``ray.init`` would otherwise retry for minutes. ``auto`` and other
    forms go to Ray as is."""
    parts = _split(address)
    if parts is None:
        return
    scheme, host, port = parts
    if scheme:
        raise IMRSError(f"{address} is a Ray Client address, which IMRS does not use (Ray Data needs its driver "
                        f"on a cluster node): run imrs on a node of the cluster with --ray-address {host}:<GCS port> "
                        f"(the address `ray start --head` printed, 6379 by default)")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise IMRSError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from exc


#: How long the probe waits between asks while a cluster has no live node yet.
NODE_WAIT_S = 0.5


@dataclass
class ClusterInfo:
    """What ``probe_cluster`` learned: the alive nodes' addresses and total resources."""

    address: str
    nodes: list[str]
    cpus: float
    gpus: float


def probe_cluster(address: str, timeout: float | None = None) -> ClusterInfo:
    """Ask the cluster's GCS for its nodes, over plain gRPC with the token this driver would send,
    within ``timeout`` seconds in all: a dead or foreign port, a missing or wrong auth token, or a
    driver that would not be on any of its nodes each end here in one line."""
    from ..config import ray_connect_timeout

    timeout = float(timeout if timeout is not None else ray_connect_timeout())
    start = time.monotonic()
    _check_reachable(address, timeout=min(timeout, CONNECT_TIMEOUT_S))
    parts = _split(address)
    if parts is None:
        raise IMRSError(f"--ray-address must be host:port (the GCS address `ray start --head` printed), "
                        f"not {address!r}")
    _, host, port = parts
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    meta = _auth_metadata()
    left = max(0.5, timeout - (time.monotonic() - start))
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        if not meta:
            # a token auth cluster on this machine uses the token file its head found; this driver
            # has the same file but token mode off: switch it on, as Ray's own local start does
            try:
                reply = stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=left)
            except grpc.RpcError as exc:
                spare = _auth_metadata(ignore_mode=True)
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED or not spare:
                    raise
                meta = spare
                reply = stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=left, metadata=meta)
                _enable_token_mode()
                log.warning("the Ray cluster at %s requires an auth token: using this machine's (token "
                            "auth switched on for this driver; set RAY_AUTH_MODE=token to say so)", address)
        else:
            reply = stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=left, metadata=meta)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            how = ("the token this driver has is not the cluster's" if meta else
                   "this driver has none")
            raise IMRSError(f"the Ray cluster at {address} requires an auth token and {how}: set RAY_AUTH_TOKEN "
                            f"(or ~/.ray/auth_token) to the cluster's token") from exc
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise IMRSError(f"the Ray cluster at {address} did not answer within {timeout:.0f} s "
                            f"(is it a Ray GCS port?)") from exc
        raise IMRSError(f"{address} answers, but not as a Ray cluster's GCS ({code.name if code else exc}): "
                        f"give the address `ray start --head` printed") from exc
    finally:
        channel.close()
    alive = [n for n in reply.node_info_list if n.state == 0]  # GcsNodeInfo.ALIVE
    if not alive:
        left = timeout - (time.monotonic() - start)
        if left > NODE_WAIT_S:  # a head that has just started registers its own node a moment later
            time.sleep(NODE_WAIT_S)
            return probe_cluster(address, left - NODE_WAIT_S)
        raise IMRSError(f"the Ray cluster at {address} has no live node (waited {timeout:.0f} s)")
    info = ClusterInfo(address, sorted({n.node_manager_address for n in alive}),
                       float(sum(n.resources_total.get("CPU", 0.0) for n in alive)),
                       float(sum(n.resources_total.get("GPU", 0.0) for n in alive)))
    mine = "127.0.0.1" if _is_loopback(address) else _driver_ip(host, port)
    if mine not in info.nodes:
        hint = (f"on this machine, start the head with {LOOPBACK_ENV}=0 and --node-ip-address 127.0.0.1"
                if mine.startswith("127.") or any(n.startswith("127.") for n in info.nodes)
                else "run imrs on one of its nodes")
        raise IMRSError(f"this driver ({mine}) is not a node of the Ray cluster at {address} (nodes: "
                        f"{', '.join(info.nodes)}); a driver must run on a node: {hint}")
    return info


def _auth_metadata(ignore_mode: bool = False) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata Ray itself would send (its token loader: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token), empty when token auth is off for this driver (unless ``ignore_mode``: the
    token it would use if it were on)."""
    try:
        from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, get_authentication_mode

        loader = AuthenticationTokenLoader.instance()
        if ignore_mode:
            if get_authentication_mode() == AuthenticationMode.TOKEN or not loader.has_token(ignore_auth_mode=True):
                return ()
            return (("authorization", f"Bearer {loader.get_raw_token(ignore_auth_mode=True)}"),)
        if get_authentication_mode() != AuthenticationMode.TOKEN:
            return ()
        return tuple(loader.get_token_for_http_header().items()) if loader.has_token() else ()
    except Exception:  # noqa: BLE001 - an older Ray without token auth
        return ()


def _enable_token_mode() -> None:
    """Token auth on for this process and the workers it starts (Ray's own switch)."""
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    except Exception:  # noqa: BLE001 - an older Ray: the environment variable alone
        from ..config import steer_library_env

        steer_library_env("RAY_AUTH_MODE", "token")


def _driver_ip(host: str, port: int) -> str:
    """The address this machine would use to reach ``host`` (the one Ray registers a driver by)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])
    return "127.0.0.1"


def fit_to_cluster(info: ClusterInfo, concurrency: int, num_cpus: float, num_gpus: float) -> float:
    """CPUs per actor that let ``concurrency`` actors and the file-reading tasks run together on
    the cluster: the ask lowered when it would take every CPU (the reads would then wait forever),
    a one-line refusal when even that cannot fit or the GPUs are not there."""
    if num_gpus > 0 and concurrency * num_gpus > info.gpus + 1e-9:
        raise IMRSError(f"the Ray cluster at {info.address} has {info.gpus:g} GPU(s); {concurrency} actors x "
                        f"{num_gpus:g} GPU need {concurrency * num_gpus:g}: lower --ray-concurrency or --ray-gpus")
    free = info.cpus - READ_CPUS
    if concurrency * num_cpus <= free + 1e-9:
        return num_cpus
    fitted = math.floor(free / concurrency * 100) / 100
    if fitted < MIN_ACTOR_CPUS:
        raise IMRSError(f"the Ray cluster at {info.address} has {info.cpus:g} CPU(s): too few for {concurrency} "
                        f"encoder actors and the file reads; lower --ray-concurrency")
    log.warning("the Ray cluster at %s has %g CPU(s): %d actors x %g CPU would leave none for reading the "
                "files; using %g CPU per actor", info.address, info.cpus, concurrency, num_cpus, fitted)
    return fitted


#: CPUs each file-reading task asks for (I/O: a fraction), and the least an encoder actor may get.
READ_CPUS = 0.25
MIN_ACTOR_CPUS = 0.1


class EmbedActor:
    """One encoder per actor; ``__call__`` embeds a batch of file contents (Ray Data UDF)."""

    def __init__(self, backbone: str, device: str | None, weights: str, checkpoint: str | None,
                 threads: int, settings: Settings | None = None) -> None:
        import torch

        from ..encoders import get_encoder

        torch.set_num_threads(max(1, threads))
        self.encoder = get_encoder(backbone, device=device, weights=weights, checkpoint=checkpoint, settings=settings)

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
    0.25 to share one GPU between four) take ``batch_size`` images per call. ``settings`` (the
    collection's) travel to the actors, so weights are found where the driver was told; a folder
    left unset there (the user cache) is resolved on each node.
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
    settings: Settings | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise IMRSError(f"--ray-concurrency must be >= 1, got {self.concurrency}")
        if self.num_gpus < 0 or self.num_cpus <= 0:
            raise IMRSError("--ray-gpus must be >= 0 and CPUs per actor > 0")
        self._actor_cpus: float | None = None  # the CPU ask fitted to the cluster (``prepare``)

    def prepare(self) -> None:
        """Probe and join the cluster (or start a local Ray) and fit the actors' ask to it: called
        before any other work, so a misconfigured cluster fails first, in seconds."""
        if self._actor_cpus is not None:
            return
        num_cpus = self.num_cpus
        if self.address and self.address.strip() != "auto":
            if _is_loopback(self.address):
                _driver_on_loopback()
            if not _ray().is_initialized():
                timeout = self.settings.ray_connect_timeout if self.settings is not None else None
                num_cpus = fit_to_cluster(probe_cluster(self.address, timeout), self.concurrency, self.num_cpus,
                                          self.num_gpus)
        # a local Ray gets one logical CPU more than the actors take, so read tasks always run
        # (with every CPU held by an encoder actor the reads would wait forever)
        ensure_ray(self.address, num_cpus=max(os.cpu_count() or 1, math.ceil(self.concurrency * self.num_cpus) + 1),
                   probe=False)
        if self.address and self.address.strip() == "auto":
            res = _ray().cluster_resources()
            num_cpus = fit_to_cluster(ClusterInfo("auto", [], float(res.get("CPU", 0)), float(res.get("GPU", 0))),
                                      self.concurrency, self.num_cpus, self.num_gpus)
        self._actor_cpus = num_cpus

    def embed_paths(self, paths: Sequence[str | os.PathLike[str]], batch_size: int | None = None,
                    progress: ProgressArg = False) -> Any:
        from ..encoders import EmbedResult
        from ..encoders.pipeline import l2_normalise

        ray = _ray()
        n = len(paths)
        dim = _backbone_dim(self.backbone)
        if not n:
            return EmbedResult(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), [])
        self.prepare()
        num_cpus = float(self._actor_cpus or self.num_cpus)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver shows one bar, the same as the local engine
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset execution banners
        strs = [os.fspath(p) for p in paths]
        index_of = {os.path.abspath(p): i for i, p in enumerate(strs)}
        bs = int(batch_size or self.batch_size or DEFAULT_BATCH_SIZE)
        device = self.device or ("cuda" if self.num_gpus > 0 else "cpu")
        # reads are I/O: a quarter CPU each, so they are never starved by the encoder actors
        ds = ray.data.read_binary_files(strs, include_paths=True, ignore_missing_paths=True, num_cpus=READ_CPUS)
        ds = ds.map_batches(EmbedActor, batch_size=bs, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=self.concurrency),
                            num_cpus=num_cpus, num_gpus=self.num_gpus,
                            fn_constructor_kwargs={"backbone": self.backbone, "device": device,
                                                   "weights": self.weights, "checkpoint": self.checkpoint,
                                                   "threads": max(1, int(num_cpus)), "settings": self.settings})
        vecs = np.zeros((n, dim), np.float32)
        ok = np.zeros(n, bool)
        seen = np.zeros(n, bool)
        failures: list[tuple[int, str]] = []
        bar = Counter(progress, f"embed {self.backbone} on ray", n)
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
