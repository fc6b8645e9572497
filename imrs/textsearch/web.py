"""Web exemplars for a text query: the top web images for the words, embedded, as a visual query.

When the network is up, the quickest way to know what "okapi" looks like is to look: the same
providers and the same hostile-input download guard as expansion (``imrs.expansion.sources``,
``imrs.web.download``) fetch a few images into a temporary folder, the collection's own encoder
embeds them, and their mean becomes one more ranking for ``text_search`` to fuse. Nothing is kept:
the folder is deleted before this returns, and the collection grows only when the person asks
for it (``imrs expand`` / the app's grow button).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IMRSError, NetworkError
from ..progress import Progress

if TYPE_CHECKING:
    from ..protocols import CollectionView
    from ..web.download import DownloadPolicy

log = logging.getLogger(__name__)


@dataclass
class ExemplarReport:
    term: str
    candidates: int = 0
    fetched: int = 0
    used: int = 0
    providers: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> str:
        if self.error:
            return f"web exemplars for '{self.term}': {self.error}"
        return f"web exemplars for '{self.term}': {self.used} image(s) used of {self.candidates} found"


def exemplar_vector(coll: CollectionView, text: str, n: int = 8, providers: Any = None,
                    policy: DownloadPolicy | None = None,
                    progress: Progress | None = None
                    ) -> tuple[np.ndarray | None, ExemplarReport]:
    """(unit query vector in ``coll``'s image space, report); the vector is None when nothing could
    be fetched (no network, no results) -- the report says why, and text search carries on."""
    vectors, report = exemplar_vectors(coll, text, n, providers, policy, progress)
    if vectors is None:
        return None, report
    v = vectors.mean(axis=0)
    return v / max(float(np.linalg.norm(v)), 1e-12), report


def exemplar_vectors(coll: CollectionView, text: str, n: int = 8, providers: Any = None,
                     policy: DownloadPolicy | None = None,
                     progress: Progress | None = None
                     ) -> tuple[np.ndarray | None, ExemplarReport]:
    """(one unit vector per fetched web image of ``text``, report); None when nothing could be
    fetched. The images are deleted before this returns."""
    from ..expansion.sources import as_chain, policy_for, providers_for
    from ..expansion.terms import clean_term
    from ..web.download import fetch_many

    term = clean_term(text)
    report = ExemplarReport(term=term)
    policy = policy or policy_for()
    try:
        chain = providers_for() if providers is None else as_chain(providers)
        found, prov = chain.search(term, max(2 * n, n + 4))
    except (NetworkError, IMRSError) as exc:
        report.error = str(exc)
        return None, report
    report.providers = [dict(r) for r in prov]
    report.candidates = len(found)
    if not found:
        errors = [f"{r['provider']}: {r['error']}" for r in prov if r.get("error")]
        report.error = "; ".join(errors) if errors else "no images found"
        return None, report
    with tempfile.TemporaryDirectory(prefix="imrs-exemplars-") as tmp:
        jobs = [(h.url, Path(tmp) / f"{i:03d}.jpg") for i, h in enumerate(found)]
        results = fetch_many(jobs, policy, progress=progress, stage="web exemplars")
        paths = [r.path for r in results if r.ok and r.path is not None][:n]
        report.fetched = sum(r.ok for r in results)
        if not paths:
            reasons = sorted({r.reason or "?" for r in results if not r.ok})
            report.error = "no image could be downloaded" + (f" ({reasons[0]})" if reasons else "")
            return None, report
        emb = coll.encoder.embed_paths(paths)
    if not len(emb.vectors):
        report.error = "no downloaded image could be embedded"
        return None, report
    report.used = len(emb.vectors)
    return np.asarray(emb.vectors, np.float32), report
