"""pHash near-duplicate detection: real photos for the hash, a brute-force oracle for the index."""

from __future__ import annotations

import io
import itertools
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imrs.dedupe import HashIndex, _popcount, _popcount_lut, dedupe_batch, hamming, phash, to_signed
from imrs.errors import ImageDecodeError


def _jpeg_copy(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _variants(path: Path) -> list[Image.Image]:
    im = Image.open(path).convert("RGB")
    half = im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR)
    thumb = im.copy()
    thumb.thumbnail((256, 256))
    return [half, _jpeg_copy(im, 30), _jpeg_copy(thumb, 85), _jpeg_copy(half, 60)]


@pytest.fixture(scope="module")
def photo_hashes(photos: Path) -> dict[Path, int]:
    files = sorted(photos.glob("*.jpg"))
    if len(files) < 4:
        pytest.skip(f"need a few photos in {photos}")
    return {f: phash(f) for f in files}


def test_phash_is_a_signed_int64(photo_hashes: dict[Path, int], photos: Path):
    for f, h in photo_hashes.items():
        assert isinstance(h, int) and -(2**63) <= h < 2**63
        assert phash(Image.open(f)) == h == phash(str(f))
    assert len(set(photo_hashes.values())) == len(photo_hashes)


def test_resized_and_recompressed_copies_are_near_duplicates(photo_hashes: dict[Path, int]):
    for f, h in photo_hashes.items():
        for copy in _variants(f):
            assert hamming(h, phash(copy)) <= 4, f.name


def test_different_photos_are_not(photo_hashes: dict[Path, int]):
    for (fa, a), (fb, b) in itertools.combinations(photo_hashes.items(), 2):
        assert hamming(a, b) > 4, (fa.name, fb.name)


def test_phash_of_garbage_is_a_one_line_error(tmp_path: Path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageDecodeError) as err:
        phash(bad)
    assert "\n" not in str(err.value)


def test_hamming_and_signed_conversion():
    assert hamming(0, -1) == 64
    assert hamming(5, 5) == 0
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(-1, (1 << 64) - 1) == 0, "signed and unsigned spellings of the same bits"
    assert to_signed((1 << 64) - 1) == -1 and to_signed(1 << 63) == -(2**63) and to_signed(7) == 7


def test_hashes_round_trip_through_sqlite():
    values = [-(2**63), -1, 0, 2**63 - 1, 123456789]
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE h (v INTEGER)")
    con.executemany("INSERT INTO h VALUES (?)", [(v,) for v in values])
    assert [r[0] for r in con.execute("SELECT v FROM h ORDER BY rowid")] == values
    assert HashIndex(values, range(5)).hashes.tolist() == values


def test_popcount_paths_agree():
    x = np.random.default_rng(1).integers(0, 2**64 - 1, size=10_000, dtype=np.uint64, endpoint=True)
    expected = np.array([bin(int(v)).count("1") for v in x])
    assert np.array_equal(_popcount(x), expected)
    assert np.array_equal(_popcount_lut(x), expected)


def _flip(h: int, bits: list[int]) -> int:
    for b in bits:
        h ^= 1 << b
    return to_signed(h)


def test_hash_index_matches_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(-(2**63), 2**63 - 1, size=3000, dtype=np.int64)
    ids = rng.permutation(10_000)[:3000].astype(np.int64) - 5000
    index = HashIndex(hashes, ids)
    ref = dict(zip(ids.tolist(), hashes.tolist(), strict=True))
    queries = [int(h) for h in rng.choice(hashes, 20)]
    near = zip(queries, itertools.cycle([1, 3, 6]))
    queries += [_flip(q, rng.choice(64, size=k, replace=False).tolist()) for q, k in near]
    queries += [int(v) for v in rng.integers(-(2**63), 2**63 - 1, size=20, dtype=np.int64)]

    def check() -> None:
        assert len(index) == len(ref)
        for q in queries:
            dists = {i: hamming(q, h) for i, h in ref.items()}
            best = min(dists.values())
            got_id, got_d = index.nearest(q)
            assert got_d == best and dists[got_id] == best
            expect = sorted(((i, d) for i, d in dists.items() if d <= 6), key=lambda t: t[1])
            got = index.within(q, 6)
            assert sorted(got) == sorted(expect)
            assert [d for _, d in got] == sorted(d for _, d in got)
            assert index.is_duplicate(q, 6) == bool(expect)

    check()
    gone = ids[::3].tolist()
    assert index.remove(gone + [10**9]) == len(gone)
    for i in gone:
        del ref[i]
    check()
    new_ids = list(range(20_000, 20_500))
    new_hashes = rng.integers(-(2**63), 2**63 - 1, size=500, dtype=np.int64).tolist()
    index.add(new_ids, new_hashes)  # crosses the capacity several times over
    ref.update(zip(new_ids, new_hashes, strict=True))
    index.add([new_ids[0]], [queries[0]])  # an existing id is replaced, not duplicated
    ref[new_ids[0]] = queries[0]
    check()
    assert sorted(index.ids.tolist()) == sorted(ref)


def test_empty_index_and_validation():
    index = HashIndex()
    assert len(index) == 0
    assert index.nearest(123) == (None, 65)
    assert index.within(123, 64) == []
    assert not index.is_duplicate(123, 64)
    with pytest.raises(ValueError):
        index.add([1, 2], [3])
    index.add([7, 7], [1, 2])  # last one wins within a batch
    assert index.ids.tolist() == [7] and index.hashes.tolist() == [2]


def test_dedupe_batch_against_index_and_within_batch(photo_hashes: dict[Path, int]):
    files = list(photo_hashes)
    a, b, c = files[0], files[1], files[2]
    index = HashIndex([photo_hashes[a]], [1])
    batch = [
        phash(_variants(a)[1]),  # copy of something already stored
        photo_hashes[b],
        phash(_variants(b)[0]),  # copy of an earlier candidate in the same batch
        photo_hashes[c],
        photo_hashes[c],
    ]
    assert dedupe_batch(batch, index) == [False, True, False, True, False]
    assert len(index) == 1, "dedupe_batch does not modify the index"
    assert dedupe_batch([], index) == []
    h = photo_hashes[a]
    assert dedupe_batch([h, h, to_signed(h ^ 1)], HashIndex(), threshold=0) == [True, False, True]
    assert dedupe_batch([h, h, to_signed(h ^ 1)], HashIndex(), threshold=1) == [True, False, False]
