"""torchvision ImageNet classifiers used as feature extractors (classifier layer removed).

Adding one is a single :func:`torchvision_backbone` call: the architecture function name, the
weights enum, the feature dimension and how to cut off the classifier.

Weights come from torch hub's cache (``$TORCH_HOME/hub/checkpoints``, as ``WeightsPlace`` says), are
downloaded from download.pytorch.org when online, or come from a local file (``IMRS_CHECKPOINT_<NAME>``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .place import WeightsPlace
from .preprocess import Preprocess
from .registry import (
    DEFAULT_RUNTIMES,
    BackboneInfo,
    BackboneSpec,
    LoadedBackbone,
    imagenet_class_names,
    register_backbone,
)
from .weights import (
    host_reachable,
    load_checkpoint_into,
    weights_unavailable,
    wrap_download_errors,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

HOST = "download.pytorch.org"
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _weights_enum(spec: str):
    import torchvision.models as tvm

    enum_name, member = spec.split(".")
    return getattr(getattr(tvm, enum_name), member)


def _strip_fc(model: nn.Module) -> None:
    from torch import nn

    model.fc = nn.Identity()


def _strip_vgg(model: nn.Module) -> None:
    from torch import nn

    model.classifier[-1] = nn.Identity()  # keeps fc7 + ReLU: the 4096-d penultimate layer


def _strip_vit_heads(model: nn.Module) -> None:
    from torch import nn

    model.heads = nn.Identity()  # torchvision's ViT returns the class token before the head


def torchvision_backbone(name: str, arch: str, weights: str, filename: str, dim: int,
                         strip: Callable[[nn.Module], None], preprocess: Preprocess, description: str,
                         *, convnet: bool = True, default_runtime: dict[str, str] | None = None,
                         cpu_batch_size: int = 32, cuda_batch_size: int = 128) -> BackboneSpec:
    """Register ``torchvision.models.<arch>(weights=<weights>)`` with its classifier stripped.

    ``filename`` is the upstream checkpoint name (the last part of the weights' URL), used to find
    it in the hub cache without importing torchvision.
    """

    def cached_file(place: WeightsPlace) -> Path | None:
        path = place.torch_hub_dir / filename
        return path if path.is_file() else None

    def status(place: WeightsPlace) -> tuple[str, str]:
        local = place.checkpoint_for(name)
        if local:
            return "ready", f"local checkpoint {local}"
        path = cached_file(place)
        if path is not None:
            return "ready", f"cached at {path}"
        return "needs download", f"{filename} will be downloaded from {HOST} on first use"

    def load(which: str, checkpoint: Path | None, place: WeightsPlace) -> LoadedBackbone:
        import torchvision.models as tvm

        model = getattr(tvm, arch)(weights=None)
        label = "random"
        if which == "pretrained":
            path = checkpoint or cached_file(place)
            if path is not None:
                load_checkpoint_into(model, path, name)
                label = str(path)
            else:
                hub = str(place.torch_hub_dir)
                if not host_reachable(HOST, place=place):
                    raise weights_unavailable(name, weights, HOST, hub, (filename,))
                with wrap_download_errors(name, HOST, hub, (filename,)):
                    state = _weights_enum(weights).get_state_dict(progress=False, check_hash=True, model_dir=hub)
                model.load_state_dict(state)
                label = f"{weights} (downloaded)"
        strip(model)
        return LoadedBackbone(image_model=model.eval(), convnet=convnet, weights_label=label,
                              class_names=None)

    return register_backbone(BackboneSpec(
        info=BackboneInfo(name=name, dim=dim, supports_text=False, family="torchvision",
                          description=description, weights=f"torchvision {weights} ({HOST})",
                          input_size=preprocess.size),
        preprocess=preprocess,
        load=load,
        status=status,
        default_runtime=dict(default_runtime or DEFAULT_RUNTIMES),
        cpu_batch_size=cpu_batch_size,
        cuda_batch_size=cuda_batch_size,
        checkpoint_filenames=(filename,),
        download_host=HOST,
    ))


def _imagenet(resize: int, size: int = 224) -> Preprocess:
    return Preprocess(size=size, resize=resize, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)


RESNET50 = torchvision_backbone(
    "resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 2048, _strip_fc,
    _imagenet(232), "ResNet-50 (torchvision V2 recipe), 2048-d pooled features")
RESNET18 = torchvision_backbone(
    "resnet18", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth", 512, _strip_fc,
    _imagenet(256), "ResNet-18, 512-d pooled features", cpu_batch_size=64)
VGG16 = torchvision_backbone(
    "vgg16", "vgg16", "VGG16_Weights.IMAGENET1K_V1", "vgg16-397923af.pth", 4096, _strip_vgg,
    _imagenet(256), "VGG-16, 4096-d penultimate (fc7) features", cpu_batch_size=16, cuda_batch_size=64)
VIT_B16 = torchvision_backbone(
    "vit_b16", "vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1", "vit_b_16-c867db91.pth", 768,
    _strip_vit_heads, _imagenet(256), "ViT-B/16 (torchvision), 768-d class token", convnet=False,
    default_runtime=dict(DEFAULT_RUNTIMES), cpu_batch_size=16, cuda_batch_size=128)

__all__ = ["RESNET18", "RESNET50", "VGG16", "VIT_B16", "torchvision_backbone", "imagenet_class_names"]
