"""Hybrid text search: what the collection knows in words, fused with what its pixels say.

People name their folders, files and captions; a text query that matches those words is the
strongest evidence a search engine can get, on every backbone (CLIP included). Each image's
texts are collected from the catalog -- folder label and sub-folders, file name, title and every
descriptive CSV column (``imrs index --metadata``), the web term it was fetched for, its EXIF
ImageDescription -- and matched three ways:

- **exact words** (singular and plural alike): "a photo of a leopard" matches ``Leopards/``;
- **WordNet kinds**: a label that names a kind of what was asked matches it ("dalmatian" for "dog");
- **the sentence model** for short texts, only when it is very close ("puppy" for "dog"; MiniLM
  also puts "cat" at 0.66 from "dog", so the bar is high).

The metadata ranking is then fused with the visual ranking by weighted reciprocal-rank fusion
(``fuse``): RRF needs no score calibration between a cosine and a word match, and a strong word
match outranks a merely similar-looking image. Each hit says why it matched: ``visual``,
``label``, ``filename``, ``caption``, ``term`` (and ``web`` for web exemplars).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fsutil import atomic_savez
from .wordnet import STOPWORDS, WordNetTable, concepts, table, words_of

if TYPE_CHECKING:
    from ..catalog import Catalog, ImageRecord
    from ..protocols import CollectionView

log = logging.getLogger(__name__)

META_VERSION = 1
#: stored field codes, and the reason each gives in ``SearchHit.why``
FIELDS = ("label", "folder", "filename", "caption", "term")
WHY = {"label": "label", "folder": "label", "filename": "filename", "caption": "caption", "term": "term"}
FIELD_WEIGHT = {"label": 1.0, "folder": 0.9, "filename": 0.8, "caption": 1.0, "term": 0.9}
#: extra (CSV) columns whose values describe the picture
_TEXT_KEYS = ("title", "caption", "descr", "keyword", "tag", "subject", "alt", "comment", "label", "headline",
              "text", "name", "object")
_SKIP_KEYS = ("url", "licen", "author", "artist", "date", "time", "path", "width", "height", "credit",
              "copyright", "source", "hash", "size")
#: file-name words that say nothing about the subject
_FILE_WORDS = frozenset({"img", "image", "dsc", "dscn", "dscf", "pict", "pic", "photo", "scan", "screenshot",
                         "copy", "edited", "final", "jpg", "jpeg", "png", "raw", "pxl", "mvimg", "whatsapp"})
SENTENCE_MAX_WORDS = 8  # longer texts (captions) are matched by their words only


@dataclass(frozen=True)
class HybridParams:
    """Defaults chosen on Caltech-101 with its folder labels (``imrs bench --improvements hybrid``)."""

    min_strength: float = 0.5  # weaker metadata matches are not matches
    sim_floor: float = 0.7  # sentence cosine that starts to count ("dog"/"cat" is 0.66)
    sim_full: float = 0.9  # ... and that counts as much as the same word
    kind_strength: float = 0.9  # the text names a kind of the query ("dalmatian" for "dog")
    rrf_k: float = 60.0
    meta_weight: float = 3.0  # weight of the metadata ranking against the visual one (weight 1)
    extra_weight: float = 1.0  # other rankings (web exemplars)
    visual_pool: int = 300  # visual candidates considered for fusion (plus every metadata match)
    meta_pool: int = 2000  # strongest metadata matches considered
    visual_why_rank: int = 0  # "visual" in why when within this visual rank (0: 2 * k, at least 20)


def humanize(text: str) -> str:
    """``Faces_easy`` -> ``Faces easy``; ``001.ak47`` stays for ``clean_label`` to handle."""
    return " ".join(text.replace("_", " ").replace("-", " ").split())


def _file_text(relpath: str) -> str:
    stem = Path(relpath).stem
    words = [w for w in words_of(stem) if not w.isdigit() and w not in _FILE_WORDS and len(w) > 1
             and not any(c.isdigit() for c in w)]
    return " ".join(words)


def _describes(key: str) -> bool:
    k = key.lower()
    if k == "id" or any(t in k for t in _SKIP_KEYS):
        return False
    return any(t in k for t in _TEXT_KEYS)


def record_texts(rec: ImageRecord, exif: str | None = None) -> list[tuple[str, str]]:
    """(field, text) pairs an image is known by."""
    out: list[tuple[str, str]] = []
    if rec.label:
        out.append(("label", humanize(rec.label)))
    parts = rec.relpath.split("/")
    for folder in parts[1:-1]:
        if not folder.startswith("."):
            out.append(("folder", humanize(folder)))
    ft = _file_text(rec.relpath)
    if ft:
        out.append(("filename", ft))
    if rec.title:
        out.append(("caption", rec.title))
    for key, value in sorted(rec.extra.items()):
        if value and _describes(key):
            out.append(("caption", str(value)))
    if rec.term:
        out.append(("term", humanize(rec.term)))
    if exif:
        out.append(("caption", exif))
    seen: set[tuple[str, str]] = set()
    uniq = []
    for f, t in out:
        t = " ".join(str(t).split())[:500]
        if t and (f, t.lower()) not in seen:
            seen.add((f, t.lower()))
            uniq.append((f, t))
    return uniq


def exif_description(path: Path) -> str:
    """EXIF ImageDescription (or Windows XPTitle/XPSubject), "" when absent or unreadable; reads
    the header only."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            desc = exif.get(0x010E)
            if not desc:
                for tag in (0x9C9B, 0x9C9F):  # XPTitle, XPSubject: UTF-16LE bytes
                    raw = exif.get(tag)
                    if raw:
                        desc = bytes(raw).decode("utf-16-le", "ignore").rstrip("\x00")
                        break
    except Exception:  # noqa: BLE001 - a file we cannot read has no description
        return ""
    if isinstance(desc, bytes):
        desc = desc.decode("utf-8", "ignore")
    desc = " ".join(str(desc or "").replace("\x00", " ").split())
    # cameras write placeholders like "OLYMPUS DIGITAL CAMERA"
    return "" if desc.upper() in ("OLYMPUS DIGITAL CAMERA", "DIGITAL CAMERA", "SONY DSC", "DCIM") else desc[:500]


# -- matching ----------------------------------------------------------------------------------------

def canonical(word: str, wn: WordNetTable) -> str:
    """One spelling per noun: its WordNet base form when it has one ("leopards" -> "leopard")."""
    forms = wn.base_forms(word)
    for f in forms:
        if wn.has_lemma(f):
            return f
    return forms[-1] if len(forms) > 1 and len(word) > 3 else word


def tokens(text: str, wn: WordNetTable) -> frozenset[str]:
    return frozenset(canonical(w, wn) for w in words_of(text) if w not in STOPWORDS)


#: A query naming a synset with at least this many ImageNet classes below it names a category:
#: a folder of one of its kinds ("dalmatian" for "dog") answers it. Below, a "kind" is a relative
#: ("okapi" sits under "giraffe" in WordNet), not an answer.
CATEGORY_CLASSES = 3


def names_category(text: str, wn: WordNetTable | None = None) -> bool:
    """Does every concept of ``text`` name a category with several kinds (dog, bird, flower)?"""
    wn = wn or table()
    found = False
    for c in concepts(text, wn):
        if not c.senses:
            continue
        main = max(c.senses, key=lambda s: (s.count, bool(wn.classes_below(s.wnid)), -s.rank))
        if len(wn.classes_below(main.wnid)) < CATEGORY_CLASSES:
            return False
        found = True
    return found


def _kinds(text: str, wn: WordNetTable, main_only: bool) -> list[set[str]]:
    """Per concept of ``text``: the synsets it may mean (main senses only for queries) or, for
    metadata, every hypernym of its main sense (the most common; between equally common ones, one
    ImageNet has pictures of: a folder "dalmatian" holds dogs, not Dalmatians)."""
    out = []
    for c in concepts(text, wn):
        if not c.senses:
            continue
        main = max(c.senses, key=lambda s: (s.count, bool(wn.classes_below(s.wnid)), -s.rank))
        if main_only:
            top = main.count
            out.append({main.wnid} | {s.wnid for s in c.senses if top and s.count >= 0.25 * top})
        else:
            out.append(set(wn.ancestors(main.wnid)))
    return out


@dataclass
class MetaMatch:
    """Per image row of a ``MetadataIndex``: match strength in [0, 1] and the fields that matched."""

    strength: np.ndarray
    fields: np.ndarray  # bit mask over FIELDS
    query_tokens: frozenset[str] = field(default_factory=frozenset)

    def why(self, row: int, min_strength: float) -> tuple[str, ...]:
        if self.strength[row] < min_strength:
            return ()
        mask = int(self.fields[row])
        return tuple(dict.fromkeys(WHY[f] for i, f in enumerate(FIELDS) if mask & (1 << i)))


class MetadataIndex:
    """Every text the collection has about its images, as unique strings plus an image -> string
    table (CSR). Sentence embeddings of the short strings are computed on first use and stored."""

    def __init__(self, ids: np.ndarray, strings: Sequence[str], indptr: np.ndarray, sidx: np.ndarray,
                 fcode: np.ndarray, emb: np.ndarray | None = None) -> None:
        self.ids = np.asarray(ids, np.int64)
        self.strings = list(strings)
        self.indptr = np.asarray(indptr, np.int64)
        self.sidx = np.asarray(sidx, np.int64)
        self.fcode = np.asarray(fcode, np.int8)
        self.emb = emb
        self.row_of = {int(i): r for r, i in enumerate(self.ids.tolist())}
        self._entry_row = np.repeat(np.arange(len(self.ids)), np.diff(self.indptr))
        self._short = np.array([len(s.split()) <= SENTENCE_MAX_WORDS for s in self.strings], bool)
        self._tok: list[frozenset[str]] | None = None
        self._kind: dict[int, list[set[str]]] = {}
        self.dirty = False
        self.fingerprint = ""  # of the catalog it was built from
        self.exif: dict[str, tuple[float, str]] = {}  # relpath -> (mtime, EXIF description)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_texts(cls, items: Iterable[tuple[int, list[tuple[str, str]]]]) -> MetadataIndex:
        ids, indptr, sidx, fcode = [], [0], [], []
        where: dict[str, int] = {}
        strings: list[str] = []
        for image_id, texts in items:
            ids.append(int(image_id))
            for f, t in texts:
                j = where.get(t)
                if j is None:
                    j = where[t] = len(strings)
                    strings.append(t)
                sidx.append(j)
                fcode.append(FIELDS.index(f))
            indptr.append(len(sidx))
        return cls(np.asarray(ids, np.int64), strings, np.asarray(indptr), np.asarray(sidx, np.int64),
                   np.asarray(fcode, np.int8))

    def ensure_embeddings(self, embed: Any) -> np.ndarray:
        """(n_strings, d) sentence embeddings; long strings get zero rows (words only)."""
        if self.emb is None or len(self.emb) != len(self.strings):
            short = [s for s, ok in zip(self.strings, self._short, strict=True) if ok]
            vecs = np.asarray(embed(short), np.float32) if short else np.zeros((0, 384), np.float32)
            emb = np.zeros((len(self.strings), vecs.shape[1] if vecs.ndim == 2 else 384), np.float32)
            emb[self._short] = vecs
            self.emb = emb
            self.dirty = True
        return self.emb

    def match(self, text: str, query_vec: np.ndarray | None, params: HybridParams | None = None,
              wn: WordNetTable | None = None) -> MetaMatch:
        """Strength of every image's best text against ``text``."""
        p = params or HybridParams()
        wn = wn or table()
        n = len(self.ids)
        q = tokens(text, wn)
        s_str = np.zeros(len(self.strings), np.float32)
        if not q or not len(self.strings):
            return MetaMatch(np.zeros(n, np.float32), np.zeros(n, np.int64), q)
        if self._tok is None:
            self._tok = [tokens(s, wn) for s in self.strings]
        for j, t in enumerate(self._tok):
            if t:
                common = len(q & t)
                if common:
                    s_str[j] = common / len(q)
        # WordNet kinds, for short strings only (labels, folders, terms, file names)
        q_kinds = _kinds(text, wn, main_only=True)
        if q_kinds:
            for j in np.flatnonzero(self._short & (s_str < 1.0)):
                kinds = self._kind.get(int(j))
                if kinds is None:
                    kinds = self._kind[int(j)] = _kinds(self.strings[j], wn, main_only=False)
                if not kinds:
                    continue
                hit = sum(any(qk & k for k in kinds) for qk in q_kinds)
                if hit:
                    s_str[j] = max(s_str[j], p.kind_strength * hit / len(q_kinds))
        if query_vec is not None and self.emb is not None and len(self.emb) == len(self.strings):
            sims = self.emb @ np.asarray(query_vec, np.float32)
            s_sim = np.clip((sims - p.sim_floor) / (p.sim_full - p.sim_floor), 0.0, 1.0)
            s_str = np.maximum(s_str, np.where(self._short, s_sim, 0.0).astype(np.float32))
        weights = np.asarray([FIELD_WEIGHT[f] for f in FIELDS], np.float32)
        s_entry = s_str[self.sidx] * weights[self.fcode]
        strength = np.zeros(n, np.float32)
        np.maximum.at(strength, self._entry_row, s_entry)
        bits = np.where(s_entry >= p.min_strength, np.left_shift(1, self.fcode.astype(np.int64)), 0)
        mask = np.zeros(n, np.int64)
        np.bitwise_or.at(mask, self._entry_row, bits)
        return MetaMatch(strength, mask, q)

    # -- persistence ------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        exif = self.exif
        rels = sorted(exif)
        arrays: dict[str, Any] = {
            "version": np.asarray(META_VERSION), "fingerprint": np.asarray(self.fingerprint), "ids": self.ids,
            "strings": np.asarray(self.strings, dtype=str),
            "indptr": self.indptr, "sidx": self.sidx, "fcode": self.fcode,
            "exif_rel": np.asarray(rels, dtype=str), "exif_mtime": np.asarray([exif[r][0] for r in rels], np.float64),
            "exif_desc": np.asarray([exif[r][1] for r in rels], dtype=str)}
        if self.emb is not None:
            arrays["emb"] = self.emb
        try:
            atomic_savez(path, **arrays)
            self.dirty = False
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)


def catalog_fingerprint(catalog: Catalog) -> str:
    return catalog.content_fingerprint()


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != META_VERSION:
                return None
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as exc:
        log.info("rebuilding %s: %s", path, exc)
        return None


def meta_path(coll: CollectionView) -> Path:
    return coll.state_dir / "textsearch_meta.npz"


def load_or_build_metadata(coll: CollectionView, fp: str) -> MetadataIndex:
    """The collection's metadata index: from ``textsearch_meta.npz`` when the catalog is unchanged,
    else rebuilt from the catalog (EXIF descriptions are re-read only for new or changed files)."""
    path = meta_path(coll)
    z = _load(path)
    exif: dict[str, tuple[float, str]] = {}
    if z is not None:
        exif = {str(r): (float(m), str(d)) for r, m, d in zip(z["exif_rel"].tolist(), z["exif_mtime"].tolist(),
                                                            z["exif_desc"].tolist(), strict=True)}
    if z is not None and str(z["fingerprint"]) == fp:
        meta = MetadataIndex(z["ids"], z["strings"].tolist(), z["indptr"], z["sidx"], z["fcode"], z.get("emb"))
        meta.fingerprint, meta.exif = fp, exif
        return meta
    old_strings = z["strings"].tolist() if z is not None else []
    old_emb = z.get("emb") if z is not None else None
    items = []
    fresh_exif: dict[str, tuple[float, str]] = {}
    records = coll.catalog.get_many(sorted(coll.catalog.ids_set()))  # with their extra (CSV) columns
    for rec in records.values():
        desc = ""
        if rec.source == "base":
            mtime = float(rec.mtime or 0.0)
            hit = exif.get(rec.relpath)
            if hit is not None and hit[0] == mtime:
                desc = hit[1]
            else:
                desc = exif_description(coll.abspath(rec.relpath, rec.source))
            fresh_exif[rec.relpath] = (mtime, desc)
        items.append((rec.id, record_texts(rec, desc)))
    meta = MetadataIndex.from_texts(items)
    if old_emb is not None and len(old_emb) == len(old_strings) and old_strings:
        # reuse embeddings of strings that survived the change
        where = {s: j for j, s in enumerate(old_strings)}
        rows = [where.get(s, -1) for s in meta.strings]
        if all(r >= 0 for r in rows):
            meta.emb = old_emb[np.asarray(rows, np.int64)] if rows else None
    meta.fingerprint, meta.exif = fp, fresh_exif
    meta.save(path)
    return meta


# -- fusion ------------------------------------------------------------------------------------------

@dataclass
class Fused:
    ids: np.ndarray  # best first
    scores: np.ndarray  # fused RRF scores
    why: list[tuple[str, ...]]


def fuse(visual_ids: np.ndarray, visual_scores: np.ndarray, meta_ids: np.ndarray, meta_strength: np.ndarray,
         meta_why: Sequence[tuple[str, ...]], k: int, params: HybridParams | None = None,
         extra: Sequence[tuple[str, np.ndarray]] = (), meta_visual: np.ndarray | None = None) -> Fused:
    """Weighted reciprocal-rank fusion of the visual ranking (ids best first, their scores), the
    metadata matches (ordered here by strength, then by visual score: ``meta_visual`` where given,
    else the score in the visual ranking, unknown last) and any ``extra`` rankings (name, ids best
    first)."""
    p = params or HybridParams()
    vis_rank = {int(i): r for r, i in enumerate(np.asarray(visual_ids).tolist())}
    vis_score = {int(i): float(s) for i, s in zip(np.asarray(visual_ids).tolist(),
                                                  np.asarray(visual_scores).tolist(), strict=True)}
    tie = (np.asarray(meta_visual, np.float64) if meta_visual is not None
           else np.asarray([vis_score.get(int(i), -1e9) for i in np.asarray(meta_ids).tolist()], np.float64))
    order = sorted(range(len(meta_ids)), key=lambda j: (-float(meta_strength[j]), -float(tie[j])))
    fused: dict[int, float] = {}
    why: dict[int, list[str]] = {}
    why_rank = p.visual_why_rank or max(2 * k, 20)
    for i, r in vis_rank.items():
        fused[i] = fused.get(i, 0.0) + 1.0 / (p.rrf_k + r + 1)
        if r < why_rank:
            why.setdefault(i, []).append("visual")
    for r, j in enumerate(order):
        i = int(meta_ids[j])
        fused[i] = fused.get(i, 0.0) + p.meta_weight * float(meta_strength[j]) / (p.rrf_k + r + 1)
        why.setdefault(i, []).extend(meta_why[j])
    for name, ids in extra:
        for r, i in enumerate(np.asarray(ids).tolist()):
            fused[int(i)] = fused.get(int(i), 0.0) + p.extra_weight / (p.rrf_k + r + 1)
            if r < why_rank:
                why.setdefault(int(i), []).append(name)
    ranked = sorted(fused, key=lambda i: (-fused[i], vis_rank.get(i, 1 << 30)))
    return Fused(np.asarray(ranked, np.int64), np.asarray([fused[i] for i in ranked], np.float64),
                 [tuple(dict.fromkeys(why.get(i, []))) for i in ranked])
