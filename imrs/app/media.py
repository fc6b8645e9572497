"""Images in and out of the page, none of it retrieval: decoding a query safely, fetching a pasted
URL through the SSRF guard, the crop box, thumbnails, the enlarged view, example queries, and the
small store that lets an uploaded query image live in a link (``?img=u:<digest>``).

Plain functions (no widgets) so the tests can call them directly; only the thumbnail cache uses
``st.cache_data``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from ..errors import ImageDecodeError, IMRSError
from ..fsutil import atomic_write_bytes
from ..ids import display_path
from ..layout import DYNAMIC_PREFIX

if TYPE_CHECKING:
    from PIL import Image

    from ..collection import Collection
    from ..layout import SearchHit

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_ROOT = REPO_ROOT / "demo" / "caltech101-mini"
#: Demo classes whose first image makes a good example query (present in Caltech-101).
EXAMPLE_CLASSES = ("sunflower", "airplanes", "Leopards", "watch", "butterfly", "pizza")
#: Pasted query URLs: a query only needs enough pixels for the encoder, not the original file.
QUERY_MAX_SIDE = 1024
#: The enlarged view sends at most this many pixels a side (the original size is still reported).
VIEW_MAX_SIDE = 1600
#: Uploaded query images kept for links; the oldest are dropped beyond this.
STORE_KEEP = 200
_DIGEST = re.compile(r"^[0-9a-f]{16}$")


def is_demo(root: str | os.PathLike[str]) -> bool:
    try:
        return Path(root).expanduser().resolve() == DEMO_ROOT.resolve()
    except OSError:
        return False


def digest_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def decode_query(data: bytes, origin: str = "the query image") -> Image.Image:
    """Uploaded / pasted / captured bytes -> RGB image, with the project's safe decoder."""
    from ..imageio import load_image

    try:
        return load_image(data)
    except ImageDecodeError as exc:
        log.info("query image %s not decodable: %s", origin, exc)
        if "truncated" in str(exc):  # the most common real failure: a copy or a download cut short
            m = re.search(r"only (\d+%) of the rows", str(exc))
            part = f" (only {m.group(1)} of its rows are there)" if m else ""
            raise ImageDecodeError(f"{origin} is truncated: the file ends early{part}; use the complete "
                                   f"file") from None
        raise ImageDecodeError(f"{origin} is not a readable image ({len(data)} bytes): use a JPEG, PNG, WebP, "
                               f"GIF, BMP or TIFF file") from None


def fetch_query_url(url: str, allow_loopback: bool = False) -> bytes:
    """A pasted image URL, through the SSRF-safe downloader (never a raw ``requests.get``)."""
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise IMRSError("paste an http:// or https:// image URL")
    from ..web.download import DownloadPolicy, fetch_image_bytes

    return fetch_image_bytes(url, DownloadPolicy(max_side=QUERY_MAX_SIDE, allow_loopback=allow_loopback))


# -- the crop box ----------------------------------------------------------------------------------

Box = tuple[float, float, float, float]  # (left, top, right, bottom) as fractions of width/height
FULL_BOX: Box = (0.0, 0.0, 1.0, 1.0)


def crop(img: Image.Image, box: Box) -> Image.Image:
    """The part of ``img`` inside ``box``; the whole image for the full box."""
    left, top, right, bottom = box
    w, h = img.size
    x0, y0 = max(0, round(w * left)), max(0, round(h * top))
    x1, y1 = min(w, round(w * right)), min(h, round(h * bottom))
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise IMRSError("the crop box is smaller than 8 pixels: draw a larger box")
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return img
    return img.crop((x0, y0, x1, y1))


def box_from_rect(rect: dict[str, Any], width: int, height: int) -> Box:
    """The cropper's pixel rectangle (on a ``width`` x ``height`` preview) as fractions, rounded so
    the same drag gives the same key."""
    left = max(0.0, float(rect["left"]) / width)
    top = max(0.0, float(rect["top"]) / height)
    right = min(1.0, (float(rect["left"]) + float(rect["width"])) / width)
    bottom = min(1.0, (float(rect["top"]) + float(rect["height"])) / height)
    box = tuple(round(v, 3) for v in (left, top, right, bottom))
    return FULL_BOX if box[0] <= 0.005 and box[1] <= 0.005 and box[2] >= 0.995 and box[3] >= 0.995 else box  # type: ignore[return-value]


def parse_box(text: str | None) -> Box:
    """``?crop=l,t,r,b`` from a link; anything odd is the full image."""
    try:
        vals = tuple(float(v) for v in (text or "").split(","))
    except ValueError:
        return FULL_BOX
    if len(vals) != 4 or not (0 <= vals[0] < vals[2] <= 1 and 0 <= vals[1] < vals[3] <= 1):
        return FULL_BOX
    return vals  # type: ignore[return-value]


def format_box(box: Box) -> str:
    return ",".join(f"{v:g}" for v in box)


# -- query images that live in a link -------------------------------------------------------------


def store_dir(home: Path) -> Path:
    return Path(home) / "app" / "queries"


def store_query(home: Path, data: bytes) -> str:
    """Keep an uploaded / fetched / captured query so ``?img=u:<digest>`` finds it after a reload or
    in a shared link (on this server). Written atomically; the oldest beyond STORE_KEEP are removed."""
    digest = digest_of(data)
    folder = store_dir(home)
    path = folder / f"{digest}.bin"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        try:
            files = sorted(folder.glob("*.bin"), key=lambda p: p.stat().st_mtime)
            for old in files[:-STORE_KEEP]:
                old.unlink(missing_ok=True)
        except OSError as exc:
            log.debug("query store prune: %s", exc)
    return digest


def load_stored(home: Path, digest: str) -> bytes | None:
    if not _DIGEST.fullmatch(digest or ""):
        return None
    try:
        return (store_dir(home) / f"{digest}.bin").read_bytes()
    except OSError:
        return None


# -- results as plain data ---------------------------------------------------------------------------


def hit_to_dict(hit: SearchHit) -> dict[str, Any]:
    """A search hit as plain data for ``st.session_state`` (survives reruns, holds no objects)."""
    r = hit.record
    extra = dict(r.extra) if r is not None else {}
    conf = getattr(hit, "confidence", "") or ""
    # "relpath" is for people (a non-UTF-8 name must not reach the browser as a lone surrogate);
    # "path" is what opens the file.
    return {"id": int(hit.id), "score": float(hit.score), "confidence": str(conf),
            "why": list(getattr(hit, "why", ()) or ()), "relpath": display_path(hit.relpath), "path": str(hit.path),
            "label": hit.label, "source": hit.source, "title": hit.title or "",
            "caption": extra.get("caption", ""),
            "url": (r.page_url or r.source_url or "") if r is not None else "",
            "image_url": (r.source_url or "") if r is not None else "",
            "provider": (r.provider or "") if r is not None else "",
            "license": (r.license or "") if r is not None else "",
            "author": (r.author or "") if r is not None else "",
            "term": (r.term or "") if r is not None else "",
            "added": (r.added_at or "") if r is not None else "",
            "width": (r.width or 0) if r is not None else 0, "height": (r.height or 0) if r is not None else 0}


# -- thumbnails and the enlarged view ----------------------------------------------------------------

THUMB_SIDE = 384  # 4:3 letterbox: every card's image has the same height
#: Thumbnails persist here (``<home>/app/thumbs``, set by the page), so a restart does not decode
#: every result image again; None: memory only.
_THUMB_DIR: list[Path | None] = [None]


def set_thumb_dir(folder: Path | None) -> None:
    _THUMB_DIR[0] = folder


@st.cache_data(max_entries=4000, show_spinner=False)
def thumbnail(path: str, mtime: float, side: int = THUMB_SIDE, folder: str | None = None) -> bytes | None:
    """A small JPEG of an image file for the result grid (the browser gets ~20 kB, not the original),
    letterboxed to 4:3 so every card in a row is the same height. ``mtime`` is part of the cache key
    so an edited file is not shown stale; ``folder`` keeps them on disk across restarts."""
    from PIL import Image, ImageOps

    from ..imageio import load_image

    disk = None
    if folder:
        key = hashlib.sha1(f"{path}\0{mtime}\0{side}".encode("utf-8", "surrogateescape")).hexdigest()[:24]
        disk = Path(folder) / key[:2] / f"{key}.jpg"
        try:
            return disk.read_bytes()
        except OSError:
            pass
    try:
        im = load_image(path, max_side=side)  # the one decoder: capped read, draft, EXIF once
        im = ImageOps.pad(im, (side, side * 3 // 4), method=Image.Resampling.LANCZOS, color=(246, 246, 248))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    except Exception as exc:  # noqa: BLE001 - one unreadable file must not break the grid
        log.warning("no thumbnail for %s: %s", display_path(path), exc)
        return None
    data = buf.getvalue()
    if disk is not None:
        try:
            disk.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(disk, data)
            if next(_WRITES) % 500 == 0:
                prune_thumbs(Path(folder))
        except OSError as exc:
            log.debug("thumbnail not kept on disk: %s", exc)
    return data


#: The thumbnail folder keeps at most this many files (~20 kB each); the oldest go first.
THUMBS_KEEP = 20_000
#: Thumbnails written by this process; ``next`` on it is atomic, so threads never lose a count.
_WRITES = itertools.count(1)


def prune_thumbs(folder: Path, keep: int = THUMBS_KEEP) -> int:
    """Remove the oldest thumbnails beyond ``keep`` (checked every 500 writes); how many went."""
    try:
        files = sorted(folder.rglob("*.jpg"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return 0
    for old in files[: max(0, len(files) - keep)]:
        old.unlink(missing_ok=True)
    return max(0, len(files) - keep)


def thumb_of(path: str | os.PathLike[str], side: int = THUMB_SIDE) -> bytes | None:
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    folder = _THUMB_DIR[0]
    return thumbnail(str(path), mtime, side, str(folder) if folder else None)


@dataclass
class ImageView:
    """What the enlarged view shows: pixels (at most VIEW_MAX_SIDE a side) and the original's facts."""

    image: Any  # PIL image
    width: int
    height: int
    file_size: int
    format: str


def view_image(path: str | os.PathLike[str]) -> ImageView:
    from ..imageio import open_image

    p = Path(path)
    try:
        size = p.stat().st_size
        dec = open_image(p, max_side=VIEW_MAX_SIDE)
    except (OSError, ImageDecodeError) as exc:
        raise IMRSError(f"cannot open {display_path(p.name)}: {exc}") from None
    return ImageView(dec.image, dec.width, dec.height, size, dec.format or p.suffix.lstrip(".").upper())


def read_query_file(path: str | os.PathLike[str]) -> bytes:
    """A collection file's bytes for use as a query, with the decoder's caps (regular files only,
    size and time limits): a file may have changed into anything since it was indexed."""
    from ..imageio import read_image_file

    return read_image_file(path)


def example_images(root: str | os.PathLike[str], n: int = 4) -> list[tuple[str, Path]]:
    """A few (label, path) query examples: the demo's well-known classes when present, else the
    first image of the first folders."""
    root = Path(root)
    out: list[tuple[str, Path]] = []
    for cls in EXAMPLE_CLASSES:
        files = sorted((root / cls).glob("*.jpg")) if (root / cls).is_dir() else []
        if files:
            out.append((cls, files[0]))
        if len(out) >= n:
            return out
    if not out and root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((DYNAMIC_PREFIX, "."))):
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if files:
                out.append((d.name, files[0]))
            if len(out) >= n:
                break
    return out


def collection_image(coll: Collection, image_id: int) -> tuple[Path, str] | None:
    """(file, relpath) of a catalog image, for ``?img=c:<id>`` links; None when it is gone."""
    rec = coll.catalog.get(int(image_id))
    if rec is None:
        return None
    path = coll.abspath(rec.relpath, rec.source)
    return (path, rec.relpath) if path.is_file() else None
