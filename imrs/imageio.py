"""Decode anything a user may drop into a collection into one predictable thing: an RGB PIL image.

Encoders, the thumbnailer and the UI all go through :func:`load_image`, so a photo looks (and embeds)
the same everywhere: EXIF orientation applied, transparency composited on white (a transparent
logo should look like it does in a browser, not on black), 16-bit and CMYK files mapped to 8-bit
RGB. Every failure, whatever Pillow raised, becomes one :class:`~imrs.errors.ImageDecodeError`
line so a batch job can skip the file and report why.

``min_side`` exists for speed: a JPEG can be decoded at 1/2, 1/4 or 1/8 scale by the IDCT itself
(Pillow's draft mode), which is several times faster than decoding a 12-megapixel photo at full
size only to shrink it to 224 pixels afterwards.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageDecodeError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image

_WHITE = (255, 255, 255)


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Extension check only (cheap, for directory walks); decoding is what really decides."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _describe(src: object) -> str:
    if isinstance(src, str | os.PathLike):
        return str(src)
    if isinstance(src, bytes | bytearray | memoryview):
        return f"<{len(src)} bytes>"
    return "<image>"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _draft_for(img: Image.Image, min_side: int | None) -> None:
    """Ask the JPEG decoder to downscale by 2/4/8 while keeping the shorter side >= ``min_side``."""
    if not min_side or img.format != "JPEG" or not hasattr(img, "draft"):
        return
    w, h = img.size
    short = min(w, h)
    if short <= 2 * min_side:  # no power-of-two reduction possible
        return
    ratio = min_side / short
    # draft() picks the largest scale whose result is >= the requested size on both axes.
    img.draft("RGB", (max(1, math.ceil(w * ratio)), max(1, math.ceil(h * ratio))))


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # Pillow's own I->RGB conversion clips to 255, which turns 16-bit scans white.
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F" or arr.max(initial=0) > 255:
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
            if mode != "F":
                lo, hi = 0.0, 65535.0 if hi > 255 else 255.0
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            arr = (arr - lo) * scale
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV: Pillow converts these correctly (CMYK JPEGs from Photoshop
    # are stored inverted, which the JPEG plugin already undoes).
    return img.convert("RGB")


def _open(src: ImageSource) -> Image.Image:
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
    else:
        # Read the whole file first: no file handle stays open behind a lazily-loaded image, and
        # "file not found" reads the same as any other decode error.
        data = Path(src).read_bytes()
    if not data:
        raise ValueError("empty file")
    return Image.open(io.BytesIO(data))


def load_image(src: ImageSource, min_side: int | None = None) -> Image.Image:
    """Return ``src`` decoded as an RGB image (a new object; ``src`` itself is never modified).

    ``min_side``: allow JPEG draft decoding at a reduced size whose shorter side is still at least
    ``min_side`` pixels (no effect on other formats or on already-decoded images).
    """
    name = _describe(src)
    # No warnings.catch_warnings() here: it swaps process-global state and is not thread-safe,
    # and images are decoded from several threads at once.
    try:
        img = _open(src)
        if img is not src:  # never reconfigure a caller's own (lazily loaded) image
            _draft_for(img, min_side)
        img.load()
        out = img
        # exif_transpose parses the EXIF block; a JPEG without one has nothing to rotate.
        if not (img.format == "JPEG" and "exif" not in img.info):
            out = ImageOps.exif_transpose(img) or img
        out = _to_rgb(out)
        if out is src:  # never hand the caller's own object back (they may mutate either)
            out = out.copy()
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        raise ImageDecodeError(f"cannot read {name}: image too large to decode ({exc})") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error, IndexError, ...
        reason = _one_line(exc)
        if isinstance(exc, Image.DecompressionBombError):
            reason = f"image too large ({reason})"
        elif isinstance(exc, Image.UnidentifiedImageError):
            reason = "not an image, or an unsupported or corrupt format"  # Pillow's text names a BytesIO
        raise ImageDecodeError(f"cannot read {name}: {reason}") from exc
    return out
