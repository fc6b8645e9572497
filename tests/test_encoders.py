"""Encoders: registry, offline behaviour, shapes, real EfficientNet-Lite0 retrieval, fast runtimes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imrs.encoders import (
    BackboneInfo,
    EmbedResult,
    TextNotSupportedError,
    backbone_info,
    backbone_status,
    default_device,
    get_encoder,
    list_backbones,
)
from imrs.errors import ImageDecodeError, IMRSError, UnknownBackboneError, WeightsUnavailableError
from tests.conftest import caltech_subset

EXPECTED_DIMS = {
    "clip_vit_b32": 512,
    "resnet50": 2048,
    "vit_b16": 768,
    "resnet18": 512,
    "vgg16": 4096,
    "vit_base_patch16_224": 768,
    "efficientnet_lite0": 1280,
}
CLASSES = ["Leopards", "Motorbikes", "airplanes", "watch", "sunflower", "chandelier"]


@pytest.fixture(scope="module", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """ONNX exports go to a throwaway cache, not the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("IMRS_CACHE_DIR", str(tmp_path_factory.mktemp("imrs-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def small_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    out = []
    for i, (w, h) in enumerate([(64, 48), (40, 90)]):
        p = d / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _unit_rows(v: np.ndarray) -> bool:
    return np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)


def test_registry() -> None:
    names = list_backbones()
    assert set(EXPECTED_DIMS) <= set(names)
    for name, dim in EXPECTED_DIMS.items():
        info = backbone_info(name)
        assert isinstance(info, BackboneInfo) and info.name == name and info.dim == dim
        assert info.supports_text == (info.family == "open_clip")
        assert info.family and info.description and info.weights
    assert default_device() in ("cpu", "cuda")
    assert backbone_status("efficientnet_lite0")[0] == "ready"
    for name in names:
        state, reason = backbone_status(name)
        assert state in ("ready", "needs download", "failed") and reason


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(UnknownBackboneError) as ei:
        get_encoder("resnet5000")
    msg = str(ei.value)
    assert "resnet5000" in msg and "efficientnet_lite0" in msg and "clip_vit_b32" in msg
    with pytest.raises(UnknownBackboneError):
        backbone_info("nope")
    with pytest.raises(IMRSError, match="weights"):
        get_encoder("efficientnet_lite0", weights="imagenet-ish")


@pytest.mark.parametrize("name", ["clip_vit_b32", "resnet50", "vit_b16"])
def test_missing_weights_fail_fast(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty caches + no network (here: really none, and HF_HUB_OFFLINE from conftest) -> one clear
    error within seconds, never random weights."""
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("IMRS_CHECKPOINT_DIR", raising=False)
    assert backbone_status(name)[0] == "needs download"
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as ei:
        get_encoder(name)
    assert time.perf_counter() - t0 < 10
    msg = str(ei.value)
    assert "\n" not in msg and "connect to the internet once" in msg
    assert f"IMRS_CHECKPOINT_{name.upper()}" in msg


def test_bad_checkpoint_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsUnavailableError, match="not a file"):
        get_encoder("efficientnet_lite0", checkpoint=tmp_path / "missing.pth")
    monkeypatch.setenv("IMRS_CHECKPOINT_RESNET18", str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsUnavailableError, match="IMRS_CHECKPOINT_RESNET18"):
        get_encoder("resnet18")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(WeightsUnavailableError, match="cannot load checkpoint"):
        get_encoder("resnet18", checkpoint=junk)


@pytest.mark.parametrize("name", ["resnet50", "vit_b16", "resnet18"])
def test_random_init_shapes(name: str, small_images: list[Path]) -> None:
    enc = get_encoder(name, device="cpu", weights="random", runtime="eager")
    v = enc.embed_images(small_images, batch_size=2)
    assert v.shape == (2, EXPECTED_DIMS[name]) and v.dtype == np.float32 and _unit_rows(v)
    assert enc.dim == EXPECTED_DIMS[name] and enc.name == name and enc.device == "cpu"
    assert get_encoder(name, device="cpu", weights="random", runtime="eager") is enc  # cached
    with pytest.raises(TextNotSupportedError) as ei:
        enc.embed_texts(["a dog"])
    assert isinstance(ei.value, NotImplementedError) and isinstance(ei.value, IMRSError)


def test_clip_random_image_and_text(small_images: list[Path]) -> None:
    enc = get_encoder("clip_vit_b32", device="cpu", weights="random", runtime="eager")
    assert enc.supports_text and enc.dim == 512
    v = enc.embed_images([Image.open(small_images[0]), small_images[1]])
    t = enc.embed_texts(["a photo of a dog", "a red car"])
    assert v.shape == (2, 512) and t.shape == (2, 512)
    assert v.dtype == t.dtype == np.float32 and _unit_rows(v) and _unit_rows(t)
    assert enc.embed_texts([]).shape == (0, 512)


def test_bad_images(small_images: list[Path], tmp_path: Path) -> None:
    enc = get_encoder("efficientnet_lite0", device="cpu", runtime="eager")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        enc.embed_images([small_images[0], bad])
    seen: list[tuple[int, int]] = []
    paths = [small_images[0], bad, small_images[1], tmp_path / "gone.png"]
    res = enc.embed_paths(paths, progress=lambda stage, done, total: seen.append((done, total)))
    assert isinstance(res, EmbedResult)
    assert res.kept.tolist() == [0, 2] and res.vectors.shape == (2, 1280) and _unit_rows(res.vectors)
    assert [i for i, _ in res.failures] == [1, 3]
    assert all(msg.startswith("cannot read") for _, msg in res.failures)
    assert seen and seen[-1] == (4, 4)
    np.testing.assert_allclose(res.vectors, enc.embed_images([small_images[0], small_images[1]]), atol=1e-5)
    empty = enc.embed_paths([])
    assert empty.vectors.shape == (0, 1280) and empty.kept.shape == (0,)


def test_efficientnet_lite0_real_neighbours() -> None:
    """Real ImageNet weights: most of each image's 10 nearest neighbours share its class."""
    paths = caltech_subset(CLASSES, 10)
    labels = np.array([p.parent.name for p in paths])
    enc = get_encoder("efficientnet_lite0")  # default runtime
    res = enc.embed_paths(paths, batch_size=16)
    assert not res.failures and res.vectors.shape == (len(paths), 1280) and _unit_rows(res.vectors)
    sims = res.vectors @ res.vectors.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1)[:, :10]
    agreement = (labels[nn] == labels[:, None]).mean()
    assert agreement >= 0.7, f"kNN class agreement {agreement:.2f}"
    # ImageNet head for ConSE-style text search: leopards look like leopards/cheetahs/jaguars
    logits = enc.classify_logits(paths[:10])
    assert logits.shape == (10, 1000) and len(enc.class_names) == 1000
    top = {enc.class_names[i] for i in logits.argmax(1)}
    assert top & {"leopard", "cheetah", "jaguar", "snow leopard"}


def test_fast_runtimes_match_eager() -> None:
    """Every fast path stays within 0.999 cosine of the float32 eager reference, on real images."""
    paths = caltech_subset(CLASSES, 2)
    ref = get_encoder("efficientnet_lite0", runtime="eager").embed_images(paths)
    for runtime in ("fused", "onnx"):
        enc = get_encoder("efficientnet_lite0", runtime=runtime)
        assert enc.runtime == runtime
        v = enc.embed_images(paths)
        cos = np.sum(ref * v, axis=1)
        assert cos.min() >= 0.999, (runtime, cos.min())


def test_fast_runtimes_random_convnet(small_images: list[Path]) -> None:
    ref = get_encoder("resnet18", weights="random", runtime="eager").embed_images(small_images)
    for runtime in ("fused", "onnx"):
        v = get_encoder("resnet18", weights="random", runtime=runtime).embed_images(small_images)
        assert np.sum(ref * v, axis=1).min() >= 0.999


def test_decode_workers_do_not_touch_callers_threads(small_images: list[Path]) -> None:
    """Workers resize on one core each; the caller's torch thread count is untouched, and the
    preprocessed pixels are identical whichever thread made them."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from imrs.encoders.preprocess import Preprocess, single_threaded_torch_worker

    before = torch.get_num_threads()
    pre = Preprocess(size=224, resize=256, interpolation="bilinear")
    with ThreadPoolExecutor(1, initializer=single_threaded_torch_worker) as pool:
        inner = pool.submit(torch.get_num_threads).result()
        theirs = list(pool.map(pre.load, small_images))
    mine = [pre.load(p) for p in small_images]
    assert torch.get_num_threads() == before
    if before > 1:
        assert inner == 1
    for a, b in zip(mine, theirs, strict=True):
        assert a.shape == (224, 224, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_weights_unobtainable_is_decided_without_loading(monkeypatch):
    import sys

    from imrs.encoders.weights import weights_unobtainable

    monkeypatch.setenv("IMRS_OFFLINE", "1")
    monkeypatch.delenv("IMRS_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("IMRS_CHECKPOINT_CLIP_VIT_B32", raising=False)
    before = "open_clip" in sys.modules
    why = weights_unobtainable("clip_vit_b32")
    assert why is not None and "IMRS_CHECKPOINT_CLIP_VIT_B32" in why and "huggingface.co" in why
    assert ("open_clip" in sys.modules) == before  # the model library was not imported to find out
    assert weights_unobtainable("efficientnet_lite0") is None  # ships with its package


def _random_resnet18_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Path, Path]:
    """A random-init resnet18 saved under its upstream file name in ``<tmp>/ckpts``, with an
    environment that knows of no checkpoint, no offline switch and an empty torch hub cache; its
    own model cache (IMRS_CACHE_DIR) is ``<tmp>/env-cache``. Returns (net, checkpoint folder, env cache)."""
    import torch
    import torchvision

    env_cache = tmp_path / "env-cache"
    monkeypatch.setenv("IMRS_CACHE_DIR", str(env_cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty hub cache
    for var in ("IMRS_CHECKPOINT_DIR", "IMRS_CHECKPOINT_RESNET18", "IMRS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    torch.manual_seed(7)
    net = torchvision.models.resnet18(weights=None).eval()
    ckpt_dir = tmp_path / "ckpts"
    ckpt_dir.mkdir()
    torch.save(net.state_dict(), ckpt_dir / "resnet18-f37072fd.pth")  # the upstream file name
    return net, ckpt_dir, env_cache


def _torch_reference(net: Any, enc: Any, images: list[Path]) -> np.ndarray:
    """Unit features of ``images`` from ``net`` itself (its classifier removed), preprocessed as
    ``enc`` does: what an encoder loaded from the net's checkpoint must reproduce."""
    import torch

    batch = np.stack([enc.preprocess.load(p) for p in images])
    net.fc = torch.nn.Identity()
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(enc.preprocess.mean).view(1, 3, 1, 1)) / torch.tensor(enc.preprocess.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        ref = net(x).numpy()
    return ref / np.linalg.norm(ref, axis=1, keepdims=True)


def test_settings_given_in_code_reach_the_weights_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         small_images: list[Path]) -> None:
    """A checkpoint folder, cache folder and offline switch passed in a ``Settings`` object (as the
    page and the API do), with none of them in the environment, decide what the loader reads and
    where it writes: the encoder embeds with the checkpoint's own (random-init) weights."""
    from imrs.config import Settings
    from imrs.encoders import WeightsPlace
    from imrs.encoders import weights as W
    from imrs.encoders.weights import weights_unobtainable

    net, ckpt_dir, env_cache = _random_resnet18_checkpoint(tmp_path, monkeypatch)
    s = Settings.from_env({}).replace(checkpoint_dir=str(ckpt_dir), cache_dir=tmp_path / "given-cache", offline=True)
    place = WeightsPlace.from_settings(s)

    assert backbone_status("resnet18")[0] == "needs download"  # the environment knows of no file
    W._PROBE_CACHE.pop("download.pytorch.org", None)
    # no folder, offline: certainly unobtainable, decided without any probe of the network
    why = weights_unobtainable("resnet18", WeightsPlace.from_settings(s.replace(checkpoint_dir="")))
    assert why is not None and "download.pytorch.org" in why and "download.pytorch.org" not in W._PROBE_CACHE
    assert weights_unobtainable("resnet18", place) is None

    enc = get_encoder("resnet18", device="cpu", runtime="onnx", settings=s)
    assert enc.runtime == "onnx" and enc._loaded.weights_label == str(ckpt_dir / "resnet18-f37072fd.pth")
    assert list((tmp_path / "given-cache" / "onnx").glob("resnet18-*.onnx")) and not env_cache.exists()
    ref = _torch_reference(net, enc, small_images)
    got = enc.embed_images(small_images, batch_size=2)
    assert np.min(np.sum(ref * got, axis=1)) > 0.999
    assert get_encoder("resnet18", device="cpu", runtime="onnx", settings=s) is enc  # same settings: cached
    with pytest.raises(WeightsUnavailableError, match="not cached and download.pytorch.org is unreachable"):
        get_encoder("resnet18", device="cpu", runtime="onnx", settings=s.replace(checkpoint_dir=""))


def test_settings_given_in_code_reach_the_encoder_through_a_collection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_images: list[Path]) -> None:
    """A Collection opened with a ``Settings`` object (the page and the API do) takes its backbone,
    index kind, home, links policy and model files from it, never from the environment: the
    environment here names another index kind, follows no links and knows of no checkpoint, yet the
    sync walks the linked image and embeds both images with the given checkpoint's weights."""
    from imrs.collection import Collection
    from imrs.config import Settings

    net, ckpt_dir, env_cache = _random_resnet18_checkpoint(tmp_path, monkeypatch)
    monkeypatch.setenv("IMRS_BACKBONE", "efficientnet_lite0")
    monkeypatch.setenv("IMRS_INDEXER", "annoy")
    monkeypatch.setenv("IMRS_FOLLOW_LINKS", "none")
    monkeypatch.setenv("IMRS_HOME", str(tmp_path / "env-home"))
    root = tmp_path / "photos"
    (root / "own").mkdir(parents=True)
    (root / "linked").mkdir()
    (root / "own" / "a.png").write_bytes(small_images[0].read_bytes())
    (root / "linked" / "b.png").symlink_to(small_images[1])  # a link to a file outside: followed under "files"
    given_cache = tmp_path / "given-cache"
    s = Settings(home=tmp_path / "home", backbone="resnet18", indexer="flat_ip", checkpoint_dir=str(ckpt_dir),
                 cache_dir=given_cache, offline=True, follow_links="files")

    coll = Collection(root, settings=s)
    assert (coll.backbone, coll.indexer, coll.settings) == ("resnet18", "flat_ip", s)
    assert coll.state_dir.parent == tmp_path / "home" / "collections"
    report = coll.sync()
    assert report.scanned == 2 and not report.skipped
    assert coll.encoder._loaded.weights_label == str(ckpt_dir / "resnet18-f37072fd.pth")
    assert not env_cache.exists() and not (tmp_path / "env-home").exists()
    emb = coll.all_embeddings()
    by_rel = dict(zip([str(r) for r in emb.relpaths], emb.vectors, strict=True))
    got = np.stack([by_rel["own/a.png"], by_rel["linked/b.png"]])
    ref = _torch_reference(net, coll.encoder, small_images)
    assert np.min(np.sum(ref * got, axis=1)) > 0.999
    hit = coll.search_image(small_images[1], k=1)[0]
    assert hit.relpath == "linked/b.png"


def test_encoder_cache_is_bounded() -> None:
    """The least recently used encoder leaves the cache first; one used lately stays."""
    from imrs.encoders import encoder as E

    def enc(runtime: str, precision: str):
        return get_encoder("resnet18", device="cpu", weights="random", runtime=runtime, precision=precision)

    E.clear_encoder_cache()
    a, b = enc("eager", "auto"), enc("eager", "fp32")
    enc("eager", "bf16")
    assert enc("eager", "auto") is a  # used again: now the most recent
    enc("fused", "fp32")
    enc("fused", "auto")
    assert E.ENCODER_CACHE_SIZE == 4 and len(E._ENCODERS) == 4
    assert enc("eager", "auto") is a and enc("eager", "fp32") is not b  # b was the least recently used
