"""The one search-and-grow loop: a ``Query`` in, a ``QueryOutcome`` out.

IMRS exists for this loop: the collection answers a query, IMRS judges whether the answer is good
enough, and when it is not (and the caller asked for growth) it fetches images of the concept
from the web, keeps those that really show it, adds them and answers again. The CLI, the app and
any API call only this module; none of them holds coverage, term or growth logic of its own, so
the three can no longer drift apart.

What is judged ("the verdict") depends on the query and the backbone, and is decided here only:

- image queries and text on a text-capable backbone (CLIP): the cosine scores of the best hits;
- text on an image-only backbone: the class-space (ConSE) scores of ``imrs.textmap``, because the
  cosine scores of its prototype query vector are high whether or not the concept is present.

The verdict looks at a fixed depth of results (``JUDGE_DEPTH``), not at the ``k`` the person
asked for, so ``-k 1`` on a perfect match is not "weak" for lack of company. The query image
itself, when it is part of the collection, is left out of what is judged and marked in the hits.
The loop's data (``Query``, ``Verdict``, ``QueryOutcome``) is in ``imrs.querytypes``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import WEB_CHECK_IMAGES, Settings
from .errors import IMRSError, NetworkError
from .expansion.coverage import (
    LIKELY,
    NO_MATCH,
    UNCERTAIN,
    CoverageThresholds,
    check_coverage,
    is_clutter_label,
    thresholds_with_source,
)
from .expansion.judge import JUDGE_DEPTH, decide, gather
from .expansion.judge import context as judge_context
from .expansion.terms import clean_term, readable_label
from .filters import Where
from .progress import ProgressArg, Reporter
from .querytypes import ImageInput, Query, QueryOutcome, TermCandidate, Verdict

__all__ = ["ImageInput", "Query", "QueryOutcome", "TermCandidate", "Verdict", "answer", "ask_web", "encode",
           "grow_term", "grow_terms", "hit_confidence", "judged_kind", "keep_filter", "propose_terms", "run_query"]

if TYPE_CHECKING:
    from PIL import Image

    from .collection import Collection
    from .expansion.batch import BatchReport, TermResult
    from .expansion.grow import ExpansionReport
    from .layout import SearchHit

log = logging.getLogger(__name__)

#: A metadata match this strong is the query's own words (a kind or a similar phrase scores less).
EXACT_WORDS = 0.999
#: Exact word matches needed before the collection's words alone decide the verdict.
METADATA_EXACT_HITS = 2
#: A hit this close to the query is the query image itself (or a byte-identical copy).
SAME_IMAGE = 0.9995
MAX_TERMS = 6

# ---------------------------------------------------------------------------------------------
# Thresholds of one collection
# ---------------------------------------------------------------------------------------------


def collection_thresholds(coll: Collection, kind: str, settings: Settings | None = None
                          ) -> tuple[CoverageThresholds, str]:
    """The thresholds ``coll`` is judged by for a query kind, and where they came from."""
    from .expansion.calibrate import load_calibration

    return thresholds_with_source(coll.backbone, kind, calibrated=load_calibration(coll), settings=settings)


def judged_kind(coll: Collection, query: Query) -> str:
    if query.kind == "image":
        return "image"
    return "text" if coll.backbone_info.supports_text else "textmap"


# ---------------------------------------------------------------------------------------------
# Encoding and scoring
# ---------------------------------------------------------------------------------------------


def load_query_image(image: ImageInput) -> Image.Image:
    """A path, bytes or a PIL image, decoded the one way every image is (``imrs.imageio``)."""
    from .imageio import load_image

    if isinstance(image, str | os.PathLike) and not Path(image).exists():
        raise IMRSError(f"query image not found: {image}")
    return load_image(image)


def encode(coll: Collection, query: Query) -> np.ndarray:
    if query.kind == "text":
        from .textsearch import text_query_vector

        return text_query_vector(coll, str(query.text))
    return coll.encoder.embed_images([load_query_image(query.image)])[0]


def _own_ids(coll: Collection, query: Query) -> set[int]:
    """Ids of the query image when it is a file of the collection."""
    out = {int(i) for i in query.exclude_ids}
    if query.kind == "image" and isinstance(query.image, str | os.PathLike):
        from .ids import stable_id

        # the path as given (a symlinked collection resolves elsewhere), then fully resolved
        for candidate in (Path(os.path.abspath(query.image)), Path(query.image).resolve()):
            try:
                out.add(stable_id(candidate.relative_to(coll.root).as_posix()))
            except (ValueError, OSError):
                continue
    return out


def _class_size(coll: Collection, label: str) -> int | None:
    if not label or is_clutter_label(label):
        return None
    counts = coll.catalog.label_counts()
    return counts.get(label)


def answer(coll: Collection, query: Query, vector: np.ndarray, settings: Settings,
           timings: dict[str, float] | None = None, where: Where | None = None) -> tuple[list[SearchHit], Verdict]:
    """The hits for ``query`` and the verdict on them (no growth); ``where``: its filter, resolved."""
    timings = timings if timings is not None else {}
    from .retrieval.stages import stages_for

    own = _own_ids(coll, query)
    qe = settings.qe if query.qe is None else int(query.qe)
    stages = stages_for(coll)
    fuse_words = query.kind == "text" and (query.metadata or query.web_exemplars)
    depth = max(query.k, JUDGE_DEPTH, stages.pool if stages.active else 0) + len(own) + 1
    if fuse_words:  # a deep visual pool for the fusion with the collection's words
        from .textsearch import HybridParams

        depth = max(depth, HybridParams().visual_pool)
    t0 = time.perf_counter()
    where = where or (Where(query.where, coll.catalog) if query.where else None)  # one resolution for all below
    hits = coll.search_vectors(vector, depth, qe=qe, where=where)[0]
    plain = hits if qe == 0 else coll.search_vectors(vector, depth, where=where)[0]  # judged without QE
    if stages.active:  # re-ranked in the improved space; scores stay the plain ones the verdict reads
        order, _ = stages.rerank(coll, vector, np.asarray([h.id for h in hits], dtype=np.int64))
        pos = {int(i): n for n, i in enumerate(order.tolist())}
        hits = sorted(hits, key=lambda h: pos.get(h.id, len(pos)))
    timings["search"] = timings.get("search", 0.0) + time.perf_counter() - t0
    fusion = None
    if fuse_words:  # -- text: labels, captions, terms (and web exemplars) fused in (imrs.textsearch)
        from .textsearch import fuse_text_hits

        t0 = time.perf_counter()
        web: dict[str, Any] = {}
        if query.web_exemplars:  # the same providers and download limits as growth
            web = dict(zip(("policy", "providers"), _policy_and_providers(settings), strict=True))
        # the collection's words may name images the filter leaves out
        allowed = where.allowed_ids() if where is not None else None
        fusion = fuse_text_hits(coll, str(query.text), hits, vector, len(hits), use_metadata=query.metadata,
                                web_exemplars=query.web_exemplars, allowed=allowed, **web)
        hits = fusion.hits
        timings["words"] = timings.get("words", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    kind = judged_kind(coll, query)
    thr, source = collection_thresholds(coll, kind, settings)

    same = {h.id for h in plain if h.id in own or (kind == "image" and h.score >= SAME_IMAGE)}
    per_hit: dict[int, float]
    if kind == "textmap":
        from .textsearch import text_class_space  # ConSE class-space scores times closeness

        ids, scores = text_class_space(coll, str(query.text))
        keep = ~np.isin(ids, list(same)) & (np.isin(ids, where.allowed_ids()) if where is not None else True)
        ids, scores = ids[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")[:JUDGE_DEPTH]
        judged = [float(s) for s in scores[order]]
        judged_ids = [int(i) for i in ids[order]]
        top_label = ""
        if len(order):
            rec = coll.catalog.get(int(ids[order[0]]))
            top_label = rec.label if rec else ""
        lookup = dict(zip(ids.tolist(), scores.tolist(), strict=True))
        per_hit = {h.id: lookup.get(h.id, 0.0) for h in hits}
        what = "class-space score"
    else:
        rest = [h for h in plain if h.id not in same][:JUDGE_DEPTH]
        judged = [h.score for h in rest]
        judged_ids = [h.id for h in rest]
        top_label = rest[0].label if rest else ""
        per_hit = {h.id: h.score for h in hits}
        what = "score"
    hit_thr = {h.id: thr for h in hits}
    related_only = False
    if fusion is not None and fusion.metadata_judged is not None:
        # the collection's own words answered: judge their match strengths; hits they matched get
        # their confidence from those, the others keep the visual one. Words that only name a
        # relative ("okapi" is a kind of giraffe to WordNet, a similar sentence) are no proof: the
        # pixels judge, and the answer is at best uncertain.
        meta_thr, meta_source = collection_thresholds(coll, "metadata", settings)
        from .textsearch.hybrid import HybridParams, names_category

        # a folder of a kind answers a category ("dalmatian" for "dog"); for anything narrower only
        # the query's own words do
        bar = HybridParams().kind_strength - 1e-6 if names_category(str(query.text)) else EXACT_WORDS
        exact = sum(x >= bar for x in fusion.metadata_judged)
        related_only = exact < min(meta_thr.min_good, METADATA_EXACT_HITS)
        if not related_only:
            kind, thr, source = "metadata", meta_thr, meta_source
            judged = fusion.metadata_judged[:JUDGE_DEPTH]
            top_label, what = (hits[0].label if hits else ""), "metadata match"
        for h in hits:
            if fusion.strength.get(h.id, 0.0) > 0:
                per_hit[h.id], hit_thr[h.id] = fusion.strength[h.id], meta_thr
    cov = check_coverage(judged, thr, what=what, class_size=_class_size(coll, top_label))
    label = thr.confidence(cov.best) if judged else NO_MATCH
    if cov.weak and label == LIKELY:  # a strong best hit alone (too few good ones) is not coverage
        label = UNCERTAIN
    verdict = Verdict(cov.weak, cov.reason, kind, judged, cov.best, source, label, thr, cov.n_good,
                      folder=top_label if top_label and not is_clutter_label(top_label) else "")
    judged_label = ""
    if kind != "metadata" and source != "env":  # hand-set thresholds win over a fitted judge
        from .expansion.calibrate import load_judges
        from .textsearch import text_index

        model = load_judges(coll).get(kind)
        if model is not None:
            closeness = float(text_index(coll).plan(str(query.text)).closeness) if kind == "textmap" else None
            ev = gather(judge_context(coll), kind, judged_ids, judged, vector if kind == "image" else None,
                        closeness)
            d = decide(model, ev, settings.coverage_precision, settings.coverage_confidence)
            verdict = Verdict(d.weak, d.reason, kind, judged, cov.best, "calibrated", d.outcome, thr, cov.n_good,
                              d.probability, folder=ev.top_label)
            judged_label = ev.top_label
    if related_only and verdict.label == LIKELY:
        verdict.label = UNCERTAIN
        verdict.reason += "; the collection's words name only relatives of it"

    out = []
    for h in hits:
        if h.id in same:
            if h.id in own:  # the query image itself: leave it out of the answer
                continue
            h.why = ("same image",)
        h.confidence = hit_confidence(verdict, hit_thr.get(h.id, thr), per_hit.get(h.id, h.score), h.label,
                                      judged_label)
        out.append(h)
        if len(out) >= query.k:
            break
    timings["verdict"] = timings.get("verdict", 0.0) + time.perf_counter() - t0
    return out, verdict


_RANK = {NO_MATCH: 0, UNCERTAIN: 1, LIKELY: 2}


def hit_confidence(verdict: Verdict, thr: CoverageThresholds, score: float, label: str, judged_label: str) -> str:
    """A hit's badge follows the verdict: no hit is surer than the answer as a whole (okapis are
    not a "likely match" for "giraffe" when the judge is unsure the collection has giraffes), and
    when a fitted judge found the concept, the hits of the folder it found it in are likely
    matches down to the floor a genuine image of a concept reaches (a real watch is not "no match"
    for scoring below the best-hit bar)."""
    own = thr.confidence(score)
    if verdict.label == LIKELY and judged_label and label == judged_label and score >= thr.floor:
        return LIKELY
    if _RANK[own] > _RANK[verdict.label]:
        return verdict.label
    return own


# ---------------------------------------------------------------------------------------------
# What to search the web for
# ---------------------------------------------------------------------------------------------


def propose_terms(coll: Collection, query: Query, vector: np.ndarray, hits: Sequence[SearchHit],
                  verdict: Verdict) -> list[TermCandidate]:
    """Candidate web search terms, best first. A text query proposes itself. An image query is
    never named silently: the labels of its neighbours count only when they are real matches
    (at or above the good-hit bar) and never come from clutter folders; CLIP zero-shot and the
    backbone's ImageNet classifier add their guesses; the person (or ``auto_confirm_term``) picks."""
    if query.kind == "text":
        return [TermCandidate(clean_term(str(query.text)), 1.0, "text")]
    thr = verdict.thresholds
    good_min = thr.good_min if thr else 1.0
    votes: dict[str, float] = defaultdict(float)
    n_good: dict[str, int] = defaultdict(int)
    for h in hits:
        if h.label and h.score >= good_min and not is_clutter_label(h.label) and h.why != ("same image",):
            votes[h.label] += float(h.score)
            n_good[h.label] += 1
    sizes = coll.catalog.label_counts() if votes else {}
    neighbours = [TermCandidate(readable_label(label), total / n_good[label], "neighbours")
                  for label, total in sorted(votes.items(), key=lambda kv: -kv[1])
                  if n_good[label] >= min(2, sizes.get(label, 2))]  # one lucky look-alike names nothing
    model: list[TermCandidate] = []
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    encoder = coll.encoder
    if getattr(encoder, "supports_text", False):
        from .expansion.terms import imagenet_names, prompt_vectors

        labels = [lb for lb in dict.fromkeys([*coll.catalog.labels(), *imagenet_names()])
                  if not is_clutter_label(lb)]
        if labels:
            sims = prompt_vectors(coll, labels) @ q
            for i in np.argsort(-sims)[:MAX_TERMS]:
                model.append(TermCandidate(readable_label(labels[i]), float(sims[i]), "clip"))
    elif getattr(encoder, "has_classifier", False) and getattr(encoder, "class_names", None):
        from .textmap import DEFAULT_FEATURE_NORM

        weight, bias = encoder.classifier_head()
        logits = (weight @ q) * DEFAULT_FEATURE_NORM + bias
        p = np.exp(logits - logits.max())
        p /= p.sum()
        for i in np.argsort(-p)[:MAX_TERMS]:
            model.append(TermCandidate(readable_label(encoder.class_names[i]), float(p[i]), "imagenet"))
    # Neighbours lead only when they are likely matches; otherwise the model's guess comes first.
    strong = bool(neighbours) and thr is not None and neighbours[0].score >= thr.best_min
    out = neighbours + model if strong else model[:1] + neighbours + model[1:]
    seen: set[str] = set()
    unique = []
    for c in out:
        key = c.term.casefold()
        if c.term and key not in seen:
            seen.add(key)
            unique.append(c)
    return unique[:MAX_TERMS]


# ---------------------------------------------------------------------------------------------
# Growth
# ---------------------------------------------------------------------------------------------


def keep_filter(coll: Collection, query: Query, vector: np.ndarray, settings: Settings
                ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, float]]:
    """``vectors -> (keep mask, scores, floor)``: a downloaded image is kept only when it scores
    for the query (cosine to the image or CLIP text, class-space score for text on an image-only
    backbone) at or above the calibrated floor. Search engines return logos, maps and diagrams
    for many terms; unchecked, those would carry the term's label into later searches."""
    kind = judged_kind(coll, query)
    thr, _ = collection_thresholds(coll, kind, settings)
    floor = thr.floor
    if kind == "textmap":
        from .textsearch import textmap_scorer

        score = textmap_scorer(coll, str(query.text))
    else:
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if kind == "text":
            q = coll.encoder.embed_texts([str(query.text)])[0]

        def score(vectors: np.ndarray) -> np.ndarray:
            return np.asarray(vectors, np.float32) @ q

    def check(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        s = score(vectors)
        return s >= floor, s, floor

    return check


def _policy_and_providers(settings: Settings) -> tuple[Any, Any]:
    from .expansion.sources import policy_for, providers_for

    return policy_for(settings), providers_for(settings)


def grow_term(coll: Collection, term: str, settings: Settings | None = None, n: int | None = None,
              progress: ProgressArg = None, *, query_vector: np.ndarray | None = None, k: int = 10,
              accept: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, float]] | None = None,
              providers: Any = None) -> ExpansionReport:
    """Grow ``coll`` with up to ``n`` web images of ``term``: the one door to growth for one term.

    ``imrs expand`` and the page's batch tab reach it through ``grow_terms``; a query's growth
    (``run_query``) and the API's grow job call it with ``query_vector`` and ``accept``
    (``keep_filter``), which check the downloads against the query they grow for."""
    from .expansion.grow import expand

    s = settings or coll.settings  # the collection's, read once when it was opened
    policy, default_providers = _policy_and_providers(s)
    return expand(coll, term, n=n or s.expand_n, policy=policy, phash_threshold=s.expand_phash_distance,
                  providers=providers if providers is not None else default_providers, progress=progress,
                  query_vector=query_vector, k=k, accept=accept)


def grow_terms(coll: Collection, terms: Iterable[str], settings: Settings | None = None, n: int | None = None,
               progress: ProgressArg = None, *, providers: Any = None,
               on_term: Callable[[TermResult], None] | None = None) -> BatchReport:
    """``grow_term`` for each of ``terms`` (``imrs expand``, the page's batch tab): terms naming
    the same folder grow once, a failing term is reported and the next one runs, and progress
    counts the terms (stage ``"terms"``) around each term's own stages (``expansion.batch``)."""
    from .expansion.batch import run_batch

    s = settings or coll.settings  # the collection's, read once when it was opened
    chain = providers if providers is not None else _policy_and_providers(s)[1]  # one chain for every term
    return run_batch(terms, lambda term, p: grow_term(coll, term, s, n, p, providers=chain), progress, on_term)


def run_query(coll: Collection, query: Query, settings: Settings | None = None,
              progress: ProgressArg = None, *, providers: Any = None) -> QueryOutcome:
    """Answer ``query``; when it asked for growth and the verdict is weak, grow and answer again.

    Growth needs a term: a text query is its own term; an image query uses ``query.term``, or the
    best proposed candidate when ``settings.auto_confirm_term`` is on. A failed growth (offline,
    nothing found) is reported in ``error``; the hits are still the collection's answer."""
    query.validate()
    s = settings or coll.settings  # the collection's, read once when it was opened
    timings: dict[str, float] = {}
    t_all = t0 = time.perf_counter()
    vector = encode(coll, query)
    timings["encode"] = time.perf_counter() - t0
    where = Where(query.where, coll.catalog) if query.where else None  # the search and the web check share it
    hits, verdict = answer(coll, query, vector, s, timings, where)
    t0 = time.perf_counter()
    terms = propose_terms(coll, query, vector, hits, verdict)
    timings["terms"] = time.perf_counter() - t0
    from .retrieval.stages import stages_for

    outcome = QueryOutcome(query, hits, verdict, terms, timings=timings, stages=stages_for(coll).names)
    ask = query.expand if query.ask_web is None else query.ask_web
    if ask and verdict.label == UNCERTAIN and (query.term or terms):
        ask_web(coll, query, outcome, s, providers, vector=None if verdict.kind == "textmap" else vector, where=where)
    if query.expand and outcome.verdict.weak:
        _grow(coll, query, vector, s, outcome, progress, providers)
    timings["total"] = time.perf_counter() - t_all
    return outcome


def ask_web(coll: Collection, query: Query, outcome: QueryOutcome, s: Settings, providers: Any = None,
            n: int = WEB_CHECK_IMAGES, vector: np.ndarray | None = None, where: Where | None = None) -> None:
    """An uncertain verdict asks the web: a few images of the term (the confirmed one, else the best
    proposed) are fetched with the growth's providers and download guard, embedded, compared with the
    collection within the query's filter (``where``, as ``answer`` resolved it) and the query ``vector`` (None for
    text on an image-only backbone) by ``webcheck.web_test``, and deleted. A clear answer replaces
    "uncertain"; no network or too few images leave the verdict as it was and say why. Timed ("web_check")."""
    from .expansion.webcheck import web_test
    from .textsearch.web import exemplar_vectors

    v = outcome.verdict
    term = clean_term(query.term) if query.term else outcome.terms[0].term
    t0 = time.perf_counter()
    try:
        policy, default_providers = _policy_and_providers(s)
        vectors, report = exemplar_vectors(coll, term, n, providers if providers is not None else default_providers,
                                           policy)
        if vectors is None:
            v.web = {"term": term, "error": report.error}
            v.reason += f"; web check of '{term}': {report.error}"
            return
        from .expansion.calibrate import load_judges
        scores, ids = coll.index.search(np.asarray(vectors, np.float32), 10, where=where)  # the filter holds here too

        test = web_test(judge_context(coll), vectors, scores, ids, v.folder, term, model=load_judges(coll).get(v.kind),
                        p1=v.probability, precision=s.coverage_precision, confidence=s.coverage_confidence,
                        query_vector=vector)
        if test is None:
            v.web = {"term": term, "error": f"only {len(vectors)} web image(s)"}
            v.reason += f"; web check of '{term}': too few web images ({len(vectors)})"
            return
        v.web = {"term": term, "exemplars": test.exemplars, "outcome": test.outcome,
                 "probability": None if test.probability is None else round(test.probability, 4),
                 **{k: round(x, 4) for k, x in test.evidence.items()}}
        v.reason += "; " + test.describe()
        if test.weak is not None:  # a fitted web check also makes the forced decision
            v.weak = test.weak
        if test.outcome != UNCERTAIN:
            v.label, v.weak = test.outcome, test.outcome == NO_MATCH
            for h in outcome.hits:  # the badges follow the new verdict
                if h.why == ("same image",):
                    continue
                if test.outcome == NO_MATCH:
                    h.confidence = NO_MATCH
                elif v.folder and h.label == v.folder and v.thresholds is not None and h.score >= v.thresholds.floor:
                    h.confidence = LIKELY
    finally:
        outcome.timings["web_check"] = time.perf_counter() - t0


def _grow(coll: Collection, query: Query, vector: np.ndarray, s: Settings, outcome: QueryOutcome,
          progress: ProgressArg, providers: Any) -> None:
    term = clean_term(query.term) if query.term else None
    if term is None and (query.kind == "text" or s.auto_confirm_term) and outcome.terms:
        term = outcome.terms[0].term
    if not term:
        outcome.error = ("coverage is weak; confirm a search term to grow the collection "
                         + (f"(candidates: {', '.join(t.term for t in outcome.terms[:3])})"
                            if outcome.terms else "(no candidate: give one with --term)"))
        return
    t0 = time.perf_counter()
    reporter = Reporter(progress)
    try:
        report = grow_term(coll, term, s, query.n_images, reporter if reporter.active else None,
                           query_vector=vector, k=query.k, accept=keep_filter(coll, query, vector, s),
                           providers=providers)
    except (NetworkError, OSError) as exc:
        outcome.error = str(exc) if isinstance(exc, IMRSError) else f"{type(exc).__name__}: {exc}"
        return
    finally:
        reporter.close()
        outcome.timings["grow"] = time.perf_counter() - t0
    outcome.report = report
    if report.kept:
        # Text on an image-only backbone: its query vector is a prototype of the collection's
        # best images and has to be rebuilt over the grown collection.
        again = encode(coll, query) if outcome.verdict.kind == "textmap" else vector
        outcome.hits_before, outcome.verdict_before = outcome.hits, outcome.verdict
        outcome.hits, outcome.verdict = answer(coll, replace(query, expand=False), again, s, outcome.timings)
        report.hits_after = outcome.hits
        report.best_after = outcome.verdict.best if outcome.verdict.kind != "textmap" else report.best_after
