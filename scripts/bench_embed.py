#!/usr/bin/env python
"""Embedding throughput: naive loop vs IMRS pipeline vs model-alone ceilings, in one run.

Run by hand (not in CI):

    .venv/bin/python scripts/bench_embed.py                      # efficientnet_lite0 + others
    .venv/bin/python scripts/bench_embed.py --backbones efficientnet_lite0 --n 512 --repeats 5
    .venv/bin/python scripts/bench_embed.py --runtimes eager,fused,onnx,compile
    .venv/bin/python scripts/bench_embed.py --no-int8                       # fp32 only
    .venv/bin/python scripts/bench_embed.py --backbones efficientnet_lite0 --write-docs  # docs/benchmarks.md

For each backbone (efficientnet_lite0 with its real weights, the others with seeded random weights:
same cost) on N real Caltech-101 images it reports images/s for

- naive:     open, convert, torchvision transform, eager float32 model, one image at a time;
- pipeline:  ``Encoder.embed_paths`` with the default (auto) runtime: threaded decode overlapping
             the model, JPEG draft mode, uint8 preprocessing, the fastest measured runtime;
- eager model b32: the eager float32 module alone on pre-made batches of 32 (the usual script);
- eager model / fast model: the model alone on pre-made uint8 batches through the eager runtime
             (CPU micro-batches of 4-8, which cache far better) and through the default fast
             runtime driven with its own concurrency, like the pipeline does: the ceilings;
- int8 pipeline / int8 model: the same two with ``runtime="int8"`` (ONNX Runtime static int8,
             calibrated and gated on ``--calib`` other Caltech-101 images, as a collection does);

each the median of ``--repeats`` interleaved runs, so ratios within a row come from the same
conditions (the CPU may be shared: the load average is printed too, and the CPU's model and int8
flags, which decide the int8 recipe). ``--write-docs`` puts the fp32 vs int8 table, with the host,
into the ``bench_embed`` block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imrs.bench.docblock import host_line, replace_block  # noqa: E402
from imrs.config import caltech_dir  # noqa: E402
from imrs.encoders import Encoder, clear_encoder_cache, cpu_count, get_encoder, get_spec  # noqa: E402
from imrs.encoders.int8 import recipe_plan  # noqa: E402
from imrs.encoders.runtime import TorchRunner  # noqa: E402

DOCS = REPO / "docs" / "benchmarks.md"
DEFAULT_BACKBONES = ["efficientnet_lite0", "resnet18", "resnet50", "vit_b16", "clip_vit_b32"]


def caltech_paths(root: Path, n: int, seed: int) -> list[Path]:
    files = sorted(root.glob("*/*.jpg"))
    if not files:
        sys.exit(f"no images under {root} (pass --data)")
    rng = np.random.default_rng(seed)
    return [files[i] for i in rng.choice(len(files), size=min(n, len(files)), replace=False)]


def naive_loop(name: str, paths: list[Path]):
    """The script everyone writes first: PIL open/convert, torchvision transforms, batch of one."""
    import torch
    from PIL import Image
    from torchvision import transforms

    spec = get_spec(name)
    pre = spec.preprocess
    enc = get_encoder(name, device="cpu", weights=weights_for(name), runtime="eager")
    model = enc._loaded.image_model.float().eval()
    interp = {"bicubic": transforms.InterpolationMode.BICUBIC,
              "bilinear": transforms.InterpolationMode.BILINEAR}[pre.interpolation]
    tf = transforms.Compose([
        transforms.Resize(pre.resize, interpolation=interp),
        transforms.CenterCrop(pre.size),
        transforms.ToTensor(),
        transforms.Normalize([m / 255 for m in pre.mean], [s / 255 for s in pre.std]),
    ])

    def run() -> None:
        with torch.inference_mode():
            for p in paths:
                x = tf(Image.open(p).convert("RGB")).unsqueeze(0)
                model(x)

    return run


def weights_for(name: str) -> str:
    return "pretrained" if name == "efficientnet_lite0" else "random"


def model_alone(run_batch, batches: list[np.ndarray], concurrency: int):
    def run() -> None:
        if concurrency <= 1:
            for b in batches:
                run_batch(b)
        else:
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(run_batch, batches))

    return run


def pipeline(enc: Encoder, paths: list[Path]):
    def run() -> None:
        res = enc.embed_paths(paths)
        assert len(res) == len(paths), res.failures

    return run


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path,
                    default=caltech_dir())
    ap.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES))
    ap.add_argument("--n", type=int, default=256, help="images for efficientnet_lite0")
    ap.add_argument("--heavy-n", type=int, default=64, help="images for the other (slower) backbones")
    ap.add_argument("--slow-n", type=int, default=32,
                    help="images for the slow measurements (naive loop, eager model): keeps every "
                         "measurement of a repeat similarly long, so they see the same conditions")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runtimes", default="", help="extra model-alone ceilings, e.g. fused,onnx,compile")
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 runtime")
    ap.add_argument("--calib", type=int, default=256,
                    help="images (not timed) the int8 model is calibrated on (half) and gated on (half)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-docs", action="store_true",
                    help="write the fp32 vs int8 table into the bench_embed block of docs/benchmarks.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {host_line()}")
    print(f"# {recipe_plan()}")
    print(f"# {cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average before: {load_before}")
    rows = []
    extra_rows = []
    int8_rows = []
    for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        n = args.n if name == "efficientnet_lite0" else args.heavy_n
        paths = caltech_paths(args.data, n, args.seed)
        # int8 first: its calibration is the memory peak, better with no other model loaded yet
        int8 = None
        if not args.no_int8:
            timed_set = set(paths)
            calib = [p for p in caltech_paths(args.data, args.calib + len(paths), args.seed + 1)
                     if p not in timed_set][:args.calib]
            t0 = time.perf_counter()
            int8 = get_encoder(name, device="cpu", weights=weights_for(name), runtime="int8", calibration=calib)
            print(f"# {name}: int8 ready in {time.perf_counter() - t0:.0f}s: {int8.int8_gate.summary()}", flush=True)
        fast = get_encoder(name, device="cpu", weights=weights_for(name))
        eager = get_encoder(name, device="cpu", weights=weights_for(name), runtime="eager")
        pre = fast.preprocess
        arrays = [pre.load(p) for p in paths]
        k = fast.concurrency
        bs = max(1, min(fast.auto_batch_size(), -(-len(paths) // k)))
        batches = [np.stack(arrays[i:i + bs]) for i in range(0, len(arrays), bs)]
        slow = min(args.slow_n, len(paths))
        eager_batches = [np.stack(arrays[i:i + 32]) for i in range(0, slow, 32)]
        # float32 agreement of the fast runtime with eager on these real images
        ref = eager.raw_features_of_array(eager_batches[0])
        got = fast.raw_features_of_array(eager_batches[0])
        cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))

        # the reference-script style: eager module on whole batches of 32 (no micro-batching)
        whole = TorchRunner(eager._runner.module, "cpu", torch.float32, micro_batch=None)
        tests = {
            "pipeline": (pipeline(fast, paths), len(paths)),
            "eager_b32": (model_alone(whole, eager_batches, 1), slow),
            "eager_model": (model_alone(eager.raw_features_of_array, eager_batches, 1), slow),
            "fast_model": (model_alone(fast.raw_features_of_array, batches, k), len(paths)),
        }
        if not args.no_naive:
            tests["naive"] = (naive_loop(name, paths[:slow]), slow)
        if int8 is not None:
            kb = max(1, min(int8.auto_batch_size(), -(-len(paths) // int8.concurrency)))
            ib = [np.stack(arrays[i:i + kb]) for i in range(0, len(arrays), kb)]
            tests["int8_pipeline"] = (pipeline(int8, paths), len(paths))
            tests["int8_model"] = (model_alone(int8.raw_features_of_array, ib, int8.concurrency), len(paths))
        extra = {}
        for rt in [r.strip() for r in args.runtimes.split(",") if r.strip()]:
            try:
                e = get_encoder(name, device="cpu", weights=weights_for(name), runtime=rt)
            except Exception as exc:  # report, keep benchmarking the rest
                print(f"# {name}: runtime {rt} unavailable: {exc}")
                continue
            kb = max(1, min(e.auto_batch_size(), -(-len(paths) // e.concurrency)))
            eb = [np.stack(arrays[i:i + kb]) for i in range(0, len(arrays), kb)]
            extra[f"{rt}_model"] = (model_alone(e.raw_features_of_array, eb, e.concurrency), len(paths))
            tests.update(extra)
        for key, (fn, _) in tests.items():  # warm-up (first-call allocations, lazily made sessions)
            if key != "naive":
                fn()
        res: dict[str, list[float]] = {k_: [] for k_ in tests}
        for _ in range(args.repeats):
            for key, (fn, count) in tests.items():
                res[key].append(timed(fn, count))
        med = {k_: statistics.median(v) for k_, v in res.items()}
        rows.append((name, fast.runtime, k, len(paths), med, float(cos.min())))
        for key in extra:
            extra_rows.append((name, key, med[key], med["eager_model"]))
        if int8 is not None:
            ref32 = fast.raw_features_of_array(np.stack(arrays))
            got8 = int8.raw_features_of_array(np.stack(arrays))
            c8 = np.sum(ref32 * got8, 1) / (np.linalg.norm(ref32, axis=1) * np.linalg.norm(got8, axis=1))
            int8_rows.append((name, fast.runtime, med, res, c8, int8.int8_gate))
        print(f"# {name}: done ({', '.join(f'{k_}={v:.1f}' for k_, v in med.items())})", flush=True)
        del fast, eager, int8, tests, extra, batches, arrays
        clear_encoder_cache()  # one backbone's models at a time: ViT-B fp32 + int8 sessions are ~2 GB
        gc.collect()

    print()
    print("| backbone | runtime (workers) | N | naive | pipeline | eager model b32 | eager model | fast model "
          "| pipeline / eager b32 | pipeline / eager | pipeline / fast model | pipeline / naive | cos(fast, eager) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rt, k, n, med, cos in rows:
        naive = med.get("naive", float("nan"))
        print(f"| {name} | {rt} ({k}) | {n} | {naive:.1f} | {med['pipeline']:.1f} | {med['eager_b32']:.1f} | "
              f"{med['eager_model']:.1f} | {med['fast_model']:.1f} | {med['pipeline'] / med['eager_b32']:.2f}x | "
              f"{med['pipeline'] / med['eager_model']:.2f}x | {100 * med['pipeline'] / med['fast_model']:.0f}% | "
              f"{med['pipeline'] / naive:.2f}x | {cos:.5f} |")
    table: list[str] = []
    if int8_rows:
        table += ["| backbone | fp32 pipeline | int8 pipeline | int8 / fp32 pipeline | fp32 model | int8 model "
                  "| int8 / fp32 model | cos(int8, fp32) mean / min | gate (held: mean cos, worst 1%, top-10) "
                  "| recipe (CPU class) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        attempts: list[str] = []
        for name, rt, med, res, c8, gate in int8_rows:
            # same-repeat ratios, then their median: both runtimes saw the same load in each repeat
            rp = statistics.median(a / b for a, b in zip(res["int8_pipeline"], res["pipeline"], strict=True))
            rm = statistics.median(a / b for a, b in zip(res["int8_model"], res["fast_model"], strict=True))
            verdict = f"{'pass' if gate.passed else 'FAIL'}: {gate.mean_cosine:.4f}, {gate.p1_cosine:.4f}"
            table.append(f"| {name} | {med['pipeline']:.1f} ({rt}) | {med['int8_pipeline']:.1f} | {rp:.2f}x | "
                         f"{med['fast_model']:.1f} | {med['int8_model']:.1f} | {rm:.2f}x | {c8.mean():.4f} / "
                         f"{c8.min():.4f} | {verdict}, {gate.top10_overlap:.3f} | {gate.recipe} ({gate.cpu}) |")
            for a in gate.attempts:  # every recipe the gate measured on this CPU, in the order tried
                attempts.append(f"- {name}, {a['recipe']}: " + (a["error"] if "error" in a else (
                    f"{'pass' if a['passed'] else 'fail'} -- mean cosine {a['mean_cosine']:.4f}, worst 1% "
                    f"{a['p1_cosine']:.4f}, top-10 agreement {a['top10_overlap']:.3f}, "
                    f"{a.get('speedup', float('nan')):.2f}x fp32's speed (gate's single-session probe)")))
        table += ["", f"Gate measurements on {gate.n_held} held-out images per backbone:", *attempts]
        print()
        print("\n".join(table))
    if extra_rows:
        print()
        print("| backbone | model alone | images/s | vs eager model |")
        print("|---|---|---|---|")
        for name, key, v, e in extra_rows:
            print(f"| {name} | {key} | {v:.1f} | {v / e:.2f}x |")
    print(f"\n# images/s, median of {args.repeats}; load average after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.write_docs and table:
        argv = " ".join(a for a in sys.argv[1:] if a != "--write-docs")
        replace_block(DOCS, "bench_embed", "\n".join([
            f"`scripts/bench_embed.py {argv}` (images/s, median of {args.repeats}; load average before "
            f"{load_before})", "", host_line(), recipe_plan() + ".", "", *table]))
        print(f"# wrote the bench_embed block of {DOCS}")


if __name__ == "__main__":
    main()
