"""Image (and text) encoders behind one interface, chosen by name from a registry.

>>> from imrs.encoders import get_encoder
>>> enc = get_encoder("efficientnet_lite0")          # works offline
>>> vecs = enc.embed_images(["a.jpg", "b.png"])       # (2, 1280) float32, unit rows

Layout, one idea per module:

- ``registry``: what a backbone is (:class:`BackboneSpec`) and the name -> spec table;
- ``preprocess``: decoded image -> the model's uint8 input, in one resample;
- ``place``: :class:`WeightsPlace`, where model files are found and kept, resolved from ``Settings``;
- ``weights``: local checkpoints, hub caches, the user cache dir, failing fast when offline;
- ``pipeline``: threaded decode overlapping the model, batching, bad-file handling;
- ``runtime``: ways to run the image model (eager, fused, ONNX Runtime, ...);
- ``torchfile`` and ``onnx_build``: a checkpoint read without torch (weights-only rule) and the
  EfficientNet-Lite0 ONNX model written from it -- the default path of a base install;
- ``encoder``: :class:`Encoder` and the cached factory :func:`get_encoder`.

Families register themselves on import (``torchvision_models``, ``timm_models``, ``openclip``,
``efficientnet_lite``); each entry is a few lines there. Importing this package does not import
torch: listing backbones and their status stays cheap, and a backbone that needs torch reports
how to install it when it is missing.
"""

from __future__ import annotations

from . import efficientnet_lite, openclip, timm_models, torchvision_models  # noqa: F401  (registration)
from .encoder import (
    PRECISION_CHOICES,
    RUNTIME_CHOICES,
    Encoder,
    TextNotSupportedError,
    clear_encoder_cache,
    default_device,
    get_encoder,
)
from .pipeline import EmbedResult, cpu_count
from .place import WeightsPlace
from .preprocess import Preprocess
from .registry import (
    BackboneInfo,
    BackboneSpec,
    LoadedBackbone,
    backbone_info,
    backbone_status,
    get_spec,
    imagenet_class_names,
    list_backbones,
    register_backbone,
)
from .weights import user_cache_dir, weights_unobtainable

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
    "WeightsPlace",
    "backbone_info",
    "backbone_status",
    "clear_encoder_cache",
    "cpu_count",
    "default_device",
    "get_encoder",
    "get_spec",
    "imagenet_class_names",
    "list_backbones",
    "register_backbone",
    "user_cache_dir",
    "weights_unobtainable",
]
