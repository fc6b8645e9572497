"""Text search in ``imrs bench``: hierarchy-aware ConSE and hybrid search on a labelled folder.

Called by ``imrs.bench.quality.bench_text`` with the benchmark's cached embeddings (nothing is
re-embedded) for ``--improvements conse`` and ``--improvements hybrid``:

- *hierarchy-aware ConSE* (class space, + consensus, query vector = what search returns with
  metadata off): uses no labels, so class-name prompts do not leak the answer;
- *hybrid*: the same visual ranking fused with the folder labels (and file names) as the
  collection's metadata -- what ``imrs search --text`` does on a folder of named sub-folders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..bench import metrics as M
from ..catalog import ImageRecord
from .conse import ClassSpace, HierConse, TextPlan
from .hybrid import HybridParams, MetadataIndex, fuse, record_texts
from .index import SEARCH_CONSE, imagenet_class_embeddings, sentence_cache
from .wordnet import STOPWORDS, gloss, table, words_of

log = logging.getLogger(__name__)

Record = Callable[[str, dict[str, np.ndarray], str], None]
Neighbours = Callable[[np.ndarray, int], np.ndarray]


def hier_plans(prompts: Sequence[str], space: ClassSpace) -> list[TextPlan]:
    wn = table()
    cache = sentence_cache()
    hier = HierConse(imagenet_class_embeddings(), cache.get, wn, gloss=lambda w: gloss(w, wn))
    plans = [hier.plan(p, space) for p in prompts]
    cache.save()
    return plans


def metadata_for(relpaths: Sequence[str]) -> MetadataIndex:
    """The metadata a collection of these files has with no CSV: folder labels and file names."""
    return MetadataIndex.from_texts((row, record_texts(ImageRecord.for_path(str(rel))))
                                    for row, rel in enumerate(relpaths))


def hybrid_scores(db: np.ndarray, query_vecs: np.ndarray, prompts: Sequence[str], meta: MetadataIndex,
                  params: HybridParams | None = None, k: int = 10) -> np.ndarray:
    """(queries, n) scores whose order is the fused ranking (rows are image row numbers)."""
    from .minilm import embed

    p = params or HybridParams()
    meta.ensure_embeddings(embed)
    contents = [" ".join(w for w in words_of(t) if w not in STOPWORDS) for t in prompts]
    qtext = sentence_cache().get([c or t for c, t in zip(contents, prompts, strict=True)])
    out = np.zeros((len(prompts), len(db)), np.float32)
    for qi, text in enumerate(prompts):
        vis = db @ query_vecs[qi]
        pool = np.argsort(-vis, kind="stable")[: p.visual_pool]
        m = meta.match(text, qtext[qi], p)
        rows = np.flatnonzero(m.strength >= p.min_strength)
        rows = rows[np.argsort(-m.strength[rows], kind="stable")][: p.meta_pool]
        fused = fuse(pool, vis[pool], meta.ids[rows], m.strength[rows], [m.why(int(r), p.min_strength) for r in rows],
                     k, p, meta_visual=vis[rows])
        # everything fused ranks above the rest, in fused order; the rest keep their visual order
        score = vis - float(vis.max()) - 2.0
        score[fused.ids] = 1.0 + np.linspace(1.0, 0.0, len(fused.ids), dtype=np.float32)
        out[qi] = score
    return out


def bench_text_search(db: np.ndarray, labels: np.ndarray, present: np.ndarray, prompts: Sequence[str],
                      relpaths: Sequence[Any], encoder: Any, feature_norm: float, neighbours: Neighbours,
                      record: Record, conse: bool, hybrid: bool) -> None:
    """Adds rows through ``record(method, metrics, note)``."""
    qv = None
    if not getattr(encoder, "supports_text", False) and getattr(encoder, "has_classifier", False):
        from ..textmap import ConseMapper

        mapper = ConseMapper.from_encoder(encoder, feature_norm=feature_norm, params=SEARCH_CONSE).fit(db)
        space = ClassSpace(mapper.top_idx, mapper.top_prob, len(mapper.class_names))
        plans = hier_plans(prompts, space)
        s = np.stack([space.scores(pl.lut) for pl in plans])
        ranked = np.stack([mapper.rank_scores(x, neighbours=neighbours) for x in s])
        qv = np.stack([mapper.prototype(x) for x in ranked])
        if conse:
            record("hierarchical ConSE class space", M.score_quality(s, labels, present, k=10),
                   "WordNet senses -> every ImageNet class below them (weighed by sense, closeness, "
                   "the collection's vote) x classifier probabilities; no labels used")
            record("hierarchical ConSE + consensus", M.score_quality(ranked, labels, present, k=10),
                   f"scores averaged over {mapper.params.consensus_k} image-space neighbours")
            record("hierarchical ConSE query vector", M.text_quality(db, labels, qv, present, k=10),
                   "what imrs search --text --no-metadata returns on an image-only backbone")
    elif getattr(encoder, "supports_text", False):
        qv = np.asarray(encoder.embed_texts(list(prompts)), np.float32)
    if hybrid and qv is not None:
        meta = metadata_for([str(r) for r in relpaths])
        record("hybrid, metadata off", M.text_quality(db, labels, qv, present, k=10),
               "visual ranking only (the --no-metadata switch)")
        record("hybrid: visual + folder labels", M.score_quality(hybrid_scores(db, qv, prompts, meta), labels,
                                                                 present, k=10),
               "folder labels and file names as the collection's words, fused by weighted RRF")
