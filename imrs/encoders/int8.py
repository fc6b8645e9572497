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

Layout: which recipe a CPU gets is :mod:`.int8_recipes`, the graph work (fold, prepare, quantize)
is :mod:`.int8_quantize`; this module keys, gates, builds and caches the model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IMRSError
from ..fsutil import atomic_path, atomic_write_json, read_json
from .int8_quantize import (  # noqa: F401  (the graph steps; re-exported for callers of this module)
    fold_for,
    fold_input_normalisation,
    prepare,
    quantize,
    temp_inside,
)
from .int8_recipes import (  # noqa: F401  (the recipes; re-exported for callers of this module)
    CONVNET_RECIPES,
    LINEAR_OPS,
    NO_VNNI_CONVNET_RECIPES,
    NO_VNNI_TRANSFORMER_RECIPES,
    TRANSFORMER_RECIPES,
    CpuFeatures,
    Recipe,
    choose_recipes,
    cpu_features,
    parse_cpuinfo,
    recipe_plan,
)
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
