"""Hierarchy-aware ConSE: query words -> WordNet senses -> ImageNet-1k classes -> image scores.

Plain ConSE (``imrs.textmap``) ties a query to the five ImageNet class names a sentence model finds
closest. That fails on the commonest words: "dog" is closest to *wolf*, *dingo* and *coyote*, none
of the 118 dog breeds; "horse" lands on *parallel bars*. WordNet knows better, and ImageNet's
classes are WordNet synsets, so here:

1. **Words -> senses.** The query's longest noun n-grams ("grand piano", "dog") are looked up in
   WordNet (``wordnet.concepts``); every physical sense of each is kept.
2. **Senses -> classes.** A sense with ImageNet-1k classes at or below it scores an image by the
   probability mass the classifier puts on that whole subtree ("dog": all breeds; "vehicle": every
   car, boat and plane class). A sense with none below it ("wheelchair", "minaret") climbs to its
   nearest hypernym that has some and lets the sentence model pick, *within that subtree only*, the
   classes closest to the sense's gloss ("wheelchair" -> chairs, not wheels); each step up costs
   closeness (``climb_decay``).
3. **Senses are weighed** by how common they are (WordNet tag counts), how close they are to
   ImageNet (step 2), and by the collection itself: a sense whose best images the classifier is
   sure about outvotes one the collection has no images of ("bass" the fish in a folder of fish).
4. **No sense at all** (names, misspellings, abstract words): plain ConSE over the sentence
   embedding of the whole query, with closeness from how near the best class gloss is.

The result is a ``TextPlan``: one weight per ImageNet class (the LUT the class-space scores are
made from) plus a closeness in [0, 1] that says how well ImageNet's vocabulary covers the query at
all; judged scores (coverage verdict) are class-space scores times closeness, so "a photo of
freedom" reads as no match instead of as its least-bad class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .wordnet import STOPWORDS, Concept, WordNetTable, concepts, table, words_of

log = logging.getLogger(__name__)

EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class HierParams:
    """Knobs, defaults chosen on Caltech-101 class-name prompts (``imrs bench --improvements conse``)."""

    prior_smooth: float = 1.0  # added to every sense's tag count
    subtree_sim: float = 0.5  # share of a subtree class's weight that follows its gloss similarity
    kin_max: int = 3  # a sense with at most this many classes below it also weighs its relatives
    kin_weight: float = 0.3  # ... at most this much (the closest relative by gloss)
    climb_decay: float = 0.5  # closeness lost per hypernym step for senses with no class below
    climb_top: int = 5  # classes the sentence model picks for such a sense
    climb_temperature: float = 0.6  # softmax temperature on z-scored cosine similarities
    climb_bonus: float = 2.0  # z-score bonus for classes below the nearest covered hypernym
    climb_kinship: float = 0.7  # ... times this per further step up to the common hypernym
    vote_top: int = 10  # the collection's best images per sense that vote
    vote_floor: float = 0.002  # a sense the collection has no images of keeps this much vote
    fallback_top: int = 5  # plain ConSE over the whole sentence
    fallback_temperature: float = 0.3  # on z-scored similarities, as in textmap
    fallback_min_sim: float = 0.25  # cosine below which the best class is "not close" (closeness 0)
    fallback_full_sim: float = 0.65  # cosine at which it is fully close
    sentence_weight: float = 0.5  # weight of plain ConSE for uncovered words and far senses
    far_closeness: float = 0.1  # senses this far from every class let the whole sentence speak


@dataclass
class SenseChoice:
    """How one sense of one query word was read (for explanations and tests)."""

    word: str
    wnid: str
    name: str  # first lemma
    how: str  # "subtree" | "climbed" | "sentence"
    steps: int  # hypernym steps climbed (0 for subtree)
    n_classes: int
    prior: float
    closeness: float
    vote: float
    weight: float = 0.0  # share of the word, after voting


@dataclass
class TextPlan:
    text: str
    lut: np.ndarray  # (n_classes,) weight per ImageNet class, max 1
    closeness: float  # 0..1: how well ImageNet's classes cover the query
    senses: list[SenseChoice] = field(default_factory=list)
    summary: str = ""  # ``describe()`` of the plan this one was restored from (cached plans)

    def top_classes(self, names: Sequence[str], n: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.lut, kind="stable")[:n]
        return [(names[i], float(self.lut[i])) for i in order if self.lut[i] > 0]

    def describe(self, names: Sequence[str] | None = None) -> str:
        if not self.senses and self.summary:
            return self.summary
        chosen = sorted(self.senses, key=lambda s: -s.weight)[:3]
        parts = [f"{s.word}->{s.name} ({s.how}, {s.weight:.2f})" for s in chosen if s.weight > 0]
        line = ", ".join(parts) or "no WordNet sense"
        if names is not None:
            line += "; classes: " + ", ".join(f"{c} {w:.2f}" for c, w in self.top_classes(names, 4))
        return f"{line}; closeness {self.closeness:.2f}"


class ClassSpace:
    """The collection's images as sparse classifier distributions (top ``k`` classes each)."""

    def __init__(self, top_idx: np.ndarray, top_prob: np.ndarray, n_classes: int) -> None:
        self.top_idx = np.asarray(top_idx, dtype=np.int32)
        self.top_prob = np.asarray(top_prob, dtype=np.float32)
        self.n_classes = int(n_classes)

    def __len__(self) -> int:
        return len(self.top_idx)

    def scores(self, lut: np.ndarray) -> np.ndarray:
        """``s_i = sum_c lut[c] p_i(c)`` over each image's kept classes."""
        return (np.asarray(lut, np.float32)[self.top_idx] * self.top_prob).sum(axis=1)

    def vote(self, lut: np.ndarray, top: int) -> float:
        """Mean score of the ``top`` best images: is there anything in the collection the
        classifier confidently calls this?"""
        s = self.scores(lut)
        if not len(s):
            return 0.0
        m = min(top, len(s))
        return float(np.partition(s, len(s) - m)[len(s) - m:].mean())


def _unit_max(x: np.ndarray) -> np.ndarray:
    m = float(x.max()) if x.size else 0.0
    return x / m if m > 0 else x


class HierConse:
    """Builds ``TextPlan``s. ``class_emb``: (n_classes, d) unit sentence embeddings of the ImageNet
    class glosses; ``embed``: the sentence model (only called for senses without a class below them
    and for the fallback; a cache in front of it makes repeated queries free)."""

    def __init__(self, class_emb: np.ndarray, embed: EmbedFn, wn: WordNetTable | None = None,
                 params: HierParams | None = None, gloss: Callable[[str], str] | None = None) -> None:
        self.wn = wn or table()
        self.class_emb = np.asarray(class_emb, np.float32)
        self.n_classes = len(self.class_emb)
        if self.wn.in1k and len(self.wn.in1k) != self.n_classes:
            raise ValueError(f"WordNet table lists {len(self.wn.in1k)} ImageNet classes, the classifier "
                             f"has {self.n_classes}")
        self.embed = embed
        self.params = params or HierParams()
        self.gloss = gloss or self._lemma_text

    def _lemma_text(self, wnid: str) -> str:
        return ", ".join(self.wn.lemmas(wnid))

    # -- one sense -------------------------------------------------------------------------------------
    def _add_kin(self, lut: np.ndarray, wnid: str, below: list[int], sense_vec: np.ndarray) -> None:
        """A leaf-like sense also weighs its closest relatives a little: the classifier splits its
        belief between look-alike siblings (Caltech's leopards are mostly "cheetah" to it), so the
        classes under the first hypernym with more classes, the ones whose gloss is closest most."""
        p = self.params
        kin: set[int] = set()
        for parent in self.wn.parents(wnid):
            anchors, _ = self.wn.covered_ancestors(parent)
            for a in anchors:
                kin |= set(self.wn.classes_below(a))
        kin -= set(below)
        if not kin:
            return
        idx = np.asarray(sorted(kin), dtype=np.int64)
        sims = self.class_emb @ sense_vec
        z = (sims - sims.mean()) / max(float(sims.std()), 1e-6)
        w = np.exp((z[idx] - z[idx].max()) / p.climb_temperature)
        top = np.argsort(-w, kind="stable")[:p.climb_top]
        lut[idx[top]] = np.maximum(lut[idx[top]], p.kin_weight * w[top] / max(float(w[top].max()), 1e-12))

    def _kinship(self, wnid: str, nearest: int) -> np.ndarray:
        """(n_classes,) in [0, 1]: ``climb_kinship ** k`` where ``k`` is how many hypernym steps
        above the nearest covered ancestor the class's lowest common hypernym with ``wnid`` is."""
        p = self.params
        out = np.zeros(self.n_classes, np.float32)
        done = np.zeros(self.n_classes, bool)
        for anc, d in sorted(self.wn.ancestors(wnid).items(), key=lambda kv: kv[1]):
            below = self.wn.classes_below(anc)
            if not below:
                continue
            idx = np.asarray(below, dtype=np.int64)
            new = idx[~done[idx]]
            out[new] = p.climb_kinship ** max(d - nearest, 0)
            done[new] = True
        return out

    def _sense_lut(self, wnid: str, sense_vec: np.ndarray | None) -> tuple[np.ndarray, str, int, float]:
        """(class weights with max 1, how, steps climbed, closeness)."""
        p = self.params
        lut = np.zeros(self.n_classes, np.float32)
        below = self.wn.classes_below(wnid)
        if below:
            lut[below] = 1.0
            if sense_vec is not None and len(below) > 1 and p.subtree_sim > 0:
                # every class of the subtree counts, the ones the gloss is closest to a bit more
                # ("lamp": table lamp before candle)
                sims = self.class_emb @ sense_vec
                z = (sims - sims.mean()) / max(float(sims.std()), 1e-6)
                zb = z[below]
                w = np.exp((zb - zb.max()) / p.climb_temperature)
                lut[below] = (1 - p.subtree_sim) + p.subtree_sim * w
            if sense_vec is not None and len(below) <= p.kin_max and p.kin_weight > 0:
                self._add_kin(lut, wnid, below, sense_vec)
            return lut, "subtree", 0, 1.0
        anchors, steps = self.wn.covered_ancestors(wnid)
        if sense_vec is None or not anchors:
            return lut, "climbed", max(steps, 0), 0.0
        sims = self.class_emb @ sense_vec
        z = (sims - sims.mean()) / max(float(sims.std()), 1e-6)
        # the sentence model over every class, with WordNet relatives favoured by how close their
        # common hypernym is: "emu" -> ratites (ostrich) first, then other birds, then animals
        z += p.climb_bonus * self._kinship(wnid, steps)
        top = np.argsort(-z, kind="stable")[:p.climb_top]
        w = np.exp((z[top] - z[top].max()) / p.climb_temperature)
        lut[top] = _unit_max(w.astype(np.float32))
        return lut, "climbed", steps, float(p.climb_decay ** steps)

    def _word(self, concept: Concept, space: ClassSpace | None, sense_vecs: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, float, list[SenseChoice]]:
        p = self.params
        luts, choices = [], []
        total = sum(s.count + p.prior_smooth for s in concept.senses)
        for s in concept.senses:
            lut, how, steps, close = self._sense_lut(s.wnid, sense_vecs.get(s.wnid))
            if close <= 0:
                continue
            vote = space.vote(lut, p.vote_top) if space is not None and len(space) else 1.0
            luts.append(lut)
            choices.append(SenseChoice(concept.text, s.wnid, (self.wn.lemmas(s.wnid) or [s.wnid])[0], how, steps,
                                       int((lut > 0).sum()), (s.count + p.prior_smooth) / total, close, vote))
        if not choices:
            return np.zeros(self.n_classes, np.float32), 0.0, []
        raw = np.array([c.prior * c.closeness * max(c.vote, p.vote_floor) for c in choices])
        w = raw / raw.sum()
        for c, wi in zip(choices, w, strict=True):
            c.weight = float(wi)
        lut = _unit_max(np.einsum("s,sc->c", w.astype(np.float32), np.stack(luts)))
        closeness = float(sum(c.weight * c.closeness for c in choices))
        return lut, closeness, choices

    # -- the sentence fallback ---------------------------------------------------------------------------
    def _sentence(self, vec: np.ndarray) -> tuple[np.ndarray, float]:
        p = self.params
        sims = self.class_emb @ vec
        z = (sims - sims.mean()) / max(float(sims.std()), 1e-6)
        top = np.argsort(-z, kind="stable")[:p.fallback_top]
        w = np.exp((z[top] - z[top].max()) / p.fallback_temperature)
        lut = np.zeros(self.n_classes, np.float32)
        lut[top] = _unit_max(w.astype(np.float32))
        best = float(sims.max())
        close = float(np.clip((best - p.fallback_min_sim) / (p.fallback_full_sim - p.fallback_min_sim), 0, 1))
        return lut, close

    # -- the query -------------------------------------------------------------------------------------
    def sentence_texts(self, text: str) -> tuple[list[str], list[str]]:
        """(the texts the sentence model must embed for ``text``, their keys): the query prompt and the
        gloss of every sense. Exposed so a caller can batch them through a cache."""
        keys, texts = [], []
        for c in self.concepts(text):
            for s in c.senses:
                if s.wnid not in keys:
                    keys.append(s.wnid)
                    texts.append(self.gloss(s.wnid))
        keys.append("")
        texts.append(prompt(text))
        return texts, keys

    def concepts(self, text: str) -> list[Concept]:
        return concepts(text, self.wn)

    def plan(self, text: str, space: ClassSpace | None = None,
             vectors: dict[str, np.ndarray] | None = None) -> TextPlan:
        """The class weights and closeness of ``text``. ``vectors``: sentence embeddings keyed as in
        ``sentence_texts`` (computed here when not given)."""
        p = self.params
        if vectors is None:
            texts, keys = self.sentence_texts(text)
            vectors = dict(zip(keys, self.embed(texts), strict=True))
        found = self.concepts(text)
        parts: list[tuple[np.ndarray, float, float]] = []  # (lut, closeness, weight)
        senses: list[SenseChoice] = []
        covered = 0
        for c in found:
            lut, close, choices = self._word(c, space, vectors)
            senses += choices
            if close > 0:
                parts.append((lut, close, close))
                covered += c.n_words
        content = [w for w in words_of(text) if w not in STOPWORDS]
        uncovered = max(0, len(content) - covered) / max(len(content), 1)
        best = max((c for _, c, _ in parts), default=0.0)
        # the whole sentence, through plain ConSE, speaks for words no sense covers and for
        # queries whose senses are far from every class ("Garfield" the president, not the cat)
        lut, close = self._sentence(vectors[""])
        weight = 1.0 if not parts else p.sentence_weight * close * max(uncovered, float(best < p.far_closeness))
        if weight > 0:
            parts.append((lut, close, weight))
            senses.append(SenseChoice(text, "", "sentence", "sentence", 0, int((lut > 0).sum()), 1.0, close,
                                      1.0, weight))
        if not parts:
            return TextPlan(text, np.zeros(self.n_classes, np.float32), 0.0, senses)
        weights = np.array([w for _, _, w in parts], np.float64)
        if weights.sum() <= 0:
            weights = np.ones(len(parts))
        weights /= weights.sum()
        lut = _unit_max(sum(w * lu for (lu, _, _), w in zip(parts, weights, strict=True)).astype(np.float32))
        closeness = float(sum(w * c for (_, c, _), w in zip(parts, weights, strict=True)))
        return TextPlan(text, lut, closeness, senses)


def prompt(text: str) -> str:
    """``a photo of a {text}``, unless the text already says so."""
    text = " ".join(text.split())
    said = text.lower().startswith(("a photo", "a picture", "an image", "a photograph"))
    return text if said else f"a photo of a {text}"
