"""timm models as feature extractors (``num_classes=0``: pooled pre-logits features).

Adding one is a single :func:`timm_backbone` call. Weights: the Hugging Face hub cache (checked
without network), a download through timm when huggingface.co answers, or a local file
(``IMRS_CHECKPOINT_<NAME>``).
"""

from __future__ import annotations

from pathlib import Path

from .openclip import HOST, hf_cache_dir, hf_cached_file, hf_weights_status
from .place import WeightsPlace
from .preprocess import Preprocess
from .registry import DEFAULT_RUNTIMES, BackboneInfo, BackboneSpec, LoadedBackbone, register_backbone
from .weights import host_reachable, weights_unavailable, wrap_download_errors

TIMM_FILENAMES = ("model.safetensors", "pytorch_model.bin")


def timm_backbone(name: str, model_name: str, hf_repo: str, dim: int, preprocess: Preprocess,
                  description: str, *, convnet: bool = False, cpu_batch_size: int = 16,
                  cuda_batch_size: int = 128, default_runtime: dict[str, str] | None = None) -> BackboneSpec:
    """Register ``timm.create_model(model_name, num_classes=0)`` with the weights at ``hf_repo``."""

    def status(place: WeightsPlace) -> tuple[str, str]:
        return hf_weights_status(name, hf_repo, TIMM_FILENAMES, hf_repo, place)

    def load(which: str, checkpoint: Path | None, place: WeightsPlace) -> LoadedBackbone:
        import timm

        label = "random"
        if which == "pretrained":
            path = checkpoint or hf_cached_file(hf_repo, TIMM_FILENAMES)
            if path is None and not host_reachable(HOST, place=place):
                raise weights_unavailable(name, f"timm {hf_repo}", HOST, hf_cache_dir(), TIMM_FILENAMES)
            overlay = {"file": str(path)} if path is not None else {"hf_hub_id": hf_repo}
            with wrap_download_errors(name, HOST, hf_cache_dir(), TIMM_FILENAMES):
                model = timm.create_model(model_name, pretrained=True, num_classes=0,
                                          pretrained_cfg_overlay=overlay)
            label = str(path or hf_repo)
        else:
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
        return LoadedBackbone(image_model=model.eval(), convnet=convnet, weights_label=label)

    return register_backbone(BackboneSpec(
        info=BackboneInfo(name=name, dim=dim, supports_text=False, family="timm", description=description,
                          weights=f"timm hf.co/{hf_repo}", input_size=preprocess.size),
        preprocess=preprocess,
        load=load,
        status=status,
        default_runtime=dict(default_runtime or DEFAULT_RUNTIMES),
        cpu_batch_size=cpu_batch_size,
        cuda_batch_size=cuda_batch_size,
        checkpoint_filenames=TIMM_FILENAMES,
        download_host=HOST,
    ))


TIMM_VIT_B16 = timm_backbone(
    "vit_base_patch16_224", "vit_base_patch16_224", "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", 768,
    Preprocess(size=224, resize=round(224 / 0.9), interpolation="bicubic",
               mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)),
    "ViT-B/16 (timm, AugReg2 in21k->in1k), 768-d pooled class token")
