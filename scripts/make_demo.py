"""Build the embedded demo collection ``demo/caltech101-mini`` from a local Caltech-101 copy.

The app needs something to search on its very first start, with no configuration and no network,
so the repository carries a few images per Caltech-101 class. This script is how they were made:
it is deterministic (sorted classes, evenly spaced picks from the sorted file list, fixed resize
and JPEG settings, no metadata), so re-running it on the same dataset gives the same bytes.

    .venv/bin/python scripts/make_demo.py [--src ../shared/datasets/caltech101] [--per-class 4]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imrs.config import caltech_dir  # noqa: E402

DEFAULT_SRC = caltech_dir()
DEFAULT_OUT = REPO / "demo" / "caltech101-mini"
SKIP = {"BACKGROUND_Google"}
MAX_BYTES = 15 * 1024 * 1024

log = logging.getLogger("make_demo")

ATTRIBUTION = """\
# Demo collection: attribution

`demo/caltech101-mini/` holds {n} images ({per} per class, {classes} classes) taken from

> Li, F.-F., Andreeto, M., Ranzato, M. A., & Perona, P. (2022). *Caltech 101* (Version 1.0)
> [Data set]. CaltechDATA. https://doi.org/10.22002/D1.20086

licensed under the Creative Commons Attribution 4.0 International licence (CC BY 4.0,
https://creativecommons.org/licenses/by/4.0/).

What was changed: for each class except `BACKGROUND_Google`, {per} images were picked at evenly
spaced positions of the sorted file list; each was converted to RGB, shrunk so that its longer
side is at most {max_side} px (Lanczos; smaller images are kept at their size) and re-encoded as
JPEG (quality {quality}, no metadata). File and folder names are the original ones.

The files were produced by `scripts/make_demo.py`; run it again to reproduce them.
"""


def pick(files: list[Path], n: int) -> list[Path]:
    """Evenly spaced, deterministic: the first, the last and ones between (not just 0001..000n,
    which in Caltech-101 are often near-duplicates shot in one session)."""
    if len(files) <= n:
        return files
    if n == 1:
        return [files[0]]
    step = (len(files) - 1) / (n - 1)
    return [files[round(i * step)] for i in range(n)]


def shrink(src: Path, dst: Path, max_side: int, quality: int) -> None:
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=quality, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="Caltech-101 folder (one subfolder per class)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--max-side", type=int, default=320)
    ap.add_argument("--quality", type=int, default=85)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if not args.src.is_dir():
        log.error("Caltech-101 not found at %s (pass --src)", args.src)
        return 2
    classes = sorted(d for d in args.src.iterdir() if d.is_dir() and d.name not in SKIP)
    if args.out.exists():
        shutil.rmtree(args.out)
    n = 0
    for cdir in classes:
        files = sorted(p for p in cdir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for f in pick(files, args.per_class):
            shrink(f, args.out / cdir.name / (f.stem + ".jpg"), args.max_side, args.quality)
            n += 1
    total = sum(p.stat().st_size for p in args.out.rglob("*.jpg"))
    (args.out.parent / "ATTRIBUTION.md").write_text(
        ATTRIBUTION.format(n=n, per=args.per_class, classes=len(classes), max_side=args.max_side,
                           quality=args.quality), encoding="utf-8")
    log.info("wrote %d images from %d classes to %s (%.1f MB)", n, len(classes), args.out, total / 1e6)
    if total > MAX_BYTES:
        log.error("demo is %.1f MB, over the %.0f MB budget: lower --per-class or --max-side",
                  total / 1e6, MAX_BYTES / 1e6)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
