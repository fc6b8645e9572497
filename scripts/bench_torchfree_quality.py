#!/usr/bin/env python
"""Retrieval quality of the torch-free default path against the torch one it replaced, on all of
Caltech-101 (run by hand, in an environment with torch; not in CI):

    .venv/bin/python scripts/bench_torchfree_quality.py --write-docs       # ~2 passes over 9,143 images

*before*: torch's antialiased uint8 resample (what IMRS used); *now*: Pillow's resample (the base
install's path). Both run through the ONNX model built from the checkpoint without torch, which
equals torch's own model to cosine >= 0.9999997 on the same pixels (tests/test_torchfree.py and
scripts/bench_setup.py check that), so *before* stands for the torch path. Over every image:
P@1 / P@10 / mAP@10 by exact search with every image as a query (itself excluded), and again
with BACKGROUND_Google as distractors only (``imrs bench``'s protocol), as in
scripts/bench_int8_quality.py. Also: cosine of each image's vector now to before, and how often
the top-5 ImageNet classes (what text search reads) are the same set.
With ``--write-docs`` the table goes into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
from bench_setup import _torch_resample, host  # noqa: E402

from imrs.bench.data import labelled_images  # noqa: E402
from imrs.bench.metrics import label_quality  # noqa: E402
from imrs.config import caltech_dir  # noqa: E402

BEGIN, END = "<!-- torchfree-quality:begin -->", "<!-- torchfree-quality:end -->"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=caltech_dir())
    ap.add_argument("--limit", type=int, default=0, help="a seeded sample of this many images")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    import onnxruntime as ort
    import torch  # noqa: F401  (only for the old resample)

    from imrs.encoders.efficientnet_lite import EFFICIENTNET_LITE0 as spec
    from imrs.encoders.efficientnet_lite import _weights_file
    from imrs.encoders.onnx_build import ensure_model, model_path_for

    paths = labelled_images(args.data, args.limit)
    if not paths:
        sys.exit(f"no images under {args.data}")
    h = host()
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# {len(paths)} images; {h['cpu']}, {h['cores']} cores {h['isa']}; load {load_before}", flush=True)
    pre, ckpt = spec.preprocess, _weights_file()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        sess = ort.InferenceSession(str(ensure_model(ckpt, pre, model_path_for(ckpt, pre, Path(d)))),
                                    providers=["CPUExecutionProvider"])
        now_f, now_l, old_f, old_l = [], [], [], []
        for i in range(0, len(paths), 16):
            chunk = paths[i:i + 16]
            f, lg = sess.run(["features", "logits"], {"images": np.stack([pre.load(p) for p in chunk])})
            rf, rl = sess.run(["features", "logits"], {"images": np.stack([_torch_resample(pre, p) for p in chunk])})
            old_f.append(rf)
            old_l.append(rl)
            now_f.append(f)
            now_l.append(lg)
            if (i // 16) % 50 == 0:
                print(f"  {i + len(chunk)}/{len(paths)}", flush=True)
    secs = time.perf_counter() - t0
    unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in
            (("before", np.concatenate(old_f)), ("now", np.concatenate(now_f)))}
    labels = np.asarray([p.parent.name for p in paths])
    ids = np.unique(labels, return_inverse=True)[1]
    rows = np.arange(len(paths))
    fg = np.where(labels == "BACKGROUND_Google", -1, ids)
    q = {k: label_quality(v, ids, rows, k=10) for k, v in unit.items()}
    qf = {k: label_quality(v, fg, np.flatnonzero(fg >= 0), k=10) for k, v in unit.items()}
    cos = np.sum(unit["before"] * unit["now"], axis=1)
    tb = np.argsort(-np.concatenate(old_l), 1)[:, :5]
    tn = np.argsort(-np.concatenate(now_l), 1)[:, :5]
    same_set = float(np.mean([set(a) == set(b) for a, b in zip(tb.tolist(), tn.tolist(), strict=True)]))
    same_top1 = float(np.mean(tb[:, 0] == tn[:, 0]))
    load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [BEGIN, "",
             "## The torch-free default path against the torch one",
             "",
             f"`scripts/bench_torchfree_quality.py` ({len(paths)} Caltech-101 images; {h['cpu']}, {h['cores']} "
             f"cores, load {load_before} -> {load_after}; {secs / 60:.1f} min for both passes). *before*: "
             "torch's resample (the torch path's pixels); *now*: Pillow's resample (the base install's). Both "
             "through the ONNX model built without torch, equal to torch's own model to cosine >= 0.9999997 on "
             "the same pixels.",
             "",
             "| path | P@1 | P@10 | mAP@10 | P@10, background as distractor only |",
             "|---|---|---|---|---|"]
    for k in ("before", "now"):
        lines.append(f"| {k} | {100 * q[k]['p@1']:.2f} | {100 * q[k]['p@10']:.2f} | {100 * q[k]['map@10']:.2f} | "
                     f"{100 * qf[k]['p@10']:.2f} |")
    lines += ["",
              f"P@10 difference: {100 * (q['now']['p@10'] - q['before']['p@10']):+.2f} pt (every image a query), "
              f"{100 * (qf['now']['p@10'] - qf['before']['p@10']):+.2f} pt (background as distractor). Cosine "
              f"now vs before per image: mean {cos.mean():.5f}, 1st percentile {np.percentile(cos, 1):.5f}, min "
              f"{cos.min():.5f} (the model alone, same pixels: >= 0.9999 in tests/test_torchfree.py; the rest is "
              f"the resample). ImageNet top-5 classes the same set: {100 * same_set:.1f}%, same top-1: "
              f"{100 * same_top1:.1f}%.",
              "", END]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        doc = REPO / "docs" / "benchmarks.md"
        cur = doc.read_text()
        if BEGIN in cur:
            cur = cur.split(BEGIN, 1)[0] + text + cur.split(END, 1)[1]
        else:
            cur = cur.rstrip("\n") + "\n\n" + text + "\n"
        doc.write_text(cur)
    return 0


if __name__ == "__main__":
    sys.exit(main())
