"""Image (and text) encoders behind one interface, chosen by name from a registry.

>>> from imrs.encoders import get_encoder
>>> enc = get_encoder("efficientnet_lite0")          # works offline
>>> vecs = enc.embed_images(["a.jpg", "b.png"])       # (2, 1280) float32, unit rows

Families register themselves on import (``torchvision_models``, ``timm_models``, ``openclip``,
``efficientnet_lite``); each entry is a few lines there. Importing this package does not import
torch: listing backbones and their status stays cheap.
"""

from __future__ import annotations

from . import efficientnet_lite, openclip, timm_models, torchvision_models  # noqa: F401  (registration)
from .base import (
    PRECISION_CHOICES,
    RUNTIME_CHOICES,
    BackboneInfo,
    BackboneSpec,
    EmbedResult,
    Encoder,
    LoadedBackbone,
    Preprocess,
    TextNotSupportedError,
    backbone_info,
    backbone_status,
    clear_encoder_cache,
    default_device,
    get_encoder,
    imagenet_class_names,
    list_backbones,
    register_backbone,
)

__all__ = [
    "PRECISION_CHOICES",
    "RUNTIME_CHOICES",
    "BackboneInfo",
    "BackboneSpec",
    "EmbedResult",
    "Encoder",
    "LoadedBackbone",
    "Preprocess",
    "TextNotSupportedError",
    "backbone_info",
    "backbone_status",
    "clear_encoder_cache",
    "default_device",
    "get_encoder",
    "imagenet_class_names",
    "list_backbones",
    "register_backbone",
]
