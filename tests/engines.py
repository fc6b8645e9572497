"""Real engines as separate processes on loopback, for the tests: a Milvus standalone server
(``milvus==2.3.5`` in its own virtual environment, created once under the test cache), a Milvus
Lite gRPC server, and a Ray head. Each binds free ports on 127.0.0.1 only, is waited for until it
answers, and is stopped by the process ids it started (its own process group): never ``ray stop``,
which would end every Ray process on the machine.

Usable without pytest (``python -m tests.engines ray|milvus|lite`` starts one and prints its
address until Ctrl+C), which is how the misconfigured-Ray cases were first reproduced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MILVUS_VERSION = "2.3.5"
#: Components of a Milvus standalone that register an address; all pinned to loopback.
MILVUS_COMPONENTS = ("proxy", "rootCoord", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
#: Ports the 2.3 standalone's embedded etcd always binds (client, peer).
MILVUS_FIXED_PORTS = (2379, 2380)
CACHE = Path(os.environ.get("IMRS_TEST_CACHE") or Path.home() / ".cache" / "imrs-test")


class EngineUnavailable(RuntimeError):
    """An engine could not be installed or started (the fixture fails in CI, skips elsewhere)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Engine:
    """A started engine: its address, the process it started (leader of its own group), its log."""

    address: str
    proc: subprocess.Popen[bytes]
    log: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace: float = 20.0) -> None:
        """TERM the process group this engine started, KILL what is left after ``grace`` seconds,
        and any process that left the group but still names this engine's own folder."""
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for pid in _pids_mentioning(str(self.workdir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids_mentioning(text: str) -> list[int]:
    """Processes of this user whose command line names ``text`` (an engine's own temp folder):
    what daemonised itself out of the group. Only ever this engine's folder, never a broad name."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if d.stat().st_uid != os.getuid():
                continue
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append(int(d.name))
    return out


def _spawn(argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    log = workdir / "engine.log"
    fh = open(log, "ab")  # noqa: SIM115 - handed to the child; closed with it
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    fh.close()
    return proc, log


def _ready(eng: Engine, what: str, *waits: Callable[[], None]) -> Engine:
    """``eng`` once every wait passed; else stopped, and one error carrying the tail of its log."""
    try:
        for wait in waits:
            wait()
    except EngineUnavailable as exc:
        tail = eng.log_tail()
        eng.stop()
        raise EngineUnavailable(f"{what} did not start: {exc}\n{tail}") from exc
    return eng


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineUnavailable(f"exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.3)
    raise EngineUnavailable(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


# -- Milvus ------------------------------------------------------------------------------------------
def milvus_server_bin() -> Path:
    """``milvus-server`` from ``milvus==2.3.5`` in its own venv under the test cache (created once:
    its pinned dependencies must not meet the project's)."""
    venv = CACHE / "milvus-venv"
    exe = venv / "bin" / "milvus-server"
    if exe.exists():
        return exe
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        f"milvus=={MILVUS_VERSION}"], check=True, capture_output=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise EngineUnavailable(f"cannot install milvus=={MILVUS_VERSION} into {venv}: {exc} "
                                f"{detail.decode(errors='replace')[-400:]}") from exc
    return exe


def start_milvus_server(timeout: float = 240.0) -> Engine:
    """A Milvus standalone (embedded etcd, local storage) whose components all register on loopback."""
    exe = milvus_server_bin()
    for fixed in MILVUS_FIXED_PORTS:  # its embedded etcd cannot move: one standalone per machine
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", fixed), timeout=1):
            raise EngineUnavailable(f"port {fixed} (the embedded etcd of a Milvus standalone) is taken: another "
                                    f"Milvus 2.3 standalone runs on this machine")
    workdir = Path(tempfile.mkdtemp(prefix="imrs-milvus-"))
    port = free_port()
    argv = [str(exe), "--data", str(workdir / "data"), "--proxy-port", str(port)]
    for comp in MILVUS_COMPONENTS:
        argv += ["--extra-config", f"{comp}.ip=127.0.0.1"]
    proc, log = _spawn(argv, workdir)
    eng = Engine(f"http://127.0.0.1:{port}", proc, log, workdir)
    return _ready(eng, f"Milvus {MILVUS_VERSION}", lambda: _wait_port(port, proc, timeout),
                  lambda: _wait_milvus(eng.address, proc, timeout))


def start_milvus_lite_server(timeout: float = 60.0) -> Engine:
    """``milvus-lite server`` (the project's own milvus-lite) as a separate gRPC process."""
    exe = Path(sys.executable).parent / "milvus-lite"
    if not exe.exists():
        raise EngineUnavailable(f"{exe} is missing: pip install 'imrs[scale]'")
    workdir = Path(tempfile.mkdtemp(prefix="imrs-milvus-lite-"))
    port = free_port()
    proc, log = _spawn([str(exe), "server", "--data-dir", str(workdir / "data"), "--host", "127.0.0.1",
                        "--port", str(port)], workdir)
    eng = Engine(f"http://127.0.0.1:{port}", proc, log, workdir)
    return _ready(eng, "milvus-lite server", lambda: _wait_port(port, proc, timeout),
                  lambda: _wait_milvus(eng.address, proc, timeout))


def _wait_milvus(uri: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until a client can list collections (the proxy listens well before the coordinators serve)."""
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineUnavailable(f"exited with {proc.returncode}")
        try:
            client = MilvusClient(uri=uri, timeout=10)
            client.list_collections()
            client.close()
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(1.0)
    raise EngineUnavailable(f"not healthy after {timeout:.0f} s: {last}")


# -- Ray ---------------------------------------------------------------------------------------------
#: What a head on loopback needs in its environment (and a driver in its own): without it Ray
#: registers nodes under the machine's other address, not the 127.0.0.1 it was given.
#: Token auth is off unless a test turns it on: a token file left in ~/.ray (another user of the
#: machine) would otherwise switch it on for the head.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_AUTH_MODE": "disabled"}


def start_ray_head(num_cpus: int = 2, env: dict[str, str] | None = None, timeout: float = 90.0) -> Engine:
    """``ray start --head --block`` on 127.0.0.1 with its own temp dir and free ports for every
    listener, in its own process group. ``env`` replaces RAY_LOOPBACK_ENV (to start a head the
    wrong way on purpose)."""
    exe = Path(sys.executable).parent / "ray"
    if not exe.exists():
        raise EngineUnavailable(f"{exe} is missing: pip install 'imrs[scale]'")
    workdir = Path(tempfile.mkdtemp(prefix="imrs-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    # the worker port range must not hold any of the other ports (Ray refuses to start otherwise)
    while True:
        gcs, nm, om, client, agent_l, agent_g, metrics, rtenv, wlo = free_ports(9)
        if wlo + 60 < 65536 and not any(wlo <= p <= wlo + 60 for p in (gcs, nm, om, client, agent_l, agent_g,
                                                                        metrics, rtenv)):
            break
    argv = [str(exe), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
            "--temp-dir", str(workdir), "--num-cpus", str(num_cpus), "--num-gpus", "0",
            "--include-dashboard", "false", "--disable-usage-stats",
            "--object-store-memory", str(256 * 2**20),
            "--node-manager-port", str(nm), "--object-manager-port", str(om),
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_l),
            "--dashboard-agent-grpc-port", str(agent_g), "--metrics-export-port", str(metrics),
            "--runtime-env-agent-port", str(rtenv), "--min-worker-port", str(wlo),
            "--max-worker-port", str(wlo + 60)]
    use_env = RAY_LOOPBACK_ENV if env is None else env
    proc, log = _spawn(argv, workdir, env=use_env)
    eng = Engine(f"127.0.0.1:{gcs}", proc, log, workdir, env=dict(use_env))
    return _ready(eng, "Ray head", lambda: _wait_port(gcs, proc, timeout),
                  lambda: _wait_ray_node(workdir, proc, timeout))


def _wait_ray_node(workdir: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the head's raylet is up (its socket exists): a driver joining earlier finds no node."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineUnavailable(f"exited with {proc.returncode}")
        if list(workdir.glob("session_*/sockets/raylet*")):
            return
        time.sleep(0.3)
    raise EngineUnavailable(f"no raylet after {timeout:.0f} s")


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "ray"
    start = {"ray": start_ray_head, "milvus": start_milvus_server, "lite": start_milvus_lite_server}[what]
    eng = start()
    print(eng.address, "pid", eng.proc.pid, "dir", eng.workdir, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a TERM stops the engine too
    try:
        while eng.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        eng.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

