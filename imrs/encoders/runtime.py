"""Ways to run an image model, from the float32 eager reference to the fastest measured path.

Every runtime takes the same input — a (B, H, W, 3) uint8 batch straight from the decode pipeline
— and returns (B, dim) float32 raw features, so the encoder does not care which one it holds:

- ``eager``: the family's module as-is, float32 (fp16 on CUDA). The accuracy reference.
- ``fused``: BatchNorm folded into the preceding convolution (torch.fx), channels_last. On CPU
  eager PyTorch spends a large part of a mobile CNN's time in separate BatchNorm kernels.
- ``onnx``: exported once (cached under the user cache dir, keyed by a hash of the weights),
  run by ONNX Runtime, whose CPU kernels for depthwise convolutions and fused conv+activation are
  much faster than eager PyTorch's. Normalisation happens inside the graph: the input is uint8.
- ``compile``: ``torch.compile`` (inductor); slow first call, offered for completeness.

Non-eager runtimes are checked against eager on two random images when built; a runtime that
disagrees (cosine < 0.999) or fails to build is dropped — with an error if it was asked for by name,
with a log line and the eager module if it was only the automatic choice.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IMRSError
from ..fsutil import atomic_path, atomic_write_text
from .pipeline import Runner, cpu_count
from .place import WeightsPlace
from .preprocess import Preprocess
from .registry import LoadedBackbone

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

log = logging.getLogger(__name__)

ONNX_OPSET = 17
_ADAPTER_VERSION = "uint8-nhwc-v1"  # bump when InputAdapter's graph changes: invalidates caches
VERIFY_MIN_COSINE = 0.999


def _torch():
    import torch

    return torch


def make_input_adapter(model: nn.Module, pre: Preprocess, channels_last: bool) -> nn.Module:
    """uint8 NHWC -> normalised float NCHW -> ``model``.

    A permuted NHWC tensor *is* a channels_last NCHW tensor, so the channels_last path costs no copy.
    """
    torch = _torch()
    from torch import nn

    class InputAdapter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.channels_last = channels_last
            self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("scale", (1.0 / torch.tensor(pre.std, dtype=torch.float32)).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2).to(self.mean.dtype)
            if not self.channels_last:
                x = x.contiguous()
            return self.model((x - self.mean) * self.scale)

    return InputAdapter().eval()


def _in_chunks(fn: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, chunk: int | None) -> np.ndarray:
    if not chunk or len(batch) <= chunk:
        return fn(batch)
    return np.concatenate([fn(batch[i:i + chunk]) for i in range(0, len(batch), chunk)])


# On CPU the best model batch is small: a mobile CNN's activations for 4-8 images stay in cache,
# for 32 they do not (measured on EfficientNet-Lite0, 2 cores: eager 50 img/s at 4 vs 11 at 32;
# ONNX Runtime, 2 single-threaded sessions: 222 at 4 vs ~200 at 16). The pipeline still hands
# over larger batches (fewer thread hand-offs, coarser progress); runners split them up.
CPU_MICRO_BATCH_TORCH_CONV = 4
CPU_MICRO_BATCH_TORCH = 8
CPU_MICRO_BATCH_ONNX = 4


class TorchRunner:
    """Calls the module from the caller's thread; torch parallelises inside each op."""

    concurrency = 1

    def __init__(self, module: nn.Module, device: str, dtype: torch.dtype, micro_batch: int | None = None
                 ) -> None:
        self.module = module
        self.device = device
        self.dtype = dtype
        self.micro_batch = micro_batch

    def _one(self, batch: np.ndarray) -> np.ndarray:
        torch = _torch()
        x = torch.from_numpy(batch)
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            out = self.module(x)
            return out.float().cpu().numpy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return _in_chunks(self._one, batch, self.micro_batch)


def onnx_layout(cores: int) -> tuple[int, int]:
    """(concurrent sessions, intra-op threads each) for ``cores`` cores.

    Several single-threaded sessions working on different batches beat one session splitting each
    op across threads: no barrier per op (costly on small mobile-net layers and terrible on a busy
    machine, where one descheduled thread stalls all), and a worker decoding its next batch
    leaves the other cores to the model. Past 4 workers the per-session memory is not worth it.
    """
    workers = max(1, min(4, cores))
    return workers, max(1, cores // workers)


class OnnxRunner:
    """A pool of ONNX Runtime sessions; ``concurrency`` callers may run batches at the same time."""

    def __init__(self, path: Path, workers: int, threads: int, spinning: bool = False,
                 micro_batch: int | None = CPU_MICRO_BATCH_ONNX) -> None:
        import queue

        import onnxruntime as ort

        self.path = path

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning workers would keep every core busy between ops and starve the decode work.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.log_severity_level = 3
        self.path = path
        self.concurrency = workers
        self.threads = threads
        self.micro_batch = micro_batch
        first = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = first.get_inputs()[0].name
        self._sessions: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._sessions.put(first)
        self._opts = opts
        self._created = 1
        self._lock = threading.Lock()

    def _acquire(self) -> Any:
        import queue

        try:
            return self._sessions.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._created < self.concurrency:  # sessions are made on demand: small jobs need one
                import onnxruntime as ort

                self._created += 1
                return ort.InferenceSession(str(self.path), sess_options=self._opts,
                                            providers=["CPUExecutionProvider"])
        return self._sessions.get()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        sess = self._acquire()
        try:
            return _in_chunks(lambda b: np.asarray(sess.run(None, {self.input_name: np.ascontiguousarray(
                b, dtype=np.uint8)})[0], dtype=np.float32), batch, self.micro_batch)
        finally:
            self._sessions.put(sess)


# --------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every BatchNorm2d that directly follows a Conv2d folded into it.

    Works on any fx-traceable model; conv subclasses (e.g. TF-"same"-padding convs) are kept as
    leaves so their own forward still runs, with the folded weight and a new bias.
    """
    torch = _torch()
    import torch.fx as fx
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    if not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        return module
    module = copy.deepcopy(module).eval()

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d):
                return True
            return super().is_leaf_module(m, qualname)

    graph = _Tracer().trace(module)
    gm = fx.GraphModule(module, graph)
    mods = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module"
                and isinstance(mods.get(prev.target), nn.Conv2d) and len(prev.users) == 1):
            continue
        conv, bn = mods[prev.target], mods[node.target]
        if bn.running_mean is None or bn.running_var is None:
            continue
        with torch.no_grad():
            w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                        bn.eps, bn.weight, bn.bias)
        conv.weight = w
        conv.bias = b
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    log.debug("folded %d BatchNorm layers", folded)
    return gm.eval()


# --------------------------------------------------------------------------------------------
# ONNX export cache
# --------------------------------------------------------------------------------------------


def weights_hash(module: nn.Module) -> str:
    """Content hash of all parameters and buffers (names, shapes, dtypes, bytes)."""
    torch = _torch()
    h = hashlib.blake2b(digest_size=16)
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


_TMP_EXPORTS: list[str] = []
_TMP_LOCK = threading.Lock()


def scratch_dir() -> Path:
    """Exports of random-weight models (tests, benchmarks) never enter the persistent cache."""
    import atexit

    with _TMP_LOCK:
        if not _TMP_EXPORTS:
            d = tempfile.mkdtemp(prefix="imrs-onnx-")
            _TMP_EXPORTS.append(d)
            atexit.register(shutil.rmtree, d, True)
        return Path(_TMP_EXPORTS[0])


def onnx_path_for(name: str, module: nn.Module, pre: Preprocess, cache: Path | None) -> Path:
    """Where the export of ``module`` lives: in ``cache`` (the user cache's ``onnx`` folder), or
    in the scratch folder when None (random weights)."""
    torch = _torch()
    key = hashlib.blake2b(digest_size=8)
    key.update(f"{weights_hash(module)}|{pre}|{torch.__version__}|{ONNX_OPSET}|{_ADAPTER_VERSION}".encode())
    root = cache if cache is not None else scratch_dir()
    return root / f"{name}-{key.hexdigest()}.onnx"


def export_onnx(adapter: nn.Module, size: int, path: Path) -> Path:
    """Export (B, size, size, 3) uint8 -> (B, dim) with a dynamic batch axis; atomic write."""
    torch = _torch()
    import warnings

    if path.is_file():
        return path
    dummy = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            adapter, (dummy,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["images"], output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            do_constant_folding=True,
        )
    log.info("exported ONNX model to %s", path)
    return path


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _dtype_for(precision: str, device: str) -> torch.dtype:
    torch = _torch()
    if precision == "fp16":
        if not device.startswith("cuda"):
            raise IMRSError("precision 'fp16' needs CUDA; on CPU use 'fp32' or 'bf16'")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return torch.float32


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def _build_one(runtime: str, loaded: LoadedBackbone, pre: Preprocess, device: str, dtype: Any,
               name: str, cache: Path | None) -> Runner:
    torch = _torch()
    model = loaded.image_model.eval()
    micro = None
    if not device.startswith("cuda"):
        micro = CPU_MICRO_BATCH_TORCH_CONV if loaded.convnet else CPU_MICRO_BATCH_TORCH
    if runtime in ("eager", "fused", "compile"):
        # Folding BatchNorm (fused, compile) makes channels_last pay off on CPU too; plain eager
        # only uses channels_last on CUDA.
        net = model if runtime == "eager" else fold_batchnorm(model)
        cl = loaded.convnet and (runtime != "eager" or device.startswith("cuda"))
        adapter = make_input_adapter(net, pre, channels_last=cl).to(device=device, dtype=dtype)
        if cl:
            adapter = adapter.to(memory_format=torch.channels_last)
        if runtime == "compile":
            adapter = torch.compile(adapter, dynamic=True)
        return TorchRunner(adapter, device, dtype, micro)
    if runtime == "onnx":
        if device != "cpu":
            raise IMRSError("runtime 'onnx' runs on CPU (onnxruntime's CPU provider); use device='cpu'")
        if dtype != torch.float32:
            raise IMRSError("runtime 'onnx' is float32 only; use precision='fp32'")
        import onnxruntime  # noqa: F401  (fail early and clearly when missing)

        adapter = make_input_adapter(model, pre, channels_last=False).float().cpu()
        path = onnx_path_for(name, adapter, pre, cache)
        try:
            export_onnx(adapter, pre.size, path)
        except OSError as exc:  # read-only or full cache dir: export for this process only
            log.warning("cannot cache ONNX export in %s (%s); using a temporary file", path.parent, exc)
            path = export_onnx(adapter, pre.size, scratch_dir() / path.name)
        workers, threads = onnx_layout(cpu_count())
        return OnnxRunner(path, workers=workers, threads=threads)
    raise IMRSError(f"unknown runtime {runtime!r}")


def build_runner(loaded: LoadedBackbone, pre: Preprocess, device: str, precision: str, runtime: str,
                 *, weights: str, name: str, explicit: bool, place: WeightsPlace) -> tuple[Runner, str]:
    """(runner, runtime actually used). See the module docstring for the fallback rules. Exports of
    pretrained weights are cached in ``place``'s cache folder; ``place.verify_runtime`` False skips
    the comparison with eager."""
    dtype = _dtype_for(precision, device)
    cache = place.cache_dir / "onnx" if weights == "pretrained" else None
    if runtime == "eager":
        return _build_one("eager", loaded, pre, device, dtype, name, cache), "eager"
    try:
        check = place.verify_runtime
        if check and runtime == "onnx" and weights == "pretrained":
            # An export is verified once: its file name already pins weights, preprocessing, torch
            # and opset, so a marker beside it saves the eager reference pass on every later start.
            runner = _build_one(runtime, loaded, pre, device, dtype, name, cache)
            marker = Path(f"{runner.path}.verified")
            if marker.is_file():
                return runner, runtime
        if check:  # reference first: building a runtime may move the shared module to the device
            ref = _build_one("eager", loaded, pre, "cpu", _torch().float32, name, cache)
            probe = np.random.default_rng(0).integers(0, 256, size=(2, pre.size, pre.size, 3), dtype=np.uint8)
            expected = ref(probe)
        runner = _build_one(runtime, loaded, pre, device, dtype, name, cache)
        if check:
            cos = float(_cosines(expected, runner(probe)).min())
            tol = VERIFY_MIN_COSINE if dtype == _torch().float32 else 0.99
            if not cos >= tol:
                raise IMRSError(f"runtime {runtime!r} for {name} disagrees with eager (cosine {cos:.5f})")
            path = getattr(runner, "path", None)
            if path is not None and weights == "pretrained":
                try:
                    atomic_write_text(f"{path}.verified", f"min cosine vs eager fp32: {cos:.6f}\n")
                except OSError as exc:
                    log.debug("cannot record ONNX verification: %s", exc)
        return runner, runtime
    except Exception as exc:
        if explicit:
            if isinstance(exc, IMRSError):
                raise
            raise IMRSError(f"runtime {runtime!r} is not available for {name}: "
                            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
        log.warning("runtime %r unavailable for %s (%s: %s); using eager", runtime, name,
                    type(exc).__name__, exc)
        return _build_one("eager", loaded, pre, device, dtype, name, cache), "eager"
