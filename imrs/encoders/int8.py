"""int8 on CPU: ONNX Runtime static quantization, calibrated on the collection, behind a quality gate.

Why it is built this way (measured on EfficientNet-Lite0, 2 cores with AVX-512 VNNI; numbers in
``scripts/bench_embed.py`` and ``scripts/bench_int8_quality.py``):

- QDQ format, uint8 activations x int8 per-channel weights (U8S8, what VNNI's dot product takes),
  MinMax ranges from a few hundred of the collection's own images. ONNX Runtime fuses the
  Q/DQ pairs into QLinearConv / QLinearMatMul kernels.
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
calibration images (path, size, mtime) and the recipe version. Vectors from an int8 model carry
the tag ``int8-<key>`` (:attr:`Encoder.runtime_tag`): the collection stores it with every cache and
never mixes it with fp32 vectors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
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
from .pipeline import cpu_count, decode_workers_for, iter_batches
from .preprocess import Preprocess
from .runtime import OnnxRunner, onnx_layout, scratch_dir

log = logging.getLogger(__name__)

#: Bump when anything below changes what a quantized model contains: invalidates cached models.
RECIPE_VERSION = 1
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

TAG_PREFIX = "int8-"
FP32_TAG = "fp32"


@dataclass(frozen=True)
class Recipe:
    """One way to quantize. ``only_ops``: quantize just these op types (None: every op ONNX Runtime
    can); ``float_ops``: op types left in float (sensitive to int8)."""

    name: str
    calibrate: str = "minmax"  # minmax | percentile | entropy
    only_ops: tuple[str, ...] | None = None
    float_ops: tuple[str, ...] = ()
    batch: int = 8  # calibration batch: bounded memory for histogram calibrators

    def describe(self) -> str:
        which = f"only {'/'.join(self.only_ops)}" if self.only_ops else "all ops"
        keep = f" but {'/'.join(self.float_ops)}" if self.float_ops else ""
        return f"QDQ u8s8 per-channel, {which}{keep}, {self.calibrate}"


LINEAR_OPS = ("Conv", "MatMul", "Gemm")

#: Tried in order until one passes the gate. Convnets: every op in int8 (a conv's output range is
#: then the one after its ReLU/ReLU6, which the quantizer fuses). Transformers: only the layers
#: with weights -- quantizing everything (Softmax, LayerNorm, GELU, residual adds, attention's
#: activation x activation MatMuls) cost ViT-B/16 a mean cosine of 0.92 to fp32 (worst 1%: 0.66);
#: keeping Softmax/LayerNorm/GELU in float only reached 0.955 (percentile calibration: 0.963);
#: the weight layers alone give 0.999 and still 2.3x fp32's speed.
CONVNET_RECIPES = (Recipe("u8s8-minmax"), Recipe("u8s8-linear-minmax", only_ops=LINEAR_OPS, batch=4))
TRANSFORMER_RECIPES = (Recipe("u8s8-linear-minmax", only_ops=LINEAR_OPS, batch=4),)


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

    def summary(self) -> str:
        verdict = "passes" if self.passed else "fails"
        return (f"int8 {verdict} the gate ({self.reason}): cosine to fp32 mean {self.mean_cosine:.4f}, "
                f"worst 1% {self.p1_cosine:.4f}; top-10 agreement {self.top10_overlap:.3f} "
                f"on {self.n_held} held images; recipe {self.recipe}")

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
    """Hash of the calibration list (path, size, mtime): cheap, and changes when a file does."""
    h = hashlib.blake2b(digest_size=8)
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.fspath(p)}|{st.st_size}|{st.st_mtime_ns};".encode())
        except OSError:
            h.update(f"{os.fspath(p)}|missing;".encode())
    return h.hexdigest()


def int8_key(fp32_path: Path, calib_id: str) -> str:
    import onnxruntime

    h = hashlib.blake2b(digest_size=8)
    h.update(f"{fp32_path.name}|{calib_id}|{RECIPE_VERSION}|{onnxruntime.__version__}".encode())
    return h.hexdigest()


def artefacts(fp32_path: Path, key: str) -> tuple[Path, Path]:
    """(quantized model, gate result) beside the fp32 export they derive from."""
    stem = fp32_path.name.removesuffix(".onnx")
    return fp32_path.with_name(f"{stem}.int8-{key}.onnx"), fp32_path.with_name(f"{stem}.int8-{key}.json")


# --------------------------------------------------------------------------------------------
# Graph preparation
# --------------------------------------------------------------------------------------------


def fold_input_normalisation(model: Any, size: int) -> bool:
    """Fold ``(x - mean) * scale`` on the uint8 input into the first convolution, in place.

    The exported graph starts ``Cast -> Sub(mean) -> Mul(scale) -> Conv(W, b, pads)``. With
    ``W' = W * scale`` the conv reads raw pixels; the mean becomes a bias ``b - sum(W' * mean)``
    and the zero padding (which was zero *after* normalising) becomes padding with the mean. W'
    is snapped to the int8 grid the quantizer will use (symmetric, per output channel) and the bias
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
    step = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0
    step[step == 0] = 1.0
    w = np.round(w / step.reshape(-1, 1, 1, 1)) * step.reshape(-1, 1, 1, 1)
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


def prepare(fp32_path: Path, out: Path, size: int) -> bool:
    """Shape inference + graph optimisation (ONNX Runtime's recommended pre-processing), then the
    normalisation fold. Returns whether the fold applied."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out), skip_symbolic_shape=True)
    model = onnx.load(str(out))
    folded = fold_input_normalisation(model, size)
    if folded:
        onnx.save(model, str(out))
    else:
        log.info("%s: input normalisation not folded (first op is not a plain convolution)", fp32_path.name)
    return folded


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
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(prepared), load_external_data=False)
    exclude = [n.name for n in model.graph.node if n.op_type in recipe.float_ops]
    input_name = model.graph.input[0].name
    del model
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[recipe.calibrate]
    quantize_static(
        str(prepared), str(out), _reader(input_name, arrays, recipe.batch),
        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=method, nodes_to_exclude=exclude, op_types_to_quantize=list(recipe.only_ops or []),
        # One batch per calibration pass (ORT's name for it says MinMax; it applies to every method).
        # Linear layers only: a MatMul of two activations (attention) stays in float.
        extra_options={"CalibStridedMinMax": 1, "MatMulConstBOnly": bool(recipe.only_ops)},
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


def judge(m: dict[str, float]) -> tuple[bool, str]:
    fails = []
    if not m["mean_cosine"] >= GATE_MEAN_COSINE:
        fails.append(f"mean cosine {m['mean_cosine']:.4f} < {GATE_MEAN_COSINE}")
    if not m["p1_cosine"] >= GATE_P1_COSINE:
        fails.append(f"worst-1% cosine {m['p1_cosine']:.4f} < {GATE_P1_COSINE}")
    if not m["top10_overlap"] >= GATE_TOP10_OVERLAP:
        fails.append(f"top-10 agreement {m['top10_overlap']:.3f} < {GATE_TOP10_OVERLAP}")
    if fails:
        return False, "; ".join(fails)
    return True, (f"mean cosine >= {GATE_MEAN_COSINE}, worst-1% >= {GATE_P1_COSINE}, "
                  f"top-10 agreement >= {GATE_TOP10_OVERLAP}")


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


def build(name: str, fp32: OnnxRunner, pre: Preprocess, paths: Sequence[str | os.PathLike[str]],
          recipes: Sequence[Recipe], model_path: Path, gate_path: Path) -> GateResult:
    """Calibrate, quantize and gate each recipe in turn; keep the first that passes (else the best
    by mean cosine). Writes the model and the gate result atomically."""
    t0 = time.perf_counter()
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
    with tempfile.TemporaryDirectory(prefix="imrs-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        folded = prepare(fp32.path, prepared, pre.size)
        for recipe in recipes:
            out = Path(tmp) / f"{recipe.name}.onnx"
            t1 = time.perf_counter()
            try:
                quantize(prepared, out, cal, recipe)
                m = gate_metrics(ref, features(_runner(out), held))
            except Exception as exc:  # a recipe ORT cannot apply to this graph: try the next
                log.warning("int8 %s: recipe %s failed: %s: %s", name, recipe.name, type(exc).__name__, exc)
                attempts.append({"recipe": recipe.name, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            passed, why = judge(m)
            attempts.append({"recipe": recipe.name, "describe": recipe.describe(), "passed": passed, "reason": why,
                             "seconds": round(time.perf_counter() - t1, 1), **m})
            log.info("int8 %s: recipe %s: %s (%s)", name, recipe.name, "pass" if passed else "fail", why)
            if best is None or passed or m["mean_cosine"] > best[0]:
                best = (2.0 if passed else m["mean_cosine"], out, attempts[-1])
            if passed:
                break
        if best is None:
            raise IMRSError(f"int8 quantization failed for {name}: {attempts[-1]['error'] if attempts else '?'}")
        with atomic_path(model_path, suffix=".onnx") as dst:
            shutil.copyfile(best[1], dst)
    chosen = best[2]
    result = GateResult(passed=bool(chosen["passed"]), reason=str(chosen["reason"]), recipe=str(chosen["recipe"]),
                        mean_cosine=chosen["mean_cosine"], p1_cosine=chosen["p1_cosine"],
                        min_cosine=chosen["min_cosine"], top10_overlap=chosen["top10_overlap"],
                        n_calibration=len(cal), n_held=len(held), seconds=round(time.perf_counter() - t0, 1),
                        attempts=attempts)
    write_gate(gate_path, result, name, folded)
    return result


def write_gate(path: Path, result: GateResult, name: str, folded: bool | None = None) -> None:
    import onnxruntime

    data = asdict(result)
    data.update(backbone=name, recipe_version=RECIPE_VERSION, onnxruntime=onnxruntime.__version__,
                thresholds={"mean_cosine": GATE_MEAN_COSINE, "p1_cosine": GATE_P1_COSINE,
                            "top10_overlap": GATE_TOP10_OVERLAP})
    if folded is not None:
        data["input_normalisation_folded"] = folded
    atomic_write_json(path, data)


def regate(name: str, fp32: OnnxRunner, pre: Preprocess, paths: Sequence[str | os.PathLike[str]],
           model_path: Path, gate_path: Path) -> GateResult:
    """The gate alone, for a cached model whose gate result is missing."""
    t0 = time.perf_counter()
    cal_paths, held_paths = split_sample(paths)
    held = _decode(held_paths, pre)
    _quiet_onnxruntime()
    m = gate_metrics(features(fp32, held), features(_runner(model_path), held))
    passed, why = judge(m)
    result = GateResult(passed=passed, reason=why, recipe="(cached model)", n_calibration=len(cal_paths),
                        n_held=len(held), seconds=round(time.perf_counter() - t0, 1), **m)
    write_gate(gate_path, result, name)
    return result


def int8_runner(name: str, fp32: OnnxRunner, pre: Preprocess, convnet: bool, *,
                calibration: Sequence[str | os.PathLike[str]] | None = None,
                tag: str | None = None) -> tuple[OnnxRunner, GateResult, str]:
    """(runner, gate result, runtime tag) for ``name``'s int8 model.

    With ``tag`` the cached model of that tag is reopened (what a collection's vectors were made
    with); with ``calibration`` images, the model for them is reused or built. Raises IMRSError
    when neither gives a model.
    """
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
        key = int8_key(fp32.path, calibration_identity(calibration))
    model_path, gate_path = artefacts(fp32.path, key)
    gate: GateResult | None = None
    if model_path.is_file() and gate_path.is_file():
        try:
            gate = GateResult.from_json(read_json(gate_path))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("unreadable int8 gate result %s (%s): measuring again", gate_path, exc)
    if gate is None:
        if not calibration:
            raise IMRSError(f"the int8 model {tag} of {name} has lost its gate result ({gate_path}); "
                            "index again to measure it")
        if model_path.is_file():
            gate = regate(name, fp32, pre, calibration, model_path, gate_path)
        else:
            recipes = CONVNET_RECIPES if convnet else TRANSFORMER_RECIPES
            try:
                gate = build(name, fp32, pre, calibration, recipes, model_path, gate_path)
            except OSError as exc:  # read-only or full cache dir: build for this process only
                log.warning("cannot cache the int8 model in %s (%s); using a temporary file", model_path.parent, exc)
                model_path, gate_path = (scratch_dir() / model_path.name, scratch_dir() / gate_path.name)
                gate = build(name, fp32, pre, calibration, recipes, model_path, gate_path)
        log.info("%s: %s", name, gate.summary())
    return _runner(model_path), gate, TAG_PREFIX + key
