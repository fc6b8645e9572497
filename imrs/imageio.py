"""The one image decoder: every entry point (collection images, query images, thumbnails, pHash,
web downloads) turns bytes into an RGB PIL image here, so a picture looks, embeds and hashes the
same whichever way it arrived.

What it guarantees, and why:

- **Reads are bounded.** A path is opened non-blocking and must be a regular file (a FIFO named
  ``pipe.jpg`` would block forever, a link to ``/dev/zero`` would be read until memory runs
  out); it is read with a size cap and a wall-clock cap (:func:`read_image_file`).
- **Decodes are bounded.** The pixel count is checked from the header before any pixel is
  decoded (per call: Pillow's own limit is process-global); JPEGs are decoded at 1/2..1/8 scale
  by the IDCT itself when the caller needs less (``draft``); other formats are box-reduced right
  after decoding, before any conversion; 16-bit and float images are converted in strips of
  integers, never as a float64 copy of the whole picture. And a process-wide gate
  (:class:`DecodeGate`) bounds how many decoded bytes are in flight at once, across all threads,
  so eight parallel downloads of 50-megapixel PNGs take about the memory of one or two, not eight.
- **One look.** EXIF orientation applied once (a garbage EXIF block is ignored, never fatal, and
  the result carries no EXIF so a second pass cannot rotate it again), transparency composited on
  white, palette/CMYK/16-bit mapped to 8-bit RGB (16-bit: value/257, what browsers show).
- **Truncated files are refused**, except a JPEG whose rows decoded to at least
  ``ImageLimits.min_decoded_fraction`` (libjpeg fills what is missing with flat grey, which is
  measured, so "mostly grey pictures" never enter an index).
- **One error type.** Every failure is an :class:`~imrs.errors.ImageDecodeError` with a
  one-line ``reason`` so a batch job can skip the file and say why.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import stat
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageDecodeError
from .ids import display_path
from .imagelimits import (  # noqa: F401  (the gate and the limits, re-exported for callers of this module)
    DecodeGate,
    ImageLimits,
    configure_images,
    decode_gate,
    image_limits,
    set_decode_limits,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)

#: The decoders allowed to touch any bytes we are given. Pillow can open far more (EPS even shells
#: out to Ghostscript); images are these, and a smaller attack surface is the point.
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image

_WHITE = (255, 255, 255)
_READ_CHUNK = 8 << 20
_STRIP_PIXELS = 1 << 22  # 4 Mpx per strip when converting deep images: ~16 MB of temporaries
_JPEG_EOI = b"\xff\xd9"

# Our own per-call pixel cap (checked before decoding) replaces Pillow's warning, which would
# otherwise print once per process for every picture between 89 and 178 megapixels.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Extension check only (cheap, for directory walks); decoding is what really decides."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


class _Bad(Exception):
    """Internal: the one-line reason an image is refused."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for skip reasons)."""
    for test, word in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return word
    return "not a regular file"


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_image_file(path: str | os.PathLike[str], max_bytes: int | None = None,
                    timeout: float | None = None, *, limits: ImageLimits | None = None) -> bytes:
    """The whole file, or ``ImageDecodeError`` (with ``reason``) when it must not be read.

    Opened with O_NONBLOCK so that a FIFO is refused instead of waiting for a writer, then
    checked to be a regular file on the *open descriptor* (the name may have been swapped since a
    folder walk looked at it). The size is checked before reading and again while reading (a
    file that grows), and the read stops when ``timeout`` seconds have passed between chunks.
    """
    lim = limits or image_limits()
    cap = max_bytes if max_bytes is not None else lim.max_bytes
    limit = timeout if timeout is not None else lim.read_timeout
    name = display_path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)

    def refuse(reason: str) -> ImageDecodeError:
        return ImageDecodeError(f"cannot read {name}: {reason}", reason)

    try:
        fd = os.open(path, flags)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a socket cannot be opened at all (ENXIO): say what it is
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                raise refuse(f"not a regular file: {file_kind(mode)}") from None
        raise refuse(_os_reason(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(f"not a regular file: {file_kind(st.st_mode)}")
        if st.st_size > cap:
            raise refuse(f"file too large: {_mb(st.st_size)} > {_mb(cap)} limit")
        with contextlib.suppress(OSError):
            os.set_blocking(fd, True)
        deadline = time.monotonic() + limit
        parts: list[bytes] = []
        got = 0
        while True:
            # One read for an ordinary photo; 8 MiB pieces (deadline checked between them) beyond.
            chunk = os.read(fd, min(_READ_CHUNK, max(st.st_size - got + 1, 4096)))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
            if got > cap:
                raise refuse(f"file too large: more than {_mb(cap)} (it grew while being read)")
            if time.monotonic() > deadline:
                raise refuse(f"reading took more than {limit:g} s (slow or stuck filesystem)")
    except OSError as exc:
        raise refuse(_os_reason(exc)) from None
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found (deleted, or a broken link)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == 40:  # ELOOP
        return "symbolic link loop"
    return f"cannot open: {exc.strerror or _one_line(exc)}"


def _bytes_per_pixel(mode: str) -> int:
    """Pillow's storage: 1 byte for 8-bit single-band modes, 2 for I;16, 4 for everything else."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _cost(img: Image.Image, shrinking: bool) -> int:
    w, h = img.size
    px = w * h
    decoded = px * _bytes_per_pixel(img.mode)
    if img.mode in _ALPHA_FIRST or "transparency" in img.info:
        return decoded + px * 12  # converted to RGBA and composited at full size first
    return decoded + (decoded // 2 if shrinking else px * 5)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """An RGB image plus what the file said about itself (size as stored, before rotation)."""

    image: Image.Image
    width: int
    height: int
    format: str | None


_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Converted to RGB *before* shrinking: averaging palette indices is meaningless, and averaging
#: colours of fully transparent pixels would bleed them into the edges.
_ALPHA_FIRST = frozenset({"P", "PA", "1", "RGBA", "LA", "La", "RGBa"})
_DEEP = ("I", "F")


def _describe(src: object) -> str:
    if isinstance(src, str | os.PathLike):
        return display_path(src)
    if isinstance(src, bytes | bytearray | memoryview):
        return f"<{len(src)} bytes>"
    return "<image>"


@functools.cache
def _available(formats: tuple[str, ...]) -> list[str]:
    Image.init()
    return [f for f in formats if f in Image.OPEN]  # AVIF/MPO depend on the Pillow build


def _open_bytes(data: bytes, formats: tuple[str, ...]) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=_available(formats))
    except Image.DecompressionBombError as exc:
        raise _Bad(f"decompression bomb: {_one_line(exc).split(',')[0]}") from None
    except Image.UnidentifiedImageError:
        raise _Bad("corrupt image: not an image, or an unsupported format") from None


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8; an unreadable EXIF block means "as stored" (and is logged)."""
    if img.format in ("JPEG", "MPO") and "exif" not in img.info:
        return 1  # nothing to parse
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if int(value) in _ORIENT else 1
    except Exception as exc:  # noqa: BLE001 - random bytes in EXIF must not cost the picture
        log.debug("ignoring unreadable EXIF block: %s", _one_line(exc))
        return 1


def _draft(img: Image.Image, min_side: int | None, max_side: int | None) -> None:
    """JPEG only: let the IDCT decode at 1/2, 1/4 or 1/8 scale when the caller needs less."""
    if img.format not in ("JPEG", "MPO"):
        return
    w, h = img.size
    if min_side:
        short = min(w, h)
        if short <= 2 * min_side:  # no power-of-two reduction possible
            return
        ratio = min_side / short
        # draft() picks the largest scale whose result is >= the requested size on both axes.
        img.draft("RGB", (max(1, math.ceil(w * ratio)), max(1, math.ceil(h * ratio))))
    elif max_side and max(w, h) > 2 * max_side:
        img.draft("RGB", (max_side, max_side))


def _decoded_fraction(img: Image.Image) -> float:
    """Share of rows above the flat grey (128) block libjpeg paints where data was missing.

    Scans upwards from the bottom in strips; a complete picture costs one row.
    """
    if img.mode not in ("L", "RGB"):
        return 1.0
    w, h = img.size
    if not (np.asarray(img.crop((0, h - 1, w, h))) == 128).all():
        return 1.0
    y = h
    step = max(1, _STRIP_PIXELS // max(1, w * 4))
    while y > 0:
        y0 = max(0, y - step)
        rows = np.asarray(img.crop((0, y0, w, y))).reshape(y - y0, -1)
        full = (rows == 128).all(axis=1)
        if full.all():
            y = y0
            continue
        return (y0 + int(np.flatnonzero(~full)[-1]) + 1) / h
    return 0.0


def _load(img: Image.Image, data: bytes | None, formats: tuple[str, ...], min_side: int | None,
          max_side: int | None, need: float) -> Image.Image:
    """Decode the pixels; a truncated JPEG passes when at least ``need`` of its rows decoded."""
    cut_off = False
    try:
        img.load()
    except OSError as exc:
        if not ("truncated" in str(exc) and data is not None and img.format in ("JPEG", "MPO")):
            raise _Bad(f"corrupt image: {_one_line(exc)}") from None
        # A cut-off JPEG: end it where the data ends and measure how much of it decoded.
        cut_off = True
        img = _open_bytes(data + _JPEG_EOI, formats)
        _draft(img, min_side, max_side)
        try:
            img.load()
        except OSError as again:
            raise _Bad(f"corrupt image: {_one_line(again)}") from None
    if img.format in ("JPEG", "MPO"):
        # The rows above libjpeg's flat-grey fill are what decoded. A fill that is not flat grey
        # cannot be measured: such a file is kept unless no truncation at all is accepted.
        got = _decoded_fraction(img)
        if got < need or (cut_off and need >= 1.0):
            raise _Bad(f"corrupt image: truncated, only {min(got, 0.99):.0%} of the rows decoded "
                       f"(at least {need:.0%} needed)")
    return img


def _shrink(img: Image.Image, min_side: int | None, max_side: int | None) -> Image.Image:
    """Box-reduce by an integer factor, leaving >= 2x the target for the final antialiased resize."""
    w, h = img.size
    if min_side:
        factor = min(w, h) // (2 * min_side)
    elif max_side:
        factor = max(w, h) // (2 * max_side)
    else:
        return img
    if factor < 2:
        return img
    if img.mode in ("L", "RGB", "CMYK", "YCbCr", "I", "F", "LAB", "HSV", "RGBX"):
        return img.reduce(factor)
    return img.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)


def _deep_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grey -> 8-bit, in strips of integers (never a float64 copy).

    16-bit data is value/257 (the high byte, rounded: what browsers and libpng show). 32-bit
    integers in 0..65535 are treated as 16-bit; other ranges, and floats outside 0..1, are
    stretched from their minimum to their maximum.
    """
    mode = img.mode
    if mode.startswith("I;16") and mode not in ("I;16", "I;16L"):
        img = img.convert("I")  # big-endian storage: let Pillow swap it
        mode = "I"
    lo, hi = img.getextrema()  # type: ignore[misc]
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        lo, scale = 0.0, 255.0 / 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        lo, scale = 0.0, 255.0
    else:
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
    w, h = img.size
    out = Image.new("L", img.size)
    rows = max(1, _STRIP_PIXELS // max(1, w))
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        strip = np.asarray(img.crop((0, y0, w, y1))).astype(np.float32)  # a writable copy
        strip -= np.float32(lo)
        strip *= np.float32(scale)
        np.clip(strip, 0, 255, out=strip)
        out.paste(Image.fromarray(np.rint(strip).astype(np.uint8)), (0, y0))
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode an image comes in; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode == "P" or (mode in ("L", "RGB", "1") and "transparency" in img.info):
        img = img.convert("RGBA")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in _DEEP:
        return _deep_to_l(img).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV: Pillow converts these correctly (CMYK JPEGs from Photoshop
    # are stored inverted, which the JPEG plugin already undoes).
    return img.convert("RGB")


def open_image(src: ImageSource, *, min_side: int | None = None, max_side: int | None = None,
               max_pixels: int | None = None, max_bytes: int | None = None, timeout: float | None = None,
               formats: tuple[str, ...] = IMAGE_FORMATS, limits: ImageLimits | None = None) -> Decoded:
    """Decode ``src`` (a path, bytes, or a PIL image) to RGB, with every limit of this module.

    ``min_side``: the caller needs the shorter side to be at least this (an encoder's input):
    JPEGs decode at a reduced scale and big images are box-reduced to about twice that.
    ``max_side``: the result must fit in a ``max_side`` square (thumbnails, stored web images).
    ``limits``: the limits to obey (None: the process's, see :mod:`imrs.imagelimits`);
    ``max_pixels`` / ``max_bytes`` / ``timeout``: per-call overrides of single limits.
    A PIL image that is not a freshly opened file is taken as already oriented.
    """
    name = _describe(src)
    lim = limits or image_limits()
    try:
        return decode_gate().run(lambda: _decode_then_trim(src, min_side, max_side, max_pixels, max_bytes, timeout,
                                                           formats, lim))
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"cannot read {name}: {exc.reason}", exc.reason) from None
    except _Bad as exc:
        reason = str(exc)
    except MemoryError as exc:
        reason = f"image too large to decode ({_one_line(exc)})"
    except Image.DecompressionBombError as exc:
        reason = f"decompression bomb: {_one_line(exc).split(',')[0]}"
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, struct.error, ...
        reason = f"corrupt image: {_one_line(exc)}"
    raise ImageDecodeError(f"cannot read {name}: {reason}", reason)


def _heap_trimmer() -> Callable[[], object] | None:
    """glibc's ``malloc_trim`` (None elsewhere): hands freed heap pages back to the system.

    glibc keeps memory freed by a thread in that thread's arena for reuse; after a 100 MB
    picture is gone that is 100 MB of RSS per decoding thread that nothing else can use."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
        trim.argtypes = [ctypes.c_size_t]
        return lambda: trim(0)
    except (OSError, AttributeError):
        return None


_TRIM = _heap_trimmer()
#: Decodes estimated above this many bytes give their memory back to the system when done.
TRIM_ABOVE = 32 * 2**20


def _decode_then_trim(*args: object) -> Decoded:
    cost = [0]
    try:
        return _decode(*args, cost=cost)  # type: ignore[arg-type]
    finally:  # the big intermediate images are freed by now (they were _decode's locals)
        if cost[0] >= TRIM_ABOVE and _TRIM is not None:
            _TRIM()


def _decode(src: ImageSource, min_side: int | None, max_side: int | None, max_pixels: int | None,
            max_bytes: int | None, timeout: float | None, formats: tuple[str, ...], limits: ImageLimits,
            cost: list[int] | None = None) -> Decoded:
    data: bytes | None = None
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, bytes | bytearray | memoryview):
            data = bytes(src)
        else:
            data = read_image_file(src, max_bytes, timeout, limits=limits)
        if not data:
            raise _Bad("empty file")
        img = _open_bytes(data, formats)
    fmt = img.format
    width, height = img.size
    if width <= 0 or height <= 0:
        raise _Bad("corrupt image: empty dimensions")
    cap = max_pixels or limits.max_pixels
    if width * height > cap:
        raise _Bad(f"decompression bomb: {width}x{height} px > {cap} px")
    if data is not None:
        _draft(img, min_side, max_side)
    estimate = _cost(img, bool(min_side or max_side))
    if cost is not None:
        cost[0] = estimate
    with decode_gate().hold(estimate):
        img = _load(img, data, formats, min_side, max_side, limits.min_decoded_fraction)
        # After loading: PNG's getexif() would otherwise decode the whole picture, outside the gate,
        # to look for an eXIf chunk behind the pixel data.
        orientation = _orientation(img) if fmt is not None else 1
        if img.mode in _ALPHA_FIRST or "transparency" in img.info:
            out = _shrink(_to_rgb(img), min_side, max_side)
        else:
            out = _to_rgb(_shrink(img, min_side, max_side))
        if orientation != 1:
            out = out.transpose(_ORIENT[orientation])
        if max_side and max(out.size) > max_side:
            if out is src:
                out = out.copy()
            out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if out is src:  # never hand the caller's own object back (they may mutate either)
        out = out.copy()
    out.info.pop("exif", None)  # orientation is applied: nothing may apply it again
    return Decoded(out, width, height, fmt)


def load_image(src: ImageSource, min_side: int | None = None, max_side: int | None = None, *,
               limits: ImageLimits | None = None) -> Image.Image:
    """``open_image(src, ...).image``: an RGB image, a new object (``src`` is never modified)."""
    return open_image(src, min_side=min_side, max_side=max_side, limits=limits).image
