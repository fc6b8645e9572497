"""The encoder contract shared by every backbone, and the machinery around it.

A backbone family (torchvision, timm, open_clip, EfficientNet-Lite) only has to say how to build
its network and where its weights live; everything users notice — preprocessing geometry, batching,
decode/model overlap, skipping broken files, L2 normalisation, offline behaviour — lives here once,
so all backbones behave the same.

torch is imported lazily: ``list_backbones()`` and ``backbone_status()`` are used by the CLI and the
UI's settings page, which should not pay torch's import time just to print a table.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import ImageDecodeError, IMRSError, UnknownBackboneError, WeightsUnavailableError
from ..imageio import load_image

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

log = logging.getLogger(__name__)

ProgressArg = bool | Callable[[int, int], None]
ImageLike = str | os.PathLike[str] | Image.Image

WEIGHT_CHOICES = ("pretrained", "random")
RUNTIME_CHOICES = ("auto", "eager", "fused", "onnx", "compile")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")


class TextNotSupportedError(IMRSError, NotImplementedError):
    """The backbone has no text tower (only CLIP-style backbones embed text)."""


# --------------------------------------------------------------------------------------------
# Descriptions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    dim: int
    supports_text: bool
    family: str
    description: str
    weights: str  # human description of the pretrained weights and where they come from
    input_size: int = 224


_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}
_TORCH_MODES = ("bicubic", "bilinear")  # torch has antialiased uint8 kernels for these


_THREAD = threading.local()


def _omp_runtime() -> Any:
    """The OpenMP runtime torch is linked against (ctypes handle), or None."""
    import ctypes
    import glob

    import torch

    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    names = sorted(glob.glob(os.path.join(libdir, "libgomp*.so*")) + glob.glob(os.path.join(libdir, "libomp*"))
                   + glob.glob(os.path.join(libdir, "libiomp*")))
    names += ["libgomp.so.1", "libomp.so", "libiomp5.so", "vcomp140.dll"]
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def single_threaded_torch_worker() -> None:
    """Thread initializer for IMRS's decode workers: torch ops in *this* thread run on one core.

    The workers resize with torch (3x faster than Pillow's bicubic); letting every 0.3 ms resize
    open an OpenMP team of its own next to the model's threads costs far more than it gains.
    OpenMP's thread count is per thread, so the caller's (and the model's) threads are untouched.
    """
    try:
        import torch

        torch.get_num_threads()  # run torch's lazy per-thread init first: it would overwrite ours
        if torch.get_num_threads() != 1:
            lib = _omp_runtime()
            if lib is not None:
                lib.omp_set_num_threads(1)
    except Exception:  # pragma: no cover - exotic builds: correct, only possibly slower
        log.debug("could not make decode worker single-threaded", exc_info=True)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop ``size`` — done as ONE resample.

    Cropping the source box first and resampling once is both faster and sharper than the
    torchvision two-step (resize whole image, then crop). ``mean``/``std`` are on the 0..255
    scale and are applied on the device (or inside the ONNX graph), so the CPU-side pipeline only
    moves uint8 arrays around. The resample is torch's antialiased uint8 kernel (the one
    torchvision uses for uint8 tensors; Pillow-equivalent filters, ~3x faster than Pillow), so the
    result is identical whichever thread runs it.
    """

    size: int = 224
    resize: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)

    def __call__(self, img: Image.Image) -> np.ndarray:
        w, h = img.size
        short = min(w, h)
        if short > 4 * self.resize:
            # A big non-JPEG (no draft mode): cheap box-reduce to >= 2x the target first, as
            # Pillow's reducing_gap does; the antialiased resample below then has few taps.
            factor = short // (2 * self.resize)
            img = img.reduce(factor)
            w, h = img.size
            short = min(w, h)
        if self.interpolation not in _TORCH_MODES:
            crop_f = short * self.size / self.resize
            left_f, top_f = (w - crop_f) / 2.0, (h - crop_f) / 2.0
            out = img.resize((self.size, self.size), _INTERPOLATION[self.interpolation],
                             box=(left_f, top_f, left_f + crop_f, top_f + crop_f))
            return np.asarray(out, dtype=np.uint8)
        import torch
        import torch.nn.functional as F

        side = max(1, round(short * self.size / self.resize))  # crop side in source pixels
        left, top = int(round((w - side) / 2)), int(round((h - side) / 2))  # as torchvision
        arr = np.array(img, dtype=np.uint8)  # writable copy: torch refuses read-only buffers
        x = torch.from_numpy(arr)[top:top + side, left:left + side]
        if side != self.size:
            x = F.interpolate(x.permute(2, 0, 1).unsqueeze(0), size=(self.size, self.size),
                              mode=self.interpolation, antialias=True, align_corners=False)
            x = x[0].permute(1, 2, 0)
        return x.numpy()

    def load(self, src: ImageLike) -> np.ndarray:
        """Decode (JPEG draft at >= ``resize`` on the shorter side) and prepare one image."""
        return self(load_image(src, min_side=self.resize))


@dataclass
class EmbedResult:
    """Embeddings of the decodable subset of a path list, with the reason for each file left out."""

    vectors: np.ndarray  # (m, dim) float32, rows L2-normalised
    kept: np.ndarray  # (m,) int64 indices into the input paths
    failures: list[tuple[int, str]] = field(default_factory=list)  # (index, one-line reason)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


@dataclass
class LoadedBackbone:
    """What a family's loader hands back: torch modules, not yet placed on a device."""

    image_model: nn.Module  # normalised float NCHW -> (B, dim) raw (unnormalised) features
    head: nn.Module | None = None  # raw features -> class logits (EfficientNet-Lite: ImageNet)
    class_names: list[str] | None = None
    text_model: nn.Module | None = None  # token ids -> (B, dim)
    tokenizer: Callable[[Sequence[str]], Any] | None = None
    convnet: bool = True  # channels_last helps convolutions, not transformers
    weights_label: str = ""


#: Fastest measured runtime per device (scripts/bench_embed.py): ONNX Runtime on CPU, eager fp16 on CUDA.
DEFAULT_RUNTIMES: dict[str, str] = {"cpu": "onnx", "cuda": "eager"}


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. ``load(weights, checkpoint)`` must raise WeightsUnavailableError quickly."""

    info: BackboneInfo
    preprocess: Preprocess
    load: Callable[[str, Path | None], LoadedBackbone]
    status: Callable[[], tuple[str, str]]
    default_runtime: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RUNTIMES))
    cpu_batch_size: int = 32
    cuda_batch_size: int = 128
    checkpoint_filenames: tuple[str, ...] = ()  # upstream names also accepted in IMRS_CHECKPOINT_DIR
    download_host: str = ""  # where pretrained weights come from; "" when they ship with a package


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    name = spec.info.name
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} registered twice")
    _REGISTRY[name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY))
        raise UnknownBackboneError(f"unknown backbone {name!r}; choose one of: {valid}") from None


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def backbone_info(name: str) -> BackboneInfo:
    return get_spec(name).info


def backbone_status(name: str) -> tuple[str, str]:
    """("ready" | "needs download" | "failed", reason) from caches and files, without loading."""
    spec = get_spec(name)
    try:
        return spec.status()
    except Exception as exc:  # a status probe must never take the settings page down
        return "failed", f"{type(exc).__name__}: {exc}"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_count() -> int:
    """Cores this process may use (cgroup/affinity aware, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def user_cache_dir() -> Path:
    """``$IMRS_CACHE_DIR`` or ``$XDG_CACHE_HOME/imrs`` (``~/.cache/imrs``)."""
    env = os.environ.get("IMRS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imrs"


# --------------------------------------------------------------------------------------------
# Weights: local checkpoints, caches, and a fast answer when offline
# --------------------------------------------------------------------------------------------


def checkpoint_env_var(name: str) -> str:
    return "IMRS_CHECKPOINT_" + "".join(c if c.isalnum() else "_" for c in name.upper())


def find_local_checkpoint(name: str, checkpoint: str | os.PathLike[str] | None,
                          upstream_filenames: Sequence[str] = ()) -> Path | None:
    """Explicit argument > ``IMRS_CHECKPOINT_<NAME>`` > a matching file in ``IMRS_CHECKPOINT_DIR``.

    An explicitly named file that does not exist is an error, not a reason to go online.
    """
    var = checkpoint_env_var(name)
    explicit = checkpoint if checkpoint is not None else os.environ.get(var) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            source = "checkpoint argument" if checkpoint is not None else var
            raise WeightsUnavailableError(f"{source} for {name} points to {path}, which is not a file")
        return path
    directory = os.environ.get("IMRS_CHECKPOINT_DIR")
    if directory:
        root = Path(directory).expanduser()
        candidates = [f"{name}{ext}" for ext in (".pth", ".pt", ".bin", ".safetensors")]
        candidates += list(upstream_filenames)
        for cand in candidates:
            if (root / cand).is_file():
                return root / cand
    return None


def offline_forced() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("IMRS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


_PROBE_CACHE: dict[str, tuple[float, bool]] = {}
_PROBE_LOCK = threading.Lock()


def host_reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """TCP connect within ``timeout`` seconds, DNS included (done in a thread: getaddrinfo has no
    timeout of its own). Answers are remembered for a minute so a UI listing backbones probes once.
    """
    if offline_forced():
        return False
    with _PROBE_LOCK:
        hit = _PROBE_CACHE.get(host)
        if hit is not None and time.monotonic() - hit[0] < 60.0:
            return hit[1]
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, name=f"imrs-probe-{host}", daemon=True)
    t.start()
    t.join(timeout + 0.5)
    ok = bool(result and result[0])
    with _PROBE_LOCK:
        _PROBE_CACHE[host] = (time.monotonic(), ok)
    return ok


def weights_unavailable(name: str, what: str, host: str, cache_hint: str, filenames: Sequence[str] = ()
                        ) -> WeightsUnavailableError:
    fname = filenames[0] if filenames else f"{name}.pth"
    return WeightsUnavailableError(
        f"pretrained weights for {name} ({what}) are not cached and {host} is unreachable: connect to "
        f"the internet once (they are then cached in {cache_hint}), or download {fname} elsewhere and "
        f"set {checkpoint_env_var(name)}=/path/to/{fname} (or put it in $IMRS_CHECKPOINT_DIR)"
    )


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """Tensors only (``weights_only``/safetensors): a checkpoint must never run code."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"cannot load checkpoint {path}: {' '.join(str(exc).split())}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsUnavailableError(f"checkpoint {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_checkpoint_into(model: nn.Module, path: Path, name: str) -> None:
    sd = load_state_dict_file(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise WeightsUnavailableError(f"checkpoint {path} does not fit {name}: {first}") from exc


# --------------------------------------------------------------------------------------------
# The input pipeline: decode + resize in threads while the model runs
# --------------------------------------------------------------------------------------------


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
    failures: list[tuple[int, ImageDecodeError]]


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
            fails: list[tuple[int, ImageDecodeError]] = []
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


class _Progress:
    def __init__(self, progress: ProgressArg, total: int, desc: str) -> None:
        self.total = total
        self.done = 0
        self._cb: Callable[[int, int], None] | None = None
        self._bar = None
        if callable(progress):
            self._cb = progress
        elif progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="img")

    def update(self, k: int) -> None:
        self.done += k
        if self._bar is not None:
            self._bar.update(k)
        if self._cb is not None:
            self._cb(self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


class Encoder:
    """A loaded backbone on one device with one runtime; embed calls may come from several threads.

    ``runtime``/``precision`` say what actually runs (after "auto" was resolved, and after a fast
    runtime that failed to build or to match eager fell back to eager, with a log line).
    """

    def __init__(self, spec: BackboneSpec, loaded: LoadedBackbone, device: str, weights: str,
                 runtime: str = "auto", precision: str = "auto") -> None:
        import torch

        from . import runtime as rt

        info = spec.info
        self.spec = spec
        self.info = info
        self.name: str = info.name
        self.dim: int = info.dim
        self.supports_text: bool = info.supports_text and loaded.text_model is not None
        self.device: str = device
        self.weights: str = weights
        self.preprocess: Preprocess = spec.preprocess
        self.input_size: int = spec.preprocess.size
        self.class_names: list[str] | None = loaded.class_names
        self._loaded = loaded
        dev = torch.device(device)
        self._is_cuda = dev.type == "cuda"
        # On CUDA the model is rarely the bottleneck: decode with every core but the feeding one.
        self.decode_workers = (max(1, min(16, cpu_count() - 1)) if self._is_cuda
                               else decode_workers_for(cpu_count()))

        if precision == "auto":
            precision = "fp16" if self._is_cuda else "fp32"
        if precision not in PRECISION_CHOICES:
            raise IMRSError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISION_CHOICES)}")
        self.precision = precision
        if runtime not in RUNTIME_CHOICES:
            raise IMRSError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIME_CHOICES)}")
        requested = runtime
        if runtime == "auto":
            runtime = spec.default_runtime.get(dev.type, "eager")
            if runtime == "onnx" and precision != "fp32":  # ONNX Runtime CPU path is float32 only
                runtime = "fused"
        self._runner, self.runtime = rt.build_runner(
            loaded, spec.preprocess, device, precision, runtime, weights=weights, name=info.name,
            explicit=requested != "auto")
        self._head = loaded.head.to(dev).eval() if loaded.head is not None else None
        self._text = loaded.text_model.to(dev).eval() if loaded.text_model is not None else None
        if self._text is not None and self._is_cuda and precision == "fp16":
            self._text = self._text.half()

    def __repr__(self) -> str:
        return (f"Encoder({self.name!r}, dim={self.dim}, device={self.device!r}, "
                f"runtime={self.runtime!r}, precision={self.precision!r}, weights={self.weights!r})")

    def auto_batch_size(self) -> int:
        return self.spec.cuda_batch_size if self._is_cuda else self.spec.cpu_batch_size

    # -- core loop -----------------------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        """How many batches the runtime runs at once (ONNX: one session per worker)."""
        return int(getattr(self._runner, "concurrency", 1))

    def raw_features_of_array(self, batch: np.ndarray) -> np.ndarray:
        """(b, H, W, 3) uint8, already preprocessed -> (b, dim) float32 unnormalised features.

        Safe to call from several threads (up to ``concurrency`` run in parallel)."""
        return self._runner(batch)

    def _run(self, items: Sequence[ImageLike], batch_size: int | None, progress: ProgressArg,
             skip_errors: bool, desc: str) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        n = len(items)
        bs = max(1, int(batch_size or self.auto_batch_size()))
        feats: list[np.ndarray] = []
        kept: list[int] = []
        failures: list[tuple[int, str]] = []
        bar = _Progress(progress, n, desc)

        def collect(indices: list[int], out: np.ndarray | None,
                    fails: list[tuple[int, ImageDecodeError]]) -> None:
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
            if self.concurrency > 1 and n > 1:
                self._run_parallel(items, bs, skip_errors, collect)
            else:
                # A handful of images: decode inline, a thread pool would cost more than it hides.
                workers = self.decode_workers if n > 4 else 0
                for batch in iter_batches(items, self.preprocess, bs, workers, pin=self._is_cuda):
                    if batch.failures and not skip_errors:
                        collect([], None, batch.failures)
                    out = self.raw_features_of_array(batch.array) if batch.indices else None
                    collect(batch.indices, out, batch.failures)
        finally:
            bar.close()
        raw = np.concatenate(feats) if feats else np.zeros((0, self.dim), dtype=np.float32)
        return raw.astype(np.float32, copy=False), np.asarray(kept, dtype=np.int64), failures

    def _run_parallel(self, items: Sequence[ImageLike], bs: int, skip_errors: bool,
                      collect: Callable[[list[int], np.ndarray | None, list[tuple[int, ImageDecodeError]]], None]
                      ) -> None:
        """``concurrency`` workers, each decoding a whole batch and then running the model on it.

        The workers drift out of phase by themselves, so while one decodes the others compute;
        there is no hand-off queue and no per-op thread barrier. Results are collected in order.
        """
        n = len(items)
        k = self.concurrency
        bs = max(1, min(bs, -(-n // k)))  # small jobs: every worker gets a share
        pre = self.preprocess

        def work(start: int) -> tuple[list[int], np.ndarray | None, list[tuple[int, ImageDecodeError]]]:
            idx: list[int] = []
            arrays: list[np.ndarray] = []
            fails: list[tuple[int, ImageDecodeError]] = []
            for i in range(start, min(n, start + bs)):
                res = _safe_prepare(pre, items[i])
                if isinstance(res, ImageDecodeError):
                    fails.append((i, res))
                    if not skip_errors:
                        return idx, None, fails
                else:
                    idx.append(i)
                    arrays.append(res)
            out = self._runner(np.stack(arrays)) if arrays else None
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

    # -- public API ------------------------------------------------------------------------------

    def embed_images(self, images: Sequence[ImageLike], batch_size: int = 32,
                     progress: ProgressArg = False) -> np.ndarray:
        """(n, dim) float32, L2-normalised rows; the first undecodable image raises ImageDecodeError."""
        raw, _, _ = self._run(images, batch_size, progress, skip_errors=False, desc=f"embed {self.name}")
        return l2_normalise(raw)

    def embed_paths(self, paths: Sequence[str | os.PathLike[str]], batch_size: int | None = None,
                    progress: ProgressArg = False) -> EmbedResult:
        """Embed what can be decoded; undecodable files are reported in ``failures``, not raised."""
        raw, kept, failures = self._run(paths, batch_size, progress, skip_errors=True,
                                        desc=f"embed {self.name}")
        return EmbedResult(l2_normalise(raw), kept, failures)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not self.supports_text or self._text is None or self._loaded.tokenizer is None:
            raise TextNotSupportedError(
                f"backbone {self.name} has no text encoder; use a CLIP backbone (e.g. clip_vit_b32) "
                "for text queries")
        import torch

        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self._loaded.tokenizer(texts)
        with torch.inference_mode():
            out = self._text(tokens.to(self.device))
        return l2_normalise(out.float().cpu().numpy())

    def _logits(self, raw: np.ndarray) -> np.ndarray:
        if self._head is None:
            raise IMRSError(f"backbone {self.name} has no classifier head")
        import torch

        with torch.inference_mode():
            w = next(self._head.parameters())
            x = torch.from_numpy(np.ascontiguousarray(raw)).to(device=w.device, dtype=w.dtype)
            return self._head(x).float().cpu().numpy()

    @property
    def has_classifier(self) -> bool:
        return self._head is not None

    def classify_logits(self, images: Sequence[ImageLike], batch_size: int = 32,
                        progress: ProgressArg = False) -> np.ndarray:
        """(n, n_classes) float32 logits of the backbone's own classifier (EfficientNet: ImageNet-1k,
        names in ``class_names``). Raises ImageDecodeError on a bad image, like embed_images."""
        raw, _, _ = self._run(images, batch_size, progress, skip_errors=False, desc=f"classify {self.name}")
        return self._logits(raw)

    def embed_and_classify(self, paths: Sequence[ImageLike], batch_size: int | None = None,
                           progress: ProgressArg = False) -> tuple[EmbedResult, np.ndarray]:
        """One forward pass for both: (EmbedResult, logits of the kept images)."""
        raw, kept, failures = self._run(paths, batch_size, progress, skip_errors=True,
                                        desc=f"embed {self.name}")
        return EmbedResult(l2_normalise(raw), kept, failures), self._logits(raw)

    def classifier_head(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (n_classes, dim), b (n_classes,)) so logits can be computed from *unnormalised* raw
        features (see :meth:`raw_features_of_array`)."""
        if self._head is None:
            raise IMRSError(f"backbone {self.name} has no classifier head")
        lin = self._head
        return (lin.weight.detach().float().cpu().numpy(), lin.bias.detach().float().cpu().numpy())


# --------------------------------------------------------------------------------------------
# get_encoder with a per-process cache
# --------------------------------------------------------------------------------------------

_ENCODERS: dict[tuple[Any, ...], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def _normalise_device(device: str | None) -> str:
    import torch

    if device is None or device == "auto":
        return default_device()
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise IMRSError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        return f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
    return dev.type


def get_encoder(name: str, device: str | None = None, weights: str = "pretrained",
                checkpoint: str | os.PathLike[str] | None = None, *, runtime: str = "auto",
                precision: str = "auto") -> Encoder:
    """The encoder for ``name``, built once per process per (name, device, weights, checkpoint,
    runtime, precision).

    ``weights="random"`` is for tests and benchmarks only; missing pretrained weights raise
    WeightsUnavailableError and are never replaced by random ones.
    """
    spec = get_spec(name)
    if weights not in WEIGHT_CHOICES:
        raise IMRSError(f"unknown weights {weights!r} for {name}; use 'pretrained' (or 'random' in tests)")
    dev = _normalise_device(device)
    ckpt = None if checkpoint is None else str(Path(checkpoint).expanduser().resolve())
    env_ckpt = os.environ.get(checkpoint_env_var(name)) if weights == "pretrained" else None
    key = (name, dev, weights, ckpt, env_ckpt, os.environ.get("IMRS_CHECKPOINT_DIR"), runtime, precision)
    with _ENCODERS_LOCK:
        enc = _ENCODERS.get(key)
        if enc is not None:
            return enc
    t0 = time.perf_counter()
    ckpt_path = None
    if weights == "pretrained":
        ckpt_path = find_local_checkpoint(name, ckpt, spec.checkpoint_filenames)
    if weights == "random":
        import torch

        # Seeded: "random" weights are the same in every call and process, so runtimes and
        # benchmark runs compare like with like.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            loaded = spec.load(weights, None)
    else:
        loaded = spec.load(weights, ckpt_path)
    enc = Encoder(spec, loaded, dev, weights, runtime=runtime, precision=precision)
    log.info("loaded %r in %.1fs", enc, time.perf_counter() - t0)
    with _ENCODERS_LOCK:
        return _ENCODERS.setdefault(key, enc)


def clear_encoder_cache() -> None:
    with _ENCODERS_LOCK:
        _ENCODERS.clear()


def weights_unobtainable(name: str) -> str | None:
    """Why ``name``'s pretrained weights certainly cannot be had right now (not cached, no local
    checkpoint, download host unreachable), decided without importing the model's library -- the
    app asks this on every offline start, where importing open_clip alone costs seconds. None
    when they are ready or might be downloadable: then the real load decides."""
    spec = get_spec(name)
    state, reason = spec.status()
    if state != "needs download" or os.environ.get("IMRS_CHECKPOINT_DIR") or not spec.download_host:
        return None
    if host_reachable(spec.download_host):
        return None
    fname = spec.checkpoint_filenames[0] if spec.checkpoint_filenames else f"{name}.pth"
    return (f"pretrained weights for {name} are not cached and {spec.download_host} is unreachable ({reason}): "
            f"connect to the internet once (they are then cached), or download {fname} elsewhere and set "
            f"{checkpoint_env_var(name)}=/path/to/{fname} (or put it in $IMRS_CHECKPOINT_DIR)")


@functools.cache
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard (sorted wnid) order. Copied from
    torchvision's weight metadata into the package: importing torchvision.models only for these
    names cost ~2 s of every start."""
    shipped = Path(__file__).with_name("imagenet_classes.json")
    if shipped.is_file():
        return list(json.loads(shipped.read_text(encoding="utf-8")))
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


@contextlib.contextmanager
def wrap_download_errors(name: str, host: str, cache_hint: str, filenames: Sequence[str] = ()
                         ) -> Iterator[None]:
    """A download that fails midway (network dropped, proxy, 404) becomes one readable line."""
    try:
        yield
    except IMRSError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        err = weights_unavailable(name, "download failed", host, cache_hint, filenames)
        raise WeightsUnavailableError(f"{err} [{type(exc).__name__}: {' '.join(str(exc).split())[:200]}]") \
            from exc
