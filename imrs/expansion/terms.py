"""What to search the web for: the term behind an image query, and term lists for batch runs.

For an image query there is no text, so a term has to be inferred. With a text-capable backbone
(CLIP) it is zero-shot classification of the query vector against ``"a photo of a {label}"``
prompts. Without one, the labels of the *good* hits name the concept (coverage is weak because
there are too few of them, not none); when no hit is good, the backbone's own ImageNet classifier
is asked (EfficientNet-Lite0 has one), and only as a last resort the dominant label of the weak
hits, which is usually wrong for a query the collection does not cover.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IMRSError

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)

PROMPT = "a photo of a {}"
MAX_TERM_CHARS = 200  # a search engine query, not an essay


@dataclass
class TermGuess:
    term: str
    score: float
    method: str  # "text" | "clip-zero-shot" | "good-hits" | "classifier" | "top-hits"
    candidates: list[tuple[str, float]] = field(default_factory=list)


def readable_label(label: str) -> str:
    """``Faces_easy`` -> ``Faces easy``, ``n01440764 tench`` stays: labels are folder names."""
    return " ".join(label.replace("_", " ").split())


_PROMPT_CACHE: weakref.WeakKeyDictionary[Any, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()
_PROMPT_LOCK = threading.Lock()


def _prompt_vectors(encoder: Any, labels: Sequence[str]) -> np.ndarray:
    """Prompt embeddings, cached per (encoder, label): the vocabulary grows with every expansion,
    and re-embedding 1000 ImageNet prompts per query would cost seconds."""
    with _PROMPT_LOCK:
        cache = _PROMPT_CACHE.setdefault(encoder, {})
        missing = [lb for lb in dict.fromkeys(labels) if lb not in cache]
    if missing:
        vecs = encoder.embed_texts([PROMPT.format(readable_label(lb)) for lb in missing])
        with _PROMPT_LOCK:
            for lb, v in zip(missing, vecs, strict=True):
                cache[lb] = np.asarray(v, dtype=np.float32)
    with _PROMPT_LOCK:
        return np.stack([cache[lb] for lb in labels])


def _imagenet_names() -> list[str]:
    try:
        from ..encoders import imagenet_class_names

        return list(imagenet_class_names())
    except Exception as exc:  # noqa: BLE001 - an optional vocabulary
        log.debug("no ImageNet class names: %s", exc)
        return []


def _vote(hits: Sequence[Any]) -> list[tuple[str, float]]:
    votes: dict[str, float] = defaultdict(float)
    for h in hits:
        if h.label:
            votes[h.label] += max(float(h.score), 0.0) + 1e-6
    return sorted(votes.items(), key=lambda kv: -kv[1])


def infer_term(coll: Collection, query_vector: np.ndarray, hits: Sequence[Any] | None = None, *,
               good_min: float | None = None, wide_vocabulary: bool = True, top: int = 5) -> TermGuess | None:
    """Best guess at the words for an image query; None when nothing at all can be said.

    ``wide_vocabulary`` adds the 1000 ImageNet class names to the collection's labels for CLIP
    zero-shot (a weakly covered query is, by definition, often about something the labels lack).
    """
    q = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    encoder = coll.encoder
    if getattr(encoder, "supports_text", False):
        labels = list(coll.catalog.labels())
        if wide_vocabulary:
            labels = list(dict.fromkeys([*labels, *_imagenet_names()]))
        if labels:
            sims = _prompt_vectors(encoder, labels) @ q
            order = np.argsort(-sims)[:top]
            cands = [(readable_label(labels[i]), float(sims[i])) for i in order]
            return TermGuess(cands[0][0], cands[0][1], "clip-zero-shot", cands)
    hits = list(hits or [])
    if good_min is not None:
        good = _vote([h for h in hits if h.score >= good_min])
        if good:
            return TermGuess(readable_label(good[0][0]), good[0][1], "good-hits", good[:top])
    if getattr(encoder, "has_classifier", False) and getattr(encoder, "class_names", None):
        # The head wants raw features; the query is L2-normalised. Without the bias the argmax is
        # scale-invariant, and on the shared photos it matched the full classifier 14/14.
        weight, _ = encoder.classifier_head()
        logits = weight @ q
        order = np.argsort(-logits)[:top]
        names = encoder.class_names
        cands = [(readable_label(names[i]), float(logits[i])) for i in order]
        return TermGuess(cands[0][0], cands[0][1], "classifier", cands)
    votes = _vote(hits)
    if votes:
        return TermGuess(readable_label(votes[0][0]), votes[0][1], "top-hits", votes[:top])
    return None


def clean_term(term: str) -> str:
    return " ".join(str(term).split())[:MAX_TERM_CHARS]


def parse_terms(text: str, csv_mode: bool | None = None) -> list[str]:
    """Terms from file content: one per line, or a CSV with a ``term`` column (else the first).

    Blank lines and ``#`` comments are skipped; repeated terms (same words) are kept once.
    """
    lines = text.splitlines()
    if csv_mode is None:
        first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
        csv_mode = "," in first or "\t" in first
    terms: list[str] = []
    if csv_mode:
        body = "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))
        try:
            dialect: Any = csv.Sniffer().sniff(body[:4096], delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        rows = list(csv.reader(io.StringIO(body), dialect))
        rows = [r for r in rows if any(c.strip() for c in r)]
        if not rows:
            return []
        header = [c.strip().lower() for c in rows[0]]
        if "term" in header:
            col, rows = header.index("term"), rows[1:]
        else:
            col = 0
            if header and header[0] in ("terms", "query", "queries", "keyword", "keywords", "name", "label"):
                rows = rows[1:]
        terms = [r[col] for r in rows if len(r) > col]
    else:
        terms = [ln for ln in lines if not ln.lstrip().startswith("#")]
    out: list[str] = []
    seen: set[str] = set()
    for t in terms:
        t = clean_term(t)
        key = t.casefold()
        if t and key not in seen:
            seen.add(key)
            out.append(t)
    return out


def read_terms(path: str | Path) -> list[str]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise IMRSError(f"cannot read terms file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise IMRSError(f"terms file {p} is not UTF-8 text (one term per line, or a CSV)") from None
    suffix = p.suffix.lower()
    terms = parse_terms(text, csv_mode=True if suffix in (".csv", ".tsv") else False if suffix == ".txt" else None)
    if not terms:
        raise IMRSError(f"no terms in {p}: write one term per line, or a CSV with a 'term' column")
    return terms
