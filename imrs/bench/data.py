"""What a benchmark runs on: a labelled folder, and cached embeddings of it per backbone.

Embedding is by far the most expensive step (minutes for Caltech-101 on two cores), so it happens
at most once per (backbone, weights, data root): vectors are looked up, by image id, in

1. NPZ files given with ``--emb`` (any EmbeddingSet of the right backbone),
2. the benchmark's own cache (``<cache dir>/emb_<backbone>[-random]_<root tag>.npz``),
3. the caches ``imrs index`` keeps for the same folder (``<home>/collections/*/emb/emb_<backbone>.store``),

and only images found in none of them are embedded (with a progress bar); the union is written
back to the benchmark cache. Files that cannot be decoded are remembered next to the cache so a
re-run does not try them again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..catalog import label_for
from ..config import Settings, home_dir, state_dir_for
from ..errors import EmptyCollectionError, IMRSError, StoreError
from ..fsutil import atomic_write_json, read_json
from ..ids import stable_id
from ..layout import DYNAMIC_PREFIX, scan_folder
from ..progress import ProgressArg
from ..store import EmbeddingSet

log = logging.getLogger(__name__)

DEFAULT_BACKGROUND = ("BACKGROUND_Google",)


def labelled_images(root: Path, limit: int = 0, seed: int = 0) -> list[Path]:
    """The JPEGs one folder deep under ``root`` (the folder is the label), sorted; with ``limit``,
    a sample of that many drawn with ``seed``, still sorted, so a benchmark repeated with the same
    arguments measures the same images."""
    paths = sorted(Path(root).glob("*/*.jpg"))
    if limit and limit < len(paths):
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False).tolist())]
    return paths


@dataclass
class BenchData:
    """The images of a labelled folder, one row each, in sorted relpath order.

    ``label_ids`` is -1 for images that are never relevant to anything (background class, files at
    the top level); they stay in the database as distractors unless ``background="drop"``.
    """

    root: Path
    relpaths: np.ndarray
    labels: np.ndarray  # folder label per row ("" at top level)
    label_ids: np.ndarray  # int64, -1 = never relevant
    classes: list[str]  # label id -> name
    background: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.relpaths)

    @property
    def ids(self) -> np.ndarray:
        return np.fromiter((stable_id(str(r)) for r in self.relpaths), dtype=np.int64, count=len(self.relpaths))

    def select(self, rows: np.ndarray) -> BenchData:
        return BenchData(self.root, self.relpaths[rows], self.labels[rows], self.label_ids[rows], self.classes,
                         self.background)

    def query_candidates(self) -> np.ndarray:
        return np.flatnonzero(self.label_ids >= 0)


def scan_dataset(root: str | os.PathLike[str], background: str = "keep",
                 background_labels: tuple[str, ...] = DEFAULT_BACKGROUND) -> BenchData:
    """Label = first folder under ``root`` (as the catalog does). ``background`` is ``keep``
    (background images are distractors in the database, never queries or relevant) or ``drop``."""
    if background not in ("keep", "drop"):
        raise IMRSError(f"--background must be keep or drop, not {background!r}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise IMRSError(f"benchmark data folder not found: {root}")
    path = path.resolve()
    files = [rel for rel, _, _ in scan_folder(path)]
    if not files:
        raise EmptyCollectionError(f"no images found under {path}")
    labels = np.asarray([label_for(r) for r in files], dtype=str)
    bg = set(background_labels)
    is_bg = np.isin(labels, list(bg)) | (labels == "")
    if background == "drop":
        keep = ~is_bg
        files = [f for f, k in zip(files, keep, strict=True) if k]
        labels, is_bg = labels[keep], is_bg[keep]
    classes = sorted(set(labels[~is_bg].tolist()))
    if not classes:
        raise EmptyCollectionError(f"no class folders under {path}: the benchmark needs images in "
                                   "one sub-folder per class")
    lut = {c: i for i, c in enumerate(classes)}
    label_ids = np.asarray([-1 if b else lut[lab] for lab, b in zip(labels.tolist(), is_bg, strict=True)],
                           dtype=np.int64)
    return BenchData(path, np.asarray(files, dtype=str), labels, label_ids, classes,
                     sorted(set(labels[is_bg].tolist()) - {""}))


def root_tag(root: Path) -> str:
    """The same tag ``imrs index`` uses for the folder's state directory."""
    return state_dir_for(root).name


def collection_caches(root: Path, backbone: str, home: str | os.PathLike[str] | None) -> list[Path]:
    """``imrs index`` caches of this folder: the state dir of ``root`` under ``home``, plus any
    collection whose ``collection.json`` names the same folder (state dirs made under another
    spelling of the path)."""
    out: list[Path] = []
    h = home_dir(home)
    cands = [state_dir_for(root, h)]
    coll_dir = h / "collections"
    if coll_dir.is_dir():
        for cj in sorted(coll_dir.glob("*/collection.json")):
            try:
                if Path(read_json(cj)["root"]).resolve() == root:
                    cands.append(cj.parent)
            except (OSError, ValueError, KeyError, TypeError):
                continue
    for st in dict.fromkeys(cands):
        for name in (f"emb_{backbone}.store", f"emb_{backbone}.npz", f"emb_merged_{backbone}.npz"):
            p = st / "emb" / name
            if p.is_file() or (p / "manifest.json").is_file():  # a single file, or a shard store
                out.append(p)
    return out


@dataclass
class EmbeddingReport:
    backbone: str
    rows: int
    from_cache: int
    embedded: int
    failed: int
    sources: list[str]
    cache: str
    seconds: float = 0.0


def load_embeddings(data: BenchData, backbone: str, *, cache_dir: Path, home: str | os.PathLike[str] | None,
                    extra: tuple[Path, ...] = (), weights: str = "pretrained", device: str | None = None,
                    batch_size: int | None = None, progress: ProgressArg = True,
                    settings: Settings | None = None) -> tuple[np.ndarray, np.ndarray, EmbeddingReport]:
    """(vectors of the rows that have one, those row numbers, report). ``settings``: where the
    backbone's weights are found (None: the environment's)."""
    import time

    from ..encoders import backbone_info

    t0 = time.perf_counter()
    dim = backbone_info(backbone).dim
    suffix = "" if weights == "pretrained" else f"-{weights}"
    cache = cache_dir / f"emb_{backbone}{suffix}_{root_tag(data.root)}.npz"
    failed_file = cache.with_suffix(".failed.json")
    ids = data.ids
    want = {int(i): r for r, i in enumerate(ids.tolist())}
    vecs = np.zeros((len(ids), dim), np.float32)
    have = np.zeros(len(ids), bool)
    sources: list[str] = []
    candidates = [*extra, cache]
    if weights == "pretrained":  # collection caches are always pretrained
        candidates += collection_caches(data.root, backbone, home)
    for path in candidates:
        if not (Path(path).is_file() or (Path(path) / "manifest.json").is_file()) or have.all():
            continue
        try:
            # benchmarks measure the fp32 vectors: an int8 collection cache is never mixed in
            emb = EmbeddingSet.load(path, backbone=backbone, runtime="fp32")
        except StoreError as exc:
            log.warning("ignoring %s", exc)
            continue
        if len(emb) and emb.dim != dim:
            log.warning("ignoring %s: %d-d vectors, %s gives %d-d", path, emb.dim, backbone, dim)
            continue
        rows = np.fromiter((want.get(int(i), -1) for i in emb.ids.tolist()), dtype=np.int64, count=len(emb))
        ok = (rows >= 0) & ~have[np.maximum(rows, 0)]
        if ok.any():
            vecs[rows[ok]] = emb.vectors[ok]
            have[rows[ok]] = True
            sources.append(str(path))
    from_cache = int(have.sum())
    known_bad: set[str] = set()
    if failed_file.is_file():
        try:
            known_bad = set(read_json(failed_file))
        except (OSError, ValueError):
            known_bad = set()
    todo = [r for r in np.flatnonzero(~have).tolist() if str(data.relpaths[r]) not in known_bad]
    embedded = 0
    if todo:
        from ..encoders import get_encoder

        log.info("embedding %d image(s) with %s (%d cached)", len(todo), backbone, from_cache)
        enc = get_encoder(backbone, device=device, weights=weights, runtime="fp32", settings=settings)
        res = enc.embed_paths([data.root / str(data.relpaths[r]) for r in todo], batch_size=batch_size,
                              progress=progress)
        kept = np.asarray(todo, dtype=np.int64)[res.kept]
        vecs[kept] = res.vectors
        have[kept] = True
        embedded = len(kept)
        bad = sorted(known_bad | {str(data.relpaths[todo[i]]) for i, _ in res.failures})
        if bad:
            atomic_write_json(failed_file, bad)
    rows = np.flatnonzero(have)
    if embedded or not cache.is_file():
        EmbeddingSet(backbone, ids[rows], data.relpaths[rows], vecs[rows]).save(cache)
    rep = EmbeddingReport(backbone, len(rows), from_cache, embedded, int(len(ids) - len(rows)), sources,
                          str(cache), time.perf_counter() - t0)
    return vecs[rows], rows, rep


def dynamic_vectors(data: BenchData, backbone: str, home: str | os.PathLike[str] | None) -> np.ndarray:
    """Vectors of web-expansion (dynamic) images the collection of ``data.root`` holds, for the map."""
    st = state_dir_for(data.root, home_dir(home))
    out = []
    for p in sorted((st / "emb").glob(f"dyn_emb_*_{backbone}.npz")) if (st / "emb").is_dir() else []:
        try:
            emb = EmbeddingSet.load(p, backbone=backbone)
        except StoreError:
            continue
        dyn = np.asarray([str(r).startswith(DYNAMIC_PREFIX) for r in emb.relpaths], dtype=bool)
        if dyn.any():
            out.append(emb.vectors[dyn])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def dump_json(path: Path, obj: object) -> None:
    atomic_write_json(path, json.loads(json.dumps(obj, default=_json_default)))


def _json_default(o: object) -> object:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
