"""Benchmark web expansion: parallel vs one-at-a-time downloads, and pHash lookups at scale.

    .venv/bin/python scripts/bench_expand.py                 # throughput + pHash (about a minute)
    .venv/bin/python scripts/bench_expand.py --thresholds    # re-measure the coverage thresholds

Throughput: a loopback server that waits ``--latency`` (100 ms) before every response serves
``--images`` distinct Caltech-101 photos; each configuration expands a fresh collection with all of
them (real downloads, pHash, EfficientNet-Lite0 embedding, index add) ``--repeats`` times. Reported:
kept images per second end to end and for the download stage alone (median), and the ratio.

pHash: lookups against a HashIndex of ``--hashes`` random hashes, and the per-expansion cost of
syncing the cached index with a catalog of that many rows.

Thresholds: the measurement behind ``imrs.expansion.coverage`` defaults for EfficientNet-Lite0 --
image queries (cosine) and text queries through textmap (class-space scores), classes present in
the collection vs absent, at 8 and 28 images per class.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imrs.catalog import Catalog, ImageRecord  # noqa: E402
from imrs.collection import Collection  # noqa: E402
from imrs.config import caltech_dir, shared_data_dir  # noqa: E402
from imrs.dedupe import HashIndex  # noqa: E402
from imrs.expansion import catalog_hash_index, expand, thresholds_for  # noqa: E402
from imrs.web import DownloadPolicy, StaticProvider  # noqa: E402
from tests.webserver import LoopbackServer  # noqa: E402

CALTECH = caltech_dir()
PHOTOS = shared_data_dir() / "photos"
BACKBONE = "efficientnet_lite0"


def caltech_classes() -> list[str]:
    if not CALTECH.is_dir():
        sys.exit(f"{CALTECH} is absent: this benchmark needs Caltech-101 in ../shared/datasets")
    return sorted(p.name for p in CALTECH.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")


# ----------------------------------------------------------------------------------------------
# Throughput
# ----------------------------------------------------------------------------------------------


def web_dir(folder: Path, n: int) -> list[str]:
    """``n`` visually distinct photos: the first image of ``n`` different classes."""
    names = []
    for c in caltech_classes()[1:n + 1]:
        src = sorted((CALTECH / c).glob("*.jpg"))[0]
        name = f"{c}.jpg"
        (folder / name).symlink_to(src)
        names.append(name)
    return names


def one_run(tmp: Path, encoder: Any, server: LoopbackServer, urls: list[str],
            policy: DownloadPolicy) -> dict[str, float]:
    root = tmp / f"coll-{time.monotonic_ns()}"
    (root / "base").mkdir(parents=True)
    for src in sorted((CALTECH / caltech_classes()[0]).glob("*.jpg"))[:4]:
        (root / "base" / src.name).symlink_to(src)
    coll = Collection(root, BACKBONE, "hnsw", home=tmp / "home", encoder=encoder)
    coll.sync()
    marks: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        marks.setdefault(f"{stage}-start", time.perf_counter())
        marks[f"{stage}-end"] = time.perf_counter()

    t0 = time.perf_counter()
    rep = expand(coll, "bench", n=len(urls), policy=policy, providers=StaticProvider(urls), progress=progress)
    total = time.perf_counter() - t0
    download = marks.get("download-end", t0) - t0  # from the start: includes the provider call
    assert rep.kept == len(urls), (rep.kept, rep.failures[:3], rep.duplicates[:3])
    return {"kept": rep.kept, "seconds": total, "download_seconds": download,
            "kept_per_s": rep.kept / total, "download_per_s": rep.kept / max(download, 1e-9)}


def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    from imrs.encoders import get_encoder

    encoder = get_encoder(BACKBONE, device="cpu")
    out: dict[str, Any] = {"images": args.images, "latency_s": args.latency, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        served = tmp / "web"
        served.mkdir()
        names = web_dir(served, args.images)
        configs = {
            "parallel (8 workers, 8 per host)": DownloadPolicy(allow_loopback=True, workers=8, per_host=8),
            "parallel (8 workers, default 2 per host)": DownloadPolicy(allow_loopback=True, workers=8),
            "one at a time": DownloadPolicy(allow_loopback=True, workers=1, per_host=1),
        }
        with LoopbackServer(served, latency=args.latency) as server:
            urls = [server.url(f"/photos/{n}") for n in names]
            one_run(tmp, encoder, server, urls[:2], configs["one at a time"])  # warm-up (model, imports)
            for name, policy in configs.items():
                runs = [one_run(tmp, encoder, server, urls, policy) for _ in range(args.repeats)]
                out[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                print(f"{name:42s} {out[name]['kept_per_s']:6.2f} kept img/s end to end "
                      f"({out[name]['seconds']:.2f} s), download stage {out[name]['download_per_s']:6.2f} img/s "
                      f"({out[name]['download_seconds']:.2f} s)  [median of {args.repeats}]", flush=True)
    par, seq = out["parallel (8 workers, 8 per host)"], out["one at a time"]
    par2 = out["parallel (8 workers, default 2 per host)"]
    out["ratio_end_to_end"] = par["kept_per_s"] / seq["kept_per_s"]
    out["ratio_download"] = par["download_per_s"] / seq["download_per_s"]
    out["ratio_end_to_end_default_policy"] = par2["kept_per_s"] / seq["kept_per_s"]
    print(f"parallel / one-at-a-time: {out['ratio_end_to_end']:.1f}x end to end, "
          f"{out['ratio_download']:.1f}x download stage; default policy (2 per host, one host here): "
          f"{out['ratio_end_to_end_default_policy']:.1f}x end to end")
    return out


# ----------------------------------------------------------------------------------------------
# pHash at scale
# ----------------------------------------------------------------------------------------------


def bench_phash(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    n = args.hashes
    hashes = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64)
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    index = HashIndex(hashes, ids)
    build = time.perf_counter() - t0
    queries = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=200, dtype=np.int64)
    nearest, within = [], []
    for q in queries.tolist():
        t = time.perf_counter()
        index.nearest(q)
        nearest.append(time.perf_counter() - t)
        t = time.perf_counter()
        index.within(q, 4)
        within.append(time.perf_counter() - t)
    out = {"hashes": n, "build_ms": build * 1e3, "nearest_median_ms": statistics.median(nearest) * 1e3,
           "within4_median_ms": statistics.median(within) * 1e3}
    print(f"HashIndex of {n} hashes: built in {out['build_ms']:.1f} ms; lookup median "
          f"{out['nearest_median_ms']:.3f} ms (nearest), {out['within4_median_ms']:.3f} ms (within 4 bits); "
          f"a 20-image batch: {20 * out['nearest_median_ms']:.1f} ms")

    with tempfile.TemporaryDirectory() as td:
        cat = Catalog(Path(td) / "catalog.sqlite")
        t0 = time.perf_counter()
        cat.upsert(ImageRecord(id=int(i), relpath=f"c/{i}.jpg", phash=int(h)) for i, h in zip(ids, hashes, strict=True))
        fill = time.perf_counter() - t0
        coll = SimpleNamespace(catalog=cat, state_dir=Path(td))
        t0 = time.perf_counter()
        catalog_hash_index(coll)  # type: ignore[arg-type]
        first = time.perf_counter() - t0
        again = []
        for _ in range(5):
            t = time.perf_counter()
            catalog_hash_index(coll)  # type: ignore[arg-type]
            again.append(time.perf_counter() - t)
        out.update({"catalog_rows": n, "catalog_fill_s": fill, "catalog_index_first_ms": first * 1e3,
                    "catalog_index_sync_median_ms": statistics.median(again) * 1e3})
    print(f"catalog of {n} rows: first HashIndex load {out['catalog_index_first_ms']:.0f} ms, "
          f"per-expansion sync check {out['catalog_index_sync_median_ms']:.0f} ms (median of 5)")
    return out


# ----------------------------------------------------------------------------------------------
# Thresholds
# ----------------------------------------------------------------------------------------------


def _grid(present: list[np.ndarray], absent: list[np.ndarray], bests: np.ndarray, goods: np.ndarray,
          ms: tuple[int, ...] = (2, 3, 4)) -> list[tuple[float, float, float, int, list[float]]]:
    rows = []
    for tb in bests:
        for tg in goods:
            for m in ms:
                bas = []
                for p, a in zip(present, absent, strict=True):
                    strong = lambda s: (s[:, 0] >= tb) & ((s >= tg).sum(1) >= m)  # noqa: E731,B023
                    bas.append((strong(p).mean() + 1 - strong(a).mean()) / 2)
                rows.append((float(np.mean(bas)), round(float(tb), 3), round(float(tg), 3), m,
                             [round(float(b), 3) for b in bas]))
    rows.sort(key=lambda r: -r[0])
    return rows


def bench_thresholds(args: argparse.Namespace) -> dict[str, Any]:
    from imrs.encoders import get_encoder
    from imrs.expansion.coverage import textmap_scores

    encoder = get_encoder(BACKBONE, device="cpu")
    classes = caltech_classes()
    rng = random.Random(0)
    rng.shuffle(classes)
    present, absent = classes[:40], classes[40:80]
    files = {c: sorted((CALTECH / c).glob("*.jpg")) for c in classes[:80]}
    for c in files:
        rng.shuffle(files[c])
    image_sets: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    text_sets: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    photos = sorted(PHOTOS.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as td:
        for per in (8, 28):
            root = Path(td) / f"coll{per}"
            for c in present:
                (root / c).mkdir(parents=True)
                for f in files[c][:per]:
                    (root / c / f.name).symlink_to(f)
            coll = Collection(root, BACKBONE, "flat_ip", home=Path(td) / "home", encoder=encoder)
            coll.sync()
            q_in = encoder.embed_paths([f for c in present for f in files[c][28:30]]).vectors
            q_out = encoder.embed_paths([f for c in absent for f in files[c][:2]] + photos).vectors

            def top(q: np.ndarray, c: Collection = coll) -> np.ndarray:
                return np.sort([h.score for h in c.search_vectors(q, 10)[0]])[::-1]

            image_sets[0].append(np.stack([top(q) for q in q_in]))
            image_sets[1].append(np.stack([top(q) for q in q_out]))
            def conse(c: str, coll: Collection = coll) -> np.ndarray:
                return np.asarray(textmap_scores(coll, c.replace("_", " "), 10))

            text_sets[0].append(np.stack([conse(c) for c in present]))
            text_sets[1].append(np.stack([conse(c) for c in absent]))
            print(f"{per} images/class: image best score median present {np.median(image_sets[0][-1][:, 0]):.3f} "
                  f"/ absent {np.median(image_sets[1][-1][:, 0]):.3f}; text class-space best median "
                  f"present {np.median(text_sets[0][-1][:, 0]):.3f} / absent {np.median(text_sets[1][-1][:, 0]):.3f}",
                  flush=True)
    img = _grid(*image_sets, np.arange(0.40, 0.70, 0.01), np.arange(0.35, 0.65, 0.01))
    txt = _grid(*text_sets, np.arange(0.02, 0.90, 0.02), np.arange(0.01, 0.60, 0.01))
    out: dict[str, Any] = {}
    for kind, name, rows, sets in (("image", "image (cosine)", img, image_sets),
                                   ("textmap", "text via textmap (class-space)", txt, text_sets)):
        print(f"{name}: best balanced accuracy (8/class, 28/class)")
        for r in rows[:5]:
            print(f"  bal {r[0]:.3f} {r[4]}: best >= {r[1]}, {r[3]} hit(s) >= {r[2]}")
        t = thresholds_for(BACKBONE, kind, use_env=False)
        cur = _grid(*sets, np.array([t.best_min]), np.array([t.good_min]), ms=(t.min_good,))[0]
        print(f"  current default ({t.describe()}): bal {cur[0]:.3f} {cur[4]}")
        out[kind] = {"top": rows[:5], "default": cur}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--latency", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hashes", type=int, default=100_000)
    p.add_argument("--thresholds", action="store_true", help="re-measure the coverage thresholds instead")
    p.add_argument("--json", metavar="FILE", help="also write the numbers here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.thresholds:
        result = bench_thresholds(args)
    else:
        result = {"throughput": bench_throughput(args), "phash": bench_phash(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
