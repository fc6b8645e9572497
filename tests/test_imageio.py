"""load_image: every odd file a user may have ends up as an RGB image, or as one clear error line."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imrs.errors import ImageDecodeError, IMRSError
from imrs.imageio import IMAGE_EXTENSIONS, is_image_path, load_image


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_extensions() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert is_image_path("a/B.JPG") and not is_image_path("notes.txt")


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    p = _save(Image.new("L", (30, 20), 77), tmp_path / "g.png")
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (30, 20)
    assert img.getpixel((5, 5)) == (77, 77, 77)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    # pure cyan in CMYK is (0, 255, 255) in RGB
    p = _save(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), tmp_path / "c.jpg", quality=95)
    img = load_image(p)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((16, 16))
    assert r < 30 and g > 225 and b > 225


def test_palette_with_transparency_on_white(tmp_path: Path) -> None:
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.putpixel((0, 0), 1)
    p = _save(pal, tmp_path / "p.png", transparency=0)  # index 0 (black) is transparent
    img = load_image(p)
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == (255, 255, 255)
    assert img.getpixel((0, 0)) == (255, 0, 0)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    img = load_image(_save(rgba, tmp_path / "a.png"))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 1)) == (255, 0, 0)
    assert all(120 <= c <= 135 for c in img.getpixel((2, 2)))  # half-transparent black on white
    la = Image.new("LA", (3, 3), (0, 0))
    assert load_image(_save(la, tmp_path / "la.png")).getpixel((1, 1)) == (255, 255, 255)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    img16 = Image.fromarray(arr)
    p = _save(img16, tmp_path / "deep.png")
    r, g, b = load_image(p).getpixel((3, 3))
    assert r == g == b and 120 <= r <= 135


def test_exif_rotation_applied(tmp_path: Path) -> None:
    src = Image.new("RGB", (40, 20), (255, 0, 0))
    src.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    p = _save(src, tmp_path / "rot.jpg", exif=exif, quality=95)
    img = load_image(p)
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # red ends up on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_inputs_bytes_path_and_image(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (16, 12), (1, 2, 3)), tmp_path / "x.png")
    assert load_image(str(p)).size == (16, 12)
    assert load_image(p.read_bytes()).getpixel((0, 0)) == (1, 2, 3)
    orig = Image.new("L", (5, 5), 9)
    out = load_image(orig)
    assert out is not orig and out.mode == "RGB" and orig.mode == "L"
    rgb = Image.new("RGB", (5, 5))
    assert load_image(rgb) is not rgb


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, _ = load_image(p).getpixel((4, 4))
    assert r > 200 and g < 50


@pytest.mark.parametrize("content", [b"", b"not an image at all", bytes(range(256)) * 4])
def test_garbage_raises_one_line(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageDecodeError) as ei:
        load_image(p)
    msg = str(ei.value)
    assert msg.startswith(f"cannot read {p}: ") and "\n" not in msg
    assert isinstance(ei.value, IMRSError)


def test_truncated_jpeg_and_missing_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    p = tmp_path / "trunc.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="cannot read .*trunc.jpg: .*truncated"):
        load_image(p)
    with pytest.raises(ImageDecodeError, match="cannot read .*nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageDecodeError, match=r"cannot read <\d+ bytes>"):
        load_image(b"\x89PNG\r\n\x1a\n broken")


def test_draft_mode_decodes_big_jpeg_smaller(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:1800, 0:2400]
    arr = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    p = _save(Image.fromarray(arr), tmp_path / "big.jpg", quality=90)
    t0 = time.perf_counter()
    full = load_image(p)
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    small = load_image(p, min_side=224)
    t_small = time.perf_counter() - t0
    assert full.size == (2400, 1800)
    assert min(small.size) >= 224 and small.size == (300, 225)  # 1/8 scale is the largest allowed
    assert t_small < t_full
    mid = load_image(p, min_side=500)
    assert mid.size == (1200, 900)  # 1/4 would give 450 < 500, so 1/2
    # small images are never reduced
    tiny = _save(Image.fromarray(arr[:300, :400]), tmp_path / "tiny.jpg")
    assert load_image(tiny, min_side=224).size == (400, 300)


def test_limits_are_the_settings_given_not_the_environment_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry point's settings set the decoder's limits once; the environment is not parsed again
    for each image, so a variable changed later does not reach a decode (nor cost one)."""
    from imrs.config import Settings
    from imrs.imageio import configure_images, image_limits

    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, "PNG")
    limits = configure_images(Settings(max_image_pixels=100))
    try:
        monkeypatch.setenv("IMRS_MAX_IMAGE_PIXELS", "1000000")
        assert image_limits() is limits
        with pytest.raises(ImageDecodeError, match=r"decompression bomb: 20x20 px > 100 px"):
            load_image(buf.getvalue())
    finally:
        monkeypatch.undo()
        configure_images(Settings.from_env())
    assert load_image(buf.getvalue()).size == (20, 20)
