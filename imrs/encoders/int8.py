"""int8 on CPU: ONNX Runtime static quantization, calibrated on the collection, behind a quality gate.

Why it is built this way (measured on EfficientNet-Lite0, 2 cores with AVX-512 VNNI; numbers in
``scripts/bench_embed.py`` and ``scripts/bench_int8_quality.py``):

- QDQ format, uint8 activations x int8 per-channel weights (U8S8, what VNNI's dot product takes),
  MinMax ranges from a few hundred of the collection's own images. ONNX Runtime fuses the
  Q/DQ pairs into QLinearConv / QLinearMatMul kernels.
- The recipe depends on the CPU (:func:`cpu_features`, :func:`choose_recipes`): on x86-64 without
  VNNI, ONNX Runtime's U8S8 kernels saturate 16-bit sums (EfficientNet-Lite0: mean cosine 0.90
  to fp32), so 7-bit weights and then U8U8 are tried there instead. The CPU class and the recipe
  list are part of the model's key and of its runtime tag; a gate measured on another kind of
  CPU is measured again before the model is trusted here.
- The input normalisation ``(x - mean) / std`` is folded into the first convolution before
  quantizing (:func:`fold_input_normalisation`). Left in the graph it became a broadcast
  Sub + QLinearMul on NHWC data that took 31% of the int8 model's time.
- A quality gate is computed when the model is built: the int8 features of held-out images of the
  same collection are compared with fp32 (cosine per image, and agreement of each image's top-10
  neighbours). Only a model that passes is chosen automatically; otherwise fp32 stays and the
  reason is logged.
- Transformers quantize only their weight layers (Conv/MatMul/Gemm with constant weights); the ops
  int8 hurts most in a ViT (Softmax, LayerNorm, GELU, residual adds, attention's products) stay
  float. Recipes are tried in order and the first that passes the gate is kept.

The quantized model and its gate result are cached beside the fp32 export (user cache dir, or a
per-process scratch dir for random weights), written atomically, keyed by the fp32 model, the
calibration images (path, size, mtime), the recipes, the CPU class and the recipe version. A
build works in a folder of its own under the cache (``.int8-work``), where ONNX Runtime's
temporary models go too; a killed build's folder is removed by the next build. Vectors from an int8 model carry
the tag ``int8-<key>`` (:attr:`Encoder.runtime_tag`): the collection stores it with every cache and
never mixes it with fp32 vectors.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IMRSError
from ..fsutil import atomic_path, atomic_write_json, read_json
from .pipeline import cpu_count, decode_workers_for, iter_batches
from .preprocess import Preprocess
from .runtime import OnnxRunner, onnx_layout, scratch_dir

log = logging.getLogger(__name__)

#: Bump when anything below changes what a quantized model contains: invalidates cached models.
RECIPE_VERSION = 2
#: Calibration and held-out sample sizes (each). "A few hundred" images: the ranges and the
#: gate's statistics are stable by then, and a ViT-B still calibrates in about a minute.
CALIBRATION_IMAGES = 256
HELD_IMAGES = 256
#: Fewest images int8 is built from when asked for by name (split half calibration, half gate).
MIN_IMAGES = 16

#: The gate. Measured on Caltech-101 with EfficientNet-Lite0 (MinMax recipe): mean cosine 0.989,
#: worst-1% cosine 0.948, top-10 agreement 0.91, and P@10 within 0.5 points of fp32.
GATE_MEAN_COSINE = 0.98
GATE_P1_COSINE = 0.90
GATE_TOP10_OVERLAP = 0.85
#: int8 must not be slower than fp32 on this CPU (some exact recipes run on slow kernels).
GATE_MIN_SPEEDUP = 1.0

TAG_PREFIX = "int8-"
FP32_TAG = "fp32"


@dataclass(frozen=True)
class CpuFeatures:
    """What of the CPU decides which int8 recipe is exact and fast (read from /proc/cpuinfo).

    ``vnni``: AVX-512 VNNI or AVX-VNNI (``vpdpbusd``: u8 x s8 dot products into 32 bits). Without
    it ONNX Runtime's x86 u8 x s8 kernels use ``vpmaddubsw``, whose 16-bit sums of two products
    saturate when both weights of a pair are large (255 * 127 * 2 > 32767). ``dotprod``: ARM's
    ``sdot``/``udot`` (Features ``asimddp``), which accumulate in 32 bits.
    """

    arch: str  # "x86_64", "aarch64", ... (platform.machine(), normalised)
    model: str = ""
    avx2: bool = False
    avx512f: bool = False
    vnni: bool = False
    dotprod: bool = False

    @property
    def isa(self) -> str:
        """The class of CPU an int8 model is gated for (part of its cache key and tag)."""
        if self.arch == "x86_64":
            if self.vnni:
                return "x86_64-vnni"
            return "x86_64-avx512" if self.avx512f else ("x86_64-avx2" if self.avx2 else "x86_64")
        if self.arch == "aarch64":
            return "aarch64-dotprod" if self.dotprod else "aarch64"
        return self.arch

    def describe(self) -> str:
        """One line for logs and benchmarks: model and the flags that matter."""
        if self.arch == "x86_64":
            flags = (f"avx2 {'yes' if self.avx2 else 'no'}, avx512f {'yes' if self.avx512f else 'no'}, "
                     f"VNNI {'yes' if self.vnni else 'no'}")
        elif self.arch == "aarch64":
            flags = f"dotprod {'yes' if self.dotprod else 'no'}"
        else:
            flags = "no int8 flags known"
        return f"{self.model or self.arch} ({self.arch}; {flags})"


_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def parse_cpuinfo(text: str, machine: str) -> CpuFeatures:
    """CpuFeatures from the text of /proc/cpuinfo (x86 ``flags``, ARM ``Features``) and the machine
    name. Only the first processor's lines are read: every core of a host has the same ones."""
    arch = _ARCH_ALIASES.get(machine.lower(), machine.lower())
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    return CpuFeatures(arch=arch, model=model, avx2="avx2" in flags, avx512f="avx512f" in flags,
                       vnni=bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & flags),
                       dotprod=bool({"asimddp", "dotprod"} & flags))


@functools.cache
def cpu_features() -> CpuFeatures:
    """This host's CpuFeatures (no flags where /proc/cpuinfo cannot be read: the safest recipes)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine() or "unknown")


@dataclass(frozen=True)
class Recipe:
    """One way to quantize. ``only_ops``: quantize just these op types (None: every op ONNX Runtime
    can); ``float_ops``: op types left in float (sensitive to int8). ``activation``/``weight``:
    "u8" or "s8"; ``reduce_range``: 7-bit weights (no 16-bit saturation on x86 without VNNI);
    ``dynamic``: weights int8 ahead of time, activations quantized per batch at run time
    (ConvInteger / MatMulInteger; no calibration)."""

    name: str
    calibrate: str = "minmax"  # minmax | percentile | entropy
    only_ops: tuple[str, ...] | None = None
    float_ops: tuple[str, ...] = ()
    batch: int = 8  # calibration batch: bounded memory for histogram calibrators
    activation: str = "u8"
    weight: str = "s8"
    reduce_range: bool = False
    dynamic: bool = False

    def describe(self) -> str:
        which = f"only {'/'.join(self.only_ops)}" if self.only_ops else "all ops"
        keep = f" but {'/'.join(self.float_ops)}" if self.float_ops else ""
        types = f"{self.activation}{self.weight}" + (" 7-bit weights" if self.reduce_range else "")
        if self.dynamic:
            return f"dynamic {types} per-channel, {which}{keep}"
        return f"QDQ {types} per-channel, {which}{keep}, {self.calibrate}"

    def weight_grid(self) -> tuple[float, int, int]:
        """(divisor of a channel's max |w| giving the weight step, lowest, highest integer): the grid
        ONNX Runtime's symmetric per-channel weight quantization uses for this recipe."""
        if self.weight == "s8":
            return (64.0, -64, 64) if self.reduce_range else (127.0, -127, 127)
        # uint8 around zero point 64 (7-bit) or 128: the grid is not symmetric, so the snap cannot
        # match it exactly; kept within +-(n-1) steps it at least never clips
        return (63.5, -63, 63) if self.reduce_range else (127.5, -127, 127)


LINEAR_OPS = ("Conv", "MatMul", "Gemm")

#: Tried in order until one passes the gate. Convnets: every op in int8 (a conv's output range is
#: then the one after its ReLU/ReLU6, which the quantizer fuses). Transformers: only the layers
#: with weights -- quantizing everything (Softmax, LayerNorm, GELU, residual adds, attention's
#: activation x activation MatMuls) cost ViT-B/16 a mean cosine of 0.92 to fp32 (worst 1%: 0.66);
#: keeping Softmax/LayerNorm/GELU in float only reached 0.955 (percentile calibration: 0.963);
#: the weight layers alone give 0.999 and still 2.3x fp32's speed.
CONVNET_RECIPES = (Recipe("u8s8-minmax"), Recipe("u8s8-linear-minmax", only_ops=LINEAR_OPS, batch=4))
TRANSFORMER_RECIPES = (Recipe("u8s8-linear-minmax", only_ops=LINEAR_OPS, batch=4),)

#: x86-64 without VNNI (AVX2, AVX-512 without VNNI): the u8 x s8 kernels saturate (see
#: CpuFeatures), so the weights get 7 bits (same fast kernels, a coarser weight grid), then u8 x u8
#: (no saturation; other kernels). In order of expected speed; the first that passes the gate
#: (quality, and not slower than fp32) is kept. Measured on EfficientNet-Lite0
#: (``scripts/bench_int8_recipes.py``, models run under ``qemu-x86_64 -cpu Haswell``): u8s8 mean
#: cosine 0.901 (saturated), s8s8 0.902 (ONNX Runtime runs it on the same kernels), 7-bit weights
#: 0.959 (the same as on VNNI: the coarser grid, not saturation), u8u8 0.990 but 0.17x fp32's
#: speed (timed on a VNNI host); dynamic quantization of the weight layers 0.55 at 0.09x. So on
#: such CPUs EfficientNet-Lite0 stays fp32; heavier convnets and transformers may pass with 7 bits.
NO_VNNI_CONVNET_RECIPES = (
    Recipe("u8s8-7bit-minmax", reduce_range=True),
    Recipe("u8u8-minmax", weight="u8"),
)
NO_VNNI_TRANSFORMER_RECIPES = (
    Recipe("u8s8-7bit-linear-minmax", only_ops=LINEAR_OPS, batch=4, reduce_range=True),
    Recipe("u8s8-7bit-linear-dynamic", only_ops=("MatMul", "Gemm"), reduce_range=True, dynamic=True),
)


def choose_recipes(cpu: CpuFeatures, convnet: bool) -> tuple[tuple[Recipe, ...], str]:
    """(recipes to try in order, why) for a CPU: the gate then keeps the first that passes."""
    if cpu.arch == "x86_64" and not cpu.vnni:
        why = (f"{cpu.isa}: no VNNI, so u8 x s8 products would saturate in 16 bits (vpmaddubsw); "
               "7-bit weights first")
        return (NO_VNNI_CONVNET_RECIPES if convnet else NO_VNNI_TRANSFORMER_RECIPES), why
    if cpu.arch == "x86_64":
        why = f"{cpu.isa}: VNNI dot products accumulate u8 x s8 in 32 bits (no saturation)"
    elif cpu.arch == "aarch64":
        why = (f"{cpu.isa}: ARM " + ("sdot/udot" if cpu.dotprod else "widening multiplies")
               + " accumulate in 32 bits (no saturation)")
    else:
        why = f"{cpu.isa}: no known int8 saturation; the usual recipe"
    return (CONVNET_RECIPES if convnet else TRANSFORMER_RECIPES), why


def recipe_plan(convnet: bool | None = None, cpu: CpuFeatures | None = None) -> str:
    """One line for ``imrs backbones`` / ``imrs info``: this CPU and the int8 recipes it tries
    (for convnets, transformers, or both when ``convnet`` is None), and why."""
    cpu = cpu or cpu_features()
    kinds = [(True, "convnets"), (False, "transformers")] if convnet is None else [(convnet, "")]
    parts = []
    for conv, label in kinds:
        recipes, why = choose_recipes(cpu, conv)
        parts.append((f"{label} " if label else "") + " then ".join(r.name for r in recipes))
    return (f"int8 on this CPU, {cpu.describe()}: tries {'; '.join(parts)} (the first to pass the gate is "
            f"kept, else fp32) -- {why}")


def describe_tag(tag: str, cache: Path | None = None) -> str:
    """What an int8 runtime tag's cached gate says: recipe, verdict, and the CPU it was measured on."""
    if not is_int8_tag(tag):
        return tag
    from .weights import user_cache_dir

    key = tag[len(TAG_PREFIX):]
    for gate_path in sorted((cache or user_cache_dir() / "onnx").glob(f"*.int8-{key}.json")):
        try:
            gate = GateResult.from_json(read_json(gate_path))
        except (OSError, ValueError, TypeError):
            continue
        verdict = "passed" if gate.passed else "failed"
        return (f"{tag}: recipe {gate.recipe}, gate {verdict} on {gate.cpu or 'an unrecorded CPU'} "
                f"(mean cosine {gate.mean_cosine:.4f})")
    return f"{tag}: model no longer cached"


@dataclass
class GateResult:
    """What the gate measured for the kept model, and why it passed or not."""

    passed: bool
    reason: str
    recipe: str
    mean_cosine: float
    p1_cosine: float
    min_cosine: float
    top10_overlap: float
    n_calibration: int
    n_held: int
    seconds: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    speedup: float = 0.0  # int8 / fp32 speed measured with the gate (0: not measured)
    cpu: str = ""  # CpuFeatures.isa of the host the gate was measured on
    why: str = ""  # why these recipes were tried on that CPU

    def summary(self) -> str:
        verdict = "passes" if self.passed else "fails"
        where = f" on {self.cpu}" if self.cpu else ""
        fast = f"; {self.speedup:.2f}x fp32's speed" if self.speedup else ""
        return (f"int8 {verdict} the gate ({self.reason}): cosine to fp32 mean {self.mean_cosine:.4f}, "
                f"worst 1% {self.p1_cosine:.4f}; top-10 agreement {self.top10_overlap:.3f}{fast} "
                f"on {self.n_held} held images; recipe {self.recipe}{where}")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateResult:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def is_int8_tag(tag: str | None) -> bool:
    return bool(tag) and str(tag).startswith(TAG_PREFIX)


# --------------------------------------------------------------------------------------------
# Cache identity
# --------------------------------------------------------------------------------------------


def calibration_identity(paths: Sequence[str | os.PathLike[str]]) -> str:
    """Hash of the calibration list (path, size, mtime): cheap, and changes when a file does.
    Names are hashed as the file system's bytes, so any name a folder walk accepts (not valid
    UTF-8 included) has an identity."""
    h = hashlib.blake2b(digest_size=8)
    for p in paths:
        name = os.fsencode(p)
        try:
            st = os.stat(p)
            h.update(name + f"|{st.st_size}|{st.st_mtime_ns};".encode())
        except OSError:
            h.update(name + b"|missing;")
    return h.hexdigest()


def int8_key(fp32_path: Path, calib_id: str, recipes: Sequence[Recipe] = (), cpu: CpuFeatures | None = None) -> str:
    """Cache key of an int8 model: the fp32 model, the calibration images, the recipes tried and
    the CPU class they were chosen for and gated on (a model gated on one CPU is not trusted on
    another), plus the recipe code version and ONNX Runtime's version."""
    import onnxruntime

    h = hashlib.blake2b(digest_size=8)
    h.update(f"{fp32_path.name}|{calib_id}|{RECIPE_VERSION}|{onnxruntime.__version__}".encode())
    if cpu is not None:
        h.update(f"|{cpu.isa}|{recipes!r}".encode())
    return h.hexdigest()


def artefacts(fp32_path: Path, key: str) -> tuple[Path, Path]:
    """(quantized model, gate result) beside the fp32 export they derive from."""
    stem = fp32_path.name.removesuffix(".onnx")
    return fp32_path.with_name(f"{stem}.int8-{key}.onnx"), fp32_path.with_name(f"{stem}.int8-{key}.json")


# --------------------------------------------------------------------------------------------
# Graph preparation
# --------------------------------------------------------------------------------------------


def fold_input_normalisation(model: Any, size: int, grid: tuple[float, int, int] = (127.0, -127, 127)) -> bool:
    """Fold ``(x - mean) * scale`` on the uint8 input into the first convolution, in place.

    The exported graph starts ``Cast -> Sub(mean) -> Mul(scale) -> Conv(W, b, pads)``. With
    ``W' = W * scale`` the conv reads raw pixels; the mean becomes a bias ``b - sum(W' * mean)``
    and the zero padding (which was zero *after* normalising) becomes padding with the mean. W'
    is snapped to the int8 grid the quantizer will use (``grid``, see :meth:`Recipe.weight_grid`;
    symmetric, per output channel) and the bias
    computed from the snapped weights, so the folded int8 conv computes what the unfolded one did:
    from float weights, the mean (127 for every tap) would multiply the weights' rounding error.
    Returns False (graph untouched) when the pattern is not there.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    init = {i.name: i for i in g.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producers = {o: n for n in g.node for o in n.output}
    sub = next((n for n in g.node if n.op_type == "Sub" and n.input[1] in init
                and getattr(producers.get(n.input[0]), "op_type", "") == "Cast"), None)
    if sub is None or len(consumers.get(sub.output[0], [])) != 1:
        return False
    mul = consumers[sub.output[0]][0]
    if mul.op_type != "Mul" or len(consumers.get(mul.output[0], [])) != 1:
        return False
    scale_name = mul.input[1] if mul.input[0] == sub.output[0] else mul.input[0]
    conv = consumers[mul.output[0]][0]
    if scale_name not in init or conv.op_type != "Conv" or conv.input[1] not in init:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    weight = numpy_helper.to_array(init[conv.input[1]]).astype(np.float64)
    mean = numpy_helper.to_array(init[sub.input[1]]).astype(np.float64).reshape(-1)
    scale = numpy_helper.to_array(init[scale_name]).astype(np.float64).reshape(-1)
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if (weight.ndim != 4 or attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or len(pads) != 4 or mean.size != weight.shape[1] or scale.size != weight.shape[1]):
        return False
    bias = (numpy_helper.to_array(init[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2]
            else np.zeros(weight.shape[0]))

    w = weight * scale.reshape(1, -1, 1, 1)
    div, lo, hi = grid
    step = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / div
    step[step == 0] = 1.0
    w = np.clip(np.round(w / step.reshape(-1, 1, 1, 1)), lo, hi) * step.reshape(-1, 1, 1, 1)
    b = bias - (w * mean.reshape(1, -1, 1, 1)).sum(axis=(1, 2, 3))
    g.initializer.extend([numpy_helper.from_array(w.astype(np.float32), "imrs_folded_w"),
                          numpy_helper.from_array(b.astype(np.float32), "imrs_folded_b")])
    src = sub.input[0]
    at = list(g.node).index(sub)
    new_nodes = []
    if any(pads):
        same = bool(np.allclose(mean, mean[0]))
        g.initializer.append(numpy_helper.from_array(
            np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64), "imrs_fold_pads"))
        g.initializer.append(numpy_helper.from_array(np.array(mean[0] if same else 0.0, np.float32),
                                                     "imrs_fold_pad_value"))
        new_nodes.append(helper.make_node("Pad", [src, "imrs_fold_pads", "imrs_fold_pad_value"],
                                          ["imrs_fold_padded"], name="imrs_fold_pad", mode="constant"))
        src = "imrs_fold_padded"
        if not same:  # a per-channel mean: zero padding, then the mean added on the border only
            h, wd = size + pads[0] + pads[2], size + pads[1] + pads[3]
            border = np.zeros((1, mean.size, h, wd), np.float32)
            border[0] = mean.reshape(-1, 1, 1)
            border[0, :, pads[0]:pads[0] + size, pads[1]:pads[1] + size] = 0.0
            g.initializer.append(numpy_helper.from_array(border, "imrs_fold_border"))
            new_nodes.append(helper.make_node("Add", [src, "imrs_fold_border"], ["imrs_fold_bordered"],
                                              name="imrs_fold_border_add"))
            src = "imrs_fold_bordered"
        for a in conv.attribute:
            if a.name == "pads":
                a.ints[:] = [0, 0, 0, 0]
    g.node.remove(sub)
    g.node.remove(mul)
    for j, n in enumerate(new_nodes):
        g.node.insert(at + j, n)
    conv.input[:] = [src, "imrs_folded_w", "imrs_folded_b"]
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    return True


def prepare(fp32_path: Path, out: Path, size: int) -> None:
    """Shape inference + graph optimisation (ONNX Runtime's recommended pre-processing)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _temp_inside(out.parent):
        quant_pre_process(str(fp32_path), str(out), skip_symbolic_shape=True)


def fold_for(prepared: Path, out: Path, size: int, recipe: Recipe) -> bool:
    """The normalisation fold on a copy of the prepared model, snapped to the recipe's weight grid.
    Returns whether the fold applied (else ``out`` is the prepared model as it was)."""
    import onnx

    model = onnx.load(str(prepared))
    folded = fold_input_normalisation(model, size, recipe.weight_grid())
    if folded:
        onnx.save(model, str(out))
    else:
        shutil.copyfile(prepared, out)
        log.info("%s: input normalisation not folded (first op is not a plain convolution)", prepared.name)
    return folded


_TEMPDIR_LOCK = threading.Lock()


class _temp_inside:
    """Point :mod:`tempfile`'s default folder at ``folder`` while ONNX Runtime's quantizer runs:
    it writes its intermediate models (``ort.quant.*``) to the system temp folder, where a killed
    build would leave hundreds of MB behind. Inside IMRS's own work folder they are cleaned with it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> None:
        _TEMPDIR_LOCK.acquire()
        self.saved = tempfile.tempdir
        tempfile.tempdir = str(self.folder)

    def __exit__(self, *exc: object) -> None:
        tempfile.tempdir = self.saved
        _TEMPDIR_LOCK.release()


def _reader(input_name: str, arrays: Sequence[np.ndarray], batch: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Batches of the calibration images; ``set_range`` lets the calibrator take one batch per
        collection pass, so histogram calibrators never hold every activation of every image."""

        def __init__(self) -> None:
            self.batches = [np.stack(arrays[i:i + batch]) for i in range(0, len(arrays), batch)]
            self.pos, self.end = 0, len(self.batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= self.end:
                return None
            self.pos += 1
            return {input_name: self.batches[self.pos - 1]}

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pos, self.end = start_index, min(end_index, len(self.batches))

        def rewind(self) -> None:
            self.pos, self.end = 0, len(self.batches)

    return Reader()


def quantize(prepared: Path, out: Path, arrays: Sequence[np.ndarray], recipe: Recipe) -> None:
    """Quantize ``prepared`` (already folded for ``recipe``) into ``out``. ONNX Runtime's temporary
    files go to ``out``'s folder."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    model = onnx.load(str(prepared), load_external_data=False)
    exclude = [n.name for n in model.graph.node if n.op_type in recipe.float_ops]
    input_name = model.graph.input[0].name
    del model
    qtype = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    # symmetric weights (zero point 0, or 128 for uint8): what Recipe.weight_grid and the fold assume
    extra: dict[str, Any] = {"WeightSymmetric": True, "MatMulConstBOnly": bool(recipe.only_ops)}
    with _temp_inside(out.parent):
        if recipe.dynamic:
            quantize_dynamic(str(prepared), str(out), per_channel=True, reduce_range=recipe.reduce_range,
                             weight_type=qtype[recipe.weight], nodes_to_exclude=exclude,
                             op_types_to_quantize=list(recipe.only_ops or []), extra_options=extra)
            return
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[recipe.calibrate]
        quantize_static(
            str(prepared), str(out), _reader(input_name, arrays, recipe.batch),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=recipe.reduce_range,
            activation_type=qtype[recipe.activation], weight_type=qtype[recipe.weight],
            calibrate_method=method, nodes_to_exclude=exclude, op_types_to_quantize=list(recipe.only_ops or []),
            # One batch per calibration pass (ORT's name for it says MinMax; it applies to every method).
            # Linear layers only: a MatMul of two activations (attention) stays in float.
            extra_options={"CalibStridedMinMax": 1, **extra},
        )


# --------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def gate_metrics(ref: np.ndarray, got: np.ndarray, k: int = 10) -> dict[str, float]:
    """Cosine of each image's int8 vector to its fp32 vector, and how many of each image's ``k``
    nearest neighbours among the held images (int8 query vs int8 vectors) are its fp32 ones."""
    a, b = _unit(ref), _unit(got)
    cos = np.sum(a * b, axis=1)
    n = len(a)
    kk = max(1, min(k, n - 1))
    overlap = 1.0
    if n > 1:
        sa, sb = a @ a.T, b @ b.T
        np.fill_diagonal(sa, -np.inf)
        np.fill_diagonal(sb, -np.inf)
        ta = np.argpartition(-sa, kk - 1, axis=1)[:, :kk]
        tb = np.argpartition(-sb, kk - 1, axis=1)[:, :kk]
        overlap = float(np.mean([len(set(x) & set(y)) / kk for x, y in zip(ta.tolist(), tb.tolist(), strict=True)]))
    return {"mean_cosine": float(cos.mean()), "p1_cosine": float(np.percentile(cos, 1)),
            "min_cosine": float(cos.min()), "top10_overlap": overlap}


def speedup(fp32_path: Path, int8_path: Path, arrays: Sequence[np.ndarray], runs: int = 5) -> float:
    """int8 / fp32 speed on this CPU: one single-threaded session each, the same batch of up to 4
    images, best of ``runs`` interleaved timings after a warm-up. Coarse (a loaded machine blurs
    it), but enough to tell a kernel that is several times slower than fp32."""
    import onnxruntime as ort

    batch = np.stack(arrays[:4])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sessions = [ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
                for p in (fp32_path, int8_path)]
    feeds = [{s.get_inputs()[0].name: batch} for s in sessions]
    best = [float("inf"), float("inf")]
    for i in range(runs + 1):
        for j, (sess, feed) in enumerate(zip(sessions, feeds, strict=True)):
            t0 = time.perf_counter()
            sess.run(None, feed)
            if i:  # the first run warms up
                best[j] = min(best[j], time.perf_counter() - t0)
    return best[0] / max(best[1], 1e-9)


def judge(m: dict[str, float]) -> tuple[bool, str]:
    """(passed, why) from the gate's figures; ``speedup`` counts only where it was measured."""
    fails = []
    if not m["mean_cosine"] >= GATE_MEAN_COSINE:
        fails.append(f"mean cosine {m['mean_cosine']:.4f} < {GATE_MEAN_COSINE}")
    if not m["p1_cosine"] >= GATE_P1_COSINE:
        fails.append(f"worst-1% cosine {m['p1_cosine']:.4f} < {GATE_P1_COSINE}")
    if not m["top10_overlap"] >= GATE_TOP10_OVERLAP:
        fails.append(f"top-10 agreement {m['top10_overlap']:.3f} < {GATE_TOP10_OVERLAP}")
    if "speedup" in m and not m["speedup"] >= GATE_MIN_SPEEDUP:
        fails.append(f"{m['speedup']:.2f}x fp32's speed < {GATE_MIN_SPEEDUP}x")
    if fails:
        return False, "; ".join(fails)
    fast = f", {m['speedup']:.2f}x fp32's speed" if "speedup" in m else ""
    return True, (f"mean cosine >= {GATE_MEAN_COSINE}, worst-1% >= {GATE_P1_COSINE}, "
                  f"top-10 agreement >= {GATE_TOP10_OVERLAP}{fast}")


# --------------------------------------------------------------------------------------------
# Building, caching, reopening
# --------------------------------------------------------------------------------------------


def split_sample(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """(calibration, held) halves, interleaved so both cover the whole sample."""
    items = [Path(p) for p in paths]
    return items[0::2][:CALIBRATION_IMAGES], items[1::2][:HELD_IMAGES]


def _decode(paths: Sequence[Path], pre: Preprocess) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for batch in iter_batches(paths, pre, 32, decode_workers_for(cpu_count())):
        out.extend(batch.array)
    return out


def features(runner: Any, arrays: Sequence[np.ndarray], chunk: int = 16) -> np.ndarray:
    """Raw features of pre-made uint8 arrays, run with the runner's own concurrency."""
    if not arrays:
        return np.zeros((0, 0), np.float32)
    chunks = [np.stack(arrays[i:i + chunk]) for i in range(0, len(arrays), chunk)]
    k = max(1, int(getattr(runner, "concurrency", 1)))
    if k == 1:
        return np.concatenate([runner(c) for c in chunks])
    with ThreadPoolExecutor(k, thread_name_prefix="imrs-int8") as pool:
        return np.concatenate(list(pool.map(runner, chunks)))


def _runner(path: Path) -> OnnxRunner:
    workers, threads = onnx_layout(cpu_count())
    return OnnxRunner(path, workers=workers, threads=threads)


def _quiet_onnxruntime() -> None:
    """The quantizer's own sessions would print a warning per folded initializer."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


WORK_DIR = ".int8-work"
#: A work folder whose process is gone, or older than this, is removed by the next build.
STALE_WORK_SECONDS = 24 * 3600


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_dead_work(root: Path) -> int:
    """Remove work folders of builds that were killed (their process is gone on this host, or they
    are older than a day, whichever host made them). Returns how many were removed."""
    removed = 0
    host = socket.gethostname()
    try:
        entries = list(root.iterdir())
    except OSError:
        return 0
    for d in entries:
        parts = d.name.split("~")  # imrs-int8~<host>~<pid>~<random>
        if len(parts) != 4 or parts[0] != "imrs-int8":
            continue
        try:
            age = time.time() - d.stat().st_mtime
            dead = parts[1] == host and parts[2].isdigit() and not _pid_alive(int(parts[2]))
        except OSError:
            continue
        if dead or age > STALE_WORK_SECONDS:
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    if removed:
        log.info("removed %d work folder(s) of killed int8 builds from %s", removed, root)
    return removed


def work_folder(beside: Path) -> Path:
    """A fresh folder for one build, under the model cache (not the system temp), named for this
    host and process so the next build can tell a killed one's folder from a running one's."""
    root = beside / WORK_DIR
    root.mkdir(parents=True, exist_ok=True)
    clean_dead_work(root)
    return Path(tempfile.mkdtemp(prefix=f"imrs-int8~{socket.gethostname().replace('~', '-')}~{os.getpid()}~",
                                 dir=root))


def build(name: str, fp32: OnnxRunner, pre: Preprocess, paths: Sequence[str | os.PathLike[str]],
          recipes: Sequence[Recipe], model_path: Path, gate_path: Path, *, cpu: CpuFeatures | None = None,
          why: str = "") -> GateResult:
    """Calibrate, quantize and gate each recipe in turn; keep the first that passes (else the best
    by mean cosine). Writes the model and the gate result atomically."""
    t0 = time.perf_counter()
    cpu = cpu or cpu_features()
    cal_paths, held_paths = split_sample(paths)
    cal, held = _decode(cal_paths, pre), _decode(held_paths, pre)
    if len(cal) < MIN_IMAGES // 2 or len(held) < MIN_IMAGES // 2:
        raise IMRSError(f"int8 for {name} needs at least {MIN_IMAGES} readable images to calibrate and "
                        f"check on; got {len(cal) + len(held)}")
    _quiet_onnxruntime()
    ref = features(fp32, held)
    log.info("int8 %s: calibrating on %d images, gate on %d", name, len(cal), len(held))
    attempts: list[dict[str, Any]] = []
    best: tuple[float, Path, dict[str, Any]] | None = None
    tmp = work_folder(model_path.parent)
    try:
        prepared = tmp / "prepared.onnx"
        prepare(fp32.path, prepared, pre.size)
        folded = False
        for recipe in recipes:
            out = tmp / f"{recipe.name}.onnx"
            t1 = time.perf_counter()
            try:
                src = tmp / f"{recipe.name}.prepared.onnx"
                folded = fold_for(prepared, src, pre.size, recipe)
                quantize(src, out, cal, recipe)
                m = gate_metrics(ref, features(_runner(out), held))
                m["speedup"] = speedup(fp32.path, out, held)
            except Exception as exc:  # a recipe ORT cannot apply to this graph: try the next
                log.warning("int8 %s: recipe %s failed: %s: %s", name, recipe.name, type(exc).__name__, exc)
                attempts.append({"recipe": recipe.name, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            passed, verdict = judge(m)
            attempts.append({"recipe": recipe.name, "describe": recipe.describe(), "passed": passed, "reason": verdict,
                             "seconds": round(time.perf_counter() - t1, 1), **m})
            log.info("int8 %s: recipe %s: %s (%s)", name, recipe.name, "pass" if passed else "fail", verdict)
            if best is None or passed or m["mean_cosine"] > best[0]:
                best = (2.0 if passed else m["mean_cosine"], out, attempts[-1])
            if passed:
                break
        if best is None:
            raise IMRSError(f"int8 quantization failed for {name}: {attempts[-1]['error'] if attempts else '?'}")
        with atomic_path(model_path, suffix=".onnx") as dst:
            shutil.copyfile(best[1], dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    chosen = best[2]
    result = GateResult(passed=bool(chosen["passed"]), reason=str(chosen["reason"]), recipe=str(chosen["recipe"]),
                        mean_cosine=chosen["mean_cosine"], p1_cosine=chosen["p1_cosine"],
                        min_cosine=chosen["min_cosine"], top10_overlap=chosen["top10_overlap"],
                        n_calibration=len(cal), n_held=len(held), seconds=round(time.perf_counter() - t0, 1),
                        attempts=attempts, speedup=chosen["speedup"], cpu=cpu.isa, why=why)
    write_gate(gate_path, result, name, folded)
    return result


def write_gate(path: Path, result: GateResult, name: str, folded: bool | None = None) -> None:
    import onnxruntime

    data = asdict(result)
    data.update(backbone=name, recipe_version=RECIPE_VERSION, onnxruntime=onnxruntime.__version__,
                cpu_described=cpu_features().describe(),  # a gate is always measured on this host
                thresholds={"mean_cosine": GATE_MEAN_COSINE, "p1_cosine": GATE_P1_COSINE,
                            "top10_overlap": GATE_TOP10_OVERLAP})
    if folded is not None:
        data["input_normalisation_folded"] = folded
    atomic_write_json(path, data)


def regate(name: str, fp32: OnnxRunner, pre: Preprocess, paths: Sequence[str | os.PathLike[str]],
           model_path: Path, gate_path: Path, recipe: str = "(cached model)", cpu: CpuFeatures | None = None
           ) -> GateResult:
    """The gate alone, on this CPU, for a cached model whose gate result is missing or was measured
    on another kind of CPU."""
    t0 = time.perf_counter()
    cal_paths, held_paths = split_sample(paths)
    held = _decode(held_paths, pre)
    _quiet_onnxruntime()
    m = gate_metrics(features(fp32, held), features(_runner(model_path), held))
    m["speedup"] = speedup(fp32.path, model_path, held)
    passed, why = judge(m)
    result = GateResult(passed=passed, reason=why, recipe=recipe, n_calibration=len(cal_paths),
                        n_held=len(held), seconds=round(time.perf_counter() - t0, 1), cpu=(cpu or cpu_features()).isa,
                        why="measured again on this CPU", **m)
    write_gate(gate_path, result, name)
    return result


def int8_runner(name: str, fp32: OnnxRunner, pre: Preprocess, convnet: bool, *,
                calibration: Sequence[str | os.PathLike[str]] | None = None,
                tag: str | None = None, cpu: CpuFeatures | None = None) -> tuple[OnnxRunner, GateResult, str]:
    """(runner, gate result, runtime tag) for ``name``'s int8 model.

    With ``tag`` the cached model of that tag is reopened (what a collection's vectors were made
    with); with ``calibration`` images, the model for them is reused or built. Raises IMRSError
    when neither gives a model. The recipes tried depend on ``cpu`` (this host's by default), and
    a cached model whose gate was measured on another kind of CPU is gated again here.
    """
    cpu = cpu or cpu_features()
    recipes, why = choose_recipes(cpu, convnet)
    key = None
    if tag is not None:
        if not is_int8_tag(tag):
            raise IMRSError(f"not an int8 runtime tag: {tag!r}")
        key = tag[len(TAG_PREFIX):]
        if not artefacts(fp32.path, key)[0].is_file():
            if not calibration:
                raise IMRSError(f"the int8 model {tag} of {name} is no longer cached ({fp32.path.parent})")
            # a new model gets its own tag: vectors of the lost one must not be mixed with its
            log.warning("the int8 model %s of %s is no longer cached: building one from the calibration images",
                        tag, name)
            key = None
    if key is None:
        if not calibration:
            raise IMRSError(f"int8 for {name} needs calibration images (a collection passes a sample of its own)")
        key = int8_key(fp32.path, calibration_identity(calibration), recipes, cpu)
    model_path, gate_path = artefacts(fp32.path, key)
    gate: GateResult | None = None
    if model_path.is_file() and gate_path.is_file():
        try:
            gate = GateResult.from_json(read_json(gate_path))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("unreadable int8 gate result %s (%s): measuring again", gate_path, exc)
    other_cpu = gate is not None and gate.cpu != cpu.isa
    if gate is None or other_cpu:
        if not calibration:
            lost = (f"was gated on another kind of CPU ({gate.cpu or 'unknown'}, this one is {cpu.isa})" if other_cpu
                    else f"has lost its gate result ({gate_path})")
            raise IMRSError(f"the int8 model {tag} of {name} {lost}; index again to measure it")
        if model_path.is_file():
            old = gate.recipe if gate is not None else "(cached model)"
            gate = regate(name, fp32, pre, calibration, model_path, gate_path, recipe=old, cpu=cpu)
        else:
            try:
                gate = build(name, fp32, pre, calibration, recipes, model_path, gate_path, cpu=cpu, why=why)
            except OSError as exc:  # read-only or full cache dir: build for this process only
                log.warning("cannot cache the int8 model in %s (%s); using a temporary file", model_path.parent, exc)
                model_path, gate_path = (scratch_dir() / model_path.name, scratch_dir() / gate_path.name)
                gate = build(name, fp32, pre, calibration, recipes, model_path, gate_path, cpu=cpu, why=why)
        log.info("%s: %s", name, gate.summary())
    return _runner(model_path), gate, TAG_PREFIX + key
