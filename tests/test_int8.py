"""int8 runtime: the quality gate, runtime selection, closeness to fp32, and caches that never mix
vectors of two runtimes. Real EfficientNet-Lite0 weights, real ONNX Runtime quantization."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from imrs.cli import main
from imrs.collection import Collection
from imrs.encoders import clear_encoder_cache, get_encoder
from imrs.encoders import int8 as q
from imrs.errors import IMRSError, SnapshotError, StoreError
from imrs.store import EmbeddingSet, RuntimeMismatchError, merge, read_runtime
from tests.conftest import caltech_subset

BB = "efficientnet_lite0"
CLASSES = ["Leopards", "Motorbikes", "airplanes", "watch", "sunflower", "chandelier"]
#: int8 vs fp32 cosine per image, EfficientNet-Lite0 on Caltech-101 images it was not calibrated
#: on (measured: mean 0.989, worst of 256 images 0.93).
MIN_COSINE = 0.90
MEAN_COSINE = 0.98


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("imrs-cache")
    mp.setenv("IMRS_CACHE_DIR", str(d))
    yield d
    mp.undo()
    clear_encoder_cache()


def int8_encoder_calibration() -> list[Path]:
    return caltech_subset(CLASSES, 8)  # 24 calibrate, 24 held out for the gate


@pytest.fixture(scope="module")
def calibration(cache_dir: Path) -> list[Path]:
    return int8_encoder_calibration()


@pytest.fixture(scope="module")
def int8_encoder(calibration: list[Path]):
    return get_encoder(BB, device="cpu", runtime="auto", calibration=calibration)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_int8_is_chosen_and_close_to_fp32(int8_encoder, cache_dir: Path) -> None:
    enc = int8_encoder
    assert enc.runtime == "int8" and enc.runtime_tag.startswith("int8-"), (enc, enc.int8_note)
    gate = enc.int8_gate
    assert gate.passed and gate.n_calibration == 24 and gate.n_held == 24
    assert gate.mean_cosine >= q.GATE_MEAN_COSINE and gate.top10_overlap >= q.GATE_TOP10_OVERLAP
    # cached beside the fp32 export, written whole (no temp files left behind)
    key = enc.runtime_tag.removeprefix("int8-")
    models = list((cache_dir / "onnx").glob(f"*.int8-{key}.onnx"))
    gates = list((cache_dir / "onnx").glob(f"*.int8-{key}.json"))
    assert len(models) == 1 and len(gates) == 1
    assert json.loads(gates[0].read_text())["passed"] is True
    assert not list((cache_dir / "onnx").glob(".*.tmp"))
    # images it was neither calibrated nor gated on
    fresh = caltech_subset(CLASSES, 12)[8::12] + caltech_subset(["Faces_easy", "ketch"], 10)
    ref = get_encoder(BB, device="cpu", runtime="fp32").embed_images(fresh)
    got = enc.embed_images(fresh)
    cos = _cos(ref, got)
    assert cos.min() >= MIN_COSINE and cos.mean() >= MEAN_COSINE, cos
    # a new process (cleared encoder cache) reopens the cached model by its tag, without calibrating
    clear_encoder_cache()
    again = get_encoder(BB, device="cpu", runtime="auto", int8_tag=enc.runtime_tag)
    assert again.runtime == "int8" and again.runtime_tag == enc.runtime_tag
    np.testing.assert_allclose(again.embed_images(fresh[:3]), got[:3], atol=1e-5)
    # a tag whose model is gone is never reused for another model: the calibration's own tag comes back
    other = get_encoder(BB, device="cpu", runtime="auto", int8_tag="int8-0123456789abcdef",
                        calibration=int8_encoder_calibration())
    assert other.runtime_tag == enc.runtime_tag


def _break_model(path: Path) -> None:
    """Shuffle every quantized weight tensor: a model that still runs but computes nonsense."""
    import onnx
    from onnx import numpy_helper

    from imrs.fsutil import atomic_path

    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for i, t in enumerate(model.graph.initializer):
        arr = numpy_helper.to_array(t)
        if t.name.endswith("_quantized") and arr.dtype == np.int8 and arr.size > 64:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(rng.permutation(arr.ravel()).reshape(
                arr.shape), t.name))
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))


@pytest.mark.slow
def test_broken_int8_model_fails_the_gate_and_fp32_stays(int8_encoder, calibration, cache_dir, caplog) -> None:
    key = int8_encoder.runtime_tag.removeprefix("int8-")
    model = next((cache_dir / "onnx").glob(f"*.int8-{key}.onnx"))
    gate_file = model.with_suffix(".json")
    _break_model(model)
    gate_file.unlink()  # the gate is measured again for the cached (now broken) model
    clear_encoder_cache()
    with caplog.at_level(logging.WARNING, logger="imrs"):
        enc = get_encoder(BB, device="cpu", runtime="auto", calibration=calibration)
    assert enc.runtime == "onnx" and enc.runtime_tag == "fp32"
    assert not enc.int8_gate.passed and "fails the gate" in enc.int8_note
    assert any("staying on fp32" in r.getMessage() and "mean cosine" in r.getMessage() for r in caplog.records)
    assert json.loads(gate_file.read_text())["passed"] is False
    # asked for by name, it is used anyway -- with the gate's verdict in the log
    forced = get_encoder(BB, device="cpu", runtime="int8", calibration=calibration)
    assert forced.runtime == "int8" and not forced.int8_gate.passed


def test_runtime_selection_without_int8_inputs(cache_dir: Path) -> None:
    enc = get_encoder(BB, device="cpu", runtime="auto")
    assert enc.runtime_tag == "fp32" and enc.int8_gate is None and enc.runtime == "onnx"
    assert get_encoder(BB, device="cpu", runtime="fp32").runtime == "onnx"  # the fastest float runtime
    with pytest.raises(IMRSError, match="calibration images"):
        get_encoder(BB, device="cpu", runtime="int8")
    with pytest.raises(IMRSError, match="no longer cached"):
        get_encoder(BB, device="cpu", runtime="int8", int8_tag="int8-0123456789abcdef")
    with pytest.raises(IMRSError, match="choose one of: auto, fp32, int8"):
        get_encoder(BB, device="cpu", runtime="int4")
    # auto with a tag whose model is gone: a log line and fp32, never an error at query time
    lost = get_encoder(BB, device="cpu", runtime="auto", int8_tag="int8-0123456789abcdef")
    assert lost.runtime_tag == "fp32" and "no longer cached" in lost.int8_note


def test_gate_metrics_and_verdict() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(60, 32))
    same = q.gate_metrics(ref, ref * 3.0)  # scale does not matter, direction does
    assert same["mean_cosine"] == pytest.approx(1.0) and same["top10_overlap"] == 1.0
    assert q.judge(same)[0]
    noisy = q.gate_metrics(ref, ref + rng.normal(scale=1.0, size=ref.shape))
    ok, why = q.judge(noisy)
    assert not ok and "mean cosine" in why and "top-10 agreement" in why


def test_fold_input_normalisation_keeps_the_function(cache_dir: Path, tmp_path: Path) -> None:
    """The folded graph (per-channel mean and std, padded first conv) computes what the original
    did, up to the first layer's weights snapped to the int8 grid."""
    import onnx
    import onnxruntime as ort

    enc = get_encoder("resnet18", device="cpu", weights="random", runtime="onnx")
    model = onnx.load(str(enc._runner.path))
    assert q.fold_input_normalisation(model, enc.preprocess.size)
    assert not any(n.op_type in ("Sub", "Mul") for n in model.graph.node[:3])
    onnx.save(model, str(tmp_path / "folded.onnx"))
    x = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    a = ort.InferenceSession(str(enc._runner.path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    b = ort.InferenceSession(str(tmp_path / "folded.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x})[0]
    assert _cos(a, b).min() >= 0.999


def test_embedding_sets_of_two_runtimes_never_mix(tmp_path: Path) -> None:
    v = np.eye(3, 4, dtype=np.float32)
    a = EmbeddingSet(BB, [1, 2, 3], ["a", "b", "c"], v)
    b = EmbeddingSet(BB, [4, 5, 6], ["d", "e", "f"], v, runtime="int8-abc")
    assert a.runtime == "fp32" and a.select(np.array([0])).runtime == "fp32"
    with pytest.raises(StoreError, match="different runtimes"):
        a.concat(b)
    with pytest.raises(StoreError, match="different runtimes"):
        merge([a, b])
    assert len(a.concat(EmbeddingSet.empty(BB, 4, runtime="int8-abc"))) == 3  # empty sets do not count
    b.save(tmp_path / "b.npz")
    assert read_runtime(tmp_path / "b.npz") == "int8-abc"
    assert EmbeddingSet.load(tmp_path / "b.npz").runtime == "int8-abc"
    with pytest.raises(RuntimeMismatchError):
        EmbeddingSet.load(tmp_path / "b.npz", runtime="fp32")
    # caches written before runtimes were recorded are fp32
    np.savez(tmp_path / "old.npz", ids=a.ids, relpaths=a.relpaths, vectors=a.vectors, backbone=np.asarray(BB))
    assert EmbeddingSet.load(tmp_path / "old.npz", runtime="fp32").runtime == "fp32"


def test_collection_reembeds_a_cache_of_another_runtime(small_collection: Path, home: Path, cache_dir) -> None:
    coll = Collection(small_collection, BB, "flat_ip", home=home)
    first = coll.sync()
    assert first.embedded == 24 and first.runtime == "fp32" and coll.cached_runtime() == "fp32"
    coll.save_snapshot("before")
    # the cache (and the live index) now claim another runtime, e.g. written by an int8 run
    emb = EmbeddingSet.load(coll.base_npz())
    EmbeddingSet(BB, emb.ids, emb.relpaths, emb.vectors * 0.5 + 0.1, runtime="int8-feedfacecafebeef").save(
        coll.base_npz())
    coll2 = Collection(small_collection, BB, "flat_ip", home=home, runtime="fp32")
    with pytest.raises(SnapshotError, match="holds fp32 vectors"):  # restoring it would mix runtimes
        coll2.load_snapshot("before")
    report = coll2.sync()
    assert report.restamped == "int8-feedfacecafebeef" and report.embedded == 24 and report.runtime == "fp32"
    after = EmbeddingSet.load(coll2.base_npz())
    assert after.runtime == "fp32" and len(after) == 24
    np.testing.assert_allclose(after.vectors[np.argsort(after.ids)], emb.vectors[np.argsort(emb.ids)], atol=1e-5)
    # a fresh process opens the live index and finds it in the same space as the caches
    coll3 = Collection(small_collection, BB, "flat_ip", home=home)
    assert len(coll3.index) == 24
    got = coll3.index.search(after.vectors[:1], 1)
    assert got[1][0, 0] == after.ids[0] and got[0][0, 0] == pytest.approx(1.0, abs=1e-4)
    assert coll3.sync().embedded == 0  # and "auto" follows the cache: nothing to redo
    assert coll3.load_snapshot("before").count == 24  # same runtime again: restorable


@pytest.mark.slow
def test_cli_runtime_int8_then_fp32(small_collection: Path, home: Path, cache_dir, capsys, photos) -> None:
    def run(*argv: str) -> str:
        assert main(list(argv)) == 0
        return capsys.readouterr().out

    out = run("index", str(small_collection), "--backbone", BB, "--indexer", "flat_ip", "-q", "--runtime", "int8")
    assert "embedded 24" in out and "vectors: int8-" in out and "int8 passes the gate" in out
    coll = Collection(small_collection, BB, "flat_ip", home=home)
    tag = coll.cached_runtime()
    assert q.is_int8_tag(tag)
    clear_encoder_cache()
    hits = json.loads(run("search", "--image", str(photos / "sunflower.jpg"), "-k", "5", "--json"))["hits"]
    assert sum(h["label"] == "sunflower" for h in hits) >= 4
    assert coll.encoder.runtime_tag == tag  # queries follow the index's runtime
    out = run("index", str(small_collection), "-q", "--runtime", "fp32")
    assert "embedded 24" in out and f"were {tag}" in out
    assert Collection(small_collection, BB, "flat_ip", home=home).cached_runtime() == "fp32"
    with pytest.raises(SystemExit):
        main(["index", str(small_collection), "--runtime", "int4"])
