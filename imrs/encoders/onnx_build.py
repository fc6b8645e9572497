"""EfficientNet-Lite0 as one ONNX model, built from its checkpoint without PyTorch.

The default backbone runs on ONNX Runtime anyway; exporting it through torch meant installing
PyTorch (gigabytes) and importing it (seconds) on every cold start just to write a graph of 65
convolutions. Here the graph is written directly with ``onnx.helper`` from the checkpoint's arrays
(read by :mod:`.torchfile`), BatchNorm folded into each convolution, TF-"same" padding as explicit
(possibly asymmetric) pads.

The model takes the decode pipeline's (B, 224, 224, 3) uint8 batch, normalises inside the graph
(``Transpose -> Cast -> Sub(mean) -> Mul(1/std) -> Conv``, the pattern the int8 path folds) and
returns ``features`` (B, 1280), the pooled vector IMRS indexes, and ``logits`` (B, 1000), the
ImageNet classifier that text search and proposed terms read. It is checked against torch's own
model in the test suite (cosine >= 0.9999, same top-5 classes), so its vectors are the "fp32"
vectors every other float runtime writes.

A separate library (onnxscript, spox) could also write the graph; a few helper calls do here.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WeightsUnavailableError
from ..fsutil import atomic_path
from .preprocess import Preprocess

log = logging.getLogger(__name__)

ONNX_OPSET = 17
#: Bump when the graph written here changes: cached models are keyed by it.
BUILD_VERSION = "lite-onnx-v1"
BN_EPS = 1e-3

# (repeats, kernel, stride, expand ratio, in, out) per stage: efficientnet_lite_builder.py's
# Lite0 table (no squeeze-excitation, ReLU6, stem 32 and head 1280 not scaled).
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def same_pads(size: int, kernel: int, stride: int) -> tuple[list[int], int]:
    """ONNX ``pads`` (top, left, bottom, right) of TF "SAME" for a square input, and the output size.
    The extra pixel of an odd total goes to the bottom/right, as in TensorFlow."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    lo, hi = total // 2, total - total // 2
    return [lo, lo, hi, hi], out


def fold_bn(weight: np.ndarray, sd: Mapping[str, np.ndarray], bn: str, eps: float = BN_EPS
            ) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the following inference-mode BatchNorm folded in (float64 maths)."""
    gamma = sd[f"{bn}.weight"].astype(np.float64)
    beta = sd[f"{bn}.bias"].astype(np.float64)
    mean = sd[f"{bn}.running_mean"].astype(np.float64)
    var = sd[f"{bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + eps)
    w = weight.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
    return w.astype(np.float32), (beta - mean * scale).astype(np.float32)


@dataclass
class _Graph:
    """Nodes and initializers being written; names are generated in order."""

    nodes: list[Any]
    inits: list[Any]

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv_bn(self, x: str, sd: Mapping[str, np.ndarray], conv: str, bn: str, name: str, size: int,
                stride: int = 1, groups: int = 1, relu6: bool = True) -> tuple[str, int]:
        weight = sd[f"{conv}.weight"]
        w, b = fold_bn(weight, sd, bn)
        k = int(weight.shape[-1])
        pads, out = same_pads(size, k, stride)
        y = self.node("Conv", [x, self.const(f"{name}.w", w), self.const(f"{name}.b", b)], f"{name}.conv",
                      kernel_shape=[k, k], strides=[stride, stride], pads=pads, group=groups)
        if relu6:
            y = self.node("Clip", [y, "relu6.min", "relu6.max"], f"{name}.relu6")
        return y, out


def build_lite0(sd: Mapping[str, np.ndarray], pre: Preprocess) -> Any:
    """The ONNX ModelProto of EfficientNet-Lite0 for the state dict ``sd`` (upstream key names)."""
    from onnx import TensorProto, checker, helper

    size = pre.size
    g = _Graph([], [])
    g.const("relu6.min", np.array(0.0, np.float32))
    g.const("relu6.max", np.array(6.0, np.float32))
    x = g.node("Transpose", ["images"], "nchw", perm=[0, 3, 1, 2])
    x = g.node("Cast", [x], "float", to=TensorProto.FLOAT)
    x = g.node("Sub", [x, g.const("mean", np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1))], "centred")
    scale = (1.0 / np.asarray(pre.std, np.float64)).astype(np.float32).reshape(1, 3, 1, 1)
    x = g.node("Mul", [x, g.const("scale", scale)], "normalised")
    x, hw = g.conv_bn(x, sd, "_conv_stem", "_bn0", "stem", size, stride=2)
    i = 0
    for repeats, k, stride, expand, cin, cout in LITE0_STAGES:
        for r in range(repeats):
            s, c_in = (stride, cin) if r == 0 else (1, cout)
            p = f"_blocks.{i}"
            inp, y = x, x
            if expand != 1:
                y, _ = g.conv_bn(y, sd, f"{p}._expand_conv", f"{p}._bn0", f"b{i}.expand", hw)
            dw = sd[f"{p}._depthwise_conv.weight"]
            if int(dw.shape[-1]) != k:
                raise WeightsUnavailableError(f"checkpoint block {i} has a {dw.shape[-1]}x{dw.shape[-1]} depthwise "
                                              f"kernel, EfficientNet-Lite0 has {k}x{k}")
            y, out_hw = g.conv_bn(y, sd, f"{p}._depthwise_conv", f"{p}._bn1", f"b{i}.dw", hw, stride=s,
                                  groups=int(dw.shape[0]))
            y, _ = g.conv_bn(y, sd, f"{p}._project_conv", f"{p}._bn2", f"b{i}.project", out_hw, relu6=False)
            if s == 1 and c_in == cout:
                y = g.node("Add", [y, inp], f"b{i}.residual")
            x, hw = y, out_hw
            i += 1
    x, hw = g.conv_bn(x, sd, "_conv_head", "_bn1", "head", hw)
    x = g.node("GlobalAveragePool", [x], "pooled")
    feats = g.node("Flatten", [x], "features", axis=1)
    fc_w, fc_b = sd["_fc.weight"], sd["_fc.bias"]
    g.node("Gemm", [feats, g.const("fc.w", fc_w.astype(np.float32)), g.const("fc.b", fc_b.astype(np.float32))],
           "logits", transB=1)
    unused = set(sd) - _used_keys(i)
    if unused:
        raise WeightsUnavailableError(f"checkpoint holds weights EfficientNet-Lite0 does not use: "
                                      f"{', '.join(sorted(unused)[:3])}")
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", int(fc_w.shape[1])]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", int(fc_w.shape[0])])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="imrs", producer_version=BUILD_VERSION)
    model.ir_version = 8  # readable by every ONNX Runtime that supports opset 17
    checker.check_model(model)
    return model


def _used_keys(n_blocks: int) -> set[str]:
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"_conv_stem.weight", "_conv_head.weight", "_fc.weight", "_fc.bias"}
    keys |= {f"_bn0.{k}" for k in bn} | {f"_bn1.{k}" for k in bn}
    for i in range(n_blocks):
        p = f"_blocks.{i}"
        keys |= {f"{p}._expand_conv.weight", f"{p}._depthwise_conv.weight", f"{p}._project_conv.weight"}
        keys |= {f"{p}._bn{j}.{k}" for j in range(3) for k in bn}
    return keys


def model_path_for(checkpoint: Path, pre: Preprocess, root: Path, name: str = "efficientnet_lite0") -> Path:
    """Cache file name: a hash of the checkpoint's bytes, the preprocessing and this builder."""
    h = hashlib.blake2b(digest_size=8)
    with open(checkpoint, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(f"|{pre}|{ONNX_OPSET}|{BUILD_VERSION}".encode())
    return root / f"{name}-built-{h.hexdigest()}.onnx"


def ensure_model(checkpoint: Path, pre: Preprocess, path: Path) -> Path:
    """Build ``path`` from ``checkpoint`` unless it is already there (atomic write)."""
    if path.is_file():
        return path
    import onnx

    from .torchfile import read_checkpoint

    model = build_lite0(read_checkpoint(checkpoint), pre)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    log.info("built %s from %s", path, checkpoint)
    return path


def classifier_arrays(checkpoint: Path) -> tuple[np.ndarray, np.ndarray]:
    """(W (1000, 1280), b (1000,)) of the ImageNet classifier, read from the checkpoint."""
    from .torchfile import read_checkpoint

    sd = read_checkpoint(checkpoint)
    return sd["_fc.weight"].astype(np.float32), sd["_fc.bias"].astype(np.float32)
