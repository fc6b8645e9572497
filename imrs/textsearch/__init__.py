"""Text search that finds what people type, with a text tower (CLIP) and without one.

- ``search.text_search``: the entry point (visual + metadata + optional web exemplars, fused);
  ``fuse_text_hits`` adds the words and exemplars to any visual ranking (``imrs.query`` uses it),
  ``text_class_space``/``textmap_scorer`` give the judged scores for image-only backbones;
- ``conse``: hierarchy-aware ConSE through WordNet for image-only backbones;
- ``hybrid``: the collection's own words (labels, file names, captions, terms, EXIF) and the fusion;
- ``index.TextIndex``: per-collection state, ``text_index(coll)``;
- ``minilm``: the sentence model in NumPy (no torch on the text path); ``cache``: on-disk caches;
- ``wordnet``: the shipped WordNet 3.0 slice; ``web``: web exemplars.

Importing this package is cheap (NumPy only); models load on first use.
"""

from __future__ import annotations

from .conse import HierConse, HierParams, TextPlan
from .hybrid import HybridParams
from .index import TextIndex, text_index
from .search import (
    TextFusion,
    TextSearchResult,
    fuse_text_hits,
    text_class_space,
    text_query_vector,
    text_search,
    textmap_scorer,
)

__all__ = [
    "HierConse",
    "HierParams",
    "HybridParams",
    "TextIndex",
    "TextPlan",
    "TextFusion",
    "TextSearchResult",
    "fuse_text_hits",
    "text_class_space",
    "text_index",
    "text_query_vector",
    "text_search",
    "textmap_scorer",
]
