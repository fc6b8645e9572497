"""The backbone registry: what each backbone is, how to load it, and how to ask its status cheaply.

A family module (torchvision, timm, open_clip, EfficientNet-Lite) registers a :class:`BackboneSpec`
on import. Nothing here imports torch: listing backbones and their status is what the CLI and the
UI's settings page do, and they should not pay torch's import time for it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UnknownBackboneError
from .place import WeightsPlace
from .preprocess import Preprocess

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    dim: int
    supports_text: bool
    family: str
    description: str
    weights: str  # human description of the pretrained weights and where they come from
    input_size: int = 224


@dataclass
class LoadedBackbone:
    """What a family's loader hands back: torch modules, not yet placed on a device -- or, from a
    torch-free loader, a ready ONNX model (``onnx_path``) and the classifier as arrays."""

    image_model: nn.Module | None  # normalised float NCHW -> (B, dim) raw (unnormalised) features
    head: nn.Module | None = None  # raw features -> class logits (EfficientNet-Lite: ImageNet)
    class_names: list[str] | None = None
    text_model: nn.Module | None = None  # token ids -> (B, dim)
    tokenizer: Callable[[Sequence[str]], Any] | None = None
    convnet: bool = True  # channels_last helps convolutions, not transformers
    weights_label: str = ""
    onnx_path: Path | None = None  # uint8 NHWC -> features (B, dim) [, logits]; no torch needed
    head_arrays: Callable[[], tuple[Any, Any]] | None = None  # () -> (W (classes, dim), b), numpy


#: How to add PyTorch to an install that left it out (the base install has no torch).
TORCH_EXTRA_HINT = "pip install -c constraints.txt -e '.[torch]' in the IMRS checkout (or pip install 'imrs[torch]')"


def torch_installed() -> bool:
    """Whether PyTorch can be imported, asked without importing it (seconds) or its CUDA stack."""
    return importlib.util.find_spec("torch") is not None


def torch_missing(name: str) -> str | None:
    """One line saying how to add PyTorch when backbone ``name`` needs it and it is not installed."""
    if torch_installed():
        return None
    return f"backbone {name} needs PyTorch, which this install leaves out; add it with: {TORCH_EXTRA_HINT}"


#: Fastest measured runtime per device (scripts/bench_embed.py): ONNX Runtime on CPU, eager fp16 on CUDA.
DEFAULT_RUNTIMES: dict[str, str] = {"cpu": "onnx", "cuda": "eager"}


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. ``load(weights, checkpoint, place)`` must raise WeightsUnavailableError
    quickly; ``status(place)`` answers from files only. ``place`` says where files are looked for
    and whether the network may be tried (:class:`~imrs.encoders.place.WeightsPlace`)."""

    info: BackboneInfo
    preprocess: Preprocess
    load: Callable[[str, Path | None, WeightsPlace], LoadedBackbone]
    status: Callable[[WeightsPlace], tuple[str, str]]
    default_runtime: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RUNTIMES))
    cpu_batch_size: int = 32
    cuda_batch_size: int = 128
    checkpoint_filenames: tuple[str, ...] = ()  # upstream names also accepted in IMRS_CHECKPOINT_DIR
    download_host: str = ""  # where pretrained weights come from; "" when they ship with a package
    #: Torch-free loader for the default CPU path (pretrained, fp32): builds or reopens an ONNX
    #: model, so a base install without PyTorch runs this backbone. None: every path needs torch.
    load_onnx: Callable[[Path | None, WeightsPlace], LoadedBackbone] | None = None


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


def backbone_status(name: str, place: WeightsPlace | None = None) -> tuple[str, str]:
    """("ready" | "needs download" | "failed", reason) from caches and files, without loading
    (``place``: where to look; None: the environment's settings)."""
    spec = get_spec(name)
    if spec.load_onnx is None and not torch_installed():
        return "failed", torch_missing(name) or ""
    try:
        return spec.status(place or WeightsPlace.from_settings())
    except Exception as exc:  # a status probe must never take the settings page down
        return "failed", f"{type(exc).__name__}: {exc}"


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
