"""A generator of hostile collection folders: every kind of entry a filesystem can throw at a walk
and a decoder, each with the outcome IMRS must produce.

``make_hostile_folder(root, outside)`` builds the folder and returns the cases that could be
built (a socket path that is too long, or a case this platform cannot make, is left out).
Outcomes:

- ``indexed``: a good image (odd mode, odd name, reached through a link): must be in the index;
- ``skipped``: the folder walk must leave it out, listing it with a reason containing ``reason``;
- ``failed``: the walk takes it, the decoder refuses it, with a reason containing ``reason``;
- ``ignored``: silently not an image entry (hidden, no image extension, the dynamic folders).

Used by tests/test_hostile_local.py and scripts/bench_ingest_memory.py.
"""

from __future__ import annotations

import io
import os
import random
import socket
import stat
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.webserver import bomb_png, garbage_exif_jpeg, lying_jpeg, mid_bomb_png

Builder = Callable[[Path, Path], None]


@dataclass(frozen=True)
class Case:
    name: str
    relpath: str  # under the collection root, exactly as the walk must report it
    outcome: str  # indexed | skipped | failed | ignored
    reason: str = ""
    build: Builder | None = None


def _photo(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A small picture unlike any other seed's (smooth random colour field)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    return small.resize(size, Image.Resampling.BICUBIC)


def _enc(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _write(data: bytes | Callable[[], bytes]) -> Builder:
    def build(path: Path, outside: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data() if callable(data) else data)
    return build


def _link(target: str | Callable[[Path, Path], str]) -> Builder:
    def build(path: Path, outside: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target(path, outside) if callable(target) else target, path)
    return build


def _fifo(path: Path, outside: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def _socket(path: Path, outside: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fspath(path))  # the file stays after close


def _sparse(size: int) -> Builder:
    def build(path: Path, outside: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(b"\xff\xd8\xff")
            fh.truncate(size)  # a hole: no disk used
    return build


def _mkdir(path: Path, outside: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _gray16() -> bytes:
    ramp = np.linspace(0, 65535, 200 * 150).reshape(150, 200).astype(np.uint16)
    return _enc(Image.fromarray(ramp), "PNG")


def _big16() -> bytes:
    side = 3000
    x = np.arange(side, dtype=np.uint32)
    arr = (((x[None, :] * 5 + x[:, None] * 3) * 11) % 65536).astype(np.uint16)
    return _enc(Image.fromarray(arr), "PNG")


def _float_tiff() -> bytes:
    arr = np.linspace(0, 1, 120 * 90, dtype=np.float32).reshape(90, 120)
    return _enc(Image.fromarray(arr), "TIFF")


def _tiff16() -> bytes:
    ramp = np.linspace(0, 65535, 120 * 90).reshape(90, 120).astype(np.uint16)
    return _enc(Image.fromarray(ramp), "TIFF")


def _rgba() -> bytes:
    im = _photo(3).convert("RGBA")
    alpha = Image.new("L", im.size, 0)
    alpha.paste(255, (0, 0, im.width // 2, im.height))
    im.putalpha(alpha)
    return _enc(im, "PNG")


def _palette_alpha() -> bytes:
    pal = Image.new("P", (64, 48), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    pal.paste(1, (0, 0, 32, 48))
    return _enc(pal, "PNG", transparency=0)


def _exif6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _enc(_photo(9, (200, 100)), "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [_photo(s).convert("P") for s in (20, 21)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _noise_jpeg(seed: int, size: tuple[int, int] = (400, 300)) -> bytes:
    rng = np.random.default_rng(seed)
    return _enc(Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)), "JPEG", quality=90)


def _cut(data: Callable[[], bytes], keep: float) -> Callable[[], bytes]:
    return lambda: (d := data())[: int(len(d) * keep)]


def _gif_bomb() -> bytes:
    return (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00"
            + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b")


def _tiff_bomb() -> bytes:
    """A TIFF header claiming 100000 x 100000 pixels with one strip of 10 bytes."""
    entries = [(256, 4, 1, 100_000), (257, 4, 1, 100_000), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8 + 2 + 9 * 12 + 4), (277, 3, 1, 1), (278, 4, 1, 100_000),
               (279, 4, 1, 10)]
    packed = [struct.pack("<HHII", tag, kind, count, value) if kind == 4
              else struct.pack("<HHIHH", tag, kind, count, value, 0) for tag, kind, count, value in entries]
    ifd = struct.pack("<H", len(entries)) + b"".join(packed) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 10


NFC = unicodedata.normalize("NFC", "café.jpg")
NFD = unicodedata.normalize("NFD", "café.jpg")
BAD_BYTES = os.fsdecode(b"bad\xff\xfe.jpg")
DEEP = "/".join(f"d{i}" for i in range(30)) + "/deep.jpg"


def _photo_bytes(seed: int, fmt: str = "JPEG", **kw: object) -> Callable[[], bytes]:
    return lambda: _enc(_photo(seed), fmt, **kw)


CASES: list[Case] = [
    # -- good images in every awkward mode: indexed ---------------------------------------------
    Case("plain-jpeg", "good/plain.jpg", "indexed", build=_write(_photo_bytes(1))),
    Case("progressive-jpeg", "good/progressive.jpg", "indexed", build=_write(_photo_bytes(2, progressive=True))),
    Case("rgba-png", "good/rgba.png", "indexed", build=_write(_rgba)),
    Case("palette-gif", "good/palette.gif", "indexed", build=_write(lambda: _enc(_photo(4).convert("P"), "GIF"))),
    Case("palette-alpha-png", "good/palette_alpha.png", "indexed", build=_write(_palette_alpha)),
    Case("cmyk-jpeg", "good/cmyk.jpg", "indexed", build=_write(lambda: _enc(_photo(5).convert("CMYK"), "JPEG"))),
    Case("gray-png", "good/gray.png", "indexed", build=_write(lambda: _enc(_photo(6).convert("L"), "PNG"))),
    Case("la-png", "good/la.png", "indexed", build=_write(lambda: _enc(_photo(7).convert("LA"), "PNG"))),
    Case("gray16-png", "good/gray16.png", "indexed", build=_write(_gray16)),
    Case("big16-png", "good/big16.png", "indexed", build=_write(_big16)),
    Case("gray16-tiff", "good/gray16.tif", "indexed", build=_write(_tiff16)),
    Case("float-tiff", "good/float.tiff", "indexed", build=_write(_float_tiff)),
    Case("bmp", "good/image.bmp", "indexed", build=_write(_photo_bytes(8, "BMP"))),
    Case("webp", "good/image.webp", "indexed", build=_write(_photo_bytes(10, "WEBP"))),
    Case("exif-rotated", "good/exif6.jpg", "indexed", build=_write(_exif6)),
    Case("exif-garbage", "good/exif_garbage.jpg", "indexed", build=_write(garbage_exif_jpeg)),
    Case("animated-gif", "good/animated.gif", "indexed", build=_write(_animated_gif)),
    Case("upper-ext", "good/UPPER.JPG", "indexed", build=_write(_photo_bytes(11))),
    Case("cut-last-1pct", "good/cut_tail.jpg", "indexed", build=_write(_cut(lambda: _noise_jpeg(12), 0.995))),
    Case("deep-path", DEEP, "indexed", build=_write(_photo_bytes(13))),
    # -- names: every one a different file, reachable, shown as it is ---------------------------
    Case("name-nfc", f"names/{NFC}", "indexed", build=_write(_photo_bytes(14))),
    Case("name-nfd", f"names/{NFD}", "indexed", build=_write(_photo_bytes(15))),
    Case("name-not-utf8", f"names/{BAD_BYTES}", "indexed", build=_write(_photo_bytes(16))),
    Case("name-backslash", "names/back\\slash.jpg", "indexed", build=_write(_photo_bytes(17))),
    Case("name-newline", "names/new\nline.jpg", "indexed", build=_write(_photo_bytes(18))),
    Case("name-emoji-spaces", "names/🌻 sun flower .jpg", "indexed", build=_write(_photo_bytes(19))),
    Case("name-quotes-dash", "names/-it's \"quoted\".png", "indexed", build=_write(_photo_bytes(22, "PNG"))),
    # -- links that are fine ---------------------------------------------------------------------
    Case("link-to-file-inside", "links/inside.jpg", "indexed", build=_link("../good/plain.jpg")),
    Case("link-to-file-outside", "links/outside.jpg", "indexed",
         build=_link(lambda p, out: os.fspath(out / "outside.jpg"))),
    # -- links that must not be followed ----------------------------------------------------------
    Case("link-loop-dot", "links/loop_dir", "skipped", "symbolic link loop", _link(".")),
    Case("link-loop-parent", "links/up", "skipped", "symbolic link loop", _link("..")),
    Case("link-to-root", "links/to_root", "skipped", "symbolic link loop", _link("/")),
    Case("link-to-itself", "links/self.jpg", "skipped", "symbolic link loop", _link("self.jpg")),
    Case("link-cycle-a", "links/cycle_a.jpg", "skipped", "symbolic link loop", _link("cycle_b.jpg")),
    Case("link-cycle-b", "links/cycle_b.jpg", "skipped", "symbolic link loop", _link("cycle_a.jpg")),
    Case("link-dangling", "links/dangling.jpg", "skipped", "broken symbolic link", _link("no/such/file.jpg")),
    Case("link-to-folder-outside", "links/outside_dir", "skipped", "outside the collection",
         _link(lambda p, out: os.fspath(out))),
    Case("link-to-folder-inside", "links/good_again", "skipped", "inside the collection", _link("../good")),
    # -- special files ------------------------------------------------------------------------------
    Case("fifo", "special/pipe.jpg", "skipped", "FIFO", _fifo),
    Case("unix-socket", "special/sock.jpg", "skipped", "socket", _socket),
    Case("link-dev-zero", "special/zero.jpg", "skipped", "character device", _link("/dev/zero")),
    Case("link-dev-urandom", "special/random.png", "skipped", "character device", _link("/dev/urandom")),
    Case("link-dev-null", "special/null.png", "skipped", "character device", _link("/dev/null")),
    Case("empty-file", "special/empty.jpg", "skipped", "empty file", _write(b"")),
    Case("huge-sparse-file", "special/huge.jpg", "skipped", "file too large", _sparse(300 * 2**20)),
    # -- decode failures: taken by the walk, refused by the decoder ---------------------------------
    Case("random-bytes", "bad/garbage.jpg", "failed", "corrupt image", _write(random.Random(1).randbytes(5000))),
    Case("html-named-jpeg", "bad/page.jpg", "failed", "corrupt image", _write(b"<!doctype html><p>hi</p>" * 20)),
    Case("truncated-jpeg", "bad/half.jpg", "failed", "truncated", _write(_cut(lambda: _noise_jpeg(30), 0.5))),
    Case("truncated-png", "bad/half.png", "failed", "truncated", _write(_cut(_photo_bytes(31, "PNG"), 0.6))),
    Case("truncated-webp", "bad/half.webp", "failed", "corrupt image", _write(_cut(_photo_bytes(32, "WEBP"), 0.5))),
    Case("lying-header-7000", "bad/lying_7000.jpg", "failed", "truncated", _write(lambda: lying_jpeg(7000, 7000))),
    Case("lying-header-12000", "bad/lying_12000.jpg", "failed", "truncated",
         _write(lambda: lying_jpeg(12000, 12000))),
    Case("png-bomb", "bad/bomb.png", "failed", "decompression bomb", _write(bomb_png)),
    Case("png-bomb-valid-13k", "bad/bomb13k.png", "failed", "decompression bomb",
         _write(lambda: mid_bomb_png(13000))),
    Case("gif-bomb", "bad/bomb.gif", "failed", "decompression bomb", _write(_gif_bomb)),
    Case("tiff-bomb", "bad/bomb.tif", "failed", "decompression bomb", _write(_tiff_bomb)),
    Case("eps-named-jpeg", "bad/ghostscript.jpg", "failed", "unsupported format",
         _write(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")),
    Case("ico-named-png", "bad/icon.png", "failed", "unsupported format",
         _write(lambda: _enc(_photo(33, (32, 32)), "ICO"))),
    # -- not image entries: silently ignored --------------------------------------------------------
    Case("hidden-file", "good/.hidden.jpg", "ignored", build=_write(_photo_bytes(40))),
    Case("not-an-image-name", "good/notes.txt", "ignored", build=_write(b"hello")),
    Case("folder-named-jpeg", "good/folder.jpg", "ignored", build=_mkdir),
    Case("dynamic-folder", "dynamic_web/x.jpg", "ignored", build=_write(_photo_bytes(41))),
]


def make_hostile_folder(root: Path, outside: Path) -> list[Case]:
    """Build every case under ``root`` (``outside`` holds link targets beyond the collection)."""
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "outside.jpg").write_bytes(_enc(_photo(50), "JPEG"))
    (outside / "also_outside.jpg").write_bytes(_enc(_photo(51), "JPEG"))
    built = []
    for case in CASES:
        assert case.build is not None
        path = root / case.relpath
        try:
            case.build(path, outside)
        except OSError:  # e.g. a socket path longer than the platform allows
            if case.outcome != "skipped":
                raise
            continue
        built.append(case)
    return built


def is_special(path: Path) -> bool:
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True
