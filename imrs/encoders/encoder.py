"""The encoder: a loaded backbone on one device with one runtime, and the factory that caches it.

An :class:`Encoder` ties together a registry entry (:mod:`.registry`), a runner that computes raw
features from uint8 batches (:mod:`.runtime`) and the decode/batching pipeline (:mod:`.pipeline`).
torch is imported lazily, when an encoder is built -- and not at all on the default CPU path of a
backbone with a torch-free loader (EfficientNet-Lite0: one ONNX model built from its checkpoint),
which is what a base install without PyTorch runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IMRSError, WeightsUnavailableError
from . import runtime as rt
from .pipeline import EmbedResult, ProgressArg, cpu_count, decode_workers_for, embed_items, l2_normalise
from .place import WeightsPlace
from .preprocess import ImageLike, Preprocess
from .registry import BackboneSpec, LoadedBackbone, get_spec, torch_missing
from .weights import find_local_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings

log = logging.getLogger(__name__)

WEIGHT_CHOICES = ("pretrained", "random")
#: "fp32": the fastest float runtime for the device; "int8": ONNX Runtime int8 (CPU); "auto": int8
#: when calibration images are given and its quality gate passes, else fp32. The rest name one
#: float runtime (see :mod:`.runtime`).
RUNTIME_CHOICES = ("auto", "fp32", "int8", "eager", "fused", "onnx", "compile")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")


class TextNotSupportedError(IMRSError, NotImplementedError):
    """The backbone has no text tower (only CLIP-style backbones embed text)."""


def nvidia_driver_present() -> bool:
    """A cheap look for an NVIDIA driver: without one CUDA cannot be available, so there is no
    need to import torch (seconds) to find that out."""
    import shutil

    return (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
            or shutil.which("nvidia-smi") is not None)


def default_device() -> str:
    if not nvidia_driver_present() or torch_missing("") is not None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """A loaded backbone on one device with one runtime; embed calls may come from several threads.

    ``runtime``/``precision`` say what actually runs (after "auto" was resolved, and after a fast
    runtime that failed to build or to match eager fell back to eager, with a log line).
    ``runtime_tag`` names the vector space the encoder writes: "fp32" for every float runtime
    (they agree with eager to cosine >= 0.999) or "int8-<model key>"; caches of one tag are never
    mixed with another's. ``int8_gate`` holds the int8 quality gate's result when one was measured,
    ``int8_note`` why int8 is not in use when it was considered.
    """

    def __init__(self, spec: BackboneSpec, loaded: LoadedBackbone, device: str, weights: str,
                 runtime: str = "auto", precision: str = "auto", *,
                 calibration: Sequence[str | os.PathLike[str]] | None = None, int8_tag: str | None = None,
                 place: WeightsPlace | None = None) -> None:
        place = place or WeightsPlace.from_settings()
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
        dev_type = device.split(":")[0]
        self._is_cuda = dev_type == "cuda"
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
        consider_int8 = runtime == "int8" or (runtime == "auto" and dev_type == "cpu" and precision == "fp32"
                                              and bool(calibration or int8_tag))
        if runtime == "int8" and (dev_type != "cpu" or precision != "fp32"):
            raise IMRSError("runtime 'int8' runs on CPU in fp32 precision (ONNX Runtime); use device='cpu'")
        if runtime in ("auto", "fp32", "int8"):
            runtime = "onnx" if consider_int8 else spec.default_runtime.get(dev_type, "eager")
            if runtime == "onnx" and precision != "fp32":  # ONNX Runtime CPU path is float32 only
                runtime = "fused"
        if loaded.onnx_path is not None:  # built without torch (and checked against it in the tests)
            if runtime != "onnx":
                raise IMRSError(f"runtime {runtime!r} needs the PyTorch model of {info.name}, not its ONNX build")
            workers, threads = rt.onnx_layout(cpu_count())
            self._runner, self.runtime = rt.OnnxRunner(loaded.onnx_path, workers=workers, threads=threads), "onnx"
        else:
            self._runner, self.runtime = rt.build_runner(
                loaded, spec.preprocess, device, precision, runtime, weights=weights, name=info.name,
                explicit=requested not in ("auto", "fp32"), place=place)
        self.runtime_tag = "fp32"
        self.int8_gate: Any = None
        self.int8_note = ""
        if consider_int8:
            self._use_int8(requested == "int8", loaded.convnet, calibration, int8_tag)
        self._head_arrays = loaded.head_arrays
        self._head_cache: tuple[np.ndarray, np.ndarray] | None = None
        self._head = self._text = None
        if loaded.head is not None or loaded.text_model is not None:
            import torch

            dev = torch.device(device)
            self._head = loaded.head.to(dev).eval() if loaded.head is not None else None
            self._text = loaded.text_model.to(dev).eval() if loaded.text_model is not None else None
        if self._text is not None and self._is_cuda and precision == "fp16":
            self._text = self._text.half()

    def _use_int8(self, explicit: bool, convnet: bool, calibration: Sequence[str | os.PathLike[str]] | None,
                  tag: str | None) -> None:
        """Switch to the int8 model when it was asked for by name or by the tag of a collection's
        vectors, or when it passes its gate."""
        from . import int8

        try:
            if self.runtime != "onnx":
                raise IMRSError("the fp32 ONNX export it is derived from is not available")
            runner, gate, new_tag = int8.int8_runner(self.name, self._runner, self.preprocess, convnet,
                                                     calibration=calibration, tag=tag)
        except Exception as exc:
            why = exc if isinstance(exc, IMRSError) else f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            if explicit:
                raise IMRSError(f"runtime 'int8' is not available for {self.name}: {why}") from exc
            self.int8_note = f"int8 unavailable ({why})"
            log.warning("%s: %s; staying on %s", self.name, self.int8_note, self.runtime)
            return
        self.int8_gate = gate
        follows_cache = new_tag == tag  # the model a collection's vectors were made with: used as it is
        if not gate.passed and not explicit and not follows_cache:
            self.int8_note = gate.summary()
            log.warning("%s: %s; staying on fp32 (%s)", self.name, self.int8_note, self.runtime)
            return
        if not gate.passed:
            log.warning("%s: %s; using it because it was asked for", self.name, gate.summary())
        self._runner, self.runtime, self.runtime_tag = runner, "int8", new_tag

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
        return embed_items(items, self._runner, self.preprocess, self.dim, batch_size or self.auto_batch_size(),
                           concurrency=self.concurrency, decode_workers=self.decode_workers, pin=self._is_cuda,
                           progress=progress, skip_errors=skip_errors, desc=desc)

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
            w, b = self.classifier_head()
            return (np.asarray(raw, np.float32) @ w.T + b).astype(np.float32)
        import torch

        with torch.inference_mode():
            w = next(self._head.parameters())
            x = torch.from_numpy(np.ascontiguousarray(raw)).to(device=w.device, dtype=w.dtype)
            return self._head(x).float().cpu().numpy()

    @property
    def has_classifier(self) -> bool:
        return self._head is not None or self._head_arrays is not None

    def classify_logits(self, images: Sequence[ImageLike], batch_size: int = 32,
                        progress: ProgressArg = False) -> np.ndarray:
        """(n, n_classes) float32 logits of the backbone's own classifier (EfficientNet: ImageNet-1k,
        names in ``class_names``). Raises ImageDecodeError on a bad image, like embed_images."""
        raw, _, _ = self._run(images, batch_size, progress, skip_errors=False, desc=f"classify {self.name}")
        return self._logits(raw)

    def classifier_head(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (n_classes, dim), b (n_classes,)) so logits can be computed from *unnormalised* raw
        features (see :meth:`raw_features_of_array`)."""
        if self._head is None and self._head_arrays is not None:
            if self._head_cache is None:
                w, b = self._head_arrays()
                self._head_cache = (np.asarray(w, np.float32), np.asarray(b, np.float32))
            return self._head_cache
        if self._head is None:
            raise IMRSError(f"backbone {self.name} has no classifier head")
        lin = self._head
        return (lin.weight.detach().float().cpu().numpy(), lin.bias.detach().float().cpu().numpy())


#: Encoders kept loaded, most recently used last. A process normally uses one or two (a collection's
#: backbone, maybe its int8 twin); a benchmark or a page switching backbones would otherwise keep
#: every model it ever touched (a ViT-B with its ONNX sessions is ~1 GB). Evicting only drops the
#: cache's reference: an encoder a caller still holds keeps working.
ENCODER_CACHE_SIZE = 4
_ENCODERS: OrderedDict[tuple[Any, ...], Encoder] = OrderedDict()
_ENCODERS_LOCK = threading.Lock()


def _normalise_device(device: str | None) -> str:
    if device is None or device == "auto":
        return default_device()
    if device == "cpu":
        return "cpu"
    if torch_missing("") is not None:
        raise IMRSError(f"device {device!r} needs PyTorch, which this install leaves out; use device='cpu'")
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise IMRSError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        return f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
    return dev.type


def get_encoder(name: str, device: str | None = None, weights: str = "pretrained",
                checkpoint: str | os.PathLike[str] | None = None, *, runtime: str = "auto",
                precision: str = "auto", calibration: Sequence[str | os.PathLike[str]] | None = None,
                int8_tag: str | None = None, settings: Settings | None = None) -> Encoder:
    """The encoder for ``name``, built once per process per (name, device, weights, checkpoint,
    runtime, precision, calibration images, int8 tag, model-file settings); the last
    :data:`ENCODER_CACHE_SIZE` used stay loaded.

    ``settings``: where checkpoints and caches are and whether the network may be tried
    (``checkpoint_dir``, ``checkpoints``, ``cache_dir``, ``offline``, ...); None: the environment's.

    ``weights="random"`` is for tests and benchmarks only; missing pretrained weights raise
    WeightsUnavailableError and are never replaced by random ones.

    int8 (CPU): ``calibration`` is a sample of the collection's own images (half calibrate the
    model, half are held out for its quality gate); ``int8_tag`` reopens the cached int8 model a
    collection's vectors were made with. ``runtime="auto"`` takes int8 only when its gate passes.
    """
    spec = get_spec(name)
    if weights not in WEIGHT_CHOICES:
        raise IMRSError(f"unknown weights {weights!r} for {name}; use 'pretrained' (or 'random' in tests)")
    dev = _normalise_device(device)
    ckpt = None if checkpoint is None else str(Path(checkpoint).expanduser().resolve())
    place = WeightsPlace.from_settings(settings)
    if runtime not in RUNTIME_CHOICES:
        raise IMRSError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIME_CHOICES)}")
    calib = [str(p) for p in calibration] if calibration else None
    if runtime not in ("auto", "int8"):
        calib, int8_tag = None, None  # a float runtime was named: the int8 inputs change nothing
    calib_key = None
    if calib:
        from .int8 import calibration_identity

        calib_key = calibration_identity(calib)
    key = (name, dev, weights, ckpt, place, runtime, precision, calib_key, int8_tag)
    with _ENCODERS_LOCK:
        enc = _ENCODERS.get(key)
        if enc is not None:
            _ENCODERS.move_to_end(key)
            return enc
    t0 = time.perf_counter()
    ckpt_path = None
    if weights == "pretrained":
        ckpt_path = find_local_checkpoint(name, ckpt, spec.checkpoint_filenames, place)
    torch_free = (spec.load_onnx is not None and dev == "cpu" and weights == "pretrained"
                  and precision in ("auto", "fp32") and runtime in ("auto", "fp32", "onnx", "int8"))
    missing = None if torch_free else torch_missing(name)
    if missing is not None:
        if spec.load_onnx is not None:
            missing += " (without it, it runs pretrained on CPU in fp32: runtime auto, fp32, onnx or int8)"
        raise WeightsUnavailableError(missing)
    if torch_free:
        assert spec.load_onnx is not None
        loaded = spec.load_onnx(ckpt_path, place)
    elif weights == "random":
        import torch

        # Seeded: "random" weights are the same in every call and process, so runtimes and
        # benchmark runs compare like with like.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            loaded = spec.load(weights, None, place)
    else:
        loaded = spec.load(weights, ckpt_path, place)
    enc = Encoder(spec, loaded, dev, weights, runtime=runtime, precision=precision, calibration=calib,
                  int8_tag=int8_tag, place=place)
    log.info("loaded %r in %.1fs", enc, time.perf_counter() - t0)
    with _ENCODERS_LOCK:
        enc = _ENCODERS.setdefault(key, enc)
        _ENCODERS.move_to_end(key)
        while len(_ENCODERS) > ENCODER_CACHE_SIZE:
            _ENCODERS.popitem(last=False)
        return enc


def clear_encoder_cache() -> None:
    with _ENCODERS_LOCK:
        _ENCODERS.clear()
