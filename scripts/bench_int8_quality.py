#!/usr/bin/env python
"""Retrieval quality of int8 vs fp32: Caltech-101 P@10 with every image as a query, both runtimes.

Run by hand (not in CI):

    .venv/bin/python scripts/bench_int8_quality.py                         # efficientnet_lite0
    .venv/bin/python scripts/bench_int8_quality.py --limit 2000            # a quicker subset
    .venv/bin/python scripts/bench_int8_quality.py --write-docs             # docs/benchmarks.md

The int8 model is calibrated and gated the way a collection does it (``imrs index`` under
``--runtime auto``): on a seeded sample of 512 of the dataset's own images (256 calibrate, 256
are held out for the gate). Every image is then embedded with both runtimes through the normal
pipeline (``Encoder.embed_paths``), and P@1 / P@10 / mAP@10 are computed by exact search with each
image as the query (itself excluded; the label is the class folder, BACKGROUND_Google included as a
class so that all 9,143 images are queries; and again with BACKGROUND_Google as distractors only,
as ``imrs bench`` does). Also printed: the cosine of each image's int8 vector to
its fp32 vector, and the agreement of the top-10 neighbours over the whole dataset.
``--write-docs`` puts the table, with the host's CPU and load, into the ``bench_int8_quality`` block
of docs/benchmarks.md (only for a full run: a ``--limit`` subset is another protocol).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imrs.bench.data import labelled_images  # noqa: E402
from imrs.bench.docblock import host_line, replace_block  # noqa: E402
from imrs.bench.metrics import label_quality  # noqa: E402
from imrs.config import caltech_dir  # noqa: E402
from imrs.encoders import get_encoder  # noqa: E402
from imrs.encoders.int8 import CALIBRATION_IMAGES, HELD_IMAGES  # noqa: E402
from imrs.encoderslot import calibration_sample  # noqa: E402
from imrs.indexes.exact import exact_search  # noqa: E402

DOCS = REPO / "docs" / "benchmarks.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path,
                    default=caltech_dir())
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="pretrained", choices=["pretrained", "random"])
    ap.add_argument("--limit", type=int, default=0, help="embed only a seeded sample of this many images")
    ap.add_argument("--write-docs", action="store_true",
                    help="write the table into the bench_int8_quality block of docs/benchmarks.md")
    args = ap.parse_args()
    if args.write_docs and args.limit:
        sys.exit("--write-docs documents the full dataset: drop --limit")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("imrs.encoders.int8").setLevel(logging.INFO)

    paths = labelled_images(args.data, args.limit)
    if not paths:
        sys.exit(f"no images under {args.data} (pass --data)")
    labels = np.asarray([p.parent.name for p in paths])
    label_ids = np.unique(labels, return_inverse=True)[1]
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {host_line()}", flush=True)
    print(f"# {args.backbone} ({args.weights}), {len(paths)} images in {len(set(labels))} classes; "
          f"load average {load_before}", flush=True)

    fp32 = get_encoder(args.backbone, device="cpu", weights=args.weights, runtime="fp32")
    t0 = time.perf_counter()
    calib = calibration_sample(paths, CALIBRATION_IMAGES + HELD_IMAGES)
    int8 = get_encoder(args.backbone, device="cpu", weights=args.weights, runtime="int8", calibration=calib)
    print(f"# int8 model ready in {time.perf_counter() - t0:.1f}s (cached after the first run): "
          f"{int8.int8_gate.summary()}", flush=True)

    vecs, secs = {}, {}
    for name, enc in (("fp32", fp32), ("int8", int8)):
        t0 = time.perf_counter()
        res = enc.embed_paths(paths, progress=True)
        secs[name] = time.perf_counter() - t0
        if res.failures:
            sys.exit(f"{len(res.failures)} images failed to decode: {res.failures[:3]}")
        vecs[name] = res.vectors

    rows = np.arange(len(paths))
    q = {name: label_quality(v, label_ids, rows, k=10) for name, v in vecs.items()}
    # the project's usual protocol: BACKGROUND_Google only as distractors, never a query or a match
    fg_ids = np.where(labels == "BACKGROUND_Google", -1, label_ids)
    fg_rows = np.flatnonzero(fg_ids >= 0)
    qf = {name: label_quality(v, fg_ids, fg_rows, k=10) for name, v in vecs.items()}
    cos = np.sum(vecs["fp32"] * vecs["int8"], axis=1)
    _, nn32 = exact_search(vecs["fp32"], vecs["fp32"], 10, exclude=rows)
    _, nn8 = exact_search(vecs["int8"], vecs["int8"], 10, exclude=rows)
    agree = statistics.fmean(len(set(a) & set(b)) / 10 for a, b in zip(nn32.tolist(), nn8.tolist(), strict=True))

    # one table, fractions to 3 decimals as everywhere in the docs: one figure per protocol
    lines = ["| protocol | queries | runtime | P@1 | P@10 | mAP@10 | full mAP | P@10 int8 - fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for what, m in (("every image a query", q), ("background as distractors", qf)):
        for name in ("fp32", "int8"):
            diff = f"{100 * (m['int8']['p@10'] - m['fp32']['p@10']):+.2f} points" if name == "int8" else ""
            lines.append(f"| {what} | {m[name]['queries']} | {name} | {m[name]['p@1']:.3f} | {m[name]['p@10']:.3f} | "
                         f"{m[name]['map@10']:.3f} | {m[name]['map']:.3f} | {diff} |")
    lines += ["", f"Gate: {int8.int8_gate.summary()}.",
              f"Cosine of each image's int8 vector to its fp32 vector: mean {cos.mean():.4f}, 1st percentile "
              f"{np.percentile(cos, 1):.4f}, min {cos.min():.4f}; top-10 neighbour agreement over the dataset "
              f"{agree:.3f}. One embedding pass each: fp32 {len(paths) / secs['fp32']:.1f} images/s, int8 "
              f"{len(paths) / secs['int8']:.1f} images/s (timed medians: bench_embed.py)."]
    print()
    print("\n".join(lines))
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(one pass each; the CPU may be shared, see bench_embed.py for timed medians)")
    if args.write_docs:
        replace_block(DOCS, "bench_int8_quality", "\n".join([
            f"`scripts/bench_int8_quality.py --backbone {args.backbone}` (load average before {load_before})", "",
            host_line(), "", *lines]))
        print(f"# wrote the bench_int8_quality block of {DOCS}")


if __name__ == "__main__":
    main()
