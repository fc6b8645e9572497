#!/usr/bin/env python
"""The int8 gate's figures for every quantization recipe, on this CPU or an emulated one.

Run by hand (not in CI):

    .venv/bin/python scripts/bench_int8_recipes.py                       # this host's CPU
    .venv/bin/python scripts/bench_int8_recipes.py --qemu-cpu Haswell    # AVX2, no AVX-512/VNNI
    ... --write-docs   # into docs/benchmarks.md (block bench_int8_recipes, or ..._emulated)

Why: which recipe passes the gate depends on the processor's int8 kernels (x86-64 without VNNI
saturates u8 x s8 products in 16 bits), so a host with VNNI cannot see the other kind's failures.
With ``--qemu-cpu`` (Debian: ``apt-get install qemu-user``) the models are still built here, but
every model -- fp32 and each int8 recipe -- runs under ``qemu-x86_64 -cpu MODEL``: ONNX Runtime
reads the emulated CPUID and dispatches that CPU's kernels, so their arithmetic (saturation
included) is the real one. Emulated timings mean nothing and are not printed; native runs print
images/s (one session, one thread, the median of 3 passes).

The calibration and held-out images are Caltech-101 images drawn with a seed, split as a
collection's int8 build splits them; the gate figures are :func:`imrs.encoders.int8.gate_metrics`
and the verdict :func:`imrs.encoders.int8.judge`, the same as ``imrs index`` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imrs.config import caltech_dir  # noqa: E402  (standard library only: light for the qemu worker)


def worker(folder: Path) -> None:
    """Run every model in ``folder`` on ``held.npy``; only numpy and onnxruntime (fast under qemu)."""
    import onnxruntime as ort

    held = np.load(folder / "held.npy")
    out: dict[str, np.ndarray] = {}
    speed: dict[str, float] = {}
    for model in sorted(folder.glob("*.onnx")):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        feats, times = [], []
        for _ in range(1 if os.environ.get("IMRS_RECIPES_EMULATED") else 3):
            t0 = time.perf_counter()
            got = [sess.run(None, {name: held[i:i + 4]})[0] for i in range(0, len(held), 4)]
            times.append(len(held) / (time.perf_counter() - t0))
            feats = got
        out[model.stem] = np.concatenate(feats).astype(np.float32)
        speed[model.stem] = statistics.median(times)
        print(f"#   ran {model.stem}", file=sys.stderr, flush=True)
    np.savez(folder / "features.npz", **out)
    (folder / "speed.json").write_text(json.dumps(speed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path,
                    default=caltech_dir())
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="pretrained", choices=["pretrained", "random"])
    ap.add_argument("--n", type=int, default=96, help="images: half calibrate, half are held out for the gate")
    ap.add_argument("--qemu-cpu", default="", help="run the models under qemu-x86_64 -cpu MODEL (e.g. Haswell)")
    ap.add_argument("--recipes", default="", help="comma-separated recipe names (default: every one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-docs", action="store_true",
                    help="write the table into docs/benchmarks.md (block bench_int8_recipes[_emulated])")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return

    from imrs.bench.docblock import host_line, replace_block
    from imrs.encoders import get_encoder
    from imrs.encoders import int8 as q
    from imrs.encoderslot import calibration_sample

    files = sorted(args.data.glob("*/*.jpg"))
    if not files:
        sys.exit(f"no images under {args.data} (pass --data)")
    rng = np.random.default_rng(args.seed)
    paths = calibration_sample([files[i] for i in rng.permutation(len(files))[:4 * args.n]], args.n)
    fp32 = get_encoder(args.backbone, device="cpu", weights=args.weights, runtime="fp32")
    if fp32.runtime != "onnx":
        sys.exit(f"{args.backbone}: no ONNX export ({fp32.runtime})")
    cal_paths, held_paths = q.split_sample(paths)
    cal = q._decode(cal_paths, fp32.preprocess)
    held = q._decode(held_paths, fp32.preprocess)
    convnet = fp32._loaded.convnet
    recipes = {r.name: r for r in (q.CONVNET_RECIPES + q.NO_VNNI_CONVNET_RECIPES if convnet
                                   else q.TRANSFORMER_RECIPES + q.NO_VNNI_TRANSFORMER_RECIPES)}
    # measured for comparison, never tried by the gate for this kind of model
    recipes["s8s8-minmax"] = q.Recipe("s8s8-minmax", activation="s8") if convnet else q.Recipe(
        "s8s8-linear-minmax", activation="s8", only_ops=q.LINEAR_OPS, batch=4)
    recipes.setdefault("u8s8-7bit-linear-dynamic", q.Recipe("u8s8-7bit-linear-dynamic", only_ops=q.LINEAR_OPS,
                                                            reduce_range=True, dynamic=True))
    if args.recipes:
        wanted = [r.strip() for r in args.recipes.split(",") if r.strip()]
        if unknown := [r for r in wanted if r not in recipes]:
            sys.exit(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(recipes)}")
        recipes = {r: recipes[r] for r in wanted}
    q._quiet_onnxruntime()
    work = Path(tempfile.mkdtemp(prefix="imrs-recipes-"))
    try:
        np.save(work / "held.npy", np.stack(held))
        shutil.copyfile(fp32._runner.path, work / "fp32.onnx")
        prepared = work / "prepared.onnx.src"
        q.prepare(fp32._runner.path, prepared, fp32.preprocess.size)
        built = {}
        for r in recipes.values():
            t0 = time.perf_counter()
            src = work / f"{r.name}.src"
            try:
                q.fold_for(prepared, src, fp32.preprocess.size, r)
                q.quantize(src, work / f"{r.name}.onnx", cal, r)
            except Exception as exc:  # report it, measure the others
                print(f"# {r.name}: quantization failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            built[r.name] = time.perf_counter() - t0
        for extra in work.glob("*.src"):
            extra.unlink()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(work)]
        env = dict(os.environ)
        if args.qemu_cpu:
            cmd = ["qemu-x86_64", "-cpu", args.qemu_cpu, *cmd]
            env["IMRS_RECIPES_EMULATED"] = "1"
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stderr=subprocess.PIPE if args.qemu_cpu else None)
        ran = time.perf_counter() - t0
        feats = dict(np.load(work / "features.npz"))
        speed = json.loads((work / "speed.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    host = q.cpu_features()
    where = (f"qemu-x86_64 -cpu {args.qemu_cpu} (emulated on {host.describe()}; {ran:.0f}s)" if args.qemu_cpu
             else host.describe())
    lines = [f"{args.backbone} ({args.weights}): {len(cal)} calibration / {len(held)} held-out Caltech-101 "
             f"images; models run on {where}. Gate: "
             + ("quality only (emulated speed means nothing)." if args.qemu_cpu else "quality and speed."), "",
             "| recipe | what | mean cos | worst-1% cos | min cos | top-10 agreement | gate "
             "| images/s (1 thread) |",
             "|---|---|---|---|---|---|---|---|"]
    ref = feats["fp32"]
    fp32_speed = speed["fp32"]
    rate32 = "-" if args.qemu_cpu else f"{fp32_speed:.1f}"
    lines.append(f"| fp32 | ONNX Runtime float32 | 1 | 1 | 1 | 1 | - | {rate32} |")
    for name, r in recipes.items():
        if name not in feats:
            continue
        m = q.gate_metrics(ref, feats[name])
        if not args.qemu_cpu:  # the whole gate where speed means something; emulated: quality only
            m["speedup"] = speed[name] / fp32_speed
        ok, why = q.judge(m)
        rate = "-" if args.qemu_cpu else f"{speed[name]:.1f} ({speed[name] / fp32_speed:.2f}x)"
        lines.append(f"| {name} | {r.describe()} | {m['mean_cosine']:.4f} | {m['p1_cosine']:.4f} | "
                     f"{m['min_cosine']:.4f} | {m['top10_overlap']:.3f} | {'pass' if ok else 'FAIL'} | {rate} |")
    print("# " + host_line())
    print("\n".join(lines))
    if args.write_docs:
        block = "bench_int8_recipes_emulated" if args.qemu_cpu else "bench_int8_recipes"
        argv = " ".join(a for a in sys.argv[1:] if a != "--write-docs")
        replace_block(REPO / "docs" / "benchmarks.md", block, "\n".join(
            [f"`scripts/bench_int8_recipes.py {argv}`", "", host_line(), "", *lines]))
        print(f"# wrote the {block} block of docs/benchmarks.md")


if __name__ == "__main__":
    main()
