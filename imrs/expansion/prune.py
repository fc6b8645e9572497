"""List and remove dynamic (web) images. Base images can never be removed from here.

Selection is by term/slug or by id; the removal itself is ``Collection.remove_dynamic``, which
refuses any base id and only deletes files it can prove sit inside a ``dynamic_*`` folder of the
dynamic root. This module adds its own checks in front (ids must be catalogued dynamic images)
so a hostile selection fails before the collection is touched.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..catalog import ImageRecord
from ..errors import IMRSError
from ..layout import DYNAMIC_PREFIX, is_dynamic_relpath
from ..slug import safe_slug
from .grow import dynamic_folder
from .terms import clean_term

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger(__name__)


@dataclass
class DynamicGroup:
    slug: str
    term: str
    count: int


@dataclass
class PruneReport:
    requested: int = 0
    removed: int = 0
    files_deleted: int = 0
    missing: list[int] = field(default_factory=list)
    slugs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = f"removed {self.removed} dynamic image(s) ({self.files_deleted} file(s) deleted)"
        if self.slugs:
            line += f" from {', '.join(DYNAMIC_PREFIX + s for s in self.slugs)}"
        if self.missing:
            line += f"; {len(self.missing)} id(s) were not in the collection"
        return line


def dynamic_groups(coll: Collection) -> list[DynamicGroup]:
    return [DynamicGroup(slug or "", term or "", int(n)) for slug, term, n in coll.catalog.dynamic_terms()]


def resolve_slug(coll: Collection, term_or_slug: str) -> str | None:
    """A known slug as given, else the slug of the term (``Hot Dog`` -> ``hot-dog``); None when the
    collection has no dynamic images under either."""
    known = {g.slug for g in dynamic_groups(coll)}
    raw = str(term_or_slug).strip()
    if raw.removeprefix(DYNAMIC_PREFIX) in known:
        return raw.removeprefix(DYNAMIC_PREFIX)
    slug = safe_slug(clean_term(raw))
    return slug if slug in known else None


def list_dynamic(coll: Collection, term: str | None = None) -> list[ImageRecord]:
    """Dynamic images, all or those of one term/slug (an unknown term lists nothing)."""
    if term is None:
        return [r for r in coll.catalog.iter_records(source="dynamic")]
    slug = resolve_slug(coll, term)
    if slug is None:
        return []
    return list(coll.catalog.iter_records(source="dynamic", slug=slug))


def _parse_ids(ids: Iterable[int | str]) -> list[int]:
    out = []
    for raw in ids:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise IMRSError(f"not an image id: {str(raw)[:40]!r} (ids are integers, see `imrs dynamic list`)") \
                from None
        if not -(2**63) <= value < 2**63:  # SQLite would raise OverflowError on the lookup
            raise IMRSError(f"not an image id: {str(raw).strip()[:40]} is outside the 64-bit range of image ids "
                            "(see `imrs dynamic list`)")
        out.append(value)
    return sorted(set(out))


def select(coll: Collection, term: str | None = None, ids: Iterable[int | str] | None = None
           ) -> tuple[dict[int, ImageRecord], list[int]]:
    """(dynamic records to remove, ids not in the collection) for a term/slug or an id list.

    Raises IMRSError when nothing matches or when any selected image is a base image.
    """
    if (term is None) == (ids is None):
        raise IMRSError("give exactly one of a term or a list of ids to prune")
    if term is not None:
        recs = list_dynamic(coll, term)
        if not recs:
            raise IMRSError(f"no dynamic images for {clean_term(term)[:80]!r}; `imrs dynamic list` shows the terms")
        id_list = [r.id for r in recs]
    else:
        id_list = _parse_ids(ids or [])
        if not id_list:
            raise IMRSError("no ids given to prune")
    found = coll.catalog.get_many(id_list)
    refused = [r.relpath for r in found.values() if r.source != "dynamic" or not is_dynamic_relpath(r.relpath)]
    if refused:
        raise IMRSError(f"refusing to prune base image(s): {', '.join(refused[:3])}"
                        f"{' ...' if len(refused) > 3 else ''}; only dynamic (web) images can be removed")
    if not found:
        raise IMRSError(f"none of the {len(id_list)} id(s) is a dynamic image of this collection")
    return found, [i for i in id_list if i not in found]


def prune(coll: Collection, term: str | None = None, ids: Iterable[int | str] | None = None) -> PruneReport:
    """Remove the dynamic images of ``term`` (a term or its slug) or the given ids: files, catalog
    rows, index vectors and NPZ rows. Raises IMRSError -- and removes nothing -- when any id is a
    base image or nothing matches.
    """
    report = PruneReport()
    with coll.writing():
        found, report.missing = select(coll, term, ids)
        report.requested = len(found) + len(report.missing)
        res = coll.remove_dynamic(found.keys())
        report.removed, report.files_deleted = res.removed, res.files_deleted
        slugs = sorted({r.relpath.split("/", 1)[0][len(DYNAMIC_PREFIX):] for r in found.values()})
        report.slugs = slugs
        for slug in slugs:  # an emptied term folder goes too (rmdir: only if really empty)
            with contextlib.suppress(IMRSError, OSError):
                dynamic_folder(coll, slug).rmdir()
    log.info("prune: %s", report.summary())
    return report
