"""``text_search``: the one text-to-image search, on every backbone, with or without metadata.

1. **Visual ranking.** CLIP-like backbones embed the text themselves; image-only backbones go
   through hierarchy-aware ConSE (``conse``: words -> WordNet senses -> ImageNet classes -> the
   collection's images -> a prototype query vector in the backbone's own space).
2. **Metadata ranking** (``use_metadata``): what the collection says in words (``hybrid``).
3. **Web exemplars** (``web_exemplars``, off unless asked): web images for the text, as a query.
4. **Fusion** by weighted reciprocal rank; each hit says why it is there.

The coverage verdict needs scores that mean something for the query kind, and they come back
with the hits: CLIP cosines (``kind="text"``), class-space scores times the plan's closeness
(``kind="textmap"``: a query ImageNet cannot express scores low even when *some* image is
returned), or metadata match strengths when the collection's own words answered
(``kind="metadata"``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IMRSError
from ..progress import Progress
from .conse import ClassSpace, TextPlan
from .hybrid import HybridParams, fuse
from .index import text_index
from .wordnet import STOPWORDS, words_of

if TYPE_CHECKING:
    from ..layout import SearchHit
    from ..protocols import CollectionView
    from ..web.download import DownloadPolicy
    from .web import ExemplarReport

log = logging.getLogger(__name__)

#: a metadata match at least this strong, on at least ``METADATA_MIN_HITS`` of the top hits,
#: makes the verdict judge the metadata strengths instead of the visual scores
METADATA_STRONG = 0.8
METADATA_MIN_HITS = 2


@dataclass
class TextSearchResult:
    """``hits`` best first (``SearchHit.why`` says why each is there; ``score`` is the visual
    similarity, comparable with other searches); ``judged``: the scores the coverage verdict should
    judge, best first, of kind ``kind`` ("text" | "textmap" | "metadata")."""

    hits: list[SearchHit]
    judged: list[float]
    kind: str
    query_vector: np.ndarray | None = None
    plan: TextPlan | None = None
    notes: list[str] = field(default_factory=list)
    exemplars: ExemplarReport | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __iter__(self) -> Any:  # ``hits, judged, kind = text_search(...)``
        return iter((self.hits, self.judged, self.kind))


def _neighbour_fn(coll: CollectionView, ids: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    row_of = {int(i): r for r, i in enumerate(ids.tolist())}

    def neighbours(rows: np.ndarray, k: int, mapper: Any) -> np.ndarray:
        _, nb_ids = coll.index.search(mapper.vectors[rows], k)
        flat = np.fromiter((row_of.get(int(i), -1) for i in nb_ids.ravel().tolist()), dtype=np.int64,
                           count=nb_ids.size)
        return flat.reshape(nb_ids.shape)

    return neighbours  # type: ignore[return-value]


def conse_scores(coll: CollectionView, text: str) -> tuple[np.ndarray, np.ndarray, TextPlan]:
    """(class-space scores of every indexed image, their ids, the plan) for an image-only backbone."""
    ti = text_index(coll)
    mapper, ids = ti.conse()
    plan = ti.plan(text)
    space = ClassSpace(mapper.top_idx, mapper.top_prob, len(mapper.class_names))
    return space.scores(plan.lut), ids, plan


def judged_textmap(scores: np.ndarray, plan: TextPlan, k: int = 10) -> list[float]:
    """The ``k`` best class-space scores, times how close ImageNet's vocabulary is to the query."""
    top = np.sort(np.asarray(scores, np.float64))[::-1][:k]
    return [float(x) * plan.closeness for x in top]


#: Query vectors a collection remembers (per text, for its current set of images).
QUERY_VECTOR_CACHE = 256


class _QueryVectors:
    """The last ``QUERY_VECTOR_CACHE`` text query vectors of one collection, least recently used
    first out. A text asked again (a page rerun, an API client's usual queries) skips the text
    tower or ConSE's neighbour searches; the key holds the catalog's generation, so any write
    (an index, a growth, a prune) makes every remembered vector stale."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        with self._lock:
            vec = self._vectors.get(key)
            if vec is not None:
                self._vectors.move_to_end(key)
            return vec

    def put(self, key: tuple[str, str], vec: np.ndarray) -> np.ndarray:
        """Remember ``vec`` (as a read-only copy, which is returned)."""
        vec = np.array(vec, np.float32)
        vec.setflags(write=False)  # shared between callers: nobody may change it in place
        with self._lock:
            self._vectors[key] = vec
            self._vectors.move_to_end(key)
            while len(self._vectors) > QUERY_VECTOR_CACHE:
                self._vectors.popitem(last=False)
        return vec


def text_query_vector(coll: CollectionView, text: str) -> np.ndarray:
    """Unit query vector in ``coll``'s image space for ``text`` (the visual part of text search):
    the text tower where there is one, else hierarchy-aware ConSE's prototype. Read-only; a text
    asked again for the same set of images is answered from the collection's memory."""
    if coll.backbone_info.supports_text:  # ConSE never runs the model on the query: no warning
        coll.warn_if_query_runtime_differs()
    key = (text.strip(), coll.catalog.generation())
    memory = coll.cache("text_query_vectors", _QueryVectors)
    vec = memory.get(key)
    if vec is None:
        vec = memory.put(key, _visual_query(coll, text)[0])
    return vec


def _visual_query(coll: CollectionView, text: str) -> tuple[np.ndarray, str, tuple[np.ndarray, TextPlan] | None]:
    text = text.strip()
    if not text:
        raise IMRSError("empty text query")
    if coll.backbone_info.supports_text:
        return coll.encoder.embed_texts([text])[0], "text", None
    scores, ids, plan = conse_scores(coll, text)
    mapper, _ = text_index(coll).conse()
    nb = _neighbour_fn(coll, ids)
    ranked = mapper.rank_scores(scores, neighbours=lambda rows, k: nb(rows, k, mapper))
    return mapper.prototype(ranked), "textmap", (scores, plan)


@dataclass
class TextFusion:
    """``fuse_text_hits``'s answer: the fused hits (``why`` set), the metadata strength of every hit
    that has one, and the judged metadata strengths when the collection's words answered."""

    hits: list[SearchHit]
    strength: dict[int, float]
    metadata_judged: list[float] | None
    exemplars: ExemplarReport | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def fuse_text_hits(coll: CollectionView, text: str, visual: Sequence[SearchHit], query_vector: np.ndarray, k: int, *,
                   use_metadata: bool = True, web_exemplars: bool = False, n_exemplars: int = 8,
                   providers: Any = None, policy: DownloadPolicy | None = None, exclude_ids: Sequence[int] = (),
                   params: HybridParams | None = None,
                   progress: Progress | None = None, allowed: np.ndarray | None = None) -> TextFusion:
    """Fuse a visual ranking (``visual``: hits best first, from any pipeline -- give it a deep pool,
    e.g. ``HybridParams.visual_pool``) with the collection's words and, when asked, web exemplars.
    Returns the best ``k`` (``exclude_ids`` left out). ``allowed``: the ids a filter (``--where``)
    keeps; word and web matches outside it are dropped, as the visual ranking already dropped them."""
    p = params or HybridParams()
    timings: dict[str, float] = {}
    notes: list[str] = []
    q = np.asarray(query_vector, np.float32).reshape(-1)
    vis_ids = np.asarray([h.id for h in visual], np.int64)
    vis_scores = np.asarray([h.score for h in visual], np.float64)
    n_pool = len(vis_ids)
    meta_ids = np.zeros(0, np.int64)
    meta_strength = np.zeros(0, np.float32)
    meta_why: list[tuple[str, ...]] = []
    if use_metadata:
        t0 = time.perf_counter()
        meta_ids, meta_strength, meta_why = _metadata_matches(coll, text, p)
        if allowed is not None:
            keep = np.isin(meta_ids, allowed)
            meta_ids, meta_strength = meta_ids[keep], meta_strength[keep]
            meta_why = [w for w, k_ in zip(meta_why, keep.tolist(), strict=True) if k_]
        timings["metadata"] = time.perf_counter() - t0
    else:
        notes.append("metadata off: visual ranking only")
    extra_lists: list[tuple[str, np.ndarray]] = []
    exemplars = None
    web_ids = np.zeros(0, np.int64)
    if web_exemplars:
        from .web import exemplar_vector

        t0 = time.perf_counter()
        wq, exemplars = exemplar_vector(coll, text, n_exemplars, providers, policy, progress)
        notes.append(exemplars.summary())
        if wq is not None:
            web_ids = np.asarray([h.id for h in coll.search_vectors(wq, max(n_pool, k))[0]], np.int64)
            if allowed is not None:
                web_ids = web_ids[np.isin(web_ids, allowed)]
            extra_lists.append(("web", web_ids))
        timings["web"] = time.perf_counter() - t0
    # visual scores of candidates outside the visual pool (to order equally strong word matches,
    # and to report): read from the index, not searched again
    outside = np.setdiff1d(np.concatenate([meta_ids, web_ids]), vis_ids)
    score_of = dict(zip(vis_ids.tolist(), vis_scores.tolist(), strict=True))
    if len(outside):
        score_of.update(zip(outside.tolist(), (coll.index.get_vectors(outside) @ q).tolist(), strict=True))
    meta_vis = np.asarray([score_of.get(int(i), -1e9) for i in meta_ids.tolist()], np.float64)
    fused = fuse(vis_ids, vis_scores, meta_ids, meta_strength, meta_why, k, p, extra=extra_lists,
                 meta_visual=meta_vis)
    exclude = {int(i) for i in exclude_ids}
    chosen = [(int(i), why) for i, why in zip(fused.ids.tolist(), fused.why, strict=True) if int(i) not in exclude]
    known = {h.id: h for h in visual}
    fresh = [i for i, _ in chosen[: k + 10] if i not in known]  # a few spare: some may be gone
    made = {h.id: h for h in coll.hits_for(fresh, [score_of.get(i, float("nan")) for i in fresh])}
    hits = []
    for i, why in chosen:
        h = known.get(i) or made.get(i)
        if h is None:
            continue
        h.why = why or ("visual",)
        hits.append(h)
        if len(hits) >= k:
            break
    strength = dict(zip(meta_ids.tolist(), meta_strength.tolist(), strict=True))
    strong = [strength.get(h.id, 0.0) for h in hits]
    judged = None
    if use_metadata and sum(s >= METADATA_STRONG for s in strong) >= METADATA_MIN_HITS:
        judged = sorted(strong, reverse=True)
        notes.append(f"{sum(s >= METADATA_STRONG for s in strong)} of {len(hits)} hits matched by the "
                     "collection's own words")
    return TextFusion(hits, strength, judged, exemplars, notes, timings)


def text_class_space(coll: CollectionView, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, judged scores) of every indexed image for ``text`` on an image-only backbone: class-space
    scores times the plan's closeness, the scale the ``textmap`` coverage thresholds are set on."""
    scores, ids, plan = conse_scores(coll, text)
    return np.asarray(ids, np.int64), np.asarray(scores, np.float64) * plan.closeness


def textmap_scorer(coll: CollectionView, text: str) -> Callable[[np.ndarray], np.ndarray]:
    """``vectors -> judged scores`` for images outside the collection (web images before they are
    kept), on the same scale as ``text_class_space``."""
    mapper, _ = text_index(coll).conse()
    plan = text_index(coll).plan(text)

    def score(vectors: np.ndarray) -> np.ndarray:
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if not len(vectors):
            return np.zeros(0, np.float64)
        idx, prob = mapper.class_probs(vectors)
        return (plan.lut[idx] * prob).sum(axis=1).astype(np.float64) * plan.closeness

    return score


def text_search(coll: CollectionView, text: str, k: int = 10, *, use_metadata: bool = True, qe: int = 0,
                web_exemplars: bool = False, n_exemplars: int = 8, providers: Any = None,
                policy: DownloadPolicy | None = None, exclude_ids: Sequence[int] = (),
                params: HybridParams | None = None,
                progress: Progress | None = None) -> TextSearchResult:
    """Search ``coll`` for ``text`` (see the module docstring). ``use_metadata=False`` is pure
    visual search; ``web_exemplars`` fetches web images for the text (never stored)."""
    p = params or HybridParams()
    if k < 1:
        raise IMRSError(f"k must be at least 1, not {k}")
    t0 = time.perf_counter()
    q, kind, conse = _visual_query(coll, text)
    timings = {"encode": time.perf_counter() - t0}
    want = k + len(exclude_ids)
    pool = max(want, p.visual_pool) if (use_metadata or web_exemplars) else want
    t1 = time.perf_counter()
    visual = coll.search_vectors(q, pool, qe=qe)[0]
    timings["search"] = time.perf_counter() - t1
    notes: list[str] = []
    plan = None
    if conse is not None:
        scores, plan = conse
        judged = judged_textmap(scores, plan, k)
        notes.append(f"ImageNet reading: {plan.describe(text_index(coll).conse()[0].class_names)}")
    else:
        judged = [h.score for h in visual[:k]]
    fused = fuse_text_hits(coll, text, visual, q, k, use_metadata=use_metadata, web_exemplars=web_exemplars,
                           n_exemplars=n_exemplars, providers=providers, policy=policy, exclude_ids=exclude_ids,
                           params=p, progress=progress)
    if fused.metadata_judged is not None:
        kind, judged = "metadata", fused.metadata_judged
    timings.update(fused.timings)
    timings["total"] = time.perf_counter() - t0
    return TextSearchResult(fused.hits, judged, kind, q, plan, notes + fused.notes, fused.exemplars, timings)


def _metadata_matches(coll: CollectionView, text: str, p: HybridParams
                      ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """(image ids, strengths, why) of the metadata matches, strongest first (at most ``meta_pool``)."""
    ti = text_index(coll)
    try:
        meta = ti.metadata()
    except (OSError, IMRSError) as exc:
        log.warning("metadata search unavailable: %s", exc)
        return np.zeros(0, np.int64), np.zeros(0, np.float32), []
    if not len(meta):
        return np.zeros(0, np.int64), np.zeros(0, np.float32), []
    content = " ".join(w for w in words_of(text) if w not in STOPWORDS)
    qvec = None
    if content:
        try:
            from .minilm import embed

            meta.ensure_embeddings(embed)  # stored with the metadata index, not in the query cache
            if meta.dirty:
                from .hybrid import meta_path

                meta.save(meta_path(coll))
            qvec = ti.sentences([content])[0]
        except IMRSError as exc:  # no sentence model: words and WordNet kinds still match
            log.info("metadata matched by words only: %s", exc)
    m = meta.match(text, qvec, p)
    rows = np.flatnonzero(m.strength >= p.min_strength)
    if not len(rows):
        return np.zeros(0, np.int64), np.zeros(0, np.float32), []
    rows = rows[np.argsort(-m.strength[rows], kind="stable")][: p.meta_pool]
    return meta.ids[rows], m.strength[rows], [m.why(int(r), p.min_strength) for r in rows]

