"""What to search the web for: term clean-up, term lists for batch runs, prompt embeddings.

The candidates for an image query are proposed by ``imrs.query.propose_terms`` (a person or the
auto-confirm setting picks one); this module holds the pieces it and the batch commands share.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IMRSError

if TYPE_CHECKING:
    from ..protocols import CollectionView

log = logging.getLogger(__name__)

PROMPT = "a photo of a {}"
MAX_TERM_CHARS = 200  # a search engine query, not an essay


def readable_label(label: str) -> str:
    """``Faces_easy`` -> ``Faces easy``, ``n01440764 tench`` stays: labels are folder names."""
    return " ".join(label.replace("_", " ").split())


def prompt_vectors(coll: CollectionView, labels: Sequence[str]) -> np.ndarray:
    """CLIP prompt embeddings of ``labels``, cached on the collection: the vocabulary grows with
    every expansion, and re-embedding 1000 ImageNet prompts per query would cost seconds."""
    lock, cache = coll.cache("prompt_vectors", lambda: (threading.Lock(), {}))
    with lock:
        missing = [lb for lb in dict.fromkeys(labels) if lb not in cache]
    if missing:
        vecs = coll.encoder.embed_texts([PROMPT.format(readable_label(lb)) for lb in missing])
        with lock:
            for lb, v in zip(missing, vecs, strict=True):
                cache[lb] = np.asarray(v, dtype=np.float32)
    with lock:
        return np.stack([cache[lb] for lb in labels])


def imagenet_names() -> list[str]:
    try:
        from ..encoders import imagenet_class_names

        return list(imagenet_class_names())
    except Exception as exc:  # noqa: BLE001 - an optional vocabulary
        log.debug("no ImageNet class names: %s", exc)
        return []


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
