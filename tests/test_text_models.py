"""The text-image models behind the registry besides CLIP ViT-B/32: SigLIP and multilingual CLIP.

Their weights (and the Hugging Face tokenizer / text-tower config they need even for random
weights) are not reachable here, so what is tested is the registry entry and the fast, clear
failure; the loaders are the same open_clip path as clip_vit_b32's, tested with random weights
in test_encoders.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from imrs.encoders import backbone_info, backbone_status, get_encoder
from imrs.errors import WeightsUnavailableError

MODELS = {"siglip_vit_b16": (768, "timm/ViT-B-16-SigLIP"), "mclip_xlmr_vit_b32": (512, "xlm-roberta-base")}


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants

    hub = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("IMRS_CHECKPOINT_DIR", raising=False)
    return hub


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_entries(name: str, empty_hub: Path) -> None:
    info = backbone_info(name)
    assert info.supports_text and info.family == "open_clip" and info.dim == MODELS[name][0]
    state, why = backbone_status(name)
    assert state == "needs download" and "huggingface.co" in why


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("weights", ["pretrained", "random"])
def test_missing_hub_files_fail_fast(name: str, weights: str, empty_hub: Path) -> None:
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as ei:
        get_encoder(name, device="cpu", weights=weights, runtime="eager")
    assert time.perf_counter() - t0 < 10
    msg = str(ei.value)
    assert "\n" not in msg and "connect to the internet once" in msg
    assert MODELS[name][1] in msg  # names the hub repo it needs


def test_hub_files_found_in_the_cache(empty_hub: Path) -> None:
    """A cached tokenizer satisfies the check without any network (the standard HF cache layout)."""
    from imrs.encoders.openclip import missing_hub_deps

    deps = (("its tokenizer", "timm/ViT-B-16-SigLIP", ("tokenizer.json", "spiece.model")),)
    assert missing_hub_deps(deps) == list(deps)
    repo = empty_hub / "models--timm--ViT-B-16-SigLIP"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "spiece.model").write_bytes(b"x")
    assert missing_hub_deps(deps) == []
