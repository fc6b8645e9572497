"""int8 runtime: the quality gate, runtime selection, closeness to fp32, and caches that never mix
vectors of two runtimes. Real EfficientNet-Lite0 weights, real ONNX Runtime quantization.

Whether int8 passes its gate depends on the processor (x86-64 without VNNI saturates the usual
recipe): these tests assert what holds on every host, read this host's features and assert the
branch it must take, and feed the recipe chooser explicit feature sets for the others."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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


@pytest.fixture(scope="module")
def forced_int8(int8_encoder, calibration: list[Path]):
    """The same model asked for by name: in use whatever its gate said (reuses the cached build)."""
    return get_encoder(BB, device="cpu", runtime="int8", calibration=calibration)


#: /proc/cpuinfo excerpts of the kinds of host IMRS runs on (first processor only, flags trimmed).
VNNI_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni
"""
AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2
"""
AVX512_NO_VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8168 CPU @ 2.70GHz
flags\t\t: sse4_2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl
"""
AVX_VNNI_LAPTOP = """processor\t: 0
model name\t: 12th Gen Intel(R) Core(TM) i7-1260P
flags\t\t: sse4_2 avx avx2 fma avx_vnni
"""
ARM_DOTPROD = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""
ARM_NO_DOTPROD = """processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize(("text", "machine", "isa", "first"), [
    (VNNI_EPYC, "x86_64", "x86_64-vnni", "u8s8-minmax"),
    (AVX_VNNI_LAPTOP, "x86_64", "x86_64-vnni", "u8s8-minmax"),
    (AVX2_ONLY, "x86_64", "x86_64-avx2", "u8s8-7bit-minmax"),
    (AVX512_NO_VNNI, "AMD64", "x86_64-avx512", "u8s8-7bit-minmax"),
    ("", "x86_64", "x86_64", "u8s8-7bit-minmax"),  # unreadable cpuinfo: assume the worst x86
    (ARM_DOTPROD, "aarch64", "aarch64-dotprod", "u8s8-minmax"),
    (ARM_NO_DOTPROD, "arm64", "aarch64", "u8s8-minmax"),
    ("", "riscv64", "riscv64", "u8s8-minmax"),
])
def test_recipe_chooser_follows_the_cpu(text: str, machine: str, isa: str, first: str) -> None:
    cpu = q.parse_cpuinfo(text, machine)
    assert cpu.isa == isa
    convnet, why = q.choose_recipes(cpu, convnet=True)
    transformer, why_t = q.choose_recipes(cpu, convnet=False)
    assert convnet[0].name == first and why == why_t and why.startswith(isa + ":")
    saturating = cpu.arch == "x86_64" and not cpu.vnni
    # without VNNI no recipe multiplies 8-bit u8 activations by full 8-bit s8 weights
    assert all(r.reduce_range or r.weight == "u8" or r.dynamic for r in convnet + transformer) is saturating
    assert all(r.only_ops for r in transformer)  # transformers: weight layers only, everywhere
    assert ("saturate" in why) is saturating
    assert isa in q.recipe_plan(True, cpu) and first in q.recipe_plan(True, cpu)


def test_cpu_features_of_this_host() -> None:
    import platform

    cpu = q.cpu_features()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert cpu == q.parse_cpuinfo(text, platform.machine())
    if cpu.arch == "x86_64" and text:
        assert cpu.vnni == (" avx512_vnni" in text or " avx_vnni" in text) and cpu.avx2 == (" avx2" in text)


def test_int8_key_names_the_cpu_and_recipes(tmp_path: Path) -> None:
    fp32 = tmp_path / "m.onnx"
    vnni, avx2 = q.parse_cpuinfo(VNNI_EPYC, "x86_64"), q.parse_cpuinfo(AVX2_ONLY, "x86_64")
    rv, ra = q.choose_recipes(vnni, True)[0], q.choose_recipes(avx2, True)[0]
    keys = {q.int8_key(fp32, "c", rv, vnni), q.int8_key(fp32, "c", ra, avx2), q.int8_key(fp32, "c", rv, avx2)}
    assert len(keys) == 3
    # same CPU class, another model name: the same key (a model made here is trusted on its like)
    other_epyc = q.parse_cpuinfo(VNNI_EPYC.replace("9B14", "9654"), "x86_64")
    assert q.int8_key(fp32, "c", rv, vnni) == q.int8_key(fp32, "c", rv, other_epyc)


def test_calibration_identity_takes_any_file_name(tmp_path: Path) -> None:
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xff.jpg")  # not UTF-8: a surrogate escape
    Path(bad).write_bytes(b"x")
    ident = q.calibration_identity([bad, tmp_path / "missing.jpg"])
    assert ident == q.calibration_identity([os.fsencode(bad), tmp_path / "missing.jpg"])
    Path(bad).write_bytes(b"xy")
    assert q.calibration_identity([bad, tmp_path / "missing.jpg"]) != ident


def test_dead_work_folders_are_cleaned(tmp_path: Path) -> None:
    root = tmp_path / q.WORK_DIR
    host = socket.gethostname()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = root / f"imrs-int8~{host}~{int(gone.stdout)}~abc"
    live = root / f"imrs-int8~{host}~{os.getpid()}~def"
    elsewhere = root / "imrs-int8~otherhost~1~ghi"  # another host's: only its age tells
    stale = root / "imrs-int8~otherhost~2~jkl"
    unrelated = root / "keep-me"
    for d in (dead, live, elsewhere, stale, unrelated):
        (d / "ort.quant.x").mkdir(parents=True)
    old = time.time() - q.STALE_WORK_SECONDS - 60
    os.utime(stale, (old, old))
    assert q.clean_dead_work(root) == 2
    assert sorted(p.name for p in root.iterdir()) == sorted([live.name, elsewhere.name, unrelated.name])
    fresh = q.work_folder(tmp_path)
    assert fresh.parent == root and fresh.name.startswith(f"imrs-int8~{host}~{os.getpid()}~")


def test_quantizer_temp_files_stay_in_the_work_folder(tmp_path: Path) -> None:
    """ONNX Runtime's quantizer makes its ``ort.quant.*`` folders with :mod:`tempfile`: while it runs
    they go to IMRS's work folder (cleaned if the build is killed), never the system temp."""
    system = tempfile.gettempdir()
    with q.temp_inside(tmp_path):
        with tempfile.TemporaryDirectory(prefix="ort.quant.") as d:
            assert Path(d).parent == tmp_path
    assert tempfile.gettempdir() == system


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_gate_decides_by_its_figures_on_this_cpu(int8_encoder, forced_int8, cache_dir: Path) -> None:
    """auto uses int8 exactly when its gate passes, and the gate's verdict follows its own figures;
    which recipes were tried, and whether one passes, follows this CPU's features."""
    enc, gate, cpu = int8_encoder, int8_encoder.int8_gate, q.cpu_features()
    recipes, why = q.choose_recipes(cpu, convnet=True)
    assert gate.cpu == cpu.isa and gate.why == why and gate.n_calibration == 24 and gate.n_held == 24
    tried = [a["recipe"] for a in gate.attempts]
    assert tried == [r.name for r in recipes][:len(tried)] and gate.recipe in tried
    # the verdict is the one its figures give, for the kept model and for every attempt
    assert q.judge({k: getattr(gate, k) for k in ("mean_cosine", "p1_cosine", "top10_overlap", "speedup")}) == (
        gate.passed, gate.reason)
    for a in gate.attempts:
        assert "error" in a or q.judge(a) == (a["passed"], a["reason"])
    assert all(not a.get("passed") for a in gate.attempts[:-1])  # the first that passes ends the search
    if gate.passed:
        assert enc.runtime == "int8" and enc.runtime_tag == forced_int8.runtime_tag and not enc.int8_note
        assert gate.mean_cosine >= q.GATE_MEAN_COSINE and gate.top10_overlap >= q.GATE_TOP10_OVERLAP
        assert gate.speedup >= q.GATE_MIN_SPEEDUP
    else:  # refused: fp32 stays, and says why in one line
        assert enc.runtime == "onnx" and enc.runtime_tag == "fp32"
        assert enc.int8_note.startswith("int8 fails the gate (") and "\n" not in enc.int8_note
    if cpu.arch == "x86_64" and cpu.vnni:  # measured: u8s8 passes on VNNI, ~2x fp32's speed
        assert gate.passed and gate.recipe == "u8s8-minmax", gate.summary()
    elif cpu.arch == "x86_64":  # u8s8 saturates without VNNI: never tried there
        assert "u8s8-minmax" not in tried and tried[0] == "u8s8-7bit-minmax"


@pytest.mark.slow
def test_int8_model_is_cached_reopened_and_close_to_fp32(int8_encoder, forced_int8, cache_dir: Path) -> None:
    enc = forced_int8
    assert enc.runtime == "int8" and enc.runtime_tag.startswith("int8-"), (enc, enc.int8_note)
    gate = enc.int8_gate
    # cached beside the fp32 export, written whole (no temp files left behind)
    key = enc.runtime_tag.removeprefix("int8-")
    models = list((cache_dir / "onnx").glob(f"*.int8-{key}.onnx"))
    gates = list((cache_dir / "onnx").glob(f"*.int8-{key}.json"))
    assert len(models) == 1 and len(gates) == 1
    assert json.loads(gates[0].read_text())["passed"] is gate.passed
    assert not list((cache_dir / "onnx").glob(".*.tmp"))
    assert not list((cache_dir / "onnx" / q.WORK_DIR).iterdir())  # the build's work folder is gone
    # images it was neither calibrated nor gated on
    fresh = caltech_subset(CLASSES, 12)[8::12] + caltech_subset(["Faces_easy", "ketch"], 10)
    ref = get_encoder(BB, device="cpu", runtime="fp32").embed_images(fresh)
    got = enc.embed_images(fresh)
    cos = _cos(ref, got)
    if gate.passed:  # a model that passed its gate is as close on images it never saw
        assert cos.min() >= MIN_COSINE and cos.mean() >= MEAN_COSINE, cos
    # a new process (cleared encoder cache) reopens the cached model by its tag, without calibrating
    clear_encoder_cache()
    again = get_encoder(BB, device="cpu", runtime="int8" if not gate.passed else "auto", int8_tag=enc.runtime_tag)
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
def test_model_gated_on_another_cpu_is_gated_again(forced_int8, calibration, cache_dir) -> None:
    """A cached model's gate says which kind of CPU measured it; on another kind it is not trusted
    until gated there (here: the same model, told this host is an AVX2-only one)."""
    from imrs.encoders.runtime import OnnxRunner

    tag = forced_int8.runtime_tag
    fp32 = get_encoder(BB, device="cpu", runtime="fp32")
    assert isinstance(fp32._runner, OnnxRunner)
    other = q.parse_cpuinfo(AVX2_ONLY, "x86_64")
    assert other.isa != forced_int8.int8_gate.cpu
    with pytest.raises(IMRSError, match="gated on another kind of CPU"):
        q.int8_runner(BB, fp32._runner, fp32.preprocess, True, tag=tag, cpu=other)
    _, gate, again = q.int8_runner(BB, fp32._runner, fp32.preprocess, True, tag=tag, cpu=other,
                                   calibration=calibration)
    assert again == tag and gate.cpu == other.isa and gate.why == "measured again on this CPU"
    assert gate.recipe == forced_int8.int8_gate.recipe
    assert q.judge({k: getattr(gate, k) for k in ("mean_cosine", "p1_cosine", "top10_overlap", "speedup")})[0] is (
        gate.passed)
    # and back on this host's kind it is gated again too (the gate file now names the other CPU)
    _, back, _ = q.int8_runner(BB, fp32._runner, fp32.preprocess, True, tag=tag, calibration=calibration)
    assert back.cpu == q.cpu_features().isa


@pytest.mark.slow
def test_broken_int8_model_fails_the_gate_and_fp32_stays(forced_int8, calibration, cache_dir, caplog) -> None:
    key = forced_int8.runtime_tag.removeprefix("int8-")
    model = next((cache_dir / "onnx").glob(f"*.int8-{key}.onnx"))
    gate_file = model.with_suffix(".json")
    _break_model(model)
    gate_file.unlink()  # the gate is measured again for the cached (now broken) model
    clear_encoder_cache()
    with caplog.at_level(logging.WARNING, logger="imrs"):
        enc = get_encoder(BB, device="cpu", runtime="auto", calibration=calibration)
    assert enc.runtime == "onnx" and enc.runtime_tag == "fp32"
    assert not enc.int8_gate.passed and "fails the gate" in enc.int8_note
    refused = [r.getMessage() for r in caplog.records if "staying on fp32" in r.getMessage()]
    assert len(refused) == 1 and "mean cosine" in refused[0] and "\n" not in refused[0], refused
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

    # a file name that is not UTF-8 is calibrated on like any other
    shutil.copyfile(sorted((small_collection / "watch").iterdir())[0],
                    os.fsencode(small_collection / "watch") + b"/bad\xff.jpg")
    out = run("index", str(small_collection), "--backbone", BB, "--indexer", "flat_ip", "-q", "--runtime", "int8")
    assert "embedded 25" in out and "vectors: int8-" in out
    cpu = q.cpu_features()
    verdict = "int8 passes the gate" if cpu.arch == "x86_64" and cpu.vnni else "the gate ("  # measured on VNNI
    assert verdict in out and f"on {cpu.isa}" in out
    coll = Collection(small_collection, BB, "flat_ip", home=home)
    tag = coll.cached_runtime()
    assert q.is_int8_tag(tag)
    # which recipe runs and why: per collection, and for this CPU
    info = run("info", "--root", str(small_collection))
    gate = json.loads(next((cache_dir / "onnx").glob(f"*.{tag}.json")).read_text())
    assert f"{tag}: recipe {gate['recipe']}, gate {'passed' if gate['passed'] else 'failed'} on {cpu.isa}" in info
    plan = q.recipe_plan()
    assert plan in info and plan in run("backbones")
    assert cpu.describe() in plan and q.choose_recipes(cpu, True)[0][0].name in plan
    clear_encoder_cache()
    hits = json.loads(run("search", "--image", str(photos / "sunflower.jpg"), "-k", "5", "--json"))["hits"]
    assert sum(h["label"] == "sunflower" for h in hits) >= 4
    assert coll.encoder.runtime_tag == tag  # queries follow the index's runtime
    out = run("index", str(small_collection), "-q", "--runtime", "fp32")
    assert "embedded 25" in out and f"were {tag}" in out
    assert Collection(small_collection, BB, "flat_ip", home=home).cached_runtime() == "fp32"
    with pytest.raises(SystemExit):
        main(["index", str(small_collection), "--runtime", "int4"])
