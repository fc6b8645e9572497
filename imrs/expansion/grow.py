"""Grow a collection from the web: search, download, drop near-duplicates, embed, add, re-query.

Only the final add holds the collection's writer lock. Searching, downloading, hashing and
embedding -- all the slow parts -- run outside it, into a private staging folder
(``dynamic_<slug>/.staging-<random>/``), so two expansions (threads or processes) overlap their
network and model time and can never see or delete each other's half-finished files. Under the
lock the batch is checked once more against the catalog (another expansion may have just added the
same picture), kept files are moved to their final names (a hash of the URL) and
``Collection.add_dynamic`` writes catalog rows, index vectors and the term's NPZ. The staging folder
is guarded by a lock its expansion holds (``reconcile.staging_folder``), so one killed mid-download
is cleaned up on the next open, and the commit runs as one op of the commit protocol: a kill after
the files moved but before they were recorded leaves an intent record, and the repair moves them to
the quarantine. Each kept image gets a provenance sidecar (``<name>.json``) before it lands, so a
lost catalog loses nothing: ``imrs index`` takes the images back with their provenance.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..catalog import ImageRecord
from ..dedupe import HashIndex, phash_file
from ..errors import IMRSError, NetworkError
from ..faults import fault_point
from ..ids import stable_id
from ..layout import DYNAMIC_PREFIX, SearchHit
from ..progress import ProgressArg, Reporter, relabel
from ..reconcile import staging_folder
from ..slug import safe_slug
from ..web.download import DownloadPolicy, fetch_many
from ..web.providers import ImageHit, url_key
from ..webfiles import sidecar_of, write_provenance
from .sources import as_chain, policy_for
from .terms import clean_term

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)

#: ``vectors -> (keep mask, scores, floor)``: the check that downloaded images show the query.
AcceptFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, float]]
_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


@dataclass
class ExpansionReport:
    term: str
    slug: str
    folder: str
    requested: int
    candidates: int = 0
    fetched: int = 0  # downloaded and decoded
    kept: int = 0  # added to the collection
    added_ids: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (url, why)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (url, why)
    off_topic: list[tuple[str, str]] = field(default_factory=list)  # (url, why): did not show the query
    provider_report: list[dict[str, Any]] = field(default_factory=list)
    best_before: float | None = None
    best_after: float | None = None
    hits_before: list[SearchHit] = field(default_factory=list)
    hits_after: list[SearchHit] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def providers_used(self) -> str:
        ok = [r["provider"] for r in self.provider_report if r.get("ok") and r.get("count")]
        return ", ".join(ok) or "none"

    def summary(self) -> str:
        line = (f"'{self.term}' -> {DYNAMIC_PREFIX}{self.slug}: {self.kept} added, {len(self.duplicates)} "
                f"duplicate(s), {len(self.failures)} failed, "
                + (f"{len(self.off_topic)} off-topic, " if self.off_topic else "")
                + f"of {self.candidates} candidate(s) from {self.providers_used}")
        if self.best_before is not None or self.best_after is not None:
            line += f"; best score {_fmt(self.best_before)} -> {_fmt(self.best_after)}"
        return line + f" in {self.elapsed:.1f}s"

    def as_dict(self) -> dict[str, Any]:
        return {"term": self.term, "slug": self.slug, "folder": self.folder, "requested": self.requested,
                "candidates": self.candidates, "fetched": self.fetched, "kept": self.kept,
                "added_ids": list(self.added_ids),
                "duplicates": [{"url": u, "reason": r} for u, r in self.duplicates],
                "failures": [{"url": u, "reason": r} for u, r in self.failures],
                "off_topic": [{"url": u, "reason": r} for u, r in self.off_topic],
                "providers": list(self.provider_report), "best_before": self.best_before,
                "best_after": self.best_after, "elapsed": round(self.elapsed, 3)}


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def slug_for(term: str) -> str:
    return safe_slug(clean_term(term))


def dynamic_folder(coll: Collection, slug: str) -> Path:
    """``<dynamic_root>/dynamic_<slug>``, proven to be a real folder directly inside the dynamic
    root: a slug is ``[a-z0-9-]`` by construction, and a symlink planted at that name is refused
    rather than written through."""
    if not _SLUG_RE.fullmatch(slug or "") or len(slug) > 80:
        raise IMRSError(f"invalid folder slug {slug!r}")
    root = Path(coll.dynamic_root)
    folder = root / f"{DYNAMIC_PREFIX}{slug}"
    if folder.is_symlink():
        raise IMRSError(f"{folder} is a symbolic link; refusing to write dynamic images through it")
    if folder.exists() and not folder.is_dir():
        raise IMRSError(f"{folder} exists and is not a folder; move it away to expand this term")
    if folder.resolve().parent != root.resolve():
        raise IMRSError(f"{folder} would leave the dynamic root {root}")
    return folder


def url_filename(url: str) -> str:
    """Stable per URL (so the same URL is recognised on a later expansion), nothing of it reused."""
    return hashlib.sha1(url_key(url).encode("utf-8")).hexdigest()[:20] + ".jpg"


# ---------------------------------------------------------------------------------------------
# pHash of the catalog, cached per collection
# ---------------------------------------------------------------------------------------------


class _CatalogHashes:
    """Per-collection cache. ``index`` is never mutated once published (readers use it without a
    lock while another thread may be adding): updates build a new HashIndex and swap it in."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards index/fingerprint; never held while taking another lock
        self.fill_lock = threading.Lock()
        self.fingerprint: tuple[Any, ...] | None = None
        self.index = HashIndex()
        self.filled = False
        self.unhashable: set[int] = set()


def _hashes_for(coll: Collection) -> _CatalogHashes:
    return coll.cache("phash_index", _CatalogHashes)


def _fingerprint(catalog: Any) -> tuple[Any, ...]:
    return tuple(catalog.phash_fingerprint())


def fill_missing_phashes(coll: Collection, progress: ProgressArg = None) -> int:
    """Hash catalog images that have no pHash yet (older catalogs, failed facts) and store them.

    Done once per collection per process: images added later get their hash when they are added
    (``Collection.sync`` for base images, the expansion itself for dynamic ones). Stored under
    the writer lock, like every other change to the images table, so a cached HashIndex that was
    in sync under the lock stays in sync.
    """
    cache = _hashes_for(coll)
    with cache.fill_lock:
        if cache.filled:
            return 0
        todo = [r for r in coll.catalog.iter_records() if r.phash is None and r.id not in cache.unhashable]
        done: list[tuple[int, int]] = []
        report = Reporter(progress)
        for n, r in enumerate(todo, 1):
            try:
                done.append((r.id, phash_file(coll.abspath(r.relpath, r.source))))
            except Exception as exc:  # noqa: BLE001 - a vanished or broken file only loses its hash
                cache.unhashable.add(r.id)
                log.debug("no pHash for %s: %s", r.relpath, exc)
            if len(done) >= 500 or (n == len(todo) and done):
                with coll.writing():
                    coll.catalog.set_phash(done)
                done = []
            report("hash collection", n, len(todo))
        report.close()
        cache.filled = True
        if todo:
            log.info("computed %d missing pHash(es) for %s", len(todo) - len(cache.unhashable), coll.root)
        return len(todo)


def catalog_hash_index(coll: Collection) -> HashIndex:
    """The HashIndex of every hashed catalog image, re-read only when the catalog's (id, pHash)
    pairs changed (another expansion, a prune, a rescan -- in this process or another)."""
    cache = _hashes_for(coll)
    fp = _fingerprint(coll.catalog)
    with cache.lock:
        if fp == cache.fingerprint:
            return cache.index
    ids, hashes = coll.catalog.phashes()  # read after the fingerprint: a change in between only
    index = HashIndex(np.asarray(hashes, dtype=np.int64), np.asarray(ids, dtype=np.int64))  # re-reads
    with cache.lock:
        cache.index, cache.fingerprint = index, fp
    return index


def _note_added(coll: Collection, ids: Sequence[int], hashes: Sequence[int]) -> None:
    """With the writer lock held, right after our own add: extend the cache instead of re-reading
    the whole catalog (the cache was brought in sync under this same lock hold)."""
    cache = _hashes_for(coll)
    fp = _fingerprint(coll.catalog)
    with cache.lock:
        grown = HashIndex(cache.index.hashes, cache.index.ids)
        grown.add(list(ids), list(hashes))
        cache.index, cache.fingerprint = grown, fp


# ---------------------------------------------------------------------------------------------
# The expansion
# ---------------------------------------------------------------------------------------------


@dataclass
class _Staged:
    hit: ImageHit
    path: Path
    final_name: str
    phash: int
    width: int | None
    height: int | None


def _term_query(coll: Collection, term: str, term_scores: bool | None) -> np.ndarray | None:
    """A query vector for the term itself, for before/after scores when the caller gave none.

    ``term_scores=None``: only when the backbone embeds text itself (CLIP); an image-only backbone
    would need ``imrs.textmap``'s sentence model, seconds to load just for a report line."""
    if not term or term_scores is False:
        return None
    try:
        if getattr(coll.encoder, "supports_text", False):
            return coll.encoder.embed_texts([term])[0]
        if not term_scores:
            return None
        from ..textsearch import text_query_vector

        return text_query_vector(coll, term)
    except (IMRSError, ImportError) as exc:
        log.debug("no query vector for %r: %s", term, exc)
        return None


def _search(coll: Collection, query: np.ndarray | None, k: int) -> list[SearchHit]:
    if query is None:
        return []
    try:
        return coll.search_vectors(query, k)[0]
    except IMRSError:  # an empty index
        return []


def _best(hits: Sequence[SearchHit]) -> float | None:
    return max((h.score for h in hits), default=None)


def _describe_match(coll: Collection, image_id: int, dist: int) -> str:
    rec = coll.catalog.get(image_id)
    where = f"{rec.source} image {rec.relpath}" if rec else f"image {image_id}"
    return f"near-duplicate of {where} (pHash distance {dist})"


def expand(coll: Collection, term: str, n: int = 20, policy: DownloadPolicy | None = None,
           phash_threshold: int = 4, providers: Any = None, progress: ProgressArg = None, *,
           query_vector: np.ndarray | None = None, k: int = 10, label: str | None = None,
           term_scores: bool | None = None, candidate_factor: float = 2.0,
           accept: AcceptFn | None = None) -> ExpansionReport:
    """Add up to ``n`` new web images for ``term`` to ``coll`` and report what happened.

    ``providers``: None (the environment's chain, by default DuckDuckGo then Wikimedia), a
    provider, a list of them, or a ProviderChain. Raises NetworkError when every provider failed;
    per-URL problems are recorded in the report, never raised. Scores before/after are those of
    ``query_vector`` when given, else of the term itself (see ``_term_query``). ``accept`` checks
    the embedded images against the query before anything is kept (see ``imrs.query.keep_filter``);
    the ones it drops are listed in ``report.off_topic``.
    """
    t0 = time.perf_counter()
    if n < 1:
        raise IMRSError(f"number of images must be at least 1, not {n}")
    if not 0 <= phash_threshold <= 64:
        raise IMRSError(f"pHash threshold must be between 0 and 64, not {phash_threshold}")
    term = clean_term(term)
    if not term:
        raise IMRSError("empty search term: give a word or two to search the web for")
    slug = safe_slug(term)
    folder = dynamic_folder(coll, slug)
    policy = policy or policy_for()
    chain = as_chain(providers)
    report = ExpansionReport(term=term, slug=slug, folder=str(folder), requested=n)
    stage = Reporter(progress)

    query = query_vector if query_vector is not None else _term_query(coll, term, term_scores)
    report.hits_before = _search(coll, query, k)
    report.best_before = _best(report.hits_before)

    want = min(max(int(n * candidate_factor), n + 10), 500)
    found, prov_report = chain.search(term, want)
    report.provider_report = [dict(r) for r in prov_report]
    report.candidates = len(found)
    for r in prov_report:  # unusable entries of a URL list etc.: named in the report, not dropped
        report.failures.extend((str(what), str(why)) for what, why in r.get("rejected", []))
    if not found:
        errors = [f"{r['provider']}: {r['error']}" for r in prov_report if r.get("error")]
        if errors:
            raise NetworkError(f"no image provider answered for '{term}': {'; '.join(errors)}")
        log.info("no images found for %r", term)
        report.hits_after, report.best_after = report.hits_before, report.best_before
        report.elapsed = time.perf_counter() - t0
        return report

    fill_missing_phashes(coll, progress)
    # URLs whose file is already in the collection are duplicates without a download.
    queue: list[ImageHit] = []
    names = [f"{DYNAMIC_PREFIX}{slug}/{url_filename(h.url)}" for h in found]
    known = coll.catalog.get_many([stable_id(rel) for rel in names])
    for hit, rel in zip(found, names, strict=True):
        if stable_id(rel) in known:
            report.duplicates.append((hit.url, f"already in the collection as {rel}"))
        else:
            queue.append(hit)

    folder.mkdir(parents=True, exist_ok=True)
    try:
        with staging_folder(coll, folder) as staging:
            staged = _download_and_dedupe(coll, queue, n, staging, policy, phash_threshold, report, stage)
            fault_point("expand.after_download")
            stage.close()  # before the encoder draws its own bar
            staged, vectors = _embed(coll, staged, report, progress, accept)
            _commit(coll, slug, term, label, staged, vectors, phash_threshold, report)
    finally:
        stage.close()
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when nothing was added (ever)

    report.hits_after = _search(coll, query, k)
    report.best_after = _best(report.hits_after)
    report.elapsed = time.perf_counter() - t0
    log.info("expansion %s", report.summary())
    return report


def _download_and_dedupe(coll: Collection, queue: list[ImageHit], n: int, staging: Path,
                         policy: DownloadPolicy, threshold: int, report: ExpansionReport,
                         stage: Reporter) -> list[_Staged]:
    """Download in rounds until ``n`` distinct images are staged or the candidates run out. The
    first round over-asks a little (some downloads always fail), later rounds fill the gap."""
    ref = catalog_hash_index(coll)
    batch = HashIndex()
    kept: list[_Staged] = []
    pos = 0
    while len(kept) < n and pos < len(queue):
        missing = n - len(kept)
        take = queue[pos:pos + missing + max(2, math.ceil(missing * 0.25))]
        done_before = pos
        pos += len(take)
        jobs = [(h.url, staging / url_filename(h.url)) for h in take]
        results = fetch_many(jobs, policy, progress=lambda s, d, t, b=done_before: stage(s, b + d, b + t))
        for hit, res in zip(take, results, strict=True):
            if not res.ok or res.path is None:
                report.failures.append((hit.url, res.reason or "download failed"))
                continue
            report.fetched += 1
            path = Path(res.path)
            try:
                h = phash_file(path)
            except Exception as exc:  # noqa: BLE001 - our own re-encoded JPEG; belt and braces
                report.failures.append((hit.url, f"cannot hash the downloaded image: {exc}"))
                path.unlink(missing_ok=True)
                continue
            match, dist = ref.nearest(h)
            if match is not None and dist <= threshold:
                report.duplicates.append((hit.url, _describe_match(coll, match, dist)))
                path.unlink(missing_ok=True)
                continue
            other, dist = batch.nearest(h)
            if other is not None and dist <= threshold:
                report.duplicates.append((hit.url, f"near-duplicate of {kept[other].hit.url} in this batch "
                                                   f"(pHash distance {dist})"))
                path.unlink(missing_ok=True)
                continue
            if len(kept) >= n:  # a surplus from over-asking: not needed
                path.unlink(missing_ok=True)
                continue
            batch.add([len(kept)], [h])
            kept.append(_Staged(hit, path, url_filename(hit.url), h, res.width, res.height))
    return kept


def _embed(coll: Collection, staged: list[_Staged], report: ExpansionReport,
           progress: ProgressArg, accept: AcceptFn | None) -> tuple[list[_Staged], np.ndarray]:
    if not staged:
        return [], np.zeros((0, coll.dim), np.float32)
    res = coll.encoder.embed_paths([s.path for s in staged], progress=relabel(progress, "embed"))
    for i, reason in res.failures:
        report.failures.append((staged[i].hit.url, f"cannot embed: {reason}"))
        staged[i].path.unlink(missing_ok=True)
    kept = [staged[i] for i in res.kept.tolist()]
    vectors = np.asarray(res.vectors, dtype=np.float32)
    if accept is not None and kept:
        mask, scores, floor = accept(vectors)
        for s, ok, score in zip(kept, mask.tolist(), scores.tolist(), strict=True):
            if not ok:
                report.off_topic.append((s.hit.url, f"scores {score:.3f} for the query, below {floor:.3f}"))
                s.path.unlink(missing_ok=True)
        kept = [s for s, ok in zip(kept, mask.tolist(), strict=True) if ok]
        vectors = vectors[np.asarray(mask, dtype=bool)]
    return kept, vectors


def _commit(coll: Collection, slug: str, term: str, label: str | None, staged: list[_Staged],
            vectors: np.ndarray, threshold: int, report: ExpansionReport) -> None:
    if not staged:
        return
    folder = dynamic_folder(coll, slug)
    with coll.writing("expand"):
        # Another expansion may have added the same picture while we were downloading.
        ref = catalog_hash_index(coll)
        rels = [f"{DYNAMIC_PREFIX}{slug}/{s.final_name}" for s in staged]
        known = coll.catalog.get_many([stable_id(r) for r in rels])
        records: list[ImageRecord] = []
        rows: list[int] = []
        moved: list[Path] = []
        for i, (s, rel) in enumerate(zip(staged, rels, strict=True)):
            if stable_id(rel) in known:
                report.duplicates.append((s.hit.url, f"already in the collection as {rel}"))
                continue
            match, dist = ref.nearest(s.phash)
            if match is not None and dist <= threshold:
                report.duplicates.append((s.hit.url, _describe_match(coll, match, dist)))
                continue
            final = folder / s.final_name
            coll.begin_changes()  # the intent record, before the first file lands
            st = s.path.stat()  # a rename keeps mtime and size
            rec = ImageRecord.for_path(
                rel, source="dynamic", label=label or term or slug, term=term, slug=slug,
                source_url=s.hit.url, provider=s.hit.provider or None, title=s.hit.title or None,
                license=s.hit.license or None, author=s.hit.author or None, page_url=s.hit.page_url or None,
                phash=s.phash, width=s.width, height=s.height, mtime=st.st_mtime, size=st.st_size)
            write_provenance(final, rec)  # first: an image in a dynamic folder always has its sidecar
            os.replace(s.path, final)
            moved.append(final)
            records.append(rec)
            rows.append(i)
        if moved:
            fault_point("expand.after_move")
        try:
            coll.add_dynamic(slug, records, vectors[rows] if rows else vectors[:0])
        except BaseException:
            for p in moved:
                p.unlink(missing_ok=True)
                sidecar_of(p).unlink(missing_ok=True)
            raise
        report.kept = len(records)
        report.added_ids = [r.id for r in records]
        _note_added(coll, [r.id for r in records], [int(r.phash or 0) for r in records])
