"""Per-collection text-search state: ``text_index(coll)`` (one per collection object).

What it holds, each built on first use and kept on disk in the collection's state folder so a new
process starts warm:

- the **class space** (``textmap_<backbone>.npz``): every indexed image's sparse ImageNet-1k
  distribution, keyed by a fingerprint of the index's ids (rebuilt when images come or go);
- the **plans** (``textsearch_plans_<backbone>.json``): the class weights each recent query
  text was turned into, keyed by that fingerprint too (a repeated query needs neither WordNet nor
  the sentence model);
- the **metadata index** (``textsearch_meta.npz``, see ``hybrid``), keyed by the catalog's content.

Nothing here is module-global: the state is kept on the collection through ``coll.cache`` (the
collection never imports text search), so two collections in one process (the app serving
several folders, tests) never share or overwrite each other's state. Collection-independent caches (sentence
embeddings, ImageNet class-gloss embeddings) live in the user cache (``cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import EmptyCollectionError, IMRSError
from ..fsutil import atomic_savez, atomic_write_json, read_json
from ..textmap import ConseParams
from .cache import SentenceCache, cache_root, class_embeddings, later
from .conse import ClassSpace, HierConse, HierParams, TextPlan

if TYPE_CHECKING:
    from ..protocols import CollectionView
    from ..textmap import ConseMapper
    from .hybrid import MetadataIndex

log = logging.getLogger(__name__)

CLASS_SPACE_VERSION = 2  # textmap_<backbone>.npz layout (1: before ids were stored)
PLAN_VERSION = 1
PLAN_LIMIT = 500
HEAD_VERSION = 1
#: ConSE's image side for text search: the prototype averages the 20 best images (10 in plain
#: ConSE; 20 measured +0.01 mAP@10 on Caltech-101 with hierarchy-aware class weights)
SEARCH_CONSE = ConseParams(prototype_size=20)
#: queries and sense glosses remembered (~1.5 kB each): read whole by every new process
SENTENCE_LIMIT = 5000


def fingerprint(ids: np.ndarray) -> str:
    """Order-free digest of a set of image ids: which images a cache was built over."""
    return hashlib.sha1(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()[:16]


class IndexRows:
    """The collection's vectors by row, read from its vector index on demand (no second copy)."""

    def __init__(self, coll: CollectionView, ids: np.ndarray) -> None:
        self._coll = coll
        self.ids = np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: Any) -> np.ndarray:
        return self._coll.index.get_vectors(self.ids[np.asarray(rows)])


_SENTENCES: dict[str, SentenceCache] = {}  # one per cache file: a process-wide, collection-free cache
_SENTENCES_LOCK = threading.Lock()


def sentence_cache(cache_dir: Path | None = None) -> SentenceCache:
    """The user-level sentence-embedding cache (texts are the same whatever the collection), under
    ``cache_dir`` (a collection's ``settings.model_cache_dir()``; None: the environment's)."""
    from .minilm import DIM, MODEL_NAME, embed

    path = cache_root(cache_dir) / "sentences.npz"
    with _SENTENCES_LOCK:
        cache = _SENTENCES.get(str(path))
        if cache is None:
            cache = _SENTENCES[str(path)] = SentenceCache(path, embed, MODEL_NAME, DIM, limit=SENTENCE_LIMIT)
        return cache


def imagenet_class_embeddings(cache_dir: Path | None = None) -> np.ndarray:
    """(1000, 384) sentence embeddings of the ImageNet-1k classes as ``"lemmas: definition"``."""
    from . import wordnet
    from .minilm import MODEL_NAME, embed

    wn = wordnet.table()
    return class_embeddings(lambda: [wordnet.gloss(w, wn) for w in wn.in1k], len(wn.in1k), embed, MODEL_NAME,
                            tag=f"wordnet-gloss-{wordnet.glosses_digest()}", cache_dir=cache_dir)


class TextIndex:
    """Lazily built text-search state of one collection (see the module docstring)."""

    def __init__(self, coll: CollectionView, params: HierParams | None = None) -> None:
        self._coll_ref = weakref.ref(coll)  # the collection owns us; no reference cycle
        self._cache_dir = coll.settings.model_cache_dir()  # machine-wide files, where its settings say
        self.params = params or HierParams()
        self._lock = threading.RLock()
        self._space: tuple[str, ConseMapper, np.ndarray] | None = None
        self._hier: HierConse | None = None
        self._plans: dict[str, Any] | None = None
        self._meta: tuple[str, MetadataIndex] | None = None

    @property
    def coll(self) -> CollectionView:
        coll = self._coll_ref()
        if coll is None:
            raise IMRSError("the collection behind this text index was closed")
        return coll

    def invalidate(self) -> None:
        """Forget everything held in memory (files stay; their fingerprints decide reuse)."""
        with self._lock:
            self._space = None
            self._plans = None
            self._meta = None

    # -- the class space (image-only backbones) -------------------------------------------------------
    def _head_path(self) -> Path:
        coll = self.coll
        tag = hashlib.sha1(f"{coll.backbone}|{coll.weights}|{coll.checkpoint}".encode()).hexdigest()[:12]
        return cache_root(self._cache_dir) / f"head_{coll.backbone}_{tag}.npz"

    def _classifier_head(self) -> tuple[np.ndarray, np.ndarray]:
        """The backbone's ImageNet classifier (weight, bias), cached per machine so that mapping a few
        new images later does not need the model loaded only for its last layer."""
        path = self._head_path()
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["version"]) == HEAD_VERSION:
                    return z["weight"], z["bias"]
        except (OSError, ValueError, KeyError):
            pass
        w, b = self.coll.encoder.classifier_head()
        try:
            atomic_savez(path, version=np.asarray(HEAD_VERSION), weight=np.asarray(w, np.float32),
                         bias=np.asarray(b, np.float32))
        except OSError as exc:
            log.warning("cannot cache the classifier head in %s: %s", path, exc)
        return w, b

    def _class_names(self) -> list[str]:
        from ..encoders import imagenet_class_names

        return imagenet_class_names()

    def conse(self) -> tuple[ConseMapper, np.ndarray]:
        """(mapper fitted on every indexed image, their ids). Raises ``TextMapUnavailableError``
        for a backbone with neither a text tower nor an ImageNet classifier."""
        from ..textmap import ConseMapper, TextMapUnavailableError, estimate_feature_norm

        coll = self.coll
        info = coll.backbone_info
        if not getattr(info, "has_classifier", True):
            raise TextMapUnavailableError(
                f"backbone {coll.backbone} has no text encoder and no ImageNet classifier to map text "
                "through; index with a CLIP backbone (e.g. clip_vit_b32) or efficientnet_lite0")
        ids = coll.index.ids()
        if not len(ids):
            raise EmptyCollectionError("the collection is empty: index a folder before searching by text")
        fp = fingerprint(ids)  # cheap; the embeddings are only read when it changes
        with self._lock:
            if self._space is not None and self._space[0] == fp:
                return self._space[1], self._space[2]
            path = coll.state_dir / f"textmap_{coll.backbone}.npz"
            top_idx = top_prob = None
            norm = None
            if path.exists():
                try:
                    with np.load(path, allow_pickle=False) as z:
                        if int(z["version"]) == CLASS_SPACE_VERSION and str(z["fingerprint"]) == fp:
                            top_idx, top_prob = z["top_idx"], z["top_prob"]
                            norm, ids = float(z["feature_norm"]), z["ids"]
                except (OSError, ValueError, KeyError) as exc:
                    log.info("rebuilding %s: %s", path, exc)
            if top_idx is None:
                encoder = coll.encoder
                if not getattr(encoder, "has_classifier", False) or not encoder.class_names:
                    raise TextMapUnavailableError(
                        f"backbone {coll.backbone} has no text encoder and no ImageNet classifier to map "
                        "text through; index with a CLIP backbone (e.g. clip_vit_b32) or efficientnet_lite0")
                emb = coll.all_embeddings()
                emb = emb.select(np.isin(emb.ids, ids))  # map what the index holds
                ids = emb.ids
                norm = estimate_feature_norm(encoder, [coll.abspath(str(r)) for r in emb.relpaths[:64]])
                mapper = ConseMapper(None, None, encoder.class_names, norm, SEARCH_CONSE, head=self._classifier_head,
                                     cache_dir=self._cache_dir)
                top_idx, top_prob = mapper.class_probs(emb.vectors)
                try:
                    atomic_savez(path, version=np.asarray(CLASS_SPACE_VERSION), fingerprint=np.asarray(fp),
                                 ids=np.asarray(ids, np.int64), top_idx=top_idx, top_prob=top_prob,
                                 feature_norm=np.asarray(norm))
                except OSError as exc:
                    log.warning("cannot write %s: %s", path, exc)
            mapper = ConseMapper(None, None, self._class_names(), float(norm), SEARCH_CONSE, head=self._classifier_head,
                                 cache_dir=self._cache_dir)
            mapper.fit(IndexRows(coll, ids), top_idx, top_prob)
            self._space = (fp, mapper, np.asarray(ids, np.int64))
            return mapper, self._space[2]

    def class_space(self) -> ClassSpace:
        mapper, _ = self.conse()
        return ClassSpace(mapper.top_idx, mapper.top_prob, len(mapper.class_names))

    def hier(self) -> HierConse:
        with self._lock:
            if self._hier is None:
                from . import wordnet

                wn = wordnet.table()
                cache = sentence_cache(self._cache_dir)
                self._hier = HierConse(imagenet_class_embeddings(self._cache_dir), lambda texts: cache.get(texts), wn,
                                       self.params, gloss=lambda w: wordnet.gloss(w, wn))
            return self._hier

    # -- plans -------------------------------------------------------------------------------------------
    def _plans_path(self) -> Path:
        return self.coll.state_dir / f"textsearch_plans_{self.coll.backbone}.json"

    def _plan_key(self, text: str, fp: str) -> str:
        params = hashlib.sha1(json.dumps(asdict(self.params), sort_keys=True).encode()).hexdigest()[:8]
        return f"{fp}|{params}|{' '.join(text.split())}"

    def plan(self, text: str) -> TextPlan:
        """The class weights of ``text`` over this collection (hierarchy-aware ConSE), cached."""
        mapper, ids = self.conse()
        fp = self._space[0] if self._space else fingerprint(ids)
        key = self._plan_key(text, fp)
        with self._lock:
            if self._plans is None:
                try:
                    data = read_json(self._plans_path())
                    self._plans = data["plans"] if data.get("version") == PLAN_VERSION else {}
                except (OSError, ValueError, KeyError, TypeError):
                    self._plans = {}
            hit = self._plans.get(key)
        if hit is not None:
            try:
                lut = np.zeros(len(mapper.class_names), np.float32)
                lut[np.asarray(hit["c"], dtype=np.int64)] = np.asarray(hit["w"], dtype=np.float32)
                return TextPlan(text, lut, float(hit["closeness"]), [], hit.get("describe", ""))
            except (KeyError, TypeError, ValueError, IndexError):
                pass
        plan = self.hier().plan(text, self.class_space())
        nz = np.flatnonzero(plan.lut)
        entry = {"c": nz.tolist(), "w": [round(float(x), 5) for x in plan.lut[nz]],
                 "closeness": plan.closeness, "describe": plan.describe(mapper.class_names)}
        plan.summary = entry["describe"]
        with self._lock:
            assert self._plans is not None
            self._plans.pop(key, None)
            self._plans[key] = entry
            self._plans = dict(list(self._plans.items())[-PLAN_LIMIT:])
        later(self._save_plans)
        return plan

    def _save_plans(self) -> None:
        with self._lock:
            keep = dict(self._plans or {})
        try:
            atomic_write_json(self._plans_path(), {"version": PLAN_VERSION, "plans": keep})
        except OSError as exc:
            log.warning("cannot write %s: %s", self._plans_path(), exc)

    # -- metadata --------------------------------------------------------------------------------------
    def metadata(self) -> MetadataIndex:
        from .hybrid import catalog_fingerprint, load_or_build_metadata

        coll = self.coll
        fp = catalog_fingerprint(coll.catalog)
        with self._lock:
            if self._meta is not None and self._meta[0] == fp:
                return self._meta[1]
            meta = load_or_build_metadata(coll, fp)
            self._meta = (fp, meta)
            return meta

    def sentences(self, texts: Sequence[str]) -> np.ndarray:
        return sentence_cache(self._cache_dir).get(texts)


def text_index(coll: CollectionView) -> TextIndex:
    """``coll``'s text-search state (class space, query plans, metadata index), built on first use
    and kept on the collection object: one per collection, gone with it."""
    return coll.cache("textsearch", lambda: TextIndex(coll))
