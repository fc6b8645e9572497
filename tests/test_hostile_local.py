"""Hostile local input (issue 11): every case of tests/hostile.py through the walk and the decoder,
then the real ``imrs index`` / ``imrs search`` on the whole folder; plus the name, id and memory
guarantees that make it safe. Nothing may crash, hang or take unbounded memory: every test runs
under a pytest-timeout, and memory is measured in child processes.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imrs.catalog import Catalog, ImageRecord
from imrs.config import Settings
from imrs.errors import ImageDecodeError
from imrs.ids import display_path, from_storage_text, stable_id, storage_text
from imrs.imageio import DecodeGate, ImageLimits, configure_images, load_image, open_image, read_image_file
from imrs.walk import walk_images
from tests.ci_skips import platform_skip
from tests.hostile import BAD_BYTES, CASES, NFC, NFD, Case, make_hostile_folder
from tests.webserver import big16_png, garbage_exif_jpeg, lying_jpeg

pytestmark = [pytest.mark.timeout(60),
              # Pillow warns between 89 and 178 Mpx; IMRS has its own per-call cap (and silences this
              # warning outside pytest, which re-enables warnings for every test).
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

REPO = Path(__file__).resolve().parents[1]
BB = "efficientnet_lite0"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    base = tmp_path_factory.mktemp("hostile")
    return base / "collection", make_hostile_folder(base / "collection", base / "outside")


@pytest.fixture(scope="module")
def walked(hostile: tuple[Path, list[Case]]):  # type: ignore[no-untyped-def]
    return walk_images(hostile[0], skip_top=lambda name: name.startswith("dynamic_"))


# -- every case, one test each ---------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_local_case(case: Case, hostile: tuple[Path, list[Case]], walked) -> None:  # type: ignore[no-untyped-def]
    root, built = hostile
    if case not in built:
        platform_skip(f"{case.name} cannot be made on this platform")
    files = {f.relpath for f in walked.files}
    skipped = [s for s in walked.skipped if s.relpath == case.relpath]
    path = root / case.relpath
    if case.outcome == "indexed":
        assert case.relpath in files and not skipped
        decoded = open_image(path, min_side=224)
        assert decoded.image.mode == "RGB" and min(decoded.image.size) >= 1
        assert "exif" not in decoded.image.info
    elif case.outcome == "failed":
        assert case.relpath in files and not skipped  # the walk cannot know: the decoder must say
        t0 = time.monotonic()
        with pytest.raises(ImageDecodeError) as err:
            open_image(path, min_side=224)
        assert case.reason in err.value.reason and "\n" not in str(err.value)
        assert time.monotonic() - t0 < 10
    elif case.outcome == "skipped":
        assert case.relpath not in files
        assert len(skipped) == 1 and case.reason in skipped[0].reason, skipped
    else:
        assert case.relpath not in files and not skipped


def test_walk_lists_nothing_it_was_not_asked_about(hostile: tuple[Path, list[Case]], walked) -> None:  # type: ignore[no-untyped-def]
    _, built = hostile
    known = {c.relpath for c in built}
    assert {s.relpath for s in walked.skipped} <= known
    assert {f.relpath for f in walked.files} == {c.relpath for c in built if c.outcome in ("indexed", "failed")}


def test_every_special_file_is_refused_by_the_reader_too(hostile: tuple[Path, list[Case]]) -> None:
    """A query path is not walked first: the reader itself must refuse FIFOs, devices, sockets."""
    root, built = hostile
    for case in built:
        if case.relpath.startswith("special/") and case.outcome == "skipped" and "empty" not in case.reason:
            t0 = time.monotonic()
            with pytest.raises(ImageDecodeError) as err:
                read_image_file(root / case.relpath)
            assert time.monotonic() - t0 < 2, case.name
            assert any(w in err.value.reason for w in ("not a regular file", "too large")), err.value.reason


def test_follow_links_modes(hostile: tuple[Path, list[Case]]) -> None:
    root, _ = hostile
    strict = walk_images(root, follow_links="inside", skip_top=lambda n: n.startswith("dynamic_"))
    reasons = {s.relpath: s.reason for s in strict.skipped}
    assert "outside the collection" in reasons["links/outside.jpg"]
    assert "links/inside.jpg" in {f.relpath for f in strict.files}
    none = walk_images(root, follow_links="none", skip_top=lambda n: n.startswith("dynamic_"))
    assert "not followed" in {s.relpath: s.reason for s in none.skipped}["links/inside.jpg"]
    everything = walk_images(root, follow_links="all", skip_top=lambda n: n.startswith("dynamic_"))
    files = {f.relpath for f in everything.files}
    assert {"links/outside_dir/outside.jpg", "links/outside_dir/also_outside.jpg"} <= files
    loops = {s.relpath: s.reason for s in everything.skipped}
    assert "loop" in loops["links/loop_dir"] and "loop" in loops["links/to_root"]  # still never loops


# -- the whole folder through the real CLI -----------------------------------------------------------
@pytest.fixture(scope="module")
def indexed_cli(hostile: tuple[Path, list[Case]], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from imrs.encoders import backbone_status

    state, why = backbone_status(BB)
    if state != "ready":
        pytest.skip(f"{BB} unavailable: {why}")
    home = tmp_path_factory.mktemp("hostile-home")
    root, built = hostile
    proc = subprocess.run([sys.executable, "-m", "imrs.cli", "index", str(root), "--backbone", BB, "--indexer",
                           "flat_ip", "-q"], cwd=REPO, capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), "IMRS_HOME": str(home)})
    return root, built, home, proc


@pytest.mark.timeout(180)
def test_imrs_index_indexes_every_good_image_and_lists_every_bad_entry(indexed_cli,  # type: ignore[no-untyped-def]
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from imrs.collection import Collection

    root, built, home, proc = indexed_cli
    out = proc.stdout.decode("utf-8")  # must be valid UTF-8: undecodable names are escaped
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    good = [c for c in built if c.outcome == "indexed"]
    bad = [c for c in built if c.outcome in ("skipped", "failed")]
    assert f"embedded {len(good)}, " in out
    n_failed, n_skipped = (sum(c.outcome == kind for c in bad) for kind in ("failed", "skipped"))
    assert f"{n_failed} failed, {n_skipped} skipped" in out
    for c in bad:
        lines = [ln for ln in out.splitlines() if ln.startswith(f"  skipped {display_path(c.relpath)}: ")]
        assert len(lines) == 1 and c.reason in lines[0], (c.name, lines)
    coll = Collection(root, BB, "flat_ip", home=home)
    catalog = coll.catalog.file_stats()
    assert set(catalog) == {c.relpath for c in good}  # the real names, byte for byte
    assert len(coll.index) == len(good)
    assert len({stable_id(c.relpath) for c in good}) == len(good)
    # A second run is incremental and still lists what it leaves out.
    from imrs.cli import main

    assert main(["index", str(root), "-q", "--home", str(home)]) == 0
    text = capsys.readouterr().out
    assert f"{len(good)} unchanged" in text and "embedded 0," in text
    assert f"{n_failed} new" in text  # files that did not decode are tried again, nothing else
    assert "skipped special/pipe.jpg: not a regular file" in text


@pytest.mark.timeout(120)
def test_search_with_hostile_query_files(indexed_cli, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from imrs.cli import main

    root, _, home, _ = indexed_cli

    def search(path: Path) -> tuple[int, str, str]:
        code = main(["search", "--image", os.fspath(path), "-k", "40", "--home", str(home)])
        out, err = capsys.readouterr()
        return code, out, err

    t0 = time.monotonic()
    code, _, err = search(root / "special/pipe.jpg")  # used to hang forever
    assert code == 2 and err.startswith("imrs: error: ") and err.count("\n") == 1
    assert "FIFO" in err and time.monotonic() - t0 < 30
    code, _, err = search(root / "special/zero.jpg")  # used to read /dev/zero until the OOM killer came
    assert code == 2 and "character device" in err
    code, _, err = search(root / "good/exif_garbage.jpg")  # indexed fine, failed as a query before
    assert code == 0, err
    code, out, _ = search(root / "names" / "new\nline.jpg")  # hits with undecodable names print escaped
    assert code == 0 and "bad\\xff\\xfe.jpg" in out  # (the query file itself is left out of its hits)
    code, out, _ = search(root / "names" / BAD_BYTES)
    assert code == 0 and "new\\x0aline.jpg" in out and "bad\\xff\\xfe.jpg" not in out
    out.encode("utf-8")  # printable: no lone surrogates reach the terminal


# -- names, ids and the catalog ------------------------------------------------------------------------
def test_names_keep_their_identity(tmp_path: Path) -> None:
    assert NFC != NFD and stable_id(f"x/{NFC}") != stable_id(f"x/{NFD}")
    assert stable_id("a\\b.jpg") != stable_id("a/b.jpg")
    assert stable_id(BAD_BYTES) != stable_id(BAD_BYTES.replace("\udcff", "\udcfe"))
    for rel in (BAD_BYTES, "x/back\\slash.jpg", f"names/{NFD}", "plain/a.jpg", "\\\udcff", "/"[1:] + "a\\xff"):
        assert from_storage_text(storage_text(rel)) == rel
        storage_text(rel).encode("utf-8")  # always valid UTF-8
    # the catalog stores and returns the exact name; the label is printable
    cat = Catalog(tmp_path / "c.sqlite")
    recs = [ImageRecord.for_path(f"dir{BAD_BYTES}/{BAD_BYTES}"), ImageRecord.for_path(f"n/{NFC}"),
            ImageRecord.for_path(f"n/{NFD}"), ImageRecord.for_path("n/a\\xff.jpg")]
    cat.upsert(recs)
    assert set(cat.file_stats()) == {r.relpath for r in recs}
    back = cat.get_many([r.id for r in recs])
    assert [back[r.id].relpath for r in recs] == [r.relpath for r in recs]
    assert back[recs[0].id].label == "dirbad\\xff\\xfe.jpg"
    assert len({r.id for r in recs}) == 4


def test_metadata_csv_finds_files_across_spellings(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    cat.upsert([ImageRecord.for_path(f"n/{NFD}"), ImageRecord.for_path("good/plain.jpg"),
                ImageRecord.for_path("n/back\\slash.jpg")])
    csv = tmp_path / "meta.csv"
    csv.write_text(f"path,title\nn/{NFC},composed\ngood\\plain.jpg,windows\nn/back\\slash.jpg,literal\n",
                   encoding="utf-8")
    assert cat.import_metadata_csv(csv) == 3
    titles = {r.relpath: r.extra.get("title") for r in cat.get_many(list(cat.ids_set())).values()}
    assert titles == {f"n/{NFD}": "composed", "good/plain.jpg": "windows", "n/back\\slash.jpg": "literal"}
    assert unicodedata.is_normalized("NFD", next(iter(k for k in titles if k.startswith("n/c"))))


# -- one decoder, bounded -------------------------------------------------------------------------------
def test_exif_is_applied_once_whatever_the_entry_point(tmp_path: Path) -> None:
    data = garbage_exif_jpeg()
    first = load_image(data)
    assert first.size == (120, 90) and "exif" not in first.info
    assert np.array_equal(np.asarray(load_image(first)), np.asarray(first))  # a second pass changes nothing
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(buf, "JPEG", exif=exif.tobytes())
    once = load_image(buf.getvalue())
    assert once.size == (20, 40) and load_image(once).size == (20, 40)


def test_sixteen_bit_scaling_is_the_same_from_disk_and_from_the_web(tmp_path: Path) -> None:
    from imrs.web.download import decode_image

    arr = np.array([[0, 257, 32896], [65535, 1000, 255]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    (tmp_path / "d.png").write_bytes(buf.getvalue())
    disk = np.asarray(load_image(tmp_path / "d.png"))[..., 0]
    web = np.asarray(decode_image(buf.getvalue(), 10_000, 256))[..., 0]
    assert disk.tolist() == web.tolist() == [[0, 1, 128], [255, 4, 1]]  # value / 257, rounded


def test_truncated_jpeg_is_kept_only_above_the_stated_fraction() -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (400, 300, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    assert load_image(data[: int(len(data) * 0.97)]).size == (300, 400)  # a few rows short: kept
    with pytest.raises(ImageDecodeError, match=r"only \d+% of the rows decoded \(at least 90% needed\)"):
        load_image(data[: len(data) // 2])
    lax = ImageLimits.from_settings(Settings(min_decoded_fraction=0.3))
    assert load_image(data[: len(data) // 2], limits=lax).size == (300, 400)
    strict = ImageLimits.from_settings(Settings(min_decoded_fraction=1.0))
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(data[: int(len(data) * 0.97)], limits=strict)
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(lying_jpeg(7000, 7000), limits=strict)


def test_reader_caps(tmp_path: Path) -> None:
    p = tmp_path / "a.jpg"
    p.write_bytes(b"\xff" * 5000)
    with pytest.raises(ImageDecodeError, match="file too large"):
        read_image_file(p, max_bytes=4000)
    assert read_image_file(p, max_bytes=5000) == b"\xff" * 5000
    tiny = Settings(max_image_mb=0.001)
    with pytest.raises(ImageDecodeError, match="file too large"):
        load_image(p, limits=ImageLimits.from_settings(tiny))
    try:
        configure_images(tiny)  # what an entry point does with the settings it was given
        with pytest.raises(ImageDecodeError, match="file too large"):
            load_image(p)
    finally:
        configure_images(Settings.from_env())


def test_gate_bounds_bytes_and_slots() -> None:
    gate = DecodeGate(budget=100, slots=3)
    inside: list[int] = []
    peak = [0]
    lock = threading.Lock()

    def job(cost: int) -> None:
        with gate.hold(cost):
            held = min(cost, gate.budget)  # a decode bigger than the budget runs alone
            with lock:
                inside.append(held)
                peak[0] = max(peak[0], sum(inside))
            time.sleep(0.02)
            with lock:
                inside.remove(held)

    threads = [threading.Thread(target=job, args=(c,)) for c in [60, 60, 30, 30, 500, 10, 10, 10]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert gate.peak_active <= 3 and gate.peak_used <= 100 and peak[0] <= 100
    assert gate.run(lambda: threading.current_thread().name).startswith("imrs-image")


# Peak RSS is VmHWM (this process's own high-water mark): ru_maxrss of a child started from a
# big pytest process would include the parent's RSS at fork time.
_MEMORY_CHILD = r"""
import sys
from concurrent.futures import ThreadPoolExecutor
from imrs import imageio
def hwm():
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
threads, budget_mb = int(sys.argv[1]), float(sys.argv[2])
data = [open(p, "rb").read() for p in sys.argv[3:]]
imageio.set_decode_limits(int(budget_mb * 2**20), slots=threads)
before = hwm()
with ThreadPoolExecutor(threads) as ex:
    sizes = list(ex.map(lambda d: imageio.open_image(d, min_side=224).image.size, data))
assert all(min(s) >= 224 for s in sizes), sizes
print(before, hwm())
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux) for VmHWM")
def test_decode_memory_does_not_scale_with_threads(tmp_path: Path) -> None:
    """Four 25-Mpx 16-bit PNGs decoded by four threads: with the gate sized for one picture the
    peak stays that of one thread; with a gate that lets all four run, it does not (the test can
    fail). And no float64 copy: one decode grows RSS by far less than 8 bytes per pixel."""
    paths = []
    for i in range(4):  # one picture (made once: ~1 s), four files
        p = tmp_path / f"big{i}.png"
        p.write_bytes(big16_png(0, 5000))
        paths.append(str(p))

    def peak(threads: int, budget_mb: float) -> tuple[float, float]:
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(threads), str(budget_mb), *paths],
                             cwd=REPO, capture_output=True, text=True, timeout=100,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr[-2000:]
        before, after = (int(x) / 1024 for x in out.stdout.split())
        return before, after

    base1, one = peak(1, 1)
    _, gated = peak(4, 1)  # budget below one picture: one decode at a time, on any thread count
    _, free = peak(4, 4096)
    assert one - base1 < 25e6 * 8 / 2**20 / 2, f"one decode grew RSS by {one - base1:.0f} MB"
    assert gated <= 1.5 * one, f"gated: {gated:.0f} MB vs one thread {one:.0f} MB"
    assert free > gated + 60, f"without the gate four decodes should cost more ({free:.0f} vs {gated:.0f} MB)"
