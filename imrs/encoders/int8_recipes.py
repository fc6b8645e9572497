"""Which int8 recipe a CPU gets: its instruction-set class, and the recipes tried on it in order.

On x86-64 without VNNI, ONNX Runtime's U8S8 kernels saturate 16-bit sums, so other recipes are
tried there (see :mod:`.int8`). The CPU class and the recipe list are part of an int8 model's key.
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


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
