"""The calibration cases (``imrs calibrate``): every labelled folder asked as a covered concept and,
with its family left out of the answers, as an absent one -- by image (as indexed and as an
other-style view) and by text (its name in a few phrasings) -- each with the judge's evidence and
what a simulated web check would say. ``imrs.expansion.calibrate`` fits and reports on them; the
protocol is described there."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import WEB_CHECK_IMAGES
from ..errors import IMRSError
from ..progress import Reporter
from .coverage import is_clutter_label
from .judge import ClassContext, feature_names, gather
from .terms import readable_label
from .webcheck import web_evidence, web_feature_names

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)


@dataclass
class Cases:
    """One row per query: its judged scores (best first, padded with -inf), the size of the class
    its best hit belongs to (None: clutter or unlabelled), and whether the concept was present."""

    scores: np.ndarray
    class_size: np.ndarray  # -1 = unknown
    covered: np.ndarray
    cls: np.ndarray  # which class the query came from (for the split)
    features: np.ndarray | None = None  # (n, len(feature names)): the judge's evidence
    external: np.ndarray | None = None  # the query was an external-style view
    web: np.ndarray | None = None  # (n, len(web_names) - 1): what simulated web images said (NaN: too few)
    web_names: tuple[str, ...] = ()  # the web check's features ("p1" first, then the columns of ``web``)




_GENERIC_WORDS = {"a", "an", "the", "of", "and", "head", "body", "face", "easy", "hard", "left", "right", "side"}


def _words(label: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", readable_label(label).lower()) if len(w) > 1} - _GENERIC_WORDS


def families(names: Sequence[str]) -> dict[str, set[str]]:
    """Folders that name the same concept (a shared word: ``Faces``/``Faces_easy``,
    ``cougar_body``/``cougar_face``, ``chair``/``windsor_chair``). A concept is only absent when all
    of them are: removing ``Faces`` while ``Faces_easy`` stays would call a face query "absent"."""
    words = {n: _words(n) for n in names}
    return {n: {m for m in names if m == n or (words[n] & words[m])} for n in names}


def _row(scores: Sequence[float], depth: int) -> np.ndarray:
    row = np.full(depth, -np.inf, dtype=np.float64)
    s = np.asarray(sorted(scores, reverse=True)[:depth], dtype=np.float64)
    row[:len(s)] = s
    return row


def external_view(image: Any, seed: int) -> Any:
    """The image as someone else might have photographed it: another framing (45-100% of the
    area, any aspect), mirrored or not, smaller, with other colours and a lossy JPEG. Deterministic
    for a seed, so a calibration can be repeated."""
    import io

    from PIL import Image, ImageEnhance, ImageOps

    r = random.Random(seed)
    img = image.convert("RGB")
    w, h = img.size
    area = r.uniform(0.45, 1.0) * w * h
    ar = r.uniform(0.7, 1.4)
    cw, ch = max(8, int(min(w, (area * ar) ** 0.5))), max(8, int(min(h, (area / ar) ** 0.5)))
    x0, y0 = r.randint(0, w - cw), r.randint(0, h - ch)
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if r.random() < 0.5:
        img = ImageOps.mirror(img)
    s = r.uniform(0.5, 1.0)
    img = img.resize((max(16, int(img.width * s)), max(16, int(img.height * s))), Image.BILINEAR)
    img = ImageEnhance.Color(img).enhance(r.uniform(0.6, 1.4))
    img = ImageEnhance.Brightness(img).enhance(r.uniform(0.6, 1.4))
    img = ImageEnhance.Contrast(img).enhance(r.uniform(0.6, 1.4))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=r.randint(40, 90))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@dataclass
class Exemplar:
    """An other-style view of a folder's image, as a stand-in for a web image of its concept: its
    vector, the image it was made from, and its collection hits (score, id), best first."""

    vector: np.ndarray
    source_id: int
    pairs: list[tuple[float, int]]


class CaseBuilder:
    """Collects one row per (query, present/absent): the judged scores for the threshold rule,
    the judge's evidence, and what a simulated web check would say, all from the same answer."""

    def __init__(self, kind: str, names: Sequence[str], depth: int, label_of: dict[int, str],
                 sizes: dict[str, int], ctx: ClassContext) -> None:
        self.kind, self.names, self.depth = kind, list(names), depth
        self.label_of, self.sizes, self.ctx = label_of, sizes, ctx
        self.features = feature_names(kind, ctx.has_classifier)
        self.web_names = web_feature_names(kind)
        self.rows: list[np.ndarray] = []
        self.size: list[int] = []
        self.covered: list[bool] = []
        self.cls: list[int] = []
        self.ext: list[bool] = []
        self.ev: list[np.ndarray] = []
        self.web: list[np.ndarray] = []

    def add(self, c: int, pairs: Sequence[tuple[float, int]], absent: set[int], *, query_vector: Any = None,
            closeness: float | None = None, external: bool = False, skip: int | None = None,
            exemplars: Sequence[Exemplar] = ()) -> None:
        mine = [e for e in exemplars if e.source_id != skip][:WEB_CHECK_IMAGES]  # as many as a live check fetches
        for present in (True, False):
            keep = [(s, i) for s, i in pairs if i != -1 and i != skip and (present or i not in absent)][:self.depth]
            self.rows.append(_row([s for s, _ in keep], self.depth))
            top = self.label_of.get(keep[0][1], "") if keep else ""
            self.size.append(self.sizes.get(top, -1) if top and not is_clutter_label(top) else -1)
            ev = gather(self.ctx, self.kind, [i for _, i in keep], [s for s, _ in keep], query_vector, closeness)
            self.ev.append(ev.vector(self.features))
            self.covered.append(present)
            self.cls.append(c)
            self.ext.append(external)
            # a web image is never in the collection: its own source image is left out of what it
            # finds, and, when the concept is absent, the whole family is
            gone = {e.source_id for e in mine} | ({skip} if skip is not None else set())
            if not present:
                gone |= absent
            hits = [[(s, i) for s, i in e.pairs if i != -1 and i not in gone][:10] for e in mine]
            web = web_evidence(self.ctx, np.asarray([e.vector for e in mine], np.float32).reshape(len(mine), -1),
                               [[s for s, _ in h] for h in hits], [[i for _, i in h] for h in hits], ev.top_label,
                               query_vector if "to_query" in self.web_names else None)
            names = self.web_names[1:]
            self.web.append(np.full(len(names), np.nan) if web is None else
                            np.asarray([web[n] for n in names], np.float64))

    def cases(self) -> Cases:
        return Cases(np.stack(self.rows), np.asarray(self.size), np.asarray(self.covered), np.asarray(self.cls),
                     np.stack(self.ev), np.asarray(self.ext), np.stack(self.web), self.web_names)


@dataclass
class Views:
    """The sampled images of every folder, as indexed and as other-style views, and each
    query's collection hits (deep enough to leave a whole family out)."""

    queries: list[tuple[int, int]]  # (class number, image id)
    own: np.ndarray
    ext: np.ndarray
    view_of: list[int]  # ext row -> query number
    own_pairs: list[list[tuple[float, int]]]
    ext_pairs: list[list[tuple[float, int]]]

    def exemplars(self, c: int) -> list[Exemplar]:
        return [Exemplar(self.ext[k], self.queries[n][1], self.ext_pairs[k])
                for k, n in enumerate(self.view_of) if self.queries[n][0] == c]


def search_pairs(coll: Collection, vecs: np.ndarray, depth: int, rep: Reporter, stage: str
                  ) -> list[list[tuple[float, int]]]:
    out: list[list[tuple[float, int]]] = []
    chunk = 128
    for s in range(0, len(vecs), chunk):
        scores, ids = coll.index.search(np.asarray(vecs[s:s + chunk], np.float32), depth)
        out += [[(float(x), int(i)) for x, i in zip(sr.tolist(), ir.tolist(), strict=True)]
                for sr, ir in zip(scores, ids, strict=True)]
        rep(stage, min(s + chunk, len(vecs)), len(vecs))
    return out


def sample_views(coll: Collection, classes: dict[str, list[int]], names: Sequence[str], per_class: int, depth: int,
           rng: random.Random, rep: Reporter) -> Views:
    """Each sampled image as indexed (its cached vector) and as an external-style view of the
    file (embedded by the collection's encoder, as a live query would be)."""
    from ..imageio import load_image

    queries: list[tuple[int, int]] = []
    for c, name in enumerate(names):
        ids = classes[name]
        for i in rng.sample(ids, min(per_class, len(ids))):
            queries.append((c, i))
    own = coll.index.get_vectors(np.asarray([i for _, i in queries], dtype=np.int64))
    views, view_of = [], []
    for n, (_, i) in enumerate(queries):
        rec = coll.catalog.get(i)
        if rec is None:
            continue
        try:
            views.append(external_view(load_image(coll.abspath(rec.relpath, rec.source)), seed=i & 0x7FFFFFFF))
            view_of.append(n)
        except (OSError, IMRSError, ValueError) as exc:
            log.debug("no external view of %s: %s", rec.relpath, exc)
        rep("calibrate: other-style views", n + 1, len(queries))
    ext = coll.encoder.embed_images(views) if views else np.zeros((0, own.shape[1]), np.float32)
    own_pairs = search_pairs(coll, own, depth, rep, "calibrate: search as indexed")
    ext_pairs = search_pairs(coll, ext, depth, rep, "calibrate: search other-style views")
    return Views(queries, own, ext, view_of, own_pairs, ext_pairs)


def members_of_classes(classes: dict[str, list[int]], fam: dict[str, set[str]], names: Sequence[str]
                       ) -> dict[int, set[int]]:
    """Class number -> the image ids of its whole family (what "absent" leaves out)."""
    return {c: {i for m in fam[name] for i in classes.get(m, [])} for c, name in enumerate(names)}


def image_cases(views: Views, members_of: dict[int, set[int]], b: CaseBuilder) -> Cases:
    """Image queries: each sampled image as indexed and as an external-style view; each also
    carries what a web check with the folder's other views would say."""
    ex = {c: views.exemplars(c) for c in members_of}
    for n, ((c, qid), v) in enumerate(zip(views.queries, views.own, strict=True)):
        b.add(c, views.own_pairs[n], members_of[c], query_vector=v, skip=qid, exemplars=ex[c])
    for k, n in enumerate(views.view_of):
        c, qid = views.queries[n]
        b.add(c, views.ext_pairs[k], members_of[c], query_vector=views.ext[k], external=True, skip=qid,
              exemplars=ex[c])
    return b.cases()


#: How people type a concept: each folder's name is asked in these forms.
PHRASINGS = ("{}", "a photo of a {}", "{} pictures")


def text_cases(coll: Collection, classes: dict[str, list[int]], members_of: dict[int, set[int]], depth: int,
                b: CaseBuilder, rep: Reporter, views: Views | None) -> Cases:
    """Text queries: each folder's readable name in a few phrasings, embedded and judged exactly as
    a live text query (``imrs.query`` embeds the raw text, no prompt template)."""
    from ..textsearch import text_class_space, text_index, text_query_vector

    names = b.names
    textmap = not coll.backbone_info.supports_text
    biggest = max(len(v) for v in classes.values()) * 4
    for c, name in enumerate(names):
        members = members_of[c]
        exemplars = views.exemplars(c) if views is not None else []
        for form in PHRASINGS:
            text = form.format(readable_label(name))
            closeness, vec = None, None
            if textmap:
                ids, scores = text_class_space(coll, text)
                order = np.argsort(-scores, kind="stable")[:depth + len(members) + 1]
                pairs = [(float(scores[j]), int(ids[j])) for j in order]
                closeness = float(text_index(coll).plan(text).closeness)
            else:
                vec = text_query_vector(coll, text)
                srow, irow = coll.index.search(np.asarray([vec], np.float32), depth + biggest + 1)
                pairs = [(float(x), int(i)) for x, i in zip(srow[0].tolist(), irow[0].tolist(), strict=True)]
            b.add(c, pairs, members, closeness=closeness, exemplars=exemplars, query_vector=vec)
        rep("calibrate text", c + 1, len(names))
    return b.cases()


def subset(cases: Cases, mask: np.ndarray) -> Cases:
    return Cases(cases.scores[mask], cases.class_size[mask], cases.covered[mask], cases.cls[mask],
                 None if cases.features is None else cases.features[mask],
                 None if cases.external is None else cases.external[mask],
                 None if cases.web is None else cases.web[mask], cases.web_names)
