"""open_clip models: one embedding space for images and text (text-to-image search).

Adding one is a single :func:`openclip_backbone` call. Weights are looked up in the Hugging Face
hub cache first (no network needed when present), downloaded through open_clip when
huggingface.co answers, or read from a local file (``IMRS_CHECKPOINT_<NAME>``, open_clip
``.safetensors``/``.bin`` state dicts).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import WeightsUnavailableError
from .place import WeightsPlace
from .preprocess import Preprocess
from .registry import DEFAULT_RUNTIMES, BackboneInfo, BackboneSpec, LoadedBackbone, register_backbone
from .weights import host_reachable, weights_unavailable, wrap_download_errors

HOST = "huggingface.co"
OPENAI_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
OPENAI_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def hf_cached_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """A file of ``repo_id`` already in the HF hub cache, found without any network request."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for fname in filenames:
        hit = try_to_load_from_cache(repo_id, fname)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def hf_weights_status(name: str, hf_repo: str, filenames: tuple[str, ...], what: str,
                      place: WeightsPlace | None = None) -> tuple[str, str]:
    """Status of weights hosted on the Hugging Face hub, without loading anything: a local
    checkpoint, the normal hub cache, or a download still to come."""
    local = (place or WeightsPlace.from_settings()).checkpoint_for(name)
    if local:
        return "ready", f"local checkpoint {local}"
    path = hf_cached_file(hf_repo, filenames)
    if path is not None:
        return "ready", f"cached at {path}"
    return "needs download", f"{what} will be downloaded from {HOST}"


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return "~/.cache/huggingface/hub"


#: (what, hub repo, any of these files) a model needs besides its weights
HubDep = tuple[str, str, tuple[str, ...]]


def missing_hub_deps(deps: tuple[HubDep, ...], place: WeightsPlace | None = None) -> list[HubDep]:
    """Hub files (tokenizers, text-tower configs) that are neither cached nor downloadable now."""
    missing = [d for d in deps if hf_cached_file(d[1], d[2]) is None]
    return missing if missing and not host_reachable(HOST, place=place) else []


def hub_deps_error(name: str, missing: list[HubDep]) -> WeightsUnavailableError:
    what = ", ".join(f"{w} (hf.co/{repo})" for w, repo, _ in missing)
    return WeightsUnavailableError(
        f"{name} needs {what}, not cached and {HOST} is unreachable, even for random weights: connect to "
        f"the internet once (they are then cached in {hf_cache_dir()}), or choose another backbone")


def openclip_backbone(name: str, model_name: str, pretrained: str, hf_repo: str, dim: int,
                      preprocess: Preprocess, description: str, *, quick_gelu: bool = False,
                      cpu_batch_size: int = 32, cuda_batch_size: int = 256,
                      default_runtime: dict[str, str] | None = None,
                      hub_deps: tuple[HubDep, ...] = ()) -> BackboneSpec:
    """Register open_clip ``model_name`` with weights ``pretrained`` (hosted at ``hf_repo``).

    ``hub_deps``: files the model needs from the hub besides its weights (a Hugging Face tokenizer,
    an HF text tower's config); checked before anything is built, so a missing one is one clear
    error within seconds, with random weights too."""

    def status(place: WeightsPlace) -> tuple[str, str]:
        size = "600" if dim >= 512 else "300"
        state, why = hf_weights_status(name, hf_repo, HF_FILENAMES, f"{hf_repo} (~{size} MB)", place)
        lacking = [d for d in hub_deps if hf_cached_file(d[1], d[2]) is None]
        if lacking and state == "ready":
            state = "needs download"
            why += "; " + ", ".join(f"{w} from hf.co/{repo}" for w, repo, _ in lacking) + " still to download"
        return state, why

    def load(which: str, checkpoint: Path | None, place: WeightsPlace) -> LoadedBackbone:
        missing = missing_hub_deps(hub_deps, place)
        if missing:
            raise hub_deps_error(name, missing)

        import open_clip
        from torch import nn

        label = "random"
        if which == "pretrained":
            path = checkpoint or hf_cached_file(hf_repo, HF_FILENAMES)
            if path is None:
                if not host_reachable(HOST, place=place):
                    raise weights_unavailable(name, f"open_clip {model_name} {pretrained}", HOST,
                                              hf_cache_dir(), HF_FILENAMES)
                with wrap_download_errors(name, HOST, hf_cache_dir(), HF_FILENAMES):
                    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
                    path = Path(open_clip.download_pretrained(cfg))
            with wrap_download_errors(name, HOST, hf_cache_dir(), HF_FILENAMES):
                model = open_clip.create_model(model_name, pretrained=str(path), force_quick_gelu=quick_gelu)
            label = str(path)
        else:
            with wrap_download_errors(name, HOST, hf_cache_dir(), HF_FILENAMES):
                model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        model.eval()

        class ClipImage(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.visual = model.visual

            def forward(self, x):
                return self.visual(x)

        class ClipText(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.clip = model

            def forward(self, tokens):
                return self.clip.encode_text(tokens)

        with wrap_download_errors(name, HOST, hf_cache_dir(), HF_FILENAMES):
            tokenizer = open_clip.get_tokenizer(model_name)
        return LoadedBackbone(
            image_model=ClipImage().eval(),
            text_model=ClipText().eval(),
            tokenizer=tokenizer,
            convnet=False,
            weights_label=label,
        )

    return register_backbone(BackboneSpec(
        info=BackboneInfo(name=name, dim=dim, supports_text=True, family="open_clip",
                          description=description,
                          weights=f"open_clip {model_name} '{pretrained}' (hf.co/{hf_repo})",
                          input_size=preprocess.size),
        preprocess=preprocess,
        load=load,
        status=status,
        default_runtime=dict(default_runtime or DEFAULT_RUNTIMES),
        cpu_batch_size=cpu_batch_size,
        cuda_batch_size=cuda_batch_size,
        checkpoint_filenames=HF_FILENAMES,
        download_host=HOST,
    ))


CLIP_VIT_B32 = openclip_backbone(
    "clip_vit_b32", "ViT-B-32", "openai", "timm/vit_base_patch32_clip_224.openai", 512,
    Preprocess(size=224, resize=224, interpolation="bicubic", mean=OPENAI_MEAN, std=OPENAI_STD),
    "OpenAI CLIP ViT-B/32 (open_clip), 512-d, images and text", quick_gelu=True)

SIGLIP_MEAN = (0.5 * 255, 0.5 * 255, 0.5 * 255)
#: SigLIP (sigmoid-loss CLIP, WebLI): better zero-shot retrieval than OpenAI CLIP at the same size.
#: Its text side needs the Hugging Face tokenizer of its hub repo. open_clip squashes images to
#: 224x224; the shared preprocessing centre-crops instead (same as every other backbone here).
SIGLIP_VIT_B16 = openclip_backbone(
    "siglip_vit_b16", "ViT-B-16-SigLIP", "webli", "timm/ViT-B-16-SigLIP", 768,
    Preprocess(size=224, resize=224, interpolation="bicubic", mean=SIGLIP_MEAN, std=SIGLIP_MEAN),
    "SigLIP ViT-B/16 (open_clip, WebLI), 768-d, images and English text",
    hub_deps=(("its tokenizer", "timm/ViT-B-16-SigLIP", ("tokenizer.json", "spiece.model")),))

#: Multilingual CLIP: an XLM-RoBERTa text tower trained against a ViT-B/32 on LAION-5B, so queries in
#: ~100 languages land in one image space. The text tower is built from the hub's xlm-roberta-base.
MCLIP_XLMR_VIT_B32 = openclip_backbone(
    "mclip_xlmr_vit_b32", "xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k",
    "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k", 512,
    Preprocess(size=224, resize=224, interpolation="bicubic", mean=OPENAI_MEAN, std=OPENAI_STD),
    "multilingual CLIP ViT-B/32 + XLM-RoBERTa (open_clip, LAION-5B), 512-d, images and text in ~100 languages",
    hub_deps=(("the xlm-roberta-base config", "xlm-roberta-base", ("config.json",)),
              ("its tokenizer", "xlm-roberta-base", ("tokenizer.json", "sentencepiece.bpe.model"))))
