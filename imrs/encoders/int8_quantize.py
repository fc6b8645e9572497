"""The ONNX graph work of int8: fold the input normalisation, prepare the graph, quantize it.

ONNX Runtime's static quantization (QDQ, per-channel weights) calibrated on arrays of the
collection's own images; which ops and which recipe are decided in :mod:`.int8_recipes`, whether the
result is good enough by the gate in :mod:`.int8`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .int8_recipes import Recipe

log = logging.getLogger(__name__)


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

    with temp_inside(out.parent):
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


class temp_inside:
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
    with temp_inside(out.parent):
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
